//! A real Kubernetes control plane on loopback for tests, and a bridge to it from a network namespace.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::interrupt::{on_interrupt, OnInterrupt};

/// The Kubernetes release the control plane is built from (`xtask/controlplane/go.mod`).
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// The binaries `cargo xtask setup` builds into [`controlplane_bin_dir`].
pub const CONTROLPLANE_BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];
/// Machine-wide cache that survives runs and fresh clones.
pub const CACHE_ROOT: &str = "/var/cache/interceptor";
/// Everything the Go build depends on; a change to any of them selects a new cache directory.
const GO_MODULE_FILES: [&[u8]; 5] = [
    include_bytes!("../../xtask/controlplane/go.mod"),
    include_bytes!("../../xtask/controlplane/go.sum"),
    include_bytes!("../../xtask/controlplane/cmd/etcd/main.go"),
    include_bytes!("../../xtask/controlplane/cmd/kube-apiserver/main.go"),
    include_bytes!("../../xtask/controlplane/cmd/kube-controller-manager/main.go"),
];
/// The Istio CRDs tests install: every kind the agent reads, serving v1, v1beta1 and v1alpha3.
const ISTIO_CRDS: &str = include_str!("../k8s/istio-crds.yaml");
const ISTIO_CRD_NAMES: [&str; 5] = [
    "virtualservices.networking.istio.io",
    "destinationrules.networking.istio.io",
    "serviceentries.networking.istio.io",
    "workloadentries.networking.istio.io",
    "gateways.networking.istio.io",
];
/// Controllers tests need: EndpointSlices for Services, the `default` ServiceAccount that pod
/// admission requires, and namespace deletion.
const CONTROLLERS: &str = "endpointslice-controller,serviceaccount-controller,namespace-controller";
/// Debian's kubectl (1.32; `--subresource` needs 1.24+).
const KUBECTL: &str = "/usr/bin/kubectl";
/// The admin user's bearer token (group system:masters); the control plane is loopback-only.
const ADMIN_TOKEN: &str = "interceptor-test-admin-token";
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Where `cargo xtask setup` puts (and tests find) the control-plane binaries:
/// `/var/cache/interceptor/controlplane-v1.37.2-<hash of the Go module>/bin`.
pub fn controlplane_bin_dir() -> PathBuf {
    let hash = GO_MODULE_FILES.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, file| fnv1a(h, file));
    Path::new(CACHE_ROOT).join(format!("controlplane-{KUBERNETES_VERSION}-{:012x}", hash >> 16)).join("bin")
}

/// FNV-1a: a hash that is stable across Rust releases (std's hashers promise no such thing).
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A port the kernel says is free on 127.0.0.1 now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `child` has exited, without reaping it (`WNOWAIT`): until it is reaped its PID cannot
/// be reused, so a registered teardown may still signal it. A child already reaped counts too.
fn exited(child: &Child) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(2) on our own child, into the local above.
    let rc = unsafe { libc::waitid(libc::P_PID, child.id(), &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
    if rc != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
    }
    // With WNOHANG and the child still running, waitid succeeds and leaves si_pid 0.
    // SAFETY: si_pid is the field waitid(2) fills for WEXITED.
    unsafe { info.si_pid() != 0 }
}

/// A child process; dropping it stops the process.
struct Process {
    name: &'static str,
    child: Child,
    /// SIGKILL should this process be told to stop first; unregistered only once the child has
    /// exited and just before it is reaped (so `None` once reaped), so that its PID is never
    /// signalled once it may have been reused, and a signal during [`Process::stop`]'s wait still
    /// ends it.
    interrupt: Option<OnInterrupt>,
}

