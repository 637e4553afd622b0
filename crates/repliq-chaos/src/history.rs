//! The recorded history: operation events, fault windows and the nodes'
//! final logs, as written to the JSON history file.

use serde::{Deserialize, Serialize};

/// What happened to an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client is about to call the API.
    Invoke,
    /// The call returned success.
    Ok,
    /// The call failed and had no effect (e.g. refused before writing).
    Fail,
    /// Outcome unknown (e.g. a sync timeout: the record may be in the log).
    Info,
}

/// The operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpFn {
    /// `enqueue` of a unique value.
    Enqueue,
    /// `dequeue` through a consumer group.
    Dequeue,
}

/// The replication mode of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `ReplicationMode::Synchronous`.
    Sync,
    /// `ReplicationMode::Asynchronous`.
    Async,
}

/// One event of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// invoke / ok / fail / info.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// enqueue or dequeue.
    pub f: OpFn,
    /// The client process (unique in the run).
    pub process: u64,
    /// The node the client runs on.
    pub node: String,
    /// The queue.
    pub queue: String,
    /// Mode of an enqueue.
    pub mode: Mode,
    /// The value enqueued or dequeued.
    pub value: u64,
    /// Consumer group of a dequeue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Message id returned, when the API returns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Epoch returned, when available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// Of a cluster-mode group dequeue: the epoch the reader's node led the
    /// queue under (the store's epoch when its current leadership began),
    /// so that a change of leadership on one node is visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u32>,
    /// CLOCK_MONOTONIC in nanoseconds (one clock for every namespace).
    pub time_ns: u64,
    /// The error text of a fail or info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A fault window injected by a nemesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Kind, e.g. `kill`, `pause`, `partition-majority`.
    pub kind: String,
    /// What it was applied to, e.g. `node0 (primary)`.
    pub target: String,
    /// Start, CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    /// End (heal), CLOCK_MONOTONIC ns.
    pub end_ns: u64,
}

/// One record of a node's final log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Message id.
    pub id: u64,
    /// Epoch it was written under.
    pub epoch: u32,
    /// Raw payload.
    pub payload: Vec<u8>,
}

/// The final log of one queue on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLog {
    /// The queue.
    pub queue: String,
    /// The node.
    pub node: String,
    /// True on the queue's primary (in cluster mode: the leader the catalog
    /// names after the final heal and drain).
    pub primary: bool,
    /// True if the catalog lists this node among the queue's in-sync
    /// replicas at the end (cluster mode). Such a replica is judged for
    /// loss even if it lacks some of the leader's ids.
    #[serde(default)]
    pub in_sync: bool,
    /// Records in log order; `None` if the log could not be read.
    pub records: Option<Vec<LogRecord>>,
    /// Why the log could not be read, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything the checker reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Operation events in the order the controller received them.
    pub events: Vec<Event>,
    /// Faults injected.
    pub faults: Vec<Fault>,
    /// Final logs, read after the final heal and drain.
    pub logs: Vec<NodeLog>,
    /// Nemeses requested but unavailable on this machine, with the reason.
    #[serde(default)]
    pub unavailable: Vec<(String, String)>,
}

/// Prefix of the groups of the tailing readers (`tail-<node>`): they read
/// one replica each and are not consumer groups, so the group checks
/// (redelivery, group lost) do not apply to them.
pub const TAIL_GROUP_PREFIX: &str = "tail-";

/// Prefix of the text payload written by the `replica-write` nemesis
/// through `repliq append` (which writes raw bytes, not postcard).
pub const TEXT_VALUE_PREFIX: &str = "chaos-";

/// The value a payload carries: a postcard `u64` (the clients' encoding,
/// exactly, with no trailing bytes) or the text `chaos-<u64>`.
pub fn decode_value(payload: &[u8]) -> Option<u64> {
    if let Ok(v) = postcard::from_bytes::<u64>(payload) {
        if postcard::to_stdvec(&v).is_ok_and(|b| b == payload) {
            return Some(v);
        }
    }
    std::str::from_utf8(payload)
        .ok()?
        .strip_prefix(TEXT_VALUE_PREFIX)?
        .parse()
        .ok()
}

/// The payload a client writes for `value`.
pub fn encode_value(value: u64) -> Vec<u8> {
    postcard::to_stdvec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reads_both_encodings_and_rejects_garbage() {
        assert_eq!(decode_value(&encode_value(123_456_789)), Some(123_456_789));
        assert_eq!(decode_value(b"chaos-42"), Some(42));
        assert_eq!(decode_value(b"hello"), None);
        let mut trailing = encode_value(5);
        trailing.push(1);
        assert_eq!(decode_value(&trailing), None);
    }
}
