//! Durable Raft storage: the log, the vote, the snapshot and the node's incarnation,
//! as files in one directory. See the crate docs for the file formats.

pub mod file;
pub mod gate;
pub mod log;
pub mod snapshot;
pub mod state_machine;
pub mod vote;

pub use log::LogStore;
pub use state_machine::StateMachineStore;

use openraft::StorageIOError;

use crate::error::StoreError;
use crate::types::StorageError;

pub(crate) fn to_write_err(e: &StoreError) -> StorageError {
    StorageIOError::write(e).into()
}

pub(crate) fn to_read_err(e: &StoreError) -> StorageError {
    StorageIOError::read(e).into()
}
