//! The client side of the catalog protocol: a connection to one peer, and openraft's
//! `RaftNetworkFactory` / `RaftNetwork` on top of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::io::{AsyncRead, AsyncWrite, BufStream};
use tokio::net::TcpStream;

use crate::error::WireError;
use crate::types::{CatalogNode, NodeId, TypeConfig};
use crate::wire::{read_frame, write_frame, write_preamble, RpcReply, RpcRequest};

/// Timeout for establishing a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default timeout for one request/response.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// An error of one call: whether the connection could not be made (nothing was sent)
/// or failed later (the request may have been processed).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Connecting failed or timed out; the request was not sent.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Peer address.
        addr: String,
        /// Cause.
        source: WireError,
    },
    /// The request or its reply failed.
    #[error("call {addr}: {source}")]
    Call {
        /// Peer address.
        addr: String,
        /// Cause.
        source: WireError,
    },
}

/// A byte stream a catalog connection runs on (plain TCP, TLS, ...).
pub trait CatalogStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> CatalogStream for T {}

/// A boxed [`CatalogStream`].
pub type BoxStream = Box<dyn CatalogStream>;

/// The future a [`Connector`] returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<BoxStream>> + Send + 'a>>;

/// How the catalog reaches a peer: plain TCP by default ([`TcpConnector`]);
/// the node supplies a TLS one. The catalog writes its preamble on the
/// stream returned.
pub trait Connector: std::fmt::Debug + Send + Sync + 'static {
    /// Connects to `addr` (`host:port`), the endpoint of the member `name`
    /// when the caller knows which member it expects there (a TLS connector
    /// checks the peer's certificate against it).
    fn connect<'a>(&'a self, addr: &'a str, name: Option<&'a str>) -> ConnectFuture<'a>;
}

/// A shared [`Connector`].
pub type Dialer = Arc<dyn Connector>;

/// Plain TCP, with `TCP_NODELAY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, addr: &'a str, _name: Option<&'a str>) -> ConnectFuture<'a> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// The default dialer: plain TCP.
pub fn tcp_dialer() -> Dialer {
    Arc::new(TcpConnector)
}

/// A (lazily connected, reused) connection to one peer's catalog endpoint.
pub struct PeerClient {
    addr: String,
    name: Option<String>,
    dialer: Dialer,
    conn: Option<BufStream<BoxStream>>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl PeerClient {
    /// A client for the peer at `addr` (`host:port`) over plain TCP; connects
    /// on first use.
    pub fn new(addr: impl Into<String>) -> PeerClient {
        PeerClient::with_dialer(addr, None, tcp_dialer())
    }

    /// A client for the peer at `addr`, expected to be the member `name` if
    /// given, connecting with `dialer`.
    pub fn with_dialer(
        addr: impl Into<String>,
        name: Option<String>,
        dialer: Dialer,
    ) -> PeerClient {
        PeerClient {
            addr: addr.into(),
            name,
            dialer,
            conn: None,
        }
    }

    async fn connect(&mut self) -> Result<&mut BufStream<BoxStream>, CallError> {
        if self.conn.is_none() {
            let addr = self.addr.clone();
            let err = |source| CallError::Connect {
                addr: addr.clone(),
                source,
            };
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                self.dialer.connect(&self.addr, self.name.as_deref()),
            )
            .await
            .map_err(|_| err(WireError::Timeout))?
            .map_err(|e| err(WireError::Io(e)))?;
            let mut s = BufStream::new(stream);
            write_preamble(&mut s).await.map_err(err)?;
            self.conn = Some(s);
        }
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(CallError::Connect {
                addr: self.addr.clone(),
                source: WireError::Unexpected,
            }),
        }
    }

    /// Sends `req` and waits for its reply, within `timeout`. On any error the
    /// connection is dropped, and the next call reconnects.
    pub async fn call(
        &mut self,
        req: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcReply, CallError> {
        let addr = self.addr.clone();
        let res = tokio::time::timeout(timeout, async {
            let conn = self.connect().await?;
            let io = async {
                write_frame(conn, req).await?;
                read_frame::<_, RpcReply>(conn)
                    .await?
                    .ok_or(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()))
            };
            io.await.map_err(|source| CallError::Call {
                addr: addr.clone(),
                source,
            })
        })
        .await
        .unwrap_or_else(|_| {
            Err(CallError::Call {
                addr: self.addr.clone(),
                source: WireError::Timeout,
            })
        });
        if res.is_err() {
            self.conn = None;
        }
        res
    }
}

/// openraft's network factory for the catalog: one [`PeerConnection`] per target.
#[derive(Debug, Clone)]
pub struct Network {
    pub(crate) peers: Option<crate::peers::Peers>,
    pub(crate) dialer: Dialer,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &CatalogNode) -> PeerConnection {
        PeerConnection {
            target,
            name: node.name.clone(),
            peers: self.peers.clone(),
            client: PeerClient::with_dialer(
                node.addr.clone(),
                Some(node.name.clone()),
                self.dialer.clone(),
            ),
            dialer: self.dialer.clone(),
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    target: NodeId,
    name: String,
    peers: Option<crate::peers::Peers>,
    client: PeerClient,
    dialer: Dialer,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, CatalogNode, RaftError<NodeId, E>>;

impl PeerConnection {
    async fn rpc(&mut self, req: RpcRequest, option: &RPCOption) -> Result<RpcReply, CallError> {
        let timeout = option.hard_ttl().max(Duration::from_millis(50));
        // Discovered members: reach the target where discovery says it is now.
        if let Some(a) = self.peers.as_ref().and_then(|p| p.addr_of(&self.name)) {
            if a != self.client.addr {
                tracing::debug!(target = self.target, from = %self.client.addr, to = %a, "catalog peer address changed");
                self.client =
                    PeerClient::with_dialer(a, Some(self.name.clone()), self.dialer.clone());
            }
        }
        self.client.call(&req, timeout).await
    }
}

fn map_call<E: std::error::Error>(e: CallError) -> RpcErr<E> {
    match e {
        CallError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        CallError::Call { .. } => RPCError::Network(NetworkError::new(&e)),
    }
}

/// A wrong-node answer means the target id no longer lives at that address: report it
/// unreachable, so openraft backs off.
fn unexpected<E: std::error::Error>(reply: &RpcReply) -> RpcErr<E> {
    match reply {
        RpcReply::WrongNode(id) => {
            RPCError::Unreachable(Unreachable::new(&WireError::WrongNode(*id)))
        }
        _ => RPCError::Network(NetworkError::new(&WireError::Unexpected)),
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        match self
            .rpc(
                RpcRequest::AppendEntries {
                    to: self.target,
                    rpc,
                },
                &option,
            )
            .await
            .map_err(map_call)?
        {
            RpcReply::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .rpc(
                RpcRequest::InstallSnapshot {
                    to: self.target,
                    rpc,
                },
                &option,
            )
            .await
            .map_err(map_call)?
        {
            RpcReply::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self
            .rpc(
                RpcRequest::Vote {
                    to: self.target,
                    rpc,
                },
                &option,
            )
            .await
            .map_err(map_call)?
        {
            RpcReply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(&other)),
        }
    }
}
