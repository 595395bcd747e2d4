//! Building a fresh microVM from a snapshot: the one restore path (the API's
//! `PUT /snapshot/load` and `husk snapshot restore` both end here). Returns a
//! **paused** [`Vmm`], like the boot builder.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vmm_sys_util::eventfd::EventFd;

use super::format::{self, FormatError};
use super::memory::{self, GuestMemoryState, MemoryFileError};
use super::{CpuInfo, MicrovmState, Persist, VirtioBackendState};
use crate::arch::x86_64::arch_memory_regions;
use crate::arch::x86_64::layout::{self, SERIAL_IRQ, SERIAL_PORT_BASE};
use crate::builder::{console_sink, host_memory_mib, BuildError, ConsoleConfig, MAX_VCPUS};
use crate::config::{DriveSection, EntropySection, MachineConfig, VmConfig, VsockSection};
use crate::device_manager::{DeviceManager, LegacyHandle, VirtioHandle};
use crate::devices::legacy::{BootMarker, SerialDevice, I8042, I8042_PORTS};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::rng::Entropy;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::stop::StopSignal;
use crate::vmm::Vmm;
use crate::vstate::memory::register_guest_memory;
use crate::vstate::vcpu::{Vcpu, VcpuState};
use crate::vstate::vm::{open_kvm, Vm};
use crate::EventManager;

/// Most virtio devices a state may describe.
const MAX_VIRTIO_DEVICES: usize = 19;

