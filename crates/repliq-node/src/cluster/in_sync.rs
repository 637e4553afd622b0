//! The in-sync set of each queue, kept by the catalog's leader.
//!
//! A replica is **in sync** while it has held the leader's log, as the leader
//! reported it, at some moment within the last `max_lag` (the failover
//! timeout), the rule of Kafka's `replica.lag.time.max.ms`:
//!
//! * The catalog's leader notes the arrival of each report of a queue's
//!   leader with the tail it carried.
//! * A replica's report with the leader's epoch and tail `t` shows it held
//!   the leader's log as of the latest leader report whose tail was at most
//!   `t`, and no later than the replica's own report arrived. That moment is
//!   its **caught-up time**.
//! * A replica whose caught-up time is older than `max_lag` leaves the set:
//!   it is dead, stopped, cut off, or too slow to keep up.
//! * A replica outside the set whose fresh report holds what the leader last
//!   reported (same epoch, at least its tail) comes back.
//!
//! The set never loses the leader. It decides nothing about safety:
//! failover counts every replica's fresh report (see [`super::failover`]).
//! It shows operators which copies are current (`repliq cluster status`,
//! `repliq_in_sync_replicas`). A catalog leader that just took over knows no
//! history yet: it counts every member of the set as caught up when it
//! started watching, so nobody leaves before `max_lag` has passed.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use repliq_catalog::{CatalogState, QueueEntry};

/// When a member's last report reached this node, by member name.
pub type Arrivals = HashMap<String, Instant>;

/// The catalog leader's view of every queue's replicas.
#[derive(Debug)]
pub struct InSync {
    max_lag: Duration,
    queues: HashMap<String, QueueLag>,
}

/// One queue: its leader's recent reports and each replica's caught-up time.
#[derive(Debug)]
struct QueueLag {
    leader: String,
    epoch: u32,
    /// `(arrival, tail, seq)` of the leader's reports, oldest first.
    reports: VecDeque<(Instant, u64, u64)>,
    caught: HashMap<String, Instant>,
}

/// A change of a queue's in-sync set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The new set.
    pub in_sync: Vec<String>,
    /// Replicas that come back.
    pub joined: Vec<String>,
    /// Replicas that leave.
    pub left: Vec<String>,
}

impl InSync {
    /// A tracker that drops a replica after `max_lag` behind the leader.
    pub fn new(max_lag: Duration) -> InSync {
        InSync {
            max_lag,
            queues: HashMap::new(),
        }
    }

    /// Notes the queue's latest reports at `now` and returns the change of
    /// its in-sync set they call for, if any. `arrivals` says when each
    /// member's last report reached this node.
    pub fn update(
        &mut self,
        state: &CatalogState,
        q: &QueueEntry,
        arrivals: &Arrivals,
        now: Instant,
    ) -> Option<Change> {
        let leader = q.leader.as_deref()?;
        let progress = state.progress.get(&q.name)?;
        let lp = progress.get(leader)?;
        let lag = self
            .queues
            .entry(q.name.clone())
            .or_insert_with(|| QueueLag {
                leader: leader.to_string(),
                epoch: q.epoch,
                reports: VecDeque::new(),
                caught: HashMap::new(),
            });
        if lag.leader != leader || lag.epoch != q.epoch {
            // A new leader or epoch: nothing known about the new log yet.
            lag.leader = leader.to_string();
            lag.epoch = q.epoch;
            lag.reports.clear();
            lag.caught.clear();
        }
        if lag.reports.back().is_none_or(|r| r.2 != lp.seq) {
            let at = arrivals.get(leader).copied().unwrap_or(now);
            lag.reports.push_back((at, lp.tail, lp.seq));
        }
        // Keep what can still decide: reports within twice the lag, and the
        // latest one always.
        while lag.reports.len() > 1
            && lag
                .reports
                .front()
                .is_some_and(|r| now.saturating_duration_since(r.0) > self.max_lag * 2)
        {
            lag.reports.pop_front();
        }
        let mut joined = Vec::new();
        let mut left = Vec::new();
        for r in q.replicas.iter().filter(|r| r.as_str() != leader) {
            let caught = lag.caught.entry(r.clone()).or_insert(now);
            let arrived = arrivals.get(r).copied();
            if let (Some(rp), Some(arrived)) = (progress.get(r.as_str()), arrived) {
                if rp.epoch == lp.epoch {
                    // The latest leader report this replica's log covers.
                    let held = lag
                        .reports
                        .iter()
                        .rev()
                        .find(|x| x.1 <= rp.tail)
                        .map(|x| x.0.min(arrived));
                    if let Some(t) = held {
                        *caught = (*caught).max(t);
                    }
                }
            }
            let current = now.saturating_duration_since(*caught) <= self.max_lag;
            let member = q.in_sync.contains(r);
            if member && !current {
                left.push(r.clone());
            } else if !member && current && holds_leaders_log(state, q, r) {
                joined.push(r.clone());
            }
        }
        if joined.is_empty() && left.is_empty() {
            return None;
        }
        let mut in_sync: Vec<String> = q
            .in_sync
            .iter()
            .filter(|r| !left.contains(r))
            .cloned()
            .collect();
        if !in_sync.iter().any(|r| r == leader) {
            in_sync.insert(0, leader.to_string());
        }
        in_sync.extend(joined.iter().cloned());
        Some(Change {
            in_sync,
            joined,
            left,
        })
    }

