//! Building a microVM for boot: validated [`VmResources`] → a paused [`Vmm`].

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::bootparams::{
    build_boot_params, initrd_address, write_boot_params, BootParamsError, InitrdPlacement,
};
use crate::arch::x86_64::layout::{
    self, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, SERIAL_IRQ, SERIAL_PORT_BASE,
};
use crate::arch::x86_64::mptable::{setup_mptable, MptableError};
use crate::arch::x86_64::regs::{write_boot_tables, RegsError};
use vmm_sys_util::eventfd::EventFd;

use crate::device_manager::{DeviceManager, DeviceManagerError, LegacyHandle, VirtioHandle};
use crate::devices::legacy::{BootMarker, ConsoleSink, SerialDevice, I8042, I8042_PORTS};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::rng::Entropy;
use crate::devices::virtio::vsock::Vsock;
use crate::stop::StopSignal;
use crate::vmm::Vmm;
use crate::vstate::memory::{create_guest_memory, register_guest_memory, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{host_kvm_is_pvm, open_kvm, Vm, VmError};
use crate::{EventManager, GuestMemoryMmap};

/// The default guest command line. `reboot=k` makes `reboot` go through the i8042
/// reset (→ exit status 0); `panic=0` keeps a panicked kernel from rebooting so the
/// VMM can report the panic (→ exit status 3).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=0 pci=off nomodule \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet";

/// Most vCPUs husk supports.
pub const MAX_VCPUS: u8 = 32;
/// Least guest memory husk accepts, in MiB.
pub const MIN_MEM_MIB: u64 = 32;
/// Most guest console bytes written to the sink (further output is dropped).
pub const DEFAULT_CONSOLE_LIMIT: u64 = 64 << 20;

/// Where the guest console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleConfig {
    /// The VMM's stdout (the default, as with Firecracker).
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Discarded (the panic scanner still runs).
    Null,
}

/// The vsock device configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID (>= 3).
    pub guest_cid: u64,
    /// The host Unix socket path.
    pub uds_path: PathBuf,
}

/// One virtio-blk drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// Drive id (also the disk serial the guest reads).
    pub id: String,
    /// Raw image file.
    pub path: PathBuf,
    /// The root device: attached first (`/dev/vda`), named in `root=` on the command line.
    pub root: bool,
    /// Open the image read-only.
    pub read_only: bool,
    /// `root=PARTUUID=<partuuid>` instead of `root=/dev/vda`.
    pub partuuid: Option<String>,
}

/// Everything needed to build a VM for boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmResources {
    /// Number of vCPUs, 1..=32.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Guest kernel (ELF vmlinux, or bzImage).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `None` means [`DEFAULT_CMDLINE`].
    pub cmdline: Option<String>,
    /// virtio-vsock.
    pub vsock: Option<VsockConfig>,
    /// virtio-rng.
    pub entropy: bool,
    /// virtio-blk drives (the root device, if any, is attached first).
    pub drives: Vec<DriveConfig>,
    /// Guest console sink.
    pub console: ConsoleConfig,
    /// Print the boot-ready line to stderr.
    pub boot_timer: bool,
    /// Install the seccomp filters (vCPU threads here; the caller installs the VMM
    /// thread's after the build). Off only with `--no-seccomp`, for debugging.
    pub seccomp: bool,
}

