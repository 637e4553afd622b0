//! Replication wire protocol, version 3 (a primary also serves version 2
//! secondaries; only version 3 sessions receive `Groups`).
//! `docs/protocol.md` is the prose description of the same bytes.
//!
//! Every message is a frame: `length:u32 | type:u8 | body`, little-endian,
//! where `length` counts the type byte and the body and may not exceed the
//! receiver's maximum frame size. A frame that is too large, of an unknown
//! type, truncated, or with bytes left over is a [`ProtocolError`]; the
//! connection is then closed and nothing of the frame reaches the queue.
//!
//! ```
//! use bytes::BytesMut;
//! use repliq::replication::protocol::{Codec, Message};
//! use tokio_util::codec::{Decoder, Encoder};
//! let mut codec = Codec::default();
//! let mut buf = BytesMut::new();
//! codec.encode(&Message::Ack { position: 4096 }, &mut buf)?;
//! assert_eq!(codec.decode(&mut buf)?, Some(Message::Ack { position: 4096 }));
//! # Ok::<(), repliq::replication::protocol::ProtocolError>(())
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::store::epochs::EpochEntry;
use crate::store::layout::{EPOCHS_MAX_ENTRIES, GROUP_SLOTS, SLOT_NAME_MAX};
use crate::store::GroupState;

/// Magic at the start of a `Hello` body (`b"RPLQ"`).
pub const MAGIC: u32 = u32::from_le_bytes(*b"RPLQ");
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest protocol version a primary still serves (a version 2 session
/// streams records but never receives [`Message::Groups`]).
pub const MIN_PROTOCOL_VERSION: u16 = 2;
/// The first protocol version whose sessions carry [`Message::Groups`].
pub const GROUPS_VERSION: u16 = 3;
/// Most entries in one [`Message::Groups`]: the consumer-group slots of a
/// queue's control file.
pub const MAX_GROUPS: usize = GROUP_SLOTS;
/// Bytes before a frame's body: length (4) and type (1).
pub const FRAME_HEADER_LEN: usize = 5;
/// Default largest frame accepted (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// Longest node or queue name, in bytes.
pub const MAX_NAME: usize = 255;
/// Largest frame accepted before a connection's `Hello` has been read
/// (64 KiB: a `Hello` with the longest names and a full epoch history takes
/// under 50 KiB), so an anonymous peer cannot make the primary reserve a
/// full-size frame buffer.
pub const HELLO_MAX_FRAME: usize = 64 * 1024;

/// Message type codes.
pub mod kind {
    /// Secondary → primary: who I am, what I have.
    pub const HELLO: u8 = 1;
    /// Primary → secondary: accepted; where streaming starts.
    pub const WELCOME: u8 = 2;
    /// Primary → secondary: a run of frames at a position.
    pub const RECORDS: u8 = 3;
    /// Secondary → primary: durable up to a position.
    pub const ACK: u8 = 4;
    /// Either way: liveness and progress.
    pub const HEARTBEAT: u8 = 5;
    /// Either way: refusal with a reason; the sender closes.
    pub const ERROR: u8 = 6;
    /// Primary → secondary (version 3 sessions only): the consumer groups'
    /// cursors and counts.
    pub const GROUPS: u8 = 7;
}

/// A secondary's greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version spoken.
    pub version: u16,
    /// The secondary's node name.
    pub node: String,
    /// The queue's name (its directory name under the persistence path).
    pub queue: String,
    /// The queue id the secondary holds, 0 if it has none yet.
    pub queue_id: u64,
    /// The secondary's segment size, 0 if it has no queue yet.
    pub segment_size: u64,
    /// The secondary's write position: streaming resumes here.
    pub position: u64,
    /// The epoch of the secondary's last record.
    pub epoch: u32,
    /// The secondary's leader-epoch history (version 2): the primary finds
    /// where the two logs part from it and answers with that point as
    /// `Welcome::start`; the secondary cuts its log back to it.
    pub history: Vec<EpochEntry>,
}

