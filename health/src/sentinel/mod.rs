//! Asking Redis Sentinel who the master is: `SENTINEL get-master-addr-by-name` polled on every
//! configured Sentinel, plus a `+switch-master` subscription on each so that a failover reaches
//! the data path within milliseconds of the Sentinels deciding it.
//!
//! An answer counts when `quorum` Sentinels (by default a majority of those configured) name the
//! same address. With fewer reachable, the last agreed master is kept and the view says
//! `degraded`: losing Sentinels must not move or drop the master.
//!
//! Every reply is parsed defensively: a malformed or hostile answer is an error with a reason for
//! that Sentinel, never a panic and never a master.
//!
//! Rooms: `view` (what a quorum says: the agreement rule, kept apart from any I/O so that it can
//! be tested on its own), `client` (the connections, queries and subscriptions that feed it) and
//! `parse` (the Sentinel replies, where hostile input is turned into errors). This file holds the
//! configuration they share.

mod client;
mod parse;
mod view;

use std::net::SocketAddr;
use std::time::Duration;

use crate::tcpcheck::Auth;

pub use client::Sentinels;
pub(crate) use client::{Conn, SentinelError};
pub use parse::{
    parse_master_addr, parse_message, parse_replicas, parse_switch_master, ReplyError,
};
pub use view::{SentinelReport, SentinelView};

/// How to reach the Sentinels of one master.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    /// The Sentinels, each queried and subscribed to on its own.
    pub addresses: Vec<SocketAddr>,
    /// The name the Sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// Sentinels that must name the same master; 0 means a majority of `addresses`.
    pub quorum: usize,
    /// Credentials for `AUTH` to the Sentinels (not the Redis servers'); `None` to send none.
    pub auth: Option<Auth>,
    /// TLS to the Sentinels (their `tls-port`); `None` for plain TCP.
    pub tls: Option<crate::tls::Connector>,
    /// Per request (connect, AUTH, query), for the whole reply: a Sentinel that trickles its
    /// answer is unreachable, not slow.
    pub timeout: Duration,
    /// Servers learnt from the Sentinels that are checked at most.
    pub max_servers: usize,
    /// Between two queries of one Sentinel.
    pub interval: Duration,
    /// The forwarder's own listeners: never checked or routed to, whatever the Sentinels say
    /// (a wildcard listener also covers loopback addresses on its port).
    pub own: Vec<SocketAddr>,
}

impl SentinelConfig {
    fn quorum(&self) -> usize {
        match self.quorum {
            0 => self.addresses.len() / 2 + 1,
            q => q,
        }
    }

    /// Whether `addr` is one of the forwarder's own listeners.
    pub fn is_own(&self, addr: SocketAddr) -> bool {
        self.own.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip() || (l.ip().is_unspecified() && addr.ip().is_loopback()))
        })
    }
}
