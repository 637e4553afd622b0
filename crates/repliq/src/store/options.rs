//! [`StoreOptions`]: how [`Store::open`](super::Store::open) creates a queue
//! or checks an existing one against the caller's expectations.

use std::path::Path;
use std::time::Duration;

use super::control::{Durability, QueueConfig};
use super::error::{Result, StoreError};

/// Options for [`Store::open`]: whether to create, and the configuration to
/// create with or to check against.
///
/// A field left unset takes the default at creation and accepts whatever an
/// existing queue holds; a field that is set must match an existing queue.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub(super) create: bool,
    pub(super) capacity: Option<u64>,
    pub(super) segment_size: Option<u64>,
    pub(super) durability: Option<Durability>,
    pub(super) recovery_timeout_ms: Option<u32>,
    pub(super) flush_interval: Option<Duration>,
    pub(super) skip_recovery: bool,
    pub(super) queue_id: Option<u64>,
}

impl StoreOptions {
    /// Open an existing queue only.
    pub fn open() -> StoreOptions {
        StoreOptions::default()
    }
    /// Create the queue if it does not exist.
    pub fn create() -> StoreOptions {
        StoreOptions {
            create: true,
            ..Default::default()
        }
    }
    /// Capacity in messages.
    pub fn capacity(mut self, n: u64) -> Self {
        self.capacity = Some(n);
        self
    }
    /// Segment size in bytes (a power of two).
    pub fn segment_size(mut self, n: u64) -> Self {
        self.segment_size = Some(n);
        self
    }
    /// Durability mode.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = Some(d);
        self
    }
    /// Time after which a stuck writer of a live process is given up on.
    pub fn recovery_timeout(mut self, d: Duration) -> Self {
        self.recovery_timeout_ms = Some(d.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        self
    }
    /// Never run recovery on open, even with exclusive access: for tools that
    /// must show the files exactly as they are (`repliq dump`, `verify`).
    pub fn skip_recovery(mut self) -> Self {
        self.skip_recovery = true;
        self
    }
    /// The queue id to create with, instead of a random one: a replica takes
    /// its primary's, so that their segment files are byte-identical.
    pub fn queue_id(mut self, id: u64) -> Self {
        self.queue_id = Some(id);
        self
    }
    /// Interval of the background flusher in `batch` durability (default 10 ms).
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = Some(d);
        self
    }
}

pub(super) fn check_matches(dir: &Path, cfg: &QueueConfig, o: &StoreOptions) -> Result<()> {
    let mismatch = |field: &'static str, existing: String, requested: String| {
        Err(StoreError::ConfigMismatch {
            path: dir.into(),
            field,
            existing,
            requested,
        })
    };
    if let Some(c) = o.capacity {
        if c == 0 {
            return Err(StoreError::InvalidConfig(
                "capacity must be at least 1".into(),
            ));
        }
        if c != cfg.capacity {
            return mismatch("capacity", cfg.capacity.to_string(), c.to_string());
        }
    }
    if let Some(s) = o.segment_size {
        if s != cfg.segment_size {
            return mismatch("segment_size", cfg.segment_size.to_string(), s.to_string());
        }
    }
    if let Some(d) = o.durability {
        if d != cfg.durability {
            return mismatch("durability", cfg.durability.to_string(), d.to_string());
        }
    }
    Ok(())
}
