//! Counters operators read with `bpftool map dump pinned <bpffs>/<map>`.

/// Map name: per-CPU hash, service VIP:port ([`crate::SockAddr`]) → [`ServiceStats`].
pub const SERVICE_STATS_MAP: &str = "SERVICE_STATS";
/// Map name: per-CPU array indexed by [`Program`] → [`ProgramStats`].
pub const PROGRAM_STATS_MAP: &str = "PROGRAM_STATS";

/// Per captured service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Connections redirected to the proxy.
    pub connections: u64,
}

const _: () = assert!(core::mem::size_of::<ServiceStats>() == 8);

/// Per kernel program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Times the program ran.
    pub events: u64,
    /// Connections it redirected (connect hooks) or handed over (sockops).
    pub captured: u64,
    /// Captured destinations left alone: proxy not ready, or the proxy's own socket.
    pub bypassed: u64,
    /// Failures (map full, unexpected context); the connection is left untouched.
    pub errors: u64,
}

const _: () = assert!(core::mem::size_of::<ProgramStats>() == 32);

/// Index of each program's slot in [`PROGRAM_STATS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `cgroup/connect4`.
    Connect4 = 0,
    /// `sockops`.
    SockOps = 1,
    /// `xdp` on pod interfaces (packet mode).
    Xdp = 2,
    /// `tc` egress on pod interfaces (packet mode).
    TcEgress = 3,
    /// `cgroup/connect6`.
    Connect6 = 4,
    /// `sk_msg` on the paired sockets (the fast path): `captured` counts sends moved into the
    /// peer, `bypassed` sends of a paired socket that went through TCP (no peer, budget spent).
    SkMsg = 5,
    /// Not a program of its own: the `sk_msg` sends of a spliced connection. `captured` counts
    /// sends moved past the proxy, straight into the far end.
    Splice = 6,
}

impl Program {
    /// Every program, in slot order.
    pub const ALL: [Program; 7] = [
        Program::Connect4,
        Program::SockOps,
        Program::Xdp,
        Program::TcEgress,
        Program::Connect6,
        Program::SkMsg,
        Program::Splice,
    ];

    /// Name as printed by the agent.
    pub const fn name(self) -> &'static str {
        match self {
            Program::Connect4 => "connect4",
            Program::SockOps => "sockops",
            Program::Xdp => "xdp",
            Program::TcEgress => "tc_egress",
            Program::Connect6 => "connect6",
            Program::SkMsg => "sk_msg",
            Program::Splice => "splice",
        }
    }
}

/// Number of slots in [`PROGRAM_STATS_MAP`].
pub const PROGRAM_COUNT: u32 = Program::ALL.len() as u32;

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no padding, every bit pattern valid.
unsafe impl aya::Pod for ServiceStats {}
#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no padding, every bit pattern valid.
unsafe impl aya::Pod for ProgramStats {}
