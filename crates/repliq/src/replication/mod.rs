//! Replication: the wire protocol between a primary and its secondaries.
//!
//! The storage half (lending committed frames, writing validated runs
//! byte-identically) is in [`crate::store::replica`]; this layer knows
//! sockets and frames, not record layout.

pub mod protocol;
