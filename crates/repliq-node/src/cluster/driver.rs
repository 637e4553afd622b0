//! One task per queue this node replicates: lead it or follow its leader,
//! as the catalog says, and switch when that changes.
//!
//! Leading: the follower (if any) is stopped first, so nothing else writes
//! the log; the catalog's epoch is started in the store if it is newer
//! ([`Store::begin_epoch`], with the role [`Role::Changing`], so no local
//! writer stamps an old epoch after the new epoch's start: they wait); then
//! the role becomes primary and secondaries are served. Without a valid
//! lease the role turns changing: local writers wait, bounded, for the
//! lease to return or for a new leader (then they get errors).
//!
//! Following: the role is secondary in every process, and a follower keeps
//! a session with the leader's address; the leader's answer decides where
//! the log resumes, truncating a divergent suffix into quarantine
//! (`docs/protocol.md`). A local copy of another history (another queue id,
//! e.g. a queue created under the same name on two nodes at once) is moved
//! aside to `.conflict-{name}-{unix_ms}` in the persistence path, never
//! deleted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use repliq::replication::follower;
use repliq::replication::SecondaryConfig;
use repliq::store::{Role, Store, StoreOptions};
use repliq_catalog::{Catalog, CatalogState, QueueEntry};
use tokio::task::JoinHandle;

use crate::cluster::lease::Lease;
use crate::state::{QueueState, Shared};

