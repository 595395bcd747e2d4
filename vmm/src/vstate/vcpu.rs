//! vCPUs: configuration for boot, one thread each, driven through a [`VcpuHandle`].
//!
//! Each vCPU thread is a visible state machine:
//!
//! ```text
//!            Resume                 Pause (+kick)
//!  Paused ─────────▶ Running ─────────────────────▶ Paused
//!    │                  │ guest reset / error: StopSignal, then Exited
//!    └──── Exit ───────▶ Exited ◀──── Exit (+kick)
//! ```
//!
//! Commands go over a channel; a kick (signal [`kick_signal`] with a no-op handler
//! that also sets `kvm_run.immediate_exit`) makes a running `KVM_RUN` return so the
//! thread sees the command. Exit handling is the plain function [`handle_exit`].

use std::cell::Cell;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Once;
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave,
};
use kvm_ioctls::{Cap, VcpuExit, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::signal::{register_signal_handler, Killable};

use crate::arch::x86_64::cpuid::{filter_cpuid, CpuidConfig};
use crate::arch::x86_64::msr::{boot_msr_entries, setup_msrs, MsrError};
use crate::arch::x86_64::regs::{setup_boot_vcpu, RegsError};
use crate::arch::x86_64::xsave_probe::host_xsave_problem;
use crate::devices::Bus;
use crate::logger::RateLimit;
use crate::stop::{StopReason, StopSignal};

/// Errors creating, configuring or driving a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("KVM cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// A KVM vCPU ioctl failed.
    #[error("KVM failed to {0}")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    /// Register setup failed.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// MSR setup failed.
    #[error(transparent)]
    Msr(#[from] MsrError),
    /// The vCPU thread could not be spawned with its seccomp filter.
    #[error("cannot start the vCPU thread")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// A saved vCPU state is malformed.
    #[error("invalid saved vCPU state: {0}")]
    BadState(&'static str),
    /// The vCPU thread did not answer in time or is gone.
    #[error("vCPU {0} did not respond to {1}")]
    NoResponse(u8, &'static str),
    /// A state save was asked of a running vCPU.
    #[error("vCPU {0} is running: pause it before saving its state")]
    NotPaused(u8),
    /// The vCPU thread could not save its state (the cause keeps the KVM error).
    #[error("cannot save the state of vCPU {0}")]
    SaveState(u8, #[source] Box<VcpuError>),
}

/// What the vCPU loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Keep running the guest.
    Continue,
    /// Stop the VM for this reason.
    Stop(StopReason),
}

static UNOWNED_IO: RateLimit = RateLimit::new(20, 1000);
static UNOWNED_MMIO: RateLimit = RateLimit::new(20, 1000);
static ODD_EXIT: RateLimit = RateLimit::new(10, 1000);

/// Ports Linux pokes that have no device behind them on purpose: 0x80 (I/O delay),
/// 0x61 (speaker/NMI status), 0x70/0x71 (CMOS RTC), 0x87 (DMA page), 0xed (delay),
/// the other legacy UARTs, PCI config (0xcf8..0xcff), and 0x92 (fast A20).
fn is_quiet_port(port: u16) -> bool {
    matches!(
        port,
        0x61 | 0x70 | 0x71 | 0x80 | 0x87 | 0x92 | 0xed | 0xcf8..=0xcff
    ) || matches!(port, 0x2f8..=0x2ff | 0x3e8..=0x3ef | 0x2e8..=0x2ef)
}

/// Handle one vCPU exit against the port-I/O and MMIO buses. Unowned reads return
/// all ones, as on a real machine with nothing on the bus.
pub fn handle_exit(io_bus: &Bus, mmio_bus: &Bus, exit: VcpuExit<'_>) -> ExitAction {
    crate::metrics::record_exit(&exit);
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !io_bus.read(u64::from(port), data) {
                data.fill(0xff);
                if !is_quiet_port(port) {
                    crate::log_limited!(UNOWNED_IO, debug, "guest read unowned port {port:#x}");
                }
            }
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !io_bus.write(u64::from(port), data) && !is_quiet_port(port) {
                crate::log_limited!(UNOWNED_IO, debug, "guest wrote unowned port {port:#x}");
            }
            ExitAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio_bus.read(addr, data) {
                data.fill(0xff);
                crate::log_limited!(UNOWNED_MMIO, debug, "guest read unowned MMIO {addr:#x}");
            }
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio_bus.write(addr, data) {
                crate::log_limited!(UNOWNED_MMIO, debug, "guest wrote unowned MMIO {addr:#x}");
            }
            ExitAction::Continue
        }
        VcpuExit::Shutdown => ExitAction::Stop(StopReason::Reset),
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                ExitAction::Stop(StopReason::Reset)
            }
            kvm_bindings::KVM_SYSTEM_EVENT_CRASH => ExitAction::Stop(StopReason::GuestPanic),
            other => {
                crate::log_limited!(ODD_EXIT, warn, "ignoring KVM system event {other}");
                ExitAction::Continue
            }
        },
        VcpuExit::FailEntry(reason, cpu) => ExitAction::Stop(StopReason::Error(format!(
            "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x} on host CPU {cpu})"
        ))),
        VcpuExit::InternalError => ExitAction::Stop(StopReason::Error(
            "KVM internal error while running the guest (KVM_EXIT_INTERNAL_ERROR)".into(),
        )),
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen | VcpuExit::IoapicEoi(_) => {
            ExitAction::Continue
        }
        // Exits husk never enables (hypercall, debug, MSR, memory fault, ...): stop
        // rather than spin on something nobody handles.
        other => ExitAction::Stop(StopReason::Error(format!(
            "unexpected vCPU exit {other:?}"
        ))),
    }
}

