//! Network namespaces, veth pairs, the capture cgroup and pod processes of one test node.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::interrupt::{lock, on_interrupt, OnInterrupt};
use serde::Deserialize;

/// The node's address on every pod link: pods' default gateway and the proxy's redirect address.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node's IPv6 address on every pod link (ULA: it exists only inside the test namespaces).
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
/// Service VIPs exist only as captured addresses; in the node the range is unreachable, so an
/// uncaptured packet goes nowhere and the client learns it at once (ICMP) instead of timing out.
pub const SERVICE_RANGE: &str = "10.96.0.0/12";
/// The IPv6 service VIP range (ULA), unreachable in the node like [`SERVICE_RANGE`].
pub const SERVICE_RANGE6: &str = "fd00:10:96::/112";

/// The IPv6 twin of an IPv4 test address `a.b.c.d` in `prefix` (e.g. `fd00:10:244::`): the last
/// octet's decimal digits read as hex, so 10.244.0.11 is fd00:10:244::11 and 10.96.0.10 is
/// fd00:10:96::10 — easy to tell apart in logs and to pair by eye.
pub fn ipv6_twin(prefix: [u16; 3], v4: Ipv4Addr) -> Ipv6Addr {
    let last = u16::from_str_radix(&v4.octets()[3].to_string(), 16).unwrap_or(0);
    Ipv6Addr::new(prefix[0], prefix[1], prefix[2], 0, 0, 0, 0, last)
}

/// The pod range's prefix, for [`ipv6_twin`].
pub const POD_PREFIX6: [u16; 3] = [0xfd00, 0x10, 0x244];
/// The service range's prefix, for [`ipv6_twin`].
pub const SERVICE_PREFIX6: [u16; 3] = [0xfd00, 0x10, 0x96];

/// A pod to create: a network namespace with one address.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// Short name, unique in the node.
    pub name: String,
    /// Pod IP (10.244.0.x).
    pub ip: Ipv4Addr,
    /// Pod IPv6 address: the IPv4 one's twin (fd00:10:244::x), so every pod is dual-stack.
    pub ip6: Ipv6Addr,
}

impl PodSpec {
    /// A pod named `name` at `ip` and at its IPv6 twin.
    pub fn new(name: &str, ip: [u8; 4]) -> Self {
        let ip = Ipv4Addr::from(ip);
        Self { name: name.to_owned(), ip, ip6: ipv6_twin(POD_PREFIX6, ip) }
    }
}

/// What `pod load` reports.
#[derive(Debug, Deserialize)]
pub struct LoadReport {
    /// 200 answers by body (the backend's name).
    pub bodies: BTreeMap<String, usize>,
    /// Answers by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests without an answer.
    pub failures: usize,
    /// The first such failure.
    pub first_failure: Option<String>,
    /// TCP connections opened.
    pub connections: usize,
    /// Requests sent.
    pub requests: usize,
    /// Headers of the last answer.
    pub last_headers: BTreeMap<String, String>,
    /// Body of the last answer.
    pub last_body: String,
    /// Wall time of the run, in milliseconds.
    pub elapsed_ms: u64,
    /// Time spent in successful `connect()`s, in nanoseconds (connect plus the TCP handshake).
    #[serde(default)]
    pub connect_ns: u64,
    /// `grpc-status` trailers received, by value.
    #[serde(default)]
    pub grpc_status: BTreeMap<String, usize>,
}

impl LoadReport {
    /// Answers from the backend named `name`.
    pub fn count(&self, name: &str) -> usize {
        self.bodies.get(name).copied().unwrap_or(0)
    }

