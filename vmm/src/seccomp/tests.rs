use super::*;

/// Runs `child` in a forked process and returns its wait status. The child must only
/// make syscalls (the test binary is multi-threaded).
fn in_child(child: impl FnOnce() -> i32) -> libc::c_int {
    // SAFETY: fork in a test; the child runs `child` and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child();
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid out pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

fn killed_by_sigsys(status: libc::c_int) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

fn exited_with(status: libc::c_int, code: i32) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == code
}

#[test]
fn every_filter_compiles() {
    for t in Thread::ALL {
        let prog = compile(t).unwrap();
        assert!(prog.len() > 10, "{t:?}: {} instructions", prog.len());
    }
}

#[test]
fn allowlist_counts_match_the_docs() {
    // Update the table in mod.rs when these change.
    let count = |t| allowlist(t).len();
    let debug_rows = usize::from(cfg!(debug_assertions));
    assert_eq!(
        (count(Thread::Vmm), count(Thread::Api), count(Thread::Vcpu)),
        (42 + debug_rows, 24 + debug_rows, 17 + debug_rows)
    );
    for t in Thread::ALL {
        let list = allowlist(t);
        let mut nrs: Vec<i64> = list.iter().map(|r| r.nr).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), list.len(), "{t:?} lists a syscall twice");
        assert!(
            list.iter().all(|r| !r.reason.is_empty()),
            "{t:?}: every row needs a reason"
        );
    }
    // Fewer than Firecracker's rule counts, per thread kind.
    assert!(count(Thread::Vmm) < 76 && count(Thread::Api) < 36 && count(Thread::Vcpu) < 49);
    // The vCPU thread has no file, socket or process-creation syscalls at all.
    let vcpu: Vec<&str> = allowlist(Thread::Vcpu).iter().map(|r| r.name).collect();
    for forbidden in [
        "SYS_openat",
        "SYS_socket",
        "SYS_connect",
        "SYS_clone",
        "SYS_clone3",
        "SYS_execve",
        "SYS_read",
    ] {
        assert!(!vcpu.contains(&forbidden), "{forbidden}");
    }
}

