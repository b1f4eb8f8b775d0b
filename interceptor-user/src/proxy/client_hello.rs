//! Reads a TLS ClientHello off a connection, keeping its bytes to replay, and its SNI (by rustls).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most a ClientHello may take, record headers included: one full TLS record's worth (real
/// hellos, post-quantum key shares included, stay under 2 KiB), so a client cannot make the proxy
/// buffer much before it knows where the bytes go.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// A ClientHello read off a connection.
#[derive(Debug)]
pub struct ClientHello {
    /// Every byte read so far, to be sent on first.
    pub bytes: Vec<u8>,
    /// The server name the client asked for.
    pub sni: Option<String>,
}

/// Why no ClientHello came.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The bytes are not a TLS ClientHello.
    #[error("not a TLS ClientHello: {0}")]
    Malformed(rustls::Error),
    /// Larger than [`MAX_CLIENT_HELLO`].
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    /// Not complete in time.
    #[error("ClientHello not complete within {0:?}")]
    Timeout(Duration),
    /// The client closed before the ClientHello was complete.
    #[error("connection closed within the ClientHello")]
    Closed,
    /// Reading failed.
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads until `stream` has sent a whole ClientHello (at most [`MAX_CLIENT_HELLO`] bytes, within
/// `timeout`), and returns its bytes and SNI. rustls parses: the bytes go to an
/// [`rustls::server::Acceptor`] as they come, which says when the hello is whole.
///
/// # Errors
/// [`HelloError`]: malformed, too large, too slow, closed, or a read error.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S, timeout: Duration) -> Result<ClientHello, HelloError> {
    match tokio::time::timeout(timeout, read_unbounded_in_time(stream)).await {
        Ok(read) => read,
        Err(_) => Err(HelloError::Timeout(timeout)),
    }
}

async fn read_unbounded_in_time<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ClientHello, HelloError> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let room = MAX_CLIENT_HELLO - bytes.len();
        if room == 0 {
            return Err(HelloError::TooLarge);
        }
        let want = room.min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(sni) = feed(&mut acceptor, &chunk[..n])? {
            return Ok(ClientHello { bytes, sni });
        }
    }
}

/// Feeds `new` bytes to `acceptor`: `Some(sni)` once the ClientHello is whole, `None` while more
/// is needed.
fn feed(acceptor: &mut rustls::server::Acceptor, mut new: &[u8]) -> Result<Option<Option<String>>, HelloError> {
    // Each read_tls takes what fits in rustls' buffer; at most a few rounds for 4 KiB.
    for _ in 0..64 {
        if new.is_empty() {
            break;
        }
        match acceptor.read_tls(&mut new) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => return Err(HelloError::Io(err)),
        }
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(accepted)) => return Ok(Some(accepted.client_hello().server_name().map(str::to_owned))),
            Err((err, _alert)) => return Err(HelloError::Malformed(err)),
        }
    }
    if !new.is_empty() {
        return Err(HelloError::TooLarge);
    }
    match acceptor.accept() {
        Ok(None) => Ok(None),
        Ok(Some(accepted)) => Ok(Some(accepted.client_hello().server_name().map(str::to_owned))),
        Err((err, _alert)) => Err(HelloError::Malformed(err)),
    }
}

/// A stream whose first bytes are `prefix` (read already), then the stream's own.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, replaying `prefix` first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    // rustls hands over all its pending TLS records as one vectored write; without these, the
    // default would send only the first record per call, so one system call per record.
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first flight of a real rustls client asking for `sni`.
    fn client_hello(sni: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    async fn read_all(bytes: Vec<u8>, pieces: usize) -> Result<ClientHello, HelloError> {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let size = bytes.len().div_ceil(pieces).max(1);
            for piece in bytes.chunks(size) {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
                if pieces <= 16 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
            // Dropped: the reader sees the end after the last piece.
        });
        let read = read(&mut server, Duration::from_secs(2)).await;
        drop(writer.await);
        read
    }

    #[tokio::test]
    async fn a_whole_hello_gives_its_sni_and_bytes() {
        let hello = client_hello("a.example.com");
        let read = read_all(hello.clone(), 1).await.unwrap();
        assert_eq!(read.sni.as_deref(), Some("a.example.com"));
        assert_eq!(read.bytes, hello);
    }

    #[tokio::test]
    async fn a_hello_split_across_reads_is_reassembled() {
        let hello = client_hello("b.example.com");
        let read = read_all(hello.clone(), 7).await.unwrap();
        assert_eq!(read.sni.as_deref(), Some("b.example.com"));
        assert_eq!(read.bytes, hello);
        // One byte at a time, the record header split too.
        let read = read_all(hello.clone(), hello.len()).await.unwrap();
        assert_eq!(read.sni.as_deref(), Some("b.example.com"));
    }

    #[tokio::test]
    async fn a_truncated_hello_times_out_or_ends_with_the_connection() {
        let hello = client_hello("a.example.com");
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &hello[..hello.len() / 2]).await.unwrap();
        let read = read(&mut server, Duration::from_millis(100)).await;
        assert!(matches!(read, Err(HelloError::Timeout(_))), "{read:?}");
        drop(client);
        let read = read_all(hello[..hello.len() - 1].to_vec(), 1).await;
        assert!(matches!(read, Err(HelloError::Closed)), "{read:?}");
    }

    #[tokio::test]
    async fn garbage_and_oversized_hellos_are_refused() {
        let read = read_all(b"\x16\x03\x01\x00\x05hello".to_vec(), 1).await;
        assert!(matches!(read, Err(HelloError::Malformed(_))), "{read:?}");
        let read = read_all(b"GET / HTTP/1.1\r\n\r\n".to_vec(), 1).await;
        assert!(matches!(read, Err(HelloError::Malformed(_))), "{read:?}");
        // A handshake record that announces more than the bound allows, sent whole.
        let mut big = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc];
        big.resize(MAX_CLIENT_HELLO + 100, 0);
        let read = read_all(big, 4).await;
        assert!(matches!(read, Err(HelloError::TooLarge | HelloError::Malformed(_))), "{read:?}");
    }

    #[tokio::test]
    async fn a_prefixed_stream_replays_then_reads_on() {
        let (mut client, server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world").await.unwrap();
        drop(client);
        let mut prefixed = Prefixed::new(b"hello".to_vec(), server);
        let mut all = String::new();
        prefixed.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    #[tokio::test]
    async fn a_prefixed_socket_writes_every_buffer_of_a_vectored_write_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut prefixed = Prefixed::new(Vec::new(), client);
        assert!(tokio::io::AsyncWrite::is_write_vectored(&prefixed));
        let bufs = [std::io::IoSlice::new(b"first record "), std::io::IoSlice::new(b"second record")];
        let written = tokio::io::AsyncWriteExt::write_vectored(&mut prefixed, &bufs).await.unwrap();
        assert_eq!(written, 26, "both buffers in one write");
        drop(prefixed);
        let mut all = String::new();
        server.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "first record second record");
    }
}
