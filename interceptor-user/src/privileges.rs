//! Least privilege: once the programs are loaded and attached and the listeners bound, every
//! thread of the agent keeps only the capabilities it still uses (effective, permitted and
//! bounding sets; nothing inheritable or ambient; no new privileges through `execve`).

use caps::{CapSet, Capability, CapsHashSet};

use crate::bpf::{self, MapAccess};
use crate::config::CaptureMode;

/// Failures to lower this thread's capabilities.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// A capability set could not be read or lowered.
    #[error("{action} the {set:?} capability set")]
    Caps {
        /// `reading` or `lowering`.
        action: &'static str,
        /// The set.
        set: CapSet,
        /// The crate's error (its text carries the errno).
        #[source]
        source: caps::errors::CapsError,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("setting no_new_privs")]
    NoNewPrivs {
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// The capabilities the running agent still uses once start-up is over, in `mode` on this
/// kernel. Everything else it did with privilege happened before: creating and pinning maps,
/// loading programs (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN), attaching them to the cgroup or to
/// the interfaces present at start, lifting RLIMIT_MEMLOCK (CAP_SYS_RESOURCE, kernels before
/// 5.11), binding the listeners, and dropping the rest (CAP_SETPCAP). What it does afterwards:
///
/// - **Socket mode: `CAP_NET_ADMIN`**, for `SO_MARK` on every upstream socket it opens: the mark
///   is how the connect hook tells the proxy's own connections from the pods' (and lets the
///   proxy run inside a captured cgroup). Kernels 5.17 and later also accept `CAP_NET_RAW`
///   there, but 5.7–5.16 do not, and `CAP_NET_RAW` (raw and packet sockets in the host's network
///   namespace) is no smaller a power.
/// - **Packet mode: nothing.** No hook looks at a mark (XDP and TC act on the pods' veths, which
///   the proxy's upstream packets only leave by), so upstream sockets are not marked; attaching
///   the already loaded programs to a new interface is `BPF_LINK_CREATE` on a program descriptor
///   the agent holds plus a pin in its own bpffs directory, which the kernel checks by
///   descriptor and file mode, not by capability; the rtnetlink link-change group needs none.
/// - **`CAP_BPF` (`CAP_SYS_ADMIN` before 5.8), only before kernel 6.5 with
///   `kernel.unprivileged_bpf_disabled` set**: those kernels refuse every `bpf()` command to a
///   process without it, including the map reads and writes of the heartbeat, the capture-set
///   sync, original-destination lookups and counter scrapes. Since 6.5 the sysctl only guards
///   creating maps and loading programs; descriptors already open are enough.
///
/// Needing nothing else: map access through open descriptors; reading the config directory and
/// the service-account token (the agent runs as uid 0, their owner); the Kubernetes client and
/// the admin server (TCP, loopback); detaching and unpinning on SIGTERM (closing descriptors,
/// unlinking files in its own directory).
pub fn needed_after_start(mode: CaptureMode) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    if mode == CaptureMode::Socket {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    match bpf::map_access() {
        MapAccess::ByDescriptor => {}
        MapAccess::NeedsCapBpf => {
            keep.insert(Capability::CAP_BPF);
        }
        MapAccess::NeedsCapSysAdmin => {
            keep.insert(Capability::CAP_SYS_ADMIN);
        }
    }
    keep
}

/// What an agent with `settings` needs after start-up: [`needed_after_start`] for its mode, and
/// `CAP_NET_BIND_SERVICE` when it serves gateways, whose listeners open on reload and may use
/// ports below 1024 (443, 80).
pub fn needed_by(settings: &crate::config::Settings) -> CapsHashSet {
    let mut keep = needed_after_start(settings.mode);
    if settings.gateway_address.is_some() {
        keep.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    keep
}

/// What [`restrict_thread`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restricted {
    /// The permitted (and effective) set left.
    pub kept: Vec<Capability>,
    /// The bounding set was lowered to `keep` too; false when the thread lacked `CAP_SETPCAP`:
    /// its bounding set is then as it was (as inherited), and an `execve` could regain what it
    /// holds.
    pub bounding_lowered: bool,
}

/// Lowers the calling thread's capabilities to `keep` (those of it the thread has): bounding
/// set first (that needs `CAP_SETPCAP`, which goes next), then inheritable and ambient emptied,
/// effective and permitted lowered, and `no_new_privs` set. Capabilities belong to threads:
/// each thread of the process must call this (tokio's `on_thread_start` for the runtime's).
///
/// # Errors
///
/// A set cannot be read or lowered; lowering never needs a privilege, so that means a kernel
/// without capability support.
pub fn restrict_thread(keep: &CapsHashSet) -> Result<Restricted, PrivilegeError> {
    let read = |set| caps::read(None, set).map_err(|source| PrivilegeError::Caps { action: "reading", set, source });
    let lower = |set, result: Result<(), caps::errors::CapsError>| {
        result.map_err(|source| PrivilegeError::Caps { action: "lowering", set, source })
    };
    let permitted = read(CapSet::Permitted)?;
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    let bounding_lowered = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
    if bounding_lowered {
        for cap in read(CapSet::Bounding)?.difference(keep) {
            lower(CapSet::Bounding, caps::drop(None, CapSet::Bounding, *cap))?;
        }
    }
    // Emptying the inheritable set empties the ambient one as well; clearing it too says so.
    lower(CapSet::Inheritable, caps::clear(None, CapSet::Inheritable))?;
    lower(CapSet::Ambient, caps::clear(None, CapSet::Ambient))?;
    // Effective first: it must stay within permitted.
    lower(CapSet::Effective, caps::set(None, CapSet::Effective, &kept))?;
    lower(CapSet::Permitted, caps::set(None, CapSet::Permitted, &kept))?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs { source: std::io::Error::last_os_error() });
    }
    let mut kept: Vec<Capability> = kept.into_iter().collect();
    kept.sort_by_key(|cap| *cap as u8);
    Ok(Restricted { kept, bounding_lowered })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_agent_keeps_binding_low_ports() {
        let settings = |gateway: Option<std::net::IpAddr>| {
            crate::config::SettingsFile {
                redirect: Some("10.0.0.1:15001".parse().unwrap()),
                gateway_address: gateway,
                ..Default::default()
            }
            .resolve()
            .unwrap()
        };
        assert!(!needed_by(&settings(None)).contains(&Capability::CAP_NET_BIND_SERVICE));
        let gateway = needed_by(&settings(Some("10.0.0.1".parse().unwrap())));
        assert!(gateway.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert!(needed_after_start(CaptureMode::Socket).is_subset(&gateway));
    }

    #[test]
    fn packet_mode_keeps_nothing_more_than_socket_mode() {
        let socket = needed_after_start(CaptureMode::Socket);
        let packet = needed_after_start(CaptureMode::Packet);
        assert!(socket.contains(&Capability::CAP_NET_ADMIN));
        assert!(!packet.contains(&Capability::CAP_NET_ADMIN));
        assert!(packet.is_subset(&socket));
        // Never anything that could load programs or change the network by itself alone.
        for cap in [Capability::CAP_PERFMON, Capability::CAP_SETPCAP, Capability::CAP_SYS_RESOURCE] {
            assert!(!socket.contains(&cap), "{cap}");
        }
    }

    #[test]
    fn a_thread_keeps_only_what_it_is_told() {
        // In a thread of its own: the test process keeps its capabilities.
        let keep: CapsHashSet = [Capability::CAP_NET_ADMIN].into_iter().collect();
        let (restricted, effective, permitted) = std::thread::spawn(move || {
            let restricted = restrict_thread(&keep).unwrap();
            (restricted, caps::read(None, CapSet::Effective).unwrap(), caps::read(None, CapSet::Permitted).unwrap())
        })
        .join()
        .unwrap();
        let had = caps::read(None, CapSet::Permitted).unwrap();
        let expected: CapsHashSet = had.intersection(&[Capability::CAP_NET_ADMIN].into()).copied().collect();
        assert_eq!(effective, expected);
        assert_eq!(permitted, expected);
        assert_eq!(restricted.kept, expected.into_iter().collect::<Vec<_>>());
    }
}
