//! Replication run inside the application process, started by
//! [`crate::ReplicatedQueue::with_replication`] on a [`crate::RepliqQueue`].
//!
//! The process finds its role by comparing its node name (an explicit
//! override, else `NODE_NAME`, else the host name) with the configured
//! nodes: the primary listens and serves its queue; a secondary makes its
//! queue read-only and follows the primary; a process matching no node acts
//! as the primary locally and probes the secondaries in the background.
//!
//! Every task runs on the caller's tokio runtime if there is one, otherwise on
//! one small runtime thread shared by all queues; none keeps the process
//! alive, and all of a queue's tasks stop when its [`Engine`] is dropped.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::{AbortHandle, JoinSet};

use crate::replication::dispatch::FollowStatus;
use crate::replication::{dispatch, secondary, PrimaryConfig, SecondaryConfig};
use crate::store::Store;

/// Port used when a node string has none.
pub const DEFAULT_PORT: u16 = 31337;

/// What this process does for a replicated queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This node is the configured primary: it listens and serves.
    Primary,
    /// This node is one of the secondaries: read-only, following the primary.
    Secondary,
    /// This node matches no configured name: it behaves as the primary
    /// (serving if it can bind the primary's port) and probes the secondaries.
    Unmatched,
}

/// What the primary knows about one configured secondary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The secondary as configured.
    pub node: String,
    /// Whether its name resolved to an address at the last probe; `None`
    /// before the first probe.
    pub reachable: Option<bool>,
    /// Position it has acknowledged (from its replication-peer slot), if it
    /// ever connected.
    pub acked: Option<u64>,
    /// True while it has a replication session with this primary (from its
    /// peer slot, which `repliq stat` and the daemon's metrics also read).
    pub connected: bool,
    /// Why the last probe failed.
    pub last_error: Option<String>,
}

/// A snapshot of a queue's in-process replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// This process's node name.
    pub node: String,
    /// Its role.
    pub role: Role,
    /// Address the primary listens on, once bound.
    pub listening: Option<String>,
    /// Why binding the primary's port failed (it is retried).
    pub listen_error: Option<String>,
    /// On a secondary: whether a session with the primary is established.
    pub connected_to_primary: Option<bool>,
    /// The replicated watermark of the local queue.
    pub replicated: u64,
    /// On a primary: the configured secondaries.
    pub secondaries: Vec<PeerStatus>,
}

/// Settings for [`Engine::start`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's name.
    pub node: String,
    /// The primary as configured (`host[:port]`).
    pub primary: String,
    /// The secondaries as configured.
    pub secondaries: Vec<String>,
    /// Acknowledgements that advance the replicated watermark.
    pub min_acks: usize,
    /// Name of the queue (its directory's file name).
    pub queue: String,
    /// The queue's directory.
    pub dir: PathBuf,
}

