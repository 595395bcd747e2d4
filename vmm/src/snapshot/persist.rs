//! [`Persist`] for each component whose state lives in the state file. Each impl
//! delegates to the component's own `save`/`restore` (or `save_state`/
//! `restore_state`), so there is one state type and one code path per component.

use std::path::PathBuf;

use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use super::Persist;
use crate::devices::legacy::persist::{SerialDeviceState, SerialRestoreError};
use crate::devices::legacy::{ConsoleSink, SerialDevice};
use crate::devices::virtio::block::persist::BlockState;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::rng::persist::EntropyState;
use crate::devices::virtio::rng::{Entropy, EntropyError};
use crate::devices::virtio::vsock::persist::VsockState;
use crate::devices::virtio::vsock::{Vsock, VsockError};
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
