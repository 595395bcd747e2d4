//! The built microVM: vCPU handles, the VM, its devices, guest memory and the stop
//! signal. The controller ([`crate::controller`]) owns it and drives it from the VMM
//! thread's event loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::device_manager::DeviceManager;
use crate::devices::legacy::marker::NOT_READY;
use crate::stop::{StopReason, StopSignal};
use crate::vstate::memory::MemoryProbe;
use crate::vstate::vcpu::{VcpuError, VcpuHandle, VcpuState};
use crate::vstate::vm::Vm;
use crate::GuestMemoryMmap;

/// Errors driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A vCPU did not follow a command.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// A built microVM. Field order matters: vCPU threads are joined and the VM fd closed
/// before guest memory is unmapped.
pub struct Vmm {
    vcpus: Vec<VcpuHandle>,
    stop: StopSignal,
    ready_at: Arc<AtomicU64>,
    devices: DeviceManager,
    vm: Vm,
    mem: GuestMemoryMmap,
    print_memory_at_ready: bool,
    memory_reported: bool,
    memory_probe: Option<MemoryProbe>,
}

impl Vmm {
    /// Assemble a VMM (used by the builder).
    pub fn new(
        vcpus: Vec<VcpuHandle>,
        stop: StopSignal,
        ready_at: Arc<AtomicU64>,
        devices: DeviceManager,
        vm: Vm,
        mem: GuestMemoryMmap,
    ) -> Self {
        Self {
            vcpus,
            stop,
            ready_at,
            devices,
            vm,
            mem,
            print_memory_at_ready: false,
            memory_reported: false,
            memory_probe: MemoryProbe::open()
                .map_err(|e| log::info!("no memory report: cannot open /proc files (normal inside a jail without /proc): {e}"))
                .ok(),
        }
    }

    /// Also print the memory report taken when the guest becomes ready to stderr
    /// (`--boot-timer`); it is always logged at info level.
    pub fn set_print_memory_at_ready(&mut self, print: bool) {
        self.print_memory_at_ready = print;
    }

    /// (VMM RSS, guest RAM resident) in bytes, right now.
    /// Uses the probe opened when the VMM was built the first time, fresh proc files
    /// afterwards (which needs `openat`: not under the VMM seccomp filter).
    pub fn memory_usage(&mut self) -> std::io::Result<(u64, u64)> {
        let probe = match self.memory_probe.take() {
            Some(p) => p,
            None => MemoryProbe::open()?,
        };
        probe.measure(&self.mem)
    }

    /// Whether the memory report was taken already.
    pub fn memory_reported(&self) -> bool {
        self.memory_reported
    }

    /// Log (and with `--boot-timer` print) the VMM's memory use, once.
    pub fn report_memory(&mut self, when: &str) {
        self.memory_reported = true;
        // Only the probe opened at build time: the VMM thread may be under seccomp now,
        // where opening a file kills the process.
        let Some(probe) = self.memory_probe.take() else {
            log::info!("no memory report at {when}: /proc was not available at start");
            return;
        };
        match probe.measure(&self.mem) {
            Ok((rss, guest)) => {
                let line = format!(
                    "memory at {when}: VMM RSS {} KiB, guest RAM resident {} KiB, VMM overhead {} KiB",
                    rss / 1024,
                    guest / 1024,
                    rss.saturating_sub(guest) / 1024
                );
                log::info!("{line}");
                if self.print_memory_at_ready {
                    eprintln!("husk: {line}");
                }
            }
            Err(e) => log::warn!("cannot measure memory use at {when}: {e}"),
        }
    }

    /// Run (or continue running) all vCPUs.
    pub fn resume(&self) -> Result<(), VmmError> {
        for v in &self.vcpus {
            v.resume()?;
        }
        Ok(())
    }

    /// Pause all vCPUs; returns when every one is paused.
    pub fn pause(&self) -> Result<(), VmmError> {
        for v in &self.vcpus {
            v.pause()?;
        }
        Ok(())
    }

    /// Save every vCPU's state (pause first).
    pub fn save_vcpu_states(&self) -> Result<Vec<VcpuState>, VmmError> {
        self.vcpus
            .iter()
            .map(|v| v.save_state().map_err(VmmError::from))
            .collect()
    }

    /// Ask the VM to stop (as if a device did).
    pub fn request_stop(&self, reason: StopReason) {
        self.stop.stop(reason);
    }

    /// When the guest wrote the ready marker, in ns since the VMM process started.
    pub fn ready_at_ns(&self) -> Option<u64> {
        let v = self.ready_at.load(Ordering::SeqCst);
        (v != NOT_READY).then_some(v)
    }

    /// Guest memory.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The KVM VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The devices.
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    /// The stop signal (its eventfd wakes the controller).
    pub fn stop_signal(&self) -> &StopSignal {
        &self.stop
    }

    /// End all vCPU threads.
    ///
    /// A vCPU thread that does not end in time (blocked outside `KVM_RUN`, e.g. on a
    /// console pipe nobody reads) is left behind; guest memory is then leaked on
    /// purpose so that it stays mapped for as long as that thread might still run the
    /// guest. The process is about to exit anyway.
    pub fn shutdown(&mut self) {
        let mut all_exited = true;
        for v in &mut self.vcpus {
            all_exited &= v.exit();
        }
        if !all_exited {
            std::mem::forget(self.mem.clone());
        }
    }
}
