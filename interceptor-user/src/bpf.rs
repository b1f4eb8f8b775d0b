//! Capture: loads the kernel programs, attaches them, keeps their maps in step, reads counters.
//!
//! This is the only module that talks to aya. Socket mode: `cgroup/connect4` and `connect6`
//! redirect `connect()`s to captured service addresses (either family) to the proxy and `sockops` records the original destination by
//! client address. Packet mode: `xdp` on pod interfaces rewrites packets to captured service
//! addresses to the proxy and records the flow in `CONNTRACK`, `tc` egress restores the source of
//! replies; the interfaces are followed over rtnetlink. Either way [`OrigDstTable::take`] answers
//! the proxy's "where was this connection going?". A heartbeat task keeps `PROXY_TARGET` fresh, so
//! the kernel stops capturing (fail open) within a second of the agent's death.
//!
//! # Minimum kernel version
//!
//! 5.7 (bpf links for cgroup programs, BTF-defined maps, ring buffer for logs); tested on 6.18. The
//! fast path needs the kernel's BTF and the sockmap fixes merged in bpf-next in January 2026 (its
//! count of a socket's moved queue, `sk_psock.msg_tot_len`): see [`QueueLayout`].

mod addr;
mod follow;
mod interfaces;
mod layout;
mod links;
mod maps;
mod pins;
mod splice;
mod sync;

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::{
    maps::SockHash,
    programs::{
        links::FdLink, CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, SkMsg, SkSkb, SockOps, Xdp,
    },
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
pub use interceptor_common::{
    capture::PROXY_SOCKET_MARK,
    stats::{Program, ProgramStats},
};
use interceptor_common::{
    capture::{CapturedService, ProxyTarget, CAPTURE_MAP, CAPTURE_MAX_ENTRIES, PROXY_TARGET_MAP},
    fastpath::{SockPair, PSOCK_QUEUED_OFFSET, SOCK_PAIRS_MAP, SOCK_USER_DATA_OFFSET},
    origdst::{ORIG_DST_BY_COOKIE_MAP, ORIG_DST_MAP, ORIG_DST_MAX_ENTRIES},
    packet::{
        Conntrack, PacketStats, CONNTRACK_MAP, CONNTRACK_MAX_ENTRIES, IFACE_STATS_MAP, IFACE_STATS_MAX_ENTRIES,
        PACKET_STATS_MAP,
    },
    stats::{ServiceStats, PROGRAM_COUNT, PROGRAM_STATS_MAP, SERVICE_STATS_MAP},
    SockAddr,
};
use tokio::{io::unix::AsyncFd, task::JoinHandle};

pub use self::layout::QueueLayout;
pub use self::maps::OrigDstTable;
pub use self::splice::{SpliceEnd, SpliceTable, Spliced, Toward};

pub use self::sync::SyncReport;
use self::{
    follow::Follower,
    links::LinkPins,
    maps::{CaptureMap, ConntrackMap, OrigDstMap, ProxyTargetMap, StatsMaps},
    pins::{PinDir, PinSpec},
};

/// The kernel object built by `build.rs` from `interceptor-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor"));

/// Program names in the object (the entry functions' names).
const CONNECT4: &str = "connect4";
const CONNECT6: &str = "connect6";
const SOCKOPS: &str = "sockops_handover";
const SK_MSG: &str = "sk_msg_fast_path";
const SK_SKB: &str = "sk_skb_fast_path";
const XDP: &str = "xdp_capture";
const TC: &str = "tc_egress";

/// How often the agent refreshes the heartbeat in `PROXY_TARGET` (the kernel treats it as stale
/// after `interceptor_common::capture::HEARTBEAT_STALE_NS`).
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(200);

/// Every map we pin, by its name in `interceptor-common`, with the shape a pin left by an earlier
/// agent must have to be re-adopted. The counter maps stay pinned when the agent stops, so a
/// restarted (or upgraded) agent keeps counting where the last one stopped. `AYA_LOGS` is not ours
/// and stays unpinned.
const PINNED_MAPS: &[PinSpec] = &[
    pin::<SockAddr, CapturedService>(CAPTURE_MAP, CAPTURE_MAX_ENTRIES, false),
    pin::<u32, ProxyTarget>(PROXY_TARGET_MAP, 1, false),
    pin::<u64, SockAddr>(ORIG_DST_BY_COOKIE_MAP, ORIG_DST_MAX_ENTRIES, false),
    pin::<SockAddr, SockAddr>(ORIG_DST_MAP, ORIG_DST_MAX_ENTRIES, false),
    pin::<SockAddr, ServiceStats>(SERVICE_STATS_MAP, CAPTURE_MAX_ENTRIES, true),
    pin::<u32, ProgramStats>(PROGRAM_STATS_MAP, PROGRAM_COUNT, true),
    pin::<SockAddr, Conntrack>(CONNTRACK_MAP, CONNTRACK_MAX_ENTRIES, false),
    pin::<u32, PacketStats>(IFACE_STATS_MAP, IFACE_STATS_MAX_ENTRIES, true),
    pin::<SockAddr, PacketStats>(PACKET_STATS_MAP, CAPTURE_MAX_ENTRIES, true),
];

const fn pin<K, V>(name: &'static str, max_entries: u32, keep: bool) -> PinSpec {
    PinSpec {
        name,
        key_size: std::mem::size_of::<K>() as u32,
        value_size: std::mem::size_of::<V>() as u32,
        max_entries,
        keep,
    }
}

/// How traffic is captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureKind {
    /// cgroup connect hooks on `CaptureSettings::cgroup`.
    Socket,
    /// XDP + TC on the interfaces whose names match these shell patterns (`*`, `?`).
    Packet {
        /// Interface name patterns, e.g. `veth*`.
        interfaces: Vec<String>,
    },
}

