//! [`Persist`] for each component whose state lives in the state file. Each impl
//! delegates to the component's own `save`/`restore` (or `save_state`/
//! `restore_state`), so there is one state type and one code path per component.

use std::path::PathBuf;

use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use super::Persist;
use crate::devices::legacy::i8042::I8042Error;
use crate::devices::legacy::persist::{SerialDeviceState, SerialRestoreError};
use crate::devices::legacy::{
    BootMarker, BootMarkerState, ConsoleSink, I8042State, SerialDevice, I8042,
};
use crate::devices::virtio::block::persist::BlockState;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::rng::persist::EntropyState;
use crate::devices::virtio::rng::{Entropy, EntropyError};
use crate::devices::virtio::vsock::persist::VsockState;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::stop::StopSignal;
use crate::vstate::vm::{Vm, VmError, VmState};

impl Persist for Vm {
    type State = VmState;
    type Args = Kvm;
    type Error = VmError;
    fn save(&self) -> Result<VmState, VmError> {
        self.save_state()
    }
    /// A fresh VM (irqchip, PIT) on `args` with `state` loaded.
    fn restore(kvm: Kvm, state: &VmState) -> Result<Self, VmError> {
        let vm = Vm::new(&kvm)?;
        vm.restore_state(state)?;
        Ok(vm)
    }
}

impl Persist for SerialDevice {
    type State = SerialDeviceState;
    type Args = (EventFd, ConsoleSink);
    type Error = SerialRestoreError;
    fn save(&self) -> Result<SerialDeviceState, SerialRestoreError> {
        Ok(SerialDevice::save(self))
    }
    fn restore(
        (irq, sink): (EventFd, ConsoleSink),
        state: &SerialDeviceState,
    ) -> Result<Self, SerialRestoreError> {
        SerialDevice::restore(state, irq, sink)
    }
}

impl Persist for I8042 {
    type State = I8042State;
    /// Stops the VM on the guest's reset command; raises the keyboard interrupt.
    type Args = (StopSignal, EventFd);
    type Error = I8042Error;
    fn save(&self) -> Result<I8042State, I8042Error> {
        Ok(I8042::save(self))
    }
    /// Validates the queue length and pending commands (see [`I8042::restore`]).
    fn restore((stop, irq): (StopSignal, EventFd), state: &I8042State) -> Result<Self, I8042Error> {
        I8042::restore(stop, Some(irq), state)
    }
}

impl Persist for BootMarker {
    type State = BootMarkerState;
    /// Stops the VM when the agent reports a fatal error.
    type Args = StopSignal;
    type Error = std::convert::Infallible;
    fn save(&self) -> Result<BootMarkerState, Self::Error> {
        Ok(BootMarkerState {
            generation: self.generation(),
        })
    }
    /// A marker for the *restored* VM, one generation on from the saved one, so the agent sees it was restored (any u32 is valid; it wraps).
    fn restore(stop: StopSignal, state: &BootMarkerState) -> Result<Self, Self::Error> {
        Ok(BootMarker::new(false)
            .with_fatal_stop(stop)
            .with_generation(state.generation.wrapping_add(1)))
    }
}

impl Persist for Vsock {
    type State = VsockState;
    /// The host Unix socket path to listen on (per restored sandbox).
    type Args = PathBuf;
    type Error = VsockError;
    fn save(&self) -> Result<VsockState, VsockError> {
        Ok(Vsock::save(self))
    }
    fn restore(uds_path: PathBuf, state: &VsockState) -> Result<Self, VsockError> {
        Vsock::restore(state, uds_path)
    }
}

impl Persist for Entropy {
    type State = EntropyState;
    type Args = ();
    type Error = EntropyError;
    fn save(&self) -> Result<EntropyState, EntropyError> {
        Ok(Entropy::save(self))
    }
    fn restore((): (), state: &EntropyState) -> Result<Self, EntropyError> {
        Entropy::restore(state)
    }
}

