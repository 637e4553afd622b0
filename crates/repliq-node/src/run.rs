//! The daemon's main loop: the primary's listener or the secondaries'
//! followers, the HTTP server, and graceful shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use repliq::replication::dispatch::{serve_registry_with, FollowStatus, HELLO_TIMEOUT};
use repliq::replication::follower;
use repliq::replication::{secondary, ReplicationError, SecondaryConfig};
use repliq::store::{Store, StoreOptions};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{Config, Mode, TlsMode};
use crate::discovery;
use crate::http;
use crate::refusals::{worth_logging, Reason};
use crate::state::{QueueState, Shared};
use crate::tls::{certificate_names, is_tls_hello, sans, Alpn, Dialed};

/// Runs the node until `stop` completes: the HTTP server, and the
/// replication listener (primary) or one follower per queue (secondary).
/// Then flushes every open queue.
pub async fn run_until(cfg: Config, stop: impl Future<Output = ()>) -> Result<(), String> {
    let primary = cfg.is_primary();
    let shared = Arc::new(Shared::open(cfg.clone())?);
    let has_peers = match &cfg.discovery {
        crate::config::Discovery::Static { peers } => {
            peers.iter().any(|p| p.name != cfg.node_name) || !primary
        }
        _ => true,
    };
    match cfg.tls.mode {
        TlsMode::Disabled if has_peers => tracing::warn!(
            "tls.mode is disabled: replication and the catalog on {} are plain TCP, \
             unauthenticated and unencrypted (use only on loopback or for development)",
            cfg.listen
        ),
        TlsMode::Disabled => {}
        TlsMode::Permissive => tracing::warn!(
            "tls.mode is permissive: plain TCP peers are still accepted (for a rolling upgrade; \
             set required once every node dials with TLS)"
        ),
        TlsMode::Required => tracing::info!("mutual TLS required on {}", cfg.listen),
    }
    if let Some(c) = cfg.cluster.clone() {
        return run_cluster(cfg, c, shared, stop).await;
    }
    let names: Vec<String> = shared.queues().into_iter().map(|(n, _)| n).collect();
    tracing::info!(
        node = %cfg.node_name,
        role = if primary { "primary" } else { "secondary" },
        mode = ?cfg.mode,
        queues = ?names,
        "repliq daemon starting"
    );
    if cfg.mode == Mode::Sync {
        tracing::info!(
            min_acks = cfg.min_acks,
            "sync mode: the replicated watermark advances with min_acks acknowledgements"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| format!("http.listen {}: {e}", cfg.http_listen))?;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(http::serve(
        http_listener,
        shared.clone(),
        stop_rx.clone(),
    )));
    tasks.extend(shared.tls.clone().map(|t| tokio::spawn(t.watch())));

    if primary {
        let l = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| format!("replication.listen {}: {e}", cfg.listen))?;
        tracing::info!(addr = %cfg.listen, "serving replication");
        tasks.push(tokio::spawn(accept_loop(l, shared.clone())));
        tasks.push(tokio::spawn(crate::peer_expiry::run(shared.clone())));
    } else {
        let candidates = discovery::start(&cfg);
        for (name, q) in shared.queues() {
            tasks.push(tokio::spawn(follow_queue(
                shared.clone(),
                name,
                q,
                candidates.clone(),
            )));
        }
    }

    stop.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    stop_tasks(tasks, &shared).await;
    Ok(())
}

