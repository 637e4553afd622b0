//! What this node observes, gathered once per request: the node, each queue
//! and each replication link. `/metrics` encodes a [`Snapshot`] for
//! Prometheus and `/api/v1/*` serialises it as JSON for the dashboard.
//!
//! Counters come from the queues' shared control files (every process
//! appending to a queue updates them), so they count what happened since
//! the queue was created, not since the daemon started. Nothing here reads
//! a payload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use repliq::store::layout::SEGMENT_SUFFIX;
use repliq::store::{LatencyStat, Stats, Store};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{Discovery, Mode};
use crate::history::{History, SAMPLE_EVERY};
use crate::state::{QueueState, Shared, READY_LAG_BYTES};

/// The version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit of this build, when the build passed one in
/// `REPLIQ_GIT_COMMIT`.
pub const COMMIT: Option<&str> = option_env!("REPLIQ_GIT_COMMIT");

/// What the HTTP handlers share: the daemon's state and what is observed
/// over time.
pub struct Observer {
    /// The daemon's state.
    pub shared: Arc<Shared>,
    /// Tails over time, for lag in seconds.
    pub history: History,
    /// When the daemon started (Unix seconds).
    pub start_unix: f64,
    started: Instant,
}

impl Observer {
    /// An observer of `shared`, starting now.
    pub fn new(shared: Arc<Shared>) -> Arc<Observer> {
        Arc::new(Observer {
            shared,
            history: History::default(),
            start_unix: unix_now(),
            started: Instant::now(),
        })
    }

