//! The primary side: serves a queue's log to secondaries over TCP.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::replication::conn::{send, unix_ns, Reader};
use crate::replication::error::ReplicationError;
use crate::replication::protocol::{self, Codec, Heartbeat, Hello, Message, Welcome};
use crate::store::Store;

/// Settings of the primary side.
#[derive(Debug, Clone)]
pub struct PrimaryConfig {
    /// This node's name.
    pub node: String,
    /// Name of the served queue.
    pub queue: String,
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// Bytes of records batched into one write.
    pub batch_bytes: usize,
    /// Interval between heartbeats when idle.
    pub heartbeat: Duration,
    /// Silence after which a secondary is considered gone.
    pub timeout: Duration,
    /// Acknowledgements needed to advance the replicated watermark.
    pub min_acks: usize,
}

impl PrimaryConfig {
    /// Defaults for `node` serving `queue`.
    pub fn new(node: &str, queue: &str) -> PrimaryConfig {
        PrimaryConfig {
            node: node.into(),
            queue: queue.into(),
            max_frame: protocol::DEFAULT_MAX_FRAME,
            batch_bytes: 1 << 20,
            heartbeat: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
            min_acks: 1,
        }
    }
}

/// Serves one secondary on `stream` until it disconnects or misbehaves.
///
/// A malformed frame ends the session with [`ReplicationError::Protocol`];
/// nothing is ever written to `store` here.
pub async fn serve(
    store: Store,
    cfg: Arc<PrimaryConfig>,
    stream: TcpStream,
) -> Result<(), ReplicationError> {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = tokio::io::split(stream);
    let codec = Codec::with_max_frame(cfg.max_frame);
    let mut reader = Reader::new(
        rd,
        Codec::with_max_frame(protocol::HELLO_MAX_FRAME.min(cfg.max_frame)),
    );
    let hello = read_hello(&mut reader, cfg.timeout).await?;
    reader.set_max_frame(cfg.max_frame);
    serve_session(store, cfg, hello, reader, wr, codec).await
}

/// Reads the secondary's opening [`Hello`].
pub(crate) async fn read_hello<R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
    timeout: Duration,
) -> Result<Hello, ReplicationError> {
    match reader.next(timeout, "hello").await? {
        Message::Hello(h) => Ok(h),
        other => Err(ReplicationError::Refused(format!(
            "expected hello, got {other:?}"
        ))),
    }
}

