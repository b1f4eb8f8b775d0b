//! The client's connection as the proxy answers on it outside hyper (the relay, canned answers):
//! a captured socket, or a gateway's plain or TLS stream.

use std::future::Future;
use std::io::{self, IoSlice};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::client_hello::Prefixed;

/// A client connection the proxy writes to directly.
pub trait Downstream {
    /// The TCP socket under it, watched for the client leaving.
    fn socket(&self) -> &TcpStream;

    /// Writes all of `first`, then all of `second`, in one write when the connection takes them.
    fn send(&mut self, first: &[u8], second: &[u8]) -> impl Future<Output = io::Result<()>> + Send;

    /// Ends the sending side (after a TLS close_notify, over TLS).
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Resolves when the client closes its connection (or it fails); never while it is open,
    /// whether or not it sends more (a pipelined request waits for its turn). Over TLS it peeks
    /// at records rustls has not read: a client that sent close_notify before its FIN counts as
    /// sending more, so it is noticed only when the answer is written.
    fn left(&self) -> impl Future<Output = ()> + Send {
        let socket = self.socket();
        async move {
            let mut byte = [0u8; 1];
            if let Ok(1..) = socket.peek(&mut byte).await {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A captured connection: the socket its parked connection shares, written as it is ready.
impl Downstream for &TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }

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
}

/// A gateway's plain HTTP connection, or one over the cap.
impl Downstream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }

    async fn send(&mut self, first: &[u8], second: &[u8]) -> io::Result<()> {
        (&*self).send(first, second).await
    }

    async fn close(&mut self) -> io::Result<()> {
        super::shared_io::shutdown_write(self)
    }
}

/// A gateway's connection whose TLS ended here: both parts go into one TLS record when they fit.
impl Downstream for tokio_rustls::server::TlsStream<Prefixed<TcpStream>> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0.get_ref()
    }

    async fn send(&mut self, mut first: &[u8], mut second: &[u8]) -> io::Result<()> {
        while !first.is_empty() || !second.is_empty() {
            match self.write_vectored(&[IoSlice::new(first), IoSlice::new(second)]).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => (first, second) = advance(first, second, n),
            }
        }
        self.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        AsyncWriteExt::shutdown(self).await
    }
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
