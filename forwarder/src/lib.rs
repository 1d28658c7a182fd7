//! The forwarder: listeners, admission, routing to the current Redis master, and the data paths.
//!
//! Rooms: `config` (TOML -> runtime types), `budget` (open-file limit -> maxconn), `admission`
//! (allow list, maxconn), `router` (current master and the cut on change), `service` (accept,
//! queue, connect), `datapath` (moving bytes), `metrics` (counters), `admin` (HTTP), `daemon`
//! (wiring and signals).

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
