//! Typed wrappers over the kernel maps, opened by the names in `interceptor-common`. Opening checks
//! the kernel's key and value sizes against ours, and every error names the map.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
    Ebpf,
};
use interceptor_common::{
    capture::{CapturedService, ProxyTarget, CAPTURE_MAP, PROXY_TARGET_MAP},
    origdst::ORIG_DST_MAP,
    packet::{Conntrack, CONNTRACK_MAP},
    stats::{Program, ProgramStats, ServiceStats, PROGRAM_STATS_MAP, SERVICE_STATS_MAP},
    SockAddr,
};

use super::{
    addr::{from_kernel, to_kernel},
    sync::CaptureStore,
    BpfError,
};

/// Moves map `name` out of `ebpf` and converts it to the typed map `M`.
pub(super) fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(BpfError::MissingMap { name })?;
    M::try_from(map).map_err(|source| BpfError::Map { name, source })
}

/// Opens the map pinned at `dir/name` and converts it to the typed map `M` (sizes checked).
fn open_pinned<M>(dir: &Path, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<Map, Error = MapError>,
{
    let data = MapData::from_pin(dir.join(name)).map_err(err(name))?;
    let map = Map::from_map_data(data).map_err(err(name))?;
    M::try_from(map).map_err(err(name))
}

/// Wraps an aya error with the map's name.
fn err(name: &'static str) -> impl Fn(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

// === impl CaptureMap ===

/// `CAPTURE`: service VIP:port (either family) → service id.
pub(crate) struct CaptureMap(HashMap<MapData, SockAddr, CapturedService>);

impl CaptureMap {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        take(ebpf, CAPTURE_MAP).map(Self)
    }
}

impl CaptureStore for CaptureMap {
    fn entries(&self) -> Result<BTreeMap<SocketAddr, u32>, BpfError> {
        self.0
            .iter()
            .map(|entry| {
                let (addr, service) = entry.map_err(err(CAPTURE_MAP))?;
                Ok((from_kernel(addr), service.service_id))
            })
            .collect()
    }

    fn put(&mut self, addr: SocketAddr, service_id: u32) -> Result<(), BpfError> {
        self.0.insert(to_kernel(addr), CapturedService { service_id }, 0).map_err(err(CAPTURE_MAP))
    }

    fn delete(&mut self, addr: SocketAddr) -> Result<(), BpfError> {
        match self.0.remove(&to_kernel(addr)) {
            Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
            Err(source) => Err(BpfError::Map { name: CAPTURE_MAP, source }),
        }
    }
}

// === impl ProxyTargetMap ===

/// `PROXY_TARGET`: the proxy address and the ready flag, in slot 0.
pub(crate) struct ProxyTargetMap(Array<MapData, ProxyTarget>);

impl ProxyTargetMap {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        take(ebpf, PROXY_TARGET_MAP).map(Self)
    }

    pub(crate) fn get(&self) -> Result<ProxyTarget, BpfError> {
        self.0.get(&0, 0).map_err(err(PROXY_TARGET_MAP))
    }

    pub(crate) fn set(&mut self, target: ProxyTarget) -> Result<(), BpfError> {
        self.0.set(0, target, 0).map_err(err(PROXY_TARGET_MAP))
    }
}

// === impl OrigDstMap ===

/// `ORIG_DST`: client address → original destination. Shared by proxy tasks.
#[derive(Clone)]
pub(crate) struct OrigDstMap(Arc<Mutex<HashMap<MapData, SockAddr, SockAddr>>>);

impl OrigDstMap {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        take(ebpf, ORIG_DST_MAP).map(|map| Self(Arc::new(Mutex::new(map))))
    }

    /// Looks `client` up and deletes the entry. Two syscalls under a mutex: aya's `remove` wants
    /// `&mut`, and the lock is only contended by concurrent accepts.
    pub(crate) fn take_entry(&self, client: SocketAddr) -> Result<Option<SocketAddr>, BpfError> {
        let key = to_kernel(client);
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let orig = match map.get(&key, 0) {
            Ok(orig) => orig,
            Err(MapError::KeyNotFound | MapError::ElementNotFound) => return Ok(None),
            Err(source) => return Err(BpfError::Map { name: ORIG_DST_MAP, source }),
        };
        match map.remove(&key) {
            // Gone already: LRU eviction between the two calls. We still have the value.
            Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
            Err(source) => return Err(BpfError::Map { name: ORIG_DST_MAP, source }),
        }
        Ok(Some(from_kernel(orig)))
    }
}

// === impl ConntrackMap ===

/// `CONNTRACK` (packet mode): client address → the flow XDP sent to the proxy. Shared by proxy tasks.
#[derive(Clone)]
pub(crate) struct ConntrackMap(Arc<Mutex<HashMap<MapData, SockAddr, Conntrack>>>);

