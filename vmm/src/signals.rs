//! Process signals the VMM uses: the vCPU kick signal, and SIGTERM/SIGINT, which become
//! a stop request for the controller (written to an eventfd from the handler, read by
//! the event loop). Lives apart from `vstate::vcpu` and `seccomp` so that neither has
//! to import the other.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// The eventfd the termination handler writes to (-1: none installed yet).
static TERM_FD: AtomicI32 = AtomicI32::new(-1);
/// The last termination signal received (0: none).
static TERM_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn term_handler(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERM_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = TERM_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `fd` is an eventfd kept open for the
        // life of the process (leaked in `install_term_handlers`) and `one` is a live
        // 8-byte buffer.
        let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Install SIGTERM and SIGINT handlers that wake the event loop through `evt` instead
/// of killing the process, so the VMM stops the vCPUs and removes its sockets first.
/// The eventfd is duplicated and kept open for the life of the process.
pub fn install_term_handlers(evt: &EventFd) -> std::io::Result<()> {
    let dup = evt.try_clone()?;
    TERM_FD.store(dup.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(dup);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        register_signal_handler(sig, term_handler)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(())
}

/// The termination signal received, if any.
pub fn term_signal() -> Option<i32> {
    match TERM_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
