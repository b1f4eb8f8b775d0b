//! `interceptor`: run the node agent, or check a config directory.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use interceptor::agent::Resources;
use interceptor::config::{CaptureMode, ConfigSource, FailurePolicy, Settings, SettingsFile, Severity, Snapshot};
use interceptor::routing::{RouteTable, ServerProtocol};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Istio routing rules enforced by eBPF capture and a Rust proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: capture, proxy, follow config changes.
    Run {
        /// Directory of Istio YAML (VirtualService, DestinationRule, ServiceEntry, WorkloadEntry).
        #[arg(long, env = "INTERCEPTOR_CONFIG", conflicts_with = "kubernetes")]
        config: Option<PathBuf>,
        /// Follow the Kubernetes API server instead of files (settings `source: kubernetes`).
        #[arg(long)]
        kubernetes: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Print where the fields the fast path reads lie in the running kernel (from its BTF), as
    /// JSON; exit 1 with the reason when the kernel lacks them. The agent asks this way at start.
    KernelLayout,
    /// Print the kernel counters (per program, top services) from the pinned maps.
    Stats {
        /// bpffs directory the agent pins to.
        #[arg(long, default_value = interceptor::config::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// How many services to list, busiest first.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Check a config directory or file: errors and warnings with file, line and field; exit 1
    /// when there is an error.
    Validate {
        /// Directory or file of Istio YAML.
        path: PathBuf,
        /// Namespace of resources that do not name one.
        #[arg(long, default_value = interceptor::config::DEFAULT_NAMESPACE)]
        namespace: String,
        /// `text` or `json`.
        #[arg(long, default_value = "text")]
        output: Output,
    },
    /// Print the compiled route table.
    Routes {
        #[command(flatten)]
        input: ConfigInput,
        /// Namespace of resources that do not name one.
        #[arg(long, default_value = interceptor::config::DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Explain how a request would be routed: which rule matches, why earlier ones do not, where
    /// it goes with what probability.
    Explain {
        #[command(flatten)]
        input: ConfigInput,
        /// Host header (`my-app`, `my-app.default.svc.cluster.local:80`).
        #[arg(long)]
        host: String,
        /// Request path, with query.
        #[arg(long, default_value = "/")]
        path: String,
        /// Request header `name: value`, repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Explain the request as it enters this Gateway (`namespace/name`, or `name` in
        /// `--namespace`) instead of as captured traffic.
        #[arg(long)]
        gateway: Option<String>,
        /// Client IP, for sourceLabels / sourceNamespace.
        #[arg(long)]
        source_ip: Option<std::net::IpAddr>,
        /// Explain a TLS connection whose ClientHello names this server (`tls` rules; with
        /// `--gateway`, its PASSTHROUGH server on `--host`'s port) instead of an HTTP request.
        #[arg(long)]
        sni: Option<String>,
        /// Namespace of resources that do not name one.
        #[arg(long, default_value = interceptor::config::DEFAULT_NAMESPACE)]
        namespace: String,
    },
}

/// The config to read: files, or what a running agent serves.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ConfigInput {
    /// Directory or file of Istio YAML.
    #[arg(value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// A running agent's admin address: read the config it serves (from files or a cluster), as
    /// `kubectl exec ds/interceptor -- interceptor explain --admin 127.0.0.1:15000 …` does.
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Settings from a file, overridden by flags.
#[derive(clap::Args)]
struct SettingsArgs {
    /// Agent settings file (YAML).
    #[arg(long, env = "INTERCEPTOR_SETTINGS")]
    settings: Option<PathBuf>,
    /// Proxy listener.
    #[arg(long)]
    listen: Option<SocketAddrV4>,
    /// Address captured connections are redirected to (this node, as pods reach it).
    #[arg(long)]
    redirect: Option<SocketAddrV4>,
    /// IPv6 proxy listener (default `[::]` on the port of `--redirect6`).
    #[arg(long)]
    listen6: Option<std::net::SocketAddrV6>,
    /// Address captured IPv6 connections are redirected to (this node, as pods reach it over
    /// IPv6); without it IPv6 is not captured.
    #[arg(long)]
    redirect6: Option<std::net::SocketAddrV6>,
    /// cgroup v2 directory whose processes are captured.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// bpffs directory for pinned maps.
    #[arg(long)]
    bpffs: Option<PathBuf>,
    /// Capture mode: `socket` (cgroup connect hooks) or `packet` (XDP + TC on pod interfaces).
    #[arg(long)]
    mode: Option<CaptureMode>,
    /// Packet mode: interface names or shell patterns to attach to (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    interfaces: Option<Vec<String>>,
    /// While the proxy is down: `open` (connections go to their original destination) or `closed`.
    #[arg(long)]
    failure_policy: Option<FailurePolicy>,
    /// Socket mode: move bytes between pods and the proxy through the kernel's sockmap (`true`)
    /// instead of TCP/IP and the veth.
    #[arg(long)]
    fast_path: Option<bool>,
    /// Namespace of resources that do not name one.
    #[arg(long)]
    namespace: Option<String>,
    /// Admin listener (loopback only): /ready, /config_dump, /stats/prometheus.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Kubernetes: kubeconfig file (default: the pod's service account, else `KUBECONFIG`).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name (the downward API's `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// This node's IP (the downward API's `status.hostIP`): the default redirect address.
    #[arg(long, env = "NODE_IP")]
    node_ip: Option<std::net::Ipv4Addr>,
    /// Address the listeners of the Gateways this agent serves bind on (none: no Gateway).
    #[arg(long)]
    gateway_address: Option<std::net::IpAddr>,
    /// Directory of `credentialName` credentials (`<dir>/<name>/tls.crt`, `tls.key`, `ca.crt`).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// This agent's own workload, `namespace/name`: the source of what it serves as a gateway.
    #[arg(long, env = "WORKLOAD")]
    workload: Option<String>,
}

impl SettingsArgs {
    fn resolve(self, kubernetes: bool) -> Result<Settings, String> {
        let file = match &self.settings {
            Some(path) => SettingsFile::read(path).map_err(|d| d.to_string())?,
            None => SettingsFile::default(),
        };
        let flags = SettingsFile {
            listen: self.listen,
            redirect: self.redirect,
            listen6: self.listen6,
            redirect6: self.redirect6,
            cgroup: self.cgroup,
            bpffs: self.bpffs,
            mode: self.mode,
            interfaces: self.interfaces,
            failure_policy: self.failure_policy,
            fast_path: self.fast_path,
            namespace: self.namespace,
            admin: self.admin,
            limits: None,
            source: kubernetes.then_some(ConfigSource::Kubernetes),
            kubeconfig: self.kubeconfig,
            node_name: self.node_name,
            node_ip: self.node_ip,
            labels: None,
            gateway_address: self.gateway_address,
            credentials: self.credentials,
            workload: self.workload,
        };
        file.merge(flags).resolve()
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Run { config, kubernetes, settings } => run(config, kubernetes, settings),
        Command::Validate { path, namespace, output } => validate(&path, &namespace, output),
        Command::Routes { input, namespace } => match load(&input, &namespace) {
            Ok(table) => {
                print!("{}", table.describe());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Explain { input, host, path, headers, method, gateway, source_ip, sni, namespace } => {
            let request = ExplainRequest {
                host: &host,
                path_and_query: &path,
                headers: &headers,
                method: &method,
                source: source_ip,
                sni: sni.as_deref(),
            };
            explain(&input, &namespace, gateway.as_deref(), &request)
        }
        Command::Stats { bpffs, top } => stats(&bpffs, top),
        Command::KernelLayout => {
            let layout = interceptor::bpf::QueueLayout::parse_running_kernel().map_err(|e| e.to_string());
            match layout.and_then(|layout| serde_json::to_string(&layout).map_err(|e| e.to_string())) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(config: Option<PathBuf>, kubernetes: bool, settings: SettingsArgs) -> ExitCode {
    let settings = match settings.resolve(kubernetes) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: settings: {err}");
            return ExitCode::from(2);
        }
    };
    // One worker asked for (TOKIO_WORKER_THREADS=1, tokio's own setting): a single-threaded
    // runtime, which skips the work-stealing machinery one thread cannot use.
    let mut builder = match std::env::var("TOKIO_WORKER_THREADS").as_deref() {
        Ok("1") => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    // Capabilities belong to threads: each runtime thread drops what the agent does not need
    // after start-up as it starts; the privileged start-up (load, attach, bind) runs on this
    // one, which drops them once it is over (`agent::run`).
    let keep = interceptor::privileges::needed_by(&settings);
    builder.on_thread_start(move || {
        if let Err(err) = interceptor::privileges::restrict_thread(&keep) {
            tracing::error!(error = %err, "a runtime thread could not drop its capabilities");
        }
    });
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let agent = async {
        let resources = match (settings.source, config) {
            (ConfigSource::Files, Some(dir)) => Resources::Files(dir),
            (ConfigSource::Files, None) => {
                return Err(
                    "--config DIR is needed (or --kubernetes, or `source: kubernetes` in the settings)".to_owned()
                )
            }
            (ConfigSource::Kubernetes, _) => {
                let cluster =
                    interceptor::cluster::Cluster::connect(settings.kubeconfig.as_deref(), settings.node_name.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                Resources::Cluster(cluster)
            }
        };
        // With every cause: a verifier rejection's log is the source of "loading program".
        interceptor::agent::run(settings, resources).await.map_err(|e| format!("{:#}", anyhow::Error::new(e)))
    };
    match runtime.block_on(agent) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn stats(bpffs: &std::path::Path, top: usize) -> ExitCode {
    let stats = match interceptor::bpf::CaptureCounters::open(bpffs).and_then(|c| c.read()) {
        Ok(stats) => stats,
        Err(err) => {
            eprintln!("error: reading counters pinned in {}: {err} (is the agent running?)", bpffs.display());
            return ExitCode::FAILURE;
        }
    };
    println!("{:<10} {:>12} {:>12} {:>12} {:>8}", "program", "events", "captured", "bypassed", "errors");
    for (program, s) in &stats.programs {
        println!("{:<10} {:>12} {:>12} {:>12} {:>8}", program.name(), s.events, s.captured, s.bypassed, s.errors);
    }
    let mut services: Vec<_> = stats.services.iter().collect();
    services.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!();
    println!("{:<22} {:>12}", "service", "connections");
    for (service, connections) in services.iter().take(top) {
        println!("{:<22} {:>12}", service.to_string(), connections);
    }
    if services.len() > top {
        println!("… {} more", services.len() - top);
    }
    ExitCode::SUCCESS
}

fn validate(path: &std::path::Path, namespace: &str, output: Output) -> ExitCode {
    let diagnostics = match Snapshot::load_path(path, namespace).and_then(|s| RouteTable::compile_offline(&s)) {
        Ok(table) => table.warnings().to_vec(),
        Err(err) => err.diagnostics,
    };
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    match output {
        Output::Json => {
            let report = serde_json::json!({
                "valid": errors == 0,
                "errors": errors,
                "warnings": diagnostics.len() - errors,
                "diagnostics": diagnostics,
            });
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        }
        Output::Text => {
            for d in &diagnostics {
                println!("{d}");
            }
            println!("{errors} error(s), {} warning(s)", diagnostics.len() - errors);
        }
    }
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Loads and compiles, printing the diagnostics on failure.
fn load(input: &ConfigInput, namespace: &str) -> Result<RouteTable, ExitCode> {
    let snapshot = match (&input.config, input.admin) {
        (Some(path), _) => Snapshot::load_path(path, namespace),
        (None, Some(admin)) => match fetch_config_dump(admin) {
            Ok(json) => interceptor::admin::ConfigDump::read_snapshot(&json),
            Err(err) => {
                eprintln!("error: reading http://{admin}/config_dump: {err} (is the agent running?)");
                return Err(ExitCode::FAILURE);
            }
        },
        (None, None) => {
            eprintln!("error: give a config path or --admin ADDR");
            return Err(ExitCode::from(2));
        }
    };
    match snapshot.and_then(|s| RouteTable::compile_offline(&s)) {
        Ok(table) => Ok(table),
        Err(err) => {
            eprintln!("{err}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `GET /config_dump` from a running agent's admin server.
fn fetch_config_dump(admin: std::net::SocketAddr) -> Result<String, String> {
    use http_body_util::{BodyExt, Empty};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let fetch = async {
            let stream = tokio::net::TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let request = http::Request::get("/config_dump")
                .header(http::header::HOST, admin.to_string())
                .body(Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("status {}", response.status()));
            }
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), fetch).await.map_err(|_| "timed out".to_owned())?
    })
}

/// The request `explain` is asked about.
struct ExplainRequest<'a> {
    host: &'a str,
    path_and_query: &'a str,
    headers: &'a [String],
    method: &'a str,
    source: Option<std::net::IpAddr>,
    sni: Option<&'a str>,
}

fn explain(input: &ConfigInput, namespace: &str, gateway: Option<&str>, request: &ExplainRequest<'_>) -> ExitCode {
    let ExplainRequest { host, path_and_query, headers, method, source, sni } = *request;
    let table = match load(input, namespace) {
        Ok(table) => table,
        Err(code) => return code,
    };
    // A gateway's TCP server carries no HTTP: its connections are explained as TLS ones are.
    let tcp_at_gateway = gateway.is_some_and(|g| {
        let g = interceptor::routing::resolve_gateway_name(g, namespace);
        let port = host.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
        table.gateways().servers(port).iter().any(|s| *s.id.gateway == *g && s.protocol == ServerProtocol::Tcp)
    });
    if sni.is_some() || tcp_at_gateway {
        return explain_tls(&table, namespace, gateway, host, source, sni);
    }
    let mut map = http::HeaderMap::new();
    for h in headers {
        let parsed = h.split_once(':').and_then(|(k, v)| {
            Some((http::HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes()).ok()?, v.trim().parse().ok()?))
        });
        match parsed {
            Some((k, v)) => {
                map.append(k, v);
            }
            None => {
                eprintln!("error: header {h:?} is not `name: value`");
                return ExitCode::from(2);
            }
        }
    }
    let (p, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    if let Some(gateway) = gateway {
        let gateway = interceptor::routing::resolve_gateway_name(gateway, namespace);
        let port = host.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
        let view = interceptor::routing::RequestView {
            method,
            path: p,
            query,
            authority: host,
            scheme: "https",
            headers: &map,
            port,
            source,
        };
        print!("{}", table.explain_gateway(&gateway, &view));
        return ExitCode::SUCCESS;
    }
    let Some(service) = table.service_for_authority(host, namespace) else {
        println!("service: {host}\n  no known service has this host: the request is not captured or gets 404 NR");
        return ExitCode::FAILURE;
    };
    let port = host
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .or_else(|| service.ports.first().map(|p| p.number))
        .unwrap_or(80);
    let view = interceptor::routing::RequestView {
        method,
        path: p,
        query,
        authority: host,
        scheme: "http",
        headers: &map,
        port,
        source,
    };
    let explanation = table.explain(&service.host, &view);
    print!("{explanation}");
    ExitCode::SUCCESS
}

/// `explain --sni`: a TLS connection to `host` (captured) or to `host`'s port at `gateway`; or
/// a connection to a gateway's TCP server (`sni` then `None`).
fn explain_tls(
    table: &interceptor::routing::RouteTable,
    namespace: &str,
    gateway: Option<&str>,
    host: &str,
    source: Option<std::net::IpAddr>,
    sni: Option<&str>,
) -> ExitCode {
    use std::net::{Ipv4Addr, SocketAddr};
    let source = SocketAddr::new(source.unwrap_or(Ipv4Addr::UNSPECIFIED.into()), 0);
    let port_of_host = host.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    if let Some(gateway) = gateway {
        let gateway = interceptor::routing::resolve_gateway_name(gateway, namespace);
        let port = port_of_host.unwrap_or(if sni.is_some() { 443 } else { 80 });
        let destination = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
        let at = interceptor::routing::L4View { port, destination, source, sni, gateway: Some(&gateway) };
        print!("{}", table.explain_tls("", &at));
        return ExitCode::SUCCESS;
    }
    let Some(service) = table.service_for_authority(host, namespace) else {
        println!("service: {host}\n  no known service has this host: the connection is not captured");
        return ExitCode::FAILURE;
    };
    let port = port_of_host.or_else(|| service.ports.first().map(|p| p.number)).unwrap_or(443);
    let vip = service.vips.first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED.into());
    let at = interceptor::routing::L4View { port, destination: SocketAddr::new(vip, port), source, sni, gateway: None };
    print!("{}", table.explain_tls(&service.host, &at));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
