//! The catalog server: answers Raft RPCs, proposals, reads and identity requests.

use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::error::WireError;
use crate::storage::StateMachineStore;
use crate::types::Raft;
use crate::wire::{
    read_frame, read_magic, read_version, write_frame, ForwardError, Identity, RpcReply, RpcRequest,
};

/// What a server needs to answer requests: the local Raft, the state machine, and who
/// this node is. Obtained from [`Catalog::server_context`](crate::Catalog::server_context).
#[derive(Clone)]
pub struct ServerContext {
    pub(crate) raft: Raft,
    pub(crate) sm: StateMachineStore,
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) incarnation: u64,
    pub(crate) dialer: crate::network::Dialer,
}

/// Decides whether the authenticated peer of a connection (with TLS: the
/// names in its certificate) may act as the member named.
pub type PeerCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl ServerContext {
    /// The member a request claims to come from: the sender of a Raft RPC
    /// (by its id in the current membership) or the node a `Join` names.
    fn claimed_member(&self, req: &RpcRequest) -> Option<String> {
        let sender = match req {
            RpcRequest::AppendEntries { rpc, .. } => rpc.vote.leader_id().voted_for(),
            RpcRequest::Vote { rpc, .. } => rpc.vote.leader_id().voted_for(),
            RpcRequest::InstallSnapshot { rpc, .. } => rpc.vote.leader_id().voted_for(),
            RpcRequest::Propose(crate::command::Command::Join { name, .. }) => {
                return Some(name.clone())
            }
            _ => None,
        }?;
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .get_node(&sender)
            .map(|n| n.name.clone())
    }

    /// Answers one request locally.
    pub(crate) async fn handle(&self, req: RpcRequest) -> RpcReply {
        let me = crate::types::node_id(&self.name, self.incarnation);
        match req {
            RpcRequest::AppendEntries { to, .. }
            | RpcRequest::Vote { to, .. }
            | RpcRequest::InstallSnapshot { to, .. }
                if to != me =>
            {
                RpcReply::WrongNode(me)
            }
            RpcRequest::AppendEntries { rpc, .. } => {
                RpcReply::AppendEntries(self.raft.append_entries(rpc).await)
            }
            RpcRequest::Vote { rpc, .. } => RpcReply::Vote(self.raft.vote(rpc).await),
            RpcRequest::InstallSnapshot { rpc, .. } => {
                RpcReply::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            RpcRequest::Propose(cmd) => {
                RpcReply::Propose(match self.raft.client_write(cmd).await {
                    Ok(r) => Ok(r.data),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        Err(ForwardError::ForwardToLeader {
                            leader_id: f.leader_id,
                            leader: f.leader_node,
                        })
                    }
                    Err(e) => Err(ForwardError::Failed(e.to_string())),
                })
            }
            RpcRequest::Read { linearizable } => {
                if linearizable {
                    match self.raft.ensure_linearizable().await {
                        Ok(_) => {}
                        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                            return RpcReply::Read(Err(ForwardError::ForwardToLeader {
                                leader_id: f.leader_id,
                                leader: f.leader_node,
                            }))
                        }
                        Err(e) => return RpcReply::Read(Err(ForwardError::Failed(e.to_string()))),
                    }
                }
                RpcReply::Read(Ok((*self.sm.state()).clone()))
            }
            RpcRequest::Identify => RpcReply::Identify(Identity {
                name: self.name.clone(),
                addr: self.addr.clone(),
                incarnation: self.incarnation,
                node_id: me,
                initialized: self.raft.is_initialized().await.unwrap_or(false),
            }),
        }
    }
}

/// Serves one catalog connection whose magic (`b"RQCL"`) the caller has already read:
/// reads the version, then answers request frames in order until the peer closes.
pub async fn serve_connection<S>(stream: S, ctx: Arc<ServerContext>) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_connection_checked(stream, ctx, None).await
}

/// [`serve_connection`], checking with `check` every member a request
/// claims to come from (the sender of a Raft RPC, the node of a `Join`):
/// a claim it refuses ends the connection with [`WireError::Identity`]
/// before the request is handled.
pub async fn serve_connection_checked<S>(
    stream: S,
    ctx: Arc<ServerContext>,
    check: Option<PeerCheck>,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (r, w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut w = BufWriter::new(w);
    read_version(&mut r).await?;
    while let Some(req) = read_frame::<_, RpcRequest>(&mut r).await? {
        if let Some(check) = &check {
            if let Some(claimed) = ctx.claimed_member(&req) {
                if !check(&claimed) {
                    return Err(WireError::Identity(format!(
                        "the peer's certificate does not name member {claimed:?}"
                    )));
                }
            }
        }
        let reply = ctx.handle(req).await;
        write_frame(&mut w, &reply).await?;
    }
    Ok(())
}

/// Accepts connections on `listener` forever, reads the magic of each, and serves the
/// catalog ones; others are closed. Connection tasks end when this future is dropped.
pub async fn listen(listener: TcpListener, ctx: Arc<ServerContext>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "catalog accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                conns.spawn(async move {
                    if let Err(e) = read_magic(&mut stream).await {
                        tracing::debug!(%peer, error = %e, "not a catalog connection");
                        return;
                    }
                    if let Err(e) = serve_connection(stream, ctx).await {
                        tracing::debug!(%peer, error = %e, "catalog connection ended");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
