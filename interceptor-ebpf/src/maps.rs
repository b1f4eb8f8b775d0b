//! Map definitions. BTF-defined (`btf_maps`) so `bpftool map dump` prints field names; each static's
//! name is the map name the loader opens, checked against `interceptor-common` at build time.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, SockHash},
    macros::btf_map,
};
use interceptor_common::{
    capture::{CapturedService, ProxyTarget, CAPTURE_MAP, CAPTURE_MAX_ENTRIES, PROXY_TARGET_MAP},
    fastpath::{FastPath, SockPair, Splice, FAST_PATH_MAP, FAST_PATH_MAX_ENTRIES, SOCK_PAIRS_MAP, SPLICE_MAP},
    origdst::{ORIG_DST_BY_COOKIE_MAP, ORIG_DST_MAP, ORIG_DST_MAX_ENTRIES},
    packet::{
        Conntrack, PacketStats, CONNTRACK_MAP, CONNTRACK_MAX_ENTRIES, IFACE_STATS_MAP, IFACE_STATS_MAX_ENTRIES,
        PACKET_STATS_MAP,
    },
    stats::{ProgramStats, ServiceStats, PROGRAM_COUNT, PROGRAM_STATS_MAP, SERVICE_STATS_MAP},
    SockAddr,
};

/// Captured service VIP:port → service id. Written by the loader only.
#[btf_map]
pub static CAPTURE: HashMap<SockAddr, CapturedService, { CAPTURE_MAX_ENTRIES as usize }> = HashMap::new();

/// Slot 0: where captured connections go, and whether the proxy is ready.
#[btf_map]
pub static PROXY_TARGET: Array<ProxyTarget, 1> = Array::new();

/// Socket cookie → original destination, from `connect4` until the connection is established.
#[btf_map]
pub static ORIG_DST_COOKIE: LruHashMap<u64, SockAddr, { ORIG_DST_MAX_ENTRIES as usize }> = LruHashMap::new();

/// Client address → original destination, from `sockops` until the proxy takes it.
#[btf_map]
pub static ORIG_DST: LruHashMap<SockAddr, SockAddr, { ORIG_DST_MAX_ENTRIES as usize }> = LruHashMap::new();

/// Per-CPU connection counters per captured service. Sized like `CAPTURE`: one slot per service.
#[btf_map]
pub static SERVICE_STATS: PerCpuHashMap<SockAddr, ServiceStats, { CAPTURE_MAX_ENTRIES as usize }> =
    PerCpuHashMap::new();

/// Per-CPU counters per program, indexed by `interceptor_common::stats::Program`.
#[btf_map]
pub static PROGRAM_STATS: PerCpuArray<ProgramStats, { PROGRAM_COUNT as usize }> = PerCpuArray::new();

/// Packet mode: client address → the flow XDP sent to the proxy. Read by TC and by the proxy.
#[btf_map]
pub static CONNTRACK: LruHashMap<SockAddr, Conntrack, { CONNTRACK_MAX_ENTRIES as usize }> = LruHashMap::new();

/// Packet mode: per-CPU packet counters per interface index.
#[btf_map]
pub static IFACE_STATS: PerCpuHashMap<u32, PacketStats, { IFACE_STATS_MAX_ENTRIES as usize }> = PerCpuHashMap::new();

/// Packet mode: per-CPU packet counters per captured service VIP:port.
#[btf_map]
pub static PACKET_STATS: PerCpuHashMap<SockAddr, PacketStats, { CAPTURE_MAX_ENTRIES as usize }> = PerCpuHashMap::new();

/// Fast path: the paired sockets, each by its own view of its connection.
#[btf_map]
pub static SOCK_PAIRS: SockHash<SockPair, { FAST_PATH_MAX_ENTRIES as usize }> = SockHash::new();

/// Fast path: each paired (or expected) socket's state and bytes moved.
#[btf_map]
pub static FAST_PATH: LruHashMap<SockPair, FastPath, { FAST_PATH_MAX_ENTRIES as usize }> = LruHashMap::new();

/// Fast path: the proxy's sockets of the connections it relays as byte streams, each with the
/// other and what the proxy forwarded between them. Written by the proxy only.
#[btf_map]
pub static SPLICE: LruHashMap<SockPair, Splice, { FAST_PATH_MAX_ENTRIES as usize }> = LruHashMap::new();

/// `a == b` for `&str` in const context.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// The `#[btf_map]` names are the static names above; the loader opens maps by the common consts.
const _: () = assert!(same(CAPTURE_MAP, "CAPTURE"));
const _: () = assert!(same(PROXY_TARGET_MAP, "PROXY_TARGET"));
const _: () = assert!(same(ORIG_DST_BY_COOKIE_MAP, "ORIG_DST_COOKIE"));
const _: () = assert!(same(ORIG_DST_MAP, "ORIG_DST"));
const _: () = assert!(same(SERVICE_STATS_MAP, "SERVICE_STATS"));
const _: () = assert!(same(PROGRAM_STATS_MAP, "PROGRAM_STATS"));
const _: () = assert!(same(CONNTRACK_MAP, "CONNTRACK"));
const _: () = assert!(same(IFACE_STATS_MAP, "IFACE_STATS"));
const _: () = assert!(same(PACKET_STATS_MAP, "PACKET_STATS"));
const _: () = assert!(same(SOCK_PAIRS_MAP, "SOCK_PAIRS"));
const _: () = assert!(same(FAST_PATH_MAP, "FAST_PATH"));
const _: () = assert!(same(SPLICE_MAP, "SPLICE"));