/// Cancels `tasks` (the HTTP server stops on the watch already), waits for
/// them, then flushes what the queues hold before the process exits.
async fn stop_tasks(tasks: Vec<tokio::task::JoinHandle<()>>, shared: &Shared) {
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    for (n, q) in shared.queues() {
        if let Some(s) = q.store.lock().ok().and_then(|g| g.clone()) {
            if let Err(e) = s.flush() {
                tracing::warn!(queue = %n, "flush at shutdown failed: {e}");
            }
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Cluster mode: the catalog and the replication sessions share the
/// replication port; the cluster's drivers decide each queue's role.
async fn run_cluster(
    cfg: Config,
    c: crate::config::ClusterSettings,
    shared: Arc<Shared>,
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    tracing::info!(
        node = %cfg.node_name,
        members = ?c.members.iter().map(|p| &p.name).collect::<Vec<_>>(),
        factor = c.factor,
        failover_timeout_ms = c.failover_timeout_ms,
        mode = ?cfg.mode,
        "repliq daemon starting in cluster mode"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| format!("http.listen {}: {e}", cfg.http_listen))?;
    let l = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("replication.listen {}: {e}", cfg.listen))?;
    // HTTP first: with discovered members, the node must be Ready (its
    // `/readyz`) to be found, and the catalog waits for discovery.
    let mut tasks = vec![
        tokio::spawn(http::serve(http_listener, shared.clone(), stop_rx.clone())),
        tokio::spawn(crate::peer_expiry::run(shared.clone())),
    ];
    tasks.extend(shared.tls.clone().map(|t| tokio::spawn(t.watch())));
    // Accept at once: a peer's connection made while this node's catalog
    // starts is closed cleanly after its handshake rather than left in the
    // backlog until the peer gives up (a fresh catalog asks its peers for
    // its former incarnation while they may be starting too).
    let (catalog_tx, catalog_rx) = watch::channel(None);
    tasks.push(tokio::spawn(accept_loop_with(
        l,
        shared.clone(),
        Slot::Cluster(catalog_rx),
    )));
    tokio::pin!(stop);
    let cluster = tokio::select! {
        c = crate::cluster::Cluster::start(shared.clone(), &c) => c?,
        _ = &mut stop => {
            tracing::info!("shutting down before the cluster started");
            let _ = stop_tx.send(true);
            stop_tasks(tasks, &shared).await;
            return Ok(());
        }
    };
    shared.set_cluster(cluster.catalog.clone());
    let _ = catalog_tx.send(Some(cluster.catalog.server_context()));
    stop.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    cluster.stop().await;
    stop_tasks(tasks, &shared).await;
    Ok(())
}

async fn accept_loop(l: tokio::net::TcpListener, shared: Arc<Shared>) {
    accept_loop_with(l, shared, Slot::Standalone).await
}

/// What serves catalog connections on the replication port.
#[derive(Clone)]
enum Slot {
    /// Not in cluster mode: no catalog.
    Standalone,
    /// Cluster mode: `None` until the catalog has started. Until then every
    /// connection is closed once accepted (after its TLS handshake).
    Cluster(watch::Receiver<Option<Arc<repliq_catalog::ServerContext>>>),
}

/// Accepts replication sessions and, in cluster mode, the catalog's own
/// connections (they start with `b"RQCL"`; a replication session starts
/// with a frame length, at most 16 MiB, so the two never look alike).
async fn accept_loop_with(l: tokio::net::TcpListener, shared: Arc<Shared>, slot: Slot) {
    let permits = Arc::new(tokio::sync::Semaphore::new(shared.cfg.max_connections));
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A bounded number of connections at once: the rest are closed
        // as they arrive (logged for the first and every 1000th).
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let refused = shared.refusals.note(Reason::MaxConnections);
            if refused == 1 || refused % 1000 == 0 {
                tracing::warn!(%peer, refused, max = shared.cfg.max_connections, "replication.max_connections reached: connection closed");
            }
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let catalog = match &slot {
            Slot::Standalone => None,
            Slot::Cluster(rx) => match rx.borrow().clone() {
                Some(ctx) => Some(ctx),
                None => {
                    tokio::spawn(close_while_starting(stream, peer, shared, permit));
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, shared, catalog).await;
        });
    }
}

/// A connection accepted before the catalog started: its TLS handshake (when
/// configured) is completed, then it is closed, so the peer sees a clean
/// close at once (and no handshake is left half made). A failed handshake is
/// a refusal like any other (counted, and logged).
async fn close_while_starting(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    tracing::debug!(%peer, "connection closed: the catalog is starting");
    let Some(tls) = shared.tls.clone() else {
        return;
    };
    let mut head = [0u8; 3];
    let peeked = tokio::time::timeout(HELLO_TIMEOUT, peek_exact(&stream, &mut head)).await;
    if matches!(peeked, Ok(Ok(()))) && is_tls_hello(&head) {
        if let Some((mut s, _)) = handshake(&tls, stream, peer, &shared).await {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
        }
    }
}

/// The server side of the TLS handshake of an accepted connection, within
/// [`HELLO_TIMEOUT`]. A failure or a timeout is counted as a refusal (and
/// logged while that stays readable); `None` then.
async fn handshake(
    tls: &crate::tls::Tls,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: &Shared,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Alpn)> {
    match tokio::time::timeout(HELLO_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(x)) => Some(x),
        Ok(Err(e)) => {
            let n = shared.refusals.note(Reason::TlsHandshake);
            if worth_logging(n) {
                tracing::warn!(%peer, refused = n, "TLS handshake refused: {e}");
            }
            None
        }
        Err(_) => {
            let n = shared.refusals.note(Reason::TlsTimeout);
            if worth_logging(n) {
                tracing::warn!(%peer, refused = n, "TLS handshake timed out");
            }
            None
        }
    }
}