impl VmResources {
    /// Resources with defaults (1 vCPU, 128 MiB, console on stdout) for `kernel`.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            vcpus: 1,
            mem_mib: 128,
            kernel,
            initrd: None,
            cmdline: None,
            vsock: None,
            entropy: false,
            drives: Vec::new(),
            console: ConsoleConfig::Stdout,
            boot_timer: false,
            seccomp: true,
        }
    }

    /// Check the resources; every error says what to change.
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(BuildError::VcpuCount(self.vcpus));
        }
        if self.mem_mib < MIN_MEM_MIB {
            return Err(BuildError::MemoryTooSmall(self.mem_mib));
        }
        if let Some(total) = host_memory_mib() {
            if self.mem_mib > total {
                return Err(BuildError::MemoryTooLarge {
                    mib: self.mem_mib,
                    host_mib: total,
                });
            }
        }
        check_file("kernel image", &self.kernel)?;
        if let Some(i) = &self.initrd {
            check_file("initrd", i)?;
        }
        for d in &self.drives {
            check_file("drive image", &d.path)?;
        }
        if self.drives.iter().filter(|d| d.root).count() > 1 {
            return Err(BuildError::Device(
                "block",
                "more than one root drive: a VM has one root device".into(),
            ));
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 || v.guest_cid > u64::from(u32::MAX - 1) {
                return Err(BuildError::VsockCid(v.guest_cid));
            }
        }
        Ok(())
    }
}

fn check_file(what: &'static str, path: &std::path::Path) -> Result<(), BuildError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(BuildError::NotAFile(what, path.to_path_buf())),
        Err(e) => Err(BuildError::FileAccess(what, path.to_path_buf(), e)),
    }
}

/// The host's total RAM in MiB (from /proc/meminfo), if readable.
pub(crate) fn host_memory_mib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Errors building a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Bad vCPU count.
    #[error("vcpu count {0} is out of range: use 1 to {MAX_VCPUS}")]
    VcpuCount(u8),
    /// Too little memory.
    #[error("guest memory of {0} MiB is too small: use at least {MIN_MEM_MIB} MiB")]
    MemoryTooSmall(u64),
    /// More memory than the host has.
    #[error("guest memory of {mib} MiB does not fit: the host has {host_mib} MiB in total")]
    MemoryTooLarge {
        /// Requested.
        mib: u64,
        /// Host total.
        host_mib: u64,
    },
    /// A file cannot be accessed.
    #[error("cannot access the {0} {1}")]
    FileAccess(&'static str, PathBuf, #[source] std::io::Error),
    /// A path is not a regular file.
    #[error("the {0} {1} is not a regular file")]
    NotAFile(&'static str, PathBuf),
    /// Bad vsock CID.
    #[error("vsock guest CID {0} is invalid: use a value from 3 to 4294967294")]
    VsockCid(u64),
    /// KVM setup.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel loading.
    #[error("cannot load the kernel {0}: it must be an x86_64 ELF vmlinux or a bzImage ({1:?})")]
    Kernel(PathBuf, linux_loader::loader::Error),
    /// Initrd loading.
    #[error("cannot read the initrd {0}")]
    Initrd(PathBuf, #[source] std::io::Error),
    /// Initrd placement.
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    /// The command line is invalid or too long.
    #[error(
        "invalid kernel command line (at most {CMDLINE_MAX_SIZE} bytes, printable ASCII): {0}"
    )]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing the command line failed.
    #[error("cannot write the kernel command line into guest memory: {0:?}")]
    CmdlineWrite(linux_loader::loader::Error),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// Boot page tables/GDT.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Device wiring.
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    /// An eventfd or other OS resource.
    #[error("cannot {0}")]
    Io(&'static str, #[source] std::io::Error),
    /// KVM device wiring (irqfd/ioeventfd).
    #[error("KVM refused to {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// A virtio device failed to start.
    #[error("cannot create the {0} device: {1}")]
    Device(&'static str, String),
}

/// The loaded kernel: entry point, end, and the bzImage setup header if any.
struct LoadedKernel {
    entry: u64,
    end: u64,
    header: Option<setup_header>,
}

fn load_kernel(mem: &GuestMemoryMmap, path: &PathBuf) -> Result<LoadedKernel, BuildError> {
    let mut f =
        File::open(path).map_err(|e| BuildError::FileAccess("kernel image", path.clone(), e))?;
    let high = Some(GuestAddress(HIMEM_START));
    let elf: Result<KernelLoaderResult, _> = Elf::load(mem, None, &mut f, high);
    match elf {
        Ok(r) => Ok(LoadedKernel {
            entry: r.kernel_load.0,
            end: r.kernel_end,
            header: None,
        }),
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => {
            let r = BzImage::load(mem, None, &mut f, high)
                .map_err(|e| BuildError::Kernel(path.clone(), e))?;
            // The 64-bit entry point of a bzImage is 0x200 past the protected-mode code.
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + 0x200,
                end: r.kernel_end,
                header: r.setup_header,
            })
        }
        Err(e) => Err(BuildError::Kernel(path.clone(), e)),
    }
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &PathBuf,
    mem_size: u64,
    kernel_end: u64,
) -> Result<InitrdPlacement, BuildError> {
    let mut f = File::open(path).map_err(|e| BuildError::Initrd(path.clone(), e))?;
    let size = f
        .metadata()
        .map_err(|e| BuildError::Initrd(path.clone(), e))?
        .len();
    let address = initrd_address(mem_size, kernel_end, size)?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut f, size as usize)
        .map_err(|e| BuildError::Initrd(path.clone(), std::io::Error::other(e.to_string())))?;
    Ok(InitrdPlacement { address, size })
}

