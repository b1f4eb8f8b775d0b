//! Agent settings: where to listen, what to capture, where to pin; a YAML file plus defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Diagnostic, Limits, LimitsFile, Severity};

/// Default proxy listener: every address of the node, Istio's outbound port.
pub const DEFAULT_LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 15001);
/// Default cgroup whose processes are captured: the node's whole cgroup v2 tree.
pub const DEFAULT_CGROUP: &str = "/sys/fs/cgroup";
/// Default directory of pinned maps.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/interceptor";
/// Namespace of resources that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default admin listener (readiness, config dump, metrics): loopback only, Envoy's admin port.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15000));

/// How connections are captured.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// cgroup connect hooks redirect sockets (no packet rewriting).
    #[default]
    Socket,
    /// XDP rewrites packets on pod interfaces to the proxy; TC egress reverses it for replies.
    Packet,
}

/// What happens to connections to captured services while the proxy is not serving.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// They go to their original destination (capture is off while the proxy is down).
    #[default]
    Open,
    /// They keep being sent to the proxy address, and fail (connection refused).
    Closed,
}

impl std::str::FromStr for CaptureMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_yaml::from_str(s).map_err(|_| format!("unknown mode `{s}` (socket | packet)"))
    }
}

impl std::str::FromStr for FailurePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_yaml::from_str(s).map_err(|_| format!("unknown failure policy `{s}` (open | closed)"))
    }
}

/// Where the Istio resources come from.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConfigSource {
    /// A directory of YAML files (`--config`), followed live.
    #[default]
    Files,
    /// The Kubernetes API server: Istio resources, Services, EndpointSlices and pod labels.
    Kubernetes,
}

/// The kubelet's pod cgroup under the cgroup v2 root: systemd driver first, then cgroupfs.
pub const KUBELET_POD_CGROUPS: &[&str] = &["kubepods.slice", "kubepods"];

/// This agent's workload name unless `workload` says otherwise (the DaemonSet's name).
pub const DEFAULT_WORKLOAD_NAME: &str = "interceptor";

/// Where `credentialName` directories are looked up by default.
pub const DEFAULT_CREDENTIALS: &str = "/etc/interceptor/credentials";

/// Default interfaces packet mode attaches to: the usual host side of pod veths.
pub const DEFAULT_INTERFACES: &[&str] = &["veth*"];

/// The settings file as written; every field optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsFile {
    /// Proxy listener.
    pub listen: Option<SocketAddrV4>,
    /// Address captured connections are sent to, as pods reach the node. Defaults to `listen`,
    /// which then must not be `0.0.0.0`.
    pub redirect: Option<SocketAddrV4>,
    /// IPv6 proxy listener (`IPV6_V6ONLY`, beside `listen`). Defaults to `[::]` on the port of
    /// `redirect6` when that is set; without either, IPv6 is not captured.
    pub listen6: Option<SocketAddrV6>,
    /// Address captured IPv6 connections are sent to, as pods reach the node over IPv6. Defaults
    /// to `listen6` when that is a concrete address.
    pub redirect6: Option<SocketAddrV6>,
    /// cgroup v2 directory whose processes are captured.
    pub cgroup: Option<PathBuf>,
    /// bpffs directory for pinned maps.
    pub bpffs: Option<PathBuf>,
    /// Capture mode.
    pub mode: Option<CaptureMode>,
    /// Packet mode: interface names or shell patterns (`veth*`) to attach to.
    pub interfaces: Option<Vec<String>>,
    /// What happens while the proxy is down.
    pub failure_policy: Option<FailurePolicy>,
    /// Socket mode: move the bytes between a pod and the proxy on this node through the kernel's
    /// sockmap instead of TCP/IP and the veth (`sk_msg`). Off by default.
    pub fast_path: Option<bool>,
    /// Namespace of resources without one.
    pub namespace: Option<String>,
    /// Admin listener; must be a loopback address.
    pub admin: Option<SocketAddr>,
    /// Limits on downstream connections.
    pub limits: Option<LimitsFile>,
    /// Where the Istio resources come from: `files` (default) or `kubernetes`.
    pub source: Option<ConfigSource>,
    /// Kubernetes: a kubeconfig to use instead of the pod's service account (or `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the downward API's `spec.nodeName`, env `NODE_NAME`).
    pub node_name: Option<String>,
    /// This node's IP (the downward API's `status.hostIP`, env `NODE_IP`); the redirect address
    /// defaults to it when the listener is `0.0.0.0`.
    pub node_ip: Option<Ipv4Addr>,
    /// This agent's labels, which a Gateway's `selector` must all match for the agent to serve it.
    pub labels: Option<BTreeMap<String, String>>,
    /// Address the listeners of selected Gateways bind on; without it the agent serves no Gateway.
    pub gateway_address: Option<IpAddr>,
    /// Directory of `credentialName` credentials (files source; from the API server they are
    /// Secrets): `<dir>/<name>/tls.crt`, `tls.key`, `ca.crt` (or `cert`, `key`, `cacert`).
    pub credentials: Option<PathBuf>,
    /// This agent's own workload, `namespace/name` (env `WORKLOAD`).
    pub workload: Option<String>,
}

