//! One captured client connection: routes each of its requests and forwards it upstream.

use std::convert::Infallible;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::ProxyInputs;
use crate::routing::{RequestView, ResponseFlag, RouteTable};

/// Body of every response the proxy sends downstream.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Header on responses the proxy made itself, carrying Envoy's response flag (NR, NC, UH, UF).
pub const FLAGS_HEADER: &str = "x-interceptor-flags";

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1); never forwarded.
const HOP_BY_HOP: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// A captured connection from `client`, originally addressed to `original`.
pub struct Outbound {
    inputs: ProxyInputs,
    client: SocketAddr,
    original: Option<SocketAddrV4>,
}

/// What the access log says about one request.
struct Served<'a> {
    service: &'a str,
    rule: &'a str,
    cluster: &'a str,
    endpoint: Option<SocketAddr>,
    flag: Option<ResponseFlag>,
}

impl Outbound {
    /// State for one accepted connection.
    pub fn new(inputs: ProxyInputs, client: SocketAddr, original: Option<SocketAddrV4>) -> Self {
        Self { inputs, client, original }
    }

    /// Routes and forwards one request. Never fails: errors become Envoy-style local replies.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let seen = super::access_log::RequestInfo::of(&req);
        // The table current at the start of the request serves all of it, even across a reload.
        let table = self.inputs.routes.load_full();
        let method = req.method().clone();
        let authority = authority_of(&req).to_owned();
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();

        let (service, port) = self.service(&table, &authority);
        let mut served =
            Served { service: service.unwrap_or("-"), rule: "-", cluster: "-", endpoint: None, flag: None };
        let response = match service {
            None => {
                served.flag = Some(ResponseFlag::NR);
                local_reply(ResponseFlag::NR, format!("no service for authority {authority:?}"))
            }
            Some(service) => {
                let (path, query) = match path_and_query.split_once('?') {
                    Some((path, query)) => (path, Some(query)),
                    None => (path_and_query.as_str(), None),
                };
                let view = RequestView {
                    method: method.as_str(),
                    path,
                    query,
                    authority: &authority,
                    scheme: "http",
                    headers: req.headers(),
                    port,
                    source: Some(self.client.ip()),
                };
                let decision = table.route(service, &view);
                served.rule = decision.rule;
                match decision.outcome {
                    Err(unroutable) => {
                        served.flag = Some(unroutable.flag);
                        let why = match unroutable.flag {
                            ResponseFlag::NC => format!("cluster not found: {}", unroutable.detail),
                            _ => format!("no route matched for {}", unroutable.detail),
                        };
                        local_reply(unroutable.flag, why)
                    }
                    Ok(cluster) => {
                        served.cluster = &cluster.name;
                        match cluster.balancer.pick() {
                            None => {
                                served.flag = Some(ResponseFlag::UH);
                                local_reply(ResponseFlag::UH, "no healthy upstream".into())
                            }
                            Some((endpoint, _in_flight)) => {
                                served.endpoint = Some(endpoint);
                                match self.forward(req, endpoint, &path_and_query).await {
                                    Ok(response) => response,
                                    Err(err) => {
                                        served.flag = Some(ResponseFlag::UF);
                                        local_reply(
                                            ResponseFlag::UF,
                                            format!("upstream connect error or disconnect/reset before headers: {err}"),
                                        )
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        self.observe(&seen, &served, &response, started.elapsed());
        Ok(response)
    }

    /// The service and port this request addresses: the captured VIP:port when there is one, else
    /// the Host header (a direct connection to the proxy).
    fn service<'t>(&self, table: &'t RouteTable, authority: &str) -> (Option<&'t str>, u16) {
        if let Some(original) = self.original {
            if let Some(service) = table.service_at(original) {
                return (Some(service), original.port());
            }
        }
        let port = authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
        let service = table.service_for_authority(authority, &self.inputs.namespace).map(|s| s.host.as_str());
        (service, port)
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        endpoint: SocketAddr,
        path_and_query: &str,
    ) -> Result<Response<ProxyBody>, hyper_util::client::legacy::Error> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(endpoint.to_string())
            .path_and_query(path_and_query)
            .build()
            .expect("an IP socket address and an already parsed path form a valid URI");
        *req.uri_mut() = uri;
        let upgrade = super::upgrade::take(&mut req);
        strip_hop_by_hop(req.headers_mut());
        if let Some(upgrade) = &upgrade {
            upgrade.restore(req.headers_mut());
        }
        req.headers_mut().insert("x-forwarded-proto", HeaderValue::from_static("http"));
        // gRPC needs HTTP/2 upstream (trailers, streams); everything else goes as HTTP/1.1,
        // whatever the client spoke.
        let grpc = super::grpc::is_grpc(req.headers());
        let upstream = super::grpc::prepare(&mut req, grpc, &self.inputs);
        let mut response = upstream.request(req).await?;
        strip_hop_by_hop(response.headers_mut());
        if let Some(upgrade) = upgrade {
            upgrade.finish(&mut response);
        }
        Ok(response.map(|body| body.boxed()))
    }
}

impl Outbound {
    /// Access log line and Istio metrics for one finished request.
    fn observe(
        &self,
        seen: &super::access_log::RequestInfo,
        served: &Served<'_>,
        response: &Response<ProxyBody>,
        took: std::time::Duration,
    ) {
        use super::access_log::{emit, response_len, Completion};
        let done = Completion {
            status: response.status().as_u16(),
            flag: served.flag,
            response_bytes: response_len(response),
            duration: took,
            upstream: served.endpoint,
            cluster: served.cluster,
            route: served.rule,
            original: self.original,
            client: self.client,
        };
        emit(seen, &done);
        self.inputs.metrics.record(&super::metrics::RequestOutcome {
            service: served.service,
            cluster: served.cluster,
            flag: served.flag,
            status: done.status,
            duration: took,
            request_bytes: seen.request_bytes,
            response_bytes: done.response_bytes,
            grpc: seen.grpc,
        });
    }
}

/// Host header, else the request target's authority.
fn authority_of<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| header::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// A response the proxy makes itself, as Envoy would: status from the flag, a short text body.
fn local_reply(flag: ResponseFlag, body: String) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(flag.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response.headers_mut().insert(FLAGS_HEADER, HeaderValue::from_static(flag.as_str()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("user-agent", "beta-tester".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("user-agent"));
    }

    #[test]
    fn local_replies_carry_status_and_flag() {
        let r = local_reply(ResponseFlag::NC, "x".into());
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[FLAGS_HEADER], "NC");
        assert_eq!(local_reply(ResponseFlag::NR, String::new()).status(), 404);
    }
}
