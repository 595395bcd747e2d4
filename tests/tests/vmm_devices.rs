//! virtio device e2e test: `husk run` boots the real guest kernel with virtio-vsock
//! (hybrid Unix socket) and virtio-rng; the `devices-init.cpio` fixture's init
//! (`husk-test-devices-init`) proves from inside the guest:
//! - a host-initiated vsock connection (`CONNECT 5000` on the Unix socket) echoes a
//!   line and then 1 MiB of data (credit flow control, half-close);
//! - a guest-initiated connection to host port 6000 reaches `<uds>_6000`;
//! - /dev/hwrng delivers 64 non-zero bytes.
//!
//! Then the guest reboots, which must end `husk` with exit status 0.
//!
//! Needs a hardware-virt KVM host (run it through `husk-testhost`), `HUSK_KERNEL`, the
//! static `husk` binary and the fixture; fails, never skips, when any is missing.

// The whole file is test code: helpers may unwrap like the test functions do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use husk_tests::e2e::{self, ScratchDir, Spawned};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const GUEST_CID: &str = "3";

/// Serve one guest-initiated connection on `<uds>_6000`: read a line, answer `ack`.
fn serve_host_port(listener: UnixListener, tx: mpsc::Sender<String>) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + BOOT_TIMEOUT + STEP_TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let _ = tx.send("<no connection from the guest>".into());
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                let _ = tx.send(format!("<accept failed: {e}>"));
                return;
            }
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let _ = (&stream).write_all(b"ack\n");
    let _ = tx.send(line.trim_end().to_string());
}

/// Bytes of patterned data pushed through the host-initiated connection (several
/// times both sides' 256 KiB credit, so flow control has to work).
const BULK: usize = 1 << 20;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// Host-initiated connection: `CONNECT 5000`, expect `OK <port>`, send a line and read
/// it back, then push [`BULK`] bytes, half-close, and read the echo until EOF.
fn host_echo(uds: &Path, msg: &str) -> (String, String, Vec<u8>) {
    let stream = UnixStream::connect(uds).unwrap_or_else(|e| panic!("connect {uds:?}: {e}"));
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (&stream).write_all(b"CONNECT 5000\n").unwrap();
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    (&stream).write_all(format!("{msg}\n").as_bytes()).unwrap();
    let mut echo = String::new();
    reader.read_line(&mut echo).unwrap();
    let writer = stream.try_clone().unwrap();
    let pusher = thread::spawn(move || {
        let data: Vec<u8> = (0..BULK).map(pattern).collect();
        (&writer).write_all(&data).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    pusher.join().unwrap();
    (ok.trim_end().to_string(), echo.trim_end().to_string(), back)
}

#[test]
fn vsock_both_ways_and_hwrng_in_a_real_guest() {
    let kvm = e2e::require_hardware_kvm().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("KVM: {}", kvm.reason);
    let husk = e2e::bin("husk").unwrap_or_else(|e| panic!("{e}"));
    let kernel = e2e::kernel().unwrap_or_else(|e| panic!("{e}"));
    let initrd = e2e::fixture("devices-init.cpio").unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("devices").unwrap();
    let uds = dir.path().join("vsock.sock");

    let (tx, rx) = mpsc::channel();
    let listener = UnixListener::bind(format!("{}_6000", uds.display())).unwrap();
    let server = thread::spawn(move || serve_host_port(listener, tx));

    let mut cmd = Command::new(husk);
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--mem-mib", "128", "--vsock-cid", GUEST_CID, "--vsock-uds"])
        .arg(&uds)
        .arg("--entropy");
    let mut vm = Spawned::spawn(cmd).unwrap();
    let fail = |vm: &mut Spawned, what: &str, e: &dyn std::fmt::Display| -> ! {
        panic!("{what}: {e}\n--- transcript ---\n{}", vm.transcript())
    };

    if let Err(e) = vm.wait_for_line("HUSK-DEVICES: console ok", BOOT_TIMEOUT) {
        fail(&mut vm, "guest did not reach its init", &e);
    }
    let listening = vm
        .wait_for_line("HUSK-DEVICES: listening on vsock port 5000", STEP_TIMEOUT)
        .unwrap_or_else(|e| fail(&mut vm, "guest did not listen", &e));
    println!("guest listening after {:.3} s", listening.at.as_secs_f64());

    // Host-initiated: CONNECT 5000 through husk's Unix socket.
    let (ok, echo, back) = host_echo(&uds, "ping from the host");
    assert!(
        ok.starts_with("OK ") && ok[3..].parse::<u32>().is_ok_and(|p| p >= 1 << 30),
        "bad CONNECT answer {ok:?}"
    );
    assert_eq!(echo, "ping from the host");
    assert_eq!(back.len(), BULK, "bulk echo came back short");
    assert!(
        back.iter().enumerate().all(|(i, &b)| b == pattern(i)),
        "bulk echo corrupted"
    );
    let expect = format!("HUSK-DEVICES: echoed ping from the host (+{BULK} bulk bytes)");
    if let Err(e) = vm.wait_for_line(&expect, STEP_TIMEOUT) {
        fail(&mut vm, "guest did not report the echo", &e);
    }

    // Guest-initiated: the guest connected to host port 6000 = <uds>_6000.
    let said = vm
        .wait_for_line("HUSK-DEVICES: host said", STEP_TIMEOUT)
        .unwrap_or_else(|e| fail(&mut vm, "guest-initiated connection failed", &e));
    assert!(
        said.text.contains("HUSK-DEVICES: host said ack"),
        "{}",
        said.text
    );
    let from_guest = rx.recv_timeout(STEP_TIMEOUT).unwrap();
    assert_eq!(from_guest, "hello from the guest");
    server.join().unwrap();

    // Entropy.
    let rng = vm
        .wait_for_line("HUSK-DEVICES: hwrng", STEP_TIMEOUT)
        .unwrap_or_else(|e| fail(&mut vm, "no hwrng report", &e));
    let hex = rng
        .text
        .split("HUSK-DEVICES: hwrng 64 bytes ")
        .nth(1)
        .unwrap_or_else(|| panic!("hwrng failed in the guest: {}", rng.text))
        .trim();
    assert_eq!(hex.len(), 128, "{hex}");
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{hex}");
    assert_ne!(hex, "0".repeat(128));

    let done = vm
        .wait_for_line("HUSK-DEVICES: done", STEP_TIMEOUT)
        .unwrap_or_else(|e| fail(&mut vm, "guest did not finish", &e));
    assert!(done.text.contains("done ok"), "{}", done.text);
    let status = vm
        .wait_exit(EXIT_TIMEOUT)
        .unwrap_or_else(|e| fail(&mut vm, "husk did not exit after the guest rebooted", &e));
    assert!(
        status.success(),
        "husk exited with {status}:\n{}",
        vm.transcript()
    );
    for l in vm.transcript().lines() {
        if l.contains("HUSK-DEVICES") || l.contains("virtio") || l.contains("vsock") {
            println!("  | {l}");
        }
    }
    println!(
        "devices e2e: all steps passed in {:.3} s",
        vm.elapsed().as_secs_f64()
    );
}