/// Errors restoring a snapshot. Each says which check refused the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The state file is unreadable, corrupt or of another version.
    #[error("cannot load the snapshot state file")]
    State(#[from] FormatError),
    /// The memory file does not fit the state.
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    /// Another CPU vendor or family.
    #[error("the snapshot was taken on a {saved_vendor} family {saved_family} CPU, this host has {host_vendor} family {host_family}: restore it on the same kind of CPU")]
    Cpu {
        /// Snapshot's vendor.
        saved_vendor: String,
        /// Snapshot's family.
        saved_family: u32,
        /// Host vendor.
        host_vendor: String,
        /// Host family.
        host_family: u32,
    },
    /// More vCPUs than KVM or husk allow, or a count that does not match.
    #[error("the snapshot has {count} vCPUs; this host allows 1 to {max}")]
    VcpuCount {
        /// Saved count.
        count: usize,
        /// What this host allows.
        max: usize,
    },
    /// A field that does not fit the rest of the state.
    #[error("invalid snapshot state: {0}")]
    Invalid(String),
    /// Building the VM failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A KVM or device step failed.
    #[error("cannot restore {0}")]
    Step(
        &'static str,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
}

fn step<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> RestoreError {
    move |e| RestoreError::Step(what, Box::new(e))
}

/// What restoring needs besides the two files.
#[derive(Debug, Clone)]
pub struct RestoreArgs {
    /// The state file.
    pub state_path: PathBuf,
    /// The memory file.
    pub mem_path: PathBuf,
    /// Listen for vsock connections here instead of the saved path (one path per
    /// restored sandbox, so clones coexist).
    pub vsock_override: Option<PathBuf>,
    /// Where guest console output goes.
    pub console: ConsoleConfig,
    /// Install seccomp filters on the vCPU threads.
    pub seccomp: bool,
}

/// Timings of a restore, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreReport {
    /// Reading and checking the state file.
    pub state_us: u64,
    /// The whole restore up to a paused VM.
    pub total_us: u64,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const AMD_VENDOR: &str = "AuthenticAMD";
/// TSS descriptor types: available and busy 64-bit TSS.
const TSS_AVAILABLE: u8 = 9;
const TSS_BUSY: u8 = 11;

/// `state` with TR's descriptor type as an AMD CPU holds it. On SVM hosts KVM reports TR
/// as busy (type 11) although the VMCB, which VMLOAD fills the CPU's TR cache from, holds
/// the type `ltr` loaded (9, available); written back unchanged, the restored vCPU's TR
/// cache differs from the one it had. Real AMD CPUs never look at the cached type in
/// 64-bit mode, but a CPU that checks it before consulting the TSS I/O bitmap (QEMU's
/// SVM emulation, the emulated test host) then faults every user-mode port access of
/// the restored guest (the agent's restore-generation read). Intel hosts are left alone:
/// VMX requires the busy type.
fn with_available_tr(vs: &VcpuState) -> VcpuState {
    let mut vs = vs.clone();
    if vs.sregs.tr.type_ == TSS_BUSY {
        vs.sregs.tr.type_ = TSS_AVAILABLE;
    }
    vs
}

/// Check the machine part of `state` against this host before anything is built.
fn validate(
    state: &MicrovmState,
    host: &CpuInfo,
    kvm_max_vcpus: usize,
) -> Result<(), RestoreError> {
    if state.cpu.vendor != host.vendor || state.cpu.family != host.family {
        return Err(RestoreError::Cpu {
            saved_vendor: state.cpu.vendor.clone(),
            saved_family: state.cpu.family,
            host_vendor: host.vendor.clone(),
            host_family: host.family,
        });
    }
    let max = kvm_max_vcpus.min(usize::from(MAX_VCPUS));
    let count = state.vcpus.len();
    if count == 0 || count > max {
        return Err(RestoreError::VcpuCount { count, max });
    }
    if usize::from(state.machine.vcpus) != count {
        return Err(RestoreError::Invalid(format!(
            "{} vCPU states for a {}-vCPU machine",
            count, state.machine.vcpus
        )));
    }
    let expected = GuestMemoryState {
        regions: {
            let mut offset = 0;
            arch_memory_regions(state.machine.mem_mib << 20)
                .into_iter()
                .map(|(a, len)| {
                    let r = memory::RegionState {
                        base: a.0,
                        size: len as u64,
                        offset,
                    };
                    offset += len as u64;
                    r
                })
                .collect()
        },
    };
    if state.memory != expected {
        return Err(RestoreError::Invalid(
            "the guest memory layout does not match the machine's memory size".into(),
        ));
    }
    if state.devices.virtio.len() > MAX_VIRTIO_DEVICES {
        return Err(RestoreError::Invalid("too many virtio devices".into()));
    }
    for d in &state.devices.virtio {
        if d.id.is_empty() || d.id.len() > 64 {
            return Err(RestoreError::Invalid(
                "a device id is empty or too long".into(),
            ));
        }
    }
    if let Some(root) = &state.config.root_drive {
        let is_drive = state
            .devices
            .virtio
            .iter()
            .any(|d| d.id == root.id && matches!(d.backend, VirtioBackendState::Block(_)));
        if !is_drive {
            return Err(RestoreError::Invalid(
                "the root drive is not one of the saved drives".into(),
            ));
        }
        if root.partuuid.as_ref().is_some_and(|p| {
            p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_graphic())
        }) {
            return Err(RestoreError::Invalid(
                "the root drive's partuuid is empty, too long or not printable".into(),
            ));
        }
    }
    Ok(())
}

/// The configuration of the machine `state` describes, as `GET /vm/config` shows it
/// after a load: vCPUs and memory, the vsock device on the socket it listens on now
/// (`vsock_override` or the saved path), entropy, and the drives in attach order. No
/// boot source: a restored VM boots no kernel.
pub fn restored_config(state: &MicrovmState, vsock_override: Option<&PathBuf>) -> VmConfig {
    let mut cfg = VmConfig {
        machine_config: Some(MachineConfig {
            vcpu_count: state.machine.vcpus,
            mem_size_mib: state.machine.mem_mib,
            ..MachineConfig::default()
        }),
        ..VmConfig::default()
    };
    let root = state.config.root_drive.as_ref();
    for d in &state.devices.virtio {
        match &d.backend {
            VirtioBackendState::Vsock(v) => {
                cfg.vsock = Some(VsockSection {
                    guest_cid: v.guest_cid,
                    uds_path: vsock_override.cloned().unwrap_or(v.uds_path.clone()),
                    vsock_id: None,
                })
            }
            VirtioBackendState::Entropy(_) => cfg.entropy = Some(EntropySection::default()),
            VirtioBackendState::Block(b) => {
                let is_root = root.is_some_and(|r| r.id == d.id);
                cfg.drives.push(DriveSection {
                    drive_id: d.id.clone(),
                    path_on_host: b.path.clone(),
                    is_root_device: is_root,
                    is_read_only: b.read_only,
                    partuuid: root.filter(|_| is_root).and_then(|r| r.partuuid.clone()),
                })
            }
        }
    }
    cfg
}

