//! The claim, commit, read, consume and unblock algorithm over one segment.
//!
//! The functions here are generic over [`LogMemory`] and [`Word`] so that the
//! very same code runs on memory-mapped segments and, under `--cfg loom`, on
//! a loom-checked buffer (see the tests at the bottom). The invariants they
//! rely on are listed in [`crate::store::layout`].

use std::sync::atomic::Ordering::{self, AcqRel, Acquire, Relaxed, SeqCst};

use crate::store::frame::{self, HeaderFault};
use crate::store::layout::{
    align_frame, FLAG_NOT_COMPLETE, FLAG_PADDING, FRAME_HEADER_LEN, MAX_RECORD_PAYLOAD,
    PADDING_MIN_LEN, SEGMENT_HEADER_LEN,
};

/// An atomic 64-bit word: the std type on mapped memory, loom's in the model.
pub trait Word {
    /// Atomic load.
    fn load(&self, o: Ordering) -> u64;
    /// Atomic store.
    fn store(&self, v: u64, o: Ordering);
    /// Atomic compare-and-exchange.
    fn cas(&self, cur: u64, new: u64, s: Ordering, f: Ordering) -> Result<u64, u64>;
}

impl Word for std::sync::atomic::AtomicU64 {
    #[inline]
    fn load(&self, o: Ordering) -> u64 {
        std::sync::atomic::AtomicU64::load(self, o)
    }
    #[inline]
    fn store(&self, v: u64, o: Ordering) {
        std::sync::atomic::AtomicU64::store(self, v, o)
    }
    #[inline]
    fn cas(&self, cur: u64, new: u64, s: Ordering, f: Ordering) -> Result<u64, u64> {
        self.compare_exchange(cur, new, s, f)
    }
}

#[cfg(repliq_loom)]
impl Word for loom::sync::atomic::AtomicU64 {
    fn load(&self, o: Ordering) -> u64 {
        loom::sync::atomic::AtomicU64::load(self, o)
    }
    fn store(&self, v: u64, o: Ordering) {
        loom::sync::atomic::AtomicU64::store(self, v, o)
    }
    fn cas(&self, cur: u64, new: u64, s: Ordering, f: Ordering) -> Result<u64, u64> {
        self.compare_exchange(cur, new, s, f)
    }
}

/// The bytes of one segment, addressed by offset within the segment.
pub trait LogMemory {
    /// The atomic word type of this memory.
    type W: Word;
    /// word0 of the frame at `off` (8-aligned, `off + 8 <= size`).
    fn word0(&self, off: u64) -> &Self::W;
    /// word1 of the frame at `off` (`off + 16 <= size`).
    fn word1(&self, off: u64) -> &Self::W;
    /// Copies `src` to `off`.
    ///
    /// # Safety
    /// The caller owns `[off, off + src.len())` through a successful claim and
    /// has not committed it yet; the range lies inside the segment.
    unsafe fn write(&self, off: u64, src: &[u8]);
    /// Calls `f` with the `len` bytes at `off`.
    ///
    /// # Safety
    /// The range lies inside a committed frame, observed through an acquire
    /// load of its word0, and inside the segment.
    unsafe fn read<R>(&self, off: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> R;
}

/// Segment geometry: the mapping between positions and (segment, offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    shift: u32,
}

impl Geometry {
    /// Geometry for `segment_size`, which must be a power of two.
    pub fn new(segment_size: u64) -> Geometry {
        debug_assert!(segment_size.is_power_of_two());
        Geometry {
            shift: segment_size.trailing_zeros(),
        }
    }
    /// Segment size in bytes.
    #[inline]
    pub fn size(self) -> u64 {
        1u64 << self.shift
    }
    /// Segment index holding `pos`.
    #[inline]
    pub fn segment_of(self, pos: u64) -> u64 {
        pos >> self.shift
    }
    /// Offset of `pos` inside its segment.
    #[inline]
    pub fn offset_of(self, pos: u64) -> u64 {
        pos & (self.size() - 1)
    }
    /// Position of byte 0 of segment `seg`.
    #[inline]
    pub fn base_of(self, seg: u64) -> u64 {
        seg << self.shift
    }
    /// Position of the first frame of segment `seg`.
    #[inline]
    pub fn first_position(self, seg: u64) -> u64 {
        (seg << self.shift) + SEGMENT_HEADER_LEN
    }
    /// Position after a frame of `aligned` bytes at `pos`, skipping the next segment's header.
    #[inline]
    pub fn advance(self, pos: u64, aligned: u64) -> u64 {
        let n = pos + aligned;
        if self.offset_of(n) == 0 {
            n + SEGMENT_HEADER_LEN
        } else {
            n
        }
    }
    /// Largest payload accepted: what fits in one segment, and at most
    /// [`MAX_RECORD_PAYLOAD`] (what one replication frame can carry).
    pub fn max_payload(self) -> u64 {
        (self.size() - SEGMENT_HEADER_LEN - FRAME_HEADER_LEN).min(MAX_RECORD_PAYLOAD)
    }
}

