//! Socket-mode capture: loads the kernel programs, keeps their maps in step, reads their counters.
//!
//! This is the only module that talks to aya. The kernel side (`interceptor-ebpf`) redirects
//! `connect()`s to captured service addresses to the proxy (`cgroup/connect4`) and records the
//! original destination by client address (`sockops`); [`OrigDstTable::take`] answers the proxy's
//! "where was this connection going?".
//!
//! # Minimum kernel version
//!
//! 5.7 (bpf links for cgroup programs, BTF-defined maps, ring buffer for logs); tested on 6.18.

mod addr;
mod maps;
mod pins;
mod sync;

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        cgroup_sock_addr::CgroupSockAddrLinkId, sock_ops::SockOpsLinkId, CgroupAttachMode, CgroupSockAddr,
        ProgramError, SockOps,
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
    origdst::{ORIG_DST_BY_COOKIE_MAP, ORIG_DST_MAP, ORIG_DST_MAX_ENTRIES},
    stats::{ServiceStats, PROGRAM_COUNT, PROGRAM_STATS_MAP, SERVICE_STATS_MAP},
    SockAddr4,
};
use tokio::{io::unix::AsyncFd, task::JoinHandle};

pub use self::sync::SyncReport;
use self::{
    maps::{CaptureMap, OrigDstMap, ProxyTargetMap, StatsMaps},
    pins::{PinDir, PinSpec},
};

/// The kernel object built by `build.rs` from `interceptor-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor"));

/// Program names in the object (the entry functions' names).
const CONNECT4: &str = "connect4";
const SOCKOPS: &str = "sockops_handover";

/// Every map we pin, by its name in `interceptor-common`, with the shape a pin left by an earlier
/// agent must have to be re-adopted. The counter maps stay pinned when the agent stops, so a
/// restarted (or upgraded) agent keeps counting where the last one stopped. `AYA_LOGS` is not ours
/// and stays unpinned.
const PINNED_MAPS: &[PinSpec] = &[
    pin::<SockAddr4, CapturedService>(CAPTURE_MAP, CAPTURE_MAX_ENTRIES, false),
    pin::<u32, ProxyTarget>(PROXY_TARGET_MAP, 1, false),
    pin::<u64, SockAddr4>(ORIG_DST_BY_COOKIE_MAP, ORIG_DST_MAX_ENTRIES, false),
    pin::<SockAddr4, SockAddr4>(ORIG_DST_MAP, ORIG_DST_MAX_ENTRIES, false),
    pin::<SockAddr4, ServiceStats>(SERVICE_STATS_MAP, CAPTURE_MAX_ENTRIES, true),
    pin::<u32, ProgramStats>(PROGRAM_STATS_MAP, PROGRAM_COUNT, true),
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

/// Where to attach, where to pin, where to send captured connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSettings {
    /// cgroup v2 directory whose processes (and descendants) are captured.
    pub cgroup: PathBuf,
    /// bpffs directory for the map pins (created if missing), e.g. `/sys/fs/bpf/interceptor`.
    pub bpffs: PathBuf,
    /// Proxy listener address as the captured processes reach it.
    pub redirect: SocketAddrV4,
}

/// Failures of the capture subsystem. Each names the map, program or path involved.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The binary was built with `AYA_BUILD_SKIP=1` and embeds no kernel object.
    #[error("no eBPF object embedded (built with AYA_BUILD_SKIP)")]
    MissingObject,
    /// [`SocketCapture::load`] was called outside a tokio runtime (needed for log forwarding).
    #[error("SocketCapture::load must run inside a tokio runtime")]
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
    /// Kernel log forwarding could not start.
    #[error("starting eBPF log forwarding")]
    Logger {
        /// aya-log's or tokio's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Counters of the kernel programs, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Connections redirected per service VIP:port.
    pub services: BTreeMap<SocketAddrV4, u64>,
    /// Per program, in [`Program::ALL`] order.
    pub programs: Vec<(Program, ProgramStats)>,
}

/// Loaded and attached kernel programs and their maps. Dropping it detaches the programs and
/// removes the capture pins; the counter pins stay for the next agent.
pub struct SocketCapture {
    // Field order is drop order: links and programs (in `ebpf`) go before the pins.
    ebpf: Ebpf,
    connect4: Option<CgroupSockAddrLinkId>,
    sockops: Option<SockOpsLinkId>,
    capture: CaptureMap,
    proxy_target: ProxyTargetMap,
    orig_dst: OrigDstMap,
    stats: StatsMaps,
    logger: JoinHandle<()>,
    cgroup: PathBuf,
    _pins: PinDir,
}

impl SocketCapture {
    /// Loads the embedded object, pins its maps under `settings.bpffs` (re-adopting pins an earlier
    /// agent left when their shape still fits, so counters carry on; replacing them otherwise), writes `PROXY_TARGET` with ready = 0, attaches `connect4` and `sockops` to
    /// `settings.cgroup` and starts forwarding kernel logs to `log`/`tracing`.
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
        let cgroup = File::open(&settings.cgroup)
            .map_err(|source| BpfError::Cgroup { path: settings.cgroup.clone(), source })?;
        let pins = PinDir::prepare(&settings.bpffs, PINNED_MAPS)?;

