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
    held: Mutex<Held>,
    notify: tokio::sync::Notify,
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    /// Send time of the newest committed report.
    renewed: Option<Instant>,
    /// Sequence number of the report that renewed the lease after it had
    /// lapsed (or was never held): the start of the current unbroken lease.
    since: u64,
}

impl Held {
    fn valid(&self, length: Duration, now: Instant) -> bool {
        self.renewed
            .is_some_and(|r| now.saturating_duration_since(r) < length)
    }
}

impl Lease {
    /// A lease of `length`, not held until first renewed.
    pub fn new(length: Duration) -> Lease {
        Lease {
            length,
            held: Mutex::new(Held::default()),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Renews the lease from `sent`, the time the committed report `seq`
    /// was sent.
    pub fn renew(&self, sent: Instant, seq: u64) {
        self.renew_at(sent, seq, Instant::now())
    }

    fn renew_at(&self, sent: Instant, seq: u64, now: Instant) {
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let was = g.valid(self.length, now);
        if g.renewed.is_none_or(|r| sent > r) {
            g.renewed = Some(sent);
        }
        let is = g.valid(self.length, now);
        if !was && is {
            g.since = seq;
        }
        drop(g);
        if !was && is {
            self.notify.notify_waiters();
        }
    }

    /// True while the lease holds **and** the local copy of the catalog has
    /// applied the report that began it (`applied` is the newest report of
    /// this node the local catalog state holds).
    ///
    /// A node whose lease lapsed (it was paused, or cut off) may have been
    /// replaced in the meantime. Its first committed report after the gap
    /// renews the lease, but its local catalog state can still lag behind
    /// the log and name it the leader. Every election made in the gap is
    /// committed before that report, so once the local state has applied
    /// the report it shows them.
    pub fn valid_as_of(&self, applied: Option<u64>) -> bool {
        self.valid_as_of_at(applied, Instant::now())
    }

    fn valid_as_of_at(&self, applied: Option<u64>, now: Instant) -> bool {
        let g = *self.held.lock().unwrap_or_else(|p| p.into_inner());
        g.valid(self.length, now) && applied.is_some_and(|a| a >= g.since)
    }

    /// When the lease runs out, in `CLOCK_MONOTONIC` nanoseconds (the clock
    /// of the control file's lease word), or `None` if it was never held.
    pub fn deadline_ns(&self) -> Option<u64> {
        let renewed = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .renewed?;
        let (now, now_ns) = (Instant::now(), repliq::store::monotonic_now_ns());
        let left = (renewed + self.length).saturating_duration_since(now);
        Some(now_ns.saturating_add(left.as_nanos() as u64).max(1))
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
        let l = Lease::new(Duration::from_secs(60));
        assert!(!l.valid_as_of(Some(1)), "not held before the first renewal");
        l.renew(Instant::now(), 1);
        assert!(l.valid_as_of(Some(1)));
        // A renewal from a report sent long ago does not extend it.
        l.renew(Instant::now() - Duration::from_secs(600), 2);
        assert!(l.valid_as_of(Some(1)));
        let old = Lease::new(Duration::from_millis(200));
        old.renew(Instant::now() - Duration::from_millis(300), 1);
        assert!(
            !old.valid_as_of(Some(1)),
            "a report sent more than a lease ago renews nothing"
        );
    }

    #[test]
    fn after_a_lapse_the_lease_counts_only_once_the_local_state_applied_the_renewing_report() {
        let l = Lease::new(Duration::from_secs(60));
        l.renew(Instant::now(), 10);
        assert!(!l.valid_as_of(None), "no report of ours applied yet");
        assert!(!l.valid_as_of(Some(9)), "the state predates the lease");
        assert!(l.valid_as_of(Some(10)));
        // Renewals of an unbroken lease do not move its start: a healthy
        // leader whose local state lags its newest report keeps leading.
        l.renew(Instant::now(), 11);
        l.renew(Instant::now(), 12);
        assert!(l.valid_as_of(Some(10)));

        // The lease lapses (a pause longer than it): the next renewal
        // starts a new lease, and a state that has not applied it is stale.
        let p = Lease::new(Duration::from_millis(100));
        let t0 = Instant::now();
        p.renew_at(t0, 20, t0);
        assert!(p.valid_as_of_at(Some(20), t0 + Duration::from_millis(50)));
        let resumed = t0 + Duration::from_millis(150);
        assert!(!p.valid_as_of_at(Some(20), resumed), "lapsed");
        p.renew_at(resumed, 30, resumed + Duration::from_millis(5));
        let now = resumed + Duration::from_millis(10);
        assert!(
            !p.valid_as_of_at(Some(25), now),
            "renewed, but the local state still shows the world before the gap"
        );
        assert!(p.valid_as_of_at(Some(30), now));
    }
}
