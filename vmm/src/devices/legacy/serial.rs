//! The 8250 UART console at 0x3f8 (vm-superio's `Serial`), its interrupt as a KVM
//! irqfd, and the console sink: bounded output to stdout or a file plus a line
//! scanner that stops the VM when the guest kernel panics (exit status 3) or powers
//! off/halts (exit status 0). The guest can print these lines itself; that only lets
//! it stop its own VM, which it can do anyway.

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;
use crate::logger::RateLimit;
use crate::stop::{StopReason, StopSignal};

/// The console line that means the guest kernel panicked.
pub const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// Console lines of a guest that powered off or halted: without ACPI it cannot turn
/// itself off, so the kernel stops its CPUs and husk ends the VM.
pub const POWER_OFF_MARKERS: &[&[u8]] = &[
    b"reboot: Power down",
    b"reboot: System halted",
    b"reboot: Power off not available: System halted instead",
];
/// Longest line prefix kept for panic detection.
const LINE_MAX: usize = 256;

/// An eventfd as a vm-superio interrupt trigger (registered as a KVM irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest console goes: a writer, a byte limit, and the panic scanner.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    limit: u64,
    written: u64,
    line: Vec<u8>,
    stop: Option<StopSignal>,
}

static SINK_ERRORS: RateLimit = RateLimit::new(3, 10_000);

impl ConsoleSink {
    /// A sink writing at most `limit` bytes to `out`; when `stop` is set, a panic line
    /// stops the VM with [`StopReason::GuestPanic`].
    pub fn new(out: Box<dyn Write + Send>, limit: u64, stop: Option<StopSignal>) -> Self {
        Self {
            out,
            limit,
            written: 0,
            line: Vec::with_capacity(LINE_MAX),
            stop,
        }
    }

    fn scan(&mut self, byte: u8) {
        if byte == b'\n' {
            let contains = |m: &[u8]| self.line.windows(m.len()).any(|w| w == m);
            let reason = if contains(PANIC_MARKER) {
                log::error!("the guest kernel panicked (see the console output); stopping the VM");
                Some(StopReason::GuestPanic)
            } else if POWER_OFF_MARKERS.iter().any(|m| contains(m)) {
                log::info!("the guest powered off or halted; stopping the VM");
                Some(StopReason::PowerOff)
            } else {
                None
            };
            self.line.clear();
            if let (Some(r), Some(s)) = (reason, &self.stop) {
                s.stop(r);
            }
        } else if self.line.len() < LINE_MAX {
            self.line.push(byte);
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for b in buf {
            self.scan(*b);
        }
        let room = self.limit.saturating_sub(self.written);
        let n = (buf.len() as u64).min(room) as usize;
        if n > 0 {
            if let Err(e) = self.out.write_all(&buf[..n]) {
                crate::log_limited!(SINK_ERRORS, warn, "guest console output lost: {e}");
            }
            self.written += n as u64;
            if self.written == self.limit {
                log::warn!(
                    "guest console output reached its limit of {} bytes; further output is dropped",
                    self.limit
                );
            }
        }
        // Report everything as written: the UART never blocks on a full sink.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The UART on the port-I/O bus.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, ConsoleSink>,
}

impl SerialDevice {
    /// A UART raising its interrupt through `irq` and writing to `sink`.
    pub fn new(irq: EventFd, sink: ConsoleSink) -> Self {
        Self {
            serial: Serial::new(EventFdTrigger(irq), sink),
        }
    }

    /// The interrupt eventfd (to register as an irqfd).
    pub fn irq_evt(&self) -> &EventFd {
        &self.serial.interrupt_evt().0
    }

    /// The vm-superio UART (for saving its state).
    pub(super) fn serial(&self) -> &Serial<EventFdTrigger, NoEvents, ConsoleSink> {
        &self.serial
    }

    /// Wrap a restored vm-superio UART.
    pub(super) fn from_serial(serial: Serial<EventFdTrigger, NoEvents, ConsoleSink>) -> Self {
        Self { serial }
    }
}

static SERIAL_ERRORS: RateLimit = RateLimit::new(5, 10_000);

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(off)) => data[0] = self.serial.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            if let Err(e) = self.serial.write(off, data[0]) {
                crate::log_limited!(SERIAL_ERRORS, warn, "serial write failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer that appends into shared memory (tests only).
    #[derive(Clone, Default)]
    pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_sink_up_to_the_limit() {
        let buf = SharedBuf::default();
        let sink = ConsoleSink::new(Box::new(buf.clone()), 4, None);
        let mut dev = SerialDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), sink);
        for b in b"hello" {
            dev.write(0, &[*b]);
        }
        assert_eq!(buf.0.lock().unwrap().as_slice(), b"hell");
        // Line status register: transmitter empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Odd-sized accesses are ignored / read as all ones.
        let mut two = [0u8; 2];
        dev.read(5, &mut two);
        assert_eq!(two, [0xff, 0xff]);
    }

    #[test]
    fn panic_line_stops_the_vm() {
        let stop = StopSignal::new().unwrap();
        let mut sink = ConsoleSink::new(
            Box::new(io::sink()),
            1 << 20,
            Some(stop.try_clone().unwrap()),
        );
        sink.write_all(b"[ 1.0] Kernel panic - not sync").unwrap();
        sink.write_all(b"ing: Attempted to kill init!\n").unwrap();
        assert_eq!(stop.reason(), Some(StopReason::GuestPanic));
    }

    #[test]
    fn no_false_panic_and_long_lines_are_bounded() {
        let stop = StopSignal::new().unwrap();
        let mut sink = ConsoleSink::new(
            Box::new(io::sink()),
            1 << 20,
            Some(stop.try_clone().unwrap()),
        );
        sink.write_all(&[b'x'; 10_000]).unwrap();
        assert!(sink.line.len() <= LINE_MAX);
        sink.write_all(b"Kernel panic - not syncing\n")
            .unwrap_or(());
        // The marker came after 10k bytes on the same line: beyond the scanned prefix.
        assert_eq!(stop.reason(), None);
        sink.write_all(b"all good\nKernel pan\nic - not syncing\n")
            .unwrap();
        assert_eq!(stop.reason(), None);
    }

    #[test]
    fn power_off_line_stops_the_vm_cleanly() {
        let stop = StopSignal::new().unwrap();
        let mut sink = ConsoleSink::new(
            Box::new(io::sink()),
            1 << 20,
            Some(stop.try_clone().unwrap()),
        );
        sink.write_all(b"[    1.2] reboot: Power down\r\n").unwrap();
        assert_eq!(stop.reason(), Some(StopReason::PowerOff));
        assert_eq!(StopReason::PowerOff.exit_code(), 0);
        // What a guest without ACPI prints for `poweroff`.
        let stop = StopSignal::new().unwrap();
        let mut sink = ConsoleSink::new(
            Box::new(io::sink()),
            1 << 20,
            Some(stop.try_clone().unwrap()),
        );
        sink.write_all(b"reboot: Power off not available: System halted instead\n")
            .unwrap();
        assert_eq!(stop.reason(), Some(StopReason::PowerOff));
    }
}
