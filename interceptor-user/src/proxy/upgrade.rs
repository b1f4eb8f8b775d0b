//! HTTP/1.1 `Upgrade` (WebSocket and the like): the request is routed like any other, the
//! upgrade headers (hop-by-hop, so stripped) are carried to the endpoint, and once it answers 101
//! the two connections are joined byte for byte; the request is observed when the tunnel closes.

use std::sync::{Arc, Mutex, PoisonError};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tracing::debug;

/// A request asking to switch protocols, with the downstream side of the future tunnel.
pub struct Upgrade {
    protocol: HeaderValue,
    downstream: OnUpgrade,
}

/// Takes the upgrade out of `req` when it asks for one (`Connection: upgrade` plus `Upgrade`).
/// `h2c` is never tunnelled (the endpoint would then see every later request unrouted): `proxy::h2c`
/// switches to HTTP/2 itself when it can, and what reaches here is answered as HTTP/1.1.
pub fn take<B>(req: &mut Request<B>) -> Option<Upgrade> {
    let asks = super::header_tokens(req.headers(), &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"));
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    if !asks || protocol.as_bytes().eq_ignore_ascii_case(b"h2c") {
        return None;
    }
    Some(Upgrade { protocol, downstream: hyper::upgrade::on(req) })
}

impl Upgrade {
    /// Puts the upgrade headers back (after the hop-by-hop strip).
    pub fn restore(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// When the endpoint agreed (101), restores the response's upgrade headers and joins the two
    /// connections in the background once both sides have switched. The request is then observed
    /// when the tunnel closes, with the bytes it carried (a [`Closing`] in the response's
    /// extensions takes the observation).
    pub fn finish<B>(self, response: &mut Response<B>) {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let protocol = response.headers().get(header::UPGRADE).cloned().unwrap_or_else(|| self.protocol.clone());
        let upstream = hyper::upgrade::on(&mut *response);
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        response.headers_mut().insert(header::UPGRADE, protocol);
        let (closing, observation) = oneshot::channel::<Box<dyn TunnelEnd>>();
        response.extensions_mut().insert(Closing(Arc::new(Mutex::new(Some(closing)))));
        let downstream = self.downstream;
        tokio::spawn(async move {
            let (up, down) = match tokio::join!(downstream, upstream) {
                (Ok(down), Ok(up)) => {
                    let copied = super::copy::both_ways(&mut TokioIo::new(down), &mut TokioIo::new(up)).await;
                    debug!(?copied, "upgraded connection ended");
                    copied.unwrap_or_default()
                }
                (down, up) => {
                    debug!(down = ?down.err(), up = ?up.err(), "upgrade did not complete");
                    (0, 0)
                }
            };
            if let Ok(end) = observation.await {
                end.closed(up, down);
            }
        });
    }
}

/// Where the observation of an upgraded request goes: to the tunnel, which makes it on close.
/// (Shared and taken once, because response extensions must be `Clone`.)
#[derive(Clone)]
pub struct Closing(Arc<Mutex<Option<ObservationSender>>>);

type ObservationSender = oneshot::Sender<Box<dyn TunnelEnd>>;

impl Closing {
    /// Hands the request's observation to the tunnel.
    pub fn observe_on_close(self, end: Box<dyn TunnelEnd>) {
        let sender = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        // The tunnel task is gone only if the runtime is: nothing left to observe then.
        if let Some(sender) = sender {
            let _ = sender.send(end);
        }
    }
}

/// The observation of an upgraded request, made when its tunnel closes.
pub trait TunnelEnd: Send {
    /// The tunnel carried `up` bytes from the client and `down` bytes to it.
    fn closed(self: Box<Self>, up: u64, down: u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_upgrade_with_a_protocol_other_than_h2c_is_taken() {
        let req = |connection: &str, upgrade: &str| {
            let mut r = Request::get("/").header("connection", connection);
            if !upgrade.is_empty() {
                r = r.header("upgrade", upgrade);
            }
            r.body(()).unwrap()
        };
        assert!(take(&mut req("keep-alive, Upgrade", "websocket")).is_some());
        assert!(take(&mut req("keep-alive", "websocket")).is_none());
        assert!(take(&mut req("upgrade", "")).is_none());
        assert!(take(&mut req("upgrade", "h2c")).is_none());
    }
}