pub(crate) fn console_sink(
    cfg: &ConsoleConfig,
    stop: StopSignal,
) -> Result<ConsoleSink, BuildError> {
    let out: Box<dyn std::io::Write + Send> = match cfg {
        ConsoleConfig::Stdout => Box::new(std::io::stdout()),
        ConsoleConfig::File(p) => {
            Box::new(std::io::LineWriter::new(File::create(p).map_err(|e| {
                BuildError::FileAccess("console file", p.clone(), e)
            })?))
        }
        ConsoleConfig::Null => Box::new(std::io::sink()),
    };
    Ok(ConsoleSink::new(out, DEFAULT_CONSOLE_LIMIT, Some(stop)))
}

/// The legacy devices on the port-I/O bus: UART (irqfd on GSI 4), i8042 (irqfd on GSI 1),
/// marker (whose
/// first ready write wakes the controller through `ready_evt`).
fn attach_legacy_devices(
    vm: &VmFd,
    devices: &mut DeviceManager,
    res: &VmResources,
    stop: &StopSignal,
    ready_evt: &EventFd,
) -> Result<Arc<std::sync::atomic::AtomicU64>, BuildError> {
    let clone_stop = || {
        stop.try_clone()
            .map_err(|e| BuildError::Io("clone the stop eventfd", e))
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| BuildError::Io("create the serial interrupt eventfd", e))?;
    let sink = console_sink(&res.console, clone_stop()?)?;
    let serial = SerialDevice::new(irq, sink);
    vm.register_irqfd(serial.irq_evt(), SERIAL_IRQ)
        .map_err(|e| BuildError::Kvm("register the serial irqfd", e))?;
    devices.attach_pio(
        "serial",
        SERIAL_PORT_BASE,
        8,
        Some(SERIAL_IRQ),
        LegacyHandle::Serial(Arc::new(Mutex::new(serial))),
        None,
    )?;
    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| BuildError::Io("create the i8042 interrupt eventfd", e))?;
    vm.register_irqfd(&kbd_irq, layout::I8042_IRQ)
        .map_err(|e| BuildError::Kvm("register the i8042 irqfd", e))?;
    devices.attach_pio(
        "i8042",
        layout::I8042_PORT_BASE,
        I8042_PORTS as u16,
        Some(layout::I8042_IRQ),
        LegacyHandle::I8042(Arc::new(Mutex::new(
            I8042::new(clone_stop()?).with_interrupt(kbd_irq),
        ))),
        None,
    )?;
    let marker = BootMarker::new(res.boot_timer).with_fatal_stop(
        stop.try_clone()
            .map_err(|e| BuildError::Io("clone the stop eventfd", e))?,
    );
    let ready = marker.ready_at();
    let evt = ready_evt
        .try_clone()
        .map_err(|e| BuildError::Io("clone the ready eventfd", e))?;
    devices.attach_pio(
        "boot-marker",
        layout::BOOT_MARKER_PORT,
        1,
        None,
        LegacyHandle::BootMarker(Arc::new(Mutex::new(marker))),
        Some((ready.clone(), evt)),
    )?;
    Ok(ready)
}

