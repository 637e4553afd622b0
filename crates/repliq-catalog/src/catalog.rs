//! The [`Catalog`]: storage, Raft, server and the background tasks of one node.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::SnapshotPolicy;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::command::{Command, Response};
use crate::error::{CatalogError, StoreError, WireError};
use crate::forward::forward;
use crate::membership::{bootstrap_and_join, upkeep};
use crate::network::Network;
use crate::peers::{Discovered, Peers};
use crate::server::{listen, ServerContext};
use crate::state::CatalogState;
use crate::storage::file::{read_atomic, write_atomic};
use crate::storage::gate::WriteGate;
use crate::storage::{LogStore, StateMachineStore};
use crate::types::{node_id, NodeId, Raft};
use crate::wire::{RpcReply, RpcRequest};

/// Name of the file holding the node's incarnation.
pub const INCARNATION_FILE: &str = "incarnation";

/// Configuration of one catalog node.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// This node's name, unique in the cluster.
    pub node_name: String,
    /// `host:port` this node listens on for catalog traffic (and peers connect to).
    pub addr: String,
    /// Directory of the durable state (created if missing).
    pub dir: PathBuf,
    /// All members, `(name, addr)`, including this node: a fixed list (static
    /// discovery). Ignored when `discovered` is set.
    pub peers: Vec<(String, String)>,
    /// The members as discovery finds them while the node runs (DNS, Kubernetes),
    /// replacing `peers`. The first voter by name initializes a fresh cluster only
    /// while [`Discovered::complete`] is true.
    pub discovered: Option<watch::Receiver<Discovered>>,
    /// Election timeout range in milliseconds `(min, max)`.
    pub election_timeout_ms: (u64, u64),
    /// Leader heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs: u64,
    /// How many log entries to keep before the last snapshot when purging (the rest are
    /// purged; a peer that needs purged entries receives the snapshot instead).
    pub logs_kept_after_snapshot: u64,
    /// Whether the catalog binds `addr` itself. `false` when the caller accepts
    /// connections on a port it shares with another protocol and hands those that
    /// start with `b"RQCL"` to [`serve_connection`](crate::serve_connection) with
    /// [`Catalog::server_context`].
    pub own_listener: bool,
    /// How this node connects to its peers (plain TCP by default; the node
    /// supplies mutual TLS).
    pub dialer: crate::network::Dialer,
}

impl CatalogConfig {
    /// A configuration with default timings: election 500..1000 ms, heartbeat 100 ms,
    /// a snapshot every 1000 entries, 1000 entries kept behind the snapshot.
    pub fn new(
        node_name: impl Into<String>,
        addr: impl Into<String>,
        dir: impl Into<PathBuf>,
        peers: Vec<(String, String)>,
    ) -> CatalogConfig {
        CatalogConfig {
            node_name: node_name.into(),
            addr: addr.into(),
            dir: dir.into(),
            peers,
            discovered: None,
            election_timeout_ms: (500, 1000),
            heartbeat_ms: 100,
            snapshot_logs: 1000,
            logs_kept_after_snapshot: 1000,
            own_listener: true,
            dialer: crate::network::tcp_dialer(),
        }
    }
}

/// A snapshot of the local Raft node's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogMetrics {
    /// Current Raft term.
    pub term: u64,
    /// Index of the last entry applied here (everything applied is committed).
    pub commit_index: Option<u64>,
    /// Name of the current leader, if known.
    pub leader: Option<String>,
    /// Names of the voters.
    pub voters: Vec<String>,
    /// Raft ids of the voters.
    pub voter_ids: Vec<NodeId>,
}

