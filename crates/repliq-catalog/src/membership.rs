//! Cluster formation and upkeep: the one-time `initialize`, each node's `Join`, and the
//! leader's alignment of the Raft membership with the catalog's members.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;

use crate::command::{Command, Response};
use crate::forward::forward;
use crate::network::{PeerClient, RPC_TIMEOUT};
use crate::peers::Peers;
use crate::server::ServerContext;
use crate::types::{node_id, CatalogNode, NodeId};
use crate::voters::voters;
use crate::wire::{RpcReply, RpcRequest};

/// On a fresh node, initializes the cluster if this node is the first voter of the
/// complete membership; meanwhile (and on a restart, only) proposes this node's `Join`.
pub(crate) async fn bootstrap_and_join(
    ctx: Arc<ServerContext>,
    self_id: NodeId,
    peers: Peers,
    fresh: bool,
    initialized_here: Arc<AtomicBool>,
) {
    if fresh {
        tokio::join!(
            initialize(&ctx, self_id, peers.clone(), &initialized_here),
            join(&ctx, self_id, &peers)
        );
    } else {
        join(&ctx, self_id, &peers).await;
    }
}

/// Proposes this node's `Join` until the catalog's leader commits (or rejects) it.
async fn join(ctx: &ServerContext, self_id: NodeId, peers: &Peers) {
    let join = Command::Join {
        name: ctx.name.clone(),
        addr: ctx.addr.clone(),
        incarnation: ctx.incarnation,
    };
    loop {
        let req = RpcRequest::Propose(join.clone());
        match forward(ctx, self_id, peers, req, false).await {
            Ok(RpcReply::Propose(Ok(Response::Rejected(r)))) => {
                tracing::error!(rejection = %r, "join rejected");
                return;
            }
            Ok(_) => {
                tracing::info!(name = %ctx.name, "joined the catalog");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "join not yet accepted");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Initializes the cluster once this node's view of the members is complete and this
/// node is its first voter by name, after every initial voter answered that it is not
/// in a cluster. Returns when this node is in a cluster (initialized here, or added by
/// the leader after its `Join`), or when a voter is already in one.
async fn initialize(
    ctx: &ServerContext,
    self_id: NodeId,
    mut peers: Peers,
    initialized_here: &AtomicBool,
) {
    let mut clients: HashMap<String, PeerClient> = HashMap::new();
    let mut said_waiting = false;
    loop {
        if ctx.raft.is_initialized().await.unwrap_or(true) {
            return; // joined by someone else, or shutting down
        }
        let list = peers.list();
        if !peers.complete() {
            if !said_waiting {
                said_waiting = true;
                tracing::info!(
                    known = ?list.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    "catalog: waiting for the expected members before deciding who initializes"
                );
            }
            peers.changed_or(Duration::from_millis(500)).await;
            continue;
        }
        let names: Vec<String> = list.iter().map(|(n, _)| n.clone()).collect();
        let initial = voters(&names);
        if initial.first() != Some(&ctx.name) {
            // Another node initializes; this one joins (see `join`).
            peers.changed_or(Duration::from_millis(500)).await;
            continue;
        }
        let mut members = BTreeMap::new();
        let mut complete = true;
        for name in &initial {
            if *name == ctx.name {
                members.insert(
                    self_id,
                    CatalogNode {
                        name: ctx.name.clone(),
                        addr: ctx.addr.clone(),
                    },
                );
                continue;
            }
            let Some((_, addr)) = list.iter().find(|(n, _)| n == name) else {
                complete = false;
                continue;
            };
            let client = clients.entry(addr.clone()).or_insert_with(|| {
                PeerClient::with_dialer(addr.clone(), Some(name.clone()), ctx.dialer.clone())
            });
            match client.call(&RpcRequest::Identify, RPC_TIMEOUT).await {
                Ok(RpcReply::Identify(id)) if id.name == *name => {
                    if id.initialized {
                        tracing::warn!(peer = %name, "a peer is already in a cluster; not initializing");
                        return;
                    }
                    members.insert(
                        id.node_id,
                        CatalogNode {
                            name: id.name,
                            addr: addr.clone(),
                        },
                    );
                }
                Ok(_) => complete = false,
                Err(e) => {
                    tracing::debug!(peer = %name, error = %e, "waiting for initial voter");
                    complete = false;
                }
            }
        }
        if complete {
            match ctx.raft.initialize(members.clone()).await {
                Ok(()) => {
                    tracing::info!(voters = ?members, "initialized the catalog cluster");
                    initialized_here.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "initialize failed");
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// On the leader, keeps the Raft membership in line with the catalog's members:
///
/// 1. every member (current incarnation) is added as a learner;
/// 2. a voter whose member re-joined under a new incarnation (lost directory) is replaced
///    by the new id once that is a learner (one joint-consensus change);
/// 3. learners of superseded incarnations are removed;
/// 4. while there are fewer than 3 voters, learners picked by [`voters`] are promoted,
///    keeping the count odd.
///
/// Voters are otherwise never removed or demoted.
pub(crate) async fn upkeep(ctx: Arc<ServerContext>, self_id: NodeId) {
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    loop {
        tick.tick().await;
        let m = ctx.raft.metrics().borrow().clone();
        if m.current_leader != Some(self_id) {
            continue;
        }
        let membership = m.membership_config.membership().clone();
        let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let state = ctx.sm.state();
        let current_id = |name: &str| {
            state
                .members
                .get(name)
                .map(|mem| node_id(&mem.name, mem.incarnation))
        };
        for mem in state.members.values() {
            let id = node_id(&mem.name, mem.incarnation);
            if !known.contains(&id) {
                let node = CatalogNode {
                    name: mem.name.clone(),
                    addr: mem.addr.clone(),
                };
                if let Err(e) = ctx.raft.add_learner(id, node, false).await {
                    tracing::debug!(error = %e, "add_learner");
                }
            }
        }

        // Superseded incarnations: (old id, new id if already a learner).
        let mut replaced = voter_ids.clone();
        let mut changed = false;
        let mut stale_learners = BTreeSet::new();
        for (id, node) in membership.nodes() {
            let Some(cur) = current_id(&node.name) else {
                continue;
            };
            if cur == *id {
                continue;
            }
            if voter_ids.contains(id) {
                if known.contains(&cur) && !voter_ids.contains(&cur) {
                    replaced.remove(id);
                    replaced.insert(cur);
                    changed = true;
                }
            } else {
                stale_learners.insert(*id);
            }
        }
        if changed {
            tracing::info!(voters = ?replaced, "replacing voters of superseded incarnations");
            if let Err(e) = ctx
                .raft
                .change_membership(ChangeMembers::ReplaceAllVoters(replaced), false)
                .await
            {
                tracing::debug!(error = %e, "replace voters");
            }
            continue;
        }
        if !stale_learners.is_empty() {
            if let Err(e) = ctx
                .raft
                .change_membership(ChangeMembers::RemoveNodes(stale_learners), false)
                .await
            {
                tracing::debug!(error = %e, "remove stale learners");
            }
            continue;
        }

        if voter_ids.len() >= 3 {
            continue;
        }
        let names: Vec<String> = state.members.keys().cloned().collect();
        let promote: BTreeSet<NodeId> = voters(&names)
            .iter()
            .filter_map(|n| current_id(n))
            .filter(|id| known.contains(id) && !voter_ids.contains(id))
            .collect();
        if !promote.is_empty() && (voter_ids.len() + promote.len()) % 2 == 1 {
            if let Err(e) = ctx
                .raft
                .change_membership(ChangeMembers::AddVoterIds(promote), false)
                .await
            {
                tracing::debug!(error = %e, "promote voters");
            }
        }
    }
}
