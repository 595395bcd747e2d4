//! Function snapshots: save a paused microVM to a state file and a memory file, and
//! build a fresh, paused microVM from them.
//!
//! - [`format`]: the state file container (magic, version, CRC64, size limit, atomic
//!   write).
//! - [`memory`]: the memory file (sparse save, `MAP_PRIVATE` restore).
//! - [`Persist`]: the one save/restore trait every component's state goes through;
//!   [`MicrovmState`] is the sum of the components' states.
//! - [`create`]: [`create::create_snapshot`]; [`restore`]: [`restore::build_microvm_from_snapshot`].

pub mod create;
pub mod format;
pub mod memory;
pub mod params;
pub mod persist;
pub mod restore;

use serde::{Deserialize, Serialize};

use crate::devices::legacy::persist::{BootMarkerState, SerialDeviceState};
use crate::devices::legacy::I8042State;
use crate::devices::virtio::block::persist::BlockState;
use crate::devices::virtio::mmio_persist::MmioTransportState;
use crate::devices::virtio::rng::persist::EntropyState;
use crate::devices::virtio::vsock::persist::VsockState;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;
use memory::GuestMemoryState;

/// Save and restore one component. `State` is its one saved-state type; `restore`
/// builds the component from untrusted `state` (re-validating every field) and the
/// run-time resources in `Args` that are not part of a snapshot (fds, paths, memory).
pub trait Persist: Sized {
    /// The saved state.
    type State;
    /// What restoring needs besides the state.
    type Args;
    /// Why saving or restoring failed.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Save the component (the VM is paused).
    fn save(&self) -> Result<Self::State, Self::Error>;
    /// Build the component from `state`.
    fn restore(args: Self::Args, state: &Self::State) -> Result<Self, Self::Error>;
}

/// The host CPU a snapshot was taken on, as KVM reports it (`KVM_GET_SUPPORTED_CPUID`
/// leaves 0 and 1). A restore on another vendor or family is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Vendor string ("GenuineIntel", "AuthenticAMD").
    pub vendor: String,
    /// Display family.
    pub family: u32,
    /// Display model (recorded, not enforced).
    pub model: u32,
}

impl CpuInfo {
    /// The CPU described by a CPUID list (leaf 0 and leaf 1).
    pub fn from_cpuid(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> Self {
        let leaf = |f: u32| entries.iter().find(|e| e.function == f && e.index == 0);
        let vendor = leaf(0)
            .map(|e| {
                let mut b = Vec::with_capacity(12);
                for r in [e.ebx, e.edx, e.ecx] {
                    b.extend_from_slice(&r.to_le_bytes());
                }
                String::from_utf8_lossy(&b).into_owned()
            })
            .unwrap_or_default();
        let eax = leaf(1).map(|e| e.eax).unwrap_or(0);
        let base_family = (eax >> 8) & 0xf;
        let family = if base_family == 0xf {
            base_family + ((eax >> 20) & 0xff)
        } else {
            base_family
        };
        let base_model = (eax >> 4) & 0xf;
        let model = if base_family == 0x6 || base_family == 0xf {
            base_model | (((eax >> 16) & 0xf) << 4)
        } else {
            base_model
        };
        Self {
            vendor,
            family,
            model,
        }
    }
}

/// The machine a snapshot was taken of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    /// vCPU count.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
}

/// A virtio device's backend state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioBackendState {
    /// virtio-vsock.
    Vsock(VsockState),
    /// virtio-rng.
    Entropy(EntropyState),
    /// virtio-blk (one per drive; the image is reopened from its saved path).
    Block(BlockState),
}

/// One virtio-mmio device: id, transport (common config + queues) and backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    /// Resource id (`vsock`, `entropy`, a drive id).
    pub id: String,
    /// The transport.
    pub transport: MmioTransportState,
    /// The device.
    pub backend: VirtioBackendState,
}

/// Every device's state, virtio devices in window order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// The console UART.
    pub serial: SerialDeviceState,
    /// The i8042 (registers, pending keyboard bytes).
    pub i8042: I8042State,
    /// The boot marker (the restore generation).
    pub boot_marker: BootMarkerState,
    /// virtio-mmio devices, in attach (window) order.
    pub virtio: Vec<VirtioDeviceState>,
}

/// The root drive, as configured: the one fact about drives no device state carries
/// (kept so `GET /vm/config` after a load shows the machine as it was configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootDriveState {
    /// The drive id (one of the saved block devices).
    pub id: String,
    /// `root=PARTUUID=` instead of `/dev/vda`.
    pub partuuid: Option<String>,
}

/// Configuration that is not device state, recorded for `GET /vm/config` after a load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigState {
    /// The root drive, if the VM booted from one.
    pub root_drive: Option<RootDriveState>,
}

/// A whole microVM: the state file's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicrovmState {
    /// The CPU it ran on.
    pub cpu: CpuInfo,
    /// vCPU count and RAM size.
    pub machine: MachineState,
    /// Guest memory layout (contents are in the memory file).
    pub memory: GuestMemoryState,
    /// irqchip, PIT, clock.
    pub vm: VmState,
    /// Per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Devices.
    pub devices: DevicesState,
    /// Configuration that is not device state.
    pub config: ConfigState,
}

#[cfg(test)]
mod kvm_tests;
