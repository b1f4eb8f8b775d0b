//! Counter updates. Per-CPU slots, so plain increments: a program runs with migration disabled.

use aya_ebpf::bindings::BPF_NOEXIST;
use interceptor_common::{
    packet::PacketStats,
    stats::{Program, ProgramStats, ServiceStats},
    SockAddr,
};

use crate::maps::{IFACE_STATS, PACKET_STATS, PROGRAM_STATS, SERVICE_STATS};

/// What a program run did, for its counters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not ours: uncaptured destination, other socket type, other sockops event.
    Ignored,
    /// Redirected (connect hooks) or handed over (sockops).
    Captured,
    /// Captured destination left alone on purpose (proxy not ready, proxy's own socket).
    Bypassed,
    /// Something failed; the connection was left untouched.
    Error,
}

/// Counts one run of `program` with its outcome.
#[inline(always)]
pub fn count(program: Program, outcome: Outcome) {
    let Some(slot) = PROGRAM_STATS.get_ptr_mut(program as u32) else {
        return;
    };
    // SAFETY: per-CPU array slot of the running CPU; arrays never free their slots, and nothing
    // else on this CPU touches it while this program runs.
    let stats: &mut ProgramStats = unsafe { &mut *slot };
    stats.events += 1;
    match outcome {
        Outcome::Ignored => {}
        Outcome::Captured => stats.captured += 1,
        Outcome::Bypassed => stats.bypassed += 1,
        Outcome::Error => stats.errors += 1,
    }
}

/// Counts one captured connection to `service`.
///
/// # Errors
///
/// The kernel's error when the service's slot can't be created (map full).
#[inline(always)]
pub fn count_connection(service: &SockAddr) -> Result<(), i32> {
    if let Some(slot) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: this CPU's value of a per-CPU hash entry; the loader never deletes entries, so
        // the slot is not recycled while we hold it.
        unsafe { (*slot).connections += 1 };
        return Ok(());
    }
    // The kernel zeroes the other CPUs' values of a new per-CPU entry.
    let first = ServiceStats { connections: 1 };
    match SERVICE_STATS.insert(service, first, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        // Another CPU created it in between: count into our (zeroed) slot.
        Err(_) => match SERVICE_STATS.get_ptr_mut(service) {
            Some(slot) => {
                // SAFETY: as above.
                unsafe { (*slot).connections += 1 };
                Ok(())
            }
            None => Err(-1),
        },
    }
}

/// What happened to a packet of a captured service, for the packet counters.
#[derive(Clone, Copy)]
pub enum PacketEvent {
    /// A packet of this many bytes was rewritten.
    Rewritten(u64),
    /// A SYN opened a flow to the proxy.
    NewFlow,
    /// A packet to a captured VIP:port matched no flow.
    Miss,
}

/// Counts `event` for interface `ifindex` and service `service`. Counter loss (maps full) is
/// tolerated: the packet itself is already handled.
#[inline(always)]
pub fn count_packet(ifindex: u32, service: &SockAddr, event: PacketEvent) {
    if let Some(slot) = IFACE_STATS.get_ptr_mut(ifindex) {
        // SAFETY: this CPU's value of a per-CPU hash entry; entries are never deleted by the loader
        // while programs run.
        add(unsafe { &mut *slot }, event);
    } else {
        let _ = IFACE_STATS.insert(ifindex, first(event), u64::from(BPF_NOEXIST));
    }
    if let Some(slot) = PACKET_STATS.get_ptr_mut(service) {
        // SAFETY: as above.
        add(unsafe { &mut *slot }, event);
    } else {
        let _ = PACKET_STATS.insert(service, first(event), u64::from(BPF_NOEXIST));
    }
}

#[inline(always)]
fn add(stats: &mut PacketStats, event: PacketEvent) {
    match event {
        PacketEvent::Rewritten(bytes) => {
            stats.packets += 1;
            stats.bytes += bytes;
        }
        PacketEvent::NewFlow => stats.new_flows += 1,
        PacketEvent::Miss => stats.nat_misses += 1,
    }
}

#[inline(always)]
fn first(event: PacketEvent) -> PacketStats {
    let mut stats = PacketStats { packets: 0, bytes: 0, new_flows: 0, nat_misses: 0 };
    add(&mut stats, event);
    stats
}