/// The primary's acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version spoken.
    pub version: u16,
    /// The primary's node name.
    pub node: String,
    /// The queue id; a new secondary creates its queue with it.
    pub queue_id: u64,
    /// Segment size of the queue.
    pub segment_size: u64,
    /// Capacity of the queue.
    pub capacity: u64,
    /// Durability code of the queue (0 none, 1 batch, 2 always).
    pub durability: u8,
    /// Position the stream starts at.
    pub start: u64,
    /// The primary's current epoch.
    pub epoch: u32,
}

/// Progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender's write position.
    pub tail: u64,
    /// Sender's committed position.
    pub committed: u64,
    /// Sender's wall clock, Unix nanoseconds (for lag in seconds).
    pub sent_unix_ns: u64,
    /// Sender's oldest retained position (a primary's low watermark: a
    /// secondary deletes its segments below it once its own readers passed
    /// them). 0 from a secondary.
    pub first: u64,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// Complete frames copied from the primary's log, to be written at `position`.
    Records {
        /// Position of the first frame.
        position: u64,
        /// The frames' bytes, exactly as in the primary's segment.
        bytes: Bytes,
    },
    /// Everything below `position` is durable on the secondary.
    Ack {
        /// The acknowledged position.
        position: u64,
    },
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// The primary's consumer-group table (version 3): every group's name,
    /// cursor and dequeued count, at most [`MAX_GROUPS`] entries with names
    /// of 1 to `SLOT_NAME_MAX` bytes.
    Groups(Vec<GroupState>),
    /// A refusal; the sender closes the connection after it.
    Error {
        /// Error code (see `docs/protocol.md`).
        code: u16,
        /// Human-readable reason.
        message: String,
    },
}

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Declared frame length above the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Maximum accepted.
        max: usize,
    },
    /// Declared length of zero.
    #[error("empty frame")]
    Empty,
    /// Unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The body ended before a field.
    #[error("truncated {0} message")]
    Truncated(&'static str),
    /// Bytes left after the last field.
    #[error("{0} bytes of trailing garbage in a {1} message")]
    Trailing(usize, &'static str),
    /// The hello magic is wrong.
    #[error("bad magic {0:#010x}: not a repliq peer")]
    BadMagic(u32),
    /// A name is not UTF-8 or too long.
    #[error("invalid {0}")]
    BadString(&'static str),
    /// A `Records` run is empty or not 8-byte aligned.
    #[error("records run of {0} bytes is empty or unaligned")]
    BadRun(usize),
    /// A `Groups` message with more entries than a queue has group slots.
    #[error("{0} groups exceed the maximum of {MAX_GROUPS}")]
    TooManyGroups(usize),
    /// A message too large to encode.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Frames messages on a byte stream, enforcing a maximum frame size.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    max_frame: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

impl Codec {
    /// A codec accepting frames of at most `max_frame` bytes (type and body).
    pub fn with_max_frame(max_frame: usize) -> Codec {
        Codec { max_frame }
    }

    /// The maximum frame size.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Encodes a `Records` frame header for `len` bytes at `position`; the
    /// caller appends the bytes themselves (straight from the mapped segment).
    pub fn encode_records_header(
        &self,
        position: u64,
        len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        let body = 8 + len;
        if 1 + body > self.max_frame {
            return Err(ProtocolError::Encode(format!(
                "records run of {len} bytes exceeds the maximum frame"
            )));
        }
        dst.reserve(FRAME_HEADER_LEN + body);
        dst.put_u32_le((1 + body) as u32);
        dst.put_u8(kind::RECORDS);
        dst.put_u64_le(position);
        Ok(())
    }
}

fn put_str(dst: &mut BytesMut, s: &str) -> Result<(), ProtocolError> {
    if s.len() > MAX_NAME {
        return Err(ProtocolError::Encode(format!(
            "name longer than {MAX_NAME} bytes"
        )));
    }
    dst.put_u16_le(s.len() as u16);
    dst.put_slice(s.as_bytes());
    Ok(())
}

/// Reads fields from a frame body, failing cleanly when it runs short.
struct Body {
    b: Bytes,
    what: &'static str,
}

impl Body {
    fn need(&self, n: usize) -> Result<(), ProtocolError> {
        if self.b.remaining() < n {
            Err(ProtocolError::Truncated(self.what))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.need(2)?;
        Ok(self.b.get_u16_le())
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.need(4)?;
        Ok(self.b.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.need(8)?;
        Ok(self.b.get_u64_le())
    }
    fn string(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let n = self.u16()? as usize;
        if n > MAX_NAME {
            return Err(ProtocolError::BadString(what));
        }
        self.need(n)?;
        let s = self.b.split_to(n);
        String::from_utf8(s.to_vec()).map_err(|_| ProtocolError::BadString(what))
    }
    fn group_name(&mut self) -> Result<String, ProtocolError> {
        let s = self.string("group name")?;
        if s.is_empty() || s.len() > SLOT_NAME_MAX {
            return Err(ProtocolError::BadString("group name"));
        }
        Ok(s)
    }
    fn end(self) -> Result<(), ProtocolError> {
        if self.b.has_remaining() {
            Err(ProtocolError::Trailing(self.b.remaining(), self.what))
        } else {
            Ok(())
        }
    }
}

impl tokio_util::codec::Decoder for Codec {
    type Item = Message;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            return Err(ProtocolError::Empty);
        }
        if len > self.max_frame {
            return Err(ProtocolError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut frame = src.split_to(len).freeze();
        let ty = frame.get_u8();
        let msg = match ty {
            kind::HELLO => {
                let mut b = Body {
                    b: frame,
                    what: "hello",
                };
                let magic = b.u32()?;
                if magic != MAGIC {
                    return Err(ProtocolError::BadMagic(magic));
                }
                let h = Hello {
                    version: b.u16()?,
                    node: b.string("node name")?,
                    queue: b.string("queue name")?,
                    queue_id: b.u64()?,
                    segment_size: b.u64()?,
                    position: b.u64()?,
                    epoch: b.u32()?,
                    history: Vec::new(),
                };
                let mut h = h;
                // Version 1 peers send no history; they are refused by the
                // primary with a clear version error, not a decoding one.
                if h.version >= 2 {
                    let n = b.u32()? as usize;
                    if n > EPOCHS_MAX_ENTRIES {
                        return Err(ProtocolError::BadString("epoch history length"));
                    }
                    for _ in 0..n {
                        h.history.push(EpochEntry {
                            epoch: b.u32()?,
                            start: b.u64()?,
                        });
                    }
                }
                b.end()?;
                Message::Hello(h)
            }
            kind::WELCOME => {
                let mut b = Body {
                    b: frame,
                    what: "welcome",
                };
                let w = Welcome {
                    version: b.u16()?,
                    node: b.string("node name")?,
                    queue_id: b.u64()?,
                    segment_size: b.u64()?,
                    capacity: b.u64()?,
                    durability: b.u8()?,
                    start: b.u64()?,
                    epoch: b.u32()?,
                };
                b.end()?;
                Message::Welcome(w)
            }
            kind::RECORDS => {
                let mut b = Body {
                    b: frame,
                    what: "records",
                };
                let position = b.u64()?;
                let bytes = b.b;
                if bytes.is_empty() || bytes.len() % 8 != 0 {
                    return Err(ProtocolError::BadRun(bytes.len()));
                }
                Message::Records { position, bytes }
            }
            kind::ACK => {
                let mut b = Body {
                    b: frame,
                    what: "ack",
                };
                let position = b.u64()?;
                b.end()?;
                Message::Ack { position }
            }
            kind::HEARTBEAT => {
                let mut b = Body {
                    b: frame,
                    what: "heartbeat",
                };
                let h = Heartbeat {
                    tail: b.u64()?,
                    committed: b.u64()?,
                    sent_unix_ns: b.u64()?,
                    first: b.u64()?,
                };
                b.end()?;
                Message::Heartbeat(h)
            }
            kind::GROUPS => {
                let mut b = Body {
                    b: frame,
                    what: "groups",
                };
                let n = b.u16()? as usize;
                if n > MAX_GROUPS {
                    return Err(ProtocolError::TooManyGroups(n));
                }
                let mut groups = Vec::with_capacity(n);
                for _ in 0..n {
                    groups.push(GroupState {
                        name: b.group_name()?,
                        position: b.u64()?,
                        dequeued: b.u64()?,
                    });
                }
                b.end()?;
                Message::Groups(groups)
            }
            kind::ERROR => {
                let mut b = Body {
                    b: frame,
                    what: "error",
                };
                let code = b.u16()?;
                let message = b.string("error message")?;
                b.end()?;
                Message::Error { code, message }
            }
            other => return Err(ProtocolError::UnknownType(other)),
        };
        Ok(Some(msg))
    }
}

impl tokio_util::codec::Encoder<&Message> for Codec {
    type Error = ProtocolError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let mut body = BytesMut::new();
        let ty = match msg {
            Message::Hello(h) => {
                body.put_u32_le(MAGIC);
                body.put_u16_le(h.version);
                put_str(&mut body, &h.node)?;
                put_str(&mut body, &h.queue)?;
                body.put_u64_le(h.queue_id);
                body.put_u64_le(h.segment_size);
                body.put_u64_le(h.position);
                body.put_u32_le(h.epoch);
                if h.version >= 2 {
                    let keep = &h.history[h.history.len().saturating_sub(EPOCHS_MAX_ENTRIES)..];
                    body.put_u32_le(keep.len() as u32);
                    for e in keep {
                        body.put_u32_le(e.epoch);
                        body.put_u64_le(e.start);
                    }
                }
                kind::HELLO
            }
            Message::Welcome(w) => {
                body.put_u16_le(w.version);
                put_str(&mut body, &w.node)?;
                body.put_u64_le(w.queue_id);
                body.put_u64_le(w.segment_size);
                body.put_u64_le(w.capacity);
                body.put_u8(w.durability);
                body.put_u64_le(w.start);
                body.put_u32_le(w.epoch);
                kind::WELCOME
            }
            Message::Records { position, bytes } => {
                self.encode_records_header(*position, bytes.len(), dst)?;
                dst.put_slice(bytes);
                return Ok(());
            }
            Message::Ack { position } => {
                body.put_u64_le(*position);
                kind::ACK
            }
            Message::Heartbeat(h) => {
                body.put_u64_le(h.tail);
                body.put_u64_le(h.committed);
                body.put_u64_le(h.sent_unix_ns);
                body.put_u64_le(h.first);
                kind::HEARTBEAT
            }
            Message::Groups(groups) => {
                if groups.len() > MAX_GROUPS {
                    return Err(ProtocolError::TooManyGroups(groups.len()));
                }
                body.put_u16_le(groups.len() as u16);
                for g in groups {
                    if g.name.is_empty() || g.name.len() > SLOT_NAME_MAX {
                        return Err(ProtocolError::Encode(format!(
                            "group name of {} bytes is not 1 to {SLOT_NAME_MAX}",
                            g.name.len()
                        )));
                    }
                    put_str(&mut body, &g.name)?;
                    body.put_u64_le(g.position);
                    body.put_u64_le(g.dequeued);
                }
                kind::GROUPS
            }
            Message::Error { code, message } => {
                body.put_u16_le(*code);
                let m: String = message.chars().take(MAX_NAME / 4).collect();
                put_str(&mut body, &m)?;
                kind::ERROR
            }
        };
        if 1 + body.len() > self.max_frame {
            return Err(ProtocolError::Encode(
                "message exceeds the maximum frame".into(),
            ));
        }
        dst.reserve(FRAME_HEADER_LEN + body.len());
        dst.put_u32_le((1 + body.len()) as u32);
        dst.put_u8(ty);
        dst.put_slice(&body);
        Ok(())
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use crate::store::layout::{align_frame, FRAME_HEADER_LEN, MAX_RECORD_PAYLOAD};

    /// The store's payload limit is what one `Records` frame carries: the
    /// sender's room per frame (`max_frame - 16`, primary.rs) holds the whole
    /// store frame of the largest record, and the codec encodes it.
    #[test]
    fn the_largest_record_fits_one_records_frame() {
        let store_frame = align_frame(FRAME_HEADER_LEN + MAX_RECORD_PAYLOAD) as usize;
        assert!(store_frame <= DEFAULT_MAX_FRAME - 16);
        let mut dst = BytesMut::new();
        assert!(Codec::default()
            .encode_records_header(0, store_frame, &mut dst)
            .is_ok());
        // One byte more could not be sent: the limit is not below the room.
        assert!(store_frame + 8 > DEFAULT_MAX_FRAME - 16);
    }
}