    /// Records every queue's tail (a secondary: its primary's) every
    /// [`SAMPLE_EVERY`] until `stop` turns true.
    pub async fn sample(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let now = Instant::now();
            for (name, q) in self.shared.queues() {
                let tail = match &q.status {
                    Some(st) if !self.shared.leads(&q) => st.primary_tail(),
                    _ => q.store().map_or(0, |s| s.tail_position()),
                };
                if tail > 0 {
                    self.history.record(&name, now, tail);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// [`Observer::snapshot`] on the blocking pool: it reads directories and
    /// `statvfs`, which must not stall the runtime's workers.
    pub async fn snapshot_async(self: &Arc<Self>) -> Snapshot {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.snapshot()).await {
            Ok(s) => s,
            Err(_) => self.snapshot(),
        }
    }

    /// [`Observer::cluster`] on the blocking pool.
    pub async fn cluster_async(self: &Arc<Self>) -> Cluster {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.cluster()).await {
            Ok(c) => c,
            Err(_) => self.cluster(),
        }
    }

    /// Everything this node observes now.
    pub fn snapshot(&self) -> Snapshot {
        let sh = &self.shared;
        let now = Instant::now();
        let mut qs = Vec::new();
        for (name, q) in sh.queues() {
            qs.push(self.queue(&name, &q, now));
        }
        let (ready, not_ready) = sh.readiness();
        let connected_peers = if sh.primary {
            sh.connected
                .load(std::sync::atomic::Ordering::Acquire)
                .max(0) as u64
        } else {
            qs.iter()
                .filter(|q| q.links.iter().any(|l| l.connected))
                .count() as u64
        };
        let node = NodeSnap {
            name: sh.cfg.node_name.clone(),
            role: if sh.is_cluster() {
                "member"
            } else {
                role(sh.primary)
            },
            mode: match sh.cfg.mode {
                Mode::Async => "async",
                Mode::Sync => "sync",
            },
            primary: sh.cfg.primary.clone(),
            version: VERSION,
            commit: COMMIT,
            epoch: qs.iter().map(|q| q.epoch).max().unwrap_or(0),
            ready,
            not_ready,
            start_time_unix: self.start_unix,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            time_unix: unix_now(),
            http_listen: sh.cfg.http_listen.to_string(),
            replication_listen: sh.primary.then(|| sh.cfg.listen.to_string()),
            connected_peers,
            refused_connections: sh
                .refusals
                .counts()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            disk: disk(&sh.cfg.path),
        };
        let catalog = sh
            .catalog()
            .map(|c| catalog_view(c, sh.cfg.cluster.as_ref()));
        Snapshot {
            node,
            queues: qs,
            catalog,
        }
    }

    fn queue(&self, name: &str, q: &QueueState, now: Instant) -> QueueSnap {
        let sh = &self.shared;
        let store = q.store();
        let st = store.as_ref().map(Store::stats);
        let (segments, disk_bytes) = dir_usage(&q.dir);
        let mut snap = QueueSnap {
            name: name.to_string(),
            open: store.is_some(),
            segments,
            disk_bytes,
            ..QueueSnap::default()
        };
        if let (Some(s), Some(st)) = (&store, &st) {
            let base = s.geometry().first_position(0);
            snap.epoch = st.epoch;
            snap.tail = st.tail;
            snap.replicated_position = st.replicated;
            snap.appended_messages = st.reserved;
            snap.appended_bytes = st.tail.saturating_sub(base);
            snap.depth = st.depth;
            snap.capacity = st.capacity;
            snap.full_rejections = st.full_rejections;
            snap.recoveries = st.recoveries;
            snap.unblocked = st.unblocked;
            snap.truncated_records = st.truncated_records;
            snap.groups = st
                .groups
                .iter()
                .map(|g| GroupSnap {
                    name: g.name.clone(),
                    position: g.position,
                    dequeued_messages: g.count,
                })
                .collect();
            snap.enqueue_latency = LatencySnap::of(&st.enqueue_latency);
            snap.sync_wait = LatencySnap::of(&st.sync_wait);
        }
        if sh.leads(q) {
            if let (Some(s), Some(st)) = (&store, &st) {
                let base = s.geometry().first_position(0);
                // Bytes and (estimated) messages under the replicated watermark.
                let b = st.replicated.max(base) - base;
                snap.replicated_bytes = b;
                snap.replicated_messages = estimate_messages(s, st, b).min(st.reserved);
            }
            self.primary_links(name, store.as_ref(), st.as_ref(), now, &mut snap);
        } else if let Some(status) = &q.status {
            let local = store.as_ref().map_or(0, Store::tail_position);
            let lag_bytes = status.primary_tail().saturating_sub(local);
            let mut l = LinkSnap {
                peer: q
                    .leader
                    .lock()
                    .ok()
                    .and_then(|l| l.clone())
                    .or_else(|| sh.cfg.primary.clone())
                    .unwrap_or_else(|| "primary".into()),
                peer_role: "primary",
                connected: status.connected(),
                acked_position: local,
                lag_bytes,
                lag_messages: 0,
                lag_seconds: self.history.lag_seconds(name, local, now),
                reconnects: status.sessions().saturating_sub(1),
                sessions: status.sessions(),
            };
            if let (Some(s), Some(st)) = (&store, &st) {
                l.lag_messages = estimate_messages(s, st, lag_bytes);
                if let Ok(start) = q.start.lock() {
                    if let Some((t0, r0)) = *start {
                        snap.replicated_bytes = st.tail.saturating_sub(t0);
                        snap.replicated_messages = st.reserved.saturating_sub(r0);
                    }
                }
            }
            snap.links.push(l);
        }
        snap
    }

    fn primary_links(
        &self,
        name: &str,
        s: Option<&Store>,
        st: Option<&Stats>,
        now: Instant,
        snap: &mut QueueSnap,
    ) {
        let (Some(s), Some(st)) = (s, st) else {
            return;
        };
        // Peer slots in the control file: written by whichever process
        // serves the secondary (this daemon, or an in-process primary).
        for l in s.peer_links() {
            let lag_bytes = st.tail.saturating_sub(l.acked);
            snap.links.push(LinkSnap {
                lag_messages: estimate_messages(s, st, lag_bytes),
                lag_seconds: self.history.lag_seconds(name, l.acked, now),
                peer: l.node,
                peer_role: "secondary",
                connected: l.connected,
                acked_position: l.acked,
                lag_bytes,
                reconnects: l.sessions.saturating_sub(1),
                sessions: l.sessions,
            });
        }
        snap.links.sort_by(|a, b| a.peer.cmp(&b.peer));
    }

    /// The nodes this node knows of, itself first.
    pub fn cluster(&self) -> Cluster {
        let snap = self.snapshot();
        let sh = &self.shared;
        let static_peers = match &sh.cfg.discovery {
            Discovery::Static { peers } => peers.clone(),
            _ => Vec::new(),
        };
        let address_of = |n: &str| {
            static_peers
                .iter()
                .find(|p| p.name == n)
                .map(|p| p.address.clone())
        };
        let me = &snap.node;
        let mut nodes = vec![ClusterNode {
            name: me.name.clone(),
            role: me.role.to_string(),
            epoch: Some(me.epoch),
            health: if me.ready { "ok" } else { "not ready" }.into(),
            link: "self".into(),
            address: me
                .replication_listen
                .clone()
                .or_else(|| address_of(&me.name)),
            lag_bytes: 0,
            lag_seconds: 0.0,
            is_self: true,
        }];
        // Every peer seen on a link, with its state over all queues.
        let mut peers: Vec<(String, &'static str, Vec<&LinkSnap>)> = Vec::new();
        for q in &snap.queues {
            for l in &q.links {
                match peers.iter_mut().find(|p| p.0 == l.peer) {
                    Some(p) => p.2.push(l),
                    None => peers.push((l.peer.clone(), l.peer_role, vec![l])),
                }
            }
        }
        // Configured nodes never seen on a link.
        for p in &static_peers {
            if p.name != me.name && !peers.iter().any(|x| x.0 == p.name) {
                let role = if sh.cfg.primary.as_deref() == Some(p.name.as_str()) {
                    "primary"
                } else {
                    "secondary"
                };
                peers.push((p.name.clone(), role, Vec::new()));
            }
        }
        for (name, role, links) in peers {
            let up = links.iter().filter(|l| l.connected).count();
            let link = if links.is_empty() || up == 0 {
                "disconnected"
            } else if up < links.len() {
                "partial"
            } else {
                "connected"
            };
            let lag_bytes = links.iter().map(|l| l.lag_bytes).max().unwrap_or(0);
            let lag_seconds = links.iter().map(|l| l.lag_seconds).fold(0.0, f64::max);
            let health = match link {
                "connected" if lag_bytes <= READY_LAG_BYTES => "ok",
                "connected" | "partial" => "lagging",
                _ => "down",
            };
            let epoch = if role == "primary" {
                snap.queues.iter().map(|q| q.epoch).max()
            } else {
                None
            };
            nodes.push(ClusterNode {
                address: address_of(&name),
                name,
                role: role.into(),
                epoch,
                health: health.into(),
                link: link.into(),
                lag_bytes,
                lag_seconds,
                is_self: false,
            });
        }
        Cluster {
            node: me.name.clone(),
            mode: me.mode,
            nodes,
            catalog: snap.catalog.clone(),
        }
    }
}

/// The catalog as this node sees it (cluster mode).
fn catalog_view(
    c: &repliq_catalog::Catalog,
    settings: Option<&crate::config::ClusterSettings>,
) -> CatalogView {
    let m = c.metrics();
    let st = c.state();
    let members = st
        .members
        .values()
        .map(|x| CatalogMember {
            name: x.name.clone(),
            address: x.addr.clone(),
            incarnation: x.incarnation,
            voter: m.voters.contains(&x.name),
            last_report: st.reports.get(&x.name).copied(),
        })
        .collect();
    let queues = st
        .queues
        .values()
        .map(|q| {
            let progress = st.progress.get(&q.name);
            let leader_tail = q
                .leader
                .as_ref()
                .and_then(|l| progress.and_then(|p| p.get(l)))
                .map_or(0, |p| p.tail);
            CatalogQueue {
                name: q.name.clone(),
                queue_id: format!("{:016x}", q.queue_id),
                leader: q.leader.clone(),
                epoch: q.epoch,
                epoch_history: q.epoch_history.clone(),
                replicas: q
                    .replicas
                    .iter()
                    .map(|r| {
                        let p = progress.and_then(|p| p.get(r));
                        CatalogReplica {
                            node: r.clone(),
                            in_sync: q.in_sync.contains(r),
                            epoch: p.map(|p| p.epoch),
                            tail: p.map(|p| p.tail),
                            lag_bytes: p.map(|p| leader_tail.saturating_sub(p.tail)),
                        }
                    })
                    .collect(),
                min_insync: q.settings.min_insync,
            }
        })
        .collect();
    CatalogView {
        leader: m.leader,
        term: m.term,
        commit_index: m.commit_index,
        voters: m.voters,
        initialized_here: c.initialized_here(),
        incarnation: c.incarnation(),
        factor: settings.map_or(0, |s| s.factor),
        failover_timeout_ms: settings.map_or(0, |s| s.failover_timeout_ms),
        members,
        queues,
    }
}

/// The catalog in `/api/v1/cluster` (cluster mode only).
#[derive(Debug, Clone, Serialize)]
pub struct CatalogView {
    /// The catalog's Raft leader, if known.
    pub leader: Option<String>,
    /// Raft term.
    pub term: u64,
    /// Last log index applied on this node.
    pub commit_index: Option<u64>,
    /// The voters.
    pub voters: Vec<String>,
    /// Whether this process initialized the cluster (only ever on a fresh directory).
    pub initialized_here: bool,
    /// This node's incarnation.
    pub incarnation: u64,
    /// `replication.factor`.
    pub factor: usize,
    /// `replication.failover_timeout_ms`.
    pub failover_timeout_ms: u64,
    /// Members.
    pub members: Vec<CatalogMember>,
    /// Queues.
    pub queues: Vec<CatalogQueue>,
}

/// A member in the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogMember {
    /// Node name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its incarnation (a new one after it lost its data directory).
    pub incarnation: u64,
    /// Whether it votes in the catalog.
    pub voter: bool,
    /// Sequence number of its last report.
    pub last_report: Option<u64>,
}

/// A queue in the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogQueue {
    /// Name.
    pub name: String,
    /// Queue id (hex).
    pub queue_id: String,
    /// Leader.
    pub leader: Option<String>,
    /// Leader epoch.
    pub epoch: u32,
    /// `(epoch, first id)` pairs.
    pub epoch_history: Vec<(u32, u64)>,
    /// Replicas with their reported progress.
    pub replicas: Vec<CatalogReplica>,
    /// Replicas (leader included) a synchronous append needs.
    pub min_insync: u32,
}

