//! A pod of the test node: `serve` is a backend answering with its name, `load` is a client that
//! sends requests and reports what answered, `idle` holds many idle keep-alive connections open.
//! Runs inside a pod's network namespace.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Channel, Either, Empty, Full};
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
        /// Answer with a body of this many bytes instead (`testbed::fixtures::numbered_body`), with a
        /// Content-Length, streamed in 16 chunks spread over `--body-ms`.
        #[arg(long)]
        body_bytes: Option<usize>,
        /// How long streaming a `--body-bytes` answer takes, in milliseconds.
        #[arg(long, default_value_t = 0)]
        body_ms: u64,
        /// Send the `--body-bytes` answer without a Content-Length (chunked over HTTP/1.1).
        #[arg(long)]
        chunked: bool,
        /// Pad the body to this many bytes: the name, a newline, then filler (benchmarks).
        #[arg(long)]
        size: Option<usize>,
        /// Answer requests for `/__large` with a body padded to this many bytes instead
        /// (benchmarks: throughput with large answers).
        #[arg(long)]
        large: Option<usize>,
        /// Accept a connection only once its first data arrived (`TCP_DEFER_ACCEPT`): the
        /// client's first send always comes before this end is established.
        #[arg(long)]
        defer_accept: bool,
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
        /// Stop once this file exists (lets a test end a load run it started in the background).
        #[arg(long)]
        stop_file: Option<std::path::PathBuf>,
        /// Speak HTTP/2 with prior knowledge.
        #[arg(long)]
        h2: bool,
        /// Make gRPC-style calls (HTTP/2 POST, `content-type: application/grpc`).
        #[arg(long)]
        grpc: bool,
    },
    /// TCP server: sends `banner` on every connection, then echoes what it reads.
    Echo {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// First bytes sent on each connection.
        #[arg(long)]
        banner: String,
    },
    /// Writes raw bytes to `target` (through the capture path when run in a captured pod), then
    /// reads for at most `--read-ms`; prints a JSON [`RawReport`].
    Raw {
        /// Address to connect to.
        #[arg(long)]
        target: SocketAddr,
        /// Bytes to send, with `\r` and `\n` written as escapes.
        #[arg(long, default_value = "")]
        send: String,
        /// Send this file's bytes instead.
        #[arg(long)]
        send_file: Option<std::path::PathBuf>,
        /// Read for at most this long (stops earlier when the server closes).
        #[arg(long, default_value_t = 5000)]
        read_ms: u64,
        /// The answer is HTTP/2: also report it frame by frame.
        #[arg(long)]
        h2: bool,
        /// Wait this long after sending before reading anything (a slow reader), in milliseconds.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        /// While waiting, send these bytes (escapes as in `--send`) every `--trickle-ms`: a client
        /// that sends without reading, pipelining.
        #[arg(long)]
        trickle: Option<String>,
        /// How often `--trickle` is sent, in milliseconds.
        #[arg(long, default_value_t = 100)]
        trickle_ms: u64,
        /// Connect from this local address (ip:port) instead of one the kernel picks.
        #[arg(long)]
        bind: Option<SocketAddr>,
    },
    /// One GET to `addr` (e.g. the agent's admin port); prints the status on the first line, then
    /// the body.
    Get {
        /// Address to connect to.
        #[arg(long)]
        addr: SocketAddr,
        /// Request path.
        #[arg(long, default_value = "/")]
        path: String,
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

async fn echo(listen: SocketAddr, banner: String) -> Result<()> {
    use tokio::io::AsyncWriteExt;

    let listener = TcpListener::bind(listen).await.with_context(|| format!("bind {listen}"))?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let banner = banner.clone();
        tokio::spawn(async move {
            if stream.write_all(banner.as_bytes()).await.is_ok() {
                let (mut rx, mut tx) = stream.split();
                let _ = tokio::io::copy(&mut rx, &mut tx).await;
            }
        });
    }
}

/// What `raw` saw.
#[derive(Serialize)]
struct RawReport {
    /// Everything read, as lossy UTF-8.
    response: String,
    /// The server closed the connection (EOF or reset) within the read time.
    closed: bool,
    /// Milliseconds from the end of sending to the close, or to the end of the read time.
    elapsed_ms: u64,
    /// With `--h2`: the frames read, in order.
    frames: Vec<H2Frame>,
    /// Bytes waiting to be read when the wait ended (`FIONREAD`; for a socket on the fast path,
    /// the kernel counts those moved into it).
    unread: u64,
    /// The socket's receive buffer then (`SO_RCVBUF`): what TCP may hold on top.
    rcvbuf: u64,
    /// How many times `--trickle` was sent.
    trickled: usize,
}