/// The rest of a session once the [`Hello`] has been read: checks it,
/// answers, then streams records and takes acknowledgements.
pub(crate) async fn serve_session<R, W>(
    store: Store,
    cfg: Arc<PrimaryConfig>,
    hello: Hello,
    mut reader: Reader<R>,
    mut wr: W,
    mut codec: Codec,
) -> Result<(), ReplicationError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let refuse = |code: u16, why: String| Message::Error { code, message: why };
    let geo = store.geometry();
    let versions = protocol::MIN_PROTOCOL_VERSION..=protocol::PROTOCOL_VERSION;
    let problem = if !versions.contains(&hello.version) {
        Some((
            1,
            format!("protocol version {} not supported", hello.version),
        ))
    } else if hello.queue != cfg.queue {
        Some((
            2,
            format!(
                "this primary serves queue {:?}, not {:?}",
                cfg.queue, hello.queue
            ),
        ))
    } else if hello.queue_id != 0 && hello.queue_id != store.queue_id() {
        Some((
            2,
            "queue id mismatch: the secondary holds another queue".into(),
        ))
    } else if hello.queue_id != 0 && hello.segment_size != geo.size() {
        Some((2, "segment size mismatch".into()))
    } else {
        None
    };
    if let Some((code, why)) = problem {
        let _ = send(&mut wr, &mut codec, &refuse(code, why.clone())).await;
        return Err(ReplicationError::Refused(why));
    }
    // Fencing: a secondary that holds a newer epoch than this node has
    // followed a newer leader; this node is not the queue's leader.
    let mine = store.epoch();
    let theirs = hello.history.last().map_or(hello.epoch, |e| e.epoch);
    if hello.queue_id != 0 && theirs > mine {
        // Error messages carry at most 63 characters on the wire.
        let why = format!("not the queue's leader: epoch {mine} < the secondary's {theirs}");
        let _ = send(&mut wr, &mut codec, &refuse(4, why.clone())).await;
        return Err(ReplicationError::Refused(why));
    }
    let first = store.first_position();
    let start = if hello.queue_id == 0 || hello.position <= geo.first_position(0) {
        first
    } else {
        // Where the two histories part (KIP-101: by epoch, never by a
        // watermark); the secondary cuts back to it before streaming.
        let ours = store.epoch_history()?;
        let their_history = if hello.history.is_empty() {
            vec![crate::store::epochs::EpochEntry {
                epoch: 1,
                start: crate::store::layout::SEGMENT_HEADER_LEN,
            }]
        } else {
            hello.history.clone()
        };
        crate::store::epochs::divergence(
            &ours,
            store.tail_position(),
            &their_history,
            hello.position,
        )
    };
    if start < first || start > store.tail_position() {
        let why = format!(
            "position {start} is outside the retained log [{first}, {}]",
            store.tail_position()
        );
        let _ = send(&mut wr, &mut codec, &refuse(3, why.clone())).await;
        return Err(ReplicationError::Refused(why));
    }
    // A position inside the retained range must also be where a record
    // starts (or the write position): streaming from the middle of a frame
    // would ship bytes the secondary cannot validate against its log.
    if let Err(e) = store.tailer().seek(start) {
        let why = format!("position {start} is not a record boundary of this queue: {e}");
        let _ = send(&mut wr, &mut codec, &refuse(3, why.clone())).await;
        return Err(ReplicationError::Refused(why));
    }
    // The peer's slot, marked connected, its position reset to where this
    // session starts (what the peer holds now).
    let slot = store.attach_peer(&hello.node, start)?;
    let _link = LinkState {
        store: &store,
        slot,
    };
    let cfgq = store.config();
    // The session speaks the secondary's version (checked above to be one
    // this primary serves).
    let version = hello.version;
    let welcome = Message::Welcome(Welcome {
        version,
        node: cfg.node.clone(),
        queue_id: store.queue_id(),
        segment_size: geo.size(),
        capacity: cfgq.capacity,
        durability: cfgq.durability as u8,
        start,
        epoch: store.epoch(),
    });
    send(&mut wr, &mut codec, &welcome).await?;
    tracing::info!(peer = %hello.node, start, version, "secondary connected");
    // The consumer groups' table, to version 3 secondaries only: once now,
    // then whenever it changed, at most once per heartbeat interval.
    let mut groups = (version >= protocol::GROUPS_VERSION).then(|| GroupSender {
        every: cfg.heartbeat,
        last: None,
        at: tokio::time::Instant::now(),
    });
    if let Some(g) = &mut groups {
        g.send_if_changed(&store, &mut wr, &mut codec).await?;
    }

    // The end of what this session has handed to the socket: a secondary
    // cannot hold more, so an Ack beyond it is forged (or a bug) and ends
    // the session without moving the peer's position or the watermark.
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(start));
    // Acks come back on the read half, handled concurrently.
    let acks = {
        let store = store.clone();
        let cfg = cfg.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            loop {
                match reader.next(cfg.timeout, "ack").await? {
                    Message::Ack { position } => {
                        let limit = sent.load(std::sync::atomic::Ordering::Acquire);
                        if position > limit {
                            return Err(ReplicationError::Refused(format!(
                                "ack of position {position} beyond the {limit} sent to this secondary"
                            )));
                        }
                        store.ack_peer(slot, position, cfg.min_acks);
                    }
                    Message::Heartbeat(_) => {}
                    Message::Error { code, message } => {
                        return Err(ReplicationError::Refused(format!("{code}: {message}")))
                    }
                    other => {
                        return Err(ReplicationError::Refused(format!(
                            "unexpected {other:?} from a secondary"
                        )))
                    }
                }
            }
        })
    };
    let mut acks = std::pin::pin!(acks);
    let mut pos = start;
    // How long the sender has waited at a pending frame: a writer killed
    // mid-append leaves one that only a reader resolves, and on a primary
    // whose only readers are secondaries, the sender is that reader.
    let mut stall = store.stall();
    let mut buf = BytesMut::with_capacity(cfg.batch_bytes + 64);
    let mut first_sent = store.first_position();
    loop {
        // Batch complete frames straight from the mapped segments.
        while buf.len() < cfg.batch_bytes {
            let room = (cfg.batch_bytes - buf.len()).min(cfg.max_frame - 16);
            let r = store.with_committed_frames(pos, room, |bytes| {
                codec
                    .encode_records_header(pos, bytes.len(), &mut buf)
                    .map(|()| buf.extend_from_slice(bytes))
            })?;
            match r {
                Some((res, next)) => {
                    res?;
                    pos = next;
                }
                None => break,
            }
        }
        if !buf.is_empty() {
            sent.store(pos, std::sync::atomic::Ordering::Release);
            tokio::select! {
                r = wr.write_all(&buf) => r?,
                r = &mut acks => return ack_end(r),
            }
            buf.clear();
            if let Some(g) = &mut groups {
                g.tick(&store, &mut wr, &mut codec).await?;
            }
            // Retention moved the low watermark: tell the secondary now, so
            // a replica of a busy queue deletes its segments too.
            let first = store.first_position();
            if first != first_sent {
                first_sent = first;
                send(&mut wr, &mut codec, &heartbeat(&store)).await?;
            }
            continue;
        }
        let p = pos;
        let s2 = store.clone();
        tokio::select! {
            _ = s2.ready_async(|| store.frame_ready(p, None)) => {}
            _ = tokio::time::sleep(cfg.heartbeat) => {
                // Nothing ready for a heartbeat's time: if a dead or stalled
                // writer holds the frame at `p`, turn it into padding by the
                // readers' rule (an error here surfaces on the next read).
                let _ = store.peek(p, &mut None, &mut stall);
                first_sent = store.first_position();
                send(&mut wr, &mut codec, &heartbeat(&store)).await?;
                if let Some(g) = &mut groups {
                    g.tick(&store, &mut wr, &mut codec).await?;
                }
            }
            r = &mut acks => return ack_end(r),
        }
    }
}