/// Resolved settings the agent runs with.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Settings {
    /// Proxy listener.
    pub listen: SocketAddrV4,
    /// Address captured connections are sent to.
    pub redirect: SocketAddrV4,
    /// IPv6 proxy listener, when IPv6 is captured.
    pub listen6: Option<SocketAddrV6>,
    /// Address captured IPv6 connections are sent to; `None`: IPv6 is not captured.
    pub redirect6: Option<SocketAddrV6>,
    /// cgroup v2 directory whose processes are captured.
    pub cgroup: PathBuf,
    /// bpffs directory for pinned maps.
    pub bpffs: PathBuf,
    /// Capture mode.
    pub mode: CaptureMode,
    /// Packet mode: interface name patterns.
    pub interfaces: Vec<String>,
    /// What happens while the proxy is down.
    pub failure_policy: FailurePolicy,
    /// Socket mode: the sockmap fast path between local sockets.
    pub fast_path: bool,
    /// Namespace of resources without one.
    pub namespace: String,
    /// Admin listener (loopback).
    pub admin: SocketAddr,
    /// Limits on downstream connections.
    pub limits: Limits,
    /// Where the Istio resources come from.
    pub source: ConfigSource,
    /// Kubernetes: kubeconfig file, if not the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name, when known.
    pub node_name: Option<String>,
    /// Labels a Gateway's selector is matched against.
    pub labels: BTreeMap<String, String>,
    /// Address gateway listeners bind on; `None`: this agent serves no Gateway.
    pub gateway_address: Option<IpAddr>,
    /// Directory of `credentialName` credentials.
    pub credentials: PathBuf,
    /// This agent's own workload: the source Istio's metrics name for the requests it serves as a
    /// gateway (an Istio ingress gateway reports them under its own deployment).
    pub workload: Workload,
}

/// A workload by namespace and name.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
}

impl Workload {
    /// Reads `namespace/name`.
    fn parse(written: &str) -> Result<Self, String> {
        match written.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self { namespace: namespace.to_owned(), name: name.to_owned() })
            }
            _ => Err(format!("workload: {written:?} is not `namespace/name`")),
        }
    }
}