/// Serves one accepted connection: TLS (when configured) or plain TCP,
/// then the catalog or a replication session.
async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    catalog: Option<Arc<repliq_catalog::ServerContext>>,
) {
    let _ = stream.set_nodelay(true);
    if let Some(tls) = shared.tls.clone() {
        let mut head = [0u8; 3];
        let peeked = tokio::time::timeout(HELLO_TIMEOUT, peek_exact(&stream, &mut head)).await;
        if !matches!(peeked, Ok(Ok(()))) {
            return;
        }
        if is_tls_hello(&head) {
            let Some((s, alpn)) = handshake(&tls, stream, peer, &shared).await else {
                return;
            };
            let certs: Vec<CertificateDer<'static>> = s
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            match alpn {
                Alpn::Catalog => {
                    let Some(ctx) = catalog else {
                        tracing::debug!(%peer, "catalog connection on a node outside cluster mode");
                        return;
                    };
                    let mut s = s;
                    let mut magic = [0u8; 4];
                    let read = tokio::time::timeout(
                        HELLO_TIMEOUT,
                        tokio::io::AsyncReadExt::read_exact(&mut s, &mut magic),
                    )
                    .await;
                    if !matches!(read, Ok(Ok(_))) || magic != repliq_catalog::wire::MAGIC {
                        tracing::debug!(%peer, "not a catalog connection");
                        return;
                    }
                    let check: repliq_catalog::PeerCheck =
                        Arc::new(move |name: &str| certificate_names(&certs, name));
                    match repliq_catalog::serve_connection_checked(s, ctx, Some(check)).await {
                        Err(e @ repliq_catalog::WireError::Identity(_)) => {
                            tracing::warn!(%peer, "catalog connection refused: {e}")
                        }
                        Err(e) => tracing::debug!(%peer, "catalog connection ended: {e}"),
                        Ok(()) => {}
                    }
                }
                Alpn::Replication => serve_replication(&shared, peer, s, Some(certs)).await,
            }
            return;
        }
        if tls.mode() == TlsMode::Required {
            let n = shared.refusals.note(Reason::PlainTcp);
            if worth_logging(n) {
                tracing::warn!(%peer, refused = n, "plain TCP connection refused: tls.mode is required");
            }
            return;
        }
    }
    if let Some(ctx) = catalog {
        let mut magic = [0u8; 4];
        let peeked = tokio::time::timeout(HELLO_TIMEOUT, peek_exact(&stream, &mut magic)).await;
        if matches!(peeked, Ok(Ok(()))) && magic == repliq_catalog::wire::MAGIC {
            let mut stream = stream;
            let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut magic).await;
            if let Err(e) = repliq_catalog::serve_connection(stream, ctx).await {
                tracing::debug!(%peer, "catalog connection ended: {e}");
            }
            return;
        }
    }
    serve_replication(&shared, peer, stream, None).await
}

/// A replication session on `stream`; with TLS (`certs`, the peer's
/// chain), the `Hello`'s node name must be named by the certificate.
async fn serve_replication<S>(
    shared: &Arc<Shared>,
    peer: std::net::SocketAddr,
    stream: S,
    certs: Option<Vec<CertificateDer<'static>>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    shared.connected.fetch_add(1, Ordering::AcqRel);
    let sh = shared.clone();
    let authorize = move |node: &str| match &certs {
        Some(c) if !certificate_names(c, node) => Err(format!(
            "certificate of {} does not name {node:?}",
            sans(c).join(",")
        )),
        _ => Ok(()),
    };
    let r = serve_registry_with(move |q, node| sh.serve_to(q, node), authorize, stream).await;
    shared.connected.fetch_sub(1, Ordering::AcqRel);
    if let Err(e) = r {
        tracing::warn!(%peer, "replication session ended: {e}");
    }
}

/// One replication session with the primary or leader at `sc.primary`:
/// over mutual TLS when configured, the server's certificate naming
/// `leader` when given.
pub(crate) async fn follow_session(
    shared: &Shared,
    sc: &SecondaryConfig,
    store: &mut Option<Store>,
    status: &FollowStatus,
    leader: Option<&str>,
) -> Result<(), ReplicationError> {
    match &shared.tls {
        None => secondary::session_with_status(sc, store, Some(status)).await,
        Some(tls) => {
            let s = tokio::time::timeout(
                sc.timeout,
                tls.dial_for_mode(&sc.primary, leader, Alpn::Replication),
            )
            .await
            .map_err(|_| ReplicationError::Timeout("connection"))??;
            match s {
                Dialed::Tls(s) => secondary::session_on(sc, store, Some(status), s).await,
                Dialed::Plain(s) => secondary::session_on(sc, store, Some(status), s).await,
            }
        }
    }
}

