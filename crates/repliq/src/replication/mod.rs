//! Replication: the wire protocol between a primary and its secondaries.
//!
//! The storage half (lending committed frames, writing validated runs
//! byte-identically) is in [`crate::store::replica`]; this layer knows
//! sockets and frames, not record layout.

mod conn;
pub mod dispatch;
pub mod error;
pub mod inprocess;
pub mod primary;
pub mod protocol;
pub mod secondary;
pub mod sync;

pub use error::ReplicationError;
pub use primary::PrimaryConfig;
pub use secondary::SecondaryConfig;
