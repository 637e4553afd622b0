//! Replication: the wire protocol between a primary and its secondaries.
//!
//! The storage half (lending committed frames, writing validated runs
//! byte-identically) is in [`crate::store::replica`]; this layer knows
//! sockets and frames, not record layout.
//!
//! **One engine.** Every way of replicating a queue runs the same parts:
//! the session protocol (`primary::serve_session` behind
//! [`dispatch::serve_registry_with`] on the serving side,
//! [`secondary::session_on`] on the following side) and the follower loop
//! ([`follower::follow_loop`]). The in-process `with_replication`
//! ([`inprocess`]), the daemon's static primary and secondaries, and the
//! cluster daemon's per-queue drivers (`repliq-node`) differ only in what
//! they decide (who leads, whom to follow, which transport) and hand these
//! parts.

mod conn;
pub mod dispatch;
pub mod error;
pub mod follower;
pub mod inprocess;
pub mod primary;
pub mod protocol;
pub mod secondary;
pub mod sync;

pub use error::ReplicationError;
pub use primary::PrimaryConfig;
pub use secondary::SecondaryConfig;
