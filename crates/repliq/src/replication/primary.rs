//! The primary side: serves a queue's log to secondaries over TCP.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
    let (rd, wr) = stream.into_split();
    let codec = Codec::with_max_frame(cfg.max_frame);
    let mut reader = Reader::new(rd, codec);
    let hello = read_hello(&mut reader, cfg.timeout).await?;
    serve_session(store, cfg, hello, reader, wr, codec).await
}

/// Reads the secondary's opening [`Hello`].
pub(crate) async fn read_hello(
    reader: &mut Reader<OwnedReadHalf>,
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
pub(crate) async fn serve_session(
    store: Store,
    cfg: Arc<PrimaryConfig>,
    hello: Hello,
    mut reader: Reader<OwnedReadHalf>,
    mut wr: OwnedWriteHalf,
    mut codec: Codec,
) -> Result<(), ReplicationError> {
    let refuse = |code: u16, why: String| Message::Error { code, message: why };
    let geo = store.geometry();
    let problem = if hello.version != protocol::PROTOCOL_VERSION {
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
    let first = store.first_position();
    let start = if hello.queue_id == 0 || hello.position <= geo.first_position(0) {
        first
    } else {
        hello.position
    };
    if start < first || start > store.tail_position() {
        let why = format!(
            "position {start} is outside the retained log [{first}, {}]",
            store.tail_position()
        );
        let _ = send(&mut wr, &mut codec, &refuse(3, why.clone())).await;
        return Err(ReplicationError::Refused(why));
    }
    let slot = store.peer_slot(&hello.node)?;
    let cfgq = store.config();
    let welcome = Message::Welcome(Welcome {
        version: protocol::PROTOCOL_VERSION,
        node: cfg.node.clone(),
        queue_id: store.queue_id(),
        segment_size: geo.size(),
        capacity: cfgq.capacity,
        durability: cfgq.durability as u8,
        start,
        epoch: store.epoch(),
    });
    send(&mut wr, &mut codec, &welcome).await?;
    tracing::info!(peer = %hello.node, start, "secondary connected");
    let _link = LinkState::connected(&store, slot);

    // Acks come back on the read half, handled concurrently.
    let acks = {
        let store = store.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            loop {
                match reader.next(cfg.timeout, "ack").await? {
                    Message::Ack { position } => {
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
    let mut buf = BytesMut::with_capacity(cfg.batch_bytes + 64);
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
            tokio::select! {
                r = wr.write_all(&buf) => r?,
                r = &mut acks => return ack_end(r),
            }
            buf.clear();
            continue;
        }
        let p = pos;
        let s2 = store.clone();
        tokio::select! {
            _ = s2.ready_async(|| store.frame_ready(p, None)) => {}
            _ = tokio::time::sleep(cfg.heartbeat) => {
                let hb = Message::Heartbeat(Heartbeat {
                    tail: store.tail_position(),
                    committed: store.committed_position(),
                    sent_unix_ns: unix_ns(),
                });
                send(&mut wr, &mut codec, &hb).await?;
            }
            r = &mut acks => return ack_end(r),
        }
    }
}

fn ack_end(
    r: Result<Result<(), ReplicationError>, tokio::task::JoinError>,
) -> Result<(), ReplicationError> {
    match r {
        Ok(r) => r,
        Err(e) => Err(ReplicationError::Refused(format!("ack reader failed: {e}"))),
    }
}

/// Keeps a peer slot's link state `connected` for as long as the session
/// runs, whichever way it ends.
struct LinkState<'a> {
    store: &'a Store,
    slot: usize,
}

impl<'a> LinkState<'a> {
    fn connected(store: &'a Store, slot: usize) -> Self {
        store.set_peer_link(slot, true);
        LinkState { store, slot }
    }
}

impl Drop for LinkState<'_> {
    fn drop(&mut self) {
        self.store.set_peer_link(self.slot, false);
    }
}
