//! The persisted vote (file `vote`) and committed log id (file `committed`).

use std::path::{Path, PathBuf};

use crate::error::StoreError;
use crate::storage::file::{read_atomic, write_atomic};
use crate::types::{LogId, Vote};

/// Name of the vote file.
pub const VOTE_FILE: &str = "vote";
/// Name of the committed-log-id file.
pub const COMMITTED_FILE: &str = "committed";

/// Path of the vote file in `dir`.
pub fn vote_path(dir: &Path) -> PathBuf {
    dir.join(VOTE_FILE)
}

/// Saves the vote durably (tmp + fsync + rename + directory fsync).
pub fn save_vote(dir: &Path, vote: &Vote) -> Result<(), StoreError> {
    write_atomic(&vote_path(dir), vote)
}

/// Reads the vote; `None` if never saved.
pub fn read_vote(dir: &Path) -> Result<Option<Vote>, StoreError> {
    read_atomic(&vote_path(dir))
}

/// Saves the committed log id durably.
pub fn save_committed(dir: &Path, committed: &Option<LogId>) -> Result<(), StoreError> {
    write_atomic(&dir.join(COMMITTED_FILE), committed)
}

/// Reads the committed log id; `None` if never saved.
pub fn read_committed(dir: &Path) -> Result<Option<LogId>, StoreError> {
    Ok(read_atomic::<Option<LogId>>(&dir.join(COMMITTED_FILE))?.flatten())
}