/// One HTTP/2 frame as read (RFC 9113 §4.1), summarised.
#[derive(Serialize)]
struct H2Frame {
    /// Frame type: 0 DATA, 1 HEADERS, 3 RST_STREAM, 4 SETTINGS, 6 PING, 7 GOAWAY, …
    kind: u8,
    flags: u8,
    stream: u32,
    /// RST_STREAM's and GOAWAY's error code.
    error: Option<u32>,
    /// DATA's payload, as lossy UTF-8.
    data: Option<String>,
}

/// Splits `bytes` into frames; a truncated last frame is left out.
fn h2_frames(mut bytes: &[u8]) -> Vec<H2Frame> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let Some(payload) = bytes.get(9..9 + len) else { break };
        let (kind, flags) = (bytes[3], bytes[4]);
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        let word = |at: usize| payload.get(at..at + 4).map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        let error = match kind {
            3 => word(0),
            7 => word(4),
            _ => None,
        };
        let data = (kind == 0).then(|| String::from_utf8_lossy(payload).into_owned());
        frames.push(H2Frame { kind, flags, stream, error, data });
        bytes = &bytes[9 + len..];
    }
    frames
}

/// What `raw` sends and how it reads.
struct RawPlan {
    target: SocketAddr,
    bind: Option<SocketAddr>,
    payload: Vec<u8>,
    read_for: Duration,
    wait: Duration,
    /// Bytes sent every so often while waiting.
    trickle: Option<(Vec<u8>, Duration)>,
    h2: bool,
}

/// Unescapes `\r` and `\n` as written on a command line.
fn unescape(text: &str) -> Vec<u8> {
    text.replace("\\r", "\r").replace("\\n", "\n").into_bytes()
}

/// Bytes waiting to be read on `stream` (`FIONREAD`).
fn unread(stream: &TcpStream) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, to a live local.
    if unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &raw mut unread) } != 0 {
        return Err(std::io::Error::last_os_error()).context("FIONREAD");
    }
    Ok(u64::try_from(unread)?)
}

async fn raw(plan: RawPlan) -> Result<RawReport> {
    let RawPlan { target, bind, payload, read_for, wait, trickle, h2 } = plan;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = match bind {
        None => TcpStream::connect(target).await,
        Some(local) => {
            let socket =
                if local.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            socket.bind(local).with_context(|| format!("bind {local}"))?;
            socket.connect(target).await
        }
    }
    .with_context(|| format!("connect {target}"))?;
    // A server may answer and close before it has read everything (a head over its limit): the
    // write then fails, and the answer is still there to read.
    let _ = stream.write_all(&payload).await;
    let (waited, mut trickled) = (Instant::now() + wait, 0);
    if let Some((bytes, every)) = &trickle {
        while Instant::now() + *every <= waited {
            tokio::time::sleep(*every).await;
            stream.write_all(bytes).await.context("trickle")?;
            trickled += 1;
        }
    }
    tokio::time::sleep_until(waited.into()).await;
    let unread = unread(&stream)?;
    let rcvbuf = socket2::SockRef::from(&stream).recv_buffer_size().context("SO_RCVBUF")? as u64;
    let start = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0u8; 16384];
    let closed = loop {
        let left = read_for.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
        }
    };
    Ok(RawReport {
        response: String::from_utf8_lossy(&response).into_owned(),
        closed,
        elapsed_ms: start.elapsed().as_millis() as u64,
        frames: if h2 { h2_frames(&response) } else { Vec::new() },
        unread,
        rcvbuf,
        trickled,
    })
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
    /// Headers of the last answer.
    last_headers: BTreeMap<String, String>,
    /// Body of the last answer.
    last_body: String,
    /// Wall time of the whole run, in milliseconds.
    elapsed_ms: u64,
    /// Time spent in successful `connect()`s, in nanoseconds (for overhead measurements).
    connect_ns: u64,
    /// `grpc-status` trailers received, by value.
    grpc_status: BTreeMap<String, usize>,
}

