//! What every reader shares: looking at a frame ([`Peek`]), giving up on a
//! stalled writer ([`Stall`]), readiness checks and waiting for writers.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frame_ops::{self, FrameView};
use super::layout::*;
use super::segment::Segment;
use super::{wait, Result, Store, StoreError, Tailer};

impl Store {
    /// Looks at the frame at `pos`, resolving stuck writers. Used by tailers and consumers.
    pub(crate) fn peek(
        &self,
        pos: u64,
        cache: &mut Option<Arc<Segment>>,
        stall: &mut Stall,
    ) -> Result<Peek> {
        let inner = &*self.inner;
        let si = inner.geo.segment_of(pos);
        let seg = match cache {
            Some(s) if s.index() == si => s,
            _ => match self.segment(si)? {
                Some(s) => cache.insert(s),
                None => {
                    let low = inner.ctl.low_segment().load(Acquire);
                    if si < low {
                        return Err(StoreError::NotRetained {
                            id: pos,
                            first: inner.geo.first_position(low),
                        });
                    }
                    return self.empty_or_truncated(cache, stall);
                }
            },
        };
        let off = inner.geo.offset_of(pos);
        let v = frame_ops::view(&**seg, inner.geo, off);
        match v {
            FrameView::Empty => self.empty_or_truncated(cache, stall),
            FrameView::Padding { aligned } => Ok(Peek::Skip {
                next: inner.geo.advance(pos, aligned),
            }),
            FrameView::Data { len, flags, .. } => {
                let next = inner.geo.advance(pos, align_frame(u64::from(len)));
                if flags & FLAG_METADATA != 0 {
                    Ok(Peek::Skip { next })
                } else {
                    Ok(Peek::Data { next, view: v })
                }
            }
            FrameView::Pending { word0, owner_pid } => {
                if stall.should_unblock(pos, owner_pid, inner.pid, inner.cfg.recovery_timeout_ms) {
                    if frame_ops::unblock(&**seg, off, word0) {
                        inner.ctl.unblocked().fetch_add(1, AcqRel);
                        inner.ctl.reserved().fetch_sub(1, AcqRel);
                        tracing::warn!(
                            id = pos,
                            owner_pid,
                            queue = %inner.dir.display(),
                            "writer stalled or died mid-append; its frame became padding"
                        );
                        wait::notify(inner.ctl.notify_seq(), inner.ctl.waiters());
                    }
                    // Re-read: either padding now, or the writer committed.
                    return self.peek(pos, cache, stall);
                }
                Ok(Peek::Empty)
            }
            FrameView::Corrupt(f) => Err(StoreError::Corrupt {
                id: pos,
                reason: f.describe().into(),
            }),
        }
    }

    /// A reader found nothing: tell it whether a truncation happened since
    /// its mappings were made (see [`truncate`](super::truncate)).
    pub(super) fn empty_or_truncated(
        &self,
        cache: &mut Option<Arc<Segment>>,
        stall: &mut Stall,
    ) -> Result<Peek> {
        let ctl = &self.inner.ctl;
        let n = ctl.truncations().load(SeqCst);
        if n == stall.truncations || n % 2 == 1 {
            return Ok(Peek::Empty);
        }
        let to = ctl.truncated_to().load(SeqCst);
        *cache = None;
        self.forget_mappings_from(self.inner.geo.segment_of(to))?;
        stall.truncations = n;
        Ok(Peek::Truncated { to })
    }

    /// True if a frame is ready at `pos`: committed data, padding, or a
    /// header that fails its check (so that the reader finds the error).
    /// False for nothing yet, or a pending frame: sleepers wake on its commit,
    /// or every 50 ms to give up on a dead writer. `cached` is the caller's
    /// mapping, used if it is the right segment.
    pub fn frame_ready(&self, pos: u64, cached: Option<&Arc<Segment>>) -> bool {
        let geo = self.inner.geo;
        let si = geo.segment_of(pos);
        let looked_up;
        let seg = match cached {
            Some(s) if s.index() == si => s,
            _ => match self.segment(si) {
                Ok(Some(s)) => {
                    looked_up = s;
                    &looked_up
                }
                Ok(None) => return false,
                Err(_) => return true,
            },
        };
        !matches!(
            frame_ops::view(&**seg, geo, geo.offset_of(pos)),
            FrameView::Empty | FrameView::Pending { .. }
        )
    }