/// One node of the cluster catalog: a Raft-replicated [`CatalogState`].
///
/// The node's Raft id is `node_id(name, incarnation)`. The incarnation is chosen the first
/// time a data directory is used (Unix milliseconds above 20 random bits, and above the
/// highest incarnation of this name that the reachable peers record, so a later directory
/// gets a higher one even if the clock went back) and stored in it (file `incarnation`). A node
/// that lost its directory therefore comes back under a new Raft id and never claims
/// the votes or log of its former self; it joins again as a new member (a newer
/// [`Command::Join`] incarnation replaces the old member record).
///
/// Only the first voter by name, and only with a completely fresh directory, calls
/// Raft's `initialize`, while its view of the members is complete (always, for a fixed
/// list; see [`Discovered::complete`]), after every initial voter answered and none
/// reported being part of an initialized cluster. Restarts never initialize.
///
/// # Example
///
/// ```no_run
/// use repliq_catalog::{Catalog, CatalogConfig, Command};
///
/// # async fn run() -> Result<(), repliq_catalog::CatalogError> {
/// let peers = vec![
///     ("a".to_string(), "10.0.0.1:31337".to_string()),
///     ("b".to_string(), "10.0.0.2:31337".to_string()),
///     ("c".to_string(), "10.0.0.3:31337".to_string()),
/// ];
/// let cfg = CatalogConfig::new("a", "10.0.0.1:31337", "/var/lib/repliq/catalog", peers);
/// let catalog = Catalog::start(cfg).await?;
/// let resp = catalog
///     .propose(Command::SetLiveness { name: "b".into(), live: false })
///     .await?;
/// println!("{resp:?}, {} queues", catalog.state().queues.len());
/// catalog.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct Catalog {
    ctx: Arc<ServerContext>,
    node_id: NodeId,
    peers: Peers,
    initialized_here: Arc<AtomicBool>,
    log: LogStore,
    tasks: Vec<JoinHandle<()>>,
    /// The state machine's write gate (the log's is `log.write_gate()`).
    sm_gate: WriteGate,
}

impl Catalog {
    /// Opens the storage in `cfg.dir`, starts Raft, the server on `cfg.addr`, and the
    /// background tasks (bootstrap, join, membership upkeep).
    pub async fn start(cfg: CatalogConfig) -> Result<Catalog, CatalogError> {
        std::fs::create_dir_all(&cfg.dir).map_err(StoreError::io("create directory", &cfg.dir))?;
        let inc_path = cfg.dir.join(INCARNATION_FILE);
        let log = LogStore::open(&cfg.dir)?;
        let sm = StateMachineStore::open(&cfg.dir)?;
        let sm_gate = sm.write_gate();
        let has_snapshot = crate::storage::snapshot::snapshot_path(&cfg.dir).exists();
        let fresh = log.is_fresh() && !has_snapshot;
        let incarnation = match read_atomic::<u64>(&inc_path)? {
            Some(i) => i,
            None if fresh => {
                let known = known_incarnation(&cfg).await;
                let i = new_incarnation(known)?;
                write_atomic(&inc_path, &i)?;
                i
            }
            None => {
                return Err(CatalogError::Config(format!(
                    "{} has Raft state but no incarnation file",
                    cfg.dir.display()
                )))
            }
        };
        let id = node_id(&cfg.node_name, incarnation);
        let (emin, emax) = cfg.election_timeout_ms;
        let config = openraft::Config {
            cluster_name: "repliq-catalog".into(),
            election_timeout_min: emin,
            election_timeout_max: emax,
            heartbeat_interval: cfg.heartbeat_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
            max_in_snapshot_log_to_keep: cfg.logs_kept_after_snapshot,
            purge_batch_size: 1,
            ..Default::default()
        }
        .validate()
        .map_err(|e| CatalogError::Config(e.to_string()))?;
        let peers = match &cfg.discovered {
            Some(rx) => Peers::new(rx.clone(), &cfg.node_name, &cfg.addr),
            None => Peers::fixed(cfg.peers.clone(), &cfg.node_name, &cfg.addr),
        };
        let network = Network {
            peers: cfg.discovered.is_some().then(|| peers.clone()),
            dialer: cfg.dialer.clone(),
        };
        let raft = Raft::new(id, Arc::new(config), network, log.clone(), sm.clone())
            .await
            .map_err(|e| CatalogError::Raft(e.to_string()))?;
        let listener = if cfg.own_listener {
            Some(bind(&cfg.addr).await?)
        } else {
            None
        };
        let ctx = Arc::new(ServerContext {
            raft,
            sm,
            name: cfg.node_name.clone(),
            addr: cfg.addr.clone(),
            incarnation,
            dialer: cfg.dialer.clone(),
        });
        let initialized_here = Arc::new(AtomicBool::new(false));
        tracing::info!(name = %cfg.node_name, id, incarnation, fresh, "catalog starting");
        let mut tasks = Vec::new();
        if let Some(l) = listener {
            tasks.push(tokio::spawn(listen(l, ctx.clone())));
        }
        tasks.extend([
            tokio::spawn(bootstrap_and_join(
                ctx.clone(),
                id,
                peers.clone(),
                fresh,
                initialized_here.clone(),
            )),
            tokio::spawn(upkeep(ctx.clone(), id)),
        ]);
        Ok(Catalog {
            ctx,
            node_id: id,
            peers,
            initialized_here,
            log,
            tasks,
            sm_gate,
        })
    }