#[test]
fn vcpu_filter_kills_on_forbidden_syscall() {
    let prog = compile(Thread::Vcpu).unwrap();
    let status = in_child(|| {
        if seccompiler::apply_filter(&prog).is_err() {
            return 2;
        }
        // SAFETY: getppid takes no arguments; it is not in the vCPU allowlist.
        unsafe { libc::getppid() };
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn vcpu_filter_checks_ioctl_requests() {
    let prog = compile(Thread::Vcpu).unwrap();
    let status = in_child(|| {
        if seccompiler::apply_filter(&prog).is_err() {
            return 2;
        }
        let mut on: libc::c_int = 1;
        // SAFETY: FIONBIO on stdin with a valid int pointer; denied for vCPU threads.
        unsafe { libc::ioctl(0, libc::FIONBIO, &mut on) };
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn mmap_exec_is_denied_and_plain_mmap_allowed() {
    let prog = compile(Thread::Vcpu).unwrap();
    let map = |prot| {
        // SAFETY: anonymous private mapping request; the result is not used.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        }
    };
    let status = in_child(|| {
        if seccompiler::apply_filter(&prog).is_err() {
            return 2;
        }
        if map(libc::PROT_READ | libc::PROT_WRITE) == libc::MAP_FAILED {
            return 3;
        }
        0
    });
    assert!(exited_with(status, 0), "status {status:#x}");
    let status = in_child(|| {
        if seccompiler::apply_filter(&prog).is_err() {
            return 2;
        }
        map(libc::PROT_READ | libc::PROT_EXEC);
        0
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn filtered_thread_dies_with_sigsys_but_allowed_work_runs() {
    // spawn_with_filter end to end: an allowed write runs, then a forbidden syscall
    // kills the whole process (not just the thread).
    let status = in_child(|| {
        let mut fds = [0; 2];
        // SAFETY: valid two-element out array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return 2;
        }
        let (r, w) = (fds[0], fds[1]);
        let h = spawn_with_filter("husk-test-vcpu".into(), Some(Thread::Vcpu), move || {
            // SAFETY: writing one byte from a valid buffer to our pipe.
            let n = unsafe { libc::write(w, b"x".as_ptr().cast(), 1) };
            if n == 1 {
                // SAFETY: getppid takes no arguments; forbidden for vCPU threads.
                unsafe { libc::getppid() };
            }
        });
        let Ok(h) = h else { return 3 };
        let _ = h.join();
        let mut b = [0u8; 1];
        // SAFETY: reading into a valid one-byte buffer.
        let n = unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            4 // the thread wrote, and the process survived the forbidden syscall: bad
        } else {
            5
        }
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn unfiltered_spawn_runs_freely() {
    let h = spawn_with_filter("husk-test-free".into(), None, || {
        // SAFETY: getppid takes no arguments.
        unsafe { libc::getppid() }
    })
    .unwrap();
    assert!(h.join().unwrap().unwrap() > 0);
}

#[test]
fn spawned_threads_have_a_stack_too_small_for_a_huge_page() {
    // In a fresh process: glibc hands a new thread the cached stack of an exited one
    // when that is large enough, and this binary's other tests end threads with 2 MiB
    // stacks.
    let status = run_isolated("seccomp::tests::isolated_thread_stack_size");
    assert!(status.success(), "{status:?}");
}

#[test]
#[ignore = "run by spawned_threads_have_a_stack_too_small_for_a_huge_page in its own process"]
fn isolated_thread_stack_size() {
    assert!(
        std::env::var_os("HUSK_SECCOMP_ISOLATED").is_some(),
        "run via spawned_threads_have_a_stack_too_small_for_a_huge_page"
    );
    let h = spawn_with_filter("husk-test-stack".into(), None, || {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
        // SAFETY: `attr` is writable; pthread_getattr_np initialises it for this thread.
        let rc = unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let mut addr = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: `attr` was initialised just above; the out pointers are valid.
        let rc = unsafe { libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) };
        assert_eq!(rc, 0);
        // SAFETY: `attr` is initialised and destroyed once.
        unsafe { libc::pthread_attr_destroy(attr.as_mut_ptr()) };
        size
    })
    .unwrap();
    let size = h.join().unwrap().unwrap();
    assert!(size >= THREAD_STACK_SIZE, "stack of {size} bytes");
    assert!(
        size < 2 * 1024 * 1024,
        "a {size}-byte stack can be backed by a 2 MiB huge page"
    );
}

/// Runs one `#[ignore]`d test of this binary in a fresh process and returns its status
/// (KVM refuses a VM created before fork, so the KVM test cannot use `in_child`).
fn run_isolated(test: &str) -> std::process::ExitStatus {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("HUSK_SECCOMP_ISOLATED", "1")
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("{test} did not finish within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn vcpu_filter_allows_a_real_kvm_run() {
    assert!(
        kvm_ioctls::Kvm::new().is_ok(),
        "this test needs access to /dev/kvm (any KVM, PVM-backed is fine)"
    );
    let status = run_isolated("seccomp::tests::isolated_kvm_run_under_vcpu_filter");
    assert!(status.success(), "{status:?}");
}

#[test]
#[ignore = "run by vcpu_filter_allows_a_real_kvm_run in its own process"]
fn isolated_kvm_run_under_vcpu_filter() {
    // A vCPU thread under its filter runs a two-instruction real-mode guest
    // (out 0x80, al; out 0x81, al); no irqchip, so nothing runs in-kernel on the local /dev/kvm, reads its state as a snapshot would,
    // and drops its fds.
    use kvm_ioctls::{Kvm, VcpuExit};
    assert!(
        std::env::var_os("HUSK_SECCOMP_ISOLATED").is_some(),
        "run via vcpu_filter_allows_a_real_kvm_run"
    );
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let size = 0x10000usize;
    // SAFETY: fresh anonymous mapping; it is never unmapped while the VM lives.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    let code = [0xe6u8, 0x80, 0xe6, 0x81]; // out 0x80, al; out 0x81, al
                                           // SAFETY: the mapping is 64 KiB and writable; 0x1000 + 3 is inside it.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), (mem as *mut u8).add(0x1000), code.len())
    };
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the region maps memory that stays valid for the VM's life.
    unsafe { vm.set_user_memory_region(region) }.unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = 0x1000;
    regs.rax = 0x2a;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    let h = spawn_with_filter("husk-vcpu0".into(), Some(Thread::Vcpu), move || {
        let mut saw_out = false;
        for _ in 0..8 {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(0x80, data)) => saw_out = data == [0x2a],
                Ok(VcpuExit::IoOut(0x81, _)) => break,
                Ok(_) => {}
                Err(e) => return Err(e.errno()),
            }
        }
        let state_ok = vcpu.get_regs().is_ok()
            && vcpu.get_sregs().is_ok()
            && vcpu.get_mp_state().is_ok()
            && vcpu.get_vcpu_events().is_ok()
            && vcpu.get_fpu().is_ok();
        drop(vcpu);
        Ok(saw_out && state_ok)
    })
    .unwrap();
    assert_eq!(h.join().unwrap().unwrap(), Ok(true));
}
