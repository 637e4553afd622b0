//! The Raft log: an append-only file `raft.log` of records
//! `len: u32 LE | crc32c(body): u32 LE | body` where body is a postcard [`LogRecord`].
//!
//! Appends are fsynced before openraft is told they are flushed. Truncation shortens the
//! file; a purge rewrites the file (tmp + fsync + rename + directory fsync) starting with
//! a [`LogRecord::Purged`] marker. On open, a torn last record (short, or a crc mismatch
//! that reaches the end of the file) is cut off; damage followed by more data is an error.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::storage::file::sync_dir;
use crate::storage::gate::WriteGate;
use crate::storage::{to_read_err, to_write_err, vote};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Name of the log file.
pub const LOG_FILE: &str = "raft.log";
/// Largest record accepted when reading.
pub const MAX_RECORD: u32 = 64 << 20;
const HEADER: usize = 8;

/// One record of the log file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LogRecord {
    /// Entries up to and including this log id were purged.
    Purged(LogId),
    /// A log entry.
    Entry(Entry),
}

fn encode_record(rec: &LogRecord, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let body = postcard::to_stdvec(rec)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or(StoreError::RecordTooBig(body.len()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// The open log, in memory and on disk.
#[derive(Debug)]
struct LogInner {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Entries by index, with the byte offset of their record.
    entries: BTreeMap<u64, (u64, Entry)>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
}

/// The Raft log storage (openraft `RaftLogStorage`), durable in a directory.
///
/// Cloning gives another handle on the same log (used as the log reader).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
    gate: WriteGate,
}

/// What was found when opening a log file.
struct Scan {
    entries: BTreeMap<u64, (u64, Entry)>,
    last_purged: Option<LogId>,
    good_len: u64,
}

fn scan(path: &Path, buf: &[u8]) -> Result<Scan, StoreError> {
    let mut entries = BTreeMap::new();
    let mut last_purged = None;
    let mut off = 0usize;
    let total = buf.len();
    while off < total {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            offset: off as u64,
            reason,
        };
        if total - off < HEADER {
            break; // torn header
        }
        let len = u32::from_le_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]);
        let crc = u32::from_le_bytes([buf[off + 4], buf[off + 5], buf[off + 6], buf[off + 7]]);
        let end = off + HEADER + len as usize;
        if len > MAX_RECORD || end > total {
            break; // torn body (or garbage length in the last record)
        }
        let body = &buf[off + HEADER..end];
        if crc32c::crc32c(body) != crc {
            if end == total {
                break; // torn last record
            }
            return Err(corrupt("crc mismatch before the end of the file".into()));
        }
        let rec: LogRecord =
            postcard::from_bytes(body).map_err(|e| corrupt(format!("decode: {e}")))?;
        match rec {
            LogRecord::Purged(id) => {
                entries.retain(|i, _| *i > id.index);
                last_purged = Some(id);
            }
            LogRecord::Entry(e) => {
                let idx = e.log_id.index;
                // A later record at an index replaces the tail from there (defensive;
                // truncation cuts the file, so this does not normally happen).
                let _ = entries.split_off(&idx);
                entries.insert(idx, (off as u64, e));
            }
        }
        off = end;
    }
    Ok(Scan {
        entries,
        last_purged,
        good_len: off as u64,
    })
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, dropping a torn last record, and reads the vote.
    pub fn open(dir: &Path) -> Result<LogStore, StoreError> {
        let path = dir.join(LOG_FILE);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        if !existed {
            file.sync_all().map_err(StoreError::io("fsync", &path))?;
            sync_dir(dir)?;
        }
        let buf = fs::read(&path).map_err(StoreError::io("read", &path))?;
        let scan = scan(&path, &buf)?;
        if scan.good_len < buf.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                dropped = buf.len() as u64 - scan.good_len,
                "dropping a torn record at the end of the log"
            );
            file.set_len(scan.good_len)
                .and_then(|()| file.sync_all())
                .map_err(StoreError::io("truncate torn tail", &path))?;
        }
        let vote = vote::read_vote(dir)?;
        file.flush().map_err(StoreError::io("flush", &path))?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_path_buf(),
                path,
                file,
                entries: scan.entries,
                last_purged: scan.last_purged,
                vote,
            })),
            gate: WriteGate::default(),
        })
    }

    /// The gate every write of this log passes (and its clones' writes).
    pub fn write_gate(&self) -> WriteGate {
        self.gate.clone()
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A poisoned lock means a panic while holding it; the data is still the last
        // consistent state we wrote, so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True if nothing was ever stored: no vote, no log entry, no purge.
    pub fn is_fresh(&self) -> bool {
        let g = self.lock();
        g.vote.is_none() && g.entries.is_empty() && g.last_purged.is_none()
    }

    /// Appends entries and fsyncs the file.
    pub fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        let start = g
            .file
            .metadata()
            .map_err(StoreError::io("stat", &g.path))?
            .len();
        let mut buf = Vec::new();
        let mut added = Vec::new();
        for e in entries {
            let off = start + buf.len() as u64;
            let rec = LogRecord::Entry(e);
            encode_record(&rec, &mut buf)?;
            if let LogRecord::Entry(e) = rec {
                added.push((off, e));
            }
        }
        let path = g.path.clone();
        g.file
            .write_all(&buf)
            .map_err(StoreError::io("write", &path))?;
        g.file.sync_data().map_err(StoreError::io("fsync", &path))?;
        for (off, e) in added {
            let idx = e.log_id.index;
            let _ = g.entries.split_off(&idx);
            g.entries.insert(idx, (off, e));
        }
        Ok(())
    }

    /// Deletes the entries at `index` and after, durably.
    pub fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let mut g = self.lock();
        let Some((&_, &(off, _))) = g.entries.range(index..).next() else {
            return Ok(());
        };
        let path = g.path.clone();
        g.file
            .set_len(off)
            .and_then(|()| g.file.sync_all())
            .map_err(StoreError::io("truncate", &path))?;
        let _ = g.entries.split_off(&index);
        Ok(())
    }

    /// Deletes the entries up to and including `upto`, durably, by rewriting the file.
    pub fn purge_upto(&self, upto: LogId) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.last_purged
            .as_ref()
            .is_some_and(|p| p.index >= upto.index)
        {
            return Ok(());
        }
        let keep = g.entries.split_off(&(upto.index + 1));
        let mut buf = Vec::new();
        encode_record(&LogRecord::Purged(upto), &mut buf)?;
        let mut entries = BTreeMap::new();
        for (idx, (_, e)) in keep {
            let off = buf.len() as u64;
            let rec = LogRecord::Entry(e);
            encode_record(&rec, &mut buf)?;
            if let LogRecord::Entry(e) = rec {
                entries.insert(idx, (off, e));
            }
        }
        let path = g.path.clone();
        let tmp = path.with_extension("log.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(StoreError::io("create", &tmp))?;
        f.write_all(&buf).map_err(StoreError::io("write", &tmp))?;
        f.sync_all().map_err(StoreError::io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(StoreError::io("rename", &path))?;
        sync_dir(&g.dir)?;
        g.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(StoreError::io("reopen", &path))?;
        g.entries = entries;
        g.last_purged = Some(upto);
        Ok(())
    }

    /// Entries whose index is in `range`.
    pub fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry> {
        self.lock()
            .entries
            .range(range)
            .map(|(_, (_, e))| e.clone())
            .collect()
    }

    /// The last purged log id and the last log id.
    pub fn state(&self) -> (Option<LogId>, Option<LogId>) {
        let g = self.lock();
        let last = g
            .entries
            .last_key_value()
            .map(|(_, (_, e))| e.log_id)
            .or(g.last_purged);
        (g.last_purged, last)
    }

    /// Saves the vote durably.
    pub fn store_vote(&self, v: &Vote) -> Result<(), StoreError> {
        let mut g = self.lock();
        vote::save_vote(&g.dir, v)?;
        g.vote = Some(*v);
        Ok(())
    }

    /// The saved vote.
    pub fn vote(&self) -> Option<Vote> {
        self.lock().vote
    }

    fn dir(&self) -> PathBuf {
        self.lock().dir.clone()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.entries(range))
    }
}