fn attach_virtio_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    devices: &mut DeviceManager,
    em: &mut EventManager,
    res: &VmResources,
) -> Result<(), BuildError> {
    // Fixed order: vsock first (window 0, IRQ 5), then entropy.
    if let Some(v) = &res.vsock {
        let dev = Arc::new(Mutex::new(
            Vsock::new(v.guest_cid, v.uds_path.clone())
                .map_err(|e| BuildError::Device("vsock", e.to_string()))?,
        ));
        devices.attach_virtio(vm, mem, em, "vsock", dev.clone(), VirtioHandle::Vsock(dev))?;
    }
    if res.entropy {
        let dev = Arc::new(Mutex::new(
            Entropy::new().map_err(|e| BuildError::Device("entropy", e.to_string()))?,
        ));
        devices.attach_virtio(
            vm,
            mem,
            em,
            "entropy",
            dev.clone(),
            VirtioHandle::Entropy(dev),
        )?;
    }
    // Drives after them (existing device addresses stay put), the root device first so
    // the guest names it /dev/vda.
    for d in ordered_drives(&res.drives) {
        let dev = Arc::new(Mutex::new(
            Block::new(&d.id, &d.path, d.read_only)
                .map_err(|e| BuildError::Device("block", crate::controller::error_chain(&e)))?,
        ));
        devices.attach_virtio(vm, mem, em, &d.id, dev.clone(), VirtioHandle::Block(dev))?;
    }
    Ok(())
}

/// The drives in attach order: the root device first, the others as configured.
pub fn ordered_drives(drives: &[DriveConfig]) -> impl Iterator<Item = &DriveConfig> {
    drives
        .iter()
        .filter(|d| d.root)
        .chain(drives.iter().filter(|d| !d.root))
}

/// Firecracker's root device arguments: `root=/dev/vda ro|rw` (or
/// `root=PARTUUID=<id>`), or nothing without a root drive.
pub fn root_device_args(drives: &[DriveConfig]) -> Option<String> {
    let d = drives.iter().find(|d| d.root)?;
    let dev = match &d.partuuid {
        Some(p) => format!("PARTUUID={p}"),
        None => "/dev/vda".to_string(),
    };
    Some(format!(
        "root={dev} {}",
        if d.read_only { "ro" } else { "rw" }
    ))
}