thread_local! {
    /// The running thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IMMEDIATE_EXIT.with(|p| {
        let ptr = p.get();
        if !ptr.is_null() {
            // SAFETY: the pointer is this thread's live kvm_run.immediate_exit; it is
            // set after the vCPU fd is mapped and cleared before the fd is dropped.
            unsafe { std::ptr::write_volatile(ptr, 1) };
        }
    });
}

pub use crate::signals::kick_signal;

fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal);
    });
    result
}

/// A vCPU's saved architectural state (for snapshots).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Special registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE state.
    pub fpu: FpuState,
    /// Local APIC.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions/interrupts/NMIs.
    pub events: kvm_vcpu_events,
    /// Multiprocessing state.
    pub mp_state: kvm_mp_state,
    /// Every MSR KVM lists as saveable (`KVM_GET_MSR_INDEX_LIST`) that the vCPU
    /// could read, kvmclock and TSC-deadline included; the boot MSRs when the list
    /// was not provided ([`Vcpu::set_saveable_msrs`]).
    pub msrs: Vec<kvm_msr_entry>,
    /// The CPUID the vCPU was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// The XSAVE area (`KVM_GET_XSAVE2` where KVM has `KVM_CAP_XSAVE2`, else
    /// `KVM_GET_XSAVE`), as 32-bit words: AVX/AVX-512 registers and the rest of the
    /// XSAVE-managed state. Empty where KVM cannot save it (`fpu` is then used).
    #[serde(default)]
    pub xsave: Vec<u32>,
    /// The extended control registers (XCR0); `nr_xcrs` 0 where KVM has none.
    #[serde(default)]
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// TSC frequency in kHz (`None` where KVM cannot tell).
    pub tsc_khz: Option<u32>,
}

/// Most MSRs a saved vCPU state may carry.
pub const MAX_SAVED_MSRS: usize = 1024;
/// Most CPUID entries a saved vCPU state may carry (KVM's own limit is 256).
pub const MAX_SAVED_CPUID: usize = 256;
/// MSRs read per `KVM_GET_MSRS` call.
const MSR_CHUNK: usize = 64;

