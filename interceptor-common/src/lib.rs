//! Map keys, values and names shared by the kernel programs and the agent: one `#[repr(C)]`
//! definition each, no logic.
//!
//! Byte order: IPv4 addresses are `[u8; 4]` in network order (so `bpftool` prints `[10,96,0,10]`),
//! ports are `u16` in host order (so `bpftool` prints `80`). Every struct is padded by hand and its
//! size pinned by a const assert, so a layout change fails the build, not the map load.
#![no_std]
#![deny(missing_docs)]

pub mod capture;
pub mod origdst;
pub mod packet;
pub mod stats;

/// An IPv4 socket address as the maps store it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAddr4 {
    /// IPv4 address, network byte order.
    pub addr: [u8; 4],
    /// Port, host byte order.
    pub port: u16,
    /// Explicit padding: keeps the hash key free of uninitialised bytes.
    pub _pad: u16,
}

impl SockAddr4 {
    /// Builds an address from its parts.
    pub const fn new(addr: [u8; 4], port: u16) -> Self {
        Self { addr, port, _pad: 0 }
    }
}

const _: () = assert!(core::mem::size_of::<SockAddr4>() == 8);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, every bit pattern valid.
unsafe impl aya::Pod for SockAddr4 {}