impl Process {
    /// Starts `binary args…` with stdout and stderr appended to `log`.
    fn spawn(name: &'static str, binary: &Path, args: &[String], log: PathBuf) -> Result<Process> {
        let out = File::options().create(true).append(true).open(&log).with_context(|| format!("{}", log.display()))?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} (run `cargo xtask setup`)", binary.display()))?;
        let pid = libc::pid_t::try_from(child.id()).context("pid")?;
        // SAFETY: kill(2) on the pid of our own child, not yet reaped (see `interrupt`).
        let interrupt = Some(on_interrupt(move || unsafe {
            libc::kill(pid, libc::SIGKILL);
        }));
        Ok(Process { name, child, interrupt })
    }

    /// Fails with the log's tail if the process has exited.
    fn check_running(&mut self) -> Result<()> {
        if self.exited() {
            let status = self.reap()?;
            bail!("{} exited ({status})", self.name);
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
    fn stop(&mut self) {
        if !self.exited() {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while !self.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// SIGKILL unless it has exited, and reaps it.
    fn kill(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
        }
        let _ = self.reap();
    }

    /// Whether the child has exited; once reaped, its PID (maybe another process's now) is not
    /// asked about again.
    fn exited(&self) -> bool {
        self.interrupt.is_none() || exited(&self.child)
    }

    /// Unregisters the teardown, then reaps the child (in that order: see `interrupt`).
    fn reap(&mut self) -> io::Result<std::process::ExitStatus> {
        self.interrupt = None;
        self.child.wait()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polls `ready` every [`POLL_INTERVAL`] until it says yes, fails, or `timeout` passes (`what`
/// names the wait in that error).
pub fn poll_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready()? {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Ok(())
}

/// A temporary directory removed on drop (or should the process be told to stop).
struct TempDir {
    path: PathBuf,
    _interrupt: OnInterrupt,
}

impl TempDir {
    fn create() -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("icp-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let removed = path.clone();
        let interrupt = on_interrupt(move || {
            let _ = fs::remove_dir_all(&removed);
        });
        Ok(TempDir { path, _interrupt: interrupt })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 free ports, with an admin
/// kubeconfig. Dropping it stops every process it started and removes its directory.
pub struct ControlPlane {
    // Field order is drop order: controllers, API server, etcd, then the directory.
    controller_manager: Option<Process>,
    apiserver: Option<Process>,
    etcd: Option<Process>,
    apiserver_args: Vec<String>,
    port: u16,
    kubeconfig: PathBuf,
    next_kubeconfig: AtomicU32,
    dir: TempDir,
}

impl ControlPlane {
    /// Starts the control plane in a fresh temporary directory and waits until the API server is
    /// ready and the controller manager has created the `default` ServiceAccount.
    ///
    /// # Errors
    /// A binary is missing (run `cargo xtask setup`) or a component does not become ready in time;
    /// the error carries the tail of its log.
    pub fn start() -> Result<ControlPlane> {
        let dir = TempDir::create()?;
        let bin = controlplane_bin_dir();
        write_pki(&dir.path)?;
        fs::write(dir.path.join("tokens.csv"), format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"))?;
        let etcd_url = format!("http://127.0.0.1:{}", free_port()?);
        let etcd =
            Process::spawn("etcd", &bin.join("etcd"), &etcd_args(&dir.path, &etcd_url)?, dir.path.join("etcd.log"))?;
        let port = free_port()?;
        let mut plane = ControlPlane {
            controller_manager: None,
            apiserver: None,
            etcd: Some(etcd),
            apiserver_args: apiserver_args(&dir.path, port, &etcd_url),
            port,
            kubeconfig: dir.path.join("admin.kubeconfig"),
            next_kubeconfig: AtomicU32::new(0),
            dir,
        };
        write_kubeconfig(&plane.kubeconfig, &plane.server(), &plane.dir.path.join("ca.crt"), ADMIN_TOKEN, None)?;
        plane.start_apiserver()?;
        plane.start_controller_manager()?;
        Ok(plane)
    }

    /// The API server's URL on the host loopback: `https://127.0.0.1:<port>`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The API server's address on the host loopback (a [`LoopbackBridge`] target).
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The directory holding the logs (`etcd.log`, `kube-apiserver.log`,
    /// `kube-controller-manager.log`), certificates and kubeconfigs; removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The admin kubeconfig (token of a system:masters user).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The CA that signed the API server's serving certificate (SANs: 127.0.0.1, localhost,
    /// 10.96.0.1, kubernetes.default.svc…).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path.join("ca.crt")
    }

    /// Runs `kubectl args…` as admin and returns its stdout.
    ///
    /// # Errors
    /// kubectl fails; the error carries its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with_input(args, None)
    }

    fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let mut child = Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl")?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes()).context("writing to kubectl")?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Server-side applies `yaml` (one or more documents) as admin.
    ///
    /// # Errors
    /// As [`ControlPlane::kubectl`].
    pub fn apply(&self, yaml: &str) -> Result<()> {
        self.kubectl_with_input(&["apply", "--server-side", "--field-manager=testbed", "-f", "-"], Some(yaml))?;
        Ok(())
    }

    /// Installs the Istio CRDs (`tests/k8s/istio-crds.yaml`) and waits until they are Established.
    ///
    /// # Errors
    /// As [`ControlPlane::kubectl`].
    pub fn install_istio_crds(&self) -> Result<()> {
        self.apply(ISTIO_CRDS)?;
        let names: Vec<String> = ISTIO_CRD_NAMES.iter().map(|n| format!("crd/{n}")).collect();
        let mut args = vec!["wait", "--for", "condition=established", "--timeout=60s"];
        args.extend(names.iter().map(String::as_str));
        self.kubectl(&args)?;
        Ok(())
    }

    /// A token for ServiceAccount `namespace/name` (which must exist), valid for an hour.
    ///
    /// # Errors
    /// As [`ControlPlane::kubectl`].
    pub fn create_token(&self, namespace: &str, name: &str) -> Result<String> {
        Ok(self.kubectl(&["create", "token", name, "-n", namespace, "--duration=1h"])?.trim().to_owned())
    }

    /// Writes a kubeconfig that authenticates with `token` against `server` (this control plane's
    /// [`ControlPlane::server`], or a [`LoopbackBridge::url`] to it) and returns its path. Its
    /// context's namespace is the agent's, [`AGENT_NAMESPACE`], as a pod's service account
    /// gives it in a cluster (the agent reads its credential Secrets there).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn kubeconfig_for_token(&self, token: &str, server: &str) -> Result<PathBuf> {
        let n = self.next_kubeconfig.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path.join(format!("token-{n}.kubeconfig"));
        write_kubeconfig(&path, server, &self.ca_file(), token, Some(AGENT_NAMESPACE))?;
        Ok(path)
    }

    /// Creates Node `name` (enough for the endpointslice controller, which skips pods on unknown
    /// nodes).
    ///
    /// # Errors
    /// As [`ControlPlane::kubectl`].
    pub fn create_node(&self, name: &str) -> Result<()> {
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        });
        self.apply(&node.to_string())
    }

    /// Creates Pod `namespace/name` with `labels`, bound to `node`, and marks it Running and Ready
    /// at `ip`, as a kubelet would. No container runs: the Pod exists only as an API object.
    ///
    /// # Errors
    /// As [`ControlPlane::kubectl`].
    pub fn create_ready_pod(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
        ip: Ipv4Addr,
    ) -> Result<()> {
        let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "app", "image": "example.invalid/app:1", "ports": [{"containerPort": 8080}]}],
            },
        });
        self.apply(&pod.to_string())?;
        self.set_pod_status(namespace, name, ip, true)
    }

    /// Writes the status a kubelet would for a running pod at `ip` and its IPv6 twin (every test
    /// pod is dual-stack; host IP: the test node's gateway), Ready or not; the Pod must have
    /// `spec.nodeName`.
    ///
    /// # Errors
    /// As [`ControlPlane::kubectl`].
    pub fn set_pod_status(&self, namespace: &str, name: &str, ip: Ipv4Addr, ready: bool) -> Result<()> {
        let ready = if ready { "True" } else { "False" };
        let host = crate::GATEWAY.to_string();
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": host,
            "hostIPs": [{"ip": host}],
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}, {"ip": crate::ipv6_twin(crate::POD_PREFIX6, ip).to_string()}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
        }});
        let patch = status.to_string();
        self.kubectl(&["patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", &patch])?;
        Ok(())
    }

    /// Kills the API server (SIGKILL, like a crash: clients see their connections reset; a
    /// SIGTERM would wait for the controller manager's watches to end); etcd and the controllers
    /// keep running.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.kill();
        }
    }

    /// Starts the API server again (same port, same etcd) and waits until it is ready.
    ///
    /// # Errors
    /// It exits or is not ready in time; the error carries its log's tail.
    pub fn start_apiserver(&mut self) -> Result<()> {
        let binary = controlplane_bin_dir().join("kube-apiserver");
        let log = self.dir.path.join("kube-apiserver.log");
        self.apiserver = Some(Process::spawn("kube-apiserver", &binary, &self.apiserver_args, log)?);
        self.wait_for_apiserver()
    }

    fn wait_for_apiserver(&mut self) -> Result<()> {
        let result = poll_until("kube-apiserver /readyz", READY_TIMEOUT, || {
            self.check_processes()?;
            Ok(self.kubectl(&["get", "--raw", "/readyz", "--request-timeout=5s"]).is_ok_and(|body| body.trim() == "ok"))
        });
        result.with_context(|| {
            format!("kube-apiserver is not ready; logs:\n{}", self.log_tails(&["etcd", "kube-apiserver"]))
        })
    }

    fn start_controller_manager(&mut self) -> Result<()> {
        let binary = controlplane_bin_dir().join("kube-controller-manager");
        let args = controller_manager_args(&self.kubeconfig);
        let log = self.dir.path.join("kube-controller-manager.log");
        self.controller_manager = Some(Process::spawn("kube-controller-manager", &binary, &args, log)?);
        // The serviceaccount controller creating `default/default` shows the controllers run.
        let result = poll_until("kube-controller-manager (ServiceAccount default/default)", READY_TIMEOUT, || {
            self.check_processes()?;
            Ok(self.kubectl(&["get", "serviceaccount", "default", "-n", "default", "-o", "name"]).is_ok())
        });
        result.with_context(|| {
            format!("kube-controller-manager is not ready; log:\n{}", self.log_tails(&["kube-controller-manager"]))
        })
    }

    /// Fails if a started process has exited.
    fn check_processes(&mut self) -> Result<()> {
        for process in [&mut self.etcd, &mut self.apiserver, &mut self.controller_manager].into_iter().flatten() {
            process.check_running()?;
        }
        Ok(())
    }

    fn log_tails(&self, names: &[&str]) -> String {
        let tail = |name: &&str| format!("--- {name}.log:\n{}", log_tail(&self.dir.path.join(format!("{name}.log"))));
        names.iter().map(tail).collect::<Vec<_>>().join("\n")
    }
}

