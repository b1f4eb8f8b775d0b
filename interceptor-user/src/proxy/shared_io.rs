//! A downstream stream shared between hyper and the proxy, so the proxy can still answer on it
//! (408) after hyper gives up on a slow request head, without a second descriptor per connection:
//! a captured TCP stream without a lock, any other stream (a gateway's) behind one.

use std::io::{self, Read};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// hyper's end of the shared stream; the proxy keeps the other `Arc`.
pub struct SharedStream(Arc<TcpStream>);

impl SharedStream {
    /// Shares `stream`: one end for hyper, one kept by the caller.
    pub fn new(stream: TcpStream) -> (Self, Arc<TcpStream>) {
        let stream = Arc::new(stream);
        (Self(stream.clone()), stream)
    }
}

impl SharedStream {
    /// Waits until the client sent more or left; ready with whether it left (end of stream).
    pub fn poll_at_end(&self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        ready!(self.0.poll_peek(cx, &mut probe))?;
        Poll::Ready(Ok(probe.filled().is_empty()))
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match try_read_draining(&self.0, buf.initialize_unfilled()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
                // 0 is the end of the stream.
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// Any stream (a gateway's, plain or TLS) shared between hyper and the proxy, which keeps the
/// other end: each poll locks it, never contended, as hyper is done with it before the proxy
/// writes.
pub struct Shared<I>(Arc<std::sync::Mutex<I>>);

impl<I> Shared<I> {
    /// Shares `io`: one end for hyper, one kept by the caller.
    pub fn new(io: I) -> (Self, Self) {
        let io = Arc::new(std::sync::Mutex::new(io));
        (Self(io.clone()), Self(io))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, I> {
        // A panic while polling poisons it; the stream itself is still whole.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Shared<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Shared<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}

/// `TcpStream::try_read`, except that a short read also clears the socket's readiness, as tokio's
/// own `AsyncRead` does: the socket is drained, so the next wait needs no system call to learn it.
pub fn try_read_draining(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let wanted = buf.len();
    let mut outcome = None;
    // A WouldBlock from the closure clears the readiness (unless a newer event came meanwhile).
    let cleared = stream.try_io(Interest::READABLE, || {
        let read = (&*socket2::SockRef::from(stream)).read(buf);
        let drained = match &read {
            Ok(n) => *n < wanted,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        outcome = Some(read);
        if drained {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    // None: not ready, the closure did not run.
    outcome.unwrap_or_else(|| cleared.map(|()| 0))
}

impl AsyncWrite for SharedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.0))
    }
}

/// Half-closes the sending side (what `AsyncWrite::poll_shutdown` means for TCP).
pub fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(stream).shutdown(Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn both_ends_use_one_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut hyper_end, kept) = SharedStream::new(server);
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        hyper_end.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        drop(hyper_end);
        // The kept end still answers after the other is gone.
        kept.writable().await.unwrap();
        assert_eq!(kept.try_write(b"pong").unwrap(), 4);
        shutdown_write(&kept).unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"pong");
    }
}
