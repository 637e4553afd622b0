//! A leader's lease: how long this node may keep accepting appends on the
//! queues it leads without hearing from the catalog.
//!
//! The lease is renewed by every report the catalog commits, from the time
//! the report was **sent** (never later than when the catalog's leader saw
//! it). The catalog's leader elects another node only after a full failover
//! timeout without reports, twice the lease, counted from when it saw the
//! last one; so a leader's appends stop before a new leader can start,
//! whatever the clocks' offsets (only their rates matter).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// See the module documentation.
#[derive(Debug)]
pub struct Lease {
    length: Duration,
    renewed: Mutex<Option<Instant>>,
    notify: tokio::sync::Notify,
}

impl Lease {
    /// A lease of `length`, not held until first renewed.
    pub fn new(length: Duration) -> Lease {
        Lease {
            length,
            renewed: Mutex::new(None),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Renews the lease from `sent`, the time the committed report was sent.
    pub fn renew(&self, sent: Instant) {
        let mut g = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        let was = g.is_some_and(|r| r.elapsed() < self.length);
        if g.is_none_or(|r| sent > r) {
            *g = Some(sent);
        }
        drop(g);
        if !was {
            self.notify.notify_waiters();
        }
    }

    /// True while the lease holds.
    pub fn valid(&self) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|r| r.elapsed() < self.length)
    }

    /// The lease's length.
    pub fn length(&self) -> Duration {
        self.length
    }

    /// Completes when the lease is next renewed after having lapsed.
    pub async fn regained(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_from_the_send_time_of_the_last_committed_report() {
        let l = Lease::new(Duration::from_millis(200));
        assert!(!l.valid(), "not held before the first renewal");
        l.renew(Instant::now());
        assert!(l.valid());
        // A renewal from a report sent long ago does not extend it.
        l.renew(Instant::now() - Duration::from_secs(10));
        assert!(l.valid());
        let old = Lease::new(Duration::from_millis(200));
        old.renew(Instant::now() - Duration::from_millis(300));
        assert!(
            !old.valid(),
            "a report sent more than a lease ago renews nothing"
        );
    }
}
