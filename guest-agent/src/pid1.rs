//! PID 1 duties in the guest: mounts, signals, reboot, the ready marker, and applying a
//! snapshot restore (entropy, wall clock).

use std::ffi::CString;
use std::io;

use crate::protocol::Restored;
use crate::server::{log, Platform};

/// I/O port the VMM watches for the boot-ready marker.
pub const READY_PORT: u16 = 0x440;
/// Byte written to [`READY_PORT`] when the agent is ready.
pub const READY_VALUE: u8 = 0x7b;
/// Byte written to [`READY_PORT`] when the agent hit a fatal error: the VMM stops the VM
/// and `husk` exits with its own status (5), distinct from a clean reboot (0).
pub const FATAL_VALUE: u8 = 0xfa;
/// How long [`fatal`] waits for the VMM to stop the VM before ending PID 1 itself.
const FATAL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether this process is the guest's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

fn mount_one(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    let _ = std::fs::create_dir_all(target);
    let (Ok(src), Ok(tgt), Ok(ty)) = (
        CString::new(source),
        CString::new(target),
        CString::new(fstype),
    ) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call;
    // a null data pointer is allowed.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(e)
}

/// Mount proc, sysfs, devtmpfs and a tmpfs on /tmp (already-mounted is fine).
pub fn mount_filesystems() {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mounts: [(&str, &str, &str, libc::c_ulong); 4] = [
        ("proc", "/proc", "proc", nosuid),
        ("sysfs", "/sys", "sysfs", nosuid),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID),
        ("tmpfs", "/tmp", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV),
    ];
    for (src, tgt, ty, flags) in mounts {
        if let Err(e) = mount_one(src, tgt, ty, flags) {
            log(&format!("cannot mount {ty} on {tgt}: {e}"));
        }
    }
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// Install a handler for SIGTERM (init only receives signals it handles) and block it,
/// then wait for it on a thread and call `on_term`. Call before spawning other threads
/// so they inherit the blocked mask.
pub fn watch_sigterm<F: FnOnce() + Send + 'static>(on_term: F) -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is a valid starting value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = noop_handler as *const () as libc::sighandler_t;
    // SAFETY: `sa` is fully initialised and the handler is async-signal-safe (empty).
    if unsafe { libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is initialised and SIGTERM is a valid signal.
    unsafe { libc::sigaddset(&mut set, libc::SIGTERM) };
    // SAFETY: `set` is initialised; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` and `sig` are valid for the duration of the call.
            while unsafe { libc::sigwait(&set, &mut sig) } != 0 || sig != libc::SIGTERM {}
            on_term();
        })?;
    Ok(())
}

/// Sync and reboot (the VMM's i8042 reset ends the VM). Never returns.
pub fn reboot() -> ! {
    log("syncing and rebooting");
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    loop {
        // SAFETY: reboot(2) with a valid command; as PID 1 we hold CAP_SYS_BOOT.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Write `value` to the VMM's marker port.
fn write_marker(value: u8) -> io::Result<()> {
    // SAFETY: ioperm(2) only changes this thread's I/O permission bitmap.
    if unsafe { libc::ioperm(libc::c_ulong::from(READY_PORT), 1, 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ioperm above granted access to exactly this port; writing one byte to the
    // VMM's marker port has no effect on memory.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") READY_PORT, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

/// Read the VM's restore generation: a 4-byte read of the marker port, which husk
/// answers with 0 in a booted VM and one more than the snapshotted VM's in a restored
/// one (a VMM without the register reads as `u32::MAX`). One syscall (`ioperm`, whose
/// grant is per thread) and one port read, a VM exit: cheap enough per invocation.
pub fn read_vm_generation() -> io::Result<u32> {
    // SAFETY: ioperm(2) only changes this thread's I/O permission bitmap.
    if unsafe { libc::ioperm(libc::c_ulong::from(READY_PORT), 4, 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let value: u32;
    // SAFETY: ioperm above granted access to exactly these 4 ports; reading the VMM's
    // marker port has no effect on memory.
    unsafe {
        std::arch::asm!("in eax, dx", in("dx") READY_PORT, out("eax") value,
            options(nomem, nostack, preserves_flags));
    }
    Ok(value)
}

/// Write the boot-ready marker to the VMM's I/O port.
pub fn write_ready_marker() -> io::Result<()> {
    write_marker(READY_VALUE)
}

/// End the VM because the agent cannot go on: log `msg`, write [`FATAL_VALUE`] to the
/// marker port (the VMM stops the VM; `husk` exits 5). If the VM still runs after a
/// grace period (no port access, or a VMM that ignores the value), PID 1 exits, which
/// panics the guest kernel (`husk` exits 3): never the clean-reboot status 0.
pub fn fatal(msg: &str) -> ! {
    log(&format!("fatal: {msg}"));
    if let Err(e) = write_marker(FATAL_VALUE) {
        log(&format!("cannot write the fatal marker: {e}"));
    }
    std::thread::sleep(FATAL_GRACE);
    log("the VMM did not stop the VM; exiting PID 1 (kernel panic)");
    std::process::exit(1)
}

/// Make any panic in the agent fatal for the VM (PID 1 only): a half-working agent
/// must not look like a healthy sandbox.
pub fn fatal_on_panic() {
    std::panic::set_hook(Box::new(|info| fatal(&format!("agent panicked: {info}"))));
}

/// The real machine: reboot on shutdown, apply entropy and clock on restore.
pub struct GuestPlatform;

impl Platform for GuestPlatform {
    fn shutdown(&self) {
        reboot();
    }

    fn vm_generation(&self) -> Option<u32> {
        match read_vm_generation() {
            Ok(g) => Some(g),
            Err(e) => {
                log(&format!("cannot read the VM's restore generation: {e}"));
                None
            }
        }
    }

    fn restored(&self, r: &Restored) {
        if let Err(e) = credit_entropy(&r.entropy_seed) {
            log(&format!("cannot credit restore entropy: {e}"));
        }
        let ts = libc::timespec {
            tv_sec: (r.wall_clock_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (r.wall_clock_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: `ts` is a valid timespec.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            log(&format!(
                "cannot set the wall clock: {}",
                io::Error::last_os_error()
            ));
        }
    }
}

/// `RNDADDENTROPY` = `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG` = `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// Most seed bytes credited (the host sends 32).
const MAX_SEED: usize = 256;

/// Add `seed` to the kernel's pool *credited* as entropy (`RNDADDENTROPY`, 8 bits per
/// byte: the host's getrandom output), then force the CRNG to reseed from it at once
/// (`RNDRESEEDCRNG`), so two clones of one snapshot diverge before the next read.
fn credit_entropy(seed: &[u8]) -> io::Result<()> {
    let seed = &seed[..seed.len().min(MAX_SEED)];
    if seed.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty seed"));
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = seed.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    info[0] = (seed.len() * 8) as u32;
    info[1] = seed.len() as u32;
    for (i, chunk) in seed.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(w);
    }
    use std::os::fd::AsRawFd;
    // SAFETY: `info` is a rand_pool_info of 2 + words u32s, buf_size bytes of payload;
    // the kernel reads exactly that and keeps no pointer.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A platform for running the agent outside a VM: shutdown exits, restore only logs.
pub struct HostPlatform;

impl Platform for HostPlatform {
    fn shutdown(&self) {
        log("shutdown requested; exiting (not PID 1)");
        std::process::exit(0);
    }
    fn restored(&self, _r: &Restored) {
        log("restored (not PID 1: entropy and clock left alone)");
    }
}
