//! The forwarder: listeners, admission, routing to the current Redis master, and the data paths.
//!
//! Rooms, each importing only from those before it: `tls` (certificates and keys -> rustls
//! configurations), `config` (TOML as written -> validated -> runtime types), `budget` (open-file limit -> maxconn and pipes), `metrics` (counters),
//! `session_log` (a client's times and bytes, its log line), `admission` (allow list, maxconn),
//! `router` (the decider's master as a route with a cut token), `service` (a service's runtime:
//! where a client goes, when it gives up, binding its listeners), `datapath` (accepting,
//! connecting, moving bytes), `status` (one typed status model and its renderers), `admin`
//! (HTTP, through [`admin::Control`] only), `daemon` (wiring, reload, signals), `privileges`; beside them
//! `import` (haproxy.cfg -> forwarder TOML). `unsafe` is denied except in the modules that make syscalls.

#![deny(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod budget;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod import;
pub mod metrics;
pub mod privileges;
pub mod router;
pub mod service;
pub mod session_log;
pub mod status;
pub mod tls;