impl SettingsFile {
    /// Reads a settings file.
    ///
    /// # Errors
    /// Unreadable file, YAML error or unknown field, with file and line.
    pub fn read(path: &Path) -> Result<Self, Diagnostic> {
        let text = std::fs::read_to_string(path).map_err(|err| Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 0,
            resource: "settings".into(),
            field: String::new(),
            message: format!("cannot read: {err}"),
        })?;
        serde_yaml::from_str::<Option<Self>>(&text)
            .map(Option::unwrap_or_default)
            .map_err(|err| Diagnostic::from_serde(path, 0, "settings", &err))
    }

    /// Values set in `over` win over values set here.
    pub fn merge(self, over: SettingsFile) -> SettingsFile {
        SettingsFile {
            listen: over.listen.or(self.listen),
            redirect: over.redirect.or(self.redirect),
            listen6: over.listen6.or(self.listen6),
            redirect6: over.redirect6.or(self.redirect6),
            cgroup: over.cgroup.or(self.cgroup),
            bpffs: over.bpffs.or(self.bpffs),
            mode: over.mode.or(self.mode),
            interfaces: over.interfaces.or(self.interfaces),
            failure_policy: over.failure_policy.or(self.failure_policy),
            fast_path: over.fast_path.or(self.fast_path),
            namespace: over.namespace.or(self.namespace),
            admin: over.admin.or(self.admin),
            limits: over.limits.or(self.limits),
            source: over.source.or(self.source),
            kubeconfig: over.kubeconfig.or(self.kubeconfig),
            node_name: over.node_name.or(self.node_name),
            node_ip: over.node_ip.or(self.node_ip),
            labels: over.labels.or(self.labels),
            gateway_address: over.gateway_address.or(self.gateway_address),
            credentials: over.credentials.or(self.credentials),
            workload: over.workload.or(self.workload),
        }
    }

    /// Fills defaults and checks the combination. With the Kubernetes source and no `cgroup`, the
    /// kubelet's pod cgroup is looked up under the cgroup v2 mount.
    ///
    /// # Errors
    /// A redirect address that pods could not reach, an admin address off loopback, or no pod
    /// cgroup found.
    pub fn resolve(self) -> Result<Settings, String> {
        let admin = self.admin.unwrap_or(DEFAULT_ADMIN);
        if !admin.ip().is_loopback() {
            // The admin endpoints dump the whole config and take no credentials.
            return Err(format!("admin: {admin} is not a loopback address (the admin server has no authentication)"));
        }
        let listen = self.listen.unwrap_or(DEFAULT_LISTEN);
        let redirect = match (self.redirect, self.node_ip) {
            (Some(redirect), _) => redirect,
            // Pods reach the node at its IP; the listener on 0.0.0.0 is there too.
            (None, Some(node_ip)) if listen.ip().is_unspecified() => SocketAddrV4::new(node_ip, listen.port()),
            (None, _) => listen,
        };
        let redirect6 = self.redirect6.or(self.listen6.filter(|l| !l.ip().is_unspecified()));
        let listen6 = self.listen6.or(redirect6.map(|r| SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, r.port(), 0, 0)));
        match (listen6, redirect6) {
            (Some(listen6), None) => {
                return Err(format!(
                    "redirect6: the IPv6 listener {listen6} is no address pods can connect to; set \
                     `redirect6` to an IPv6 address of this node (e.g. the pods' gateway)"
                ))
            }
            (_, Some(r)) if r.ip().is_unspecified() || r.port() == 0 => {
                return Err(format!("redirect6: {r} is not an address pods can connect to"))
            }
            _ => {}
        }
        let source = self.source.unwrap_or_default();
        let cgroup = match (self.cgroup, source) {
            (Some(cgroup), _) => cgroup,
            (None, ConfigSource::Kubernetes) => {
                let root = cgroup2_mount().unwrap_or_else(|| DEFAULT_CGROUP.into());
                find_pod_cgroup(&root)?
            }
            (None, ConfigSource::Files) => DEFAULT_CGROUP.into(),
        };
        if redirect.ip().is_unspecified() || redirect.port() == 0 {
            return Err(format!(
                "redirect: {redirect} is not an address pods can connect to; set `redirect` to an \
                 address of this node (e.g. the pods' gateway) and the listener's port"
            ));
        }
        let mode = self.mode.unwrap_or_default();
        let fast_path = self.fast_path.unwrap_or(false);
        if fast_path && mode != CaptureMode::Socket {
            // Packet mode rewrites addresses under the sockets: the pod's and the proxy's views
            // of a connection differ, so they cannot be paired.
            return Err("fastPath: the sockmap fast path needs `mode: socket`".into());
        }
        let namespace = self.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        let workload = match &self.workload {
            Some(written) => Workload::parse(written)?,
            None => Workload { namespace: namespace.clone(), name: DEFAULT_WORKLOAD_NAME.into() },
        };
        Ok(Settings {
            listen,
            redirect,
            listen6,
            redirect6,
            cgroup,
            bpffs: self.bpffs.unwrap_or_else(|| DEFAULT_BPFFS.into()),
            mode,
            interfaces: self.interfaces.unwrap_or_else(|| DEFAULT_INTERFACES.iter().map(|s| (*s).to_owned()).collect()),
            failure_policy: self.failure_policy.unwrap_or_default(),
            fast_path,
            namespace,
            admin,
            limits: self.limits.unwrap_or_default().resolve()?,
            source,
            kubeconfig: self.kubeconfig,
            node_name: self.node_name,
            labels: self.labels.unwrap_or_default(),
            gateway_address: self.gateway_address,
            credentials: self.credentials.unwrap_or_else(|| DEFAULT_CREDENTIALS.into()),
            workload,
        })
    }
}

