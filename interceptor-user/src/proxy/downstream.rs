//! The client's connection as the proxy answers on it outside hyper (the relay, canned answers):
//! a captured socket, or a gateway's plain or TLS stream.

use std::future::Future;
use std::io::{self, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client connection the proxy writes to directly.
pub trait Downstream {
    /// Writes all of `first`, then all of `second`, in one write when the connection takes them.
    fn send(&mut self, first: &[u8], second: &[u8]) -> impl Future<Output = io::Result<()>> + Send;

    /// Ends the sending side cleanly (after a TLS close_notify, over TLS).
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Resolves when the client closes its connection (or it fails); never while it is open,
    /// whether or not it sends more (a pipelined request waits for its turn).
    fn left(&mut self) -> impl Future<Output = ()> + Send;
}

/// A captured connection: the socket its parked connection shares, written as it is ready.
impl Downstream for &TcpStream {
    async fn send(&mut self, mut first: &[u8], mut second: &[u8]) -> io::Result<()> {
        while !first.is_empty() || !second.is_empty() {
            match self.try_write_vectored(&[IoSlice::new(first), IoSlice::new(second)]) {
                Ok(n) => (first, second) = advance(first, second, n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> io::Result<()> {
        super::shared_io::shutdown_write(self)
    }

    /// Peeks, so that the bytes stay for the next request (read by the parked connection).
    async fn left(&mut self) {
        let mut byte = [0u8; 1];
        if let Ok(1..) = self.peek(&mut byte).await {
            std::future::pending::<()>().await;
        }
    }
}

/// Writes all of `first` and `second` to `out` and flushes it: for streams that buffer (TLS puts
/// both into one record when they fit).
pub async fn write_all_vectored<W>(out: &mut W, mut first: &[u8], mut second: &[u8]) -> io::Result<()>
where
    W: AsyncWrite + Unpin + Send,
{
    while !first.is_empty() || !second.is_empty() {
        match out.write_vectored(&[IoSlice::new(first), IoSlice::new(second)]).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => (first, second) = advance(first, second, n),
        }
    }
    out.flush().await
}

/// What is left of `first` and `second` once `n` bytes of them were written.
fn advance<'a>(first: &'a [u8], second: &'a [u8], n: usize) -> (&'a [u8], &'a [u8]) {
    let from_first = n.min(first.len());
    (&first[from_first..], &second[n - from_first..])
}

/// Writes `answer` and closes, within a second (the client may be gone or not reading).
pub async fn answer_and_close(mut downstream: impl Downstream, answer: &[u8]) {
    let write = async {
        downstream.send(answer, &[]).await?;
        downstream.close().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}
