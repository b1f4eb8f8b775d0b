//! The `interceptor` agent as a process on the test node, with its config directory and log.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::interrupt::{on_interrupt, OnInterrupt};
use crate::node::{Node, GATEWAY, GATEWAY6};

/// Capture mode of an agent under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// cgroup connect hooks on the node's capture cgroup.
    Socket,
    /// XDP + TC on the node's pod interfaces (`ic*`; the node namespace has no others).
    Packet,
}

impl Mode {
    /// The agent flags selecting this mode.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::Socket => &["--mode", "socket"],
            Mode::Packet => &["--mode", "packet", "--interfaces", "ic*"],
        }
    }
}

/// The agent's admin listener in the node namespace (its default).
pub const ADMIN: &str = "127.0.0.1:15000";

/// How long the agent may take to load, attach and listen.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Set to `1`, every socket-mode agent the tests start runs with `--fast-path true`, inside the
/// captured cgroup: `INTERCEPTOR_TEST_FAST_PATH=1 cargo test -p interceptor-tests` runs the
/// suites through the sockmap fast path.
pub const FAST_PATH_EVERYWHERE: &str = "INTERCEPTOR_TEST_FAST_PATH";

/// A running agent. Dropping it sends SIGTERM and waits for a clean exit.
pub struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    /// Removes `dir` should the process be told to stop (the agent itself is ended by its node's
    /// teardown).
    _interrupt: OnInterrupt,
}

impl Agent {
    /// Writes `files` (name → YAML) into a fresh config directory and starts the agent in the node
    /// namespace, capturing the node's cgroup. With `in_captured_cgroup`, the agent itself runs
    /// inside that cgroup (its own upstream connections must then stay uncaptured).
    ///
    /// # Errors
    /// The agent exits or does not report ready in time; the error carries its log.
    pub fn start(node: &Node, files: &[(&str, &str)], in_captured_cgroup: bool) -> Result<Agent> {
        Self::start_adding(node, files, &[], in_captured_cgroup)
    }

    /// Like [`Agent::start`], with `extra` agent flags after the default listener and redirects.
    ///
    /// # Errors
    /// As [`Agent::start`].
    pub fn start_adding(
        node: &Node,
        files: &[(&str, &str)],
        extra: &[&str],
        in_captured_cgroup: bool,
    ) -> Result<Agent> {
        let (redirect, redirect6) = redirects();
        let mut flags = vec!["--listen", "0.0.0.0:15001", "--redirect", &redirect, "--redirect6", &redirect6];
        flags.extend_from_slice(extra);
        Self::start_with(node, files, &flags, in_captured_cgroup)
    }

    /// Like [`Agent::start`], capturing in `mode` with `failure_policy` (`open` or `closed`).
    ///
    /// # Errors
    /// As [`Agent::start`].
    pub fn start_in(
        node: &Node,
        files: &[(&str, &str)],
        in_captured_cgroup: bool,
        mode: Mode,
        failure_policy: &str,
    ) -> Result<Agent> {
        let (redirect, redirect6) = redirects();
        let mut flags = vec![
            "--listen",
            "0.0.0.0:15001",
            "--redirect",
            &redirect,
            "--redirect6",
            &redirect6,
            "--failure-policy",
            failure_policy,
        ];
        flags.extend_from_slice(mode.flags());
        Self::start_with(node, files, &flags, in_captured_cgroup)
    }

    /// Like [`Agent::start_in`] (failure policy `open`), started as a container runtime starts
    /// it from a pod's `securityContext.capabilities.add`: uid 0 with a bounding set (and so
    /// permitted and effective sets) of only `capabilities`, named as in the pod spec (`BPF`,
    /// `NET_ADMIN`, …).
    ///
    /// # Errors
    /// As [`Agent::start`].
    pub fn start_confined(node: &Node, files: &[(&str, &str)], mode: Mode, capabilities: &[&str]) -> Result<Agent> {
        let (redirect, redirect6) = redirects();
        let mut flags = vec!["--listen", "0.0.0.0:15001", "--redirect", &redirect, "--redirect6", &redirect6];
        flags.extend_from_slice(mode.flags());
        let bounding: Vec<String> = capabilities.iter().map(|c| format!("+{}", c.to_ascii_lowercase())).collect();
        let bounding = format!("-all,{}", bounding.join(","));
        Self::start_wrapped(node, files, &flags, false, &["setpriv", "--bounding-set", &bounding, "--"])
    }