/// One replica of a queue.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogReplica {
    /// Node name.
    pub node: String,
    /// In the in-sync set.
    pub in_sync: bool,
    /// Epoch of its last record, as last reported.
    pub epoch: Option<u32>,
    /// Its tail, as last reported.
    pub tail: Option<u64>,
    /// Bytes behind the leader's last reported tail.
    pub lag_bytes: Option<u64>,
}

/// Everything this node observes at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// This node.
    pub node: NodeSnap,
    /// Its queues, by name.
    pub queues: Vec<QueueSnap>,
    /// Cluster mode: the catalog as this node sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogView>,
}

/// This node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSnap {
    /// Node name.
    pub name: String,
    /// `primary` or `secondary`.
    pub role: &'static str,
    /// Replication mode, `async` or `sync`.
    pub mode: &'static str,
    /// The configured primary's name.
    pub primary: Option<String>,
    /// Version of this build.
    pub version: &'static str,
    /// Git commit of this build, if known.
    pub commit: Option<&'static str>,
    /// Highest epoch of this node's queues.
    pub epoch: u32,
    /// As `/readyz` answers.
    pub ready: bool,
    /// Why the node is not ready.
    pub not_ready: Vec<String>,
    /// When the daemon started (Unix seconds).
    pub start_time_unix: f64,
    /// Seconds since the daemon started.
    pub uptime_seconds: f64,
    /// When this snapshot was taken (Unix seconds).
    pub time_unix: f64,
    /// Address of the HTTP server.
    pub http_listen: String,
    /// Replication address (the primary only).
    pub replication_listen: Option<String>,
    /// Replication sessions established (primary: with secondaries;
    /// secondary: followed queues with a session).
    pub connected_peers: u64,
    /// Connections the replication port closed before any session, by
    /// reason (`tls_handshake`, `tls_timeout`, `plain_tcp`,
    /// `max_connections`).
    pub refused_connections: BTreeMap<String, u64>,
    /// The file system holding the queues.
    pub disk: Option<DiskSnap>,
}

