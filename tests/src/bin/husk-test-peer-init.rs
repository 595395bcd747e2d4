//! A tiny static init for boot tests: prints `HUSK-TEST-INIT: hello from the guest`
//! (plus the guest's uptime) on /dev/console, then reboots the guest. With the kernel
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
