//! A pod of the test node: `serve` is a backend answering with its name, `load` is a client that
//! sends requests and reports what answered. Runs inside a pod's network namespace.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP/1.1 server answering every request with `name`.
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Body of every answer (e.g. the version).
        #[arg(long)]
        name: String,
        /// Status of every answer.
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// Wait this long before answering, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Sends requests to `target` and prints a JSON [`Report`] on stdout.
    Load {
        /// Address to connect to (a service VIP:port).
        #[arg(long)]
        target: SocketAddr,
        /// Host header.
        #[arg(long)]
        host: String,
        /// Number of requests.
        #[arg(short, default_value_t = 100)]
        n: usize,
        /// Extra header `name: value`, repeatable.
        #[arg(short = 'H')]
        header: Vec<String>,
        /// Request path.
        #[arg(long, default_value = "/")]
        path: String,
        /// Open a new connection for each request (default: keep-alive).
        #[arg(long)]
        new_connections: bool,
        /// Pause between requests, in milliseconds.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        /// Stop after this many seconds even if `n` is not reached.
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
    },
}

/// What a load run saw.
#[derive(Serialize, Default)]
struct Report {
    /// Answers with status 200, by body.
    bodies: BTreeMap<String, usize>,
    /// Answers by status code.
    statuses: BTreeMap<u16, usize>,
    /// Requests that got no answer (connect or protocol errors), with the first error seen.
    failures: usize,
    first_failure: Option<String>,
    /// TCP connections opened.
    connections: usize,
    /// Requests sent.
    requests: usize,
    /// Headers of the last answer.
    last_headers: BTreeMap<String, String>,
    /// Body of the last answer.
    last_body: String,
    /// Wall time of the whole run, in milliseconds.
    elapsed_ms: u64,
    /// Time spent in successful `connect()`s, in nanoseconds (for overhead measurements).
    connect_ns: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve { listen, name, status, delay_ms } => {
            serve(listen, name, status, Duration::from_millis(delay_ms)).await
        }
        Command::Load { target, host, n, header, path, new_connections, pause_ms, max_seconds } => {
            let headers: Vec<(String, String)> = header
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .context("header needs `name: value`")
                })
                .collect::<Result<_>>()?;
            let report = load(
                target,
                &host,
                &path,
                n,
                &headers,
                new_connections,
                Duration::from_millis(pause_ms),
                Duration::from_secs(max_seconds),
            )
            .await;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

/// Path that answers how many other requests this backend served (for mirror tests).
const COUNT_PATH: &str = "/__count";

/// Answers `name` with `status` after `delay`; echoes what it received in `x-seen-*` headers and
/// every request header as `x-req-<name>`.
async fn serve(listen: SocketAddr, name: String, status: u16, delay: Duration) -> Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("bind {listen}"))?;
    eprintln!("serving {name} on {listen}");
    let body = Bytes::from(name.clone());
    let served = Arc::new(AtomicUsize::new(0));
    let status = hyper::StatusCode::from_u16(status)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (body, served, name) = (body.clone(), served.clone(), name.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (body, served, name) = (body.clone(), served.clone(), name.clone());
                async move {
                    if req.uri().path() == COUNT_PATH {
                        let count = served.load(Ordering::SeqCst).to_string();
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(count))));
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut response = Response::new(Full::new(body));
                    *response.status_mut() = status;
                    let h = response.headers_mut();
                    let seen_path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                    h.insert("x-served-by", name.parse().expect("backend names are header-safe"));
                    if let Ok(v) = seen_path.parse() {
                        h.insert("x-seen-path", v);
                    }
                    if let Some(host) = req.headers().get("host") {
                        h.insert("x-seen-host", host.clone());
                    }
                    for (k, v) in req.headers() {
                        if let Ok(name) = hyper::header::HeaderName::from_bytes(format!("x-req-{k}").as_bytes()) {
                            h.append(name, v.clone());
                        }
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: SocketAddr) -> Result<Sender> {
    let stream = TcpStream::connect(target).await.with_context(|| format!("connect {target}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

#[allow(clippy::too_many_arguments)]
async fn load(
    target: SocketAddr,
    host: &str,
    path: &str,
    n: usize,
    headers: &[(String, String)],
    new_connections: bool,
    pause: Duration,
    max: Duration,
) -> Report {
    let mut report = Report::default();
    let started = Instant::now();
    let deadline = started + max;
    let mut sender: Option<Sender> = None;
    for _ in 0..n {
        if Instant::now() > deadline {
            break;
        }
        report.requests += 1;
        let result = async {
            let alive = match sender.as_mut() {
                Some(s) if !new_connections => s.ready().await.is_ok(),
                _ => false,
            };
            if !alive {
                report.connections += 1;
                let start = Instant::now();
                sender = Some(connect(target).await?);
                report.connect_ns += start.elapsed().as_nanos() as u64;
            }
            let s = sender.as_mut().context("no connection")?;
            let mut req = Request::get(path).header("host", host);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let response = s.send_request(req.body(Empty::new())?).await?;
            let status = response.status().as_u16();
            let headers: BTreeMap<String, String> = response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned(), headers))
        }
        .await;
        match result {
            Ok((status, body, headers)) => {
                *report.statuses.entry(status).or_default() += 1;
                if status == 200 {
                    *report.bodies.entry(body.clone()).or_default() += 1;
                }
                report.last_headers = headers;
                report.last_body = body;
            }
            Err(err) => {
                report.failures += 1;
                report.first_failure.get_or_insert_with(|| format!("{err:#}"));
                sender = None;
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}
