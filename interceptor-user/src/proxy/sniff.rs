//! Protocol sniffing on captured connections: HTTP/1, HTTP/2 with prior knowledge, TLS, or none.
//! Connections that do not speak HTTP are recognised by their first bytes (or by saying
//! nothing within a short time, as server-first protocols do); the proxy then forwards them as
//! TCP (`proxy::tcp`), as Istio's protocol sniffing does.

use std::time::Duration;

use tokio::net::TcpStream;

/// How long a client may stay silent before its connection is taken for a server-first protocol.
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(200);

/// Request methods an HTTP/1 request line may start with, and HTTP/2's connection preface.
const HTTP_STARTS: [&[u8]; 10] =
    [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ", b"PRI * HTTP/2"];

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1 request (or possibly one: too few bytes yet to tell otherwise).
    Http,
    /// HTTP/2 with prior knowledge: the connection preface.
    Http2,
    /// A TLS handshake record (a ClientHello, presumably): routed by SNI (`tls` rules).
    Tls,
    /// Not HTTP.
    Opaque,
    /// Not enough bytes to decide.
    NeedMore,
}

/// Classifies the first bytes of a connection.
pub fn classify(head: &[u8]) -> Sniffed {
    // A TLS record of type handshake (22), protocol version major 3: what every ClientHello
    // starts with, as Envoy's TLS inspector checks.
    match head {
        [] | [0x16] => return Sniffed::NeedMore,
        [0x16, 0x03, ..] => return Sniffed::Tls,
        _ => {}
    }
    let mut prefix_of_some = false;
    for start in HTTP_STARTS {
        let n = head.len().min(start.len());
        if head[..n] == start[..n] {
            if head.len() >= start.len() {
                return if start.starts_with(b"PRI ") { Sniffed::Http2 } else { Sniffed::Http };
            }
            prefix_of_some = true;
        }
    }
    if prefix_of_some {
        Sniffed::NeedMore
    } else {
        Sniffed::Opaque
    }
}

/// Peeks at a captured connection's first bytes: HTTP unless they clearly are not, or the client
/// says nothing within [`SNIFF_TIMEOUT`].
pub async fn sniff(stream: &TcpStream) -> Sniffed {
    let mut buf = [0u8; 16];
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        match peeked {
            Err(_) => return Sniffed::Opaque,
            // Closed or failed: let hyper see and end it.
            Ok(Ok(0)) | Ok(Err(_)) => return Sniffed::Http,
            Ok(Ok(n)) => match classify(&buf[..n]) {
                Sniffed::NeedMore if n < buf.len() => {
                    // peek returns at once while bytes wait; give the client a moment to send more.
                    if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(5))).await.is_err() {
                        return Sniffed::Opaque;
                    }
                }
                Sniffed::NeedMore => return Sniffed::Http,
                decided => return decided,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_starts_are_told_from_other_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Sniffed::Http);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Sniffed::Http2);
        assert_eq!(classify(b"PRI * HT"), Sniffed::NeedMore);
        assert_eq!(classify(b"PO"), Sniffed::NeedMore);
        assert_eq!(classify(b""), Sniffed::NeedMore);
        assert_eq!(classify(b"\x16\x03\x01\x02"), Sniffed::Tls);
        assert_eq!(classify(b"\x16"), Sniffed::NeedMore);
        assert_eq!(classify(b"\x16\x04"), Sniffed::Opaque);
        assert_eq!(classify(b"GETX"), Sniffed::Opaque);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Sniffed::Opaque);
    }
}
