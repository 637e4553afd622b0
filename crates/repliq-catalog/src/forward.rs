//! Sending proposals and reads to the Raft leader, following redirects.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::CatalogError;
use crate::network::{CallError, PeerClient, RPC_TIMEOUT};
use crate::peers::Peers;
use crate::server::ServerContext;
use crate::types::{CatalogNode, NodeId};
use crate::wire::{ForwardError, RpcReply, RpcRequest};

/// How long [`Catalog::propose`](crate::Catalog::propose) and
/// [`Catalog::read`](crate::Catalog::read) keep looking for a leader.
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(15);

fn leader_hint(e: &ForwardError) -> Option<(Option<NodeId>, Option<CatalogNode>)> {
    match e {
        ForwardError::ForwardToLeader { leader_id, leader } => Some((*leader_id, leader.clone())),
        ForwardError::Failed(_) => None,
    }
}

/// Sends `req` to the leader: locally if this node leads, else to the leader it knows,
/// else to the peers in turn, following `ForwardToLeader` answers, until
/// [`FORWARD_DEADLINE`]. Retries after a failed connect; after a failure mid-call only
/// if `idempotent`.
pub(crate) async fn forward(
    ctx: &ServerContext,
    self_id: NodeId,
    peers: &Peers,
    req: RpcRequest,
    idempotent: bool,
) -> Result<RpcReply, CatalogError> {
    let start = Instant::now();
    let mut rotate = 0usize;
    let mut clients: HashMap<String, PeerClient> = HashMap::new();
    let mut hint: Option<String> = None;
    let mut last_err = String::from("no attempt");
    let pause = Duration::from_millis(100);
    loop {
        if start.elapsed() > FORWARD_DEADLINE {
            return Err(CatalogError::NoLeader(last_err));
        }
        // Re-read each round: discovery may have found members since.
        let others: Vec<String> = peers
            .list()
            .into_iter()
            .filter(|(n, _)| *n != ctx.name)
            .map(|(_, a)| a)
            .collect();
        // Where to send: a redirect, else the leader we know, else a peer in turn.
        let target: Option<String> = match hint.take() {
            Some(h) => Some(h),
            None => {
                let m = ctx.raft.metrics().borrow().clone();
                match m.current_leader {
                    Some(l) if l == self_id => None,
                    Some(l) => m
                        .membership_config
                        .membership()
                        .get_node(&l)
                        .map(|n| peers.addr_of(&n.name).unwrap_or_else(|| n.addr.clone())),
                    None if m
                        .membership_config
                        .membership()
                        .voter_ids()
                        .next()
                        .is_some() =>
                    {
                        // Known cluster, election under way.
                        last_err = "election under way".into();
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    None if others.is_empty() => None,
                    None => {
                        rotate += 1;
                        Some(others[rotate % others.len()].clone())
                    }
                }
            }
        };
        let reply = match target {
            None => ctx.handle(clone_req(&req)).await,
            Some(addr) => {
                let client = clients.entry(addr.clone()).or_insert_with(|| {
                    PeerClient::with_dialer(addr.clone(), None, ctx.dialer.clone())
                });
                match client.call(&req, RPC_TIMEOUT).await {
                    Ok(r) => r,
                    Err(e @ CallError::Connect { .. }) => {
                        last_err = e.to_string();
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    Err(e) if idempotent => {
                        last_err = e.to_string();
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    Err(CallError::Call { source, .. }) => return Err(CatalogError::Wire(source)),
                }
            }
        };
        let err = match &reply {
            RpcReply::Propose(Err(e)) | RpcReply::Read(Err(e)) => e.clone(),
            _ => return Ok(reply),
        };
        last_err = err.to_string();
        match leader_hint(&err) {
            Some((Some(id), _)) if id == self_id => {} // next round goes local
            Some((_, Some(node))) => {
                hint = Some(peers.addr_of(&node.name).unwrap_or(node.addr));
                continue;
            }
            _ => tokio::time::sleep(pause).await,
        }
    }
}

fn clone_req(req: &RpcRequest) -> RpcRequest {
    match req {
        RpcRequest::Propose(c) => RpcRequest::Propose(c.clone()),
        RpcRequest::Read { linearizable } => RpcRequest::Read {
            linearizable: *linearizable,
        },
        // forward() is only used with Propose and Read.
        _ => RpcRequest::Identify,
    }
}
