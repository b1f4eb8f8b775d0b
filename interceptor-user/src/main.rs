//! `interceptor`: run the node agent, or check a config directory.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use interceptor::config::{CaptureMode, Settings, SettingsFile, Severity, Snapshot};
use interceptor::routing::RouteTable;
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
        #[arg(long, env = "INTERCEPTOR_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Print the kernel counters (per program, top services) from the pinned maps.
    Stats {
        /// bpffs directory the agent pins to.
        #[arg(long, default_value = interceptor::config::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// How many services to list, busiest first.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Check a config directory; exit 1 if it has errors.
    Validate {
        /// Directory of Istio YAML.
        dir: PathBuf,
        /// Namespace of resources that do not name one.
        #[arg(long, default_value = interceptor::config::DEFAULT_NAMESPACE)]
        namespace: String,
    },
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
    /// cgroup v2 directory whose processes are captured.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// bpffs directory for pinned maps.
    #[arg(long)]
    bpffs: Option<PathBuf>,
    /// Namespace of resources that do not name one.
    #[arg(long)]
    namespace: Option<String>,
    /// Admin listener (loopback only): /ready, /config_dump, /stats/prometheus.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
}

impl SettingsArgs {
    fn resolve(self) -> Result<Settings, String> {
        let file = match &self.settings {
            Some(path) => SettingsFile::read(path).map_err(|d| d.to_string())?,
            None => SettingsFile::default(),
        };
        let flags = SettingsFile {
            listen: self.listen,
            redirect: self.redirect,
            cgroup: self.cgroup,
            bpffs: self.bpffs,
            mode: None::<CaptureMode>,
            namespace: self.namespace,
            admin: self.admin,
            limits: None,
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
        Command::Run { config, settings } => run(config, settings),
        Command::Validate { dir, namespace } => validate(&dir, &namespace),
        Command::Stats { bpffs, top } => stats(&bpffs, top),
    }
}

fn run(config: PathBuf, settings: SettingsArgs) -> ExitCode {
    let settings = match settings.resolve() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: settings: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(interceptor::agent::run(settings, config)) {
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

fn validate(dir: &std::path::Path, namespace: &str) -> ExitCode {
    let diagnostics = match Snapshot::load_dir(dir, namespace).and_then(|s| RouteTable::compile(&s)) {
        Ok(table) => table.warnings().to_vec(),
        Err(err) => err.diagnostics,
    };
    for d in &diagnostics {
        println!("{d}");
    }
    let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    println!("{errors} error(s), {} warning(s)", diagnostics.len() - errors);
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
