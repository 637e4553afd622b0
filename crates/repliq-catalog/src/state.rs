//! The catalog: the replicated state machine's data and its deterministic `apply`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Command, QueueSettings, Rejection, Response};

/// A cluster member as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// `host:port` of its catalog/replication endpoint.
    pub addr: String,
    /// Incarnation of its data directory.
    pub incarnation: u64,
    /// Whether it is considered live.
    pub live: bool,
}

/// A queue as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Queue name.
    pub name: String,
    /// Random id, one per queue history.
    pub queue_id: u64,
    /// Replica node names.
    pub replicas: Vec<String>,
    /// Current leader.
    pub leader: Option<String>,
    /// Current epoch, starting at 1.
    pub epoch: u32,
    /// `(epoch, first id/position)` for every epoch, in order.
    pub epoch_history: Vec<(u32, u64)>,
    /// Replicas in sync with the leader.
    pub in_sync: Vec<String>,
    /// Settings.
    pub settings: QueueSettings,
    /// A planned leader change in progress: the leader stops taking appends
    /// until this replica has caught up, then elects it.
    #[serde(default)]
    pub transfer_to: Option<String>,
}

/// What one replica reported about its copy of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Epoch of its last record.
    pub epoch: u32,
    /// Its write position.
    pub tail: u64,
    /// The report's sequence number.
    pub seq: u64,
}

/// The whole catalog: members and queues, keyed by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogState {
    /// Members by name.
    pub members: BTreeMap<String, Member>,
    /// Queues by name.
    pub queues: BTreeMap<String, QueueEntry>,
    /// The last report of each member (its sequence number).
    pub reports: BTreeMap<String, u64>,
    /// Per queue, per replica: its last reported progress.
    pub progress: BTreeMap<String, BTreeMap<String, Progress>>,
}

impl CatalogState {
    /// A member came back under a new incarnation: it lost its data
    /// directory, so its copies of the queues are gone. It leaves every
    /// in-sync set (its old acknowledgements no longer count), stops leading
    /// (failover elects among the in-sync replicas left), and its old
    /// progress is forgotten. It re-enters an in-sync set once it has caught
    /// up (`SetInSync`).
    fn forget_copies_of(&mut self, name: &str) {
        for q in self.queues.values_mut() {
            if !q.replicas.iter().any(|r| r == name) {
                continue;
            }
            q.in_sync.retain(|r| r != name);
            if q.leader.as_deref() == Some(name) {
                q.leader = None;
                q.transfer_to = None;
            }
            if let Some(p) = self.progress.get_mut(&q.name) {
                p.remove(name);
            }
        }
    }

    /// The queue `name`, if its current epoch is `epoch` (a command made for
    /// another epoch is stale).
    fn queue_at_epoch(&mut self, name: &str, epoch: u32) -> Result<&mut QueueEntry, Rejection> {
        let q = self
            .queues
            .get_mut(name)
            .ok_or_else(|| Rejection::NoSuchQueue(name.to_string()))?;
        if epoch != q.epoch {
            return Err(Rejection::StaleEpoch {
                given: epoch,
                current: q.epoch,
            });
        }
        Ok(q)
    }