    /// Waits until `ready()` holds, sleeping on the shared futex; false on timeout.
    pub fn wait_until(&self, timeout: Option<Duration>, ready: impl FnMut() -> bool) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        wait::block_until(
            self.inner.ctl.notify_seq(),
            self.inner.ctl.waiters(),
            deadline,
            ready,
        )
    }

    /// A future that resolves once `ready()` holds, woken by writers in any process.
    pub fn ready_async<F: FnMut() -> bool + Unpin>(&self, ready: F) -> ReadyFuture<'_, F> {
        ReadyFuture { store: self, ready }
    }

    pub(super) fn notifier(&self) -> Option<&wait::AsyncNotifier> {
        if let Some(n) = self.inner.notifier.get() {
            return Some(n);
        }
        let ctl = self.inner.ctl.clone();
        match wait::AsyncNotifier::start(ctl.notify_seq(), ctl.waiters(), ctl.clone()) {
            Ok(n) => {
                let _ = self.inner.notifier.set(n);
                self.inner.notifier.get()
            }
            Err(e) => {
                tracing::error!("cannot start the notifier thread: {e}");
                None
            }
        }
    }

    /// The epoch of the record `id`, which must be a record of this queue.
    pub fn epoch_of(&self, id: u64) -> Result<u32> {
        let mut t = Tailer::new(self.clone(), id, None);
        t.seek(id)?;
        match t.next_with(|r| r.epoch)? {
            Some(e) => Ok(e),
            None => Err(StoreError::InvalidId {
                id,
                reason: "not committed yet".into(),
            }),
        }
    }
}

/// What a reader finds at a position.
pub(crate) enum Peek {
    Empty,
    /// Nothing here, and a truncation replaced segments since this reader
    /// last looked: its mappings are dropped; it moves back to `to` if past it.
    Truncated {
        to: u64,
    },
    Skip {
        next: u64,
    },
    Data {
        next: u64,
        view: FrameView,
    },
}

/// Tracks how long a reader has waited at one pending frame.
#[derive(Debug, Default)]
pub(crate) struct Stall {
    /// The truncation count this reader's mappings reflect.
    truncations: u64,
    pos: u64,
    since: Option<Duration>,
    checked: Option<Duration>,
}

/// A cheap monotonic clock (`CLOCK_MONOTONIC_COARSE`, a few ns through the vDSO).
pub(super) fn coarse_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

impl Store {
    /// A new reader's stall tracker, aware of the truncations so far.
    pub(crate) fn stall(&self) -> Stall {
        if let Err(e) = self.refresh_after_truncation() {
            tracing::warn!("cannot map the queue afresh after a truncation: {e}");
        }
        Stall {
            truncations: self.inner.ctl.truncations().load(SeqCst),
            ..Stall::default()
        }
    }
}

impl Stall {
    /// Grace before an owner pid is checked.
    const GRACE: Duration = Duration::from_millis(1);

    pub(super) fn should_unblock(
        &mut self,
        pos: u64,
        owner: u32,
        me: u32,
        timeout_ms: u32,
    ) -> bool {
        let now = coarse_now();
        if self.pos != pos || self.since.is_none() {
            *self = Stall {
                truncations: self.truncations,
                pos,
                since: Some(now),
                checked: None,
            };
            return false;
        }
        let waited = now.saturating_sub(self.since.unwrap_or(now));
        if waited >= Duration::from_millis(u64::from(timeout_ms)) {
            return true;
        }
        if waited >= Self::GRACE && owner != 0 && owner != me {
            let recheck = self
                .checked
                .is_none_or(|c| now.saturating_sub(c) >= Self::GRACE);
            if recheck {
                self.checked = Some(now);
                return !process_alive(owner);
            }
        }
        false
    }
}

/// Whether `pid` names a live process in this pid namespace.
pub(super) fn process_alive(pid: u32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(p),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Future returned by [`Store::ready_async`].
pub struct ReadyFuture<'a, F> {
    store: &'a Store,
    ready: F,
}

impl<F: FnMut() -> bool + Unpin> std::future::Future for ReadyFuture<'_, F> {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if (self.ready)() {
            return std::task::Poll::Ready(());
        }
        match self.store.notifier() {
            Some(n) => n.register(cx.waker()),
            None => cx.waker().wake_by_ref(),
        }
        if (self.ready)() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}
