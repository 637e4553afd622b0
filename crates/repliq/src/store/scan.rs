//! Frame-by-frame inspection of the log, for `dump` and `verify`.

use std::sync::Arc;

use crate::store::error::Result;
use crate::store::frame_ops::{self, FrameView};
use crate::store::layout::{align_frame, FLAG_METADATA};
use crate::store::segment::Segment;
use crate::store::Store;

/// What kind of frame a position holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An application message.
    Data,
    /// A repliq metadata frame.
    Metadata,
    /// Padding (end of segment, or a dead writer's frame).
    Padding,
    /// Claimed, not committed yet.
    Pending,
    /// The header fails its check; the scan cannot go past it.
    Corrupt,
}

impl FrameKind {
    /// Lower-case name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Data => "data",
            FrameKind::Metadata => "metadata",
            FrameKind::Padding => "padding",
            FrameKind::Pending => "pending",
            FrameKind::Corrupt => "corrupt",
        }
    }
}

/// One frame as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameInfo {
    /// Id (position) of the frame.
    pub id: u64,
    /// Segment index.
    pub segment: u64,
    /// Offset in the segment file.
    pub offset: u64,
    /// Frame length including the header (0 if unknown).
    pub len: u32,
    /// Raw flags.
    pub flags: u16,
    /// Epoch (data frames).
    pub epoch: u32,
    /// Kind.
    pub kind: FrameKind,
    /// Whether the CRC matched (data and metadata frames only).
    pub crc_ok: Option<bool>,
    /// What is wrong, if anything.
    pub problem: Option<String>,
}

/// Iterator over frames from a position to the end of the written log.
pub struct Scan {
    store: Store,
    pos: u64,
    seg: Option<Arc<Segment>>,
    done: bool,
}

impl Store {
    /// Scans frames from `from` (a frame boundary) until the first empty
    /// position, a pending frame, or a header that fails its check.
    pub fn scan(&self, from: u64) -> Scan {
        Scan {
            store: self.clone(),
            pos: from,
            seg: None,
            done: false,
        }
    }
}

impl Iterator for Scan {
    type Item = Result<FrameInfo>;

    fn next(&mut self) -> Option<Result<FrameInfo>> {
        if self.done {
            return None;
        }
        let geo = self.store.geometry();
        let si = geo.segment_of(self.pos);
        if self.seg.as_ref().map(|s| s.index()) != Some(si) {
            match self.store.segment(si) {
                Ok(Some(s)) => self.seg = Some(s),
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        let seg = self.seg.as_ref()?;
        let off = geo.offset_of(self.pos);
        let v = frame_ops::view(&**seg, geo, off);
        let mut info = FrameInfo {
            id: self.pos,
            segment: si,
            offset: off,
            len: 0,
            flags: 0,
            epoch: 0,
            kind: FrameKind::Corrupt,
            crc_ok: None,
            problem: None,
        };
        match v {
            FrameView::Empty => {
                self.done = true;
                return None;
            }
            FrameView::Pending { word0, .. } => {
                info.kind = FrameKind::Pending;
                info.len = word0 as u32;
                info.flags = (word0 >> 32) as u16;
                self.done = true;
            }
            FrameView::Padding { aligned } => {
                info.kind = FrameKind::Padding;
                info.len = aligned as u32;
                info.flags = crate::store::layout::FLAG_PADDING;
                self.pos = geo.advance(self.pos, aligned);
            }
            FrameView::Data {
                len, flags, epoch, ..
            } => {
                info.kind = if flags & FLAG_METADATA != 0 {
                    FrameKind::Metadata
                } else {
                    FrameKind::Data
                };
                info.len = len;
                info.flags = flags;
                info.epoch = epoch;
                // SAFETY: `v` is the committed data view of `off` in `seg`.
                let ok = unsafe { frame_ops::read_payload(&**seg, off, v, |_| ()) }.is_ok();
                info.crc_ok = Some(ok);
                if !ok {
                    info.problem = Some("payload CRC32C mismatch".into());
                }
                self.pos = geo.advance(self.pos, align_frame(u64::from(len)));
            }
            FrameView::Corrupt(f) => {
                info.problem = Some(f.describe().into());
                self.done = true;
            }
        }
        Some(Ok(info))
    }
}
