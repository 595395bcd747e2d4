//! Static guest init for the virtio device e2e test (`tests/tests/vmm_devices.rs`).
//!
//! As PID 1 it mounts devtmpfs, then reports each step on /dev/console with lines
//! starting `HUSK-DEVICES: ` that the test waits for:
//! 1. `console ok`;
//! 2. listens on vsock port 5000 (`listening on vsock port 5000`), accepts one
//!    connection (the host's, through `CONNECT 5000`), reads a line and echoes it back,
//!    then echoes raw bytes until the host shuts down its side
//!    (`echoed <line> (+<n> bulk bytes)`);
//! 3. connects to the host (CID 2) port 6000, sends `hello from the guest\n` and reads
//!    the host's answer line (`host said <line>`); the port is `HUSK_DEVICES_HOST_PORT`
//!    when the kernel command line sets it (the kernel hands `NAME=value` parameters it
//!    does not know to init as environment variables; the jailer test uses 5000);
//! 4. reads 64 bytes from /dev/hwrng (`hwrng 64 bytes <hex>`);
//! 5. `done ok` (or `done with N failures`), then reboots the guest.
//!
//! Every wait is bounded, and a failing step prints `FAIL <step>: <error>` and does not
//! stop the rest, so the test sees exactly what broke.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const PREFIX: &str = "HUSK-DEVICES: ";
const GUEST_PORT: u32 = 5000;
const DEFAULT_HOST_PORT: u32 = 6000;
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(120);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn say(msg: &str) {
    let line = format!("{PREFIX}{msg}\n");
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(mut c) => {
            let _ = c.write_all(line.as_bytes());
        }
        Err(_) => {
            let _ = io::stdout().write_all(line.as_bytes());
        }
    }
}

fn mount_devtmpfs() -> io::Result<()> {
    // SAFETY: all pointers are NUL-terminated static strings; data is NULL.
    let rc = unsafe {
        libc::mount(
            c"devtmpfs".as_ptr(),
            c"/dev".as_ptr(),
            c"devtmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    let err = io::Error::last_os_error();
    if rc == 0 || err.raw_os_error() == Some(libc::EBUSY) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Wait until `fd` is readable, or fail after `timeout`.
fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        0 => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all zeroes is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

fn listen(port: u32) -> io::Result<OwnedFd> {
    let s = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
    let rc = unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(s.as_raw_fd(), 4) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

fn accept(listener: &OwnedFd) -> io::Result<File> {
    wait_readable(listener, ACCEPT_TIMEOUT)?;
    // SAFETY: accept(2) on our listening socket; we do not want the peer address.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn connect(cid: u32, port: u32) -> io::Result<File> {
    let s = vsock_socket()?;
    let addr = vsock_addr(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
    let rc = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(s))
}

/// Read one line (without the newline), at most 256 bytes, each read bounded in time.
fn read_line(f: &mut File) -> io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while out.len() < 256 {
        wait_readable(f, IO_TIMEOUT)?;
        match f.read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => out.push(b[0]),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn echo_step() -> io::Result<String> {
    let listener = listen(GUEST_PORT)?;
    say(&format!("listening on vsock port {GUEST_PORT}"));
    let mut conn = accept(&listener)?;
    let line = read_line(&mut conn)?;
    conn.write_all(format!("{line}\n").as_bytes())?;
    // Bulk phase: echo everything until the host shuts down its side.
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        wait_readable(&conn, IO_TIMEOUT)?;
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])?;
        total += n;
    }
    Ok(format!("{line} (+{total} bulk bytes)"))
}

/// The host port of step 3: `HUSK_DEVICES_HOST_PORT` from the kernel command line, or 6000.
fn host_port() -> u32 {
    std::env::var("HUSK_DEVICES_HOST_PORT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_HOST_PORT)
}

fn connect_step(port: u32) -> io::Result<String> {
    let mut conn = connect(libc::VMADDR_CID_HOST, port)?;
    conn.write_all(b"hello from the guest\n")?;
    read_line(&mut conn)
}

fn hwrng_step() -> io::Result<[u8; 64]> {
    let mut rng = File::open("/dev/hwrng")?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < buf.len() {
        wait_readable(&rng, IO_TIMEOUT)?;
        match rng.read(&mut buf[got..])? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "hwrng EOF")),
            n => got += n,
        }
    }
    if buf.iter().all(|&b| b == 0) {
        return Err(io::Error::other("64 zero bytes"));
    }
    Ok(buf)
}

fn main() {
    let mut failures = 0;
    if let Err(e) = mount_devtmpfs() {
        say(&format!("FAIL mount devtmpfs: {e}"));
        failures += 1;
    }
    say("console ok");
    match echo_step() {
        Ok(line) => say(&format!("echoed {line}")),
        Err(e) => {
            say(&format!("FAIL echo on port {GUEST_PORT}: {e}"));
            failures += 1;
        }
    }
    let port = host_port();
    match connect_step(port) {
        Ok(line) => say(&format!("host said {line}")),
        Err(e) => {
            say(&format!("FAIL connect to host port {port}: {e}"));
            failures += 1;
        }
    }
    match hwrng_step() {
        Ok(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            say(&format!("hwrng 64 bytes {hex}"));
        }
        Err(e) => {
            say(&format!("FAIL hwrng: {e}"));
            failures += 1;
        }
    }
    if failures == 0 {
        say("done ok");
    } else {
        say(&format!("done with {failures} failures"));
    }
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) as PID 1 of a throwaway guest ends it; if it fails we exit.
    let rc = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    say(&format!(
        "FAIL reboot (rc {rc}): {}",
        io::Error::last_os_error()
    ));
    std::process::exit(1);
}