    /// Proposes `cmd`: sends it to the leader (following redirects) and waits until it is
    /// committed and applied there. A rejection by the state machine is an `Ok`
    /// [`Response::Rejected`].
    ///
    /// If the connection to the leader fails after the request was sent, the outcome is
    /// unknown and an error is returned (the command may have been applied).
    pub async fn propose(&self, cmd: Command) -> Result<Response, CatalogError> {
        match forward(
            &self.ctx,
            self.node_id,
            &self.peers,
            RpcRequest::Propose(cmd),
            false,
        )
        .await?
        {
            RpcReply::Propose(Ok(r)) => Ok(r),
            _ => Err(CatalogError::Wire(WireError::Unexpected)),
        }
    }

    /// A linearizable read of the catalog, served by the leader after it confirmed its
    /// leadership and applied everything committed before the call.
    pub async fn read(&self) -> Result<CatalogState, CatalogError> {
        let req = RpcRequest::Read { linearizable: true };
        match forward(&self.ctx, self.node_id, &self.peers, req, true).await? {
            RpcReply::Read(Ok(s)) => Ok(s),
            _ => Err(CatalogError::Wire(WireError::Unexpected)),
        }
    }

    /// The last state applied on this node (possibly behind the leader). Cheap.
    pub fn state(&self) -> Arc<CatalogState> {
        self.ctx.sm.state()
    }

    /// A receiver of every state applied on this node.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CatalogState>> {
        self.ctx.sm.subscribe()
    }

    /// This node's Raft view.
    pub fn metrics(&self) -> CatalogMetrics {
        let m = self.ctx.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let name_of = |id: NodeId| {
            membership
                .get_node(&id)
                .map(|n| n.name.clone())
                .unwrap_or_else(|| format!("#{id}"))
        };
        let voter_ids: Vec<NodeId> = membership.voter_ids().collect();
        let mut voters: Vec<String> = voter_ids.iter().copied().map(name_of).collect();
        voters.sort();
        CatalogMetrics {
            term: m.current_term,
            commit_index: m.last_applied.map(|l| l.index),
            leader: m.current_leader.map(name_of),
            voters,
            voter_ids,
        }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.ctx.name
    }

    /// This node's Raft id: `node_id(name, incarnation)`.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.ctx.incarnation
    }

    /// Whether this process called Raft's `initialize` (only ever on a fresh directory).
    pub fn initialized_here(&self) -> bool {
        self.initialized_here.load(Ordering::SeqCst)
    }

    /// The context to serve catalog connections accepted elsewhere (for example on a
    /// port shared with the data protocol) with [`serve_connection`](crate::serve_connection).
    pub fn server_context(&self) -> Arc<ServerContext> {
        self.ctx.clone()
    }

    /// The Raft log store (for inspection).
    pub fn log_store(&self) -> &LogStore {
        &self.log
    }

    /// Stops the server and background tasks, and shuts Raft down.
    pub async fn shutdown(mut self) -> Result<(), CatalogError> {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let r = self
            .ctx
            .raft
            .shutdown()
            .await
            .map_err(|e| CatalogError::Raft(e.to_string()));
        // Writes Raft started may outlive its core (blocking threads, the
        // snapshot task): wait for them, and refuse any later one.
        self.log.write_gate().close().await;
        self.sm_gate.close().await;
        r
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How long a fresh node asks its peers for its former incarnation
/// ([`known_incarnation`]) before it chooses one.
const ASK_PEERS_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// The highest incarnation that the peers' catalogs reachable within
/// [`ASK_PEERS_FOR`] record for this node's name (0 if none answers or none
/// knows it). Each is asked for its own copy of the catalog (a stale read is
/// enough: a higher answer from any of them only raises the choice).
///
/// A node that lost its data directory comes back fresh and must join under a
/// higher incarnation than its former self, or the catalog refuses its `Join`
/// and still counts its lost copies. The wall clock alone does not promise
/// that: the former directory may have been made while the clock was fast.
async fn known_incarnation(cfg: &CatalogConfig) -> u64 {
    let peers: Vec<(String, String)> = match &cfg.discovered {
        Some(rx) => rx.borrow().members.clone(),
        None => cfg.peers.clone(),
    };
    let mut asks = tokio::task::JoinSet::new();
    for (name, addr) in peers.into_iter().filter(|(n, _)| *n != cfg.node_name) {
        let dialer = cfg.dialer.clone();
        let me = cfg.node_name.clone();
        asks.spawn(async move {
            let mut client = crate::network::PeerClient::with_dialer(addr, Some(name), dialer);
            match client
                .call(
                    &RpcRequest::Read {
                        linearizable: false,
                    },
                    ASK_PEERS_FOR,
                )
                .await
            {
                Ok(RpcReply::Read(Ok(state))) => {
                    state.members.get(&me).map_or(0, |m| m.incarnation)
                }
                _ => 0,
            }
        });
    }
    let mut known = 0;
    let deadline = tokio::time::Instant::now() + ASK_PEERS_FOR;
    while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, asks.join_next()).await {
        known = known.max(answer.unwrap_or(0));
    }
    known
}