/// Where to attach, where to pin, where to send captured connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSettings {
    /// cgroup v2 directory whose processes (and descendants) are captured.
    pub cgroup: PathBuf,
    /// bpffs directory for the map pins (created if missing), e.g. `/sys/fs/bpf/interceptor`.
    pub bpffs: PathBuf,
    /// Proxy listener address as the captured processes reach it over IPv4.
    pub redirect: SocketAddrV4,
    /// Proxy listener address over IPv6; without it IPv6 destinations are not captured.
    pub redirect6: Option<SocketAddrV6>,
    /// Socket or packet capture.
    pub kind: CaptureKind,
    /// Keep capturing while the proxy is down (connections fail) instead of letting them through.
    pub fail_closed: bool,
    /// Socket mode: pair the sockets of captured connections and move their bytes with `sk_msg`.
    pub fast_path: bool,
}

/// Failures of the capture subsystem. Each names the map, program or path involved.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The binary was built with `AYA_BUILD_SKIP=1` and embeds no kernel object.
    #[error("no eBPF object embedded (built with AYA_BUILD_SKIP)")]
    MissingObject,
    /// [`Capture::load`] was called outside a tokio runtime (needed for log forwarding).
    #[error("Capture::load must run inside a tokio runtime")]
    NoRuntime,
    /// The pin directory could not be created or inspected.
    #[error("pin directory {}", path.display())]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The pin directory is not on a bpffs (mount one: `mount -t bpf bpf /sys/fs/bpf`).
    #[error("{} is not on a bpf filesystem", path.display())]
    NotBpffs {
        /// The directory.
        path: PathBuf,
    },
    /// A pin left by an earlier run could not be removed.
    #[error("removing stale pin {}", path.display())]
    StalePin {
        /// The pin file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Parsing the object or creating (and pinning) its maps failed.
    #[error("loading the eBPF object")]
    Load {
        /// aya's error (boxed: it is large).
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program is missing from the object.
    #[error("program `{name}` not in the eBPF object")]
    MissingProgram {
        /// Program name.
        name: &'static str,
    },
    /// Verifying, loading or attaching a program failed.
    #[error("{action} program `{name}`")]
    Program {
        /// Program name.
        name: &'static str,
        /// `loading` or `attaching`.
        action: &'static str,
        /// aya's error; a verifier rejection carries the verifier log.
        #[source]
        source: Box<ProgramError>,
    },
    /// The cgroup directory could not be opened.
    #[error("opening cgroup {}", path.display())]
    Cgroup {
        /// The cgroup v2 directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A map is missing from the object.
    #[error("map `{name}` not in the eBPF object")]
    MissingMap {
        /// Map name.
        name: &'static str,
    },
    /// A map operation failed, or the map's key/value sizes differ from ours.
    #[error("map `{name}`")]
    Map {
        /// Map name.
        name: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// A link could not be pinned.
    #[error("pinning link {}", path.display())]
    PinLink {
        /// The pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: Box<aya::pin::PinError>,
    },
    /// An attachment is not a bpf link (legacy netlink/ioctl fallback), so it cannot be pinned.
    #[error("program `{name}`: attachment is not a pinnable bpf link")]
    NotALink {
        /// Program name.
        name: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    /// The interface list or the rtnetlink socket failed.
    #[error("following interfaces")]
    Interfaces {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The fast path needs this network namespace's cookie (Linux 5.14 and later; the fast path
    /// as a whole needs 5.15, for `bpf_get_netns_cookie` in sockops).
    #[error("fast path: reading the network namespace cookie (SO_NETNS_COOKIE; the fast path needs Linux 5.15+)")]
    NetnsCookie {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A socket's addresses or cookie, which name it to the kernel's programs, cannot be read.
    #[error("reading a socket's addresses or cookie")]
    SocketIdentity {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The running kernel's BTF does not say where the fields the fast path reads are.
    #[error("fast path: {reason}")]
    KernelLayout {
        /// What is missing.
        reason: String,
    },
    /// Kernel log forwarding could not start.
    #[error("starting eBPF log forwarding")]
    Logger {
        /// aya-log's or tokio's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What a process needs to use maps through descriptors it already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapAccess {
    /// Nothing: the descriptor is enough (kernel 6.5 and later, or unprivileged BPF allowed).
    ByDescriptor,
    /// `CAP_BPF`: before 6.5, `kernel.unprivileged_bpf_disabled` turns every `bpf()` command away
    /// from a process without it.
    NeedsCapBpf,
    /// `CAP_SYS_ADMIN`: as above, on 5.7, before `CAP_BPF` existed.
    NeedsCapSysAdmin,
}

/// What this kernel asks of a process to read and write maps through open descriptors. Since
/// 6.5, `kernel.unprivileged_bpf_disabled` only guards creating maps and loading programs.
/// When the kernel version or the sysctl cannot be read, the answer is the cautious one.
pub fn map_access() -> MapAccess {
    use aya::util::KernelVersion;

    let version = KernelVersion::current().ok();
    if version.is_some_and(|v| v >= KernelVersion::new(6, 5, 0)) {
        return MapAccess::ByDescriptor;
    }
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled");
    if disabled.is_ok_and(|value| value.trim() == "0") {
        return MapAccess::ByDescriptor;
    }
    if version.is_some_and(|v| v < KernelVersion::new(5, 8, 0)) {
        MapAccess::NeedsCapSysAdmin
    } else {
        MapAccess::NeedsCapBpf
    }
}

/// Counters of the kernel programs, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Connections redirected per service VIP:port.
    pub services: BTreeMap<SocketAddr, u64>,
    /// Per program, in [`Program::ALL`] order.
    pub programs: Vec<(Program, ProgramStats)>,
}

/// Loaded and attached kernel programs and their maps (socket or packet mode). Dropping it
/// detaches the programs and removes the capture pins; the counter pins stay for the next agent.
pub struct Capture {
    // Field order is drop order: links, then programs (in `ebpf`), then the map pins.
    links: Arc<Mutex<LinkPins>>,
    ebpf: Arc<Mutex<Ebpf>>,
    capture: CaptureMap,
    proxy_target: Arc<Mutex<ProxyTargetMap>>,
    orig_dst: OrigDstTable,
    splices: Option<SpliceTable>,
    stats: StatsMaps,
    tasks: Vec<JoinHandle<()>>,
    settings: CaptureSettings,
    _pins: PinDir,
}

impl Capture {
    /// Loads the embedded object, pins its maps under `settings.bpffs` (re-adopting pins an earlier
    /// agent left when their shape still fits, so counters carry on; replacing them otherwise, and
    /// removing stale link pins, which detaches an earlier agent's programs), writes `PROXY_TARGET`
    /// with ready = 0, attaches the programs of `settings.kind` (pinned links) and starts
    /// forwarding kernel logs to `log`/`tracing`. In packet mode the interfaces are followed from
    /// then on.
    ///
    /// Capture starts disabled: call [`Self::set_ready`] once the proxy listens.
    ///
    /// # Errors
    ///
    /// See [`BpfError`]; a verifier rejection is [`BpfError::Program`] with the log inside.
    ///
    /// # Panics
    ///
    /// Never; outside a tokio runtime it returns [`BpfError::NoRuntime`].
    pub fn load(settings: &CaptureSettings) -> Result<Self, BpfError> {
        if OBJECT.is_empty() {
            return Err(BpfError::MissingObject);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BpfError::NoRuntime);
        }
        raise_memlock_limit();
        let pins = PinDir::prepare(&settings.bpffs, PINNED_MAPS)?;
        let links = LinkPins::prepare(&settings.bpffs)?;

        let pin_paths: Vec<_> = PINNED_MAPS.iter().map(|spec| (spec.name, pins.path(spec.name))).collect();
        let log_level = kernel_log_level();
        let layout = if settings.fast_path { Some(layout::QueueLayout::of_running_kernel()?) } else { None };
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &log_level, false);
        if let Some(layout) = &layout {
            loader.override_global(SOCK_USER_DATA_OFFSET, &layout.sock_user_data, true);
            loader.override_global(PSOCK_QUEUED_OFFSET, &layout.psock_queued, true);
        }
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|source| BpfError::Load { source: Box::new(source) })?;

        // The logger must hold the ring buffer while programs load.
        let logger = EbpfLogger::init(&mut ebpf).map_err(|e| BpfError::Logger { source: Box::new(e) })?;

        let capture = CaptureMap::take(&mut ebpf)?;
        let mut proxy_target = ProxyTargetMap::take(&mut ebpf)?;
        let orig_dst = match settings.kind {
            CaptureKind::Socket => OrigDstTable::socket(OrigDstMap::take(&mut ebpf)?),
            CaptureKind::Packet { .. } => OrigDstTable::packet(ConntrackMap::take(&mut ebpf)?),
        };
        let stats = StatsMaps::take(&mut ebpf)?;
        let splices = match (settings.fast_path, &settings.kind) {
            (true, CaptureKind::Socket) => Some(SpliceTable::take(&mut ebpf)?),
            _ => None,
        };
        proxy_target.set(ProxyTarget {
            addr4: addr::to_kernel(settings.redirect.into()),
            // Port 0 is "unset": IPv6 destinations then stay uncaptured.
            addr6: settings.redirect6.map(|a| addr::to_kernel(a.into())).unwrap_or_default(),
            ready: 0,
            fail_closed: u32::from(settings.fail_closed),
            heartbeat_ns: 0,
            proxy_netns: if settings.fast_path {
                netns_cookie().map_err(|source| BpfError::NetnsCookie { source })?
            } else {
                0
            },
        })?;

        // Forward kernel log records to the `log` facade (which `tracing-subscriber` picks up).
        // SAFETY: the ring buffer's descriptor is owned by the logger, which the `AsyncFd` owns
        // for its whole life; `as_raw_fd` always returns that descriptor.
        let registered = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
        let mut logger = registered.map_err(|e| BpfError::Logger { source: Box::new(io::Error::from(e)) })?;
        let logger = tokio::spawn(async move {
            loop {
                let Ok(mut guard) = logger.readable_mut().await else {
                    tracing::warn!("eBPF log ring buffer unreadable; log forwarding stopped");
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        let mut this = Self {
            links: Arc::new(Mutex::new(links)),
            ebpf: Arc::new(Mutex::new(ebpf)),
            capture,
            proxy_target: Arc::new(Mutex::new(proxy_target)),
            orig_dst,
            splices,
            stats,
            tasks: vec![logger],
            settings: settings.clone(),
            _pins: pins,
        };
        // On error from here on, `this` drops: whatever was attached is detached again.
        match &settings.kind {
            CaptureKind::Socket => this.attach_cgroup()?,
            CaptureKind::Packet { interfaces } => this.attach_interfaces(interfaces.clone())?,
        }
        let target = this.proxy_target.clone();
        this.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_PERIOD);
            loop {
                tick.tick().await;
                if let Err(err) = beat(&target, None) {
                    tracing::warn!(%err, "heartbeat not written");
                }
            }
        }));
        tracing::info!(
            kind = ?settings.kind,
            cgroup = %settings.cgroup.display(),
            bpffs = %settings.bpffs.display(),
            redirect = %settings.redirect,
            redirect6 = ?settings.redirect6,
            fail_closed = settings.fail_closed,
            fast_path = settings.fast_path,
            "capture attached (not ready yet)"
        );
        Ok(this)
    }

    fn attach_cgroup(&mut self) -> Result<(), BpfError> {
        let cgroup = File::open(&self.settings.cgroup)
            .map_err(|source| BpfError::Cgroup { path: self.settings.cgroup.clone(), source })?;
        // On 5.7+ aya attaches through bpf links, which always coexist with other programs on the
        // cgroup (multi semantics); the kernel rejects any explicit flag there with EINVAL, so
        // `Single` (no flag) is the only mode that works.
        let mode = CgroupAttachMode::Single;
        let mut ebpf = lock(&self.ebpf);
        let mut links = lock(&self.links);

        for name in [CONNECT4, CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(prog_err(name, "loading"))?;
            let id = prog.attach(&cgroup, mode).map_err(prog_err(name, "attaching"))?;
            let link = prog.take_link(id).map_err(prog_err(name, "attaching"))?;
            links.pin(name, FdLink::try_from(link).map_err(not_a_link(name))?)?;
        }

        if self.settings.fast_path {
            // Attached to the map, not the cgroup: it runs on every send of a paired socket and
            // stays with the map, which lives as long as the pinned `sockops` link uses it.
            let map_err = |source| BpfError::Map { name: SOCK_PAIRS_MAP, source };
            let map = ebpf.map(SOCK_PAIRS_MAP).ok_or(BpfError::MissingMap { name: SOCK_PAIRS_MAP })?;
            let pairs: SockHash<_, SockPair> = SockHash::try_from(map).map_err(map_err)?;
            let fd = pairs.fd().try_clone().map_err(|e| map_err(aya::maps::MapError::from(e)))?;
            let prog: &mut SkMsg = program(&mut ebpf, SK_MSG)?;
            prog.load().map_err(prog_err(SK_MSG, "loading"))?;
            prog.attach(&fd).map_err(prog_err(SK_MSG, "attaching"))?;
            let prog: &mut SkSkb = program(&mut ebpf, SK_SKB)?;
            prog.load().map_err(prog_err(SK_SKB, "loading"))?;
            prog.attach(&fd).map_err(prog_err(SK_SKB, "attaching"))?;
        }
        let prog: &mut SockOps = program(&mut ebpf, SOCKOPS)?;
        prog.load().map_err(prog_err(SOCKOPS, "loading"))?;
        let id = prog.attach(&cgroup, mode).map_err(prog_err(SOCKOPS, "attaching"))?;
        let link = prog.take_link(id).map_err(prog_err(SOCKOPS, "attaching"))?;
        links.pin(SOCKOPS, FdLink::try_from(link).map_err(not_a_link(SOCKOPS))?)?;
        Ok(())
    }

    /// Loads XDP and TC, attaches them to every matching interface now (so "ready" means
    /// attached), then follows link changes over rtnetlink in a task.
    fn attach_interfaces(&mut self, patterns: Vec<String>) -> Result<(), BpfError> {
        {
            let mut ebpf = lock(&self.ebpf);
            let prog: &mut Xdp = program(&mut ebpf, XDP)?;
            prog.load().map_err(prog_err(XDP, "loading"))?;
            let prog: &mut SchedClassifier = program(&mut ebpf, TC)?;
            prog.load().map_err(prog_err(TC, "loading"))?;
        }
        // Subscribe before the first scan, so no change between the two is missed.
        let events = interfaces::LinkEvents::open().map_err(|source| BpfError::Interfaces { source })?;
        let mut follower = Follower::new(self.ebpf.clone(), self.links.clone(), patterns);
        follower.rescan().map_err(|source| BpfError::Interfaces { source })?;
        self.tasks.push(tokio::spawn(async move {
            loop {
                if let Err(err) = events.changed().await {
                    tracing::error!(%err, "rtnetlink socket failed; interfaces are no longer followed");
                    return;
                }
                if let Err(err) = follower.rescan() {
                    tracing::warn!(%err, "listing interfaces");
                }
            }
        }));
        Ok(())
    }

    /// Makes `CAPTURE` equal `desired` (service VIP:port → service id): inserts new and changed
    /// entries first, then deletes stale ones.
    ///
    /// # Errors
    ///
    /// [`BpfError::Map`] when a map operation fails (e.g. `CAPTURE` is full); entries written
    /// before the failure stay, and the next sync converges.
    pub fn sync_capture(&mut self, desired: &BTreeMap<SocketAddr, u32>) -> Result<SyncReport, BpfError> {
        let report = sync::sync(&mut self.capture, desired)?;
        if !report.is_noop() {
            tracing::info!(
                added = report.added,
                changed = report.changed,
                removed = report.removed,
                total = desired.len(),
                "capture set synced"
            );
        }
        Ok(report)
    }

    /// Turns capture on (proxy serving) or off (connections go to their original destination,
    /// unless the failure policy is closed).
    ///
    /// # Errors
    ///
    /// [`BpfError::Map`] on a failed `PROXY_TARGET` read or write.
    pub fn set_ready(&mut self, ready: bool) -> Result<(), BpfError> {
        beat(&self.proxy_target, Some(ready))?;
        tracing::info!(ready, "capture readiness set");
        Ok(())
    }

    /// A cheap clonable handle the proxy uses to recover original destinations.
    ///
    /// # Errors
    ///
    /// None today; kept fallible so the handle may open its own map descriptor later.
    pub fn original_destinations(&self) -> Result<OrigDstTable, BpfError> {
        Ok(self.orig_dst.clone())
    }

    /// With the fast path on (socket mode): the handle the proxy splices its byte streams with.
    pub fn splices(&self) -> Option<SpliceTable> {
        self.splices.clone()
    }

    /// Counters per captured service and per program, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`BpfError::Map`] when reading a stats map fails.
    pub fn stats(&self) -> Result<CaptureStats, BpfError> {
        Ok(CaptureStats { services: self.stats.services()?, programs: self.stats.programs()? })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Unpinning drops the last reference to each link: the programs detach.
        lock(&self.links).close();
        tracing::info!(kind = ?self.settings.kind, "capture detached");
        // Fields drop next: programs unload, map descriptors close, `PinDir` removes the capture
        // pins and leaves the counters for the next agent.
    }
}

/// Read-only handle on the counter maps pinned in a bpffs directory: what `interceptor stats`
/// and the admin server's `/stats/prometheus` read, whether or not this process loaded them.
pub struct CaptureCounters {
    maps: StatsMaps,
}

impl CaptureCounters {
    /// Opens `SERVICE_STATS` and `PROGRAM_STATS` pinned under `bpffs`.
    ///
    /// # Errors
    ///
    /// [`BpfError::Map`] when a pin is missing or is not the map we expect (sizes are checked).
    pub fn open(bpffs: &Path) -> Result<Self, BpfError> {
        Ok(Self { maps: StatsMaps::open_pinned(bpffs)? })
    }

    /// Counters per captured service and per program, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`BpfError::Map`] when reading a stats map fails.
    pub fn read(&self) -> Result<CaptureStats, BpfError> {
        Ok(CaptureStats { services: self.maps.services()?, programs: self.maps.programs()? })
    }
}

impl std::fmt::Debug for CaptureCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureCounters").finish_non_exhaustive()
    }
}

/// Writes the heartbeat (now, `CLOCK_MONOTONIC`) and, if given, the ready flag.
fn beat(target: &Mutex<ProxyTargetMap>, ready: Option<bool>) -> Result<(), BpfError> {
    let map = &mut *lock(target);
    let mut value = map.get()?;
    value.heartbeat_ns = monotonic_ns();
    if let Some(ready) = ready {
        value.ready = u32::from(ready);
    }
    map.set(value)
}

/// This process's network namespace cookie, as `bpf_get_netns_cookie` reads it for its sockets.
fn netns_cookie() -> io::Result<u64> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    cookie(&socket, libc::SO_NETNS_COOKIE)
}

/// A socket's 64-bit cookie `option` (`SO_COOKIE`, `SO_NETNS_COOKIE`), as the kernel's programs
/// read it with their helpers.
fn cookie(socket: &impl std::os::fd::AsRawFd, option: libc::c_int) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
    let rc =
        unsafe { libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, option, (&raw mut cookie).cast(), &mut len) };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Program `name`, as its concrete type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, BpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(BpfError::MissingProgram { name })?;
    prog.try_into().map_err(prog_err(name, "loading"))
}

fn not_a_link(name: &'static str) -> impl Fn(aya::programs::links::LinkError) -> BpfError {
    move |source| BpfError::NotALink { name, source: Box::new(source) }
}

fn prog_err(name: &'static str, action: &'static str) -> impl Fn(ProgramError) -> BpfError {
    move |source| BpfError::Program { name, action, source: Box::new(source) }
}

/// The kernel-side log level: as verbose as the `tracing` subscriber's maximum, so disabled
/// records are not even written to the ring buffer.
fn kernel_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;

    let level = match LevelFilter::current() {
        LevelFilter::OFF => return 0,
        LevelFilter::ERROR => aya_log::Level::Error,
        LevelFilter::WARN => aya_log::Level::Warn,
        LevelFilter::INFO => aya_log::Level::Info,
        LevelFilter::DEBUG => aya_log::Level::Debug,
        _ => aya_log::Level::Trace,
    };
    level as u8
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK` (64 KiB by default in a container):
/// lift it, or map creation fails there. Newer kernels charge the memory cgroup and ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit(2) reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(err = %std::io::Error::last_os_error(), "could not lift RLIMIT_MEMLOCK");
    }
}
