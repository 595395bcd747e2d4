//! The i8042 keyboard controller, only for its CPU reset command (0xfe on port 0x64):
//! a guest `reboot` (with `reboot=k`) ends the VM cleanly.

use vm_superio::{I8042Device, Trigger};

use crate::devices::BusDevice;
use crate::stop::{StopReason, StopSignal};

/// Turns the controller's reset into a VM stop with [`StopReason::Reset`].
#[derive(Debug)]
pub struct ResetTrigger(pub StopSignal);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        // The guest retries the reset until it takes effect: log the first one only.
        if self.0.reason().is_none() {
            log::info!("guest requested a reset through the i8042 controller");
        }
        self.0.stop(StopReason::Reset);
        Ok(())
    }
}

/// The i8042 on the port-I/O bus at 0x60..=0x64.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

/// Number of ports the controller spans from 0x60.
pub const I8042_PORTS: u64 = 5;

impl I8042 {
    /// A controller that stops the VM through `stop` on reset.
    pub fn new(stop: StopSignal) -> Self {
        Self {
            dev: I8042Device::new(ResetTrigger(stop)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(off)) => data[0] = self.dev.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            let _ = self.dev.write(off, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm() {
        let stop = StopSignal::new().unwrap();
        let mut dev = I8042::new(stop.try_clone().unwrap());
        dev.write(0, &[0xfe]); // data port: not a command
        dev.write(4, &[0xaa]); // another command
        assert_eq!(stop.reason(), None);
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(
            status[0] & 0x02,
            0,
            "input buffer empty, so kb_wait() passes"
        );
        dev.write(4, &[0xfe]);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
    }
}
