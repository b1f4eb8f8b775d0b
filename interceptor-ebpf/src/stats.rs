//! Counter updates. Per-CPU slots, so plain increments: a program runs with migration disabled.

use aya_ebpf::bindings::BPF_NOEXIST;
use interceptor_common::{
    stats::{Program, ProgramStats, ServiceStats},
    SockAddr4,
};

use crate::maps::{PROGRAM_STATS, SERVICE_STATS};

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
pub fn count_connection(service: &SockAddr4) -> Result<(), i32> {
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
