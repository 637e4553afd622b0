//! The commands carried in the Raft log and the state machine's answers.

use serde::{Deserialize, Serialize};

use crate::state::{Member, QueueEntry};

/// How a queue's writes are made durable on each replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durability {
    /// No fsync; data lives in the page cache until the OS writes it.
    None,
    /// fsync in batches.
    Batch,
    /// fsync every write before acknowledging it.
    Sync,
}

/// Whether the queue leader waits for the in-sync replicas before acknowledging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationMode {
    /// Acknowledge after `min_insync` replicas have the write.
    Sync,
    /// Acknowledge after the leader has the write.
    Async,
}

/// Per-queue settings, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// Capacity of the queue in bytes.
    pub capacity: u64,
    /// Size of one segment file in bytes.
    pub segment_size: u64,
    /// Durability of writes on each replica.
    pub durability: Durability,
    /// Replication mode.
    pub mode: ReplicationMode,
    /// Minimum number of in-sync replicas (leader included) for a sync write.
    pub min_insync: u32,
}

/// A change to the catalog: the application data of a Raft log entry.
///
/// Each command is validated by the state machine, deterministically, when it is
/// applied; the result is a [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node (re)joins. A higher incarnation replaces the member record; a lower one
    /// is rejected; the same one updates the address.
    Join {
        /// Node name.
        name: String,
        /// `host:port` of its catalog/replication endpoint.
        addr: String,
        /// Incarnation of the node's data directory.
        incarnation: u64,
    },
    /// Marks a member live or not.
    SetLiveness {
        /// Node name.
        name: String,
        /// Whether it is live.
        live: bool,
    },
    /// Creates a queue. Idempotent if an identical queue exists.
    CreateQueue {
        /// Queue name.
        name: String,
        /// Random id, one per queue history.
        queue_id: u64,
        /// Replica node names.
        replicas: Vec<String>,
        /// Initial leader, one of `replicas`.
        leader: Option<String>,
        /// The queue's settings.
        settings: QueueSettings,
        /// First id/position of epoch 1.
        start_pos: u64,
    },
    /// Elects a new queue leader, fenced by compare-and-set on the epoch.
    ElectLeader {
        /// Queue name.
        queue: String,
        /// The new leader.
        new_leader: String,
        /// The epoch the proposer saw; must equal the current epoch.
        expected_epoch: u32,
        /// First id/position written in the new epoch.
        first_id: u64,
        /// Allow a leader outside the in-sync set.
        unclean: bool,
    },
    /// Replaces the in-sync set of a queue for the given epoch.
    SetInSync {
        /// Queue name.
        queue: String,
        /// The current epoch; a stale epoch is rejected.
        epoch: u32,
        /// The new in-sync replicas.
        in_sync: Vec<String>,
    },
    /// Deletes a queue.
    DeleteQueue {
        /// Queue name.
        name: String,
    },
    /// Starts a planned leader change: the leader stops taking appends, waits
    /// for `to` to hold its whole log, then elects it (`ElectLeader`, which
    /// ends the transfer). Fenced by the epoch.
    BeginTransfer {
        /// Queue name.
        queue: String,
        /// The replica to lead next.
        to: String,
        /// The current epoch.
        epoch: u32,
    },
    /// Gives up a planned leader change (the target did not catch up).
    CancelTransfer {
        /// Queue name.
        queue: String,
        /// The current epoch.
        epoch: u32,
    },
    /// A member's periodic report: it is alive (the leader notes when each
    /// report arrives) and holds, for each queue it replicates, a log whose
    /// last record has `epoch` and which ends at `tail`. Failover picks the
    /// new leader from fresh reports.
    Report {
        /// Node name.
        node: String,
        /// Its incarnation: a report of a former incarnation is rejected.
        incarnation: u64,
        /// Increases with every report of this incarnation.
        seq: u64,
        /// `(queue, last epoch, tail)` for every queue it holds.
        progress: Vec<(String, u32, u64)>,
    },
    /// Adds a member to a queue's replica set (a queue registered while
    /// fewer members than its replication factor were known). The new
    /// replica starts outside the in-sync set and copies the log from the
    /// leader. Fenced by the epoch.
    AddReplica {
        /// Queue name.
        queue: String,
        /// The current epoch.
        epoch: u32,
        /// The member to add.
        node: String,
    },
}

/// Why the state machine refused a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// A different queue with this name exists.
    #[error("queue {0} exists")]
    QueueExists(String),
    /// No such queue.
    #[error("no queue {0}")]
    NoSuchQueue(String),
    /// No such member.
    #[error("no member {0}")]
    NoSuchMember(String),
    /// The member is known with a higher incarnation.
    #[error("member {name}: incarnation {given} is older than {current}")]
    StaleIncarnation {
        /// Node name.
        name: String,
        /// Incarnation in the command.
        given: u64,
        /// Incarnation on record.
        current: u64,
    },
    /// The epoch in the command is not the current one.
    #[error("stale epoch {given}, current is {current}")]
    StaleEpoch {
        /// Epoch in the command.
        given: u32,
        /// Current epoch.
        current: u32,
    },
    /// The proposed leader is not in the in-sync set (and `unclean` was not set).
    #[error("{0} is not in sync")]
    NotInSync(String),
    /// The node is not a replica of the queue.
    #[error("{0} is not a replica")]
    NotAReplica(String),
    /// The command is malformed.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// The state machine's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to a Raft-internal entry (blank or membership).
    None,
    /// A member record after the command.
    Member(Member),
    /// A queue record after the command.
    Queue(QueueEntry),
    /// The queue was deleted (or did not exist).
    Deleted,
    /// The command was refused; the state is unchanged.
    Rejected(Rejection),
}