/// Follows one queue from whichever candidate answers as the primary.
async fn follow_queue(
    shared: Arc<Shared>,
    name: String,
    q: Arc<QueueState>,
    candidates: discovery::Candidates,
) {
    let Some(status) = q.status.clone() else {
        return;
    };
    let mut sc = SecondaryConfig::new(&shared.cfg.node_name, &name, &q.dir, "");
    sc.timeout = shared.cfg.timeout();
    sc.backoff_min = Duration::from_millis(50);
    sc.backoff_max = Duration::from_secs(2);
    // Opened here first, so that recovery runs on a replica left by a
    // killed process before any other handle exists.
    let store = Store::open(&q.dir, &StoreOptions::open()).ok();
    if let Some(s) = &store {
        s.set_read_only(true);
        s.set_role(repliq::store::Role::Secondary);
        if let Ok(mut g) = q.store.lock() {
            *g = Some(s.clone());
        }
    }
    q.may_open.store(true, Ordering::Release);
    let _ = q.store();
    let mut next = 0usize;
    let leader = shared.cfg.primary.clone();
    follower::follow_loop(
        sc,
        status,
        store,
        follower::Quiet::No,
        // Rotate through the candidates discovery finds.
        move || {
            let list = candidates.borrow().clone();
            let t = list.get(next % list.len().max(1)).cloned();
            next = next.wrapping_add(1);
            t
        },
        NodeSession { shared, leader },
        move |s| share_store(&q, s),
    )
    .await
}

/// The daemon's sessions: over mutual TLS when configured, the server's
/// certificate naming `leader` when known.
pub(crate) struct NodeSession {
    pub(crate) shared: Arc<Shared>,
    pub(crate) leader: Option<String>,
}

impl follower::Session for NodeSession {
    fn run<'a>(
        &'a mut self,
        cfg: &'a SecondaryConfig,
        store: &'a mut Option<Store>,
        status: &'a FollowStatus,
    ) -> impl Future<Output = Result<(), ReplicationError>> + Send + 'a {
        follow_session(&self.shared, cfg, store, status, self.leader.as_deref())
    }
}

/// Lends the replica a follower session opened or created to the rest of
/// the node (HTTP, metrics), unless it already holds one.
pub(crate) fn share_store(q: &QueueState, s: &Store) {
    if let Ok(mut g) = q.store.lock() {
        g.get_or_insert_with(|| s.clone());
    }
}

/// Waits until `buf.len()` bytes can be peeked from `stream` (or it closes).
async fn peek_exact(stream: &tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    loop {
        let n = stream.peek(buf).await?;
        if n == buf.len() {
            return Ok(());
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        stream.readable().await?;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::write_node;
    use crate::tls::{generate_ca, Tls};

    /// A node with TLS required, its catalog not started yet: connections
    /// are closed after their handshake, and a failed handshake is counted
    /// as a refusal as it is once the node has started.
    #[tokio::test]
    async fn a_handshake_refused_while_the_catalog_starts_is_counted_and_a_good_one_is_closed_cleanly(
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = generate_ca("t").expect("ca");
        let yaml = format!(
            "node:\n  name: a\nqueue:\n  persistence:\n    path: {}\n",
            dir.path().join("data").display()
        );
        let mut cfg = crate::config::parse(&yaml, "test").expect("config");
        cfg.tls = write_node(dir.path(), "a", &ca);
        let shared = Arc::new(Shared::open(cfg).expect("shared"));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let permits = Arc::new(tokio::sync::Semaphore::new(8));
        let srv = shared.clone();
        tokio::spawn(async move {
            while let Ok((c, peer)) = l.accept().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                tokio::spawn(close_while_starting(c, peer, srv.clone(), permit));
            }
        });
        let handshake_refusals = || {
            shared
                .refusals
                .counts()
                .into_iter()
                .find(|(l, _)| *l == "tls_handshake")
                .map(|(_, n)| n)
        };
        // A certificate from another CA: the server refuses the handshake.
        let stranger = Tls::from_settings(&write_node(
            dir.path(),
            "c",
            &generate_ca("other").expect("ca"),
        ))
        .expect("load")
        .expect("enabled");
        if let Ok(mut s) = stranger.dial(&addr, None, Alpn::Replication).await {
            // TLS 1.3: the client may finish before the server's verdict.
            let mut b = [0u8; 1];
            let r = tokio::io::AsyncReadExt::read(&mut s, &mut b).await;
            assert!(!matches!(r, Ok(1)), "a stranger got a byte: {r:?}");
        }
        let t0 = std::time::Instant::now();
        while handshake_refusals() != Some(1) && t0.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            handshake_refusals(),
            Some(1),
            "the refused handshake is counted"
        );
        // A member's certificate: the handshake completes, then a clean close.
        let member = Tls::from_settings(&write_node(dir.path(), "b", &ca))
            .expect("load")
            .expect("enabled");
        let mut s = member
            .dial(&addr, Some("a"), Alpn::Catalog)
            .await
            .expect("a member's handshake completes");
        let mut b = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut b)
            .await
            .expect("a clean close, not an error");
        assert_eq!(n, 0, "closed at once while the catalog starts");
        assert_eq!(
            handshake_refusals(),
            Some(1),
            "a good handshake is no refusal"
        );
    }
}