#[derive(Debug, Default)]
struct Shared {
    listening: Mutex<Option<String>>,
    listen_error: Mutex<Option<String>>,
    peers: Mutex<Vec<PeerStatus>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running replication of one queue; stops its tasks when dropped.
#[derive(Debug)]
pub struct Engine {
    node: String,
    role: Role,
    store: Store,
    shared: Arc<Shared>,
    follow: Option<Arc<FollowStatus>>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Engine {
    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// A snapshot of the replication state.
    pub fn status(&self) -> ReplicationStatus {
        let mut secondaries = lock(&self.shared.peers).clone();
        let links = self.store.peer_links();
        for p in &mut secondaries {
            let link = links.iter().find(|l| l.node == p.node);
            p.acked = link.map(|l| l.acked);
            p.connected = link.is_some_and(|l| l.connected);
        }
        ReplicationStatus {
            node: self.node.clone(),
            role: self.role,
            listening: lock(&self.shared.listening).clone(),
            listen_error: lock(&self.shared.listen_error).clone(),
            connected_to_primary: self.follow.as_ref().map(|f| f.connected()),
            replicated: crate::replication::sync::replicated(&self.store),
            secondaries,
        }
    }

    /// Decides the role of this node and starts its tasks.
    ///
    /// A secondary's `store` is made read-only to applications.
    pub fn start(store: &Store, cfg: EngineConfig) -> std::io::Result<Engine> {
        let handle = runtime()?;
        let role = if same_node(&cfg.node, &cfg.primary) {
            Role::Primary
        } else if cfg.secondaries.iter().any(|s| same_node(&cfg.node, s)) {
            Role::Secondary
        } else {
            Role::Unmatched
        };
        let shared = Arc::new(Shared::default());
        let mut tasks = Vec::new();
        let mut follow = None;
        match role {
            Role::Secondary => {
                store.set_read_only(true);
                store.set_role(crate::store::Role::Secondary);
                let mut scfg =
                    SecondaryConfig::new(&cfg.node, &cfg.queue, &cfg.dir, &with_port(&cfg.primary));
                scfg.backoff_max = Duration::from_secs(1);
                let st = FollowStatus::new();
                follow = Some(st.clone());
                tracing::info!(node = %cfg.node, primary = %cfg.primary, queue = %cfg.queue,
                    "this node is a secondary: the queue is read-only and follows the primary");
                tasks.push(
                    handle
                        .spawn(secondary::follow_with_status(scfg, Some(st)))
                        .abort_handle(),
                );
            }
            Role::Primary | Role::Unmatched => {
                store.set_read_only(false);
                store.set_lease_until(0);
                store.set_role(crate::store::Role::Primary);
                if role == Role::Unmatched {
                    tracing::warn!(node = %cfg.node, primary = %cfg.primary, queue = %cfg.queue,
                        "this node matches no configured node name; acting as the primary");
                } else {
                    tracing::info!(node = %cfg.node, queue = %cfg.queue, "this node is the primary");
                }
                let port = split_host_port(&cfg.primary).1.unwrap_or(DEFAULT_PORT);
                let mut pcfg = PrimaryConfig::new(&cfg.node, &cfg.queue);
                pcfg.min_acks = cfg.min_acks;
                let listen = listen_loop(
                    store.clone(),
                    Arc::new(pcfg),
                    format!("0.0.0.0:{port}"),
                    shared.clone(),
                );
                tasks.push(handle.spawn(listen).abort_handle());
                *lock(&shared.peers) = cfg
                    .secondaries
                    .iter()
                    .map(|n| PeerStatus {
                        node: n.clone(),
                        reachable: None,
                        acked: None,
                        connected: false,
                        last_error: None,
                    })
                    .collect();
                if !cfg.secondaries.is_empty() {
                    let probe = probe_loop(cfg.secondaries.clone(), shared.clone());
                    tasks.push(handle.spawn(probe).abort_handle());
                }
            }
        }
        Ok(Engine {
            node: cfg.node,
            role,
            store: store.clone(),
            shared,
            follow,
            tasks,
        })
    }
}

/// This process's node name: `NODE_NAME` if set and non-empty, else the
/// host name, else `"localhost"`.
pub fn own_node_name() -> String {
    if let Ok(n) = std::env::var("NODE_NAME") {
        let n = n.trim();
        if !n.is_empty() {
            return n.to_string();
        }
    }
    for p in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = std::fs::read_to_string(p) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".into()
}

/// Splits `host:port` (or `[v6]:port`); the port is `None` if absent.
pub fn split_host_port(node: &str) -> (&str, Option<u16>) {
    if let Some(rest) = node.strip_prefix('[') {
        if let Some((h, tail)) = rest.split_once(']') {
            return (h, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match node.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (node, None),
        },
        _ => (node, None),
    }
}

/// True if the node string `node` names this node `own`: equal strings, or
/// `node`'s host part equals `own` (case-insensitively).
pub fn same_node(own: &str, node: &str) -> bool {
    own.eq_ignore_ascii_case(node) || split_host_port(node).0.eq_ignore_ascii_case(own)
}

fn with_port(node: &str) -> String {
    match split_host_port(node) {
        (_, Some(_)) => node.to_string(),
        (h, None) if h.contains(':') => format!("[{h}]:{DEFAULT_PORT}"),
        (h, None) => format!("{h}:{DEFAULT_PORT}"),
    }
}

/// The current tokio runtime, or a shared background one.
fn runtime() -> std::io::Result<Handle> {
    if let Ok(h) = Handle::try_current() {
        return Ok(h);
    }
    static RT: Mutex<Option<Handle>> = Mutex::new(None);
    let mut g = lock(&RT);
    if let Some(h) = &*g {
        return Ok(h.clone());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let h = rt.handle().clone();
    std::thread::Builder::new()
        .name("repliq-replication".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    *g = Some(h.clone());
    Ok(h)
}

async fn listen_loop(store: Store, cfg: Arc<PrimaryConfig>, addr: String, shared: Arc<Shared>) {
    let mut delay = Duration::from_millis(200);
    let mut warned = false;
    let listener = loop {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => break l,
            Err(e) => {
                if !warned {
                    tracing::warn!(%addr, queue = %cfg.queue,
                        "cannot listen for secondaries: {e}; retrying in the background");
                    warned = true;
                }
                *lock(&shared.listen_error) = Some(e.to_string());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    let bound = listener
        .local_addr()
        .map_or_else(|_| addr.clone(), |a| a.to_string());
    tracing::info!(addr = %bound, queue = %cfg.queue, "serving secondaries");
    *lock(&shared.listening) = Some(bound);
    *lock(&shared.listen_error) = None;
    // Sessions live in the set: aborting this task ends them all.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    let (store, cfg) = (store.clone(), cfg.clone());
                    // The daemon's dispatch: the same Hello deadline and
                    // size cap, and a Hello for another queue refused.
                    let lookup = move |q: &str, _node: &str| {
                        (q == cfg.queue).then(|| (store.clone(), cfg.clone()))
                    };
                    sessions.spawn(async move { (peer, dispatch::serve_registry(lookup, s).await) });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(r) = sessions.join_next() => {
                if let Ok((peer, Err(e))) = r {
                    tracing::info!(%peer, "replication session ended: {e}");
                }
            }
        }
    }
}

/// Resolves `target` on a detached thread (a stuck resolver cannot delay
/// runtime shutdown), giving up after `timeout`.
async fn resolve(target: String, timeout: Duration) -> Result<(), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("repliq-resolve".into())
        .spawn(move || {
            let r = target
                .to_socket_addrs()
                .map_err(|e| e.to_string())
                .and_then(|mut a| a.next().map(|_| ()).ok_or_else(|| "no address".to_string()));
            let _ = tx.send(r);
        })
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("resolver thread failed".into()),
        Err(_) => Err("name resolution timed out".into()),
    }
}

/// Periodically checks that each secondary's name resolves, logging the
/// unreachable ones (at most once a minute each) and recording the result.
async fn probe_loop(secondaries: Vec<String>, shared: Arc<Shared>) {
    const WARN_EVERY: Duration = Duration::from_secs(60);
    let mut last_warn: Vec<Option<Instant>> = vec![None; secondaries.len()];
    let mut interval = Duration::from_secs(1);
    loop {
        let mut all_ok = true;
        for (i, node) in secondaries.iter().enumerate() {
            let r = resolve(with_port(node), Duration::from_secs(2)).await;
            let was = lock(&shared.peers)[i].reachable;
            match &r {
                Ok(()) => {
                    if was == Some(false) {
                        tracing::info!(secondary = %node, "secondary reachable again");
                    }
                    last_warn[i] = None;
                }
                Err(e) => {
                    all_ok = false;
                    if last_warn[i].is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        tracing::warn!(secondary = %node,
                            "secondary {node} unreachable: {e}; records wait in the log until it connects");
                        last_warn[i] = Some(Instant::now());
                    }
                }
            }
            let mut peers = lock(&shared.peers);
            peers[i].reachable = Some(r.is_ok());
            peers[i].last_error = r.err();
        }
        tokio::time::sleep(interval).await;
        interval = if all_ok {
            Duration::from_secs(10)
        } else {
            (interval * 2).min(Duration::from_secs(30))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_strings() {
        assert_eq!(split_host_port("a:80"), ("a", Some(80)));
        assert_eq!(split_host_port("a"), ("a", None));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert!(same_node("node-a", "node-a:7000"));
        assert!(same_node("127.0.0.1:7000", "127.0.0.1:7000"));
        assert!(!same_node("127.0.0.1:7001", "127.0.0.1:7000"));
        assert_eq!(with_port("a"), "a:31337");
        assert_eq!(with_port("a:1"), "a:1");
    }
}
