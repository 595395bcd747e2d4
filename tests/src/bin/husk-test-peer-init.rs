//! A tiny static init for boot tests: prints `HUSK-TEST-INIT: hello from the guest`
//! (plus the guest's uptime) on /dev/console, writes the boot-ready marker (0x7b to I/O
//! port 0x440, which husk timestamps as "guest ready"; a VMM without that port, such as
//! QEMU microvm, ignores the write), then reboots the guest. With the kernel
//! command line `reboot=t` the reboot is a triple fault, which ends QEMU `-no-reboot`
//! and any VMM that treats a shutdown exit as the end of the guest.

use std::io::Write;

/// The marker boot tests wait for.
const MARKER: &str = "HUSK-TEST-INIT: hello from the guest";

fn uptime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own and pass by pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return -1.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// husk's boot-ready marker port and value (the agent writes the same when it is ready).
const READY_PORT: u16 = 0x440;
const READY_VALUE: u8 = 0x7b;

fn write_ready_marker() -> std::io::Result<()> {
    // SAFETY: ioperm(2) only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(libc::c_ulong::from(READY_PORT), 1, 1) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ioperm granted exactly this port; one byte out to the VMM's marker port
    // touches no memory.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") READY_PORT, in("al") READY_VALUE,
            options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

fn main() {
    let line = format!("{MARKER} (uptime {:.3} s)\n", uptime());
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(mut c) => {
            let _ = c.write_all(line.as_bytes());
        }
        Err(_) => {
            let _ = std::io::stdout().write_all(line.as_bytes());
        }
    }
    if let Err(e) = write_ready_marker() {
        eprintln!("husk-test-peer-init: cannot write the ready marker: {e}");
    }
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with RB_AUTOBOOT restarts the machine; as PID 1 of a throwaway
    // guest that is exactly what we want. If it fails (not PID 1), we just exit.
    let rc = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    eprintln!(
        "husk-test-peer-init: reboot failed (rc {rc}): {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(1);
}
