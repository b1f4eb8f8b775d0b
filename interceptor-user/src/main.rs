//! `interceptor`: run the node agent, or check a config directory.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use interceptor::config::{CaptureMode, FailurePolicy, Settings, SettingsFile, Severity, Snapshot};
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
    /// Capture mode: `socket` (cgroup connect hooks) or `packet` (XDP + TC on pod interfaces).
    #[arg(long)]
    mode: Option<CaptureMode>,
    /// Packet mode: interface names or shell patterns to attach to (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    interfaces: Option<Vec<String>>,
    /// While the proxy is down: `open` (connections go to their original destination) or `closed`.
    #[arg(long)]
    failure_policy: Option<FailurePolicy>,
    /// Namespace of resources that do not name one.
    #[arg(long)]
    namespace: Option<String>,
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
            mode: self.mode,
            interfaces: self.interfaces,
            failure_policy: self.failure_policy,
            namespace: self.namespace,
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