/// A new incarnation above `known` (the highest the peers record for this node): Unix
/// time in milliseconds in the high bits, 20 random bits below, so that a directory
/// created later gets a higher incarnation (a `Join` with a lower one is rejected) and
/// two directories created in the same millisecond still differ. Where the clock is
/// behind `known` (it was fast when the former directory was made, or it went back),
/// the high bits are `known`'s plus one.
fn new_incarnation(known: u64) -> Result<u64, CatalogError> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| CatalogError::Config(format!("clock before 1970: {e}")))?
        .as_millis() as u64;
    let random =
        getrandom::u64().map_err(|e| CatalogError::Config(format!("random incarnation: {e}")))?;
    Ok(incarnation_above(millis, known, random))
}

/// The incarnation for a directory made at `millis` with `random` low bits, above
/// `known`.
fn incarnation_above(millis: u64, known: u64, random: u64) -> u64 {
    let high = millis.max((known >> 20).saturating_add(1));
    (high << 20) | (random & 0xf_ffff)
}

async fn bind(addr: &str) -> Result<TcpListener, CatalogError> {
    let sa = tokio::net::lookup_host(addr)
        .await
        .map_err(WireError::Io)?
        .next()
        .ok_or_else(|| CatalogError::Config(format!("{addr} resolves to nothing")))?;
    let socket = if sa.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(WireError::Io)?;
    socket.set_reuseaddr(true).map_err(WireError::Io)?;
    socket.bind(sa).map_err(WireError::Io)?;
    Ok(socket.listen(1024).map_err(WireError::Io)?)
}

#[cfg(test)]
mod incarnation_tests {
    use super::incarnation_above;

    #[test]
    fn an_incarnation_is_above_the_known_one_even_when_the_clock_is_behind_it() {
        let now = 1_800_000_000_000u64;
        let fast = (now + 3_600_000) << 20 | 0xf_ffff;
        for random in [0, 1, 0xf_ffff, u64::MAX] {
            assert!(incarnation_above(now, fast, random) > fast);
            assert!(incarnation_above(now, 0, random) >> 20 == now);
            let slow = (now - 5) << 20 | 7;
            assert_eq!(incarnation_above(now, slow, random) >> 20, now);
        }
    }
}