/// Runs blocking file work (writes and fsyncs) off the async workers, inside
/// `gate`: a shutdown waits for it even if the caller stopped waiting.
async fn blocking<T: Send + 'static>(
    gate: &WriteGate,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let pass = gate.enter().await?;
    tokio::task::spawn_blocking(move || {
        let r = f();
        drop(pass);
        r
    })
    .await
    .unwrap_or_else(|e| {
        Err(StoreError::Io {
            op: "storage task",
            path: PathBuf::new(),
            source: io::Error::other(e.to_string()),
        })
    })
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let (last_purged_log_id, last_log_id) = self.state();
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (s, v) = (self.clone(), *vote);
        blocking(&self.gate, move || s.store_vote(&v))
            .await
            .map_err(|e| to_write_err(&e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let dir = self.dir();
        blocking(&self.gate, move || vote::save_committed(&dir, &committed))
            .await
            .map_err(|e| to_write_err(&e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        vote::read_committed(&self.dir()).map_err(|e| to_read_err(&e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let s = self.clone();
        match blocking(&self.gate, move || s.append_entries(entries)).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(to_write_err(&e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let s = self.clone();
        blocking(&self.gate, move || s.truncate_from(log_id.index))
            .await
            .map_err(|e| to_write_err(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let s = self.clone();
        blocking(&self.gate, move || s.purge_upto(log_id))
            .await
            .map_err(|e| to_write_err(&e))
    }
}