/// The FPU/SSE state (`kvm_fpu` in a serializable form).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct FpuState {
    /// x87 registers.
    pub fpr: [[u8; 16]; 8],
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftwx: u8,
    /// Last opcode.
    pub last_opcode: u16,
    /// Last instruction pointer.
    pub last_ip: u64,
    /// Last data pointer.
    pub last_dp: u64,
    /// SSE registers.
    pub xmm: [[u8; 16]; 16],
    /// SSE control/status.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// A configured vCPU, before its thread starts.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    /// Length of this host's XSAVE area in 32-bit words (`KVM_CAP_XSAVE2`, or the
    /// 4 KiB `kvm_xsave` without it).
    xsave_words: usize,
    io_bus: Bus,
    mmio_bus: Bus,
    stop: StopSignal,
    saveable_msrs: Vec<u32>,
}

const LAPIC_LVT0: usize = 0x350;
const LAPIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_lvt_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = lapic.regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

impl Vcpu {
    /// Create vCPU `index` on `vm`.
    pub fn new(
        vm: &VmFd,
        index: u8,
        io_bus: Bus,
        mmio_bus: Bus,
        stop: StopSignal,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        // KVM_CAP_XSAVE2 gives the size of the whole kvm_xsave (at least 4 KiB); 0 when
        // KVM does not have it.
        let xsave_bytes = usize::try_from(vm.check_extension_int(Cap::Xsave2))
            .unwrap_or(0)
            .max(std::mem::size_of::<kvm_xsave>());
        Ok(Self {
            fd,
            index,
            xsave_words: xsave_bytes.div_ceil(4),
            io_bus,
            mmio_bus,
            stop,
            saveable_msrs: Vec::new(),
        })
    }

    /// The MSRs [`Vcpu::save_state`] saves: KVM's saveable list
    /// (`Kvm::get_msr_index_list`), read while `/dev/kvm` is still open.
    pub fn set_saveable_msrs(&mut self, list: Vec<u32>) {
        self.saveable_msrs = list;
    }

