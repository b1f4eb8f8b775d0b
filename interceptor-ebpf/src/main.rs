//! Kernel side of capture. Socket mode: `cgroup/connect4` and `connect6` send connects to captured service
//! addresses to the proxy, and `sockops` hands the original destination over to it. Packet mode:
//! `xdp` rewrites packets to captured service addresses to the proxy and `tc` egress reverses it.
//!
//! Every program fails open: on any error the connection goes where the application asked, and the
//! program's `errors` counter in `PROGRAM_STATS` goes up.
#![no_std]
#![cfg_attr(target_arch = "bpf", no_main)]

// Host builds (`cargo clippy --workspace`) only type-check the programs. Feature unification can
// pull `std` in there anyway (interceptor-common's `user` feature brings aya), so the host build
// always links it and uses its panic handler and `main` shim.
#[cfg(not(target_arch = "bpf"))]
extern crate std;

mod connect;
mod ctx_addr;
mod fastpath;
mod maps;
mod packet;
mod sockops;
mod stats;
mod tc;
mod xdp;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// No code path here can panic (the verifier would reject the unreachable trap anyway); this only
/// satisfies `no_std`.
#[cfg(target_arch = "bpf")]
#[panic_handler]
#[allow(clippy::empty_loop, reason = "no_std panic handler, never reached")]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as the kernel requires for the helpers used here.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