fn etcd_args(dir: &Path, client_url: &str) -> Result<Vec<String>> {
    let peer_url = format!("http://127.0.0.1:{}", free_port()?);
    Ok(vec![
        "--name=test".into(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=test={peer_url}"),
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ])
}

fn apiserver_args(dir: &Path, port: u16, etcd_url: &str) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--etcd-servers={etcd_url}"),
        format!("--cert-dir={}", file("apiserver-certs")),
        format!("--tls-cert-file={}", file("apiserver.crt")),
        format!("--tls-private-key-file={}", file("apiserver.key")),
        // Dual-stack: Services may have an IPv6 ClusterIP too (the test node's ULA range).
        "--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112".into(),
        // The `kubernetes` Service's endpoints would be the advertise address, and loopback
        // addresses are invalid endpoints: the API server refuses to start with the reconciler on.
        "--endpoint-reconciler-type=none".into(),
        "--authorization-mode=RBAC".into(),
        format!("--token-auth-file={}", file("tokens.csv")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", file("sa.pub")),
        format!("--service-account-signing-key-file={}", file("sa.key")),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
    ]
}

fn controller_manager_args(kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--controllers={CONTROLLERS}"),
        "--leader-elect=false".into(),
        // No serving: nothing scrapes it, and readiness is observed through what it does.
        "--secure-port=0".into(),
        "--profiling=false".into(),
    ]
}

