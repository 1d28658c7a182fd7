//! Who may open a session: the source allow list, `maxconn` and `maxconn_per_source`. Shared by
//! every data path.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::Allow;
use crate::metrics::{Reject, ServiceStats};

/// The admission rules of one service.
#[derive(Debug)]
pub struct Gate {
    allow: Vec<Allow>,
    maxconn: u64,
    per_source: Option<u32>,
    /// The counters and the per-source counts: the service's, so they carry over a reload.
    stats: Arc<ServiceStats>,
}

/// A slot in `maxconn` (and in its source's `maxconn_per_source`), held for the life of a
/// session and given back on drop.
#[derive(Debug)]
pub struct Permit {
    stats: Arc<ServiceStats>,
    source: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = &self.source {
            let mut m = self.stats.sources.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(ip);
                }
            }
        }
    }
}

impl Gate {
    /// The rules of a service: `allow` (empty admits every source), `maxconn` sessions in all,
    /// at most `per_source` from one IP (`None`: no per-source limit), counted in `stats`.
    pub fn new(
        allow: Vec<Allow>,
        maxconn: u32,
        per_source: Option<u32>,
        stats: Arc<ServiceStats>,
    ) -> Gate {
        Gate {
            allow,
            maxconn: u64::from(maxconn),
            per_source,
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
        let mut permit = Permit {
            stats: Arc::clone(&self.stats),
            source: None,
        };
        if let Some(limit) = self.per_source {
            let ip = canonical(peer.ip());
            let mut m = self.stats.sources.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= limit {
                drop(m);
                drop(permit); // gives the maxconn slot back
                self.stats.reject(Reject::PerSource);
                return Err(Reject::PerSource);
            }
            *n += 1;
            permit.source = Some(ip);
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(permit)
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        if self.allow.is_empty() {
            return true;
        }
        let ip = canonical(ip);
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d: treat it as a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(allow: &[&str], maxconn: u32) -> Gate {
        let allow = allow.iter().map(|s| Allow::parse(s).unwrap()).collect();
        Gate::new(allow, maxconn, None, Arc::default())
    }

    #[test]
    fn per_source_limit_counts_each_address_and_releases() {
        let stats: Arc<ServiceStats> = Arc::default();
        let g = Gate::new(Vec::new(), 10, Some(2), Arc::clone(&stats));
        let a1 = g.admit("10.0.0.1:1".parse().unwrap()).unwrap();
        let _a2 = g.admit("[::ffff:10.0.0.1]:2".parse().unwrap()).unwrap();
        assert_eq!(
            g.admit("10.0.0.1:3".parse().unwrap()).unwrap_err(),
            Reject::PerSource
        );
        let _b = g.admit("10.0.0.2:1".parse().unwrap()).unwrap();
        assert_eq!(stats.rejected(Reject::PerSource), 1);
        assert_eq!(
            stats.active.load(Ordering::Relaxed),
            3,
            "the refused one gave its slot back"
        );
        drop(a1);
        assert!(g.admit("10.0.0.1:4".parse().unwrap()).is_ok());
    }

    #[test]
    fn allow_list_v4_v6_and_mapped() {
        let g = gate(&["127.0.0.1/32", "fd00::/8", "10.0.0.5-10.0.0.9"], 10);
        assert!(g.admit("10.0.0.9:5".parse().unwrap()).is_ok());
        assert!(g.admit("[::ffff:10.0.0.5]:5".parse().unwrap()).is_ok());
        assert_eq!(
            g.admit("10.0.0.10:5".parse().unwrap()).unwrap_err(),
            Reject::NotAllowed
        );
        assert!(g.admit("127.0.0.1:5".parse().unwrap()).is_ok());
        assert_eq!(
            g.admit("127.0.0.2:5".parse().unwrap()).unwrap_err(),
            Reject::NotAllowed
        );
        assert!(g.admit("[fd00::1]:5".parse().unwrap()).is_ok());
        assert!(g.admit("[::ffff:127.0.0.1]:5".parse().unwrap()).is_ok());
        assert_eq!(g.stats.rejected(Reject::NotAllowed), 2);
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
