//! One listening port for many queues: the primary reads the secondary's
//! `Hello`, looks the named queue up and serves it; and the observable state
//! of a following secondary (used by the daemon's readiness and metrics).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::replication::conn::{send, unix_ns, Reader};
use crate::replication::error::ReplicationError;
use crate::replication::primary::{read_hello, serve_session, PrimaryConfig};
use crate::replication::protocol::{self, Codec, Message};
use crate::store::Store;

/// How long a fresh connection may stay silent before its `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one secondary on `stream`, choosing the queue by the name in its
/// `Hello`: `lookup(queue, node)` returns the store and settings of a queue
/// served to that node, or `None` to refuse the session.
pub async fn serve_registry(
    lookup: impl Fn(&str, &str) -> Option<(Store, Arc<PrimaryConfig>)>,
    stream: TcpStream,
) -> Result<(), ReplicationError> {
    let _ = stream.set_nodelay(true);
    serve_registry_with(lookup, |_| Ok(()), stream).await
}

/// Error code of a session refused because the peer's identity (its TLS
/// certificate) does not match the node name its `Hello` claims.
pub const ERROR_IDENTITY: u16 = 5;

/// [`serve_registry`] on any byte stream (plain TCP, TLS, ...), after
/// `authorize(node)` accepted the node name the `Hello` claims: an `Err`
/// is sent to the peer as an `Error` frame (code [`ERROR_IDENTITY`]) and
/// ends the session. With TLS, `authorize` checks the name against the
/// peer's certificate.
pub async fn serve_registry_with<S>(
    lookup: impl Fn(&str, &str) -> Option<(Store, Arc<PrimaryConfig>)>,
    authorize: impl Fn(&str) -> Result<(), String>,
    stream: S,
) -> Result<(), ReplicationError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut codec = Codec::with_max_frame(protocol::DEFAULT_MAX_FRAME);
    let mut reader = Reader::new(rd, Codec::with_max_frame(protocol::HELLO_MAX_FRAME));
    let hello = read_hello(&mut reader, HELLO_TIMEOUT).await?;
    if let Err(why) = authorize(&hello.node) {
        // The wire keeps the message's first 63 characters.
        let m = Message::Error {
            code: ERROR_IDENTITY,
            message: why.clone(),
        };
        let _ = send(&mut wr, &mut codec, &m).await;
        return Err(ReplicationError::Refused(why));
    }
    let Some((store, cfg)) = lookup(&hello.queue, &hello.node) else {
        let why = format!(
            "this node serves no queue named {:?} to {:?}",
            hello.queue, hello.node
        );
        let m = Message::Error {
            code: 2,
            message: why.clone(),
        };
        let _ = send(&mut wr, &mut codec, &m).await;
        return Err(ReplicationError::Refused(why));
    };
    reader.set_max_frame(cfg.max_frame);
    codec = Codec::with_max_frame(cfg.max_frame);
    serve_session(store, cfg, hello, reader, wr, codec).await
}

/// What a following secondary knows about its primary, updated by
/// [`crate::replication::secondary::follow_with_status`].
#[derive(Debug, Default)]
pub struct FollowStatus {
    connected: AtomicBool,
    primary_tail: AtomicU64,
    heartbeat_unix_ns: AtomicU64,
    epoch: AtomicU64,
    sessions: AtomicU64,
}

impl FollowStatus {
    /// A fresh, disconnected status.
    pub fn new() -> Arc<FollowStatus> {
        Arc::new(FollowStatus::default())
    }
    /// True while a session with the primary is established.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
    /// The primary's write position as of its last heartbeat (or welcome).
    pub fn primary_tail(&self) -> u64 {
        self.primary_tail.load(Ordering::Acquire)
    }
    /// Send time (Unix ns, primary's clock) of the last heartbeat; 0 if none.
    pub fn heartbeat_unix_ns(&self) -> u64 {
        self.heartbeat_unix_ns.load(Ordering::Acquire)
    }
    /// The primary's epoch from the last welcome.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
    /// Sessions established so far.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Acquire)
    }
    pub(crate) fn set_connected(&self, c: bool, start: u64, epoch: u32) {
        if c {
            self.sessions.fetch_add(1, Ordering::AcqRel);
            self.primary_tail.fetch_max(start, Ordering::AcqRel);
            self.epoch.store(u64::from(epoch), Ordering::Release);
        }
        self.connected.store(c, Ordering::Release);
    }
    /// Marks the session as ended.
    pub fn disconnected(&self) {
        self.connected.store(false, Ordering::Release);
    }
    pub(crate) fn heartbeat(&self, tail: u64, sent_unix_ns: u64) {
        self.primary_tail.store(tail, Ordering::Release);
        self.heartbeat_unix_ns
            .store(sent_unix_ns.max(1).min(unix_ns().max(1)), Ordering::Release);
    }
    pub(crate) fn progressed(&self, pos: u64) {
        self.primary_tail.fetch_max(pos, Ordering::AcqRel);
    }
}
