//! The test harness (crate `harness`): real `redis-server` and Sentinel processes and the
//! forwarder binary on free loopback ports, reaped on drop so no test leaks a process or a port.
//! The end-to-end suite (`tests/tests/`) runs on it, and so do `cargo xtask lab` and
//! `cargo xtask bench`.
//!
//! The data path under test comes from `FORWARDER_MODE` (set by `cargo xtask test`, which runs
//! the suite once per mode); the binary from `FORWARDER_BIN` (default: the workspace's
//! `target/debug/forwarder`).
#![deny(unsafe_code)] // allowed in one place: `process::dies_with_parent`'s pre_exec

mod conn;
pub mod endpoints;
mod forwarder;
pub mod hostile;
mod net;
mod netns;
mod process;
pub mod rawtcp;
mod redis;
mod service;
pub mod tls;

pub use conn::Conn;
pub use forwarder::{
    forwarder_bin, forwarder_exit, forwarder_exit_with, http_get, mode, Forwarder, WITHOUT_BPF_CAPS,
};
pub use health::resp::Reply;
pub use net::{connect_from, echo, tcp_server};
pub use netns::{run, Netns};
pub use process::{dies_with_parent, free_port, free_ports, require, run_within, wait_until, Proc};
pub use redis::{info_field, Redis, Sentinel};
pub use service::{plain_service, sentinel_service, Service};