/// The kubelet's pod cgroup under `root` (`kubepods.slice` or `kubepods`): capturing there takes
/// every pod and no host process.
///
/// # Errors
/// Neither exists: the agent must not fall back to the whole node.
pub fn find_pod_cgroup(root: &Path) -> Result<PathBuf, String> {
    KUBELET_POD_CGROUPS.iter().map(|name| root.join(name)).find(|dir| dir.is_dir()).ok_or_else(|| {
        format!(
            "cgroup: no kubelet pod cgroup ({}) under {}; set `cgroup` to the cgroup v2 directory holding the pods",
            KUBELET_POD_CGROUPS.join(" or "),
            root.display()
        )
    })
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

impl Settings {
    /// The proxy's listeners: IPv4, and IPv6 when captured.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(SocketAddr::V4(self.listen)).chain(self.listen6.map(SocketAddr::V6)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_defaults_to_a_concrete_listen_address() {
        let file = SettingsFile { listen: Some("10.0.0.1:15001".parse().unwrap()), ..Default::default() };
        assert_eq!(file.resolve().unwrap().redirect, "10.0.0.1:15001".parse().unwrap());
    }

    #[test]
    fn ipv6_is_captured_once_pods_have_an_address_to_reach() {
        let v4 = SettingsFile { listen: Some("10.0.0.1:15001".parse().unwrap()), ..Default::default() };
        let none = v4.clone().resolve().unwrap();
        assert_eq!((none.listen6, none.redirect6), (None, None));
        let redirect6 = SettingsFile { redirect6: Some("[fd00::1]:15001".parse().unwrap()), ..v4.clone() };
        let both = redirect6.resolve().unwrap();
        assert_eq!(both.listen6, Some("[::]:15001".parse().unwrap()));
        assert_eq!(both.redirect6, Some("[fd00::1]:15001".parse().unwrap()));
        assert_eq!(both.listen_addrs().len(), 2);
        let concrete = SettingsFile { listen6: Some("[fd00::1]:15002".parse().unwrap()), ..v4.clone() };
        assert_eq!(concrete.resolve().unwrap().redirect6, Some("[fd00::1]:15002".parse().unwrap()));
        let unspecified = SettingsFile { listen6: Some("[::]:15001".parse().unwrap()), ..v4 };
        assert!(unspecified.resolve().unwrap_err().contains("redirect6"));
    }

    #[test]
    fn the_workload_is_namespace_slash_name_and_defaults_to_the_namespace() {
        let base = || SettingsFile { listen: Some("10.0.0.1:15001".parse().unwrap()), ..Default::default() };
        let resolved = SettingsFile { namespace: Some("mesh".into()), ..base() }.resolve().unwrap();
        assert_eq!(resolved.workload, Workload { namespace: "mesh".into(), name: "interceptor".into() });
        let resolved = SettingsFile { workload: Some("istio-system/ingress".into()), ..base() }.resolve().unwrap();
        assert_eq!(resolved.workload, Workload { namespace: "istio-system".into(), name: "ingress".into() });
        for bad in ["ingress", "/ingress", "ns/", "a/b/c"] {
            let err = SettingsFile { workload: Some(bad.into()), ..base() }.resolve().unwrap_err();
            assert!(err.contains("is not `namespace/name`"), "{bad}: {err}");
        }
    }

    #[test]
    fn unspecified_redirect_is_refused() {
        let err = SettingsFile::default().resolve().unwrap_err();
        assert!(err.contains("redirect"), "{err}");
    }

    #[test]
    fn admin_defaults_to_loopback_and_refuses_other_addresses() {
        let file = SettingsFile { listen: Some("10.0.0.1:15001".parse().unwrap()), ..Default::default() };
        assert_eq!(file.clone().resolve().unwrap().admin, DEFAULT_ADMIN);
        let open = SettingsFile { admin: Some("0.0.0.0:15000".parse().unwrap()), ..file };
        assert!(open.resolve().unwrap_err().contains("loopback"));
    }

    #[test]
    fn flags_override_the_file() {
        let file = SettingsFile { namespace: Some("a".into()), mode: Some(CaptureMode::Socket), ..Default::default() };
        let flags = SettingsFile { namespace: Some("b".into()), ..Default::default() };
        let merged = file.merge(flags);
        assert_eq!(merged.namespace.as_deref(), Some("b"));
        assert_eq!(merged.mode, Some(CaptureMode::Socket));
    }

    #[test]
    fn packet_mode_and_failure_policy_parse() {
        let file: SettingsFile =
            serde_yaml::from_str("mode: packet\nfailurePolicy: closed\ninterfaces: [\"ic*\", eth1]\n").unwrap();
        let settings = SettingsFile { redirect: Some("10.0.0.1:15001".parse().unwrap()), ..file }.resolve().unwrap();
        assert_eq!(settings.mode, CaptureMode::Packet);
        assert_eq!(settings.failure_policy, FailurePolicy::Closed);
        assert_eq!(settings.interfaces, ["ic*", "eth1"]);
        assert_eq!("packet".parse::<CaptureMode>(), Ok(CaptureMode::Packet));
        assert!("xdp".parse::<CaptureMode>().is_err());
    }

    #[test]
    fn defaults_fail_open_on_veths() {
        let settings = SettingsFile { redirect: Some("10.0.0.1:15001".parse().unwrap()), ..Default::default() };
        let settings = settings.resolve().unwrap();
        assert_eq!((settings.mode, settings.failure_policy), (CaptureMode::Socket, FailurePolicy::Open));
        assert_eq!(settings.interfaces, ["veth*"]);
        assert!(!settings.fast_path);
    }

    #[test]
    fn the_fast_path_is_a_socket_mode_setting() {
        let file: SettingsFile = serde_yaml::from_str("fastPath: true\nredirect: 10.0.0.1:15001\n").unwrap();
        assert!(file.clone().resolve().unwrap().fast_path);
        let packet = SettingsFile { mode: Some(CaptureMode::Packet), ..file }.resolve().unwrap_err();
        assert!(packet.starts_with("fastPath:") && packet.contains("mode: socket"), "{packet}");
    }

    #[test]
    fn the_node_ip_is_the_redirect_when_listening_everywhere() {
        let file = SettingsFile { node_ip: Some(Ipv4Addr::new(10, 1, 2, 3)), ..Default::default() };
        assert_eq!(file.clone().resolve().unwrap().redirect, "10.1.2.3:15001".parse().unwrap());
        let explicit = SettingsFile { redirect: Some("10.9.9.9:1".parse().unwrap()), ..file };
        assert_eq!(explicit.resolve().unwrap().redirect, "10.9.9.9:1".parse().unwrap());
    }

    #[test]
    fn the_pod_cgroup_is_the_kubelets_never_the_root() {
        let root = std::env::temp_dir().join(format!("interceptor-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let missing = find_pod_cgroup(&root).unwrap_err();
        assert!(missing.contains("kubepods.slice or kubepods"), "{missing}");
        std::fs::create_dir_all(root.join("kubepods")).unwrap();
        assert_eq!(find_pod_cgroup(&root).unwrap(), root.join("kubepods"));
        std::fs::create_dir_all(root.join("kubepods.slice")).unwrap();
        assert_eq!(find_pod_cgroup(&root).unwrap(), root.join("kubepods.slice"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn unknown_fields_name_their_line() {
        let dir = std::env::temp_dir().join(format!("interceptor-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.yaml");
        std::fs::write(&path, "listen: 0.0.0.0:15001\nredirekt: 1.2.3.4:5\n").unwrap();
        let err = SettingsFile::read(&path).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.message.contains("redirekt"), "{err}");
    }
}
