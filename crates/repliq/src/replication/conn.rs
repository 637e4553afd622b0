//! Reading and writing protocol messages on a TCP connection.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::replication::error::ReplicationError;
use crate::replication::protocol::{Codec, Message};

/// The read half of a connection with its decode buffer.
pub(crate) struct Reader<R> {
    rd: R,
    buf: BytesMut,
    codec: Codec,
}

impl<R: tokio::io::AsyncRead + Unpin> Reader<R> {
    pub(crate) fn new(rd: R, codec: Codec) -> Self {
        Reader {
            rd,
            buf: BytesMut::with_capacity(64 * 1024),
            codec,
        }
    }

    /// Changes the largest frame accepted from now on (a connection accepts
    /// only a small frame until its `Hello` has been read).
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.codec = Codec::with_max_frame(max_frame);
    }

    /// A message already buffered, without waiting.
    pub(crate) fn try_next(&mut self) -> Result<Option<Message>, ReplicationError> {
        Ok(self.codec.decode(&mut self.buf)?)
    }

    /// The next message, failing unless all of it arrives within `timeout`
    /// (a deadline per message, not per read: a peer that feeds a frame a
    /// byte at a time does not hold the connection and its buffer longer).
    pub(crate) async fn next(
        &mut self,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Message, ReplicationError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.codec.decode(&mut self.buf)? {
                return Ok(m);
            }
            let n = tokio::time::timeout_at(deadline, self.rd.read_buf(&mut self.buf))
                .await
                .map_err(|_| ReplicationError::Timeout(what))??;
            if n == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }
}

/// Encodes and writes one message.
pub(crate) async fn send<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    codec: &mut Codec,
    m: &Message,
) -> Result<(), ReplicationError> {
    let mut b = BytesMut::new();
    codec.encode(m, &mut b)?;
    wr.write_all(&b).await?;
    Ok(())
}

/// Wall clock in Unix nanoseconds.
pub(crate) fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
