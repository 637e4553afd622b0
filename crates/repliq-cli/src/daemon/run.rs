//! The daemon's main loop: the primary's listener or the secondaries'
//! followers, the HTTP server, and graceful shutdown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use repliq::replication::dispatch::{serve_registry, FollowStatus};
use repliq::replication::{secondary, PrimaryConfig, SecondaryConfig};
use repliq::store::layout::CONTROL_FILE;
use repliq::store::{Store, StoreOptions};
use tokio::sync::watch;

use super::config::{Config, Mode};
use super::discovery;

/// One queue this node serves or follows.
pub struct QueueState {
    /// Queue directory.
    pub dir: PathBuf,
    /// Open handle (on a secondary: once the replica exists).
    pub store: Mutex<Option<Store>>,
    /// Primary settings (primary only).
    pub primary_cfg: Option<Arc<PrimaryConfig>>,
    /// Follower state (secondary only).
    pub status: Option<Arc<FollowStatus>>,
    /// Write position and message count when the daemon started.
    pub start: Mutex<Option<(u64, u64)>>,
    /// True if the queue did not exist when the daemon started: everything
    /// in it was replicated by this process.
    pub fresh: bool,
    /// False until the follower has opened (and so recovered) the replica:
    /// a handle opened earlier would keep recovery from running.
    pub may_open: AtomicBool,
}

impl QueueState {
    /// The open store, opening an existing replica lazily.
    pub fn store(&self) -> Option<Store> {
        let mut g = self.store.lock().ok()?;
        if g.is_none() && self.may_open.load(Ordering::Acquire) && is_queue(&self.dir) {
            if let Ok(s) = Store::open(&self.dir, &StoreOptions::open().skip_recovery()) {
                *g = Some(s);
            }
        }
        let s = g.clone()?;
        if let Ok(mut st) = self.start.lock() {
            if st.is_none() {
                *st = Some(if self.fresh {
                    (s.geometry().first_position(0), 0)
                } else {
                    (s.tail_position(), s.stats().reserved)
                });
            }
        }
        Some(s)
    }
}

/// State shared by the replication tasks and the HTTP server.
pub struct Shared {
    /// The effective configuration.
    pub cfg: Config,
    /// True on the primary.
    pub primary: bool,
    /// Queues by name.
    pub queues: RwLock<BTreeMap<String, Arc<QueueState>>>,
    /// Replication sessions currently established.
    pub connected: AtomicI64,
}

/// True if `dir` is a queue directory.
fn is_queue(dir: &Path) -> bool {
    dir.join(CONTROL_FILE).is_file()
}