    /// Applies one command, deterministically. A rejected command leaves the state unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match self.try_apply(cmd) {
            Ok(r) => r,
            Err(rej) => Response::Rejected(rej),
        }
    }

    fn try_apply(&mut self, cmd: &Command) -> Result<Response, Rejection> {
        match cmd {
            Command::Join {
                name,
                addr,
                incarnation,
            } => {
                if let Some(m) = self.members.get(name) {
                    if *incarnation < m.incarnation {
                        return Err(Rejection::StaleIncarnation {
                            name: name.clone(),
                            given: *incarnation,
                            current: m.incarnation,
                        });
                    }
                    if *incarnation > m.incarnation {
                        self.forget_copies_of(name);
                    }
                }
                let m = Member {
                    name: name.clone(),
                    addr: addr.clone(),
                    incarnation: *incarnation,
                    live: true,
                };
                self.members.insert(name.clone(), m.clone());
                Ok(Response::Member(m))
            }
            Command::SetLiveness { name, live } => {
                let m = self
                    .members
                    .get_mut(name)
                    .ok_or_else(|| Rejection::NoSuchMember(name.clone()))?;
                m.live = *live;
                Ok(Response::Member(m.clone()))
            }
            Command::CreateQueue {
                name,
                queue_id,
                replicas,
                leader,
                settings,
                start_pos,
            } => {
                if replicas.is_empty() {
                    return Err(Rejection::Invalid("no replicas".into()));
                }
                if let Some(l) = leader {
                    if !replicas.contains(l) {
                        return Err(Rejection::NotAReplica(l.clone()));
                    }
                }
                let q = QueueEntry {
                    name: name.clone(),
                    queue_id: *queue_id,
                    replicas: replicas.clone(),
                    leader: leader.clone(),
                    epoch: 1,
                    epoch_history: vec![(1, *start_pos)],
                    in_sync: replicas.clone(),
                    settings: settings.clone(),
                    transfer_to: None,
                };
                if let Some(existing) = self.queues.get(name) {
                    let same = existing.queue_id == q.queue_id
                        && existing.replicas == q.replicas
                        && existing.settings == q.settings
                        && existing.epoch_history.first() == q.epoch_history.first();
                    return if same {
                        Ok(Response::Queue(existing.clone()))
                    } else {
                        Err(Rejection::QueueExists(name.clone()))
                    };
                }
                self.queues.insert(name.clone(), q.clone());
                Ok(Response::Queue(q))
            }
            Command::ElectLeader {
                queue,
                new_leader,
                expected_epoch,
                first_id,
                unclean,
            } => {
                let q = self.queue_at_epoch(queue, *expected_epoch)?;
                if !q.replicas.contains(new_leader) {
                    return Err(Rejection::NotAReplica(new_leader.clone()));
                }
                if !*unclean && !q.in_sync.contains(new_leader) {
                    return Err(Rejection::NotInSync(new_leader.clone()));
                }
                let epoch = q
                    .epoch
                    .checked_add(1)
                    .ok_or_else(|| Rejection::Invalid("epoch overflow".into()))?;
                q.epoch = epoch;
                q.leader = Some(new_leader.clone());
                q.transfer_to = None;
                q.epoch_history.push((epoch, *first_id));
                if *unclean && !q.in_sync.contains(new_leader) {
                    q.in_sync = vec![new_leader.clone()];
                }
                Ok(Response::Queue(q.clone()))
            }
            Command::SetInSync {
                queue,
                epoch,
                in_sync,
            } => {
                let q = self.queue_at_epoch(queue, *epoch)?;
                if let Some(bad) = in_sync.iter().find(|n| !q.replicas.contains(n)) {
                    return Err(Rejection::NotAReplica(bad.clone()));
                }
                q.in_sync = in_sync.clone();
                Ok(Response::Queue(q.clone()))
            }
            Command::AddReplica { queue, epoch, node } => {
                if !self.members.contains_key(node) {
                    return Err(Rejection::NoSuchMember(node.clone()));
                }
                let q = self.queue_at_epoch(queue, *epoch)?;
                if !q.replicas.contains(node) {
                    q.replicas.push(node.clone());
                }
                Ok(Response::Queue(q.clone()))
            }
            Command::DeleteQueue { name } => {
                self.queues.remove(name);
                self.progress.remove(name);
                Ok(Response::Deleted)
            }
            Command::BeginTransfer { queue, to, epoch } => {
                let q = self.queue_at_epoch(queue, *epoch)?;
                if !q.replicas.contains(to) {
                    return Err(Rejection::NotAReplica(to.clone()));
                }
                if q.leader.as_ref() == Some(to) {
                    return Err(Rejection::Invalid(format!("{to} already leads {queue}")));
                }
                if let Some(t) = &q.transfer_to {
                    if t != to {
                        return Err(Rejection::Invalid(format!(
                            "a transfer of {queue} to {t} is in progress"
                        )));
                    }
                }
                q.transfer_to = Some(to.clone());
                Ok(Response::Queue(q.clone()))
            }
            Command::CancelTransfer { queue, epoch } => {
                let q = self.queue_at_epoch(queue, *epoch)?;
                q.transfer_to = None;
                Ok(Response::Queue(q.clone()))
            }
            Command::Report {
                node,
                incarnation,
                seq,
                progress,
            } => {
                let m = self
                    .members
                    .get(node)
                    .ok_or_else(|| Rejection::NoSuchMember(node.clone()))?;
                if *incarnation != m.incarnation {
                    return Err(Rejection::StaleIncarnation {
                        name: node.clone(),
                        given: *incarnation,
                        current: m.incarnation,
                    });
                }
                self.reports.insert(node.clone(), *seq);
                for (q, epoch, tail) in progress {
                    if self.queues.contains_key(q) {
                        self.progress.entry(q.clone()).or_default().insert(
                            node.clone(),
                            Progress {
                                epoch: *epoch,
                                tail: *tail,
                                seq: *seq,
                            },
                        );
                    }
                }
                Ok(Response::None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Durability, ReplicationMode};

    fn settings() -> QueueSettings {
        QueueSettings {
            capacity: 1 << 20,
            segment_size: 1 << 16,
            durability: Durability::Sync,
            mode: ReplicationMode::Sync,
            min_insync: 2,
        }
    }

    fn create(id: u64) -> Command {
        Command::CreateQueue {
            name: "q".into(),
            queue_id: id,
            replicas: vec!["a".into(), "b".into(), "c".into()],
            leader: Some("a".into()),
            settings: settings(),
            start_pos: 0,
        }
    }

    #[test]
    fn create_is_idempotent_and_elect_is_fenced() {
        let mut s = CatalogState::default();
        assert!(matches!(s.apply(&create(7)), Response::Queue(_)));
        assert!(matches!(s.apply(&create(7)), Response::Queue(_)));
        assert_eq!(
            s.apply(&create(8)),
            Response::Rejected(Rejection::QueueExists("q".into()))
        );
        let set = Command::SetInSync {
            queue: "q".into(),
            epoch: 1,
            in_sync: vec!["a".into(), "b".into()],
        };
        assert!(matches!(s.apply(&set), Response::Queue(_)));
        let elect = |leader: &str, e: u32, unclean: bool| Command::ElectLeader {
            queue: "q".into(),
            new_leader: leader.into(),
            expected_epoch: e,
            first_id: 100,
            unclean,
        };
        assert_eq!(
            s.apply(&elect("c", 1, false)),
            Response::Rejected(Rejection::NotInSync("c".into()))
        );
        assert!(matches!(
            s.apply(&elect("b", 2, false)),
            Response::Rejected(Rejection::StaleEpoch { .. })
        ));
        let Response::Queue(q) = s.apply(&elect("b", 1, false)) else {
            panic!("elect failed")
        };
        assert_eq!(q.epoch, 2);
        assert_eq!(q.epoch_history, vec![(1, 0), (2, 100)]);
        assert!(matches!(
            s.apply(&set),
            Response::Rejected(Rejection::StaleEpoch { .. })
        ));
        let Response::Queue(q) = s.apply(&elect("c", 2, true)) else {
            panic!("unclean elect failed")
        };
        assert_eq!(q.leader.as_deref(), Some("c"));
        assert_eq!(q.in_sync, vec!["c".to_string()]);
    }

    #[test]
    fn add_replica_takes_a_member_outside_the_in_sync_set_once_and_is_fenced() {
        let mut s = CatalogState::default();
        let small = Command::CreateQueue {
            name: "q".into(),
            queue_id: 7,
            replicas: vec!["a".into(), "b".into()],
            leader: Some("a".into()),
            settings: settings(),
            start_pos: 0,
        };
        assert!(matches!(s.apply(&small), Response::Queue(_)));
        let add = |node: &str, epoch: u32| Command::AddReplica {
            queue: "q".into(),
            epoch,
            node: node.into(),
        };
        assert_eq!(
            s.apply(&add("c", 1)),
            Response::Rejected(Rejection::NoSuchMember("c".into())),
            "only a member can be added"
        );
        s.apply(&Command::Join {
            name: "c".into(),
            addr: "c:1".into(),
            incarnation: 1,
        });
        assert!(matches!(
            s.apply(&add("c", 2)),
            Response::Rejected(Rejection::StaleEpoch { .. })
        ));
        let Response::Queue(q) = s.apply(&add("c", 1)) else {
            panic!("add failed")
        };
        assert_eq!(q.replicas, ["a", "b", "c"]);
        assert!(!q.in_sync.contains(&"c".to_string()), "{q:?}");
        let Response::Queue(q) = s.apply(&add("c", 1)) else {
            panic!("a second add failed")
        };
        assert_eq!(q.replicas, ["a", "b", "c"], "added once");
    }

    #[test]
    fn join_incarnations() {
        let mut s = CatalogState::default();
        let join = |i: u64| Command::Join {
            name: "a".into(),
            addr: "x:1".into(),
            incarnation: i,
        };
        assert!(matches!(s.apply(&join(5)), Response::Member(_)));
        assert!(matches!(
            s.apply(&join(4)),
            Response::Rejected(Rejection::StaleIncarnation { .. })
        ));
        assert!(matches!(s.apply(&join(6)), Response::Member(_)));
        assert_eq!(s.members["a"].incarnation, 6);
    }

    #[test]
    fn a_member_back_with_a_lost_directory_stops_leading_and_leaves_the_in_sync_sets() {
        let mut s = CatalogState::default();
        for (n, i) in [("a", 5), ("b", 5), ("c", 5)] {
            s.apply(&Command::Join {
                name: n.into(),
                addr: format!("{n}:1"),
                incarnation: i,
            });
        }
        s.apply(&create(7));
        s.apply(&Command::Report {
            node: "a".into(),
            incarnation: 5,
            seq: 1,
            progress: vec![("q".into(), 1, 900)],
        });
        let rejoin = |i: u64| Command::Join {
            name: "a".into(),
            addr: "a:1".into(),
            incarnation: i,
        };
        // The same incarnation (a restart with its disk) changes nothing.
        s.apply(&rejoin(5));
        assert_eq!(s.queues["q"].leader.as_deref(), Some("a"));
        assert!(s.queues["q"].in_sync.contains(&"a".to_string()));
        // A new incarnation (an empty directory): no longer the leader, out
        // of the in-sync set, its old progress forgotten.
        s.apply(&rejoin(6));
        let q = &s.queues["q"];
        assert_eq!(q.leader, None);
        assert_eq!(q.in_sync, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(q.replicas.len(), 3, "still a replica: it copies again");
        assert!(!s.progress["q"].contains_key("a"));
        // It may not be elected back without catching up (or --unclean).
        assert!(matches!(
            s.apply(&Command::ElectLeader {
                queue: "q".into(),
                new_leader: "a".into(),
                expected_epoch: 1,
                first_id: 0,
                unclean: false,
            }),
            Response::Rejected(Rejection::NotInSync(_))
        ));
    }
}