/// Sends a session's consumer-group table when it changed, at most once per
/// `every`.
struct GroupSender {
    every: Duration,
    last: Option<Vec<crate::store::GroupState>>,
    at: tokio::time::Instant,
}

impl GroupSender {
    /// [`send_if_changed`](Self::send_if_changed) once `every` has passed
    /// since the last look; otherwise nothing (not even a read of the table).
    async fn tick<W: AsyncWrite + Unpin>(
        &mut self,
        store: &Store,
        wr: &mut W,
        codec: &mut Codec,
    ) -> Result<(), ReplicationError> {
        if self.at.elapsed() < self.every {
            return Ok(());
        }
        self.send_if_changed(store, wr, codec).await
    }

    /// Reads the table (64 slot loads) and sends it unless it equals the
    /// one sent last.
    async fn send_if_changed<W: AsyncWrite + Unpin>(
        &mut self,
        store: &Store,
        wr: &mut W,
        codec: &mut Codec,
    ) -> Result<(), ReplicationError> {
        self.at = tokio::time::Instant::now();
        let now = store.groups();
        if self.last.as_ref() == Some(&now) {
            return Ok(());
        }
        let m = Message::Groups(now);
        send(wr, codec, &m).await?;
        if let Message::Groups(g) = m {
            self.last = Some(g);
        }
        Ok(())
    }
}

/// The primary's progress report, its low watermark included.
fn heartbeat(store: &Store) -> Message {
    Message::Heartbeat(Heartbeat {
        tail: store.tail_position(),
        committed: store.committed_position(),
        sent_unix_ns: unix_ns(),
        first: store.first_position(),
    })
}

fn ack_end(
    r: Result<Result<(), ReplicationError>, tokio::task::JoinError>,
) -> Result<(), ReplicationError> {
    match r {
        Ok(r) => r,
        Err(e) => Err(ReplicationError::Refused(format!("ack reader failed: {e}"))),
    }
}

/// Marks a peer slot's link disconnected when the session ends, whichever
/// way it ends ([`Store::attach_peer`] marked it connected).
struct LinkState<'a> {
    store: &'a Store,
    slot: usize,
}

impl Drop for LinkState<'_> {
    fn drop(&mut self) {
        self.store.set_peer_link(self.slot, false);
    }
}