/// Keeps one driver running per queue whose replicas include this node.
pub async fn run_all(shared: Arc<Shared>, catalog: Arc<Catalog>, lease: Arc<Lease>) {
    let me = shared.cfg.node_name.clone();
    let mut rx = catalog.subscribe();
    let mut drivers: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        let state = catalog.state();
        for (name, e) in &state.queues {
            if e.replicas.contains(&me) && !drivers.contains_key(name) {
                tracing::info!(queue = %name, leader = ?e.leader, epoch = e.epoch, "replicating queue");
                drivers.insert(
                    name.clone(),
                    tokio::spawn(drive(
                        shared.clone(),
                        catalog.clone(),
                        lease.clone(),
                        name.clone(),
                    )),
                );
            }
        }
        drivers.retain(|name, t| {
            let keep = state
                .queues
                .get(name)
                .is_some_and(|e| e.replicas.contains(&me));
            if !keep {
                t.abort();
            }
            keep
        });
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// A running follower of one leader address.
struct Follower {
    addr: String,
    task: JoinHandle<()>,
}

impl Follower {
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn drive(shared: Arc<Shared>, catalog: Arc<Catalog>, lease: Arc<Lease>, name: String) {
    let me = shared.cfg.node_name.clone();
    let dir = shared.cfg.path.join(&name);
    let q = shared.get_or_insert(&name, || {
        QueueState::cluster(
            &shared.cfg,
            &name,
            !dir.join(repliq::store::layout::CONTROL_FILE).is_file(),
        )
    });
    let mut rx = catalog.subscribe();
    let mut follower: Option<Follower> = None;
    let mut opened = false;
    let mut transfer: Option<Transfer> = None;
    let mut hinted: Option<u32> = None;
    let timeout = Duration::from_millis(
        shared
            .cfg
            .cluster
            .as_ref()
            .map_or(3000, |c| c.failover_timeout_ms),
    );
    loop {
        let state = catalog.state();
        let Some(e) = state.queues.get(&name).cloned() else {
            if let Some(f) = follower.take() {
                f.stop().await;
            }
            return;
        };
        if let Ok(mut l) = q.leader.lock() {
            l.clone_from(&e.leader);
        }
        // Every change of leader comes with a new epoch (a leader removed
        // keeps the epoch but leaves no one to name).
        if hinted != Some(e.epoch) {
            // The hint a refused local append quotes (the leader to go to).
            if let (Some(l), Some(s)) = (&e.leader, q.store()) {
                match s.set_leader_hint(l, e.epoch) {
                    Ok(()) => hinted = Some(e.epoch),
                    Err(err) => tracing::debug!(queue = %name, "leader hint: {err}"),
                }
            }
        }
        if !opened {
            opened = true;
            open_existing(&shared, &q, &name, &e);
        }
        // The catalog names this node the leader, but its member record is
        // another incarnation: a former directory of this node, lost since
        // (its `Join` under the new one is not accepted yet, or was refused).
        // This directory does not hold that leader's log, so it neither
        // leads nor follows until the catalog knows it again.
        let former_self = state
            .members
            .get(&me)
            .is_some_and(|m| m.incarnation != catalog.incarnation());
        if e.leader.as_deref() == Some(me.as_str()) && former_self {
            if let Some(f) = follower.take() {
                f.stop().await;
            }
            transfer = None;
            fence(&q);
        } else if e.leader.as_deref() == Some(me.as_str()) {
            if let Some(f) = follower.take() {
                f.stop().await;
            }
            if let Some(to) = e.transfer_to.clone() {
                let t = transfer.get_or_insert_with(|| {
                    tracing::info!(queue = %name, %to, "planned transfer: appends paused until the target has caught up");
                    Transfer::start()
                });
                drain(&q);
                t.step(&catalog, &q, &e, &to, timeout).await;
            } else if lease.valid_as_of(state.reports.get(&me).copied()) {
                transfer = None;
                if let Err(err) = lead(&shared, &q, &e, &lease) {
                    tracing::error!(queue = %name, "cannot lead: {err}");
                    fence(&q);
                }
            } else {
                transfer = None;
                hold(&q);
            }
        } else {
            if let Some(t) = transfer.take() {
                tracing::info!(queue = %name, leader = ?e.leader, pause_ms = t.started.elapsed().as_millis() as u64, "planned transfer done: following the new leader");
            }
            fence(&q);
            let addr = e
                .leader
                .as_ref()
                .and_then(|l| state.members.get(l))
                .map(|m| m.addr.clone());
            if follower.as_ref().map(|f| &f.addr) != addr.as_ref() {
                if let Some(f) = follower.take() {
                    f.stop().await;
                }
                if let Some(addr) = addr {
                    tracing::info!(queue = %name, leader = ?e.leader, %addr, epoch = e.epoch, "following");
                    follower = Some(Follower {
                        task: tokio::spawn(follow(
                            shared.clone(),
                            q.clone(),
                            name.clone(),
                            addr.clone(),
                            e.leader.clone(),
                        )),
                        addr,
                    });
                }
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = lease.regained() => {}
        }
    }
}

/// Opens the local copy at the driver's start (so recovery runs before any
/// other handle of this process exists), moving aside a copy of another
/// history.
fn open_existing(shared: &Shared, q: &QueueState, name: &str, e: &QueueEntry) {
    if !q.dir.join(repliq::store::layout::CONTROL_FILE).is_file() {
        q.may_open.store(true, Ordering::Release);
        return;
    }
    match Store::open(&q.dir, &StoreOptions::open()) {
        Ok(s) if s.queue_id() == e.queue_id => {
            if e.leader.as_deref() != Some(shared.cfg.node_name.as_str()) {
                s.set_role(Role::Secondary);
            }
            if let Ok(mut g) = q.store.lock() {
                *g = Some(s);
            }
        }
        Ok(s) => {
            drop(s);
            set_aside(
                shared,
                q,
                name,
                "it holds another history of the queue (another queue id)",
            );
        }
        Err(err) => {
            set_aside(shared, q, name, &format!("it cannot be opened: {err}"));
        }
    }
    q.may_open.store(true, Ordering::Release);
}

fn set_aside(shared: &Shared, q: &QueueState, name: &str, why: &str) {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let to = shared.cfg.path.join(format!(".conflict-{name}-{ms}"));
    match std::fs::rename(&q.dir, &to) {
        Ok(()) => {
            tracing::warn!(queue = %name, moved_to = %to.display(), "local copy moved aside: {why}")
        }
        Err(err) => {
            tracing::error!(queue = %name, "cannot move the local copy aside ({why}): {err}")
        }
    }
}

/// Makes this node the queue's leader in the store: the catalog's epoch,
/// the lease deadline, then the primary role.
fn lead(shared: &Shared, q: &QueueState, e: &QueueEntry, lease: &Lease) -> Result<(), String> {
    let s = match q.store() {
        Some(s) => s,
        None => {
            let st = &e.settings;
            let s = Store::open(
                &q.dir,
                &StoreOptions::create()
                    .queue_id(e.queue_id)
                    .capacity(st.capacity)
                    .segment_size(st.segment_size)
                    .durability(match st.durability {
                        repliq_catalog::Durability::None => repliq::store::Durability::None,
                        repliq_catalog::Durability::Batch => repliq::store::Durability::Batch,
                        repliq_catalog::Durability::Sync => repliq::store::Durability::Always,
                    }),
            )
            .map_err(|err| err.to_string())?;
            if let Ok(mut g) = q.store.lock() {
                *g = Some(s.clone());
            }
            s
        }
    };
    if s.queue_id() != e.queue_id {
        return Err("the local copy holds another queue id".into());
    }
    if s.epoch() < e.epoch {
        s.set_role(Role::Changing);
        let start = s.begin_epoch(e.epoch).map_err(|err| err.to_string())?;
        tracing::info!(queue = %e.name, epoch = e.epoch, start, node = %shared.cfg.node_name, "leading the queue");
    }
    // The lease word first: writers of every process stop at its deadline
    // even if this daemon stops renewing it (SIGSTOP, a crash).
    if let Some(until) = lease.deadline_ns() {
        s.set_lease_until(until);
    }
    // What a synchronous enqueue of the founding API waits for here.
    let acks = match e.settings.mode {
        repliq_catalog::ReplicationMode::Sync => {
            u32::try_from(shared.cfg.min_acks).unwrap_or(u32::MAX)
        }
        repliq_catalog::ReplicationMode::Async => 0,
    };
    if s.sync_acks() != acks {
        s.set_sync_acks(acks);
    }
    if s.role() != Role::Primary {
        s.set_read_only(false);
        s.set_role(Role::Primary);
    }
    q.leading.store(true, Ordering::Release);
    Ok(())
}

/// A planned transfer away from this node, in progress.
struct Transfer {
    started: std::time::Instant,
    /// The write position at the previous step: the log must stand still
    /// for a step (no late writer) before the target is elected.
    last_tail: Option<u64>,
    proposed: bool,
}

impl Transfer {
    fn start() -> Transfer {
        Transfer {
            started: std::time::Instant::now(),
            last_tail: None,
            proposed: false,
        }
    }

    /// Elects `to` once it holds the whole (still) log; gives up after
    /// `timeout`.
    async fn step(
        &mut self,
        catalog: &Catalog,
        q: &QueueState,
        e: &QueueEntry,
        to: &str,
        timeout: Duration,
    ) {
        if self.proposed {
            return;
        }
        let Some(s) = q.store() else { return };
        let tail = s.tail_position();
        let acked = s
            .peer_links()
            .iter()
            .find(|l| l.node == to)
            .map(|l| l.acked);
        let still = self.last_tail == Some(tail);
        self.last_tail = Some(tail);
        if still && acked == Some(tail) {
            let cmd = repliq_catalog::Command::ElectLeader {
                queue: e.name.clone(),
                new_leader: to.to_string(),
                expected_epoch: e.epoch,
                first_id: tail,
                unclean: false,
            };
            match catalog.propose(cmd).await {
                Ok(repliq_catalog::Response::Queue(n)) => {
                    self.proposed = true;
                    tracing::info!(queue = %e.name, %to, epoch = n.epoch, "planned transfer: target caught up and elected");
                }
                other => {
                    tracing::warn!(queue = %e.name, "planned transfer: election refused: {other:?}")
                }
            }
        } else if self.started.elapsed() > timeout {
            tracing::warn!(queue = %e.name, %to, tail, acked = ?acked, "planned transfer: the target did not catch up; cancelled");
            let cmd = repliq_catalog::Command::CancelTransfer {
                queue: e.name.clone(),
                epoch: e.epoch,
            };
            if catalog.propose(cmd).await.is_ok() {
                self.proposed = true;
            }
        }
    }
}

/// Pauses appends while this node still serves the queue's followers (a
/// planned transfer).
fn drain(q: &QueueState) {
    q.leading.store(true, Ordering::Release);
    if let Some(s) = q.store.lock().ok().and_then(|g| g.clone()) {
        if s.role() == Role::Primary {
            s.set_role(Role::Changing);
        }
    }
}

/// Holds appends here while this node is the catalog's leader of the queue
/// but cannot take them yet (no valid lease): they wait, bounded, for the
/// lease (the role turns primary) or a new leader (it turns secondary).
fn hold(q: &QueueState) {
    q.leading.store(false, Ordering::Release);
    if let Some(s) = q.store.lock().ok().and_then(|g| g.clone()) {
        if s.role() == Role::Primary || s.role() == Role::Standalone {
            s.set_role(Role::Changing);
            tracing::warn!(queue = %q.dir.display(), "appends held here: this node leads the queue but holds no valid lease");
        }
    }
}

/// Stops accepting appends on the queue here (not leading, or no lease).
fn fence(q: &QueueState) {
    q.leading.store(false, Ordering::Release);
    if let Some(s) = q.store.lock().ok().and_then(|g| g.clone()) {
        if s.role() != Role::Secondary {
            s.set_role(Role::Secondary);
            tracing::warn!(queue = %q.dir.display(), "appends refused here: not the leader, or the lease lapsed");
        }
    }
}

/// Follows the leader at `addr` (the member `leader`) until aborted.
async fn follow(
    shared: Arc<Shared>,
    q: Arc<QueueState>,
    name: String,
    addr: String,
    leader: Option<String>,
) {
    let cfg = &shared.cfg;
    let mut sc = SecondaryConfig::new(&cfg.node_name, &name, &q.dir, &addr);
    sc.timeout = cfg.timeout();
    sc.backoff_min = Duration::from_millis(50);
    sc.backoff_max = Duration::from_secs(1);
    let Some(status) = q.status.clone() else {
        return;
    };
    let store = q.store.lock().ok().and_then(|g| g.clone());
    follower::follow_loop(
        sc,
        status,
        store,
        // Sessions end at every change of leader: the driver logs those.
        follower::Quiet::Yes,
        move || Some(addr.clone()),
        crate::run::NodeSession {
            shared: shared.clone(),
            leader,
        },
        move |s| crate::run::share_store(&q, s),
    )
    .await
}

/// The state's leader of `queue`, for callers outside the drivers.
pub fn leader_of(state: &CatalogState, queue: &str) -> Option<String> {
    state.queues.get(queue).and_then(|e| e.leader.clone())
}
