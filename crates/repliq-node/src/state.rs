//! The node's state: the effective configuration, the queues it serves or
//! follows, and whether it is ready.
//!
//! This is the bottom of the crate. The replication tasks ([`crate::run`]),
//! the HTTP server ([`crate::http`]) and what it observes
//! ([`crate::snapshot`]) all work on a [`Shared`]; this module depends only
//! on the configuration and the `repliq` library, never on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use repliq::replication::dispatch::FollowStatus;
use repliq::replication::PrimaryConfig;
use repliq::store::layout::CONTROL_FILE;
use repliq::store::{Store, StoreOptions};

use crate::config::Config;

/// A secondary is ready when every followed queue is within this many
/// bytes of its primary's last known write position.
pub const READY_LAG_BYTES: u64 = 1 << 20;

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
    /// Cluster mode: true while this node leads the queue (its role word
    /// says primary and its lease holds). Outside cluster mode: unused.
    pub leading: AtomicBool,
    /// Cluster mode: the queue's leader as this node last saw it.
    pub leader: Mutex<Option<String>>,
}

impl QueueState {
    /// A queue served by the primary, open.
    fn primary(cfg: &Config, name: &str, fresh: bool) -> Result<QueueState, String> {
        let s = open_primary_queue(cfg, name)?;
        Ok(QueueState {
            dir: cfg.path.join(name),
            store: Mutex::new(Some(s)),
            primary_cfg: Some(primary_config(cfg, name)),
            status: None,
            start: Mutex::new(None),
            fresh,
            may_open: AtomicBool::new(true),
            leading: AtomicBool::new(true),
            leader: Mutex::new(Some(cfg.node_name.clone())),
        })
    }

    /// A queue of the cluster, replicated here: led or followed as the
    /// catalog says; not open until its driver opens it.
    pub fn cluster(cfg: &Config, name: &str, fresh: bool) -> QueueState {
        QueueState {
            dir: cfg.path.join(name),
            store: Mutex::new(None),
            primary_cfg: Some(primary_config(cfg, name)),
            status: Some(FollowStatus::new()),
            start: Mutex::new(None),
            fresh,
            may_open: AtomicBool::new(false),
            leading: AtomicBool::new(false),
            leader: Mutex::new(None),
        }
    }

    /// A queue followed by a secondary, not open until its follower has
    /// opened it.
    fn secondary(cfg: &Config, name: &str, fresh: bool) -> QueueState {
        QueueState {
            dir: cfg.path.join(name),
            store: Mutex::new(None),
            primary_cfg: None,
            status: Some(FollowStatus::new()),
            start: Mutex::new(None),
            fresh,
            may_open: AtomicBool::new(false),
            leading: AtomicBool::new(false),
            leader: Mutex::new(cfg.primary.clone()),
        }
    }

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
    queues: RwLock<BTreeMap<String, Arc<QueueState>>>,
    /// Replication sessions currently established.
    pub connected: AtomicI64,
    /// Cluster mode: the catalog, once started.
    catalog: std::sync::OnceLock<Arc<repliq_catalog::Catalog>>,
    /// Mutual TLS on the replication port (`None`: `tls.mode: disabled`).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Connections the replication port refused before any session.
    pub refusals: crate::refusals::Refusals,
}

impl Shared {
    /// Creates `queue.persistence.path` if missing and opens the node's
    /// queues: those configured plus every queue directory found there. The
    /// primary opens each (creating a missing one with `queue.capacity`); a
    /// secondary only prepares to follow it. In cluster mode the queues are
    /// added by the cluster's drivers as the catalog lists them.
    pub fn open(cfg: Config) -> Result<Shared, String> {
        let primary = cfg.is_primary();
        let tls = crate::tls::Tls::from_settings(&cfg.tls)?;
        if let Some(t) = &tls {
            t.check_own_name(&cfg.node_name)?;
        }
        std::fs::create_dir_all(&cfg.path)
            .map_err(|e| format!("cannot create {}: {e}", cfg.path.display()))?;
        let mut queues = BTreeMap::new();
        let names = if cfg.cluster.is_some() {
            Vec::new()
        } else {
            queue_names(&cfg)?
        };
        for n in names {
            let fresh = !is_queue(&cfg.path.join(&n));
            let q = if primary {
                QueueState::primary(&cfg, &n, fresh)?
            } else {
                QueueState::secondary(&cfg, &n, fresh)
            };
            let q = Arc::new(q);
            let _ = q.store();
            queues.insert(n, q);
        }
        Ok(Shared {
            cfg,
            primary,
            queues: RwLock::new(queues),
            connected: AtomicI64::new(0),
            catalog: std::sync::OnceLock::new(),
            tls,
            refusals: Default::default(),
        })
    }