/// Names the API server's serving certificate holds: loopback (also through a bridge, whatever
/// the port) and the in-cluster names of the `kubernetes` Service.
const APISERVER_SANS: &str = "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,\
DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local";

/// Writes a CA, the API server's serving certificate signed by it, and the service-account
/// signing key pair, with openssl. Our own CA rather than the API server's self-signed fallback,
/// so every client (kubectl, rustls) gets one plain CA file to trust.
fn write_pki(dir: &Path) -> Result<()> {
    let path = |name: &str| dir.join(name).display().to_string();
    let (ca_key, ca_crt) = (path("ca.key"), path("ca.crt"));
    ec_key(&ca_key)?;
    let ca_extensions = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"];
    certificate(&ca_key, "/CN=interceptor-test-ca", &ca_extensions, None, &ca_crt)?;
    ec_key(&path("apiserver.key"))?;
    let serving_extensions = [
        APISERVER_SANS,
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        "extendedKeyUsage=serverAuth",
    ];
    let signer = Some((ca_crt.as_str(), ca_key.as_str()));
    certificate(&path("apiserver.key"), "/CN=kube-apiserver", &serving_extensions, signer, &path("apiserver.crt"))?;
    ec_key(&path("sa.key"))?;
    openssl(&["pkey", "-in", &path("sa.key"), "-pubout", "-out", &path("sa.pub")])
}