/// How `load` speaks.
#[derive(Clone, Copy, Debug, Default)]
struct Mode {
    /// HTTP/2 with prior knowledge.
    h2: bool,
    /// gRPC-style calls (HTTP/2 POST, `application/grpc`), counting `grpc-status` trailers.
    grpc: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve { listen, name, status, delay_ms, body_bytes, body_ms, chunked, size, large, defer_accept } => {
            let options = ServeOptions {
                status: hyper::StatusCode::from_u16(status)?,
                delay: Duration::from_millis(delay_ms),
                body_bytes,
                body_time: Duration::from_millis(body_ms),
                chunked,
                size,
                large,
                defer_accept,
            };
            serve(listen, name, options).await
        }
        Command::Echo { listen, banner } => echo(listen, banner).await,
        Command::Raw { target, send, send_file, read_ms, h2, wait_ms, trickle, trickle_ms, bind } => {
            let payload = match send_file {
                Some(path) => std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                None => unescape(&send),
            };
            let report = raw(RawPlan {
                target,
                bind,
                payload,
                read_for: Duration::from_millis(read_ms),
                wait: Duration::from_millis(wait_ms),
                trickle: trickle.map(|bytes| (unescape(&bytes), Duration::from_millis(trickle_ms))),
                h2,
            })
            .await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Get { addr, path } => {
            let mut sender = connect(addr).await?;
            let req = Request::get(path).header("host", addr.to_string()).body(Empty::new())?;
            let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
                .await
                .context("no answer within 10 s")??;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            println!("{status}");
            print!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
        Command::Idle { target, host, conns, hold_seconds } => {
            idle(target, &host, conns, Duration::from_secs(hold_seconds)).await
        }
        Command::Load {
            target,
            host,
            n,
            header,
            path,
            new_connections,
            pause_ms,
            max_seconds,
            stop_file,
            h2,
            grpc,
        } => {
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
                stop_file.as_deref(),
                Mode { h2, grpc },
            )
            .await;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

/// Path that answers how many other requests this backend served (for mirror tests).
const COUNT_PATH: &str = "/__count";
/// Answered with the full body's length but half the body, then the connection breaks off.
const BREAK_PATH: &str = "/__break";
/// Answered with the `--large` body.
const LARGE_PATH: &str = "/__large";

/// How `serve` answers.
#[derive(Clone, Copy)]
struct ServeOptions {
    status: hyper::StatusCode,
    delay: Duration,
    body_bytes: Option<usize>,
    body_time: Duration,
    chunked: bool,
    size: Option<usize>,
    large: Option<usize>,
    defer_accept: bool,
}

/// Answers `name` (HTTP/1.1 or HTTP/2, upgrades and gRPC-style calls too) with the options'
/// status after their delay; echoes what it received in `x-seen-*` headers and every request
/// header as `x-req-<name>`.
async fn serve(listen: SocketAddr, name: String, options: ServeOptions) -> Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("bind {listen}"))?;
    if options.defer_accept {
        let seconds: libc::c_int = 10;
        // SAFETY: setsockopt on the listener's own descriptor, with an int it reads.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&listener),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::from_ref(&seconds).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        anyhow::ensure!(rc == 0, "TCP_DEFER_ACCEPT: {}", std::io::Error::last_os_error());
    }
    eprintln!("serving {name} on {listen}");
    let header_name: hyper::header::HeaderValue = name.parse().context("backend names are header-safe")?;
    let body = match (options.body_bytes, options.size) {
        (Some(n), _) => Bytes::from(testbed::fixtures::numbered_body(&name, n)),
        (None, size) => Bytes::from(padded_body(&name, size)),
    };
    let large = options.large.map(|size| Bytes::from(padded_body(&name, Some(size))));
    let served = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let (body, served, header_name) = (body.clone(), served.clone(), header_name.clone());
        let large = large.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                let (mut body, served, header_name) = (body.clone(), served.clone(), header_name.clone());
                if let (Some(large), LARGE_PATH) = (&large, req.uri().path()) {
                    body = large.clone();
                }
                // An upgrade (e.g. WebSocket): agree, then say our name and echo the bytes.
                let upgrade = req
                    .headers()
                    .get(hyper::header::UPGRADE)
                    .cloned()
                    .map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
                let grpc = req
                    .headers()
                    .get(hyper::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let seen = seen_headers(&req, header_name);
                let count_request = req.uri().path() == COUNT_PATH;
                let break_off = req.uri().path() == BREAK_PATH;
                async move {
                    if count_request {
                        let count = served.load(Ordering::SeqCst).to_string();
                        return Ok::<_, Infallible>(Response::new(Either::Left(Full::new(Bytes::from(count)))));
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    if break_off {
                        let (mut tx, channel) = Channel::<Bytes>::new(2);
                        let len = body.len();
                        tokio::spawn(async move {
                            if tx.send_data(body.slice(..len / 2)).await.is_ok() {
                                // Let the half go out; then the body ends short of its length,
                                // and hyper can only break the connection off.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        });
                        let mut response = Response::new(Either::Right(channel));
                        response.headers_mut().insert(hyper::header::CONTENT_LENGTH, len.into());
                        return Ok(response);
                    }
                    if !options.delay.is_zero() {
                        tokio::time::sleep(options.delay).await;
                    }
                    if let Some((protocol, on)) = upgrade {
                        let name = body.clone();
                        tokio::spawn(async move {
                            use tokio::io::AsyncWriteExt;
                            let Ok(upgraded) = on.await else { return };
                            let mut io = TokioIo::new(upgraded);
                            if io.write_all(&name).await.is_ok() && io.write_all(b":").await.is_ok() {
                                let (mut rx, mut tx) = tokio::io::split(io);
                                let _ = tokio::io::copy(&mut rx, &mut tx).await;
                            }
                        });
                        let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
                        *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                        response.headers_mut().insert(hyper::header::UPGRADE, protocol);
                        response
                            .headers_mut()
                            .insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
                        return Ok(response);
                    }
                    if grpc {
                        // gRPC-style answer: the name as data, then `grpc-status: 0` as a trailer.
                        let (mut tx, channel) = Channel::<Bytes>::new(2);
                        tokio::spawn(async move {
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                            if tx.send_data(body).await.is_ok() {
                                let _ = tx.send_trailers(trailers).await;
                            }
                        });
                        let mut response = Response::new(Either::Right(channel));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/grpc"),
                        );
                        return Ok(response);
                    }
                    let mut response = if options.body_bytes.is_none() {
                        Response::new(Either::Left(Full::new(body)))
                    } else {
                        let (mut tx, channel) = Channel::<Bytes>::new(2);
                        let len = body.len();
                        let body_time = options.body_time;
                        tokio::spawn(async move {
                            let chunk = len.div_ceil(16).max(1);
                            for piece in body.chunks(chunk) {
                                tokio::time::sleep(body_time / 16).await;
                                if tx.send_data(body.slice_ref(piece)).await.is_err() {
                                    return;
                                }
                            }
                        });
                        let mut response = Response::new(Either::Right(channel));
                        if !options.chunked {
                            response.headers_mut().insert(hyper::header::CONTENT_LENGTH, len.into());
                        }
                        response
                    };
                    *response.status_mut() = options.status;
                    response.headers_mut().extend(seen);
                    Ok(response)
                }
            });
            // HTTP/1.1 and HTTP/2 with prior knowledge.
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What the backend echoes: who served, the path and host it saw, and every request header.
fn seen_headers<B>(req: &Request<B>, served_by: hyper::header::HeaderValue) -> hyper::HeaderMap {
    let mut h = hyper::HeaderMap::new();
    h.insert("x-served-by", served_by);
    if let Ok(v) = req.uri().path_and_query().map_or("/", |p| p.as_str()).parse() {
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
    h
}

/// A client connection, HTTP/1.1 or HTTP/2 (prior knowledge).
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn send_request(&mut self, req: Request<Empty<Bytes>>) -> hyper::Result<Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
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

async fn connect(target: SocketAddr) -> Result<Sender> {
    connect_as(target, false).await
}

async fn connect_as(target: SocketAddr, h2: bool) -> Result<Sender> {
    let stream = TcpStream::connect(target).await.with_context(|| format!("connect {target}"))?;
    if h2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(Sender::H1(sender))
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
    stop_file: Option<&std::path::Path>,
    mode: Mode,
) -> Report {
    let mut report = Report::default();
    let started = Instant::now();
    let deadline = started + max;
    let mut sender: Option<Sender> = None;
    for _ in 0..n {
        if Instant::now() > deadline || stop_file.is_some_and(std::path::Path::exists) {
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
                sender = Some(connect_as(target, mode.h2 || mode.grpc).await?);
                report.connect_ns += start.elapsed().as_nanos() as u64;
            }
            let s = sender.as_mut().context("no connection")?;
            let mut req = if mode.h2 || mode.grpc {
                // HTTP/2 carries the authority in the request target (`:authority`).
                Request::builder().uri(format!("http://{host}{path}"))
            } else {
                Request::get(path).header("host", host)
            };
            if mode.grpc {
                req = req.method("POST").header("content-type", "application/grpc").header("te", "trailers");
            }
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
            let collected = response.into_body().collect().await?;
            if let Some(grpc_status) = collected.trailers().and_then(|t| t.get("grpc-status")) {
                let key = String::from_utf8_lossy(grpc_status.as_bytes()).into_owned();
                *report.grpc_status.entry(key).or_default() += 1;
            }
            let body = collected.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned(), headers))
        }
        .await;
        match result {
            Ok((status, body, headers)) => {
                *report.statuses.entry(status).or_default() += 1;
                if status == 200 {
                    // Padded bodies (`serve --size`) carry the name on their first line; long
                    // streamed ones (`serve --body-bytes`) are counted by name and length.
                    let first = body.split('\n').next().unwrap_or_default();
                    let key = if first.len() > 64 {
                        format!("{} {} bytes", first.split('.').next().unwrap_or(""), body.len())
                    } else {
                        first.to_owned()
                    };
                    *report.bodies.entry(key).or_default() += 1;
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
