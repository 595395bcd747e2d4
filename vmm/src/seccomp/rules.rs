//! The one readable definition of husk's seccomp allowlists: one table per thread kind,
//! one row per syscall with the reason it is needed and, where practical, an argument
//! filter. Everything not listed kills the process.

use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

/// Which argument filter a row carries.
#[derive(Debug, Clone, Copy)]
pub enum Args {
    /// Any arguments.
    Any,
    /// `ioctl(fd, request, ..)`: request (arg 1) must be one of these.
    Ioctl(&'static [Ioctl]),
    /// `fcntl(fd, cmd, ..)`: cmd (arg 1) must be one of these.
    Fcntl(&'static [i32]),
    /// mmap/mprotect: the prot argument (arg 2) must not contain `PROT_EXEC`.
    NoExec,
    /// `madvise(addr, len, advice)`: advice (arg 2) must be one of these.
    Madvise(&'static [i32]),
    /// `socket(domain, ..)`: domain (arg 0) must be `AF_UNIX`.
    UnixSocket,
    /// `tgkill(tgid, tid, sig)`: sig (arg 2) must be the vCPU kick signal.
    KickSignal,
}

/// One allowed ioctl request, by name for the docs.
#[derive(Debug, Clone, Copy)]
pub struct Ioctl {
    /// Request number.
    pub request: u64,
    /// Name, e.g. `KVM_RUN`.
    pub name: &'static str,
}

/// One allowed syscall.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Syscall number (x86_64).
    pub nr: i64,
    /// Name, for the docs and the tests.
    pub name: &'static str,
    /// Argument filter.
    pub args: Args,
    /// Why the thread needs it.
    pub reason: &'static str,
}

const fn io(nr: u32) -> u64 {
    ioctl_expr(_IOC_NONE, KVMIO, nr, 0) as u64
}
const fn ior(nr: u32, size: usize) -> u64 {
    ioctl_expr(_IOC_READ, KVMIO, nr, size as u32) as u64
}
const fn iowr(nr: u32, size: usize) -> u64 {
    ioctl_expr(_IOC_READ | _IOC_WRITE, KVMIO, nr, size as u32) as u64
}

macro_rules! ioctl {
    ($name:ident = $value:expr) => {
        Ioctl {
            request: $value,
            name: stringify!($name),
        }
    };
}

/// vCPU fd ioctls a vCPU thread makes: the run loop and the state read for snapshots.
pub const VCPU_IOCTLS: &[Ioctl] = &[
    ioctl!(KVM_RUN = io(0x80)),
    ioctl!(KVM_GET_REGS = ior(0x81, size_of::<kvm_regs>())),
    ioctl!(KVM_GET_SREGS = ior(0x83, size_of::<kvm_sregs>())),
    ioctl!(KVM_GET_MSRS = iowr(0x88, size_of::<kvm_msrs>())),
    ioctl!(KVM_GET_FPU = ior(0x8c, size_of::<kvm_fpu>())),
    ioctl!(KVM_GET_LAPIC = ior(0x8e, size_of::<kvm_lapic_state>())),
    ioctl!(KVM_GET_MP_STATE = ior(0x98, size_of::<kvm_mp_state>())),
    ioctl!(KVM_GET_VCPU_EVENTS = ior(0x9f, size_of::<kvm_vcpu_events>())),
    ioctl!(KVM_GET_CPUID2 = iowr(0x91, size_of::<kvm_cpuid2>())),
    ioctl!(KVM_GET_DEBUGREGS = ior(0xa1, size_of::<kvm_debugregs>())),
    ioctl!(KVM_GET_XSAVE = ior(0xa4, size_of::<kvm_xsave>())),
    ioctl!(KVM_GET_XCRS = ior(0xa6, size_of::<kvm_xcrs>())),
    ioctl!(KVM_GET_XSAVE2 = ior(0xcf, size_of::<kvm_xsave>())),
    ioctl!(KVM_GET_TSC_KHZ = io(0xa3)),
    ioctl!(KVM_KVMCLOCK_CTRL = io(0xad)),
];

/// Ioctls of the VMM thread after boot: `FIONBIO` (std's `set_nonblocking` on accepted
/// vsock connections) and the VM state reads of `PUT /snapshot/create` (interrupts go
/// through irqfds: no other KVM ioctl once the guest runs).
pub const VMM_IOCTLS: &[Ioctl] = &[
    Ioctl {
        request: libc::FIONBIO,
        name: "FIONBIO",
    },
    ioctl!(KVM_GET_IRQCHIP = iowr(0x62, size_of::<kvm_irqchip>())),
    ioctl!(KVM_GET_PIT2 = ior(0x9f, size_of::<kvm_pit_state2>())),
    ioctl!(KVM_GET_CLOCK = ior(0x7c, size_of::<kvm_clock_data>())),
];

/// `FIONBIO` only (std's `set_nonblocking` on sockets).
pub const API_IOCTLS: &[Ioctl] = &[Ioctl {
    request: libc::FIONBIO,
    name: "FIONBIO",
}];

const MADVICE: &[i32] = &[libc::MADV_DONTNEED, libc::MADV_FREE];

macro_rules! rule {
    ($name:ident, $args:expr, $reason:expr) => {
        Rule {
            nr: libc::$name,
            name: stringify!($name),
            args: $args,
            reason: $reason,
        }
    };
}

use Args::{Any, NoExec};

/// Rows every thread kind needs: memory allocation, locks, output, thread exit.
const COMMON: &[Rule] = &[
    rule!(
        SYS_futex,
        Any,
        "std Mutex/Condvar/mpsc channels and thread join"
    ),
    rule!(
        SYS_mmap,
        NoExec,
        "allocator (large blocks, new arenas); never executable"
    ),
    rule!(SYS_munmap, Any, "allocator frees; thread stack teardown"),
    rule!(
        SYS_mprotect,
        NoExec,
        "glibc grows malloc arenas by mprotect; never executable"
    ),
    rule!(SYS_mremap, Any, "glibc realloc of large (mmapped) blocks"),
    rule!(
        SYS_madvise,
        Args::Madvise(MADVICE),
        "glibc returns freed memory and thread stacks"
    ),
    rule!(SYS_brk, Any, "allocator heap growth on the main arena"),
    rule!(
        SYS_write,
        Any,
        "logs, console output, eventfd signalling (stop, interrupts)"
    ),
    rule!(
        SYS_close,
        Any,
        "dropping fds (vCPU fd at exit, vsock connections)"
    ),
    rule!(
        SYS_sigaltstack,
        Any,
        "std removes the thread's alternate signal stack at exit"
    ),
    rule!(
        SYS_rt_sigprocmask,
        Any,
        "glibc blocks signals while a thread or the process exits"
    ),
    rule!(SYS_sched_yield, Any, "std mpsc channel backoff"),
    rule!(
        SYS_clock_gettime,
        Any,
        "log timestamps and timeouts when the vDSO clock is unusable"
    ),
    rule!(SYS_exit, Any, "thread exit"),
    rule!(SYS_exit_group, Any, "process exit"),
];

/// vCPU thread: the KVM_RUN loop and exit handling on the device buses.
const VCPU: &[Rule] = &[
    rule!(
        SYS_ioctl,
        Args::Ioctl(VCPU_IOCTLS),
        "KVM_RUN and vCPU state reads for snapshots"
    ),
    rule!(SYS_rt_sigreturn, Any, "return from the kick signal handler"),
];

/// Rows only debug builds need, on every thread kind (added by [`rules`] when
/// `debug_assertions` is on).
const VCPU_DEBUG: &[Rule] = &[rule!(
    SYS_fcntl,
    Args::Fcntl(&[libc::F_GETFD]),
    "debug std checks an fd is open before closing it"
)];

/// VMM thread: the event loop (epoll), devices, vsock Unix sockets.
const VMM: &[Rule] = &[
    rule!(
        SYS_ioctl,
        Args::Ioctl(VMM_IOCTLS),
        "FIONBIO on accepted vsock connections"
    ),
    rule!(SYS_epoll_wait, Any, "event loop"),
    rule!(
        SYS_epoll_ctl,
        Any,
        "event loop: add/remove vsock connections"
    ),
    rule!(
        SYS_read,
        Any,
        "eventfds (queue notify, stop), timerfd, sockets"
    ),
    rule!(
        SYS_pread64,
        Any,
        "virtio-blk: guest reads of a drive image (FileExt::read_exact_at)"
    ),
    rule!(
        SYS_pwrite64,
        Any,
        "virtio-blk: guest writes to a read-write drive image (FileExt::write_all_at)"
    ),
    rule!(
        SYS_fsync,
        Any,
        "virtio-blk: guest FLUSH on a read-write drive; snapshot create: durable files and directory"
    ),
    rule!(SYS_recvfrom, Any, "vsock: reads from host sockets (recv)"),
    rule!(SYS_sendto, Any, "vsock: writes to host sockets (send)"),
    rule!(
        SYS_accept4,
        Any,
        "vsock: host connections on the Unix socket"
    ),
    rule!(
        SYS_socket,
        Args::UnixSocket,
        "vsock: guest-initiated connections to <uds>_<port>"
    ),
    rule!(SYS_connect, Any, "vsock: guest-initiated connections"),
    rule!(
        SYS_shutdown,
        Any,
        "vsock: half-close towards the host socket"
    ),
    rule!(SYS_timerfd_settime, Any, "vsock: connection timeouts"),
    rule!(SYS_getrandom, Any, "std HashMap keys"),
    rule!(SYS_getpid, Any, "pthread_kill looks up the process id"),
    rule!(
        SYS_tgkill,
        Args::KickSignal,
        "kick vCPU threads out of KVM_RUN (kick signal only)"
    ),
    rule!(
        SYS_unlink,
        Any,
        "vsock and API: remove the Unix sockets at exit; snapshot: a failed temp file"
    ),
    rule!(
        SYS_openat,
        Any,
        "snapshot create: the state and memory files (paths come with the request)"
    ),
    rule!(
        SYS_lseek,
        Any,
        "snapshot create: skip zero pages (sparse file)"
    ),
    rule!(SYS_ftruncate, Any, "snapshot create: memory file length"),
    rule!(SYS_rename, Any, "snapshot create: atomic rename into place"),
    rule!(
        SYS_renameat,
        Any,
        "snapshot create: atomic rename (libc variant)"
    ),
    rule!(SYS_statx, Any, "snapshot create: file sizes for the report"),
    rule!(
        SYS_newfstatat,
        Any,
        "snapshot create: file sizes (statx fallback)"
    ),
    rule!(SYS_fstat, Any, "snapshot create: file sizes (fstat)"),
    rule!(
        SYS_rt_sigreturn,
        Any,
        "return from the SIGTERM/SIGINT handler (any thread may take it)"
    ),
];

/// API thread: accept and serve requests on the API socket, wake the VMM thread
/// (eventfd write) and wait for its reply (futex).
const API: &[Rule] = &[
    rule!(
        SYS_ioctl,
        Args::Ioctl(API_IOCTLS),
        "FIONBIO on the API socket"
    ),
    rule!(SYS_epoll_wait, Any, "wait for API connections"),
    rule!(SYS_epoll_ctl, Any, "register API connections"),
    rule!(SYS_read, Any, "requests and eventfds"),
    rule!(SYS_recvfrom, Any, "requests (recv)"),
    rule!(SYS_sendto, Any, "responses (send)"),
    rule!(SYS_accept4, Any, "API connections"),
    rule!(SYS_shutdown, Any, "close API connections"),
    rule!(
        SYS_rt_sigreturn,
        Any,
        "return from the SIGTERM/SIGINT handler (any thread may take it)"
    ),
];

/// All rows for one thread kind (common rows first).
pub fn rules(thread: super::Thread) -> Vec<Rule> {
    let specific = match thread {
        super::Thread::Vmm => VMM,
        super::Thread::Api => API,
        super::Thread::Vcpu => VCPU,
    };
    // Debug std checks an fd before closing it on every thread that closes fds.
    let debug: &[Rule] = if cfg!(debug_assertions) {
        VCPU_DEBUG
    } else {
        &[]
    };
    COMMON
        .iter()
        .chain(specific)
        .chain(debug)
        .copied()
        .collect()
}
