//! The secondary side: follows a primary's queue over TCP, writing its
//! records byte-identically, reconnecting with jittered backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::replication::conn::{send, unix_ns, Reader};
use crate::replication::dispatch::FollowStatus;
use crate::replication::error::ReplicationError;
use crate::replication::protocol::{self, Codec, Heartbeat, Hello, Message};
use crate::store::{Durability, Store, StoreOptions};

/// Settings of the secondary side.
#[derive(Debug, Clone)]
pub struct SecondaryConfig {
    /// This node's name.
    pub node: String,
    /// Name of the followed queue.
    pub queue: String,
    /// Directory of the local replica.
    pub dir: PathBuf,
    /// Address of the primary (`host:port`).
    pub primary: String,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Silence after which the primary is considered gone.
    pub timeout: Duration,
    /// First reconnection delay; doubles up to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// Protocol version offered in the `Hello`:
    /// [`protocol::PROTOCOL_VERSION`], or 2 towards an older primary (the
    /// follower loop lowers it when a primary refuses version 3, and raises
    /// it again after that primary's session ends).
    pub version: u16,
}

impl SecondaryConfig {
    /// Defaults for `node` following `queue` from `primary` into `dir`.
    pub fn new(node: &str, queue: &str, dir: impl Into<PathBuf>, primary: &str) -> Self {
        SecondaryConfig {
            node: node.into(),
            queue: queue.into(),
            dir: dir.into(),
            primary: primary.into(),
            max_frame: protocol::DEFAULT_MAX_FRAME,
            timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            version: protocol::PROTOCOL_VERSION,
        }
    }
}

/// Follows the primary forever: one session after another, with jittered
/// exponential backoff between failed attempts.
pub async fn follow(cfg: SecondaryConfig) {
    follow_with_status(cfg, None).await
}

/// [`follow`], publishing the session's state to `status`; the shared
/// [`follower::follow_loop`](crate::replication::follower::follow_loop) on
/// plain TCP to `cfg.primary`.
pub async fn follow_with_status(cfg: SecondaryConfig, status: Option<Arc<FollowStatus>>) {
    let store = Store::open(&cfg.dir, &StoreOptions::open()).ok();
    if let Some(s) = &store {
        s.set_read_only(true);
        s.set_role(crate::store::Role::Secondary);
    }
    let primary = cfg.primary.clone();
    crate::replication::follower::follow_loop(
        cfg,
        status.unwrap_or_default(),
        store,
        crate::replication::follower::Quiet::No,
        move || Some(primary.clone()),
        crate::replication::follower::PlainTcp,
        |_| {},
    )
    .await
}

/// One connection to the primary: handshake, then records until it fails.
pub async fn session(
    cfg: &SecondaryConfig,
    store: &mut Option<Store>,
) -> Result<(), ReplicationError> {
    session_with_status(cfg, store, None).await
}

/// [`session`], publishing its state to `status`.
pub async fn session_with_status(
    cfg: &SecondaryConfig,
    store: &mut Option<Store>,
    status: Option<&FollowStatus>,
) -> Result<(), ReplicationError> {
    let stream = tokio::time::timeout(cfg.timeout, tokio::net::TcpStream::connect(&cfg.primary))
        .await
        .map_err(|_| ReplicationError::Timeout("connection"))??;
    let _ = stream.set_nodelay(true);
    session_on(cfg, store, status, stream).await
}

