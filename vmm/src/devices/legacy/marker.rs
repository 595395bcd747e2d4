//! The boot-ready marker port (0x440): the guest writes 0x7b when it is ready; the VMM
//! timestamps it (nanoseconds since the VMM process started). The agent writes
//! [`husk_agent::pid1::FATAL_VALUE`] when it cannot go on: the VM is stopped with
//! [`StopReason::AgentFatal`] (husk exit status 5).
//!
//! A 4-byte read of the port returns the VM's *restore generation* (u32, little
//! endian): 0 for a booted VM, one more than the snapshotted VM's for a VM restored from
//! a snapshot. The agent compares it with the value it saw at boot or at its last
//! `Restored` message, so a clone refuses invocations until the host's handshake however
//! the snapshot was taken (see `husk_agent::pid1::read_vm_generation`). Other reads
//! return 0xff bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::arch::x86_64::layout::BOOT_MARKER_READY;
use crate::devices::BusDevice;
use crate::logger::{nanos_since_start, RateLimit};
use crate::stop::{StopReason, StopSignal};
use husk_agent::pid1::FATAL_VALUE;

/// "Not ready yet" in [`BootMarker::ready_at`].
pub const NOT_READY: u64 = u64::MAX;

/// The marker device.
pub struct BootMarker {
    ready_at: Arc<AtomicU64>,
    print_to_stderr: bool,
    fatal_stop: Option<StopSignal>,
    generation: u32,
}

static ODD_WRITES: RateLimit = RateLimit::new(5, 10_000);

impl BootMarker {
    /// A marker; with `print_to_stderr` (`--boot-timer`) the ready line also goes to
    /// stderr.
    pub fn new(print_to_stderr: bool) -> Self {
        Self {
            ready_at: Arc::new(AtomicU64::new(NOT_READY)),
            print_to_stderr,
            fatal_stop: None,
            generation: 0,
        }
    }

    /// Answer generation reads with `generation` (a restored VM's).
    pub fn with_generation(mut self, generation: u32) -> Self {
        self.generation = generation;
        self
    }

    /// The restore generation the guest reads.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Stop the VM through `stop` when the agent writes its fatal value.
    pub fn with_fatal_stop(mut self, stop: StopSignal) -> Self {
        self.fatal_stop = Some(stop);
        self
    }

    /// Shared "ready at" timestamp in ns since process start ([`NOT_READY`] until then).
    pub fn ready_at(&self) -> Arc<AtomicU64> {
        self.ready_at.clone()
    }
}

impl BusDevice for BootMarker {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.generation.to_le_bytes()),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&FATAL_VALUE) {
            if let Some(stop) = &self.fatal_stop {
                // Once per VM: the stop ends the guest.
                log::error!("the guest agent reported a fatal error; stopping the VM");
                stop.stop(StopReason::AgentFatal);
                return;
            }
        }
        if offset != 0 || data.first() != Some(&BOOT_MARKER_READY) {
            crate::log_limited!(
                ODD_WRITES,
                debug,
                "ignoring write {data:?} to the boot marker port"
            );
            return;
        }
        let now = nanos_since_start();
        // Only the first ready write counts.
        if self
            .ready_at
            .compare_exchange(NOT_READY, now, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let line = format!(
                "guest ready after {}.{:03} ms",
                now / 1_000_000,
                (now / 1000) % 1000
            );
            log::info!("{line}");
            if self.print_to_stderr {
                eprintln!("husk: {line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_value_marks_ready_once() {
        let mut m = BootMarker::new(false);
        let at = m.ready_at();
        m.write(0, &[0x7a]);
        assert_eq!(at.load(Ordering::SeqCst), NOT_READY);
        m.write(0, &[0x7b]);
        let first = at.load(Ordering::SeqCst);
        assert_ne!(first, NOT_READY);
        std::thread::sleep(std::time::Duration::from_millis(2));
        m.write(0, &[0x7b]);
        assert_eq!(at.load(Ordering::SeqCst), first);
    }

    #[test]
    fn generation_is_read_as_four_bytes_only() {
        let mut m = BootMarker::new(false);
        let mut d = [0u8; 4];
        m.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0, "a booted VM is generation 0");
        let mut m = m.with_generation(0x0102_0304);
        m.read(0, &mut d);
        assert_eq!(d, [4, 3, 2, 1]);
        let mut b = [0u8; 1];
        m.read(0, &mut b);
        assert_eq!(b, [0xff], "one-byte reads stay 0xff");
        let mut w = [0u8; 2];
        m.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
    }

    #[test]
    fn fatal_value_stops_the_vm_with_its_own_status() {
        let stop = StopSignal::new().unwrap();
        let mut m = BootMarker::new(false).with_fatal_stop(stop.try_clone().unwrap());
        m.write(0, &[0x7b]);
        assert_eq!(stop.reason(), None);
        m.write(0, &[FATAL_VALUE]);
        assert_eq!(stop.reason(), Some(StopReason::AgentFatal));
        assert_eq!(StopReason::AgentFatal.exit_code(), 5);
        assert_ne!(FATAL_VALUE, BOOT_MARKER_READY);
        // Without a stop signal the value is only an odd write.
        let mut plain = BootMarker::new(false);
        plain.write(0, &[FATAL_VALUE]);
        assert_eq!(plain.ready_at().load(Ordering::SeqCst), NOT_READY);
    }
}
