//! Consumers: competing readers sharing one cursor per group.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::error::{Result, StoreError};
use crate::store::frame_ops::{self, FrameView};
use crate::store::layout::{CTL_GROUPS_OFF, GROUP_SLOT_LEN};
use crate::store::segment::Segment;
use crate::store::tailer::Record;
use crate::store::wait::IdleStrategy;
use crate::store::{Peek, Stall, Store};

/// A member of a consumer group. Each message goes to exactly one
/// `dequeue` call across all members, in every process.
///
/// ```
/// # use repliq::store::{Store, StoreOptions};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), &StoreOptions::create().segment_size(1 << 16))?;
/// store.append(b"job")?;
/// let mut a = store.consumer();
/// let mut b = store.consumer();
/// assert_eq!(a.dequeue()?.map(|r| r.payload), Some(b"job".to_vec()));
/// assert!(b.dequeue()?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Consumer {
    store: Store,
    slot: usize,
    seg: Option<Arc<Segment>>,
    stall: Stall,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("slot", &self.slot)
            .finish()
    }
}

impl Consumer {
    pub(crate) fn new(store: Store, slot: usize) -> Consumer {
        Consumer {
            stall: store.stall(),
            store,
            slot,
            seg: None,
        }
    }

    fn slot(&self) -> crate::store::control::Slot<'_> {
        self.store
            .control()
            .slot(CTL_GROUPS_OFF, GROUP_SLOT_LEN, self.slot)
    }

    /// The group's shared cursor: the id of the next message to dequeue.
    pub fn position(&self) -> u64 {
        self.slot().position().load(Acquire)
    }

    /// Messages this group has dequeued in total.
    pub fn dequeued(&self) -> u64 {
        self.slot().count().load(Acquire)
    }

    fn advance(&self, cur: u64, next: u64) -> bool {
        let won = frame_ops::consume(self.slot().position(), cur, next);
        if won {
            let geo = self.store.geometry();
            if geo.segment_of(cur) != geo.segment_of(next) {
                if let Err(e) = self.store.retain() {
                    tracing::warn!("retention failed: {e}");
                }
            }
        }
        won
    }

    /// Takes the next message and lends it to `f` without copying.
    /// `Ok(None)` means the group has nothing to take right now.
    pub fn dequeue_with<R>(&mut self, f: impl FnOnce(Record<'_>) -> R) -> Result<Option<R>> {
        let mut f = Some(f);
        loop {
            let cur = self.slot().position().load(Acquire);
            match self.store.peek(cur, &mut self.seg, &mut self.stall)? {
                Peek::Empty => return Ok(None),
                // The truncation moved the group's cursor back already.
                Peek::Truncated { .. } => {}
                Peek::Skip { next } => {
                    self.advance(cur, next);
                }
                Peek::Data { next, view } => {
                    let FrameView::Data { epoch, .. } = view else {
                        unreachable!("peek returns Data views only")
                    };
                    let Some(seg) = self.seg.clone() else {
                        return Ok(None);
                    };
                    let off = self.store.geometry().offset_of(cur);
                    // SAFETY: `view` is the committed data frame at `off` in `seg`.
                    let r = unsafe {
                        frame_ops::read_payload(&*seg, off, view, |payload| {
                            // The CRC matched; now try to own the message.
                            if self.advance(cur, next) {
                                self.slot().count().fetch_add(1, AcqRel);
                                f.take().map(|f| {
                                    f(Record {
                                        id: cur,
                                        epoch,
                                        payload,
                                    })
                                })
                            } else {
                                None
                            }
                        })
                    };
                    match r {
                        Ok(Some(out)) => return Ok(Some(out)),
                        Ok(None) => continue, // another consumer won; take the next one
                        Err(_) => {
                            return Err(StoreError::Corrupt {
                                id: cur,
                                reason: "payload CRC32C mismatch".into(),
                            })
                        }
                    }
                }
            }
        }
    }

    /// Takes the next message, copying it out.
    pub fn dequeue(&mut self) -> Result<Option<crate::store::OwnedRecord>> {
        self.dequeue_with(|r| crate::store::OwnedRecord {
            id: r.id,
            epoch: r.epoch,
            payload: r.payload.to_vec(),
        })
    }

    /// True if a complete frame is at the group cursor.
    pub fn has_next(&self) -> bool {
        self.store.frame_ready(self.position(), self.seg.as_ref())
    }

    /// Waits with `idle` up to `timeout` for a message, then takes it.
    pub fn dequeue_wait_with<R>(
        &mut self,
        idle: IdleStrategy,
        timeout: Option<Duration>,
        mut f: impl FnMut(Record<'_>) -> R,
    ) -> Result<Option<R>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(r) = self.dequeue_with(&mut f)? {
                return Ok(Some(r));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            match idle {
                IdleStrategy::BusySpin => std::hint::spin_loop(),
                IdleStrategy::Yield => std::thread::yield_now(),
                IdleStrategy::Block => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    let store = self.store.clone();
                    store.wait_until(left.or(Some(Duration::from_millis(50))), || self.has_next());
                }
            }
        }
    }
}
