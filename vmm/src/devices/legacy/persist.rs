//! Saving and restoring the legacy devices. The UART's registers and receive FIFO are
//! saved here; the i8042's registers and pending keyboard bytes are its
//! [`I8042State`](super::I8042State) (in `i8042.rs`); of the boot marker only the restore
//! generation is saved (a restored VM is past its ready marker).

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use super::serial::{ConsoleSink, EventFdTrigger, SerialDevice};

/// Most bytes the UART's receive FIFO holds (vm-superio's FIFO size).
pub const SERIAL_FIFO_MAX: usize = 64;

/// The saved state of the console UART (`SerialDevice`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDeviceState {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Receive FIFO.
    pub in_buffer: Vec<u8>,
}

/// The saved state of the boot marker: the VM's restore generation. A VM restored
/// from it answers generation reads with one more (see `marker.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootMarkerState {
    /// The generation of the VM the snapshot was taken of.
    pub generation: u32,
}

/// A UART state that cannot be restored.
#[derive(Debug, thiserror::Error)]
#[error("invalid saved serial state: {0}")]
pub struct SerialRestoreError(pub String);

impl SerialDevice {
    /// Save the UART's registers and FIFO.
    pub fn save(&self) -> SerialDeviceState {
        let s = self.serial().state();
        SerialDeviceState {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// A UART with `state` (untrusted: the FIFO length is bounded) raising `irq`
    /// and writing to `sink`.
    pub fn restore(
        state: &SerialDeviceState,
        irq: EventFd,
        sink: ConsoleSink,
    ) -> Result<Self, SerialRestoreError> {
        if state.in_buffer.len() > SERIAL_FIFO_MAX {
            return Err(SerialRestoreError("receive FIFO too long".into()));
        }
        let s = SerialState {
            baud_divisor_low: state.baud_divisor[0],
            baud_divisor_high: state.baud_divisor[1],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let serial = Serial::from_state(&s, EventFdTrigger(irq), NoEvents, sink)
            .map_err(|e| SerialRestoreError(format!("{e:?}")))?;
        Ok(Self::from_serial(serial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::BusDevice;

    fn sink() -> ConsoleSink {
        ConsoleSink::new(Box::new(std::io::sink()), 1 << 20, None)
    }

    #[test]
    fn serial_save_restore_save_is_identical() {
        let mut a = SerialDevice::new(EventFd::new(0).unwrap(), sink());
        a.write(1, &[0x0f]); // IER
        a.write(3, &[0x03]); // LCR 8N1
        a.write(7, &[0x5a]); // scratch
        let st = a.save();
        assert_eq!(st.interrupt_enable, 0x0f);
        let mut b = SerialDevice::restore(&st, EventFd::new(0).unwrap(), sink()).unwrap();
        assert_eq!(b.save(), st);
        let mut d = [0u8];
        b.read(7, &mut d);
        assert_eq!(d[0], 0x5a);
        let mut bad = st.clone();
        bad.in_buffer = vec![0; SERIAL_FIFO_MAX + 1];
        assert!(SerialDevice::restore(&bad, EventFd::new(0).unwrap(), sink()).is_err());
    }
}