/// A P-256 private key at `out`.
fn ec_key(out: &str) -> Result<()> {
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", out])
}

/// A certificate for `key` valid two days, signed by `signer` (certificate, key) or by itself.
fn certificate(key: &str, subject: &str, extensions: &[&str], signer: Option<(&str, &str)>, out: &str) -> Result<()> {
    let mut args = vec!["req", "-x509", "-new", "-key", key, "-subj", subject, "-days", "2", "-out", out];
    if let Some((ca_crt, ca_key)) = signer {
        args.extend(["-CA", ca_crt, "-CAkey", ca_key]);
    }
    for extension in extensions {
        args.extend(["-addext", extension]);
    }
    openssl(&args)
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).stdin(Stdio::null()).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A kubeconfig (JSON, which kubeconfig readers accept as YAML) for `server`, trusting `ca`,
/// authenticating with bearer `token`, in `namespace` (else `default`).
fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str, namespace: Option<&str>) -> Result<()> {
    let mut context = json!({"cluster": "test", "user": "test"});
    if let Some(namespace) = namespace {
        context["namespace"] = json!(namespace);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": context}],
        "current-context": "test",
    });
    fs::write(path, serde_json::to_vec_pretty(&config)?).with_context(|| format!("writing {}", path.display()))
}

/// deploy/'s namespace, where the agent runs and reads its credential Secrets.
pub const AGENT_NAMESPACE: &str = "interceptor-system";

