//! Where the fields the fast path reads lie in the running kernel's structures, from its BTF: Rust
//! programs get no CO-RE relocations, so the loader hands the offsets to them as globals. The
//! BTF also tells whether the kernel has the sockmap fixes the fast path relies on.

use std::{path::Path, process::Command};

use btf::btf::{Btf, Type};
use serde::{Deserialize, Serialize};

use super::BpfError;

/// The running kernel's type information.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// What a kernel without them lacks: the sockmap series that counts a socket's moved queue
/// (`msg_tot_len`, which `FIONREAD` reports) and keeps `copied_seq` to the socket's own bytes
/// (`__sk_msg_recvmsg`'s `copied_from_self`), without which reading through the `sk_skb` verdict
/// would move `copied_seq` past `rcv_nxt`.
const NEEDS: &str = "the fast path needs the sockmap fixes \"bpf, sockmap: Fix FIONREAD for sockmap\" \
                     and its copied_seq fix, merged in bpf-next in January 2026";

/// The subcommand that prints [`QueueLayout::parse_running_kernel`] as JSON, or its error after
/// `error: ` on stderr.
const KERNEL_LAYOUT_COMMAND: &str = "kernel-layout";
/// How the child's error starts: `error: ` and [`BpfError::KernelLayout`]'s own prefix.
const CHILD_ERROR_PREFIX: &str = "error: fast path: ";

/// Byte offsets the `sk_msg` program needs to read a socket's queue of moved bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLayout {
    /// `struct sock.sk_user_data`, where a socket in a sockhash keeps its `sk_psock`.
    #[serde(rename = "sock.sk_user_data")]
    pub sock_user_data: u32,
    /// `struct sk_psock.msg_tot_len`: bytes moved into the socket and not read yet.
    #[serde(rename = "sk_psock.msg_tot_len")]
    pub psock_queued: u32,
}

impl QueueLayout {
    /// Parses the running kernel's BTF in this process, which takes tens of MiB for a moment
    /// (and the allocator keeps most of them): what `interceptor kernel-layout` does.
    pub fn parse_running_kernel() -> Result<Self, BpfError> {
        Self::from_btf(Path::new(VMLINUX_BTF))
    }

    /// The same, from a child (`interceptor kernel-layout`), so that the parse's memory is never
    /// the agent's.
    pub(crate) fn of_running_kernel() -> Result<Self, BpfError> {
        let exe = std::env::current_exe().map_err(|e| layout_error(&format!("own executable: {e}")))?;
        let out = Command::new(&exe)
            .arg(KERNEL_LAYOUT_COMMAND)
            // Its stderr is its error alone.
            .env("RUST_LOG", "off")
            .output()
            .map_err(|e| layout_error(&format!("running {} {KERNEL_LAYOUT_COMMAND}: {e}", exe.display())))?;
        if !out.status.success() {
            // The child's own reason: it names what is missing.
            let printed = String::from_utf8_lossy(&out.stderr);
            let printed = printed.trim();
            return Err(layout_error(printed.strip_prefix(CHILD_ERROR_PREFIX).unwrap_or(printed)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| layout_error(&format!("{KERNEL_LAYOUT_COMMAND} printed {e}")))
    }

    fn from_btf(path: &Path) -> Result<Self, BpfError> {
        let btf = Btf::from_file(path).map_err(|e| {
            layout_error(&format!("{} unreadable ({e}); the fast path needs the kernel's BTF", path.display()))
        })?;
        has_parameter(&btf, "__sk_msg_recvmsg", "copied_from_self")?;
        Ok(Self {
            sock_user_data: member_offset(&btf, "sock", "sk_user_data")?,
            psock_queued: member_offset(&btf, "sk_psock", "msg_tot_len")?,
        })
    }
}

/// The kernel's function `name` takes a parameter `parameter`.
fn has_parameter(btf: &Btf, name: &str, parameter: &str) -> Result<(), BpfError> {
    let found = btf.get_type_by_name(name).ok().filter(|f| f.is_function).is_some_and(|f| match &f.base_type {
        Type::FunctionProto(proto) => proto.params.iter().any(|p| p.name.as_deref() == Some(parameter)),
        _ => false,
    });
    found.then_some(()).ok_or_else(|| layout_error(&format!("the kernel's {name} has no {parameter} ({NEEDS})")))
}

/// Byte offset of `member` in `struct name`.
fn member_offset(btf: &Btf, name: &str, member: &str) -> Result<u32, BpfError> {
    let missing = || layout_error(&format!("the kernel has no struct {name}.{member} ({NEEDS})"));
    let Type::Struct(found) = &btf.get_type_by_name(name).map_err(|_| missing())?.base_type else {
        return Err(missing());
    };
    let field = found.members.iter().find(|m| m.name.as_deref() == Some(member)).ok_or_else(missing)?;
    // A bitfield member or an odd bit offset is no plain field.
    if field.bits.is_some_and(|bits| bits != 0) || field.offset % 8 != 0 {
        return Err(missing());
    }
    Ok(field.offset / 8)
}

fn layout_error(reason: &str) -> BpfError {
    BpfError::KernelLayout { reason: reason.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine's own kernel (6.18.44 with the sockmap fixes backported): both fields are
    /// there, word-aligned, inside their structures, and the copied_seq fix too.
    #[test]
    fn the_running_kernel_has_the_fields_the_fast_path_reads() {
        let layout = QueueLayout::parse_running_kernel().unwrap();
        assert_eq!(layout.sock_user_data % 8, 0, "{layout:?}");
        assert_eq!(layout.psock_queued % 4, 0, "{layout:?}");
        assert!(layout.sock_user_data < 4096 && layout.psock_queued < 4096, "{layout:?}");
        let printed = serde_json::to_string(&layout).unwrap();
        assert!(printed.contains("\"sk_psock.msg_tot_len\":"), "{printed}");
        assert_eq!(serde_json::from_str::<QueueLayout>(&printed).unwrap(), layout);
    }

    #[test]
    fn a_missing_field_names_the_structure_and_member() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let err = member_offset(&btf, "sk_psock", "no_such_member").unwrap_err();
        assert_eq!(err.to_string(), format!("fast path: the kernel has no struct sk_psock.no_such_member ({NEEDS})"));
        let err = has_parameter(&btf, "__sk_msg_recvmsg", "no_such_parameter").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("fast path: the kernel's __sk_msg_recvmsg has no no_such_parameter ({NEEDS})")
        );
        assert!(NEEDS.contains("Fix FIONREAD for sockmap"), "{NEEDS}");
    }
}