/// Outcome of one claim attempt at the tail.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimStep {
    /// The frame at the tail is ours; `pending` is its word0.
    Claimed {
        /// word0 as written by the claim.
        pending: u64,
    },
    /// Someone else moved first; reload the tail and retry.
    Retry,
    /// The frame does not fit in what is left of this segment.
    NeedRoll,
    /// The header at the tail is corrupt.
    Corrupt(HeaderFault),
}

/// The smallest valid length of a frame with `flags`: a padding frame is
/// word0 alone; every other frame, pending ones included, has word1 too.
#[inline]
pub fn min_frame_len(flags: u16) -> u64 {
    if flags & FLAG_PADDING != 0 && flags & FLAG_NOT_COMPLETE == 0 {
        PADDING_MIN_LEN
    } else {
        FRAME_HEADER_LEN
    }
}

/// Moves `tail` past the (non-zero) frame `w0` at `t`, on behalf of whoever claimed it.
#[inline]
pub fn help_advance<W: Word>(tail: &W, geo: Geometry, t: u64, w0: u64) -> Result<(), HeaderFault> {
    let (len, flags) = frame::decode_word0(w0)?;
    let aligned = align_frame(u64::from(len));
    let remaining = geo.size() - geo.offset_of(t);
    if u64::from(len) < min_frame_len(flags) || aligned > remaining {
        return Err(HeaderFault::Length);
    }
    let _ = tail.cas(t, geo.advance(t, aligned), AcqRel, Relaxed);
    Ok(())
}

/// Tries to claim a frame of `frame_len` bytes at tail position `t` in `mem`.
///
/// On success the frame is pending, owned by `pid`, and `tail` has moved past it.
pub fn try_claim<M: LogMemory>(
    mem: &M,
    tail: &M::W,
    geo: Geometry,
    t: u64,
    frame_len: u32,
    pid: u32,
) -> ClaimStep {
    let off = geo.offset_of(t);
    let w0 = mem.word0(off);
    let cur = w0.load(Acquire);
    if cur != 0 {
        return match help_advance(tail, geo, t, cur) {
            Ok(()) => ClaimStep::Retry,
            Err(f) => ClaimStep::Corrupt(f),
        };
    }
    let aligned = align_frame(u64::from(frame_len));
    if aligned > geo.size() - off {
        return ClaimStep::NeedRoll;
    }
    let pending = frame::pending_word0(frame_len);
    if (off + 8) % 4096 == 0 {
        // word1 starts a new page: fault it in (for writing) before the claim,
        // so that a writer killed in the page fault is not left owning a
        // pending frame without a recorded pid. Writing 0 over 0 is a no-op
        // for anyone else: word1 of an unclaimed frame is zero.
        let _ = mem.word1(off).cas(0, 0, Relaxed, Relaxed);
    }
    if w0.cas(0, pending, AcqRel, Acquire).is_err() {
        return ClaimStep::Retry;
    }
    mem.word1(off).store(u64::from(pid), Relaxed);
    let _ = tail.cas(t, geo.advance(t, aligned), AcqRel, Relaxed);
    ClaimStep::Claimed { pending }
}

/// Writes a padding frame from tail position `t` to the end of its segment and
/// moves the tail into the next segment. The caller has made sure the next
/// segment exists (invariant 5).
pub fn pad_to_end<M: LogMemory>(mem: &M, tail: &M::W, geo: Geometry, t: u64) {
    let off = geo.offset_of(t);
    let remaining = geo.size() - off;
    let w = frame::padding_word0(remaining as u32);
    let _ = mem.word0(off).cas(0, w, AcqRel, Acquire);
    let cur = mem.word0(off).load(Acquire);
    let _ = help_advance(tail, geo, t, cur);
}

