//! The forwarder: listeners, admission, routing to the current Redis master, and the data paths.
//!
//! Rooms: `config` (TOML -> runtime types), `budget` (open-file limit -> maxconn), `admission`
//! (allow list, maxconn), `router` (current master and the cut on change), `service` (a service's
//! runtime: where a client goes, when it gives up, binding its listeners), `datapath` (accepting,
//! queueing, connecting, moving bytes; depends on `service`), `metrics` (counters), `admin`
//! (HTTP), `daemon` (wiring and signals).

#![deny(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod budget;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod metrics;
pub mod privileges;
pub mod router;
pub mod service;
pub mod status;
