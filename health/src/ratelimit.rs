//! At most one log line a second per site: for every event an outsider can trigger (a Sentinel's
//! pushes and errors, a server's flaps, rejected clients), so that a flood costs a counter, not
//! the disk.

use std::sync::atomic::{AtomicU64, Ordering};

/// One log site. `log` emits at most once per wall-clock second and passes the number of lines
/// suppressed since the last one.
#[derive(Debug, Default)]
pub struct RateLimit {
    last_sec: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// Calls `emit` with the number of calls suppressed since it last ran, if this is the first
    /// call in the current second; otherwise counts this one as suppressed.
    pub fn log(&self, emit: impl FnOnce(u64)) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_sec.load(Ordering::Relaxed);
        if now != last
            && self
                .last_sec
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            emit(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_emits_once_and_counts_the_rest() {
        let r = RateLimit::default();
        let mut emitted = Vec::new();
        for _ in 0..1000 {
            r.log(|n| emitted.push(n));
        }
        // A second boundary may fall inside the loop: then a second line carries the count.
        assert!(matches!(emitted.len(), 1 | 2), "{emitted:?}");
        assert_eq!(emitted[0], 0);
        let suppressed = r.suppressed.load(Ordering::Relaxed) + emitted.iter().sum::<u64>();
        assert_eq!(suppressed + emitted.len() as u64, 1000);
    }
}
