//! [`Stats`]: a snapshot of a queue's shared counters and cursors, and the
//! typed read-only accessors of single shared words.

use std::sync::atomic::Ordering::*;

use super::latency::{self, LatencyStat};
use super::layout::*;
use super::Store;

impl Store {
    /// The committed-position mark as the control file holds it, without
    /// advancing it first (unlike [`Store::committed_position`]): for tools
    /// that show the files as they are.
    pub fn committed_mark(&self) -> u64 {
        self.inner.ctl.committed().load(Acquire)
    }

    /// The replicated watermark: every record below it is acknowledged by
    /// the secondaries the replication layer waits for.
    pub fn replicated_position(&self) -> u64 {
        self.inner.ctl.replicated().load(Acquire)
    }

    /// The flushed position: every byte of the log below it is on disk.
    pub fn flushed_position(&self) -> u64 {
        self.inner.ctl.flushed().load(Acquire)
    }

    /// Truncations begun, ever, counted twice each: odd while one is in
    /// progress (or was interrupted by a crash), even otherwise. See
    /// [`truncate`](super::truncate).
    pub fn truncations(&self) -> u64 {
        self.inner.ctl.truncations().load(Acquire)
    }

    /// Where the last truncation cut the log (0 if there was none).
    pub fn truncated_to(&self) -> u64 {
        self.inner.ctl.truncated_to().load(Acquire)
    }

    /// The control file's format version.
    pub fn format_version(&self) -> u32 {
        self.inner.ctl.u32_at(CTL_VERSION_OFF).load(Acquire)
    }

    /// When the queue was created, in nanoseconds since the Unix epoch.
    pub fn created_unix_ns(&self) -> u64 {
        self.inner.ctl.u64_at(CTL_CREATED_OFF).load(Acquire)
    }

    /// Readers of any process asleep on the queue's shared futex right now.
    pub fn sleeping_readers(&self) -> u32 {
        self.inner.ctl.waiters().load(Acquire)
    }

    /// The shared wake-up sequence number: writers bump it (wrapping) when
    /// they find a reader asleep.
    pub fn notify_seq(&self) -> u32 {
        self.inner.ctl.notify_seq().load(Acquire)
    }

    /// Counters and cursors, read atomically one by one.
    pub fn stats(&self) -> Stats {
        let ctl = &self.inner.ctl;
        let mut groups = Vec::new();
        for i in 0..GROUP_SLOTS {
            let s = ctl.slot(CTL_GROUPS_OFF, GROUP_SLOT_LEN, i);
            if s.state().load(Acquire) == SLOT_ACTIVE {
                groups.push(CursorStat {
                    name: s.name(),
                    position: s.position().load(Acquire),
                    count: s.count().load(Acquire),
                });
            }
        }
        let mut tailers = Vec::new();
        for i in 0..TAILER_SLOTS {
            let s = ctl.slot(CTL_TAILERS_OFF, TAILER_SLOT_LEN, i);
            if s.state().load(Acquire) == SLOT_ACTIVE {
                tailers.push(CursorStat {
                    name: s.name(),
                    position: s.position().load(Acquire),
                    count: 0,
                });
            }
        }
        Stats {
            tail: ctl.tail().load(Acquire),
            committed: self.committed_position(),
            reserved: ctl.reserved().load(Acquire),
            depth: self.depth(),
            capacity: self.inner.cfg.capacity,
            epoch: ctl.epoch().load(Acquire),
            replicated: ctl.replicated().load(Acquire),
            low_segment: ctl.low_segment().load(Acquire),
            unblocked: ctl.unblocked().load(Acquire),
            truncated_records: ctl.truncated_records().load(Acquire),
            recoveries: ctl.recoveries().load(Acquire),
            flushed: ctl.flushed().load(Acquire),
            full_rejections: ctl.u64_at(CTL_FULL_REJECTIONS_OFF).load(Acquire),
            enqueue_latency: latency::read(ctl, CTL_ENQUEUE_LATENCY_OFF),
            sync_wait: latency::read(ctl, CTL_SYNC_WAIT_OFF),
            groups,
            tailers,
        }
    }
}

/// A consumer group's or named tailer's cursor, as reported by [`Store::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CursorStat {
    /// Group or tailer name.
    pub name: String,
    /// Next position it will read.
    pub position: u64,
    /// Messages dequeued (groups only).
    pub count: u64,
}

/// A snapshot of a queue's shared counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Write position.
    pub tail: u64,
    /// Committed position.
    pub committed: u64,
    /// Messages appended or in flight, ever.
    pub reserved: u64,
    /// Messages the default group has not dequeued.
    pub depth: u64,
    /// Capacity in messages.
    pub capacity: u64,
    /// Current epoch.
    pub epoch: u32,
    /// Replicated watermark.
    pub replicated: u64,
    /// Oldest segment on disk.
    pub low_segment: u64,
    /// Stuck frames turned into padding.
    pub unblocked: u64,
    /// Records truncations moved to quarantine files, ever.
    pub truncated_records: u64,
    /// Recoveries run on open.
    pub recoveries: u64,
    /// Position flushed to disk.
    pub flushed: u64,
    /// Appends refused with [`StoreError::Full`], ever.
    pub full_rejections: u64,
    /// Sampled enqueue latency, recorded by every appending process.
    pub enqueue_latency: LatencyStat,
    /// Waits of synchronous enqueues for their acknowledgements.
    pub sync_wait: LatencyStat,
    /// Consumer groups.
    pub groups: Vec<CursorStat>,
    /// Named tailers.
    pub tailers: Vec<CursorStat>,
}
