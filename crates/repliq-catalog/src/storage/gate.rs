//! A gate around the storage's file writes, so that shutting the catalog
//! down waits for the writes in flight and refuses later ones.
//!
//! Raft's shutdown stops its core task, but a write it started may still be
//! running: the log's writes run on blocking threads, and openraft builds
//! snapshots in a task of its own. Without the gate, `Catalog::shutdown`
//! could return while a file in the directory is still being written (a
//! directory removed right after it then fails with "directory not empty",
//! or a restarted catalog reads a file mid-write).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::error::StoreError;

/// See the module documentation. Clones share one gate.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use repliq_catalog::storage::gate::WriteGate;
/// let gate = WriteGate::default();
/// let pass = gate.enter().await.expect("open");
/// drop(pass); // the write is done
/// gate.close().await; // waits for passes held, then refuses new ones
/// assert!(gate.enter().await.is_err());
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct WriteGate(Arc<RwLock<bool>>);

/// Held for the length of one write; the gate cannot close while it lives.
pub type WritePass = OwnedRwLockReadGuard<bool>;

impl WriteGate {
    /// A pass for one write, or an error once the gate is closed.
    pub async fn enter(&self) -> Result<WritePass, StoreError> {
        let g = self.0.clone().read_owned().await;
        if *g {
            return Err(StoreError::Io {
                op: "write after shutdown",
                path: PathBuf::new(),
                source: io::Error::other("the catalog's storage is shut down"),
            });
        }
        Ok(g)
    }

    /// Waits for every pass held to be dropped, then refuses new ones.
    pub async fn close(&self) {
        *self.0.write().await = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_waits_for_every_write_in_flight_then_refuses_new_ones() {
        let gate = WriteGate::default();
        let pass = gate.enter().await.expect("open gate");
        let closing = tokio::spawn({
            let g = gate.clone();
            async move { g.close().await }
        });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!closing.is_finished(), "closed while a write was in flight");
        drop(pass);
        closing.await.expect("close");
        match gate.enter().await {
            Err(StoreError::Io { op, .. }) => assert_eq!(op, "write after shutdown"),
            other => panic!("a write after close was let in: {other:?}"),
        }
    }
}
