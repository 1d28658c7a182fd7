//! Who may open a session: the source allow list and `maxconn`. Shared by every data path.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ipnet::IpNet;

use crate::metrics::{Reject, ServiceStats};

/// The admission rules of one service.
#[derive(Debug)]
pub struct Gate {
    allow: Vec<IpNet>,
    maxconn: u64,
    stats: Arc<ServiceStats>,
}

/// A slot in `maxconn`, held for the life of a session and given back on drop.
#[derive(Debug)]
pub struct Permit {
    stats: Arc<ServiceStats>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new(allow: Vec<IpNet>, maxconn: u32, stats: Arc<ServiceStats>) -> Gate {
        Gate {
            allow,
            maxconn: u64::from(maxconn),
            stats,
        }
    }

    /// Admits a client from `peer`, or says why not (the rejection is already counted).
    pub fn admit(&self, peer: SocketAddr) -> Result<Permit, Reject> {
        if !self.allowed(peer.ip()) {
            self.stats.reject(Reject::NotAllowed);
            return Err(Reject::NotAllowed);
        }
        // Reserve first, then check: two racing accepts cannot both take the last slot.
        let before = self.stats.active.fetch_add(1, Ordering::AcqRel);
        if before >= self.maxconn {
            self.stats.active.fetch_sub(1, Ordering::AcqRel);
            self.stats.reject(Reject::Maxconn);
            return Err(Reject::Maxconn);
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            stats: Arc::clone(&self.stats),
        })
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        if self.allow.is_empty() {
            return true;
        }
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(allow: &[&str], maxconn: u32) -> Gate {
        let allow = allow.iter().map(|s| s.parse().unwrap()).collect();
        Gate::new(allow, maxconn, Arc::default())
    }

    #[test]
    fn allow_list_v4_v6_and_mapped() {
        let g = gate(&["127.0.0.1/32", "fd00::/8"], 10);
        assert!(g.admit("127.0.0.1:5".parse().unwrap()).is_ok());
        assert_eq!(
            g.admit("127.0.0.2:5".parse().unwrap()).unwrap_err(),
            Reject::NotAllowed
        );
        assert!(g.admit("[fd00::1]:5".parse().unwrap()).is_ok());
        assert!(g.admit("[::ffff:127.0.0.1]:5".parse().unwrap()).is_ok());
        assert_eq!(g.stats.rejected(Reject::NotAllowed), 1);
    }

    #[test]
    fn maxconn_is_released_on_drop() {
        let g = gate(&[], 2);
        let peer = "127.0.0.1:1".parse().unwrap();
        let a = g.admit(peer).unwrap();
        let _b = g.admit(peer).unwrap();
        assert_eq!(g.admit(peer).unwrap_err(), Reject::Maxconn);
        drop(a);
        assert!(g.admit(peer).is_ok());
        assert_eq!(g.stats.rejected(Reject::Maxconn), 1);
    }
}
