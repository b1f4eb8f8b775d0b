//! A pod of the test node: `serve` is a backend answering with its name, `load` is a client that
//! sends requests and reports what answered, `idle` holds many idle keep-alive connections open.
//! Runs inside a pod's network namespace.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
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
        /// Pad the body to this many bytes: the name, a newline, then filler (benchmarks).
        #[arg(long)]
        size: Option<usize>,
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
    /// Opens `conns` keep-alive connections to `target`, sends one request on each, prints a JSON
    /// [`IdleReport`] line and keeps them open, idle, for `hold_seconds`.
    Idle {
        /// Address to connect to.
        #[arg(long)]
        target: SocketAddr,
        /// Host header.
        #[arg(long)]
        host: String,
        /// Number of connections.
        #[arg(long)]
        conns: usize,
        /// How long to keep them open after the report.
        #[arg(long, default_value_t = 30)]
        hold_seconds: u64,
    },
}

/// What `idle` opened.
#[derive(Serialize, Default)]
struct IdleReport {
    /// Connections open and answered.
    open: usize,
    /// Connections that failed (connect, request or timeout), with the first error.
    failures: usize,
    first_failure: Option<String>,
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve { listen, name, size } => serve(listen, name, size).await,
        Command::Idle { target, host, conns, hold_seconds } => {
            idle(target, &host, conns, Duration::from_secs(hold_seconds)).await
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

async fn serve(listen: SocketAddr, name: String, size: Option<usize>) -> Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("bind {listen}"))?;
    eprintln!("serving {name} on {listen}");
    let body = Bytes::from(padded_body(&name, size));
    loop {
        let (stream, _) = listener.accept().await?;
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// `name`, or with `size`: `name`, a newline and filler up to `size` bytes (never shorter than
/// the name and newline). `load` counts answers by the first line, so padding keeps counts by name.
fn padded_body(name: &str, size: Option<usize>) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    if let Some(size) = size {
        body.push(b'\n');
        body.resize(size.max(body.len()), b'x');
    }
    body
}

/// Raises the soft open-file limit to the hard one: thousands of sockets need more than 1024.
fn raise_nofile_limit() -> Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(limit.rlim_cur)
}

async fn idle(target: SocketAddr, host: &str, conns: usize, hold: Duration) -> Result<()> {
    let limit = raise_nofile_limit()?;
    if (conns as u64) + 64 > limit {
        anyhow::bail!("{conns} connections need more open files than the limit {limit}");
    }
    let mut report = IdleReport::default();
    let mut open = Vec::with_capacity(conns);
    // Bounded: every connection gets 5 s, the whole run 120 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..conns {
        if Instant::now() > deadline {
            report.failures += conns - report.open - report.failures;
            report.first_failure.get_or_insert_with(|| "deadline of 120 s passed".into());
            break;
        }
        let one = async {
            let mut sender = connect(target).await?;
            let req = Request::get("/").header("host", host).body(Empty::new())?;
            let response = sender.send_request(req).await?;
            let status = response.status();
            response.into_body().collect().await?;
            anyhow::ensure!(status.is_success(), "status {status}");
            anyhow::Ok(sender)
        };
        match tokio::time::timeout(Duration::from_secs(5), one).await {
            Ok(Ok(sender)) => {
                report.open += 1;
                open.push(sender);
            }
            Ok(Err(err)) => {
                report.failures += 1;
                report.first_failure.get_or_insert_with(|| format!("{err:#}"));
            }
            Err(_) => {
                report.failures += 1;
                report.first_failure.get_or_insert_with(|| "timed out after 5 s".into());
            }
        }
    }
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", serde_json::to_string(&report)?)?;
        stdout.flush()?;
    }
    tokio::time::sleep(hold).await;
    drop(open);
    Ok(())
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
    let deadline = Instant::now() + max;
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
                sender = Some(connect(target).await?);
            }
            let s = sender.as_mut().context("no connection")?;
            let mut req = Request::get(path).header("host", host);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let response = s.send_request(req.body(Empty::new())?).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
        }
        .await;
        match result {
            Ok((status, body)) => {
                *report.statuses.entry(status).or_default() += 1;
                if status == 200 {
                    // Padded bodies (`serve --size`) carry the name on their first line.
                    let name = body.split('\n').next().unwrap_or_default().to_owned();
                    *report.bodies.entry(name).or_default() += 1;
                }
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
    report
}