    /// Forgets the queues the catalog no longer holds.
    pub fn retain(&mut self, state: &CatalogState) {
        self.queues
            .retain(|name, _| state.queues.contains_key(name));
    }
}

/// True if `r`'s last report holds what the leader last reported: the same
/// epoch for its last record, and at least the leader's tail.
pub fn holds_leaders_log(state: &CatalogState, q: &QueueEntry, r: &str) -> bool {
    let (Some(leader), Some(p)) = (q.leader.as_deref(), state.progress.get(&q.name)) else {
        return false;
    };
    let (Some(lp), Some(rp)) = (p.get(leader), p.get(r)) else {
        return false;
    };
    rp.epoch == lp.epoch && rp.tail >= lp.tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use repliq_catalog::Progress;

    use super::super::test_fixtures::entry;

    /// Reports of `(node, epoch, tail, seq)`.
    fn report(state: &mut CatalogState, node: &str, epoch: u32, tail: u64, seq: u64) {
        state
            .progress
            .entry("q".into())
            .or_default()
            .insert(node.into(), Progress { epoch, tail, seq });
    }

    const LAG: Duration = Duration::from_secs(3);

    #[test]
    fn replicas_that_keep_up_stay_and_one_that_stops_reporting_leaves_after_the_lag() {
        let t0 = Instant::now();
        let mut s = CatalogState::default();
        let q = entry();
        let mut t = InSync::new(LAG);
        let mut arrivals = Arrivals::new();
        // Every 500 ms the leader writes 100 more; b keeps up, c stopped at 900.
        for k in 0..20u64 {
            let now = t0 + Duration::from_millis(500 * k);
            report(&mut s, "a", 2, 1000 + 100 * k, k);
            arrivals.insert("a".into(), now);
            report(&mut s, "b", 2, 1000 + 100 * k.saturating_sub(1), k);
            arrivals.insert("b".into(), now);
            if k == 0 {
                report(&mut s, "c", 2, 900, 0);
                arrivals.insert("c".into(), now);
            }
            let change = t.update(&s, &q, &arrivals, now);
            let elapsed = Duration::from_millis(500 * k);
            if elapsed <= LAG {
                assert_eq!(change, None, "at {elapsed:?} nobody has lagged for {LAG:?}");
            } else {
                let c = change.expect("c lagged past the limit");
                assert_eq!(c.left, vec!["c".to_string()]);
                assert_eq!(c.in_sync, vec!["a".to_string(), "b".to_string()]);
                assert!(c.joined.is_empty());
                return;
            }
        }
        panic!("c never left the in-sync set");
    }

    #[test]
    fn an_idle_queue_keeps_a_live_replica_but_drops_one_whose_reports_stopped() {
        let t0 = Instant::now();
        let mut s = CatalogState::default();
        let q = entry();
        let mut t = InSync::new(LAG);
        let mut arrivals = Arrivals::new();
        // Nothing is written: every tail stays at 1000. c's reports stop
        // after the first one; an idle queue must not keep it in sync.
        report(&mut s, "c", 2, 1000, 0);
        arrivals.insert("c".into(), t0);
        let mut left = None;
        for k in 0..20u64 {
            let now = t0 + Duration::from_millis(500 * k);
            report(&mut s, "a", 2, 1000, k);
            arrivals.insert("a".into(), now);
            report(&mut s, "b", 2, 1000, k);
            arrivals.insert("b".into(), now);
            if let Some(c) = t.update(&s, &q, &arrivals, now) {
                left = Some((k, c));
                break;
            }
        }
        let (k, c) = left.expect("c left");
        assert_eq!(c.left, vec!["c".to_string()]);
        assert!(
            Duration::from_millis(500 * k) > LAG,
            "not before the lag ({k})"
        );
    }

    #[test]
    fn a_replica_out_of_the_set_comes_back_once_it_holds_the_leaders_log() {
        let t0 = Instant::now();
        let mut s = CatalogState::default();
        let mut q = entry();
        q.in_sync = vec!["a".into(), "b".into()];
        let mut t = InSync::new(LAG);
        let mut arrivals = Arrivals::new();
        report(&mut s, "a", 2, 900, 1);
        report(&mut s, "b", 2, 900, 1);
        report(&mut s, "c", 2, 400, 1);
        for n in ["a", "b", "c"] {
            arrivals.insert(n.into(), t0);
        }
        assert_eq!(t.update(&s, &q, &arrivals, t0), None, "c is behind");
        let t1 = t0 + Duration::from_millis(500);
        report(&mut s, "c", 1, 950, 2);
        arrivals.insert("c".into(), t1);
        assert_eq!(
            t.update(&s, &q, &arrivals, t1),
            None,
            "c's last record is of an older epoch"
        );
        report(&mut s, "c", 2, 900, 3);
        let c = t.update(&s, &q, &arrivals, t1).expect("c is back");
        assert_eq!(c.joined, vec!["c".to_string()]);
        assert_eq!(c.in_sync, vec!["a", "b", "c"]);
    }

    #[test]
    fn the_leader_never_leaves_and_a_new_epoch_starts_the_count_again() {
        let t0 = Instant::now();
        let mut s = CatalogState::default();
        let mut q = entry();
        let mut t = InSync::new(LAG);
        let mut arrivals = Arrivals::new();
        report(&mut s, "a", 2, 1000, 1);
        report(&mut s, "b", 2, 1000, 1);
        report(&mut s, "c", 2, 1000, 1);
        for n in ["a", "b", "c"] {
            arrivals.insert(n.into(), t0);
        }
        assert_eq!(t.update(&s, &q, &arrivals, t0), None);
        // b is elected in epoch 3; a, the old leader, stopped reporting.
        q.leader = Some("b".into());
        q.epoch = 3;
        let t1 = t0 + LAG * 2;
        report(&mut s, "b", 3, 1000, 2);
        arrivals.insert("b".into(), t1);
        report(&mut s, "c", 3, 1000, 2);
        arrivals.insert("c".into(), t1);
        assert_eq!(
            t.update(&s, &q, &arrivals, t1),
            None,
            "the new epoch's count starts now"
        );
        let t2 = t1 + LAG + Duration::from_millis(1);
        report(&mut s, "b", 3, 1200, 3);
        arrivals.insert("b".into(), t2);
        report(&mut s, "c", 3, 1200, 3);
        arrivals.insert("c".into(), t2);
        let c = t.update(&s, &q, &arrivals, t2).expect("a leaves");
        assert_eq!(c.left, vec!["a".to_string()]);
        assert!(c.in_sync.contains(&"b".to_string()), "{c:?}");
    }
}