fn build_cmdline(res: &VmResources, virtio_entries: &[String]) -> Result<Cmdline, BuildError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    cmdline
        .insert_str(res.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE))
        .map_err(BuildError::Cmdline)?;
    if let Some(root) = root_device_args(&res.drives) {
        cmdline.insert_str(root).map_err(BuildError::Cmdline)?;
    }
    for e in virtio_entries {
        cmdline.insert_str(e).map_err(BuildError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Build a VM ready to boot, with its vCPUs created, configured and **paused**.
/// Devices are registered with `em`; devices and vCPUs stop the VM through `stop`, and
/// the boot marker's first ready write is signalled on `ready_evt`. The controller
/// runs the VM ([`crate::controller::Controller`]).
pub fn build_microvm_for_boot(
    res: &VmResources,
    em: &mut EventManager,
    stop: &StopSignal,
    ready_evt: &EventFd,
) -> Result<Vmm, BuildError> {
    let mut devices = DeviceManager::new();
    build_for_boot(res, em, stop, ready_evt, &mut devices).inspect_err(|_| {
        // Nothing of a failed build stays behind: the devices leave the event loop
        // and are dropped (closing their sockets), so a corrected retry can build.
        devices.remove_subscribers(em);
    })
}

fn build_for_boot(
    res: &VmResources,
    em: &mut EventManager,
    stop: &StopSignal,
    ready_evt: &EventFd,
    devices: &mut DeviceManager,
) -> Result<Vmm, BuildError> {
    res.validate()?;
    let kvm = open_kvm()?;
    if host_kvm_is_pvm() {
        log::warn!(
            "the local KVM is PVM-backed (no hardware virtualization): unless the guest kernel \
             is PVM-aware, the guest will run emulated at ~1 MIPS"
        );
    }
    let mem_size = res.mem_mib << 20;
    let mem = create_guest_memory(res.mem_mib)?;
    let vm = Vm::new(&kvm)?;
    // SAFETY: `mem` is moved into the returned Vmm, which declares `vm` (and the vCPU
    // handles, which join their threads on drop) before `mem`, so the mappings outlive
    // every user of the VM.
    unsafe { register_guest_memory(vm.fd(), &mem)? };

    let kernel = load_kernel(&mem, &res.kernel)?;
    log::debug!("kernel loaded");
    let initrd = match &res.initrd {
        Some(p) => Some(load_initrd(&mem, p, mem_size, kernel.end)?),
        None => None,
    };

    let ready_at = attach_legacy_devices(vm.fd(), devices, res, stop, ready_evt)?;
    attach_virtio_devices(vm.fd(), &mem, devices, em, res)?;

    let cmdline = build_cmdline(res, devices.cmdline_entries())?;
    load_cmdline(&mem, GuestAddress(CMDLINE_START), &cmdline).map_err(BuildError::CmdlineWrite)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    let mut params = build_boot_params(mem_size, cmdline_len + 1, initrd);
    if let Some(hdr) = kernel.header {
        // bzImage: start from the image's own setup header, then set ours on top.
        let ours = params.hdr;
        params.hdr = hdr;
        params.hdr.type_of_loader = ours.type_of_loader;
        params.hdr.cmd_line_ptr = ours.cmd_line_ptr;
        params.hdr.cmdline_size = ours.cmdline_size;
        params.hdr.ramdisk_image = ours.ramdisk_image;
        params.hdr.ramdisk_size = ours.ramdisk_size;
    }
    write_boot_params(&mem, &params)?;
    setup_mptable(&mem, res.vcpus)?;
    write_boot_tables(&mem)?;
    log::debug!(
        "kernel entry {:#x}, end {:#x}, cmdline {:?}",
        kernel.entry,
        kernel.end,
        cmdline.as_cstring().ok()
    );

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| BuildError::Kvm("report its supported CPUID", e))?;
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    // The MSRs a snapshot saves (read now: the vCPU threads cannot open /dev/kvm).
    let msr_list = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    let mut vcpus = Vec::with_capacity(usize::from(res.vcpus));
    for i in 0..res.vcpus {
        let mut vcpu = Vcpu::new(
            vm.fd(),
            i,
            devices.io_bus().clone(),
            devices.mmio_bus().clone(),
            stop.try_clone()
                .map_err(|e| BuildError::Io("clone the stop eventfd", e))?,
        )?;
        vcpu.configure(
            &supported,
            res.vcpus,
            tsc_deadline,
            (i == 0).then_some(kernel.entry),
        )?;
        vcpu.set_saveable_msrs(msr_list.clone());
        vcpus.push(vcpu.start(res.seccomp)?);
    }

    log::debug!("microVM built: {} vCPUs paused", res.vcpus);
    let stop = stop
        .try_clone()
        .map_err(|e| BuildError::Io("clone the stop eventfd", e))?;
    Ok(Vmm::new(
        vcpus,
        stop,
        ready_at,
        std::mem::take(devices),
        vm,
        mem,
    ))
}

/// Write `bytes` at `addr` (helper for tests that build guests by hand).
pub fn write_guest(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> bool {
    mem.write_slice(bytes, GuestAddress(addr)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_drive_goes_first_and_on_the_command_line() {
        let d = |id: &str, root: bool, ro: bool, partuuid: Option<&str>| DriveConfig {
            id: id.into(),
            path: PathBuf::from(id),
            root,
            read_only: ro,
            partuuid: partuuid.map(String::from),
        };
        let drives = vec![
            d("a", false, false, None),
            d("root", true, true, None),
            d("b", false, true, None),
        ];
        let order: Vec<&str> = ordered_drives(&drives).map(|x| x.id.as_str()).collect();
        assert_eq!(order, ["root", "a", "b"]);
        assert_eq!(
            root_device_args(&drives).as_deref(),
            Some("root=/dev/vda ro")
        );
        assert_eq!(
            root_device_args(&[d("r", true, false, Some("0eaa91a0-01"))]).as_deref(),
            Some("root=PARTUUID=0eaa91a0-01 rw")
        );
        assert_eq!(root_device_args(&drives[..1]), None);
        let mut res = VmResources::new(PathBuf::from("k"));
        res.drives = drives;
        let c = build_cmdline(&res, &["virtio_mmio.device=4K@0xd0000000:5".into()]).unwrap();
        let text = c.as_cstring().unwrap().into_string().unwrap();
        assert!(
            text.contains("quiet root=/dev/vda ro virtio_mmio.device="),
            "{text}"
        );
    }

    #[test]
    fn validation_errors_say_what_to_fix() {
        let mut r = VmResources::new(PathBuf::from("/nonexistent/vmlinux"));
        assert!(matches!(
            r.validate(),
            Err(BuildError::FileAccess("kernel image", _, _))
        ));
        r.kernel = PathBuf::from("/proc/self/exe");
        r.kernel = std::env::current_exe().unwrap();
        r.validate().unwrap();
        r.vcpus = 0;
        assert!(matches!(r.validate(), Err(BuildError::VcpuCount(0))));
        r.vcpus = 33;
        assert!(matches!(r.validate(), Err(BuildError::VcpuCount(33))));
        r.vcpus = 2;
        r.mem_mib = 8;
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least 32 MiB"));
        r.mem_mib = 1 << 30;
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not fit"));
        r.mem_mib = 64;
        r.initrd = Some(PathBuf::from("/tmp"));
        assert!(matches!(
            r.validate(),
            Err(BuildError::NotAFile("initrd", _))
        ));
        r.initrd = None;
        r.vsock = Some(VsockConfig {
            guest_cid: 2,
            uds_path: "/tmp/v.sock".into(),
        });
        assert!(matches!(r.validate(), Err(BuildError::VsockCid(2))));
    }

    #[test]
    fn cmdline_gets_virtio_entries() {
        let r = VmResources::new(PathBuf::from("k"));
        let a = vec!["virtio_mmio.device=4K@0xd0000000:5".to_string()];
        let c = build_cmdline(&r, &a).unwrap();
        let s = c.as_cstring().unwrap().into_string().unwrap();
        assert!(s.starts_with("console=ttyS0 reboot=k panic=0"));
        assert!(s.ends_with(" virtio_mmio.device=4K@0xd0000000:5"));
        let long = VmResources {
            cmdline: Some("x".repeat(3000)),
            ..r
        };
        assert!(matches!(
            build_cmdline(&long, &a),
            Err(BuildError::Cmdline(_))
        ));
    }

    /// A minimal virtio device with two queues, for the attach test.
    struct AttachTestDevice {
        evts: Vec<vmm_sys_util::eventfd::EventFd>,
        irq: crate::devices::virtio::IrqTrigger,
    }

    impl AttachTestDevice {
        fn new() -> Self {
            Self {
                evts: (0..2)
                    .map(|_| vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap())
                    .collect(),
                irq: crate::devices::virtio::IrqTrigger::new().unwrap(),
            }
        }
    }

    impl crate::devices::virtio::VirtioDevice for AttachTestDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn avail_features(&self) -> u64 {
            1 << 32
        }
        fn acked_features(&self) -> u64 {
            0
        }
        fn set_acked_features(&mut self, _features: u64) {}
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn queue_events(&self) -> &[vmm_sys_util::eventfd::EventFd] {
            &self.evts
        }
        fn interrupt(&self) -> &crate::devices::virtio::IrqTrigger {
            &self.irq
        }
        fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            _queues: Vec<virtio_queue::Queue>,
        ) -> Result<(), crate::devices::virtio::ActivateError> {
            Ok(())
        }
        fn is_activated(&self) -> bool {
            false
        }
    }

    impl event_manager::MutEventSubscriber for AttachTestDevice {
        fn process(&mut self, _events: event_manager::Events, _ops: &mut event_manager::EventOps) {}
        fn init(&mut self, _ops: &mut event_manager::EventOps) {}
    }

    #[test]
    fn attach_wires_windows_irqs_ioeventfds_and_cmdline() {
        use crate::device_manager::MMIO_QUEUE_NOTIFY;
        use crate::devices::virtio::VirtioDevice;
        use kvm_ioctls::IoEventAddress;
        let kvm = open_kvm().unwrap();
        let vm = Vm::new(&kvm).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut em = EventManager::new().unwrap();
        let mut dm = DeviceManager::new();
        let mut devices = Vec::new();
        for i in 0..19u64 {
            let dev = Arc::new(Mutex::new(AttachTestDevice::new()));
            let (base, irq) = dm
                .attach_virtio(
                    vm.fd(),
                    &mem,
                    &mut em,
                    &format!("dev{i}"),
                    dev.clone(),
                    VirtioHandle::Other(dev.clone()),
                )
                .unwrap();
            assert_eq!((base, irq), (0xd000_0000 + i * 0x1000, 5 + i as u32));
            devices.push(dev);
        }
        // The transport answers at its window: magic "virt" and the device type.
        let mut magic = [0u8; 4];
        assert!(dm.mmio_bus().read(0xd000_2000, &mut magic));
        assert_eq!(u32::from_le_bytes(magic), 0x7472_6976);
        let mut ty = [0u8; 4];
        assert!(dm.mmio_bus().read(0xd000_2008, &mut ty));
        assert_eq!(u32::from_le_bytes(ty), 42);
        // The typed handle records window, IRQ and counts the accesses.
        let h = &dm.mmio_devices()[2];
        assert_eq!(
            (h.id.as_str(), h.base, h.irq, h.len),
            ("dev2", 0xd000_2000, 7, 0x1000)
        );
        assert_eq!(dm.take_metrics()[2].reads, 2);
        // Each queue eventfd is already an ioeventfd on QueueNotify: registering it
        // again is refused by KVM.
        let d = devices[1].lock().unwrap();
        assert!(vm
            .fd()
            .register_ioevent(
                &d.queue_events()[1],
                &IoEventAddress::Mmio(0xd000_1000 + MMIO_QUEUE_NOTIFY),
                1u32
            )
            .is_err());
        drop(d);
        assert_eq!(
            dm.cmdline_entries()[18],
            "virtio_mmio.device=4K@0xd0012000:23"
        );
        // No window left after IRQ 23.
        let dev = Arc::new(Mutex::new(AttachTestDevice::new()));
        assert!(matches!(
            dm.attach_virtio(
                vm.fd(),
                &mem,
                &mut em,
                "x",
                dev.clone(),
                VirtioHandle::Other(dev)
            ),
            Err(DeviceManagerError::TooManyDevices)
        ));
    }
}