    /// Like [`Agent::start`], with extra agent flags (e.g. `--settings FILE`) instead of the
    /// default listener and redirect.
    ///
    /// # Errors
    /// As [`Agent::start`].
    pub fn start_with(node: &Node, files: &[(&str, &str)], flags: &[&str], in_captured_cgroup: bool) -> Result<Agent> {
        Self::start_wrapped(node, files, flags, in_captured_cgroup, &[])
    }

    /// Like [`Agent::start_with`], the agent run by `wrapper` (a command line that ends by
    /// executing its arguments, so the agent keeps its process id), when not empty.
    fn start_wrapped(
        node: &Node,
        files: &[(&str, &str)],
        flags: &[&str],
        in_captured_cgroup: bool,
        wrapper: &[&str],
    ) -> Result<Agent> {
        let dir = agent_dir(node);
        let config = dir.join("config");
        std::fs::create_dir_all(&config)?;
        for (name, text) in files {
            std::fs::write(config.join(name), text)?;
        }
        let config_arg = config.display().to_string();
        let (cgroup, bpffs) = (node.cgroup().display().to_string(), node.bpffs().display().to_string());
        let mut args = vec!["--config", config_arg.as_str(), "--cgroup", &cgroup, "--bpffs", &bpffs];
        args.extend_from_slice(flags);
        // Every socket-mode agent on the fast path, in the captured cgroup so that both legs pair:
        // the whole suite then runs through it (not the confined ones, whose capabilities are
        // the test).
        let everywhere = std::env::var_os(FAST_PATH_EVERYWHERE).is_some_and(|on| on == "1")
            && wrapper.is_empty()
            && !flags.iter().any(|f| *f == "packet" || *f == "--fast-path");
        if everywhere {
            args.extend_from_slice(&["--fast-path", "true"]);
        }
        let mut agent = Self::launch(node, dir, &args, in_captured_cgroup || everywhere, wrapper)?;
        agent.wait_for_log("agent ready", READY_TIMEOUT)?;
        if everywhere && !agent.log().contains("fast_path=true") {
            bail!("{FAST_PATH_EVERYWHERE}=1, yet the agent did not turn the fast path on:\n{}", agent.log());
        }
        Ok(agent)
    }

    /// Starts the agent in the node namespace following the Kubernetes API server that
    /// `kubeconfig` names (as seen from the node namespace), capturing the node's cgroup on the
    /// usual listener, with `flags` added. Returns once it has started; it becomes ready when the
    /// cluster is synced (see [`Agent::wait_for_log`] with `agent ready`).
    ///
    /// # Errors
    /// The agent exits or does not start in time; the error carries its log.
    pub fn start_kubernetes(node: &Node, kubeconfig: &std::path::Path, flags: &[&str]) -> Result<Agent> {
        let (redirect, redirect6) = redirects();
        let mut all = vec!["--listen", "0.0.0.0:15001", "--redirect", &redirect, "--redirect6", &redirect6];
        all.extend_from_slice(flags);
        Self::start_kubernetes_in(node, node.cgroup(), node.bpffs(), kubeconfig, &all)
    }

    /// Like [`Agent::start_kubernetes`], capturing `cgroup` and pinning to `bpffs`, with only
    /// `flags` (listener, redirect, admin …) for the rest: one of several agents on the node.
    ///
    /// # Errors
    /// As [`Agent::start_kubernetes`].
    pub fn start_kubernetes_in(
        node: &Node,
        cgroup: &std::path::Path,
        bpffs: &std::path::Path,
        kubeconfig: &std::path::Path,
        flags: &[&str],
    ) -> Result<Agent> {
        let dir = agent_dir(node);
        std::fs::create_dir_all(&dir)?;
        let (cgroup, bpffs) = (cgroup.display().to_string(), bpffs.display().to_string());
        let kubeconfig = kubeconfig.display().to_string();
        let mut args = vec!["--cgroup", &cgroup, "--bpffs", &bpffs, "--kubernetes", "--kubeconfig", &kubeconfig];
        args.extend_from_slice(flags);
        let mut agent = Self::launch(node, dir, &args, false, &[])?;
        agent.wait_for_log("agent started", READY_TIMEOUT)?;
        Ok(agent)
    }

