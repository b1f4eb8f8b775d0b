//! The one try loop both transports run: pool slot, endpoint pick (avoiding tried hosts), the
//! exchange with a per-try timeout, outlier bookkeeping, retries with back-off, and the response
//! flags (UO, UH, UF, UC, UT, URX) with Envoy's local reply when it gives up.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use tracing::debug;

use super::Served;
use crate::endpoints::{Outcome, PickContext, Policy};
use crate::proxy::local_reply::LocalReply;
use crate::routing::{Cluster, ResponseFlag, RetryPolicy, TryFailure};

/// One request/response-head exchange with an endpoint, as a transport carries it out.
pub trait Exchange {
    /// A response whose head has arrived.
    type Response;
    /// Why a try failed, as the local reply tells it.
    type Error: Display;

    /// Sends the request to `endpoint` and waits for the response head.
    fn send(
        &mut self,
        endpoint: SocketAddr,
    ) -> impl Future<Output = Result<Self::Response, TryError<Self::Error>>> + Send;

    /// The response's status and `grpc-status`, for the retry policy.
    fn status(response: &Self::Response) -> (u16, Option<u32>);
}

/// Why one try failed.
pub enum TryError<E> {
    /// No connection was made (UF).
    Connect(E),
    /// The connection broke, or no valid response head came (UC).
    Reset(E),
    /// The request cannot be sent at all: answer this, without retrying.
    Refused(LocalReply),
}

/// The settings of one request's tries.
pub struct Tries<'a> {
    /// Destination cluster.
    pub cluster: &'a Cluster,
    /// Retry policy.
    pub retry: &'a RetryPolicy,
    /// Tries allowed: 1 when the body cannot be replayed.
    pub max_tries: u32,
    /// Consistent-hash value of the request.
    pub hash: Option<u64>,
    /// The original destination, where a passthrough cluster without endpoints sends the request.
    pub original: Option<SocketAddr>,
}

/// Tries until an endpoint answers with a response the policy does not retry, or the policy gives
/// up: then the local reply to send (its flags already in `served`).
pub async fn run<E: Exchange>(
    exchange: &mut E,
    tries: Tries<'_>,
    served: &mut Served,
) -> Result<(SocketAddr, E::Response), LocalReply> {
    let Tries { cluster, retry, max_tries, hash, original } = tries;
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        served.tries += 1;
        // Only the try that answered has an upstream time; a local reply after it has none.
        served.upstream_time = None;
        if served.tries > 1 {
            backoff(retry.backoff, served.tries - 1).await;
        }
        let last = served.tries >= max_tries;
        // Held, like the endpoint's in-flight count, until the response head.
        let Ok(_slot) = cluster.limits.acquire().await else {
            return Err(give_up(
                served,
                ResponseFlag::UO,
                "upstream connect error or disconnect/reset before headers: overflow".into(),
            ));
        };
        let avoid: &[SocketAddr] = if retry.other_hosts { &tried } else { &[] };
        let picked = cluster.balancer.pick(PickContext { hash, avoid });
        let (endpoint, _in_flight) = match (picked, cluster.balancer.policy(), original) {
            (Some((endpoint, guard)), _, _) => (endpoint, Some(guard)),
            (None, Policy::Passthrough, Some(original)) => (original, None),
            (None, ..) => return Err(give_up(served, ResponseFlag::UH, "no healthy upstream".into())),
        };
        served.endpoint = Some(endpoint);
        let sent_at = Instant::now();
        let sent = exchange.send(endpoint);
        let result = match retry.per_try_timeout {
            Some(t) => tokio::time::timeout(t, sent).await.ok(),
            None => Some(sent.await),
        };
        let failure = match result {
            Some(Ok(response)) => {
                served.upstream_time = Some(sent_at.elapsed());
                let (status, grpc_status) = E::status(&response);
                cluster.balancer.record(endpoint, Outcome::Status(status));
                if retry.on.retries_status(status, grpc_status) {
                    if !last {
                        tried.push(endpoint);
                        continue;
                    }
                    if served.tries > 1 {
                        served.flags.push(ResponseFlag::URX);
                    }
                }
                return Ok((endpoint, response));
            }
            Some(Err(TryError::Refused(reply))) => {
                if let Some(flag) = reply.flag {
                    served.flags.push(flag);
                }
                return Err(reply);
            }
            Some(Err(TryError::Connect(err))) => (TryFailure::Connect, Some(err)),
            Some(Err(TryError::Reset(err))) => (TryFailure::Reset, Some(err)),
            None => (TryFailure::Timeout, None),
        };
        let (failure, err) = failure;
        let outcome = if failure == TryFailure::Timeout { Outcome::Status(504) } else { Outcome::ConnectFailure };
        cluster.balancer.record(endpoint, outcome);
        if !last && retry.on.retries_failure(failure) {
            debug!(%endpoint, ?failure, "try failed; retrying");
            tried.push(endpoint);
            continue;
        }
        let Some(err) = err else { return Err(give_up(served, ResponseFlag::UT, "upstream request timeout".into())) };
        debug!(%endpoint, error = %err, "try failed");
        // Envoy's flags: UF when no connection was made, UC when it ended before the headers.
        let flag = if failure == TryFailure::Connect { ResponseFlag::UF } else { ResponseFlag::UC };
        let body = format!("upstream connect error or disconnect/reset before headers: {err}");
        let reply = give_up(served, flag, body);
        if served.tries > 1 {
            served.flags.push(ResponseFlag::URX);
        }
        return Err(reply);
    }
}

/// The local reply for `flag`, recorded in `served`.
fn give_up(served: &mut Served, flag: ResponseFlag, body: String) -> LocalReply {
    served.flags.push(flag);
    LocalReply::flagged(flag, body)
}

/// Envoy's back-off: a random wait up to `base · 2^(n-1)`, capped at ten times the base.
async fn backoff(base: Duration, retry: u32) {
    let cap = base.saturating_mul(10);
    let ceiling = base.saturating_mul(1 << (retry - 1).min(10)).min(cap);
    let wait = ceiling.mul_f64(rand::thread_rng().gen_range(0.0..=1.0));
    tokio::time::sleep(wait).await;
}
