//! Health checking for the forwarder: HAProxy's tcp-check semantics, Redis reply parsing, and the
//! selection of exactly one master per service.
//!
//! Rooms: `tcpcheck` (check programs), `schedule` (rise/fall/interval), `resp` and `info` (Redis
//! replies), `decider` (who the master is: one pure policy, generations, counters), `sentinel` (what a quorum of Sentinels says),
//! `monitor` (the tokio tasks that tie them up), `switchover` (a planned handover of the master
//! through the Sentinels), `histogram` (latency buckets), `plain` (log values), `tls` (TLS towards a server: checks, Sentinels, switchover requests).
#![forbid(unsafe_code)]

pub mod decider;
pub mod histogram;
pub mod info;
pub mod monitor;
pub mod plain;
pub mod ratelimit;
pub mod resp;
pub mod schedule;
pub mod sentinel;
pub mod switchover;
pub mod tcpcheck;
pub mod tls;

pub use decider::{AdminState, Hold, MasterView};
pub use histogram::{Histogram, Snapshot as HistogramSnapshot};
pub use monitor::{Monitor, MonitorStats, ServerStatus};
pub use ratelimit::RateLimit;
pub use schedule::{Schedule, ScheduleError, ServerState};
pub use sentinel::{SentinelConfig, SentinelReport, SentinelView};
pub use tcpcheck::{Auth, CheckReport, Program, Step, StepError};