    /// Spawns `interceptor run` with `args` in the node namespace (through `wrapper`, when not
    /// empty), logging to `dir`.
    fn launch(node: &Node, dir: PathBuf, args: &[&str], in_captured_cgroup: bool, wrapper: &[&str]) -> Result<Agent> {
        let made = dir.clone();
        let _interrupt = on_interrupt(move || {
            let _ = std::fs::remove_dir_all(&made);
        });
        // Made before the process, so that a failure below removes the directory too.
        let mut agent = Agent { child: None, log: dir.join("agent.log"), dir, _interrupt };
        let log_file = std::fs::File::create(&agent.log)?;
        let binary = crate::workspace_binary("interceptor");
        let binary_arg = binary.display().to_string();
        let (program, mut all) = match wrapper.split_first() {
            Some((program, wrapper_args)) => (PathBuf::from(program), [wrapper_args, &[binary_arg.as_str()]].concat()),
            None => (binary, Vec::new()),
        };
        all.push("run");
        all.extend_from_slice(args);
        let mut cmd = node.command_in(&node.node_netns(), in_captured_cgroup, &program, &all);
        cmd.env("RUST_LOG", "info,access=info").stdout(Stdio::null()).stderr(log_file);
        agent.child = Some(cmd.spawn().context("starting the interceptor agent")?);
        Ok(agent)
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent with SIGKILL (no clean-up of its own: pinned programs stay attached) and
    /// reaps it.
    ///
    /// # Errors
    /// The agent is not running.
    pub fn kill_hard(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { bail!("agent not running") };
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// The config directory the agent watches.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `count` times in all (bounded).
    ///
    /// # Errors
    /// Timeout, or the agent exited first; the error carries the log.
    pub fn wait_for_log_count(&mut self, needle: &str, count: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().matches(needle).count() >= count {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("agent exited with {status} before logging {needle:?}; log:\n{}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("agent did not log {needle:?} within {timeout:?}; log:\n{}", self.log())
    }

    /// Waits until the log contains `needle` (bounded).
    ///
    /// # Errors
    /// As [`Agent::wait_for_log_count`].
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_log_count(needle, 1, timeout)
    }

    /// Sends SIGTERM and returns at once; [`Agent::stop`] then waits for the exit.
    ///
    /// # Errors
    /// The agent is not running.
    pub fn terminate(&mut self) -> Result<()> {
        let Some(child) = self.child.as_ref() else { bail!("agent already stopped") };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        Ok(())
    }

    /// Stops the agent with SIGTERM and returns its exit code and log.
    ///
    /// # Errors
    /// It does not exit within 10 s (it is then killed).
    pub fn stop(&mut self) -> Result<(Option<i32>, String)> {
        let Some(mut child) = self.child.take() else { bail!("agent already stopped") };
        if let Some(status) = child.try_wait()? {
            return Ok((status.code(), self.log()));
        }
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(status) = child.try_wait()? {
                return Ok((status.code(), self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("agent ignored SIGTERM for 10 s; log:\n{}", self.log())
    }
}

/// The proxy's addresses as pods reach them: the node's gateway address of each family, port
/// 15001 (the IPv6 listener defaults to `[::]:15001`).
fn redirects() -> (String, String) {
    (format!("{GATEWAY}:15001"), format!("[{GATEWAY6}]:15001"))
}

/// A directory of its own for each agent of a node (one may start before another's is removed).
fn agent_dir(node: &Node) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("{}-agent-{n}", node.node_netns()))
}

/// Runs the agent binary once with `args` (e.g. `validate`), returning exit code and output.
///
/// # Errors
/// The binary cannot be run.
pub fn run_agent_command(args: &[&str]) -> Result<(Option<i32>, String)> {
    let out =
        Command::new(crate::workspace_binary("interceptor")).args(args).output().context("running interceptor")?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code(), text))
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads a child's stdout to the end.
///
/// # Errors
/// The pipe cannot be read.
pub fn read_stdout(child: &mut Child) -> Result<String> {
    let mut text = String::new();
    if let Some(out) = child.stdout.as_mut() {
        out.read_to_string(&mut text)?;
    }
    child.wait()?;
    Ok(text)
}