/// Publishes a claimed frame. Returns false if an unblocker turned it into padding first.
///
/// # Safety
/// `off` is a frame this caller claimed with `pending`, and `payload` fits in it.
pub unsafe fn commit<M: LogMemory>(
    mem: &M,
    off: u64,
    pending: u64,
    flags: u16,
    epoch: u32,
    payload_len: usize,
    crc: u32,
) -> bool {
    let len = (FRAME_HEADER_LEN + payload_len as u64) as u32;
    debug_assert_eq!(pending, frame::pending_word0(len));
    // SAFETY: forwarded: our claim, and the frame fills it exactly.
    unsafe { commit_span(mem, off, pending, flags, epoch, payload_len, crc) }
}

/// Writes the header of a committed frame inside a batch span this caller
/// claimed and has not committed yet (every frame of the span but the
/// first). Plain (relaxed) stores: the span's commit CAS on the first
/// frame's word0 publishes them (invariant 8 in [`crate::store::layout`]).
///
/// # Safety
/// `[off, off + 16 + payload_len)` lies inside a span this caller claimed
/// and has not committed, after the span's first frame.
pub unsafe fn write_inner(
    mem: &impl LogMemory,
    off: u64,
    flags: u16,
    epoch: u32,
    payload_len: usize,
    crc: u32,
) {
    let len = (FRAME_HEADER_LEN + payload_len as u64) as u32;
    mem.word1(off).store(frame::data_word1(epoch, crc), Relaxed);
    mem.word0(off)
        .store(frame::encode_word0(len, flags), Relaxed);
}

/// Publishes a claimed span whose first frame has `payload_len` bytes: word0
/// goes from `pending` (the whole span's length) to the first frame's
/// committed header, in one release CAS that also publishes every frame
/// [`write_inner`] wrote after it. For a one-frame span this is [`commit`].
/// Returns false if an unblocker turned the span into padding first.
///
/// # Safety
/// `off` is a span this caller claimed with `pending`, and the first frame
/// (header and `payload_len` bytes) fits in it.
pub unsafe fn commit_span<M: LogMemory>(
    mem: &M,
    off: u64,
    pending: u64,
    flags: u16,
    epoch: u32,
    payload_len: usize,
    crc: u32,
) -> bool {
    let len = (FRAME_HEADER_LEN + payload_len as u64) as u32;
    debug_assert!(u64::from(len) <= u64::from(pending as u32));
    mem.word1(off).store(frame::data_word1(epoch, crc), Relaxed);
    mem.word0(off)
        .cas(pending, frame::encode_word0(len, flags), SeqCst, Relaxed)
        .is_ok()
}

/// What a reader finds at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameView {
    /// Nothing written yet.
    Empty,
    /// Claimed but not committed.
    Pending {
        /// word0 as found.
        word0: u64,
        /// The claiming process, 0 if not yet recorded.
        owner_pid: u32,
    },
    /// Padding of `aligned` bytes.
    Padding {
        /// Bytes to skip.
        aligned: u64,
    },
    /// A committed data or metadata frame.
    Data {
        /// Frame length (header and payload).
        len: u32,
        /// Committed flags.
        flags: u16,
        /// Epoch the frame was written under.
        epoch: u32,
        /// Stored CRC32C.
        crc: u32,
    },
    /// The header is not valid.
    Corrupt(HeaderFault),
}

impl FrameView {
    /// The aligned size of a complete frame, if this is one.
    pub fn aligned_len(&self) -> Option<u64> {
        match *self {
            FrameView::Padding { aligned } => Some(aligned),
            FrameView::Data { len, .. } => Some(align_frame(u64::from(len))),
            _ => None,
        }
    }
}