impl ConntrackMap {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        take(ebpf, CONNTRACK_MAP).map(|map| Self(Arc::new(Mutex::new(map))))
    }

    /// The VIP:port the flow from `client` was sent to. The entry stays: TC needs it for replies.
    pub(crate) fn original(&self, client: SocketAddr) -> Result<Option<SocketAddr>, BpfError> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(&to_kernel(client), 0) {
            Ok(flow) => Ok(Some(from_kernel(flow.orig))),
            Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(None),
            Err(source) => Err(BpfError::Map { name: CONNTRACK_MAP, source }),
        }
    }
}

// === impl StatsMaps ===

/// `SERVICE_STATS` and `PROGRAM_STATS`, summed over CPUs when read.
pub(crate) struct StatsMaps {
    services: PerCpuHashMap<MapData, SockAddr, ServiceStats>,
    programs: PerCpuArray<MapData, ProgramStats>,
}

impl StatsMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self { services: take(ebpf, SERVICE_STATS_MAP)?, programs: take(ebpf, PROGRAM_STATS_MAP)? })
    }

    /// Opens the maps pinned under `dir` (by a running or earlier agent), without loading anything.
    pub(crate) fn open_pinned(dir: &Path) -> Result<Self, BpfError> {
        Ok(Self { services: open_pinned(dir, SERVICE_STATS_MAP)?, programs: open_pinned(dir, PROGRAM_STATS_MAP)? })
    }

    /// Connections per service address.
    pub(crate) fn services(&self) -> Result<BTreeMap<SocketAddr, u64>, BpfError> {
        let mut out = BTreeMap::new();
        for entry in self.services.iter() {
            let (addr, per_cpu) = entry.map_err(err(SERVICE_STATS_MAP))?;
            let total = per_cpu.iter().map(|s| s.connections).sum();
            out.insert(from_kernel(addr), total);
        }
        Ok(out)
    }

    /// Counters of every program, in [`Program::ALL`] order.
    pub(crate) fn programs(&self) -> Result<Vec<(Program, ProgramStats)>, BpfError> {
        Program::ALL
            .iter()
            .map(|&program| {
                let per_cpu = self.programs.get(&(program as u32), 0).map_err(err(PROGRAM_STATS_MAP))?;
                Ok((program, sum(per_cpu.iter())))
            })
            .collect()
    }
}

/// Field-wise sum of per-CPU program counters.
fn sum<'a>(values: impl Iterator<Item = &'a ProgramStats>) -> ProgramStats {
    values.fold(ProgramStats::default(), |acc, v| ProgramStats {
        events: acc.events + v.events,
        captured: acc.captured + v.captured,
        bypassed: acc.bypassed + v.bypassed,
        errors: acc.errors + v.errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_counters_sum_field_wise() {
        let cpus = [
            ProgramStats { events: 3, captured: 1, bypassed: 1, errors: 0 },
            ProgramStats { events: 2, captured: 0, bypassed: 0, errors: 1 },
        ];
        assert_eq!(sum(cpus.iter()), ProgramStats { events: 5, captured: 1, bypassed: 1, errors: 1 });
    }

    #[test]
    fn shared_handle_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<OrigDstMap>();
    }
}

/// Handle on the original destinations of captured connections. Clones share one map.
#[derive(Clone)]
pub struct OrigDstTable {
    source: OrigDstSource,
}

#[derive(Clone)]
enum OrigDstSource {
    /// Socket mode: `ORIG_DST`, consumed on accept.
    Socket(OrigDstMap),
    /// Packet mode: `CONNTRACK`, read only (TC keeps using the flow for replies).
    Packet(ConntrackMap),
}

impl OrigDstTable {
    /// Socket mode's table: `ORIG_DST`.
    pub(crate) fn socket(map: OrigDstMap) -> Self {
        Self { source: OrigDstSource::Socket(map) }
    }

    /// Packet mode's table: `CONNTRACK`.
    pub(crate) fn packet(map: ConntrackMap) -> Self {
        Self { source: OrigDstSource::Packet(map) }
    }

    /// Original destination of a connection the proxy accepted from `client`. `None` when the
    /// connection was not redirected by us (or the entry was evicted). In socket mode the entry is
    /// removed once read; in packet mode the flow stays for the reply path and the LRU ages it out.
    ///
    /// # Errors
    ///
    /// [`BpfError::Map`] when the lookup or delete syscall fails.
    pub fn take(&self, client: SocketAddr) -> Result<Option<SocketAddr>, BpfError> {
        match &self.source {
            OrigDstSource::Socket(map) => map.take_entry(client),
            OrigDstSource::Packet(map) => map.original(client),
        }
    }
}

impl std::fmt::Debug for OrigDstTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrigDstTable").finish_non_exhaustive()
    }
}