/// A TCP forwarder from 127.0.0.1:<port> inside a network namespace to an address on the host's
/// loopback (which a namespace's own loopback cannot reach). Dropping it closes the listener and
/// every forwarded connection.
pub struct LoopbackBridge {
    port: u16,
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl LoopbackBridge {
    /// Listens on 127.0.0.1 (a free port) in network namespace `netns` (`/run/netns/<netns>`, its
    /// loopback up) and forwards each connection to `target`.
    ///
    /// # Errors
    /// The namespace cannot be entered or the listener cannot be bound there.
    pub fn open(netns: &str, target: SocketAddr) -> Result<LoopbackBridge> {
        Self::open_on(netns, 0, target)
    }

    /// Like [`LoopbackBridge::open`], on `port` (a bridge closed earlier reopened where its
    /// clients expect it).
    ///
    /// # Errors
    /// As [`LoopbackBridge::open`], or the port is taken.
    pub fn open_on(netns: &str, port: u16, target: SocketAddr) -> Result<LoopbackBridge> {
        let netns_path = Path::new("/run/netns").join(netns);
        let connections = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        // Sockets stay in the namespace they were created in, and threads inherit their creator's
        // namespace: the host-side connector is spawned here, before anything enters `netns`.
        let (accepted, to_connect) = mpsc::channel::<TcpStream>();
        let conns = Arc::clone(&connections);
        std::thread::Builder::new()
            .name("bridge-connect".into())
            .spawn(move || connect_each(&to_connect, target, &conns))?;
        let (listening, bound) = mpsc::channel();
        let stop = Arc::clone(&stopping);
        let acceptor = std::thread::Builder::new().name("bridge-accept".into()).spawn(move || {
            match listen_in(&netns_path, port) {
                Ok(listener) => {
                    let listener = Arc::new(listener);
                    let _ = listening.send(Ok(Arc::clone(&listener)));
                    accept_each(&listener, &stop, &accepted);
                }
                Err(e) => {
                    let _ = listening.send(Err(e));
                }
            }
        })?;
        let listener: Arc<TcpListener> =
            bound.recv().context("bridge thread ended")?.with_context(|| format!("bridge in netns {netns}"))?;
        let port = listener.local_addr()?.port();
        Ok(LoopbackBridge { port, listener, stopping, connections, acceptor: Some(acceptor) })
    }

    /// The listening port on 127.0.0.1 inside the namespace.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:<port>`: the API server as seen from inside the namespace (its serving
    /// certificate holds IP 127.0.0.1, so it verifies on any port).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for LoopbackBridge {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes a blocked accept(2) on Linux.
        // SAFETY: the fd belongs to `self.listener`, which this Arc keeps open.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        if let Ok(connections) = self.connections.lock() {
            for stream in connections.iter() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Enters network namespace `path` (this thread only) and binds 127.0.0.1:`port` there.
fn listen_in(path: &Path, port: u16) -> Result<TcpListener> {
    let netns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns(2) with an fd we own; it moves only the calling thread.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("setns");
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("binding 127.0.0.1:{port} (is the namespace's loopback up?)"))
}

fn accept_each(listener: &TcpListener, stopping: &AtomicBool, accepted: &mpsc::Sender<TcpStream>) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(stream) = stream {
            if accepted.send(stream).is_err() {
                return;
            }
        }
    }
}

/// Connects each accepted stream to `target` (from the host namespace) and pumps both ways.
fn connect_each(accepted: &mpsc::Receiver<TcpStream>, target: SocketAddr, connections: &Mutex<Vec<TcpStream>>) {
    for inside in accepted {
        let Ok(outside) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            continue; // dropping `inside` closes it: the client sees the target as down
        };
        let streams = [inside.try_clone(), outside.try_clone(), inside.try_clone(), outside.try_clone()];
        let [Ok(inside_w), Ok(outside_r), Ok(inside_c), Ok(outside_c)] = streams else { continue };
        if let Ok(mut list) = connections.lock() {
            list.retain(|s| s.peer_addr().is_ok());
            list.extend([inside_c, outside_c]);
        }
        std::thread::spawn(move || pump(inside, outside));
        std::thread::spawn(move || pump(outside_r, inside_w));
    }
}

/// Copies `from` to `to` until `from` ends, then passes the end on (a half close, as TCP has it).
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child killed and reaped however the test ends.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `exited` sees the exit and leaves the child a zombie (its PID still ours), then reaped.
    #[test]
    fn exited_sees_an_exit_without_reaping_the_child() {
        let mut child = Reaped(Command::new("sleep").arg("30").spawn().expect("sleep runs"));
        let proc_stat = format!("/proc/{}/stat", child.0.id());
        assert!(!exited(&child.0), "a running child has not exited");
        child.0.kill().expect("SIGKILL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !exited(&child.0) {
            assert!(Instant::now() < deadline, "the killed child never showed as exited");
            std::thread::sleep(Duration::from_millis(10));
        }
        let state = std::fs::read_to_string(&proc_stat).expect("the exited child is not reaped yet");
        assert!(state.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z')), "{state}");
        assert!(child.0.wait().is_ok());
        assert!(!Path::new(&proc_stat).exists(), "reaped by wait");
    }
}