    /// This vCPU's index (= APIC ID).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The KVM vCPU fd (tests and state save use it).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Configure CPUID, MSRs, LAPIC LINT0/LINT1 and, for the boot vCPU (`entry` is
    /// `Some`), the long-mode entry registers.
    pub fn configure(
        &self,
        supported: &CpuId,
        cpu_count: u8,
        tsc_deadline: bool,
        entry: Option<u64>,
    ) -> Result<(), VcpuError> {
        let xsave_problem = host_xsave_problem(supported);
        let cpuid = filter_cpuid(
            supported,
            CpuidConfig {
                cpu_index: self.index,
                cpu_count,
                tsc_deadline,
            },
            xsave_problem.as_deref(),
        );
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Ioctl("set the vCPU's CPUID", e))?;
        setup_msrs(&self.fd)?;
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(|e| VcpuError::Ioctl("read the LAPIC", e))?;
        set_lvt_mode(&mut lapic, LAPIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic, LAPIC_LVT1, APIC_MODE_NMI);
        self.fd
            .set_lapic(&lapic)
            .map_err(|e| VcpuError::Ioctl("set the LAPIC", e))?;
        if let Some(entry) = entry {
            setup_boot_vcpu(&self.fd, entry)?;
        }
        Ok(())
    }

    /// Load a saved architectural state into this (not yet started) vCPU, CPUID
    /// included (do not call [`Vcpu::configure`] first). `state` is untrusted: lengths
    /// are bounded here, KVM validates register contents and refuses what it cannot
    /// load. Order as KVM needs it: TSC frequency and CPUID first, LAPIC before the
    /// MSRs (TSC-deadline needs the LAPIC timer mode), events last.
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), VcpuError> {
        let io = |what| move |e| VcpuError::Ioctl(what, e);
        if state.msrs.len() > MAX_SAVED_MSRS {
            return Err(VcpuError::BadState("too many MSRs"));
        }
        if state.cpuid.is_empty() || state.cpuid.len() > MAX_SAVED_CPUID {
            return Err(VcpuError::BadState("CPUID entry count"));
        }
        if let Some(khz) = state.tsc_khz {
            if let Ok(now) = self.fd.get_tsc_khz() {
                if now != khz {
                    self.fd.set_tsc_khz(khz).map_err(io(
                        "set the saved TSC frequency (host TSC scaling missing?)",
                    ))?;
                }
            }
        }
        let cpuid =
            CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError::BadState("CPUID list"))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(io("restore the vCPU's CPUID"))?;
        self.fd
            .set_mp_state(state.mp_state)
            .map_err(io("restore the MP state"))?;
        self.fd
            .set_sregs(&state.sregs)
            .map_err(io("restore special registers"))?;
        self.fd
            .set_regs(&state.regs)
            .map_err(io("restore registers"))?;
        self.fd
            .set_fpu(&kvm_fpu::from(&state.fpu))
            .map_err(io("restore the FPU"))?;
        if !state.xsave.is_empty() {
            // Exactly this host's XSAVE size: KVM reads that many bytes.
            if state.xsave.len() != self.xsave_words {
                return Err(VcpuError::BadState(
                    "XSAVE area size differs from this host's (saved on another CPU type?)",
                ));
            }
            let (region, extra) = state.xsave.split_at(1024.min(state.xsave.len()));
            let mut xsave = self.new_xsave()?;
            // SAFETY: only the fixed-size region is written; the FAM length is untouched.
            unsafe { xsave.as_mut_fam_struct() }
                .xsave
                .region
                .copy_from_slice(region);
            xsave.as_mut_slice().copy_from_slice(extra);
            // SAFETY: `xsave` holds `self.xsave_words` words (checked above), the size
            // KVM_CAP_XSAVE2 reported for this VM, or the plain 4 KiB kvm_xsave that
            // KVM_SET_XSAVE reads without the cap.
            unsafe { self.fd.set_xsave2(&xsave) }.map_err(io("restore the XSAVE area"))?;
        }
        if state.xcrs.nr_xcrs > 0 {
            if state.xcrs.nr_xcrs as usize > state.xcrs.xcrs.len() {
                return Err(VcpuError::BadState("too many XCRs"));
            }
            self.fd
                .set_xcrs(&state.xcrs)
                .map_err(io("restore the XCRs"))?;
        }
        self.fd
            .set_debug_regs(&state.debugregs)
            .map_err(io("restore the debug registers"))?;
        self.fd
            .set_lapic(&state.lapic)
            .map_err(io("restore the LAPIC"))?;
        let msrs = Msrs::from_entries(&state.msrs).map_err(|_| VcpuError::BadState("MSR list"))?;
        let n = self.fd.set_msrs(&msrs).map_err(io("restore MSRs"))?;
        if n != state.msrs.len() {
            return Err(VcpuError::BadState("an MSR KVM refused"));
        }
        self.fd
            .set_vcpu_events(&state.events)
            .map_err(io("restore vCPU events"))?;
        Ok(())
    }

    /// An XSAVE buffer of this host's size.
    fn new_xsave(&self) -> Result<Xsave, VcpuError> {
        Xsave::new(self.xsave_words.saturating_sub(1024))
            .map_err(|_| VcpuError::BadState("XSAVE area size"))
    }

    /// The XSAVE area as 32-bit words (see [`VcpuState::xsave`]).
    fn save_xsave(&self) -> Result<Vec<u32>, VcpuError> {
        let err = |e| VcpuError::Ioctl("read the XSAVE area", e);
        if self.xsave_words <= 1024 {
            return Ok(self.fd.get_xsave().map_err(err)?.region.to_vec());
        }
        let mut xsave = self.new_xsave()?;
        // SAFETY: `xsave` holds `self.xsave_words` words, the size KVM_CAP_XSAVE2
        // reported for this VM, so KVM writes within it.
        unsafe { self.fd.get_xsave2(&mut xsave) }.map_err(err)?;
        let mut words = xsave.as_fam_struct_ref().xsave.region.to_vec();
        words.extend_from_slice(xsave.as_slice());
        Ok(words)
    }

    /// Read every saveable MSR, in chunks; an MSR KVM lists but cannot read here
    /// (e.g. a feature the CPUID hides) is skipped.
    fn read_msrs(&self) -> Result<Vec<kvm_msr_entry>, VcpuError> {
        let indices: Vec<u32> = if self.saveable_msrs.is_empty() {
            boot_msr_entries().iter().map(|e| e.index).collect()
        } else {
            self.saveable_msrs.clone()
        };
        let mut out = Vec::with_capacity(indices.len());
        let mut rest = &indices[..];
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(MSR_CHUNK)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs =
                Msrs::from_entries(&entries).map_err(|_| VcpuError::BadState("MSR list"))?;
            let n = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(|e| VcpuError::Ioctl("read MSRs", e))?;
            out.extend(msrs.as_slice().iter().take(n).copied());
            // KVM stops at the first MSR it cannot read: skip that one.
            rest = &rest[(n + 1).min(rest.len())..];
        }
        Ok(out)
    }

    /// Save the architectural state (call while paused, after pending I/O was
    /// completed: see the `Pause` handling in the run loop).
    pub fn save_state(&self) -> Result<VcpuState, VcpuError> {
        let io = |what| move |e| VcpuError::Ioctl(what, e);
        let cpuid = self
            .fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(io("read the vCPU's CPUID"))?;
        Ok(VcpuState {
            regs: self.fd.get_regs().map_err(io("read registers"))?,
            sregs: self.fd.get_sregs().map_err(io("read special registers"))?,
            fpu: FpuState::from(&self.fd.get_fpu().map_err(io("read the FPU"))?),
            lapic: self.fd.get_lapic().map_err(io("read the LAPIC"))?,
            events: self.fd.get_vcpu_events().map_err(io("read vCPU events"))?,
            mp_state: self.fd.get_mp_state().map_err(io("read the MP state"))?,
            msrs: self.read_msrs()?,
            cpuid: cpuid.as_slice().to_vec(),
            xsave: self.save_xsave()?,
            xcrs: self.fd.get_xcrs().map_err(io("read the XCRs"))?,
            debugregs: self
                .fd
                .get_debug_regs()
                .map_err(io("read debug registers"))?,
            tsc_khz: self.fd.get_tsc_khz().ok(),
        })
    }

    /// Start the vCPU thread in the `Paused` state. With `seccomp`, the thread
    /// installs the vCPU seccomp filter before anything else (before its first
    /// `KVM_RUN`).
    pub fn start(self, seccomp: bool) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let (cmd_tx, cmd_rx) = channel();
        let (resp_tx, resp_rx) = channel();
        let index = self.index;
        let thread = crate::seccomp::spawn_with_filter(
            format!("husk-vcpu{index}"),
            seccomp.then_some(crate::seccomp::Thread::Vcpu),
            move || self.thread_main(cmd_rx, resp_tx),
        )?;
        Ok(VcpuHandle {
            index,
            tx: cmd_tx,
            rx: resp_rx,
            thread: Some(thread),
        })
    }

    fn thread_main(mut self, rx: Receiver<VcpuCommand>, tx: Sender<VcpuResponse>) {
        let ptr: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|p| p.set(ptr));
        let mut state = VcpuRunState::Paused;
        loop {
            state = match state {
                VcpuRunState::Paused => self.paused(&rx, &tx),
                VcpuRunState::Running => self.running(&rx, &tx),
                VcpuRunState::Exited => break,
            };
        }
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
        let _ = tx.send(VcpuResponse::Exited);
    }

    fn paused(&mut self, rx: &Receiver<VcpuCommand>, tx: &Sender<VcpuResponse>) -> VcpuRunState {
        match rx.recv() {
            Ok(VcpuCommand::Resume) => {
                let _ = tx.send(VcpuResponse::Resumed);
                VcpuRunState::Running
            }
            Ok(VcpuCommand::Pause) => {
                let _ = tx.send(VcpuResponse::Paused);
                VcpuRunState::Paused
            }
            Ok(VcpuCommand::SaveState) => {
                let r = self.save_state();
                let _ = tx.send(VcpuResponse::State(Box::new(r)));
                VcpuRunState::Paused
            }
            Ok(VcpuCommand::Exit) | Err(_) => VcpuRunState::Exited,
        }
    }

    fn running(&mut self, rx: &Receiver<VcpuCommand>, tx: &Sender<VcpuResponse>) -> VcpuRunState {
        loop {
            // Clear before checking the channel: a kick that lands after the check sets
            // it again and KVM_RUN returns at once.
            self.fd.set_kvm_immediate_exit(0);
            match rx.try_recv() {
                Ok(VcpuCommand::Pause) => {
                    self.quiesce();
                    let _ = tx.send(VcpuResponse::Paused);
                    return VcpuRunState::Paused;
                }
                Ok(VcpuCommand::Exit) | Err(TryRecvError::Disconnected) => {
                    return VcpuRunState::Exited
                }
                Ok(VcpuCommand::Resume) => {
                    let _ = tx.send(VcpuResponse::Resumed);
                }
                Ok(VcpuCommand::SaveState) => {
                    let _ = tx.send(VcpuResponse::State(Box::new(Err(VcpuError::NotPaused(
                        self.index,
                    )))));
                }
                Err(TryRecvError::Empty) => {}
            }
            let action = match self.fd.run() {
                Ok(exit) => handle_exit(&self.io_bus, &self.mmio_bus, exit),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    ExitAction::Continue
                }
                Err(e) => ExitAction::Stop(StopReason::Error(format!(
                    "vCPU {} failed to run: {e}",
                    self.index
                ))),
            };
            match action {
                ExitAction::Stop(reason) => {
                    log::info!("vCPU {} stopping the VM: {reason:?}", self.index);
                    self.stop.stop(reason);
                    return VcpuRunState::Exited;
                }
                // A device handled this exit by stopping the VM (i8042 reset, a panic
                // line on the console): do not run the guest again, the VMM is ending
                // the threads. (One uncontended lock per exit.)
                ExitAction::Continue if self.stop.reason().is_some() => {
                    return VcpuRunState::Exited;
                }
                ExitAction::Continue => {}
            }
        }
    }
}

