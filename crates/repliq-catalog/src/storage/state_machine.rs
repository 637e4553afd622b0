//! The Raft state machine (openraft `RaftStateMachine`): applies [`Command`]s to the
//! [`CatalogState`], publishes every new state on a watch channel, and keeps the
//! snapshot file.
//!
//! The applied state itself is not persisted apart from snapshots: on restart the state
//! is the last snapshot, and openraft applies the log from there again (it reads the
//! persisted committed log id, and learns later commits from the leader).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::watch;

use crate::command::{Command, Response};
use crate::error::StoreError;
use crate::state::CatalogState;
use crate::storage::gate::WriteGate;
use crate::storage::snapshot::{read_snapshot, save_snapshot, StoredSnapshot};
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

#[derive(Debug)]
struct SmInner {
    state: CatalogState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshot: Option<StoredSnapshot>,
}

/// The state machine store. Cloning gives another handle on the same state.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<SmInner>>,
    dir: PathBuf,
    tx: Arc<watch::Sender<Arc<CatalogState>>>,
    snapshot_seq: Arc<AtomicU64>,
    gate: WriteGate,
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, restoring the stored snapshot if any.
    pub fn open(dir: &Path) -> Result<StateMachineStore, StoreError> {
        let snapshot = read_snapshot(dir)?;
        let mut inner = SmInner {
            state: CatalogState::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
        };
        if let Some(s) = snapshot {
            inner.state = postcard::from_bytes(&s.data).map_err(|e| StoreError::Corrupt {
                path: crate::storage::snapshot::snapshot_path(dir),
                offset: 0,
                reason: format!("snapshot data: {e}"),
            })?;
            inner.last_applied = s.meta.last_log_id;
            inner.membership = s.meta.last_membership.clone();
            inner.snapshot = Some(s);
        }
        let (tx, _) = watch::channel(Arc::new(inner.state.clone()));
        Ok(StateMachineStore {
            inner: Arc::new(Mutex::new(inner)),
            dir: dir.to_path_buf(),
            tx: Arc::new(tx),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            gate: WriteGate::default(),
        })
    }

    /// The gate every snapshot write of this store passes.
    pub fn write_gate(&self) -> WriteGate {
        self.gate.clone()
    }

    fn lock(&self) -> MutexGuard<'_, SmInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of every applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CatalogState>> {
        self.tx.subscribe()
    }

    /// The last applied state.
    pub fn state(&self) -> Arc<CatalogState> {
        self.tx.borrow().clone()
    }

    /// Applies one command directly (tests and tools); not replicated.
    pub fn apply_command(&self, cmd: &Command) -> Response {
        let mut g = self.lock();
        let r = g.state.apply(cmd);
        self.tx.send_replace(Arc::new(g.state.clone()));
        r
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let _pass = self
            .gate
            .enter()
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let mut g = self.lock();
        let data =
            postcard::to_stdvec(&g.state).map_err(|e| StorageIOError::read_state_machine(&e))?;
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match g.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, seq),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: g.last_applied,
            last_membership: g.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        save_snapshot(&self.dir, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        g.snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let g = self.lock();
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut g = self.lock();
        for entry in entries {
            g.last_applied = Some(entry.log_id);
            let r = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(ref cmd) => g.state.apply(cmd),
                EntryPayload::Membership(ref m) => {
                    g.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Response::None
                }
            };
            out.push(r);
        }
        self.tx.send_replace(Arc::new(g.state.clone()));
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let _pass = self
            .gate
            .enter()
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let data = snapshot.into_inner();
        let state: CatalogState = postcard::from_bytes(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        save_snapshot(&self.dir, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let mut g = self.lock();
        g.state = state;
        g.last_applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        g.snapshot = Some(stored);
        self.tx.send_replace(Arc::new(g.state.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let g = self.lock();
        Ok(g.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
