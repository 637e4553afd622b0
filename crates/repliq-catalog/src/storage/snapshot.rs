//! The stored snapshot (file `snapshot`): metadata plus the postcard-encoded catalog.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::storage::file::{read_atomic, write_atomic};
use crate::types::SnapshotMeta;

/// Name of the snapshot file.
pub const SNAPSHOT_FILE: &str = "snapshot";

/// A snapshot as stored on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    /// Raft metadata: last log id and membership covered.
    pub meta: SnapshotMeta,
    /// postcard-encoded [`CatalogState`](crate::CatalogState).
    pub data: Vec<u8>,
}

/// Path of the snapshot file in `dir`.
pub fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE)
}

/// Saves the snapshot durably (tmp + fsync + rename + directory fsync).
pub fn save_snapshot(dir: &Path, snap: &StoredSnapshot) -> Result<(), StoreError> {
    write_atomic(&snapshot_path(dir), snap)
}

/// Reads the snapshot; `None` if there is none.
pub fn read_snapshot(dir: &Path) -> Result<Option<StoredSnapshot>, StoreError> {
    read_atomic(&snapshot_path(dir))
}
