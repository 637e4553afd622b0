//! Wire format of the catalog protocol.
//!
//! A connection starts with the magic [`MAGIC`] (`b"RQCL"`) and a `u16` LE version
//! ([`VERSION`]), sent by the client. Then the client sends request frames and reads one
//! reply frame per request, in order. A frame is `len: u32 LE | postcard body`, with
//! `len` at most [`MAX_FRAME`]; a bigger length is an error, and is never allocated.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::command::{Command, Response};
use crate::error::WireError;
use crate::state::CatalogState;
use crate::types::{CatalogNode, NodeId, TypeConfig};

/// First bytes of a catalog connection.
pub const MAGIC: [u8; 4] = *b"RQCL";
/// Protocol version sent after the magic.
pub const VERSION: u16 = 1;
/// Largest frame body accepted, in bytes.
pub const MAX_FRAME: u32 = 16 << 20;

/// A request on a catalog connection.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    /// openraft append-entries (also heartbeats), for the Raft node `to`.
    AppendEntries {
        /// The Raft id the sender means to reach.
        to: NodeId,
        /// The request.
        rpc: AppendEntriesRequest<TypeConfig>,
    },
    /// openraft vote, for the Raft node `to`.
    Vote {
        /// The Raft id the sender means to reach.
        to: NodeId,
        /// The request.
        rpc: VoteRequest<NodeId>,
    },
    /// openraft snapshot chunk, for the Raft node `to`.
    InstallSnapshot {
        /// The Raft id the sender means to reach.
        to: NodeId,
        /// The request.
        rpc: InstallSnapshotRequest<TypeConfig>,
    },
    /// Propose a command; only the leader accepts it.
    Propose(Command),
    /// Read the catalog; `linearizable` requires the leader to confirm its leadership
    /// and to have applied everything committed before the read.
    Read {
        /// Whether to go through the leader's `ensure_linearizable`.
        linearizable: bool,
    },
    /// Ask a node who it is.
    Identify,
}

/// Why a forwarded request did not succeed on the node it reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// This node is not the leader; try the leader if known.
    #[error("not the leader; leader is {leader_id:?} {leader:?}")]
    ForwardToLeader {
        /// Leader's Raft id, if known.
        leader_id: Option<NodeId>,
        /// Leader's name and address, if known.
        leader: Option<CatalogNode>,
    },
    /// Raft failed on that node.
    #[error("{0}")]
    Failed(String),
}

/// Who a node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Node name.
    pub name: String,
    /// Catalog address.
    pub addr: String,
    /// Incarnation of its data directory.
    pub incarnation: u64,
    /// Raft id.
    pub node_id: NodeId,
    /// Whether its Raft has a membership (is part of an initialized cluster).
    pub initialized: bool,
}

/// A reply on a catalog connection, one per request.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    /// Reply to [`RpcRequest::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Reply to [`RpcRequest::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Reply to [`RpcRequest::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// Reply to [`RpcRequest::Propose`].
    Propose(Result<Response, ForwardError>),
    /// Reply to [`RpcRequest::Read`].
    Read(Result<CatalogState, ForwardError>),
    /// Reply to [`RpcRequest::Identify`].
    Identify(Identity),
    /// A Raft request named another Raft id than this node's (for example the node at
    /// that address lost its directory and came back under a new incarnation). Carries
    /// this node's id. Never processed.
    WrongNode(NodeId),
}

/// Writes the connection preamble: magic and version.
pub async fn write_preamble<W: AsyncWrite + Unpin>(w: &mut W) -> Result<(), WireError> {
    let mut b = [0u8; 6];
    b[..4].copy_from_slice(&MAGIC);
    b[4..].copy_from_slice(&VERSION.to_le_bytes());
    w.write_all(&b).await?;
    Ok(())
}

/// Reads and checks the magic.
pub async fn read_magic<R: AsyncRead + Unpin>(r: &mut R) -> Result<(), WireError> {
    let mut m = [0u8; 4];
    r.read_exact(&mut m).await?;
    if m != MAGIC {
        return Err(WireError::BadMagic(m));
    }
    Ok(())
}

/// Reads and checks the version that follows the magic.
pub async fn read_version<R: AsyncRead + Unpin>(r: &mut R) -> Result<u16, WireError> {
    let mut v = [0u8; 2];
    r.read_exact(&mut v).await?;
    let v = u16::from_le_bytes(v);
    if v != VERSION {
        return Err(WireError::BadVersion(v));
    }
    Ok(v)
}

/// Writes one frame holding `msg`.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    let body = postcard::to_stdvec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or(WireError::FrameTooBig(body.len() as u64))?;
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<Option<T>, WireError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        got += n;
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(WireError::FrameTooBig(u64::from(len)));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    Ok(Some(postcard::from_bytes(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_big_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_preamble(&mut a).await.expect("preamble");
        write_frame(&mut a, &RpcRequest::Identify)
            .await
            .expect("write");
        read_magic(&mut b).await.expect("magic");
        read_version(&mut b).await.expect("version");
        let r: Option<RpcRequest> = read_frame(&mut b).await.expect("read");
        assert!(matches!(r, Some(RpcRequest::Identify)));

        a.write_all(&(MAX_FRAME + 1).to_le_bytes())
            .await
            .expect("write");
        let r: Result<Option<RpcRequest>, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(WireError::FrameTooBig(_))));

        drop(a);
        let r: Option<RpcRequest> = read_frame(&mut b).await.expect("eof");
        assert!(r.is_none());
    }

    #[tokio::test]
    async fn bad_magic_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"RPLQ").await.expect("write");
        assert!(matches!(read_magic(&mut b).await, Err(WireError::BadMagic(m)) if &m == b"RPLQ"));
    }
}