/// Space on the file system of `queue.persistence.path`.
#[derive(Debug, Clone, Serialize)]
pub struct DiskSnap {
    /// The persistence path.
    pub path: String,
    /// Bytes available to the daemon.
    pub free_bytes: u64,
    /// Size of the file system in bytes.
    pub total_bytes: u64,
}

/// One queue.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueSnap {
    /// Queue name.
    pub name: String,
    /// False while the queue is not open (a secondary before its first
    /// session); the counters are then 0.
    pub open: bool,
    /// Epoch.
    pub epoch: u32,
    /// Write position.
    pub tail: u64,
    /// Replicated watermark.
    pub replicated_position: u64,
    /// Messages appended since the queue was created.
    pub appended_messages: u64,
    /// Log bytes appended since the queue was created (headers and
    /// padding included).
    pub appended_bytes: u64,
    /// Messages the default group has not dequeued.
    pub depth: u64,
    /// Capacity in messages.
    pub capacity: u64,
    /// Segment files on disk.
    pub segments: u64,
    /// Bytes the queue's files occupy on disk.
    pub disk_bytes: u64,
    /// Appends refused because the queue was full.
    pub full_rejections: u64,
    /// Recoveries run when the queue was opened.
    pub recoveries: u64,
    /// Stuck frames (of writers that died mid-append) turned into padding.
    pub unblocked: u64,
    /// Records truncations moved to quarantine (see `repliq stat`).
    pub truncated_records: u64,
    /// Consumer groups.
    pub groups: Vec<GroupSnap>,
    /// Sampled enqueue latency.
    pub enqueue_latency: LatencySnap,
    /// Waits of synchronous enqueues for acknowledgements.
    pub sync_wait: LatencySnap,
    /// Primary: messages under the replicated watermark (estimated);
    /// secondary: messages received since the daemon started.
    pub replicated_messages: u64,
    /// The same in log bytes.
    pub replicated_bytes: u64,
    /// Replication links: the primary's secondaries, or a secondary's primary.
    pub links: Vec<LinkSnap>,
}