    /// The node's queues, by name.
    pub fn queues(&self) -> Vec<(String, Arc<QueueState>)> {
        self.queues
            .read()
            .map(|q| q.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// The queue `name`, if this node has it.
    pub fn get(&self, name: &str) -> Option<Arc<QueueState>> {
        self.queues.read().ok()?.get(name).cloned()
    }

    /// The queue `name`, added with `make` if this node does not have it yet.
    pub fn get_or_insert(&self, name: &str, make: impl FnOnce() -> QueueState) -> Arc<QueueState> {
        if let Some(q) = self.get(name) {
            return q;
        }
        let mut g = match self.queues.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.entry(name.to_string())
            .or_insert_with(|| Arc::new(make()))
            .clone()
    }

    /// Cluster mode: records the started catalog (for the HTTP API).
    pub fn set_cluster(&self, catalog: Arc<repliq_catalog::Catalog>) {
        let _ = self.catalog.set(catalog);
    }

    /// Cluster mode: the catalog.
    pub fn catalog(&self) -> Option<&Arc<repliq_catalog::Catalog>> {
        self.catalog.get()
    }

    /// True in cluster mode.
    pub fn is_cluster(&self) -> bool {
        self.cfg.cluster.is_some()
    }

    /// True if this node leads queue `q` now: outside cluster mode, if it is
    /// the primary; in cluster mode, as the queue's driver decided.
    pub fn leads(&self, q: &QueueState) -> bool {
        if self.is_cluster() {
            q.leading.load(Ordering::Acquire)
        } else {
            self.primary
        }
    }

    /// [`Shared::serve`] for a secondary named `node`, if it may follow the
    /// queue: in cluster mode a replica of it in the catalog; with static
    /// discovery a listed peer. With `dns` or `kubernetes` discovery names
    /// are not known in advance and any is served. This keeps invented names
    /// from taking the queue's peer slots (each would pin retention).
    pub fn serve_to(&self, name: &str, node: &str) -> Option<(Store, Arc<PrimaryConfig>)> {
        if let Some(c) = self.catalog() {
            let state = c.state();
            if !state
                .queues
                .get(name)
                .is_some_and(|e| e.replicas.iter().any(|r| r == node))
            {
                tracing::warn!(queue = %name, %node, "refused a follower that is not a replica of the queue");
                return None;
            }
        } else if let crate::config::Discovery::Static { peers } = &self.cfg.discovery {
            if !peers.is_empty() && !peers.iter().any(|p| p.name == node) {
                tracing::warn!(queue = %name, %node, "refused a follower that is not a configured peer");
                return None;
            }
        }
        self.serve(name)
    }

    /// On the primary (in cluster mode: on the queue's leader), the queue
    /// `name` and its replication settings; outside cluster mode a queue
    /// created on disk after start-up (e.g. with `repliq create`) is opened
    /// and added.
    pub fn serve(&self, name: &str) -> Option<(Store, Arc<PrimaryConfig>)> {
        if let Some(q) = self.queues.read().ok()?.get(name) {
            if !self.leads(q) {
                return None;
            }
            return Some((q.store()?, q.primary_cfg.clone()?));
        }
        if self.is_cluster() {
            return None;
        }
        if !self.primary
            || name.contains(['/', '\\'])
            || name.starts_with('.')
            || !is_queue(&self.cfg.path.join(name))
        {
            return None;
        }
        let q = Arc::new(QueueState::primary(&self.cfg, name, false).ok()?);
        let s = q.store()?;
        let pc = q.primary_cfg.clone()?;
        self.queues.write().ok()?.insert(name.to_string(), q);
        Some((s, pc))
    }

    /// Whether the node is ready, and why not: the primary always is; a
    /// secondary when every followed queue has a session and is within
    /// [`READY_LAG_BYTES`] of its primary.
    pub fn readiness(&self) -> (bool, Vec<String>) {
        if self.primary {
            return (true, Vec::new());
        }
        let mut not_ready = Vec::new();
        for (name, q) in self.queues() {
            if self.leads(&q) {
                continue;
            }
            let s = q.store();
            let Some(st) = &q.status else {
                not_ready.push(format!("{name}: not followed"));
                continue;
            };
            let local = s.as_ref().map_or(0, Store::tail_position);
            let behind = st.primary_tail().saturating_sub(local);
            if !st.connected() {
                not_ready.push(format!("{name}: not connected"));
            } else if behind > READY_LAG_BYTES || s.is_none() {
                not_ready.push(format!("{name}: {behind} bytes behind"));
            }
        }
        (not_ready.is_empty(), not_ready)
    }
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

/// The primary's replication settings for `queue`.
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
        cfg.create_options()
    };
    let s = Store::open(&dir, &opts).map_err(|e| format!("queue {name}: {e}"))?;
    s.set_read_only(false);
    // A static primary holds no lease (a deadline left by cluster mode would
    // stop its appends).
    s.set_lease_until(0);
    s.set_sync_acks(match cfg.mode {
        crate::config::Mode::Sync => u32::try_from(cfg.min_acks).unwrap_or(u32::MAX),
        crate::config::Mode::Async => 0,
    });
    s.set_role(repliq::store::Role::Primary);
    Ok(s)
}
