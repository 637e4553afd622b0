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
    /// Send time and sequence number of the newest committed report.
    renewed: Mutex<Option<(Instant, u64)>>,
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
    pub fn renew(&self, sent: Instant, seq: u64) {
        let mut g = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        let was = g.is_some_and(|(r, _)| r.elapsed() < self.length);
        if g.is_none_or(|(r, _)| sent > r) {
            *g = Some((sent, seq));
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
            .is_some_and(|(r, _)| r.elapsed() < self.length)
    }

    /// [`valid`](Self::valid), and `applied` (the sequence number of this
    /// node's last report in its local catalog state) has reached the report
    /// that renewed the lease. So the local state includes every command
    /// committed before that report, such as an election of another leader
    /// while this node was paused, and deciding from it is safe.
    pub fn valid_with(&self, applied: Option<u64>) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|(r, seq)| r.elapsed() < self.length && applied.is_some_and(|a| a >= seq))
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
        l.renew(Instant::now(), 1);
        assert!(l.valid());
        // A renewal from a report sent long ago does not extend it.
        l.renew(Instant::now() - Duration::from_secs(10), 0);
        assert!(l.valid());
        let old = Lease::new(Duration::from_millis(200));
        old.renew(Instant::now() - Duration::from_millis(300), 1);
        assert!(
            !old.valid(),
            "a report sent more than a lease ago renews nothing"
        );
    }

    #[test]
    fn a_lease_is_usable_only_once_the_local_state_has_applied_the_renewing_report() {
        let l = Lease::new(Duration::from_secs(60));
        l.renew(Instant::now(), 42);
        assert!(l.valid());
        assert!(
            !l.valid_with(None),
            "no report of ours applied locally yet: the local state may be stale"
        );
        assert!(
            !l.valid_with(Some(41)),
            "the local state is older than the renewing report"
        );
        assert!(l.valid_with(Some(42)));
        assert!(l.valid_with(Some(43)));
    }
}