impl Vcpu {
    /// Make the paused vCPU safe to save. The last exit may have been port I/O or MMIO
    /// whose result KVM writes into the registers only on the next `KVM_RUN`: re-enter
    /// once with `immediate_exit` set (KVM completes the operation and returns `EINTR`
    /// without running guest code), as the KVM API documentation requires before
    /// saving state. Then tell the guest's kvmclock it was paused (`KVMCLOCK_CTRL`;
    /// `EINVAL` when the guest does not use kvmclock, which is fine).
    fn quiesce(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            Ok(exit) => log::warn!("vCPU {} exited with {exit:?} while pausing", self.index),
            Err(e) => log::warn!("vCPU {} could not complete pending I/O: {e}", self.index),
        }
        self.fd.set_kvm_immediate_exit(0);
        if let Err(e) = self.fd.kvmclock_ctrl() {
            if e.errno() != libc::EINVAL {
                log::debug!("KVMCLOCK_CTRL on vCPU {}: {e}", self.index);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VcpuRunState {
    Paused,
    Running,
    Exited,
}

/// Commands to a vCPU thread.
#[derive(Debug)]
pub enum VcpuCommand {
    /// Start or continue running the guest.
    Resume,
    /// Stop running the guest and wait.
    Pause,
    /// Save the vCPU state (only while paused).
    SaveState,
    /// End the thread.
    Exit,
}

/// Responses from a vCPU thread.
#[derive(Debug)]
pub enum VcpuResponse {
    /// Now running.
    Resumed,
    /// Now paused.
    Paused,
    /// The saved state, or why it could not be saved.
    State(Box<Result<VcpuState, VcpuError>>),
    /// The thread ended.
    Exited,
}

/// How long to wait for a vCPU thread to acknowledge a command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The VMM's handle on a running vCPU thread.
pub struct VcpuHandle {
    index: u8,
    tx: Sender<VcpuCommand>,
    rx: Receiver<VcpuResponse>,
    thread: Option<JoinHandle<Result<(), crate::seccomp::SeccompError>>>,
}

impl VcpuHandle {
    /// Send `cmd` and kick the thread out of KVM_RUN.
    fn send(&self, cmd: VcpuCommand) -> bool {
        if self.tx.send(cmd).is_err() {
            return false;
        }
        if let Some(t) = &self.thread {
            // The thread may have exited already (ESRCH): nothing to kick then.
            let _ = t.kill(kick_signal());
        }
        true
    }

    fn expect(
        &self,
        what: &'static str,
        ok: fn(&VcpuResponse) -> bool,
    ) -> Result<VcpuResponse, VcpuError> {
        loop {
            match self.rx.recv_timeout(RESPONSE_TIMEOUT) {
                Ok(r) if ok(&r) => return Ok(r),
                Ok(VcpuResponse::Exited) => return Err(VcpuError::NoResponse(self.index, what)),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(VcpuError::NoResponse(self.index, what))
                }
            }
        }
    }

    /// Run the guest on this vCPU.
    pub fn resume(&self) -> Result<(), VcpuError> {
        if !self.send(VcpuCommand::Resume) {
            return Err(VcpuError::NoResponse(self.index, "resume"));
        }
        self.expect("resume", |r| matches!(r, VcpuResponse::Resumed))
            .map(|_| ())
    }

    /// Pause this vCPU and wait until it is paused.
    pub fn pause(&self) -> Result<(), VcpuError> {
        if !self.send(VcpuCommand::Pause) {
            return Err(VcpuError::NoResponse(self.index, "pause"));
        }
        self.expect("pause", |r| matches!(r, VcpuResponse::Paused))
            .map(|_| ())
    }

    /// Save the state of this (paused) vCPU.
    pub fn save_state(&self) -> Result<VcpuState, VcpuError> {
        if !self.send(VcpuCommand::SaveState) {
            return Err(VcpuError::NoResponse(self.index, "save state"));
        }
        match self.expect("save state", |r| matches!(r, VcpuResponse::State(_)))? {
            VcpuResponse::State(s) => (*s).map_err(|e| match e {
                VcpuError::NotPaused(_) => e,
                other => VcpuError::SaveState(self.index, Box::new(other)),
            }),
            _ => Err(VcpuError::NoResponse(self.index, "save state")),
        }
    }

    /// End the thread and join it. Returns false if the thread did not end within
    /// [`EXIT_TIMEOUT`] (e.g. blocked writing console output nobody reads): it is then
    /// left running, and the caller must keep guest memory mapped (see
    /// [`crate::vmm::Vmm::shutdown`]).
    pub fn exit(&mut self) -> bool {
        if self.thread.is_none() {
            return true;
        }
        // Send (and kick) while `self.thread` is still set: `send` kicks through it, and
        // without the kick a vCPU in KVM_RUN only sees the command at its next exit,
        // which after a guest reset (halted vCPUs, a vCPU in the BIOS reset loop) may
        // never come.
        let _ = self.send(VcpuCommand::Exit);
        let Some(t) = self.thread.take() else {
            return true;
        };
        let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(VcpuResponse::Exited) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    log::error!(
                        "vCPU {} did not stop within {EXIT_TIMEOUT:?} (blocked outside KVM_RUN?); \
                         leaving it behind",
                        self.index
                    );
                    return false;
                }
            }
        }
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("vCPU {} thread did not run: {e}", self.index),
            Err(_) => log::error!("vCPU {} thread panicked", self.index),
        }
        true
    }
}

