//! Privilege drop: no supplementary groups, gid, uid, no-new-privs, and a check that no
//! capability is left in any set.

use std::io;

/// Errors of the privilege drop; one variant per syscall.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    /// setgroups failed.
    #[error("cannot drop supplementary groups (setgroups)")]
    Setgroups(#[source] io::Error),
    /// setresgid failed.
    #[error("cannot switch to gid {0} (setresgid)")]
    Setresgid(u32, #[source] io::Error),
    /// setresuid failed.
    #[error("cannot switch to uid {0} (setresuid)")]
    Setresuid(u32, #[source] io::Error),
    /// PR_SET_NO_NEW_PRIVS failed.
    #[error("cannot set no-new-privs (prctl PR_SET_NO_NEW_PRIVS)")]
    NoNewPrivs(#[source] io::Error),
    /// PR_SET_PDEATHSIG failed.
    #[error("cannot set the parent-death signal (prctl PR_SET_PDEATHSIG)")]
    DeathSignal(#[source] io::Error),
    /// capget failed.
    #[error("cannot read the capability sets (capget)")]
    Capget(#[source] io::Error),
    /// Capabilities remain after the drop.
    #[error("capabilities remain after dropping privileges (effective {effective:#x}, permitted {permitted:#x}, inheritable {inheritable:#x}): refusing to exec")]
    CapsRemain {
        /// Effective set.
        effective: u64,
        /// Permitted set.
        permitted: u64,
        /// Inheritable set.
        inheritable: u64,
    },
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's (effective, permitted, inheritable) capability sets.
pub fn capabilities() -> Result<(u64, u64, u64), PrivError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array (version 3 layout) are valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(PrivError::Capget(io::Error::last_os_error()));
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

/// Sets the signal the kernel sends this process when its parent dies.
pub fn set_death_signal(sig: libc::c_int) -> Result<(), PrivError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(PrivError::DeathSignal(io::Error::last_os_error()));
    }
    Ok(())
}

/// Drops to uid/gid with no supplementary groups, sets no-new-privs and verifies that
/// no capability remains.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), PrivError> {
    // SAFETY: an empty group list: size 0 and a null pointer are valid.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(PrivError::Setgroups(io::Error::last_os_error()));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(PrivError::Setresgid(gid, io::Error::last_os_error()));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(PrivError::Setresuid(uid, io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivError::NoNewPrivs(io::Error::last_os_error()));
    }
    let (effective, permitted, inheritable) = capabilities()?;
    if effective != 0 || permitted != 0 || inheritable != 0 {
        return Err(PrivError::CapsRemain {
            effective,
            permitted,
            inheritable,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_leaves_no_capabilities() {
        // SAFETY: fork in a test; the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let root = capabilities().map(|c| c.0 != 0).unwrap_or(false);
            let dropped = drop_privileges(65534, 65534).is_ok();
            let caps = capabilities().ok();
            // SAFETY: getuid/getgid take no arguments.
            let ids = unsafe { (libc::getuid(), libc::getgid()) };
            // SAFETY: prctl query with integer arguments.
            let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
            let code = if !root {
                77 // not root: nothing to check
            } else if dropped && caps == Some((0, 0, 0)) && ids == (65534, 65534) && nnp == 1 {
                0
            } else {
                1
            };
            // SAFETY: exit the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        let code = libc::WEXITSTATUS(status);
        assert!(
            code == 0 || code == 77,
            "privilege drop check failed: {code}"
        );
    }
}