    /// Answers with `status`.
    pub fn status(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// What `pod raw` reports.
#[derive(Debug, Deserialize)]
pub struct RawReport {
    /// Everything the server sent, as lossy UTF-8.
    pub response: String,
    /// The server closed the connection within the read time.
    pub closed: bool,
    /// Milliseconds from the end of sending to the close (or the end of the read time).
    pub elapsed_ms: u64,
    /// With `--h2`: the HTTP/2 frames read, in order.
    pub frames: Vec<H2Frame>,
    /// Bytes waiting to be read when `--wait-ms` ended (`FIONREAD`; on the fast path, the
    /// kernel's count of those moved into the socket).
    pub unread: u64,
    /// The socket's receive buffer then (`SO_RCVBUF`): what TCP may hold on top of what was moved.
    pub rcvbuf: u64,
    /// How many times `--trickle` was sent.
    pub trickled: usize,
}

/// One HTTP/2 frame `pod raw --h2` read.
#[derive(Debug, Deserialize)]
pub struct H2Frame {
    /// Frame type (0 DATA, 1 HEADERS, 3 RST_STREAM, 4 SETTINGS, 6 PING, 7 GOAWAY, …).
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream identifier.
    pub stream: u32,
    /// RST_STREAM's or GOAWAY's error code.
    pub error: Option<u32>,
    /// DATA's payload, as lossy UTF-8.
    pub data: Option<String>,
}

/// One test node. Dropping it kills its processes and removes namespaces, cgroup and pins.
pub struct Node {
    suffix: String,
    pods: Vec<PodSpec>,
    cgroup: PathBuf,
    bpffs: PathBuf,
    /// The network namespaces this node added and has not removed: the only ones its teardown
    /// touches (another node's names could share a suffix left behind by a killed run).
    namespaces: Arc<Mutex<Vec<String>>>,
    children: Vec<Child>,
    /// The same teardown as dropping, should the process be told to stop.
    _interrupt: OnInterrupt,
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

/// Turns duplicate address detection off for links made in `netns` from now on (also links
/// moved in): their link-local addresses would stay tentative for about a second, and neighbour
/// discovery waits for them, so a pod's first IPv6 connection to a peer it has not reached yet
/// took a second longer than IPv4's (seen as a slow fail-open). Every address here is ours.
fn no_dad(netns: &str) -> Result<()> {
    run(Command::new("ip").args([
        "netns",
        "exec",
        netns,
        "sysctl",
        "-qw",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv6.conf.all.accept_dad=0",
    ]))
}

/// The cgroup v2 mount point (`/sys/fs/cgroup/unified` on hybrid hosts, else `/sys/fs/cgroup`).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .context("no cgroup2 file system is mounted")
}

impl Node {
    /// Creates the node namespace, one namespace per pod, the links and routes, the capture cgroup
    /// and the bpffs directory. Names carry a per-run suffix.
    ///
    /// # Errors
    /// Any `ip` command failing; what was created so far is removed.
    pub fn create(pods: &[PodSpec]) -> Result<Node> {
        let (suffix, cgroup, bpffs) = claim_suffix()?;
        let namespaces = Arc::new(Mutex::new(Vec::new()));
        let made = (namespaces.clone(), cgroup.clone(), bpffs.clone());
        let mut node = Node {
            cgroup,
            bpffs,
            suffix,
            pods: pods.to_vec(),
            namespaces,
            children: Vec::new(),
            _interrupt: on_interrupt(move || tear_down(&lock(&made.0), &made.1, &made.2)),
        };
        node.build().context("building the test node")?;
        Ok(node)
    }

    /// Adds network namespace `ns`, recorded as this node's once it exists.
    fn add_netns(&self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        lock(&self.namespaces).push(ns.to_owned());
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let node = self.node_netns();
        self.add_netns(&node)?;
        ip(&["-n", &node, "link", "set", "lo", "up"])?;
        run(Command::new("ip").args(["netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
        run(Command::new("ip").args(["netns", "exec", &node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]))?;
        no_dad(&node)?;
        // An uncaptured packet to a VIP goes nowhere, and nothing leaves the node.
        ip(&["-n", &node, "route", "add", "unreachable", SERVICE_RANGE])?;
        ip(&["-n", &node, "-6", "route", "add", "unreachable", SERVICE_RANGE6])?;
        for (i, pod) in self.pods.clone().iter().enumerate() {
            self.plug(i, pod)?;
        }
        Ok(())
    }

    /// Creates pod namespace `pod.name` and its veth pair into the node (host side `ic<i>-<suffix>`).
    fn plug(&mut self, i: usize, pod: &PodSpec) -> Result<()> {
        let node = self.node_netns();
        let gateway = GATEWAY.to_string();
        let ns = self.pod_netns(&pod.name);
        self.add_netns(&ns)?;
        no_dad(&ns)?;
        let host_if = format!("ic{i}-{}", self.suffix);
        ip(&["-n", &node, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        ip(&["-n", &node, "addr", "add", &format!("{gateway}/32"), "dev", &host_if])?;
        ip(&["-n", &node, "link", "set", &host_if, "up"])?;
        ip(&["-n", &node, "route", "add", &format!("{}/32", pod.ip), "dev", &host_if])?;
        // IPv6 the same way.
        ip(&["-n", &node, "addr", "add", &format!("{GATEWAY6}/128"), "dev", &host_if])?;
        ip(&["-n", &node, "route", "add", &format!("{}/128", pod.ip6), "dev", &host_if])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        // Load runs open thousands of short connections to one endpoint: reuse TIME_WAIT ports
        // instead of running out of them (EADDRNOTAVAIL).
        run(Command::new("ip").args(["netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]))?;
        ip(&["-n", &ns, "addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", &gateway, "dev", "eth0"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &gateway, "dev", "eth0"])?;
        let gateway6 = GATEWAY6.to_string();
        ip(&["-n", &ns, "addr", "add", &format!("{}/128", pod.ip6), "dev", "eth0"])?;
        ip(&["-n", &ns, "route", "add", &gateway6, "dev", "eth0"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &gateway6, "dev", "eth0"])?;
        Ok(())
    }

    /// Adds a pod to a running node, as a pod scheduled later would come; returns the name of its
    /// host-side interface.
    ///
    /// # Errors
    /// Any `ip` command failing.
    pub fn add_pod(&mut self, pod: PodSpec) -> Result<String> {
        let i = self.pods.len();
        self.plug(i, &pod)?;
        self.pods.push(pod);
        Ok(format!("ic{i}-{}", self.suffix))
    }

    /// Removes a pod's network namespace, which deletes its veth pair, as a deleted pod would.
    /// Its processes must be gone already.
    ///
    /// # Errors
    /// `ip netns del` fails.
    pub fn remove_pod_netns(&mut self, pod: &str) -> Result<()> {
        let ns = self.pod_netns(pod);
        ip(&["netns", "del", &ns])?;
        lock(&self.namespaces).retain(|n| *n != ns);
        Ok(())
    }

    /// The node namespace's name.
    pub fn node_netns(&self) -> String {
        format!("ic-node-{}", self.suffix)
    }

    /// A pod namespace's name.
    pub fn pod_netns(&self, pod: &str) -> String {
        format!("ic-{pod}-{}", self.suffix)
    }

    /// The cgroup whose processes are captured (created by this node).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The bpffs directory the agent pins to.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// A command that runs `program args…` in network namespace `netns`, inside the capture
    /// cgroup when `captured`. `nsenter` switches only the network namespace, so /sys/fs/bpf and
    /// the cgroup mounts stay visible.
    pub fn command_in(&self, netns: &str, captured: bool, program: &Path, args: &[&str]) -> Command {
        self.command_in_cgroup(netns, captured.then_some(self.cgroup.as_path()), program, args)
    }

    /// Like [`Node::command_in`], inside `cgroup` when given (the node's, or one of
    /// [`Node::add_cgroup`]).
    pub fn command_in_cgroup(&self, netns: &str, cgroup: Option<&Path>, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}")).arg("--").arg("sh").arg("-c");
        let join = cgroup.map_or_else(String::new, |c| format!("echo $$ > {}/cgroup.procs && ", c.display()));
        cmd.arg(format!("{join}exec \"$0\" \"$@\"")).arg(program).args(args);
        cmd
    }

    /// Creates cgroup `name` under the node's cgroup (a second "node" on the same network, whose
    /// own agent captures only it); removed with the node.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn add_cgroup(&self, name: &str) -> Result<PathBuf> {
        let dir = self.cgroup.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(dir)
    }

    /// Starts a long-running process; it is killed when the node is dropped.
    ///
    /// # Errors
    /// The process cannot be started.
    pub fn spawn(&mut self, mut cmd: Command) -> Result<u32> {
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Starts `pod serve` in pod `pod`, answering with `name` on port 8080 of both its addresses
    /// (one dual-stack socket on `[::]`); returns its PID (for [`Node::kill`]).
    ///
    /// # Errors
    /// The pod is unknown or the process cannot start.
    pub fn serve(&mut self, pod: &str, name: &str) -> Result<u32> {
        self.serve_with(pod, name, &[])
    }

    /// Like [`Node::serve`], with extra `pod serve` flags (e.g. `--body-bytes`).
    ///
    /// # Errors
    /// As [`Node::serve`].
    pub fn serve_with(&mut self, pod: &str, name: &str, extra: &[&str]) -> Result<u32> {
        self.serve_in(pod, name, extra, false)
    }

    /// Like [`Node::serve_with`], inside the capture cgroup, as kubelet's pods all are (the
    /// sockets of a server there are seen by the agent's `sockops`).
    ///
    /// # Errors
    /// As [`Node::serve`].
    pub fn serve_captured(&mut self, pod: &str, name: &str, extra: &[&str]) -> Result<u32> {
        self.serve_in(pod, name, extra, true)
    }

    fn serve_in(&mut self, pod: &str, name: &str, extra: &[&str], captured: bool) -> Result<u32> {
        if !self.pods.iter().any(|p| p.name == pod) {
            bail!("no pod {pod}");
        }
        // IPv4 clients reach it as `::ffff:a.b.c.d` (net.ipv6.bindv6only is 0 in a new namespace).
        let listen = "[::]:8080".to_owned();
        let mut args = vec!["serve", "--listen", &listen, "--name", name];
        args.extend_from_slice(extra);
        let mut cmd = self.command_in(&self.pod_netns(pod), captured, &crate::workspace_binary("pod"), &args);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let pid = self.spawn(cmd)?;
        wait_for_listener(&self.pod_netns(pod), &listen, Duration::from_secs(5))?;
        Ok(pid)
    }

    /// Starts `pod echo` in pod `pod` on `port`: a TCP server that sends `banner`, then echoes.
    ///
    /// # Errors
    /// The pod is unknown or the process cannot start.
    pub fn serve_tcp_echo(&mut self, pod: &str, port: u16, banner: &str) -> Result<()> {
        self.serve_tcp_echo_in(pod, port, banner, false)
    }

    /// Like [`Node::serve_tcp_echo`], inside the capture cgroup (as kubelet's pods are), so that
    /// the fast path pairs its sockets.
    ///
    /// # Errors
    /// As [`Node::serve_tcp_echo`].
    pub fn serve_tcp_echo_captured(&mut self, pod: &str, port: u16, banner: &str) -> Result<()> {
        self.serve_tcp_echo_in(pod, port, banner, true)
    }

    fn serve_tcp_echo_in(&mut self, pod: &str, port: u16, banner: &str, captured: bool) -> Result<()> {
        let spec = self.pods.iter().find(|p| p.name == pod).with_context(|| format!("no pod {pod}"))?.clone();
        let listen = format!("{}:{port}", spec.ip);
        let mut cmd = self.command_in(
            &self.pod_netns(pod),
            captured,
            &crate::workspace_binary("pod"),
            &["echo", "--listen", &listen, "--banner", banner],
        );
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.spawn(cmd)?;
        wait_for_listener(&self.pod_netns(pod), &listen, Duration::from_secs(5))
    }

    /// Runs `pod load` from pod `pod` inside the capture cgroup and returns its report.
    ///
    /// # Errors
    /// The client cannot run or prints no report.
    pub fn load(&self, pod: &str, args: &[&str]) -> Result<LoadReport> {
        self.load_in(pod, &self.cgroup, args)
    }

    /// Like [`Node::load`], from inside `cgroup`.
    ///
    /// # Errors
    /// As [`Node::load`].
    pub fn load_in(&self, pod: &str, cgroup: &Path, args: &[&str]) -> Result<LoadReport> {
        let mut full = vec!["load"];
        full.extend_from_slice(args);
        let out = self
            .command_in_cgroup(&self.pod_netns(pod), Some(cgroup), &crate::workspace_binary("pod"), &full)
            .stderr(Stdio::inherit())
            .output()
            .context("running pod load")?;
        if !out.status.success() {
            bail!("pod load failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing {:?}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Runs `pod raw` from pod `pod` inside the capture cgroup (raw bytes to a target, through
    /// the real capture path) and returns what came back.
    ///
    /// # Errors
    /// The client cannot run or prints no report.
    pub fn raw(&self, pod: &str, args: &[&str]) -> Result<RawReport> {
        let mut full = vec!["raw"];
        full.extend_from_slice(args);
        let out = self
            .command_in(&self.pod_netns(pod), true, &crate::workspace_binary("pod"), &full)
            .stderr(Stdio::piped())
            .output()
            .context("running pod raw")?;
        if !out.status.success() {
            bail!("pod raw failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing {:?}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Like [`Node::raw`], in the background: the caller reads the JSON report from stdout later.
    ///
    /// # Errors
    /// The client cannot start.
    pub fn raw_in_background(&self, pod: &str, args: &[&str]) -> Result<Child> {
        let mut full = vec!["raw"];
        full.extend_from_slice(args);
        self.command_in(&self.pod_netns(pod), true, &crate::workspace_binary("pod"), &full)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting pod raw")
    }

    /// Like [`Node::load`], in the background: the caller collects the report later.
    ///
    /// # Errors
    /// The client cannot start.
    pub fn load_in_background(&self, pod: &str, args: &[&str]) -> Result<Child> {
        let mut full = vec!["load"];
        full.extend_from_slice(args);
        self.command_in(&self.pod_netns(pod), true, &crate::workspace_binary("pod"), &full)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting pod load")
    }

    /// GETs `path` from `addr` inside the node namespace (e.g. the agent's loopback admin port);
    /// returns status and body.
    ///
    /// # Errors
    /// The request gets no answer.
    pub fn node_get(&self, addr: &str, path: &str) -> Result<(u16, String)> {
        let out = self
            .command_in(
                &self.node_netns(),
                false,
                &crate::workspace_binary("pod"),
                &["get", "--addr", addr, "--path", path],
            )
            .stderr(Stdio::piped())
            .output()
            .context("running pod get")?;
        if !out.status.success() {
            bail!("GET {addr}{path} in the node failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
        Ok((status.trim().parse().context("status line")?, body.to_owned()))
    }

    /// Reads a pinned map as `bpftool -j map dump pinned` prints it.
    ///
    /// # Errors
    /// bpftool fails or prints no JSON.
    pub fn bpftool_dump(&self, map: &str) -> Result<serde_json::Value> {
        let path = self.bpffs.join(map);
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&path)
            .output()
            .context("running bpftool")?;
        if !out.status.success() {
            bail!("bpftool map dump pinned {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")
    }

    /// Runs `program args…` in pod `pod`'s network namespace and waits for it.
    ///
    /// # Errors
    /// The command fails.
    pub fn exec_in_pod(&self, pod: &str, program: &str, args: &[&str]) -> Result<()> {
        run(Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.pod_netns(pod)))
            .arg("--")
            .arg(program)
            .args(args))
    }

    /// Kills a process this node started.
    pub fn kill(&mut self, pid: u32) {
        if let Some(pos) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Picks a suffix no node uses (none of its names exists) and claims it by creating the capture
/// cgroup, which only one process can: names are never shared, so a teardown removes only its own.
/// Returns the suffix, the cgroup and the bpffs directory (not made: the agent makes it).
fn claim_suffix() -> Result<(String, PathBuf, PathBuf)> {
    let root = cgroup2_root()?;
    let listed = Command::new("ip").args(["netns", "list"]).output().context("running ip netns list")?;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for _ in 0..16 {
        let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ending = format!("-{suffix}");
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/interceptor-test-{suffix}"));
        let in_use = listed.lines().filter_map(|l| l.split_whitespace().next()).any(|ns| ns.ends_with(&ending))
            || bpffs.exists();
        if in_use {
            continue;
        }
        let cgroup = root.join(format!("interceptor-test-{suffix}"));
        match std::fs::create_dir(&cgroup) {
            Ok(()) => return Ok((suffix, cgroup, bpffs)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err).with_context(|| format!("creating cgroup {}", cgroup.display())),
        }
    }
    bail!("no free test node suffix after 16 tries (leftovers of earlier runs?)")
}

/// Removes what a node made, whatever its processes are doing: kills the processes left in its
/// namespaces and cgroups (by PID: all started by the node's own), then removes its cgroups
/// innermost first, its namespaces and its bpffs directory (the agent's pins).
pub fn tear_down(namespaces: &[String], cgroup: &Path, bpffs: &Path) {
    for ns in namespaces {
        let out = Command::new("ip").args(["netns", "pids", ns]).output();
        kill_all(&out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default());
    }
    remove_cgroup(cgroup);
    for ns in namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    let _ = std::fs::remove_dir_all(bpffs);
}

/// SIGKILLs every PID listed one per line in `pids` (a cgroup's members, a namespace's processes).
fn kill_all(pids: &str) {
    for pid in pids.lines().filter_map(|l| l.trim().parse::<libc::pid_t>().ok()) {
        // SAFETY: kill(2) on a process in one of this node's own namespaces or cgroups.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Removes `dir`, one of this node's cgroups, with the cgroups under it: each once empty, its
/// remaining members killed, removal retried for up to 5 s (a killed process leaves its cgroup
/// only when it has exited, which takes a while under load).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        kill_all(&std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded by `timeout`; zero: looks once) until something listens on TCP `addr` inside
/// `netns`.
///
/// # Errors
/// Nothing listens in time.
pub fn wait_for_listener(netns: &str, addr: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let out = Command::new("ip").args(["netns", "exec", netns, "ss", "-Htln", &format!("src {addr}")]).output()?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!("nothing listens on {addr} in {netns} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // What a child started itself may still be exiting (or alive) in the namespaces.
        tear_down(&lock(&self.namespaces), &self.cgroup, &self.bpffs);
    }
}