/// [`session_with_status`] on a connection the caller established (plain
/// TCP, TLS, ...) to `cfg.primary`: the handshake, then records until it
/// fails.
pub async fn session_on<S>(
    cfg: &SecondaryConfig,
    store: &mut Option<Store>,
    status: Option<&FollowStatus>,
    stream: S,
) -> Result<(), ReplicationError>
where
    S: AsyncRead + AsyncWrite,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut codec = Codec::with_max_frame(cfg.max_frame);
    let mut reader = Reader::new(rd, codec);
    let hello = Hello {
        version: cfg.version,
        node: cfg.node.clone(),
        queue: cfg.queue.clone(),
        queue_id: store.as_ref().map_or(0, Store::queue_id),
        segment_size: store.as_ref().map_or(0, |s| s.geometry().size()),
        position: store.as_ref().map_or(0, Store::tail_position),
        epoch: store.as_ref().map_or(0, Store::epoch),
        history: match store {
            Some(s) => s.epoch_history()?,
            None => Vec::new(),
        },
    };
    send(&mut wr, &mut codec, &Message::Hello(hello)).await?;
    let w = match reader.next(cfg.timeout, "welcome").await? {
        Message::Welcome(w) => w,
        Message::Error { code: 1, message } => {
            return Err(ReplicationError::Version {
                offered: cfg.version,
                message,
            })
        }
        Message::Error { code, message } => {
            return Err(ReplicationError::Refused(format!(
                "primary refused ({code}): {message}"
            )))
        }
        other => {
            return Err(ReplicationError::Refused(format!(
                "expected welcome, got {other:?}"
            )))
        }
    };
    let s = match store {
        Some(s) => s.clone(),
        None => {
            let durability = match w.durability {
                0 => Durability::None,
                2 => Durability::Always,
                _ => Durability::Batch,
            };
            let s = Store::open(
                &cfg.dir,
                &StoreOptions::create()
                    .queue_id(w.queue_id)
                    .segment_size(w.segment_size)
                    .capacity(w.capacity)
                    .durability(durability),
            )?;
            s.set_read_only(true);
            s.set_role(crate::store::Role::Secondary);
            *store = Some(s.clone());
            s
        }
    };
    if s.queue_id() != w.queue_id || s.geometry().size() != w.segment_size {
        return Err(ReplicationError::Refused(
            "the primary serves another queue".into(),
        ));
    }
    // The log's epoch is its last record's, learned from the records
    // themselves (see `Store::record_replicated_epochs`), not the leader's.
    let tail = s.tail_position();
    if w.start < tail {
        // The leader's history parts from ours at `start`: cut back to it,
        // keeping the cut records in quarantine.
        s.truncate_suffix(w.start)?;
    } else if w.start > tail {
        s.rebase_empty(w.start)?;
    }
    tracing::info!(primary = %w.node, start = w.start, "following primary");
    if let Some(st) = status {
        st.set_connected(true, w.start, w.epoch);
    }
    let durable = s.config().durability != Durability::None;
    // Entries of the primary's group table whose cursors are beyond this
    // log's tail: applied once the records they passed have arrived.
    let mut pending: Vec<crate::store::GroupState> = Vec::new();
    loop {
        match reader.next(cfg.timeout, "records or heartbeat").await? {
            Message::Records { position, bytes } => {
                // Validated in full before anything is written.
                let mut next = s.append_replicated(position, &bytes)?;
                // Take whatever else already arrived before acknowledging.
                while let Some(m) = reader.try_next()? {
                    match m {
                        Message::Records { position, bytes } => {
                            next = s.append_replicated(position, &bytes)?;
                        }
                        Message::Heartbeat(h) => retain_below(&s, h.first),
                        Message::Groups(g) => pending = g,
                        other => {
                            return Err(ReplicationError::Refused(format!("unexpected {other:?}")))
                        }
                    }
                }
                if durable {
                    s.flush()?;
                }
                if !pending.is_empty() {
                    pending = s.apply_replicated_groups(&pending);
                }
                if let Some(st) = status {
                    st.progressed(next);
                }
                send(&mut wr, &mut codec, &Message::Ack { position: next }).await?;
            }
            Message::Heartbeat(h) => {
                if let Some(st) = status {
                    st.heartbeat(h.tail, h.sent_unix_ns);
                }
                retain_below(&s, h.first);
                let hb = Message::Heartbeat(Heartbeat {
                    tail: s.tail_position(),
                    committed: s.tail_position(),
                    sent_unix_ns: unix_ns(),
                    first: 0,
                });
                send(&mut wr, &mut codec, &hb).await?;
                send(
                    &mut wr,
                    &mut codec,
                    &Message::Ack {
                        position: s.tail_position(),
                    },
                )
                .await?;
            }
            Message::Groups(g) => pending = s.apply_replicated_groups(&g),
            Message::Error { code, message } => {
                return Err(ReplicationError::Refused(format!("{code}: {message}")))
            }
            other => return Err(ReplicationError::Refused(format!("unexpected {other:?}"))),
        }
    }
}

/// Deletes the replica's segments below the primary's low watermark that
/// its own readers have passed too (see `Store::retain_replica`).
fn retain_below(s: &Store, primary_first: u64) {
    if primary_first == 0 {
        return;
    }
    if let Err(e) = s.retain_replica(primary_first) {
        tracing::warn!(queue = %s.dir().display(), "replica retention failed: {e}");
    }
}
