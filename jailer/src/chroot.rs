//! New mount namespace and `pivot_root` into the jail root. Runs in the jailed child;
//! nothing here is visible on the host because `/` is made private first.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;

/// Errors while entering the jail root; one variant per syscall.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    /// unshare(CLONE_NEWNS) failed.
    #[error("cannot create a mount namespace (unshare CLONE_NEWNS): the jailer must run as root")]
    UnshareMount(#[source] io::Error),
    /// Making / private failed.
    #[error("cannot make / a private mount (so nothing propagates to the host)")]
    MakePrivate(#[source] io::Error),
    /// Bind-mounting the jail root failed.
    #[error("cannot bind-mount the jail root {0:?} onto itself")]
    BindRoot(PathBuf, #[source] io::Error),
    /// chdir failed.
    #[error("cannot chdir to {0:?}")]
    Chdir(PathBuf, #[source] io::Error),
    /// pivot_root failed.
    #[error("pivot_root into the jail failed (it needs / on a real filesystem, not the initramfs rootfs)")]
    PivotRoot(#[source] io::Error),
    /// Unmounting the old root failed.
    #[error("cannot unmount the old root after pivot_root")]
    UnmountOldRoot(#[source] io::Error),
    /// chroot failed.
    #[error("chroot into the jail root failed")]
    Chroot(#[source] io::Error),
    /// Path with a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    NulInPath(PathBuf),
}

fn last() -> io::Error {
    io::Error::last_os_error()
}

/// Enters a new mount namespace whose `/` is `root`, with the host's tree detached.
pub fn enter(root: &Path) -> Result<(), ChrootError> {
    let c_root = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| ChrootError::NulInPath(root.to_path_buf()))?;
    let slash = c"/";
    let dot = c".";
    // SAFETY: unshare takes only flags.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(ChrootError::UnshareMount(last()));
    }
    // SAFETY: valid NUL-terminated target; null source/fstype/data are allowed for a
    // propagation change.
    let rc = unsafe {
        libc::mount(
            ptr::null(),
            slash.as_ptr(),
            ptr::null(),
            libc::MS_PRIVATE | libc::MS_REC,
            ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ChrootError::MakePrivate(last()));
    }
    // SAFETY: source and target are the same valid path; null fstype/data for a bind.
    let rc = unsafe {
        libc::mount(
            c_root.as_ptr(),
            c_root.as_ptr(),
            ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ChrootError::BindRoot(root.to_path_buf(), last()));
    }
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::chdir(c_root.as_ptr()) } != 0 {
        return Err(ChrootError::Chdir(root.to_path_buf(), last()));
    }
    // pivot_root(".", "."): the old root is stacked on the new one, so no put_old
    // directory is needed (and none is left behind).
    // SAFETY: both arguments are valid NUL-terminated paths.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    if rc != 0 {
        return Err(ChrootError::PivotRoot(last()));
    }
    // SAFETY: valid NUL-terminated path; MNT_DETACH detaches the whole old tree.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(ChrootError::UnmountOldRoot(last()));
    }
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::chdir(slash.as_ptr()) } != 0 {
        return Err(ChrootError::Chdir(PathBuf::from("/"), last()));
    }
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(ChrootError::Chroot(last()));
    }
    Ok(())
}
