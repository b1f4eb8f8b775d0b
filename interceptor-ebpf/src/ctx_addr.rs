//! IPv6 addresses in context structs (`bpf_sock_addr.user_ip6`, `bpf_sock_ops.local_ip6`): four
//! network-order `u32` words, each read and written on its own — the verifier refuses context
//! accesses wider than the field's declared 4 bytes, and volatile keeps LLVM from merging them.

/// The 16 address bytes of the words at `words`.
///
/// # Safety
///
/// `words` points at a readable 4-word context field.
#[inline(always)]
pub unsafe fn read_ip6(words: *const [u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: in bounds of the field, per the caller.
        let word = unsafe { core::ptr::read_volatile(words.cast::<u32>().add(i)) }.to_ne_bytes();
        addr[i * 4] = word[0];
        addr[i * 4 + 1] = word[1];
        addr[i * 4 + 2] = word[2];
        addr[i * 4 + 3] = word[3];
        i += 1;
    }
    addr
}

/// Writes `addr` into the words at `words`.
///
/// # Safety
///
/// `words` points at a writable 4-word context field.
#[inline(always)]
pub unsafe fn write_ip6(words: *mut [u32; 4], addr: &[u8; 16]) {
    let mut i = 0;
    while i < 4 {
        let word = u32::from_ne_bytes([addr[i * 4], addr[i * 4 + 1], addr[i * 4 + 2], addr[i * 4 + 3]]);
        // SAFETY: in bounds of the field, per the caller.
        unsafe { core::ptr::write_volatile(words.cast::<u32>().add(i), word) };
        i += 1;
    }
}
