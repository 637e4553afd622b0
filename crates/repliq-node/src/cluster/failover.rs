//! Automatic failover, run by the catalog's leader.
//!
//! The catalog's leader notes, on its own clock, when each member's report
//! last changed. A queue whose leader has been silent for the failover
//! timeout gets a new leader, chosen so that no acknowledged record is lost:
//!
//! 1. The decision time `D` is noted. Only reports that reach the catalog
//!    after `D` count: by then the old leader's lease (half the timeout,
//!    counted from before its last report) has run out, so it acknowledges
//!    nothing more, and every acknowledged record is on the replicas that
//!    acknowledged it. A queue left with no leader (its leader came back
//!    under a new incarnation) gets `D` a whole timeout after it was first
//!    seen so, for the same reason ([`decision_time`]).
//! 2. It waits for such fresh reports from `replicas - min_insync + 1`
//!    replicas other than the old leader: any `min_insync` replicas holding
//!    an acknowledged record meet that set.
//! 3. It elects the freshly reported replica with the newest log (highest
//!    last epoch, then highest tail; ties by name), with a compare-and-set on
//!    the epoch, so that two catalog leaders in a row cannot both elect.
//!    Every replica's fresh report counts, in the in-sync set or not: a
//!    member back with a lost directory reports a short log and is never the
//!    newest while one with the records reports. A choice outside the
//!    in-sync set is re-admitted first (the same proof covers it), then
//!    elected.
//!
//! While a queue's leader reports, the in-sync set follows the replicas'
//! reports ([`super::in_sync`]): a replica that has not held the leader's
//! log within the failover timeout leaves it, and one whose report holds
//! the leader's last reported log comes back.
//!
//! Every member notes report arrivals as it applies the catalog's log, so a
//! newly elected catalog leader already knows when it last saw each report:
//! any member applies a report only after it was sent, so a silence counted
//! from there is never shorter than the silence the lease rule assumes. A
//! member this node never saw report is counted from when this node started
//! watching.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use repliq_catalog::{Catalog, CatalogState, Command, QueueEntry, Response};

use super::in_sync::{self, Arrivals, InSync};

/// What the catalog's leader knows of one member's reports.
#[derive(Debug, Clone, Copy)]
struct Seen {
    seq: u64,
    at: Instant,
}

