//! Taking a snapshot of a paused microVM.

use std::path::Path;
use std::time::Instant;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::format::{self, FormatError};
use super::memory::{self, MemoryFileError, MemoryFileReport};
use super::{
    ConfigState, CpuInfo, DevicesState, MachineState, MicrovmState, Persist, VirtioBackendState,
    VirtioDeviceState,
};
use crate::device_manager::{LegacyHandle, VirtioHandle};
use crate::vmm::Vmm;

/// Errors taking a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A vCPU state could not be read.
    #[error("cannot save the vCPU state")]
    Vcpu(#[from] crate::vmm::VmmError),
    /// The VM state could not be read.
    #[error("cannot save the VM state")]
    Vm(#[from] crate::vstate::vm::VmError),
    /// A device state could not be read.
    #[error("cannot save the state of device {0}: {1}")]
    Device(String, String),
    /// The VM lacks a legacy device every built VM has (serial, i8042, boot marker).
    #[error("the VM has no {0} to save")]
    MissingDevice(&'static str),
    /// Writing the state file failed.
    #[error("cannot write the snapshot state file")]
    State(#[from] FormatError),
    /// Writing the memory file failed.
    #[error("cannot write the snapshot memory file")]
    Memory(#[from] MemoryFileError),
}

/// What a snapshot took.
#[derive(Debug, Clone, Copy)]
pub struct CreateReport {
    /// State file size in bytes.
    pub state_bytes: u64,
    /// Memory file sizes.
    pub memory: MemoryFileReport,
    /// Wall time of the whole create, in microseconds.
    pub took_us: u64,
}

fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Collect the whole microVM's state, with `config` (what the configuration said beyond
/// the devices). The vCPUs must be paused (the controller checks); this runs on the VMM
/// thread, so no device work runs concurrently.
pub fn save_state(vmm: &Vmm, config: &ConfigState) -> Result<MicrovmState, CreateError> {
    let vcpus = vmm.save_vcpu_states()?;
    let vm = Persist::save(vmm.vm())?;
    let (mut serial, mut i8042, mut boot_marker) = (None, None, None);
    for d in vmm.devices().pio_devices() {
        match &d.handle {
            LegacyHandle::Serial(s) => serial = Some(Persist::save(&*lock(s))),
            LegacyHandle::I8042(k) => i8042 = Some(Persist::save(&*lock(k))),
            LegacyHandle::BootMarker(m) => boot_marker = Some(Persist::save(&*lock(m))),
            #[cfg(test)]
            LegacyHandle::Other(_) => {}
        }
    }
    let legacy_err =
        |id: &str, e: &dyn std::error::Error| CreateError::Device(id.into(), e.to_string());
    let serial = serial
        .ok_or(CreateError::MissingDevice("serial console"))?
        .map_err(|e| legacy_err("serial", &e))?;
    let i8042 = i8042
        .ok_or(CreateError::MissingDevice("i8042 controller"))?
        .map_err(|e| legacy_err("i8042", &e))?;
    let boot_marker = boot_marker
        .ok_or(CreateError::MissingDevice("boot marker"))?
        .map_err(|e| legacy_err("boot-marker", &e))?;
    let mut virtio = Vec::new();
    for d in vmm.devices().mmio_devices() {
        let transport = lock(&d.transport)
            .save()
            .map_err(|e| CreateError::Device(d.id.clone(), e.to_string()))?;
        let backend = match &d.device {
            VirtioHandle::Vsock(v) => VirtioBackendState::Vsock(lock(v).save()),
            VirtioHandle::Entropy(v) => VirtioBackendState::Entropy(lock(v).save()),
            VirtioHandle::Block(v) => VirtioBackendState::Block(lock(v).save()),
            #[cfg(test)]
            VirtioHandle::Other(_) => {
                return Err(CreateError::Device(d.id.clone(), "not saveable".into()))
            }
        };
        virtio.push(VirtioDeviceState {
            id: d.id.clone(),
            transport,
            backend,
        });
    }
    let mem = vmm.guest_memory();
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    Ok(MicrovmState {
        cpu: CpuInfo::from_cpuid(vcpus.first().map(|v| &v.cpuid[..]).unwrap_or(&[])),
        machine: MachineState {
            vcpus: vcpus.len() as u8,
            mem_mib: total >> 20,
        },
        memory: memory::layout(mem),
        vm,
        vcpus,
        devices: DevicesState {
            serial,
            i8042,
            boot_marker,
            virtio,
        },
        config: config.clone(),
    })
}

/// Save a paused microVM: the state file at `state_path`, guest RAM at `mem_path`
/// (memory first: a state file only ever exists next to a complete memory file).
pub fn create_snapshot(
    vmm: &Vmm,
    config: &ConfigState,
    state_path: &Path,
    mem_path: &Path,
) -> Result<CreateReport, CreateError> {
    let start = Instant::now();
    let state = save_state(vmm, config)?;
    let memory = memory::save(vmm.guest_memory(), mem_path)?;
    let state_bytes = format::write_file(state_path, &state)?;
    let report = CreateReport {
        state_bytes,
        memory,
        took_us: start.elapsed().as_micros() as u64,
    };
    log::info!(
        "snapshot created in {} ms: state {} bytes, memory {} MiB apparent, {} KiB allocated",
        report.took_us / 1000,
        report.state_bytes,
        report.memory.apparent >> 20,
        report.memory.allocated >> 10
    );
    Ok(report)
}
