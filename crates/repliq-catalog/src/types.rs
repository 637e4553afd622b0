//! The openraft type configuration and node identity.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};

/// A Raft node id: `node_id(name, incarnation)`.
pub type NodeId = u64;

/// What Raft knows about a node: its name and catalog endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogNode {
    /// Node name.
    pub name: String,
    /// `host:port` of its catalog endpoint.
    pub addr: String,
}

impl fmt::Display for CatalogNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// The catalog's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = CatalogNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The catalog's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A Raft log entry of the catalog.
pub type Entry = openraft::Entry<TypeConfig>;
/// A Raft log id.
pub type LogId = openraft::LogId<NodeId>;
/// A Raft vote.
pub type Vote = openraft::Vote<NodeId>;
/// A Raft storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, CatalogNode>;
/// Membership with the id of the log entry that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, CatalogNode>;

/// The Raft node id of `name` in its incarnation `incarnation`: FNV-1a 64 of the name
/// bytes, a zero byte and the incarnation in little endian. Stable across builds and
/// platforms; a node that lost its directory gets a new incarnation, hence a new id.
pub fn node_id(name: &str, incarnation: u64) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = name
        .as_bytes()
        .iter()
        .copied()
        .chain(std::iter::once(0))
        .chain(incarnation.to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_id_is_stable_and_depends_on_incarnation() {
        assert_eq!(super::node_id("a", 1), super::node_id("a", 1));
        assert_ne!(super::node_id("a", 1), super::node_id("a", 2));
        assert_ne!(super::node_id("a", 1), super::node_id("b", 1));
    }
}