/// A consumer group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSnap {
    /// Group name.
    pub name: String,
    /// Next position it will read.
    pub position: u64,
    /// Messages it has dequeued.
    pub dequeued_messages: u64,
}

/// A latency histogram (seconds).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySnap {
    /// Samples.
    pub count: u64,
    /// Sum of the samples in seconds.
    pub sum_seconds: f64,
    /// `(upper bound in seconds, samples in the bucket)`, not cumulative;
    /// the last bound is `None` (+Inf).
    pub buckets: Vec<(Option<f64>, u64)>,
    /// Upper bound of the bucket holding the median, in seconds.
    pub p50_seconds: Option<f64>,
    /// The same for the 99th percentile.
    pub p99_seconds: Option<f64>,
    /// The same for the 99.9th percentile.
    pub p999_seconds: Option<f64>,
}

impl LatencySnap {
    fn of(l: &LatencyStat) -> LatencySnap {
        let secs = |ns: u64| (ns != u64::MAX).then(|| ns as f64 / 1e9);
        LatencySnap {
            count: l.count,
            sum_seconds: l.sum_ns as f64 / 1e9,
            buckets: l.buckets.iter().map(|&(b, n)| (secs(b), n)).collect(),
            p50_seconds: l.quantile_bound(0.5).and_then(secs),
            p99_seconds: l.quantile_bound(0.99).and_then(secs),
            p999_seconds: l.quantile_bound(0.999).and_then(secs),
        }
    }
}

/// One replication link of a queue.
#[derive(Debug, Clone, Serialize)]
pub struct LinkSnap {
    /// The other end's node name.
    pub peer: String,
    /// The other end's role.
    pub peer_role: &'static str,
    /// True while a session runs.
    pub connected: bool,
    /// Primary: the position the secondary acknowledged; secondary: its
    /// write position (what it acknowledges).
    pub acked_position: u64,
    /// Log bytes the secondary is behind the primary.
    pub lag_bytes: u64,
    /// Messages it is behind (estimated from the average frame size).
    pub lag_messages: u64,
    /// Age of the oldest message it does not have yet, in seconds.
    pub lag_seconds: f64,
    /// Sessions after the first (primary: since the peer slot was created;
    /// secondary: since the daemon started).
    pub reconnects: u64,
    /// Sessions established, counted the same way.
    pub sessions: u64,
}