impl Persist for Block {
    type State = BlockState;
    /// Open this image instead of the saved path (`None`: the saved path).
    type Args = Option<PathBuf>;
    type Error = BlockError;
    fn save(&self) -> Result<BlockState, BlockError> {
        Ok(Block::save(self))
    }
    fn restore(path: Option<PathBuf>, state: &BlockState) -> Result<Self, BlockError> {
        Block::restore(path.as_deref(), state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::i8042::{BUF_SIZE, CTRL_ALT_DEL};
    use crate::devices::BusDevice;
    use crate::stop::StopReason;

    fn evt() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    /// Through the state file's encoding (postcard), as a snapshot carries it.
    fn through_file<T: serde::Serialize + serde::de::DeserializeOwned>(state: &T) -> T {
        let bytes = crate::snapshot::format::encode(state).unwrap();
        crate::snapshot::format::decode(&bytes).unwrap()
    }

    #[test]
    fn i8042_with_pending_keys_delivers_them_after_restore() {
        let stop = StopSignal::new().unwrap();
        let mut dev = I8042::new(stop.try_clone().unwrap()).with_interrupt(evt());
        dev.send_ctrl_alt_del().unwrap();
        let mut b = [0u8];
        dev.read(0, &mut b); // the guest read the first key byte before the snapshot
        assert_eq!(b[0], CTRL_ALT_DEL[0]);
        let state = through_file(&Persist::save(&dev).unwrap());
        assert_eq!(state.output, CTRL_ALT_DEL[1..]);

        let irq = evt();
        let mut restored = <I8042 as Persist>::restore(
            (stop.try_clone().unwrap(), irq.try_clone().unwrap()),
            &state,
        )
        .unwrap();
        assert_eq!(
            Persist::save(&restored).unwrap(),
            state,
            "save, restore, save"
        );
        let mut got = Vec::new();
        loop {
            let mut st = [0u8];
            restored.read(4, &mut st);
            if st[0] & 1 == 0 {
                break;
            }
            restored.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, CTRL_ALT_DEL[1..], "the pending keys, in order");
        // One interrupt per byte still queued after a read: the restored device raises
        // the keyboard interrupt on the eventfd it was given.
        assert_eq!(irq.read().unwrap(), (CTRL_ALT_DEL.len() - 2) as u64);
        // The reset command still stops the VM through the restored stop signal.
        restored.write(4, &[0xfe]);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
    }

    #[test]
    fn hostile_i8042_states_are_refused() {
        let stop = StopSignal::new().unwrap();
        let good = I8042::new(stop.try_clone().unwrap()).save();
        let refuse = |f: &dyn Fn(&mut I8042State)| {
            let mut s = good.clone();
            f(&mut s);
            let s = through_file(&s);
            let e =
                <I8042 as Persist>::restore((stop.try_clone().unwrap(), evt()), &s).unwrap_err();
            assert!(matches!(e, I8042Error::BadState(_)), "{e}");
            e.to_string()
        };
        assert!(refuse(&|s| s.output = vec![0xaa; BUF_SIZE + 1]).contains("17 output bytes"));
        assert!(refuse(&|s| s.output = vec![0; 1 << 16]).contains("at most 16"));
        assert!(refuse(&|s| s.pending_cmd = Some(0xfe)).contains("0xfe"));
        assert!(refuse(&|s| s.pending_kbd_cmd = Some(0xf4)).contains("0xf4"));
        // Every byte value is a valid control register or output byte.
        for v in [0u8, 0x7f, 0xff] {
            let mut s = good.clone();
            s.control = v;
            s.output = vec![v; BUF_SIZE];
            <I8042 as Persist>::restore((stop.try_clone().unwrap(), evt()), &s).unwrap();
        }
    }

    #[test]
    fn boot_marker_restores_one_generation_on() {
        let stop = StopSignal::new().unwrap();
        let booted = BootMarker::new(false);
        let s = through_file(&Persist::save(&booted).unwrap());
        assert_eq!(s.generation, 0);
        let mut clone = <BootMarker as Persist>::restore(stop.try_clone().unwrap(), &s).unwrap();
        let mut d = [0u8; 4];
        clone.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1, "a restored VM reads generation 1");
        let s2 = Persist::save(&clone).unwrap();
        let grand = <BootMarker as Persist>::restore(stop.try_clone().unwrap(), &s2).unwrap();
        assert_eq!(grand.generation(), 2, "a clone of a clone");
        let wrap = BootMarkerState {
            generation: u32::MAX,
        };
        let m = <BootMarker as Persist>::restore(stop.try_clone().unwrap(), &wrap).unwrap();
        assert_eq!(m.generation(), 0, "wraps, never panics");
        // The restored marker still turns the agent's fatal value into a stop.
        clone.write(0, &[husk_agent::pid1::FATAL_VALUE]);
        assert_eq!(stop.reason(), Some(StopReason::AgentFatal));
    }
}
