//! The jail directory on the host: `<base>/<exec name>/<id>/root` holding the VMM
//! binary, the `--include` files and only the device nodes the VMM needs.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::cleanup::{Cleanup, Undo};
use crate::paths::{JailPaths, DEVICES};

/// Errors while building the jail directory.
#[derive(Debug, thiserror::Error)]
pub enum JailDirError {
    /// mkdir failed.
    #[error("cannot create jail directory {0:?}: check --chroot-base-dir")]
    CreateDir(PathBuf, #[source] io::Error),
    /// The jail root exists already.
    #[error("jail root {0:?} already exists: another sandbox uses this id, pick a new --id or remove it")]
    Exists(PathBuf),
    /// Copying a file into the jail failed.
    #[error("cannot copy {0:?} into the jail at {1:?}")]
    Copy(PathBuf, PathBuf, #[source] io::Error),
    /// chmod failed.
    #[error("cannot set permissions of {0:?}")]
    Chmod(PathBuf, #[source] io::Error),
    /// chown failed.
    #[error("cannot change the owner of {0:?} to the target uid/gid")]
    Chown(PathBuf, #[source] io::Error),
    /// A required host device is missing.
    #[error("required device {0:?} is missing on the host: load the kvm module / check /dev")]
    DeviceMissing(PathBuf),
    /// The host path is not a character device.
    #[error("{0:?} is not a character device")]
    NotCharDevice(PathBuf),
    /// mknod failed.
    #[error("cannot create device node {0:?} (is the base directory on a nodev mount?)")]
    Mknod(PathBuf, #[source] io::Error),
    /// Path with a NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    NulInPath(PathBuf),
}

fn cstring(p: &Path) -> Result<CString, JailDirError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailDirError::NulInPath(p.to_path_buf()))
}

/// Creates every missing directory of `path`, recording each: components up to and
/// including `shared_until` as shared (removed only when empty), deeper ones as owned
/// trees. Returns whether `path` itself was created.
fn create_dirs(
    path: &Path,
    shared_until: &Path,
    cleanup: &mut Cleanup,
) -> Result<bool, JailDirError> {
    let missing: Vec<&Path> = path.ancestors().take_while(|p| !p.exists()).collect();
    for dir in missing.iter().rev() {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue, // lost a race: shared
            Err(e) => return Err(JailDirError::CreateDir(dir.to_path_buf(), e)),
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| JailDirError::Chmod(dir.to_path_buf(), e))?;
        if shared_until.starts_with(dir) {
            cleanup.push(Undo::SharedDir(dir.to_path_buf()));
        } else {
            cleanup.push(Undo::Tree(dir.to_path_buf()));
        }
    }
    Ok(!missing.is_empty())
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailDirError> {
    let c = cstring(path)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    if rc != 0 {
        return Err(JailDirError::Chown(
            path.to_path_buf(),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Hard-links `src` to `dst` when they share a filesystem, else copies; read-only result.
fn put_file(src: &Path, dst: &Path, mode: u32, cleanup: &mut Cleanup) -> Result<(), JailDirError> {
    let copy_err = |e| JailDirError::Copy(src.to_path_buf(), dst.to_path_buf(), e);
    let linked = fs::metadata(src).is_ok_and(|m| linkable(&m)) && fs::hard_link(src, dst).is_ok();
    if !linked {
        fs::copy(src, dst).map_err(copy_err)?;
    }
    cleanup.push(Undo::File(dst.to_path_buf()));
    if !linked {
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(|e| JailDirError::Chmod(dst.to_path_buf(), e))?;
    }
    Ok(())
}

/// A hard link shares the inode with the host file, so it is used only when the jailed
/// uid could not write it through the link either: owned by root, not group- or
/// world-writable, no set-id bits. Otherwise (or across filesystems) the file is copied.
fn linkable(meta: &fs::Metadata) -> bool {
    meta.is_file() && meta.uid() == 0 && meta.mode() & 0o6022 == 0
}

/// Builds the jail directory: dirs, the VMM binary and the includes (hard links when
/// [`linkable`] and on the same filesystem, else root-owned copies, 0755 / 0444), `dev/` with the device nodes owned by
/// uid/gid, and a root owned by uid/gid so the VMM can create its sockets.
pub fn build(
    paths: &JailPaths,
    exec_file: &Path,
    includes: &[PathBuf],
    uid: u32,
    gid: u32,
    cleanup: &mut Cleanup,
) -> Result<(), JailDirError> {
    create_dirs(&paths.id_dir, &paths.exec_dir, cleanup)?;
    match fs::create_dir(&paths.root) {
        Ok(()) => cleanup.push(Undo::Tree(paths.root.clone())),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(JailDirError::Exists(paths.root.clone()))
        }
        Err(e) => return Err(JailDirError::CreateDir(paths.root.clone(), e)),
    }
    fs::set_permissions(&paths.root, fs::Permissions::from_mode(0o755))
        .map_err(|e| JailDirError::Chmod(paths.root.clone(), e))?;
    put_file(exec_file, &paths.exec_in_jail, 0o755, cleanup)?;
    for inc in includes {
        let name = inc.file_name().unwrap_or(inc.as_os_str());
        put_file(inc, &paths.root.join(name), 0o444, cleanup)?;
    }
    fs::create_dir(&paths.dev).map_err(|e| JailDirError::CreateDir(paths.dev.clone(), e))?;
    cleanup.push(Undo::Tree(paths.dev.clone()));
    for (dev, required) in DEVICES {
        make_device(paths, Path::new(dev), *required, uid, gid, cleanup)?;
    }
    chown(&paths.root, uid, gid)
}

fn make_device(
    paths: &JailPaths,
    host: &Path,
    required: bool,
    uid: u32,
    gid: u32,
    cleanup: &mut Cleanup,
) -> Result<(), JailDirError> {
    let meta = match fs::metadata(host) {
        Ok(m) => m,
        Err(_) if !required => return Ok(()),
        Err(_) => return Err(JailDirError::DeviceMissing(host.to_path_buf())),
    };
    if meta.mode() & libc::S_IFMT != libc::S_IFCHR {
        return Err(JailDirError::NotCharDevice(host.to_path_buf()));
    }
    let target = paths
        .device_in_jail(host)
        .ok_or_else(|| JailDirError::NotCharDevice(host.to_path_buf()))?;
    let c = cstring(&target)?;
    // SAFETY: `c` is a valid NUL-terminated path; mode and dev are plain integers.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, meta.rdev()) };
    if rc != 0 {
        return Err(JailDirError::Mknod(target, io::Error::last_os_error()));
    }
    cleanup.push(Undo::File(target.clone()));
    chown(&target, uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_only_files_the_jailed_uid_cannot_write() {
        let dir = std::env::temp_dir().join(format!("husk-jd-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("jail")).unwrap();
        let src = dir.join("kernel");
        fs::write(&src, b"k").unwrap();
        let mut c = Cleanup::new();
        for (i, (mode, owner, expect_link)) in [
            (0o644, 0, true),
            (0o666, 0, false),
            (0o664, 0, false),
            (0o4755, 0, false),
            (0o644, 1234, false),
        ]
        .into_iter()
        .enumerate()
        {
            chown(&src, owner, owner).unwrap(); // before chmod: chown clears set-id bits
            fs::set_permissions(&src, fs::Permissions::from_mode(mode)).unwrap();
            let dst = dir.join("jail").join(format!("k{i}"));
            put_file(&src, &dst, 0o444, &mut c).unwrap();
            let (s, d) = (fs::metadata(&src).unwrap(), fs::metadata(&dst).unwrap());
            assert_eq!(
                s.ino() == d.ino(),
                expect_link,
                "mode {mode:o} owner {owner}"
            );
            if !expect_link {
                assert_eq!(
                    (d.uid(), d.mode() & 0o7777),
                    (0, 0o444),
                    "a copy is root-owned 0444"
                );
            }
        }
        assert!(c.run().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn builds_and_cleans_the_jail_dir() {
        let base = std::env::temp_dir()
            .join(format!("husk-jd-{}", std::process::id()))
            .join("base");
        let exec = std::env::current_exe().unwrap();
        let paths = JailPaths::new(&base, "husk", "sb-1");
        let mut c = Cleanup::new();
        let r = build(&paths, &exec, &[], 1234, 1234, &mut c);
        // Runs as root on the build machines; elsewhere mknod/chown fail and cleanup runs.
        // SAFETY: geteuid takes no arguments.
        let root = unsafe { libc::geteuid() } == 0;
        assert_eq!(r.is_ok(), root, "{r:?}");
        if root {
            assert_eq!(fs::metadata(&paths.root).unwrap().uid(), 1234);
            let kvm = fs::metadata(paths.dev.join("kvm")).unwrap();
            assert_eq!(kvm.mode() & libc::S_IFMT, libc::S_IFCHR);
            assert_eq!(kvm.mode() & 0o777, 0o600);
            assert_eq!((kvm.uid(), kvm.gid()), (1234, 1234));
            assert_eq!(
                fs::metadata(&paths.exec_in_jail).unwrap().len(),
                fs::metadata(&exec).unwrap().len()
            );
            let again = build(&paths, &exec, &[], 1234, 1234, &mut Cleanup::new());
            assert!(matches!(again, Err(JailDirError::Exists(_))));
        }
        assert!(c.run().is_empty());
        assert!(!base.exists(), "every directory the jailer created is gone");
        assert!(
            !base.parent().unwrap().exists(),
            "created parents are gone too"
        );
    }
}