/// Reads the frame header at `off` with acquire ordering and validates it.
#[inline]
pub fn view<M: LogMemory>(mem: &M, geo: Geometry, off: u64) -> FrameView {
    let w = mem.word0(off).load(Acquire);
    if w == 0 {
        return FrameView::Empty;
    }
    let (len, flags) = match frame::decode_word0(w) {
        Ok(v) => v,
        Err(f) => return FrameView::Corrupt(f),
    };
    let aligned = align_frame(u64::from(len));
    let remaining = geo.size() - off;
    if aligned > remaining || u64::from(len) < min_frame_len(flags) {
        return FrameView::Corrupt(HeaderFault::Length);
    }
    if flags & FLAG_NOT_COMPLETE != 0 {
        // While pending, word1 holds the owner pid with its high half zero.
        // Once the writer has stored `epoch | crc << 32` (just before its
        // commit CAS) the owner is unknown, so only the timeout applies.
        let w1 = mem.word1(off).load(Relaxed);
        let owner_pid = if w1 >> 32 == 0 { w1 as u32 } else { 0 };
        return FrameView::Pending {
            word0: w,
            owner_pid,
        };
    }
    if flags & FLAG_PADDING != 0 {
        return FrameView::Padding { aligned };
    }
    let w1 = mem.word1(off).load(Relaxed);
    FrameView::Data {
        len,
        flags,
        epoch: w1 as u32,
        crc: (w1 >> 32) as u32,
    }
}

/// Turns a stuck pending frame into padding. Returns true if this call did it.
pub fn unblock<M: LogMemory>(mem: &M, off: u64, pending: u64) -> bool {
    let len = pending as u32;
    mem.word0(off)
        .cas(pending, frame::padding_word0(len), AcqRel, Relaxed)
        .is_ok()
}

/// A frame's payload does not match its CRC32C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrcMismatch;