/// Queue names: those configured plus every queue directory on disk.
fn queue_names(cfg: &Config) -> Result<Vec<String>, String> {
    let mut names = cfg.queue_names.clone();
    match std::fs::read_dir(&cfg.path) {
        Ok(rd) => {
            for e in rd.flatten() {
                let Ok(n) = e.file_name().into_string() else {
                    continue;
                };
                if is_queue(&e.path()) && !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot list {}: {e}", cfg.path.display())),
    }
    names.sort();
    Ok(names)
}

fn primary_config(cfg: &Config, queue: &str) -> Arc<PrimaryConfig> {
    let mut p = PrimaryConfig::new(&cfg.node_name, queue);
    p.timeout = cfg.timeout();
    p.heartbeat = cfg.heartbeat();
    p.min_acks = cfg.min_acks;
    Arc::new(p)
}

/// Opens (creating with `queue.capacity` if missing) a queue on the primary.
fn open_primary_queue(cfg: &Config, name: &str) -> Result<Store, String> {
    let dir = cfg.path.join(name);
    let opts = if is_queue(&dir) {
        StoreOptions::open()
    } else {
        StoreOptions::create().capacity(cfg.capacity)
    };
    let s = Store::open(&dir, &opts).map_err(|e| format!("queue {name}: {e}"))?;
    s.set_read_only(false);
    Ok(s)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), String> {
    let primary = cfg.is_primary();
    std::fs::create_dir_all(&cfg.path)
        .map_err(|e| format!("cannot create {}: {e}", cfg.path.display()))?;
    let names = queue_names(&cfg)?;
    let mut queues = BTreeMap::new();
    for n in &names {
        let dir = cfg.path.join(n);
        let fresh = !is_queue(&dir);
        let q = if primary {
            let s = open_primary_queue(&cfg, n)?;
            QueueState {
                dir,
                store: Mutex::new(Some(s)),
                primary_cfg: Some(primary_config(&cfg, n)),
                status: None,
                start: Mutex::new(None),
                fresh,
                may_open: AtomicBool::new(true),
            }
        } else {
            QueueState {
                dir,
                store: Mutex::new(None),
                primary_cfg: None,
                status: Some(FollowStatus::new()),
                start: Mutex::new(None),
                fresh,
                may_open: AtomicBool::new(false),
            }
        };
        let q = Arc::new(q);
        let _ = q.store();
        queues.insert(n.clone(), q);
    }
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        primary,
        queues: RwLock::new(queues),
        connected: AtomicI64::new(0),
    });
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
    let http = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| format!("http.listen {}: {e}", cfg.http_listen))?;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(super::http::serve(
        http,
        shared.clone(),
        stop_rx.clone(),
    )));

    if primary {
        let l = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| format!("replication.listen {}: {e}", cfg.listen))?;
        tracing::info!(addr = %cfg.listen, "serving replication");
        tasks.push(tokio::spawn(accept_loop(l, shared.clone())));
    } else {
        let candidates = discovery::start(&cfg);
        let list: Vec<(String, Arc<QueueState>)> = shared
            .queues
            .read()
            .map(|q| q.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (name, q) in list {
            tasks.push(tokio::spawn(follow_queue(
                shared.clone(),
                name,
                q,
                candidates.clone(),
            )));
        }
    }

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for t in &tasks {
        // The HTTP server stops on the watch; replication tasks are cancelled.
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    // Flush what the queues hold before exiting.
    if let Ok(q) = shared.queues.read() {
        for (n, q) in q.iter() {
            if let Some(s) = q.store.lock().ok().and_then(|g| g.clone()) {
                if let Err(e) = s.flush() {
                    tracing::warn!(queue = %n, "flush at shutdown failed: {e}");
                }
            }
        }
    }
    Ok(())
}

async fn wait_for_signal() {
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

/// Looks up (opening a queue that appeared on disk) a served queue.
fn lookup(shared: &Shared, name: &str) -> Option<(Store, Arc<PrimaryConfig>)> {
    if let Some(q) = shared.queues.read().ok()?.get(name) {
        return Some((q.store()?, q.primary_cfg.clone()?));
    }
    // A queue created after start-up (e.g. with `repliq create`).
    let dir = shared.cfg.path.join(name);
    if !is_queue(&dir) || name.contains(['/', '\\']) || name.starts_with('.') {
        return None;
    }
    let s = open_primary_queue(&shared.cfg, name).ok()?;
    let pc = primary_config(&shared.cfg, name);
    let q = Arc::new(QueueState {
        dir,
        store: Mutex::new(Some(s.clone())),
        primary_cfg: Some(pc.clone()),
        status: None,
        start: Mutex::new(None),
        fresh: false,
        may_open: AtomicBool::new(true),
    });
    let _ = q.store();
    shared.queues.write().ok()?.insert(name.to_string(), q);
    Some((s, pc))
}

async fn accept_loop(l: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.connected.fetch_add(1, Ordering::AcqRel);
            let sh = shared.clone();
            let r = serve_registry(move |q| lookup(&sh, q), stream).await;
            shared.connected.fetch_sub(1, Ordering::AcqRel);
            if let Err(e) = r {
                tracing::warn!(%peer, "replication session ended: {e}");
            }
        });
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
    let mut store = Store::open(&q.dir, &StoreOptions::open()).ok();
    if let Some(s) = &store {
        s.set_read_only(true);
        if let Ok(mut g) = q.store.lock() {
            *g = Some(s.clone());
        }
    }
    q.may_open.store(true, Ordering::Release);
    let _ = q.store();
    let mut delay = sc.backoff_min;
    let mut next = 0usize;
    loop {
        let list = candidates.borrow().clone();
        if list.is_empty() {
            tracing::debug!(queue = %name, "no primary address known yet");
        } else {
            sc.primary = list[next % list.len()].clone();
            next = next.wrapping_add(1);
            let before = status.sessions();
            let r = secondary::session_with_status(&sc, &mut store, Some(&status)).await;
            status.disconnected();
            if status.sessions() > before {
                delay = sc.backoff_min;
            }
            if let Some(s) = &store {
                if let Ok(mut g) = q.store.lock() {
                    g.get_or_insert_with(|| s.clone());
                }
            }
            if let Err(e) = r {
                tracing::warn!(queue = %name, primary = %sc.primary, "replication session ended: {e}");
            }
        }
        let jitter = f64::from(std::process::id() % 97 + (next as u32 % 13)) / 110.0;
        tokio::time::sleep(delay.mul_f64(0.5 + jitter)).await;
        delay = (delay * 2).min(sc.backoff_max);
    }
}