/// The nodes this node knows of.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// This node's name.
    pub node: String,
    /// Replication mode.
    pub mode: &'static str,
    /// This node first, then its peers.
    pub nodes: Vec<ClusterNode>,
    /// Cluster mode: the catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogView>,
}

/// A node as seen from this one.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterNode {
    /// Node name.
    pub name: String,
    /// `primary` or `secondary`.
    pub role: String,
    /// Epoch, where known (this node and the primary).
    pub epoch: Option<u32>,
    /// This node: `ok` or `not ready`; a peer: `ok`, `lagging` (more than
    /// 1 MiB behind, or not every queue connected) or `down`.
    pub health: String,
    /// `self`, `connected`, `partial` (some queues) or `disconnected`.
    pub link: String,
    /// Replication address, where known.
    pub address: Option<String>,
    /// Largest lag of its queues in bytes.
    pub lag_bytes: u64,
    /// Largest lag of its queues in seconds.
    pub lag_seconds: f64,
    /// True for this node.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// `primary` or `secondary`.
pub fn role(primary: bool) -> &'static str {
    if primary {
        "primary"
    } else {
        "secondary"
    }
}

/// Estimated messages in `bytes` of log, from the queue's average frame size.
fn estimate_messages(s: &Store, st: &Stats, bytes: u64) -> u64 {
    let span = st.tail.saturating_sub(s.geometry().first_position(0));
    if bytes == 0 || st.reserved == 0 || span == 0 {
        return 0;
    }
    let est = (u128::from(bytes) * u128::from(st.reserved)).div_ceil(u128::from(span));
    u64::try_from(est).unwrap_or(u64::MAX).max(1)
}

/// Segment files in a queue directory and the bytes all its files occupy.
fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let (mut segments, mut bytes) = (0, 0);
    for e in rd.flatten() {
        let Ok(md) = e.metadata() else { continue };
        if !md.is_file() {
            continue;
        }
        bytes += md.blocks() * 512;
        if e.file_name().to_string_lossy().ends_with(SEGMENT_SUFFIX) {
            segments += 1;
        }
    }
    (segments, bytes)
}

/// Free and total space of the file system holding `path`.
fn disk(path: &std::path::Path) -> Option<DiskSnap> {
    let v = rustix::fs::statvfs(path).ok()?;
    Some(DiskSnap {
        path: path.display().to_string(),
        free_bytes: v.f_bavail.saturating_mul(v.f_frsize),
        total_bytes: v.f_blocks.saturating_mul(v.f_frsize),
    })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_reported_in_seconds_with_an_infinite_last_bucket() {
        let l = LatencyStat {
            buckets: vec![(64, 0), (128, 3), (256, 1), (u64::MAX, 0)],
            count: 4,
            sum_ns: 400,
        };
        let s = LatencySnap::of(&l);
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 400e-9).abs() < 1e-15);
        assert_eq!(s.buckets.last(), Some(&(None, 0)));
        assert_eq!(s.buckets[1], (Some(128e-9), 3));
        assert_eq!(s.p50_seconds, Some(128e-9));
        assert_eq!(s.p99_seconds, Some(256e-9));
    }

    #[test]
    fn disk_space_of_an_existing_path() {
        let d = disk(std::path::Path::new("/")).unwrap();
        assert!(d.total_bytes > 0);
        assert!(d.free_bytes <= d.total_bytes);
        assert!(disk(std::path::Path::new("/no/such/dir/for/repliq")).is_none());
    }

    #[test]
    fn dir_usage_counts_segments_and_blocks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("00000000000000000000.seg"), vec![1u8; 8192]).unwrap();
        std::fs::write(d.path().join("control.rq"), vec![1u8; 4096]).unwrap();
        let (segs, bytes) = dir_usage(d.path());
        assert_eq!(segs, 1);
        assert!(bytes >= 12288, "{bytes}");
        assert_eq!(dir_usage(&d.path().join("missing")), (0, 0));
    }
}