/// Verifies the CRC of a data frame and hands its payload to `f`.
///
/// # Safety
/// `v` was returned by [`view`] for `off` in `mem` and is `FrameView::Data`.
pub unsafe fn read_payload<M: LogMemory, R>(
    mem: &M,
    off: u64,
    v: FrameView,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, CrcMismatch> {
    let FrameView::Data {
        len,
        flags,
        epoch,
        crc,
    } = v
    else {
        return Err(CrcMismatch);
    };
    let plen = (u64::from(len) - FRAME_HEADER_LEN) as usize;
    // SAFETY: forwarded from the caller: a committed frame inside the segment.
    unsafe {
        mem.read(off + FRAME_HEADER_LEN, plen, |p| {
            if frame::frame_crc(len, flags, epoch, p) == crc {
                Ok(f(p))
            } else {
                Err(CrcMismatch)
            }
        })
    }
}

/// Moves a shared cursor from `cur` to `next`. True if this caller won the frame at `cur`.
#[inline]
pub fn consume<W: Word>(cursor: &W, cur: u64, next: u64) -> bool {
    cursor.cas(cur, next, AcqRel, Relaxed).is_ok()
}

#[cfg(all(test, not(repliq_loom)))]
mod header_tests {
    //! Any word0 at any offset, the last word of the segment included: `view`
    //! stays inside the segment and only reports frames that fit in it.
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicU64;

    const SEG: u64 = 4096;

    /// A segment of words whose accessors panic on any access past its end.
    struct Mem(Vec<AtomicU64>);

    impl Mem {
        fn with(off: u64, w0: u64, w1: Option<u64>) -> Mem {
            let m = Mem((0..SEG / 8).map(|_| AtomicU64::new(0)).collect());
            m.0[(off / 8) as usize].store(w0, Relaxed);
            if let Some(w1) = w1.filter(|_| off + 16 <= SEG) {
                m.0[(off / 8 + 1) as usize].store(w1, Relaxed);
            }
            m
        }
    }

    impl LogMemory for Mem {
        type W = AtomicU64;
        fn word0(&self, off: u64) -> &AtomicU64 {
            &self.0[(off / 8) as usize]
        }
        fn word1(&self, off: u64) -> &AtomicU64 {
            &self.0[(off / 8 + 1) as usize]
        }
        unsafe fn write(&self, _off: u64, _src: &[u8]) {
            unreachable!("header tests do not write payloads")
        }
        unsafe fn read<R>(&self, off: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
            assert!(off + len as u64 <= SEG, "read past the segment end");
            f(&vec![0u8; len])
        }
    }

    fn check(off: u64, w0: u64) {
        let geo = Geometry::new(SEG);
        let mem = Mem::with(off, w0, Some(u64::MAX));
        let v = view(&mem, geo, off);
        match v {
            FrameView::Pending { word0, .. } => {
                let len = u64::from(word0 as u32);
                assert!(
                    len >= FRAME_HEADER_LEN,
                    "pending frame shorter than its header"
                );
                assert!(off + align_frame(len) <= SEG);
            }
            FrameView::Data { len, .. } => {
                assert!(u64::from(len) >= FRAME_HEADER_LEN);
                assert!(off + align_frame(u64::from(len)) <= SEG);
                // SAFETY: a data view of `off`; `read` checks the bounds.
                let _ = unsafe { read_payload(&mem, off, v, |_| ()) };
            }
            FrameView::Padding { aligned } => assert!(off + aligned <= SEG && aligned >= 8),
            FrameView::Empty | FrameView::Corrupt(_) => {}
        }
    }

    /// The hole found in review: a pending frame of length 8 to 15 in the
    /// last word of a segment made `view` read word1 past the end.
    #[test]
    fn a_short_pending_frame_in_the_last_word_is_corrupt_not_read_past_the_end() {
        let off = SEG - 8;
        for len in 8..16u32 {
            let mem = Mem::with(off, frame::pending_word0(len), None);
            assert_eq!(
                view(&mem, Geometry::new(SEG), off),
                FrameView::Corrupt(HeaderFault::Length),
                "pending length {len}"
            );
        }
        // The tail helper refuses it too, instead of moving past it.
        let tail = AtomicU64::new(off);
        assert_eq!(
            help_advance(&tail, Geometry::new(SEG), off, frame::pending_word0(12)),
            Err(HeaderFault::Length)
        );
        // Padding of one word there is valid.
        let mem = Mem::with(off, frame::padding_word0(8), None);
        assert_eq!(
            view(&mem, Geometry::new(SEG), off),
            FrameView::Padding { aligned: 8 }
        );
    }

    proptest! {
        /// Valid-check headers of every kind and short length, at the last
        /// words of the segment and anywhere else.
        #[test]
        fn view_of_any_encoded_header_stays_in_bounds(
            len in 0u32..64,
            flags in 0u16..8,
            back in 1u64..8,
            anywhere in 8u64..(SEG / 8),
            last in any::<bool>(),
        ) {
            let off = if last { SEG - 8 * back } else { anywhere * 8 - 8 };
            check(off, frame::encode_word0(len, flags));
            check(off, frame::encode_word0(len + (SEG as u32 - 64), flags));
        }

        /// Arbitrary words, which mostly fail their check.
        #[test]
        fn view_of_any_word_stays_in_bounds(w0 in any::<u64>(), slot in 0u64..(SEG / 8)) {
            check(slot * 8, w0);
        }
    }
}

#[cfg(all(test, repliq_loom))]
mod loom_tests {
    //! Loom model of the shared-memory algorithm: the same functions as the
    //! mapped segments use, on a small buffer whose payload words are loom
    //! cells, so that a missing happens-before shows up as a data race.
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::AtomicU64;
    use loom::sync::Arc;

    const SEG: u64 = 256;

    struct Mem {
        w0: Vec<AtomicU64>,
        w1: Vec<AtomicU64>,
        cells: Vec<UnsafeCell<u64>>,
    }

    impl Mem {
        fn new() -> Mem {
            let n = (SEG / 8) as usize;
            Mem {
                w0: (0..n).map(|_| AtomicU64::new(0)).collect(),
                w1: (0..n).map(|_| AtomicU64::new(0)).collect(),
                cells: (0..n).map(|_| UnsafeCell::new(0)).collect(),
            }
        }
    }

    impl LogMemory for Mem {
        type W = AtomicU64;
        fn word0(&self, off: u64) -> &AtomicU64 {
            &self.w0[(off / 8) as usize]
        }
        fn word1(&self, off: u64) -> &AtomicU64 {
            &self.w1[(off / 8) as usize]
        }
        unsafe fn write(&self, off: u64, src: &[u8]) {
            for (i, chunk) in src.chunks(8).enumerate() {
                let mut b = [0u8; 8];
                b[..chunk.len()].copy_from_slice(chunk);
                self.cells[(off / 8) as usize + i]
                    // SAFETY: `p` points into the live cell; the caller owns
                    // the range by claim (trait contract), so no other thread
                    // touches the cell meanwhile; loom checks exactly that.
                    .with_mut(|p| unsafe { *p = u64::from_le_bytes(b) });
            }
        }
        unsafe fn read<R>(&self, off: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
            let mut out = Vec::new();
            for i in 0..len.div_ceil(8) {
                // SAFETY: `p` points into the live cell; the range is a
                // committed frame (trait contract) whose writes happen-before
                // this read through word0's release/acquire; loom checks it.
                let v = self.cells[(off / 8) as usize + i].with(|p| unsafe { *p });
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.truncate(len);
            f(&out)
        }
    }

    fn geo() -> Geometry {
        Geometry::new(SEG)
    }

    /// Explores interleavings with a preemption bound of 3, which finds the
    /// classic ordering bugs while keeping CI time bounded.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    /// Appends one 8-byte message; returns its position.
    fn append(mem: &Mem, tail: &AtomicU64, pid: u32, msg: u64) -> u64 {
        let payload = msg.to_le_bytes();
        let len = (FRAME_HEADER_LEN + 8) as u32;
        loop {
            let t = tail.load(Acquire);
            match try_claim(mem, tail, geo(), t, len, pid) {
                ClaimStep::Claimed { pending } => {
                    let off = geo().offset_of(t);
                    // SAFETY: we just claimed the frame at `off` (`len` bytes,
                    // header plus these 8) and have not committed it.
                    unsafe { mem.write(off + FRAME_HEADER_LEN, &payload) };
                    let crc = frame::frame_crc(len, 0, 1, &payload);
                    // SAFETY: `off` is our claim with `pending`; 8 bytes fit in it.
                    if unsafe { commit(mem, off, pending, 0, 1, 8, crc) } {
                        return t;
                    }
                }
                ClaimStep::Retry => loom::thread::yield_now(),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Reads the message at `pos` if it is committed; None if not yet.
    fn read_at(mem: &Mem, pos: u64) -> Option<(u64, Option<u64>)> {
        let off = geo().offset_of(pos);
        match view(mem, geo(), off) {
            FrameView::Empty | FrameView::Pending { .. } => None,
            FrameView::Padding { aligned } => Some((geo().advance(pos, aligned), None)),
            v @ FrameView::Data { len, .. } => {
                // SAFETY: `v` is what `view` returned for `off` in `mem`, and is Data.
                let msg = unsafe {
                    read_payload(mem, off, v, |p| u64::from_le_bytes(p.try_into().unwrap()))
                }
                .expect("crc must match on a committed frame");
                Some((geo().advance(pos, align_frame(u64::from(len))), Some(msg)))
            }
            FrameView::Corrupt(f) => panic!("corrupt {f:?}"),
        }
    }

    /// Frame of one 8-byte message: header and payload, already aligned.
    const FLEN: u64 = FRAME_HEADER_LEN + 8;

    /// Writes the 8-byte messages `msgs` in the span claimed at `t` with
    /// `pending` (all but the first as inner frames, then the commit CAS).
    /// True if the commit won.
    fn fill_span(mem: &Mem, t: u64, pending: u64, msgs: &[u64]) -> bool {
        let base = geo().offset_of(t);
        let mut crc0 = 0;
        for (k, m) in msgs.iter().enumerate() {
            let off = base + k as u64 * FLEN;
            let p = m.to_le_bytes();
            // SAFETY: frame `k` of the span claimed at `t`, not committed.
            unsafe { mem.write(off + FRAME_HEADER_LEN, &p) };
            let crc = frame::frame_crc(FLEN as u32, 0, 1, &p);
            if k == 0 {
                crc0 = crc;
            } else {
                // SAFETY: frame `k > 0` of our claimed, uncommitted span.
                unsafe { write_inner(mem, off, 0, 1, 8, crc) };
            }
        }
        // SAFETY: `base` is our span, claimed with `pending`; 8 bytes fit.
        unsafe { commit_span(mem, base, pending, 0, 1, 8, crc0) }
    }

    /// Appends the 8-byte messages `msgs` as one batch span (one claim);
    /// returns their positions.
    fn append_batch(mem: &Mem, tail: &AtomicU64, pid: u32, msgs: &[u64]) -> Vec<u64> {
        let span = (FLEN * msgs.len() as u64) as u32;
        loop {
            let t = tail.load(Acquire);
            match try_claim(mem, tail, geo(), t, span, pid) {
                ClaimStep::Claimed { pending } => {
                    assert!(fill_span(mem, t, pending, msgs), "nobody unblocks here");
                    return (0..msgs.len() as u64).map(|k| t + k * FLEN).collect();
                }
                ClaimStep::Retry => loom::thread::yield_now(),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// A batch writer (two records, one claim) races a single writer and a
    /// reader: the reader only ever sees whole records with good CRCs, sees
    /// the batch's second record as soon as it sees its first (no partial
    /// batch), and the batch's ids are dense and in order.
    #[test]
    fn batch_writer_single_writer_and_reader_see_whole_records_dense_ids() {
        model(|| {
            let mem = Arc::new(Mem::new());
            let tail = Arc::new(AtomicU64::new(SEGMENT_HEADER_LEN));
            let batch = {
                let (mem, tail) = (mem.clone(), tail.clone());
                loom::thread::spawn(move || append_batch(&mem, &tail, 1, &[10, 11]))
            };
            let single = {
                let (mem, tail) = (mem.clone(), tail.clone());
                loom::thread::spawn(move || append(&mem, &tail, 2, 20))
            };
            let mut pos = SEGMENT_HEADER_LEN;
            let mut seen = Vec::new();
            for _ in 0..3 {
                let Some((next, Some(m))) = read_at(&mem, pos) else {
                    // Nothing yet: let the writers run (a yield is no
                    // preemption, so the bound still leaves room for them).
                    loom::thread::yield_now();
                    continue;
                };
                if m == 10 {
                    // The whole batch is published by one CAS.
                    assert_eq!(read_at(&mem, next).map(|(_, m)| m), Some(Some(11)));
                }
                seen.push((pos, m));
                pos = next;
            }
            let ids = batch.join().unwrap();
            let single_id = single.join().unwrap();
            assert_eq!(ids[1], ids[0] + FLEN, "batch ids are dense");
            assert_ne!(single_id, ids[0]);
            assert_ne!(single_id, ids[1]);
            while let Some((next, m)) = read_at(&mem, pos) {
                seen.extend(m.map(|m| (pos, m)));
                pos = next;
            }
            let mut expect = vec![(ids[0], 10), (ids[1], 11), (single_id, 20)];
            expect.sort();
            assert_eq!(seen, expect, "every record once, at its id, in log order");
            assert_eq!(tail.load(Acquire), SEGMENT_HEADER_LEN + 3 * FLEN);
        });
    }

    /// A stalled batch writer's commit races an unblocker: either the whole
    /// batch is published or the whole span becomes one padding frame (and
    /// the writer writes it again after it); never part of it.
    #[test]
    fn batch_commit_and_unblock_race_leaves_all_or_nothing() {
        model(|| {
            let mem = Arc::new(Mem::new());
            let tail = Arc::new(AtomicU64::new(SEGMENT_HEADER_LEN));
            let t0 = SEGMENT_HEADER_LEN;
            let ClaimStep::Claimed { pending } =
                try_claim(&*mem, &*tail, geo(), t0, (2 * FLEN) as u32, 9)
            else {
                panic!("claim must succeed on an empty log");
            };
            let writer = {
                let (mem, tail) = (mem.clone(), tail.clone());
                loom::thread::spawn(move || {
                    if fill_span(&mem, t0, pending, &[1, 2]) {
                        vec![t0, t0 + FLEN]
                    } else {
                        append_batch(&mem, &tail, 9, &[1, 2]) // stolen: write it again
                    }
                })
            };
            let stolen = unblock(&*mem, geo().offset_of(t0), pending);
            let ids = writer.join().unwrap();
            assert_eq!(stolen, ids[0] != t0);
            let mut pos = t0;
            let mut seen = Vec::new();
            while let Some((next, m)) = read_at(&mem, pos) {
                seen.extend(m.map(|m| (pos, m)));
                pos = next;
            }
            assert_eq!(seen, vec![(ids[0], 1), (ids[0] + FLEN, 2)]);
        });
    }

    #[test]
    fn two_writers_one_tailer_see_every_message_once() {
        model(|| {
            let mem = Arc::new(Mem::new());
            let tail = Arc::new(AtomicU64::new(SEGMENT_HEADER_LEN));
            let ws: Vec<_> = (1..=2u64)
                .map(|i| {
                    let (mem, tail) = (mem.clone(), tail.clone());
                    loom::thread::spawn(move || append(&mem, &tail, i as u32, i * 100))
                })
                .collect();
            // A tailer reading concurrently must only ever see complete messages.
            let mut pos = SEGMENT_HEADER_LEN;
            let mut seen = Vec::new();
            for _ in 0..2 {
                if let Some((next, Some(m))) = read_at(&mem, pos) {
                    seen.push(m);
                    pos = next;
                }
            }
            let ids: Vec<u64> = ws.into_iter().map(|h| h.join().unwrap()).collect();
            assert_ne!(ids[0], ids[1]);
            while let Some((next, m)) = read_at(&mem, pos) {
                seen.extend(m);
                pos = next;
            }
            seen.sort();
            assert_eq!(seen, vec![100, 200]);
            assert_eq!(tail.load(Acquire), SEGMENT_HEADER_LEN + 48);
        });
    }

    #[test]
    fn competing_consumers_get_each_message_exactly_once() {
        model(|| {
            let mem = Arc::new(Mem::new());
            let tail = Arc::new(AtomicU64::new(SEGMENT_HEADER_LEN));
            append(&mem, &tail, 1, 7);
            let cursor = Arc::new(AtomicU64::new(SEGMENT_HEADER_LEN));
            // A writer appends the second message while two consumers compete.
            let w = {
                let (mem, tail) = (mem.clone(), tail.clone());
                loom::thread::spawn(move || {
                    append(&mem, &tail, 2, 8);
                })
            };
            let take = |mem: &Mem, cursor: &AtomicU64| -> Option<u64> {
                let cur = cursor.load(Acquire);
                match read_at(mem, cur) {
                    Some((next, Some(m))) if consume(cursor, cur, next) => Some(m),
                    _ => None,
                }
            };
            let c = {
                let (mem, cursor) = (mem.clone(), cursor.clone());
                loom::thread::spawn(move || take(&mem, &cursor))
            };
            let mut all: Vec<u64> = take(&mem, &cursor).into_iter().collect();
            w.join().unwrap();
            all.extend(c.join().unwrap());
            // Drain what the consumers did not get to.
            while let Some(m) = take(&mem, &cursor) {
                all.push(m);
            }
            all.sort();
            assert_eq!(all, vec![7, 8], "each message exactly once");
        });
    }

    #[test]
    fn commit_and_unblock_race_resolves_once() {
        model(|| {
            let mem = Arc::new(Mem::new());
            let tail = Arc::new(AtomicU64::new(SEGMENT_HEADER_LEN));
            let t0 = SEGMENT_HEADER_LEN;
            let len = (FRAME_HEADER_LEN + 8) as u32;
            let ClaimStep::Claimed { pending } = try_claim(&*mem, &*tail, geo(), t0, len, 9) else {
                panic!("claim must succeed on an empty log");
            };
            // The "stuck" writer commits while an unblocker gives up on it.
            let writer = {
                let (mem, tail) = (mem.clone(), tail.clone());
                loom::thread::spawn(move || {
                    let payload = 42u64.to_le_bytes();
                    // SAFETY: the frame at `t0` was claimed above with `pending`
                    // for this writer (header plus 8 bytes) and is not committed.
                    unsafe { mem.write(geo().offset_of(t0) + FRAME_HEADER_LEN, &payload) };
                    let crc = frame::frame_crc(len, 0, 1, &payload);
                    // SAFETY: `t0` is this writer's claim with `pending`; 8 bytes fit.
                    if unsafe { commit(&*mem, geo().offset_of(t0), pending, 0, 1, 8, crc) } {
                        t0
                    } else {
                        append(&mem, &tail, 9, 42) // stolen: write it again
                    }
                })
            };
            let stolen = unblock(&*mem, geo().offset_of(t0), pending);
            let id = writer.join().unwrap();
            assert_eq!(stolen, id != t0);
            // The message is readable exactly once, at `id`.
            let mut pos = t0;
            let mut seen = Vec::new();
            while let Some((next, m)) = read_at(&mem, pos) {
                if let Some(m) = m {
                    seen.push((pos, m));
                }
                pos = next;
            }
            assert_eq!(seen, vec![(id, 42)]);
        });
    }
}
