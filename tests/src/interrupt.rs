//! Tears down what this process made (test nodes, control planes) when it is told to stop —
//! SIGINT, SIGTERM, SIGHUP — as their destructors would have: a signal runs none, and a bench or
//! test stopped with Ctrl-C or by a timeout would leave namespaces, cgroups, pins and processes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

/// A teardown to run if the process is told to stop.
type Teardown = Box<dyn Fn() + Send + Sync>;

/// Registered teardowns, by registration number (run newest first, as destructors would).
static TEARDOWNS: Mutex<BTreeMap<u64, Teardown>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

/// Keeps a teardown registered; dropping it (when the owner cleaned up itself) removes it.
#[must_use = "the teardown is unregistered when this is dropped"]
pub struct OnInterrupt(u64);

/// Registers `teardown` to run if the process is told to stop before the returned guard drops.
pub fn on_interrupt(teardown: impl Fn() + Send + Sync + 'static) -> OnInterrupt {
    INSTALL.call_once(install);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    lock(&TEARDOWNS).insert(id, Box::new(teardown));
    OnInterrupt(id)
}

impl Drop for OnInterrupt {
    fn drop(&mut self) {
        lock(&TEARDOWNS).remove(&self.0);
    }
}

/// Locks `mutex`, also after a panic elsewhere held it: a teardown must run all the same.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Catches the signals: the handler only writes the signal's number to a pipe (what a signal
/// handler may do); a thread reading it runs the teardowns and exits as the signal would have
/// (128 + its number).
fn install() {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("interrupt: no pipe ({}); a signal will leave the test node behind", std::io::Error::last_os_error());
        return;
    }
    let [read, write] = fds;
    // A handler never blocks: with the pipe full, a teardown is under way already.
    // SAFETY: fcntl(2) on the descriptor just made.
    unsafe { libc::fcntl(write, libc::F_SETFL, libc::O_NONBLOCK) };
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let byte = signal as u8;
        // SAFETY: the action only calls write(2), which is async-signal-safe.
        let registered = unsafe {
            signal_hook_registry::register(signal, move || {
                libc::write(write, std::ptr::addr_of!(byte).cast(), 1);
            })
        };
        if let Err(err) = registered {
            eprintln!("interrupt: cannot catch signal {signal} ({err})");
        }
    }
    std::thread::spawn(move || {
        let mut byte = 0u8;
        // SAFETY: read(2) of one byte into a local.
        while unsafe { libc::read(read, std::ptr::addr_of_mut!(byte).cast(), 1) } != 1 {}
        eprintln!("interrupt: signal {byte}: removing test nodes and stopping the processes they started");
        // Held until the process exits: an owner cleaning up itself meanwhile blocks when it
        // unregisters, so it reaps nothing a teardown here may still signal.
        let teardowns = lock(&TEARDOWNS);
        for teardown in teardowns.values().rev() {
            // One that panics must not keep the others from running, nor the process alive.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(teardown));
        }
        std::process::exit(128 + i32::from(byte));
    });
}