/// Watches and elects until cancelled. `every` is the check interval.
pub async fn run(catalog: Arc<Catalog>, timeout: Duration, every: Duration) {
    let mut rx = catalog.subscribe();
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut suspect: HashMap<String, Instant> = HashMap::new();
    let mut in_sync = InSync::new(timeout);
    let watching = Instant::now();
    loop {
        let state = catalog.state();
        let now = Instant::now();
        for (node, &seq) in &state.reports {
            let e = seen
                .entry(node.clone())
                .or_insert(Seen { seq, at: watching });
            if e.seq != seq {
                *e = Seen { seq, at: now };
            }
        }
        // Leaders that never reported while this node watched count from
        // when it started watching.
        for q in state.queues.values() {
            if let Some(l) = &q.leader {
                seen.entry(l.clone()).or_insert(Seen {
                    seq: 0,
                    at: watching,
                });
            }
        }
        if catalog.metrics().leader.as_deref() == Some(catalog.name()) {
            let arrivals: Arrivals = seen.iter().map(|(n, s)| (n.clone(), s.at)).collect();
            in_sync.retain(&state);
            for (name, q) in &state.queues {
                let watch = Watch {
                    seen: &seen,
                    arrivals: &arrivals,
                    timeout,
                };
                check(
                    &catalog,
                    &state,
                    &watch,
                    &mut suspect,
                    &mut in_sync,
                    name,
                    q,
                )
                .await;
            }
        } else {
            suspect.clear();
            // A catalog leader again later starts the count afresh.
            in_sync = InSync::new(timeout);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// What the catalog's leader has seen of the members' reports.
struct Watch<'a> {
    seen: &'a HashMap<String, Seen>,
    arrivals: &'a Arrivals,
    timeout: Duration,
}

async fn check(
    catalog: &Catalog,
    state: &CatalogState,
    watch: &Watch<'_>,
    suspect: &mut HashMap<String, Instant>,
    in_sync: &mut InSync,
    name: &str,
    q: &QueueEntry,
) {
    let seen = watch.seen;
    let alive = |n: &str| seen.get(n).is_some_and(|s| s.at.elapsed() < watch.timeout);
    let leader_ok = q.leader.as_deref().is_some_and(alive);
    if leader_ok {
        suspect.remove(name);
        if let Some(change) = in_sync.update(state, q, watch.arrivals, Instant::now()) {
            set_in_sync(catalog, q, change).await;
        }
        return;
    }
    let suspected = *suspect.entry(name.to_string()).or_insert_with(|| {
        tracing::warn!(queue = %name, leader = ?q.leader, epoch = q.epoch, "queue leader silent for the failover timeout");
        Instant::now()
    });
    let decided = decision_time(q, suspected, watch.timeout);
    let Some(choice) = choose(state, seen, q, decided) else {
        return;
    };
    if !q.in_sync.contains(&choice.0) {
        // The quorum of fresh reports proves the choice holds every
        // acknowledged record, in the in-sync set or not (it may have caught
        // up since it came back with a lost directory, and not be
        // re-admitted yet): re-admit it first; the election follows at the
        // next check, fenced by the epoch.
        readmit(catalog, q, vec![choice.0.clone()]).await;
        return;
    }
    let cmd = Command::ElectLeader {
        queue: name.to_string(),
        new_leader: choice.0.clone(),
        expected_epoch: q.epoch,
        first_id: choice.2,
        unclean: false,
    };
    match catalog.propose(cmd).await {
        Ok(Response::Queue(e)) => {
            tracing::warn!(queue = %name, old = ?q.leader, new = %choice.0, epoch = e.epoch, "failover: new leader elected");
            suspect.remove(name);
        }
        Ok(other) => tracing::warn!(queue = %name, "failover refused: {other:?}"),
        Err(e) => tracing::warn!(queue = %name, "failover proposal failed: {e}"),
    }
}

/// Adds `back` to the queue's in-sync set (compare-and-set on the epoch).
async fn readmit(catalog: &Catalog, q: &QueueEntry, back: Vec<String>) {
    if back.is_empty() {
        return;
    }
    let mut in_sync = q.in_sync.clone();
    in_sync.extend(back.iter().cloned());
    let cmd = Command::SetInSync {
        queue: q.name.clone(),
        epoch: q.epoch,
        in_sync,
    };
    match catalog.propose(cmd).await {
        Ok(Response::Queue(_)) => {
            tracing::info!(queue = %q.name, replicas = ?back, "caught up: back in the in-sync set")
        }
        Ok(other) => tracing::debug!(queue = %q.name, "in-sync update refused: {other:?}"),
        Err(e) => tracing::debug!(queue = %q.name, "in-sync update failed: {e}"),
    }
}

/// Proposes a change of the queue's in-sync set (compare-and-set on the
/// epoch).
async fn set_in_sync(catalog: &Catalog, q: &QueueEntry, change: in_sync::Change) {
    let cmd = Command::SetInSync {
        queue: q.name.clone(),
        epoch: q.epoch,
        in_sync: change.in_sync.clone(),
    };
    match catalog.propose(cmd).await {
        Ok(Response::Queue(_)) => {
            if !change.left.is_empty() {
                tracing::warn!(queue = %q.name, replicas = ?change.left, in_sync = ?change.in_sync, "fell behind the leader for the failover timeout: out of the in-sync set");
            }
            if !change.joined.is_empty() {
                tracing::info!(queue = %q.name, replicas = ?change.joined, "caught up: back in the in-sync set");
            }
        }
        Ok(other) => tracing::debug!(queue = %q.name, "in-sync update refused: {other:?}"),
        Err(e) => tracing::debug!(queue = %q.name, "in-sync update failed: {e}"),
    }
}

/// The decision time `D` of step 1 for a queue first seen without a live
/// leader at `suspected`.
///
/// A silent leader was already silent for the failover timeout: `D` is
/// `suspected`. A queue with *no* leader lost it when the leader's member
/// came back under a new incarnation (a lost directory): its former self
/// may have renewed its lease just before it died, and writers on its host
/// still append under that lease until it runs out (half the timeout,
/// counted from before its last report, which came before the `Join` this
/// node applied before `suspected`). `D` is then a whole timeout later, so
/// no new leader accepts appends while the former one's lease holds. (The
/// chaos harness's lost-disk-under-a-slower-clock found the overlap: a node
/// back at once was replaced within 0.4 s while its old writer still
/// appended.)
fn decision_time(q: &QueueEntry, suspected: Instant, timeout: Duration) -> Instant {
    if q.leader.is_some() {
        suspected
    } else {
        suspected + timeout
    }
}

/// The replica to elect, from reports that arrived after `decided`:
/// `(node, last epoch, tail)`, or `None` while too few are fresh.
fn choose(
    state: &CatalogState,
    seen: &HashMap<String, Seen>,
    q: &QueueEntry,
    decided: Instant,
) -> Option<(String, u32, u64)> {
    let progress = state.progress.get(&q.name);
    let fresh: Vec<(String, u32, u64)> = q
        .replicas
        .iter()
        .filter(|r| Some(r.as_str()) != q.leader.as_deref())
        .filter_map(|r| {
            let s = seen.get(r)?;
            if s.at <= decided {
                return None;
            }
            let p = progress?.get(r)?;
            // The progress must come from the fresh report itself.
            (p.seq == s.seq).then(|| (r.clone(), p.epoch, p.tail))
        })
        .collect();
    let needed = q
        .replicas
        .len()
        .saturating_sub(q.settings.min_insync as usize)
        + 1;
    if fresh.len() < needed {
        return None;
    }
    fresh.into_iter().max_by(|a, b| {
        (a.1, a.2, std::cmp::Reverse(&a.0)).cmp(&(b.1, b.2, std::cmp::Reverse(&b.0)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use repliq_catalog::Progress;

    use super::super::test_fixtures::entry;

    #[test]
    fn a_queue_without_a_leader_waits_a_whole_timeout_for_fresh_reports() {
        let timeout = Duration::from_millis(300);
        let suspected = Instant::now();
        let mut q = entry();
        assert_eq!(decision_time(&q, suspected, timeout), suspected);
        q.leader = None;
        let decided = decision_time(&q, suspected, timeout);
        assert_eq!(decided, suspected + timeout);
        // Reports from both followers right after the queue lost its leader
        // do not elect; the same reports after the whole timeout do.
        let mut state = CatalogState::default();
        let mut p = std::collections::BTreeMap::new();
        for (r, tail) in [("b", 500), ("c", 900)] {
            let pr = Progress {
                epoch: 1,
                tail,
                seq: 1,
            };
            p.insert(r.to_string(), pr);
        }
        state.progress.insert("q".into(), p);
        let soon = suspected + Duration::from_millis(10);
        let mut seen = HashMap::new();
        for r in ["a", "b", "c"] {
            seen.insert(r.to_string(), Seen { seq: 1, at: soon });
        }
        assert_eq!(choose(&state, &seen, &q, decided), None);
        let after = decided + Duration::from_millis(1);
        for r in ["a", "b", "c"] {
            seen.insert(r.to_string(), Seen { seq: 1, at: after });
        }
        assert!(choose(&state, &seen, &q, decided).is_some());
    }

    #[test]
    fn the_newest_freshly_reported_log_wins_and_stale_reports_do_not_count() {
        let decided = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let later = Instant::now();
        let mut state = CatalogState::default();
        let mut p = std::collections::BTreeMap::new();
        p.insert(
            "b".to_string(),
            Progress {
                epoch: 1,
                tail: 500,
                seq: 7,
            },
        );
        p.insert(
            "c".to_string(),
            Progress {
                epoch: 1,
                tail: 900,
                seq: 3,
            },
        );
        state.progress.insert("q".into(), p);
        let mut seen = HashMap::new();
        seen.insert("b".to_string(), Seen { seq: 7, at: later });
        // c's last report came before the decision: not fresh.
        seen.insert(
            "c".to_string(),
            Seen {
                seq: 3,
                at: decided - Duration::from_millis(1),
            },
        );
        assert_eq!(
            choose(&state, &seen, &entry(), decided),
            None,
            "one fresh report of two needed"
        );
        seen.insert("c".to_string(), Seen { seq: 3, at: later });
        assert_eq!(
            choose(&state, &seen, &entry(), decided),
            Some(("c".into(), 1, 900))
        );
        // A newer epoch beats a longer log.
        state.progress.get_mut("q").unwrap().insert(
            "b".into(),
            Progress {
                epoch: 2,
                tail: 100,
                seq: 7,
            },
        );
        assert_eq!(
            choose(&state, &seen, &entry(), decided),
            Some(("b".into(), 2, 100))
        );
        // Progress from an older report than the fresh one does not count.
        seen.insert("b".to_string(), Seen { seq: 8, at: later });
        assert_eq!(choose(&state, &seen, &entry(), decided), None);
    }
}