/// A restored, paused microVM with what the controller records about it.
pub struct RestoredMicrovm {
    /// The VM (paused).
    pub vmm: Vmm,
    /// Timings.
    pub report: RestoreReport,
    /// Its configuration, for `GET /vm/config` ([`restored_config`]).
    pub config: VmConfig,
}

/// Build a paused microVM from a snapshot. Devices are registered with `em`; the VM
/// stops through `stop`; the (already past) boot marker is wired to `ready_evt` as at
/// boot. The vsock device (if any) has queued its transport-reset event and raised
/// its interrupt before this returns, so the guest sees it before running anything.
pub fn build_microvm_from_snapshot(
    args: &RestoreArgs,
    em: &mut EventManager,
    stop: &StopSignal,
    ready_evt: &EventFd,
) -> Result<RestoredMicrovm, RestoreError> {
    let mut devices = DeviceManager::new();
    build_from_snapshot(args, em, stop, ready_evt, &mut devices).inspect_err(|_| {
        // A failed load leaves no device in the event loop (a retry can listen on the
        // same vsock path).
        devices.remove_subscribers(em);
    })
}

fn build_from_snapshot(
    args: &RestoreArgs,
    em: &mut EventManager,
    stop: &StopSignal,
    ready_evt: &EventFd,
    devices: &mut DeviceManager,
) -> Result<RestoredMicrovm, RestoreError> {
    let start = Instant::now();
    let state: MicrovmState = format::read_file(&args.state_path)?;
    let state_us = start.elapsed().as_micros() as u64;

    let kvm = open_kvm().map_err(BuildError::from)?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| BuildError::Kvm("report its supported CPUID", e))?;
    let host = CpuInfo::from_cpuid(supported.as_slice());
    validate(&state, &host, kvm.get_max_vcpus())?;
    let max_bytes = host_memory_mib().map_or(u64::MAX, |m| m << 20);
    let mem = memory::map(&state.memory, &args.mem_path, max_bytes)?;
    let msr_list = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();

    let vm = Vm::restore(kvm, &state.vm).map_err(step("the VM (irqchip, PIT, clock)"))?;
    // SAFETY: `mem` is moved into the returned Vmm, which drops `vm` and the vCPU
    // handles before `mem`, so the mappings outlive every user of the VM.
    unsafe { register_guest_memory(vm.fd(), &mem).map_err(BuildError::from)? };

    let clone_stop = || {
        stop.try_clone()
            .map_err(|e| BuildError::Io("clone the stop eventfd", e))
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| BuildError::Io("create the serial interrupt eventfd", e))?;
    let sink = console_sink(&args.console, clone_stop()?)?;
    let serial = <SerialDevice as Persist>::restore((irq, sink), &state.devices.serial)
        .map_err(step("the serial console"))?;
    vm.fd()
        .register_irqfd(serial.irq_evt(), SERIAL_IRQ)
        .map_err(|e| BuildError::Kvm("register the serial irqfd", e))?;
    devices
        .attach_pio(
            "serial",
            SERIAL_PORT_BASE,
            8,
            Some(SERIAL_IRQ),
            LegacyHandle::Serial(Arc::new(Mutex::new(serial))),
            None,
        )
        .map_err(BuildError::from)?;
    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| BuildError::Io("create the i8042 interrupt eventfd", e))?;
    vm.fd()
        .register_irqfd(&kbd_irq, layout::I8042_IRQ)
        .map_err(|e| BuildError::Kvm("register the i8042 irqfd", e))?;
    let i8042 = <I8042 as Persist>::restore((clone_stop()?, kbd_irq), &state.devices.i8042)
        .map_err(step("the i8042 controller"))?;
    devices
        .attach_pio(
            "i8042",
            layout::I8042_PORT_BASE,
            I8042_PORTS as u16,
            Some(layout::I8042_IRQ),
            LegacyHandle::I8042(Arc::new(Mutex::new(i8042))),
            None,
        )
        .map_err(BuildError::from)?;
    let marker = <BootMarker as Persist>::restore(clone_stop()?, &state.devices.boot_marker)
        .map_err(step("the boot marker"))?;
    let ready_at = marker.ready_at();
    let evt = ready_evt
        .try_clone()
        .map_err(|e| BuildError::Io("clone the ready eventfd", e))?;
    devices
        .attach_pio(
            "boot-marker",
            layout::BOOT_MARKER_PORT,
            1,
            None,
            LegacyHandle::BootMarker(Arc::new(Mutex::new(marker))),
            Some((ready_at.clone(), evt)),
        )
        .map_err(BuildError::from)?;

    let mut vsock_dev = None;
    let mut block_devs = Vec::new();
    for d in &state.devices.virtio {
        let dyn_dev: Arc<Mutex<dyn VirtioDevice>> = match &d.backend {
            VirtioBackendState::Vsock(s) => {
                let path = args.vsock_override.clone().unwrap_or(s.uds_path.clone());
                let dev = Arc::new(Mutex::new(
                    <Vsock as Persist>::restore(path, s).map_err(step("the vsock device"))?,
                ));
                devices
                    .attach_virtio(
                        vm.fd(),
                        &mem,
                        em,
                        &d.id,
                        dev.clone(),
                        VirtioHandle::Vsock(dev.clone()),
                    )
                    .map_err(BuildError::from)?;
                vsock_dev = Some(dev.clone());
                dev
            }
            VirtioBackendState::Entropy(s) => {
                let dev = Arc::new(Mutex::new(
                    <Entropy as Persist>::restore((), s).map_err(step("the entropy device"))?,
                ));
                devices
                    .attach_virtio(
                        vm.fd(),
                        &mem,
                        em,
                        &d.id,
                        dev.clone(),
                        VirtioHandle::Entropy(dev.clone()),
                    )
                    .map_err(BuildError::from)?;
                dev
            }
            VirtioBackendState::Block(s) => {
                // Same attach order as the boot, so the drive gets its saved MMIO
                // window and IRQ (the guest's driver already knows them).
                let dev = Arc::new(Mutex::new(
                    <Block as Persist>::restore(None, s).map_err(step("a drive"))?,
                ));
                devices
                    .attach_virtio(
                        vm.fd(),
                        &mem,
                        em,
                        &d.id,
                        dev.clone(),
                        VirtioHandle::Block(dev.clone()),
                    )
                    .map_err(BuildError::from)?;
                block_devs.push(dev.clone());
                dev
            }
        };
        let transport = MmioTransport::restore(mem.clone(), dyn_dev, &d.transport)
            .map_err(step("a virtio transport"))?;
        let Some(slot) = devices.mmio_devices().last() else {
            return Err(RestoreError::Invalid("virtio device not attached".into()));
        };
        *lock(&slot.transport) = transport;
    }

    let mut vcpus = Vec::with_capacity(state.vcpus.len());
    for (i, vs) in state.vcpus.iter().enumerate() {
        let mut vcpu = Vcpu::new(
            vm.fd(),
            i as u8,
            devices.io_bus().clone(),
            devices.mmio_bus().clone(),
            clone_stop()?,
        )
        .map_err(BuildError::from)?;
        vcpu.set_saveable_msrs(msr_list.clone());
        if host.vendor == AMD_VENDOR {
            vcpu.restore_state(&with_available_tr(vs))
        } else {
            vcpu.restore_state(vs)
        }
        .map_err(step("a vCPU"))?;
        vcpus.push(vcpu.start(args.seccomp).map_err(BuildError::from)?);
    }
    // Only now, with every LAPIC restored: an interrupt raised before the vCPUs exist
    // would be delivered to no LAPIC and lost (and the LAPIC restore would overwrite
    // its IRR anyway). The vCPUs are still paused, so the guest sees it first thing.
    if let Some(v) = vsock_dev {
        let mut v = lock(&v);
        if v.is_activated() {
            v.send_transport_reset()
                .map_err(step("the vsock transport reset event"))?;
        }
    }
    for b in &block_devs {
        lock(b)
            .kick_after_restore()
            .map_err(step("the drive interrupt"))?;
    }
    let report = RestoreReport {
        state_us,
        total_us: start.elapsed().as_micros() as u64,
    };
    log::info!(
        "snapshot restored (paused) in {} us (state file {} us)",
        report.total_us,
        report.state_us
    );
    let config = restored_config(&state, args.vsock_override.as_ref());
    Ok(RestoredMicrovm {
        vmm: Vmm::new(
            vcpus,
            clone_stop()?,
            ready_at,
            std::mem::take(devices),
            vm,
            mem,
        ),
        report,
        config,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::legacy::persist::SerialDeviceState;
    use crate::snapshot::{DevicesState, MachineState};
    use crate::vstate::vcpu::{FpuState, VcpuState};
    use crate::vstate::vm::VmState;

    pub(crate) fn blank_vcpu() -> VcpuState {
        VcpuState {
            regs: Default::default(),
            sregs: Default::default(),
            fpu: FpuState::from(&kvm_bindings::kvm_fpu::default()),
            lapic: Default::default(),
            events: Default::default(),
            mp_state: Default::default(),
            msrs: vec![],
            cpuid: vec![],
            xsave: Vec::new(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            tsc_khz: None,
        }
    }

    fn state(vcpus: usize, mem_mib: u64) -> MicrovmState {
        let layout = {
            let mem =
                crate::GuestMemoryMmap::from_ranges(&arch_memory_regions(mem_mib << 20)).unwrap();
            memory::layout(&mem)
        };
        MicrovmState {
            cpu: CpuInfo {
                vendor: "AuthenticAMD".into(),
                family: 0x19,
                model: 1,
            },
            machine: MachineState {
                vcpus: vcpus as u8,
                mem_mib,
            },
            memory: layout,
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: (0..vcpus).map(|_| blank_vcpu()).collect(),
            devices: DevicesState {
                serial: SerialDeviceState {
                    baud_divisor: [0; 2],
                    interrupt_enable: 0,
                    interrupt_identification: 1,
                    line_control: 3,
                    line_status: 0x60,
                    modem_control: 8,
                    modem_status: 0,
                    scratch: 0,
                    in_buffer: vec![],
                },
                i8042: crate::devices::legacy::I8042::new(StopSignal::new().unwrap()).save(),
                boot_marker: crate::devices::legacy::BootMarkerState { generation: 0 },
                virtio: vec![],
            },
            config: Default::default(),
        }
    }

    fn virtio(id: &str, backend: VirtioBackendState) -> crate::snapshot::VirtioDeviceState {
        crate::snapshot::VirtioDeviceState {
            id: id.into(),
            transport: crate::devices::virtio::mmio_persist::MmioTransportState {
                device_type: 0,
                status: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                interrupt_status: 0,
                config_generation: 0,
                queues: vec![],
            },
            backend,
        }
    }

    fn drive(id: &str, ro: bool) -> crate::snapshot::VirtioDeviceState {
        virtio(
            id,
            VirtioBackendState::Block(crate::devices::virtio::block::persist::BlockState {
                id: id.into(),
                path: format!("/img/{id}").into(),
                read_only: ro,
                capacity: 1 << 20,
                acked_features: 0,
            }),
        )
    }

    #[test]
    fn restored_config_describes_the_machine_and_refuses_a_bad_root() {
        use crate::devices::virtio::rng::persist::EntropyState;
        use crate::devices::virtio::vsock::persist::VsockState;
        use crate::snapshot::RootDriveState;
        let mut s = state(2, 64);
        s.devices.virtio = vec![
            virtio(
                "vsock",
                VirtioBackendState::Vsock(VsockState {
                    guest_cid: 7,
                    uds_path: "/saved.sock".into(),
                    acked_features: 0,
                }),
            ),
            virtio(
                "entropy",
                VirtioBackendState::Entropy(EntropyState { acked_features: 0 }),
            ),
            drive("rootfs", true),
            drive("data", false),
        ];
        s.config.root_drive = Some(RootDriveState {
            id: "rootfs".into(),
            partuuid: Some("0eaa91a0-01".into()),
        });
        let host = s.cpu.clone();
        validate(&s, &host, 8).unwrap();
        let c = restored_config(&s, Some(&PathBuf::from("/clone.sock")));
        let m = c.machine_config.clone().unwrap();
        assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 64));
        let v = c.vsock.clone().unwrap();
        assert_eq!((v.guest_cid, v.uds_path), (7, PathBuf::from("/clone.sock")));
        assert!(c.entropy.is_some() && c.boot_source.is_none());
        let drives: Vec<_> = c
            .drives
            .iter()
            .map(|d| {
                (
                    d.drive_id.as_str(),
                    d.path_on_host.to_str().unwrap(),
                    d.is_root_device,
                    d.is_read_only,
                    d.partuuid.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            drives,
            [
                ("rootfs", "/img/rootfs", true, true, Some("0eaa91a0-01")),
                ("data", "/img/data", false, false, None)
            ]
        );
        c.validate().unwrap();
        // Without an override the saved socket path is shown.
        let c = restored_config(&s, None);
        assert_eq!(c.vsock.unwrap().uds_path, PathBuf::from("/saved.sock"));

        for (root, partuuid) in [("vsock", None), ("nope", None), ("rootfs", Some("a b"))] {
            let mut bad = s.clone();
            bad.config.root_drive = Some(RootDriveState {
                id: root.into(),
                partuuid: partuuid.map(String::from),
            });
            assert!(
                matches!(validate(&bad, &host, 8), Err(RestoreError::Invalid(_))),
                "{root} {partuuid:?}"
            );
        }
    }

    #[test]
    fn amd_restores_tr_as_available_and_keeps_everything_else() {
        let mut vs = blank_vcpu();
        vs.sregs.tr.type_ = TSS_BUSY;
        vs.sregs.tr.limit = 0x4087;
        vs.regs.rip = 0x1234;
        let fixed = with_available_tr(&vs);
        assert_eq!(fixed.sregs.tr.type_, TSS_AVAILABLE);
        assert_eq!((fixed.sregs.tr.limit, fixed.regs.rip), (0x4087, 0x1234));
        // Any other type (a state from before the guest loaded its TR) is kept.
        vs.sregs.tr.type_ = 3;
        assert_eq!(with_available_tr(&vs).sregs.tr.type_, 3);
    }

    #[test]
    fn refusals_say_which_check_failed() {
        let host = CpuInfo {
            vendor: "AuthenticAMD".into(),
            family: 0x19,
            model: 7,
        };
        validate(&state(2, 64), &host, 8).unwrap();

        let other = CpuInfo {
            vendor: "GenuineIntel".into(),
            family: 6,
            model: 0x55,
        };
        let e = validate(&state(1, 64), &other, 8).unwrap_err();
        assert!(matches!(e, RestoreError::Cpu { .. }));
        assert!(e.to_string().contains("GenuineIntel"), "{e}");

        let e = validate(&state(4, 64), &host, 2).unwrap_err();
        assert!(
            matches!(e, RestoreError::VcpuCount { count: 4, max: 2 }),
            "{e}"
        );
        let e = validate(&state(0, 64), &host, 8).unwrap_err();
        assert!(matches!(e, RestoreError::VcpuCount { count: 0, .. }), "{e}");

        let mut s = state(1, 64);
        s.machine.mem_mib = 128;
        assert!(matches!(
            validate(&s, &host, 8),
            Err(RestoreError::Invalid(_))
        ));
        let mut s = state(2, 64);
        s.machine.vcpus = 1;
        assert!(matches!(
            validate(&s, &host, 8),
            Err(RestoreError::Invalid(_))
        ));
    }
}