/// How long [`VcpuHandle::exit`] waits for a vCPU thread to end.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(2);

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        let _ = self.exit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::BusDevice;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn exits_route_to_buses_and_unowned_reads_are_all_ones() {
        let io_dev = Arc::new(Mutex::new(Recorder::default()));
        let mmio_dev = Arc::new(Mutex::new(Recorder::default()));
        let mut io = Bus::new();
        io.insert(io_dev.clone(), 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(mmio_dev.clone(), 0xd000_0000, 0x1000).unwrap();

        let mut d = [0u8; 1];
        assert_eq!(
            handle_exit(&io, &mmio, VcpuExit::IoIn(0x3fd, &mut d)),
            ExitAction::Continue
        );
        assert_eq!(d, [6]);
        let mut d = [0u8; 2];
        handle_exit(&io, &mmio, VcpuExit::IoIn(0x1234, &mut d));
        assert_eq!(d, [0xff, 0xff]);
        handle_exit(&io, &mmio, VcpuExit::IoOut(0x3f8, b"x"));
        handle_exit(&io, &mmio, VcpuExit::IoOut(0x80, &[1]));
        assert_eq!(io_dev.lock().unwrap().0, vec![(0, vec![b'x'])]);

        let mut d = [0u8; 4];
        handle_exit(&io, &mmio, VcpuExit::MmioRead(0xd000_0070, &mut d));
        assert_eq!(d, [0x71; 4]);
        let mut d = [0u8; 4];
        handle_exit(&io, &mmio, VcpuExit::MmioRead(0xe000_0000, &mut d));
        assert_eq!(d, [0xff; 4]);
        handle_exit(&io, &mmio, VcpuExit::MmioWrite(0xd000_0050, &[1, 0, 0, 0]));
        assert_eq!(mmio_dev.lock().unwrap().0, vec![(0x50, vec![1, 0, 0, 0])]);
    }

    #[test]
    fn stop_exits() {
        let (io, mmio) = (Bus::new(), Bus::new());
        assert_eq!(
            handle_exit(&io, &mmio, VcpuExit::Shutdown),
            ExitAction::Stop(StopReason::Reset)
        );
        assert_eq!(
            handle_exit(
                &io,
                &mmio,
                VcpuExit::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_RESET, &[])
            ),
            ExitAction::Stop(StopReason::Reset)
        );
        assert_eq!(
            handle_exit(
                &io,
                &mmio,
                VcpuExit::SystemEvent(kvm_bindings::KVM_SYSTEM_EVENT_CRASH, &[])
            ),
            ExitAction::Stop(StopReason::GuestPanic)
        );
        match handle_exit(&io, &mmio, VcpuExit::FailEntry(0x21, 1)) {
            ExitAction::Stop(StopReason::Error(m)) => assert!(m.contains("0x21"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            handle_exit(&io, &mmio, VcpuExit::InternalError),
            ExitAction::Stop(StopReason::Error(_))
        ));
        assert_eq!(handle_exit(&io, &mmio, VcpuExit::Hlt), ExitAction::Continue);
        assert_eq!(
            handle_exit(&io, &mmio, VcpuExit::Intr),
            ExitAction::Continue
        );
    }

    #[test]
    fn lvt_mode_bits() {
        let mut l = kvm_lapic_state::default();
        l.regs[LAPIC_LVT0] = 0x55u8 as _;
        l.regs[LAPIC_LVT0 + 1] = 0x01u8 as _;
        set_lvt_mode(&mut l, LAPIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(l.regs[LAPIC_LVT0] as u8, 0x55);
        assert_eq!(l.regs[LAPIC_LVT0 + 1] as u8, 0x07);
    }
}