        let pin_paths: Vec<_> = PINNED_MAPS.iter().map(|spec| (spec.name, pins.path(spec.name))).collect();
        let log_level = kernel_log_level();
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &log_level, false);
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|source| BpfError::Load { source: Box::new(source) })?;

        // The logger must hold the ring buffer while programs load.
        let logger = EbpfLogger::init(&mut ebpf).map_err(|e| BpfError::Logger { source: Box::new(e) })?;

        let capture = CaptureMap::take(&mut ebpf)?;
        let mut proxy_target = ProxyTargetMap::take(&mut ebpf)?;
        let orig_dst = OrigDstMap::take(&mut ebpf)?;
        let stats = StatsMaps::take(&mut ebpf)?;
        proxy_target.set(ProxyTarget { addr: addr::to_kernel(settings.redirect), ready: 0, _pad: 0 })?;

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
            ebpf,
            connect4: None,
            sockops: None,
            capture,
            proxy_target,
            orig_dst,
            stats,
            logger,
            cgroup: settings.cgroup.clone(),
            _pins: pins,
        };
        // On error from here on, `this` drops: whatever was attached is detached again.
        this.attach(&cgroup)?;
        tracing::info!(
            cgroup = %settings.cgroup.display(),
            bpffs = %settings.bpffs.display(),
            redirect = %settings.redirect,
            "socket capture attached (not ready yet)"
        );
        Ok(this)
    }

    fn attach(&mut self, cgroup: &File) -> Result<(), BpfError> {
        // On 5.7+ aya attaches through bpf links, which always coexist with other programs on the
        // cgroup (multi semantics); the kernel rejects any explicit flag there with EINVAL, so
        // `Single` (no flag) is the only mode that works.
        let mode = CgroupAttachMode::Single;

        let prog: &mut CgroupSockAddr = program(&mut self.ebpf, CONNECT4)?;
        prog.load().map_err(prog_err(CONNECT4, "loading"))?;
        self.connect4 = Some(prog.attach(cgroup, mode).map_err(prog_err(CONNECT4, "attaching"))?);

        let prog: &mut SockOps = program(&mut self.ebpf, SOCKOPS)?;
        prog.load().map_err(prog_err(SOCKOPS, "loading"))?;
        self.sockops = Some(prog.attach(cgroup, mode).map_err(prog_err(SOCKOPS, "attaching"))?);
        Ok(())
    }

    /// Makes `CAPTURE` equal `desired` (service VIP:port → service id): inserts new and changed
    /// entries first, then deletes stale ones.
    ///
    /// # Errors
    ///
    /// [`BpfError::Map`] when a map operation fails (e.g. `CAPTURE` is full); entries written
    /// before the failure stay, and the next sync converges.
    pub fn sync_capture(&mut self, desired: &BTreeMap<SocketAddrV4, u32>) -> Result<SyncReport, BpfError> {
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

    /// Turns capture on (proxy serving) or off (connections go to their original destination).
    ///
    /// # Errors
    ///
    /// [`BpfError::Map`] on a failed `PROXY_TARGET` read or write.
    pub fn set_ready(&mut self, ready: bool) -> Result<(), BpfError> {
        let mut target = self.proxy_target.get()?;
        target.ready = u32::from(ready);
        self.proxy_target.set(target)?;
        tracing::info!(ready, "capture readiness set");
        Ok(())
    }

    /// A cheap clonable handle the proxy uses to recover original destinations.
    ///
    /// # Errors
    ///
    /// None today; kept fallible so the handle may open its own map descriptor later.
    pub fn original_destinations(&self) -> Result<OrigDstTable, BpfError> {
        Ok(OrigDstTable { map: self.orig_dst.clone() })
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

impl Drop for SocketCapture {
    fn drop(&mut self) {
        if let Some(link) = self.sockops.take() {
            if let Err(e) = program::<SockOps>(&mut self.ebpf, SOCKOPS)
                .and_then(|p| p.detach(link).map_err(prog_err(SOCKOPS, "detaching")))
            {
                tracing::warn!(error = %e, "detaching sockops");
            }
        }
        if let Some(link) = self.connect4.take() {
            if let Err(e) = program::<CgroupSockAddr>(&mut self.ebpf, CONNECT4)
                .and_then(|p| p.detach(link).map_err(prog_err(CONNECT4, "detaching")))
            {
                tracing::warn!(error = %e, "detaching connect4");
            }
        }
        self.logger.abort();
        tracing::info!(cgroup = %self.cgroup.display(), "socket capture detached");
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

/// Handle on the original destinations of redirected connections. Clones share one map.
#[derive(Clone)]
pub struct OrigDstTable {
    map: OrigDstMap,
}

impl OrigDstTable {
    /// Original destination of a connection the proxy accepted from `client`, removed from the map
    /// once read. `None` when the connection was not redirected by us (or the entry was evicted).
    ///
    /// # Errors
    ///
    /// [`BpfError::Map`] when the lookup or delete syscall fails.
    pub fn take(&self, client: SocketAddrV4) -> Result<Option<SocketAddrV4>, BpfError> {
        self.map.take_entry(client)
    }
}

impl std::fmt::Debug for OrigDstTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrigDstTable").finish_non_exhaustive()
    }
}

/// Program `name`, as its concrete type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, BpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(BpfError::MissingProgram { name })?;
    prog.try_into().map_err(prog_err(name, "loading"))
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
