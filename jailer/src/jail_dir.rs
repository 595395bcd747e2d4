//! The jail directory on the host: `<base>/<exec name>/<id>/root` holding the VMM
//! binary, the `--include` files and only the device nodes the VMM needs.
//!
//! The root may be pre-staged by the caller, as Firecracker's users do (kernel, rootfs,
//! config and `v.sock_<port>` listeners put there before the jailer starts). Such a root is
//! validated ([`validate_pre_staged`]) and kept: the jailer adds its files next to the
//! pre-staged ones, refuses to replace any of them, and on cleanup removes only what it
//! created and gives the root its owner back.

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
    /// A pre-staged jail directory is a symlink or not a directory.
    #[error("pre-staged jail directory {0:?} must be a real directory, not a symlink or a file")]
    NotARealDir(PathBuf),
    /// A pre-staged jail root does not resolve to the expected path.
    #[error("pre-staged jail root {0:?} resolves to {1:?}: it must be the real directory <chroot-base-dir>/<exec name>/<id>/root")]
    UnexpectedPath(PathBuf, PathBuf),
    /// A pre-staged jail directory has an owner other than root or the jail uid.
    #[error(
        "pre-staged jail directory {0:?} is owned by uid {1}: it must be owned by root or by --uid"
    )]
    BadOwner(PathBuf, u32),
    /// A pre-staged jail directory is writable by group or others.
    #[error("pre-staged jail directory {0:?} has mode {1:o}: it must not be writable by group or others")]
    Writable(PathBuf, u32),
    /// A pre-staged jail directory cannot be inspected.
    #[error("cannot inspect the pre-staged jail directory {0:?}")]
    Inspect(PathBuf, #[source] io::Error),
    /// A file the jailer must create is already in the pre-staged root.
    #[error("{0:?} is already in the jail root, but the jailer creates it (VMM binary, --include, pid file, device node): another sandbox runs with this --id, or a pre-staged file has that name; pick a new --id or remove the file")]
    Conflict(PathBuf),
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

/// Whether the jail root was made by this jailer or found pre-staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootOrigin {
    /// Created by the jailer: the whole tree is removed on cleanup.
    Created,
    /// Found in place: kept; only what the jailer added is removed on cleanup.
    PreStaged,
}

/// Builds the jail directory: dirs, the VMM binary and the includes (hard links when
/// [`linkable`] and on the same filesystem, else root-owned copies, 0755 / 0444), `dev/` with the device nodes owned by
/// uid/gid, and a root owned by uid/gid so the VMM can create its sockets. An existing
/// root is accepted once [`validate_pre_staged`] passes and nothing the jailer creates
/// is in it already; it is checked completely before anything is added.
pub fn build(
    paths: &JailPaths,
    exec_file: &Path,
    includes: &[PathBuf],
    uid: u32,
    gid: u32,
    cleanup: &mut Cleanup,
) -> Result<RootOrigin, JailDirError> {
    create_dirs(&paths.id_dir, &paths.exec_dir, cleanup)?;
    let origin = match fs::create_dir(&paths.root) {
        Ok(()) => {
            cleanup.push(Undo::Tree(paths.root.clone()));
            fs::set_permissions(&paths.root, fs::Permissions::from_mode(0o755))
                .map_err(|e| JailDirError::Chmod(paths.root.clone(), e))?;
            RootOrigin::Created
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            validate_pre_staged(paths, uid)?;
            check_no_conflicts(paths, includes)?;
            RootOrigin::PreStaged
        }
        Err(e) => return Err(JailDirError::CreateDir(paths.root.clone(), e)),
    };
    put_file(exec_file, &paths.exec_in_jail, 0o755, cleanup)?;
    for inc in includes {
        put_file(inc, &include_target(paths, inc), 0o444, cleanup)?;
    }
    match fs::create_dir(&paths.dev) {
        Ok(()) => cleanup.push(Undo::Tree(paths.dev.clone())),
        // Pre-staged `dev/`: check_no_conflicts made sure it is a real directory.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && origin == RootOrigin::PreStaged => {}
        Err(e) => return Err(JailDirError::CreateDir(paths.dev.clone(), e)),
    }
    for (dev, required) in DEVICES {
        make_device(paths, Path::new(dev), *required, uid, gid, cleanup)?;
    }
    if origin == RootOrigin::PreStaged {
        let meta = fs::symlink_metadata(&paths.root)
            .map_err(|e| JailDirError::Inspect(paths.root.clone(), e))?;
        cleanup.push(Undo::Owner(paths.root.clone(), meta.uid(), meta.gid()));
    }
    chown(&paths.root, uid, gid)?;
    Ok(origin)
}

fn include_target(paths: &JailPaths, inc: &Path) -> PathBuf {
    paths.root.join(inc.file_name().unwrap_or(inc.as_os_str()))
}

/// Checks a jail root that exists already, the way Firecracker's jailer accepts one:
/// `<exec name>/`, `<id>/` and `root/` are real directories (no symlinks, so the root
/// resolves to exactly `<base>/<exec name>/<id>/root`), owned by root or the jail uid,
/// not writable by group or others (nobody else can swap the directory the jailer
/// pivots into).
pub fn validate_pre_staged(paths: &JailPaths, uid: u32) -> Result<(), JailDirError> {
    for dir in [&paths.exec_dir, &paths.id_dir, &paths.root] {
        let meta =
            fs::symlink_metadata(dir).map_err(|e| JailDirError::Inspect(dir.to_path_buf(), e))?;
        if !meta.file_type().is_dir() {
            return Err(JailDirError::NotARealDir(dir.to_path_buf()));
        }
        if meta.uid() != 0 && meta.uid() != uid {
            return Err(JailDirError::BadOwner(dir.to_path_buf(), meta.uid()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(JailDirError::Writable(
                dir.to_path_buf(),
                meta.mode() & 0o7777,
            ));
        }
    }
    let base = paths.exec_dir.parent().unwrap_or(Path::new("/"));
    let expected = fs::canonicalize(base)
        .map_err(|e| JailDirError::Inspect(base.to_path_buf(), e))?
        .join(paths.root.strip_prefix(base).unwrap_or(&paths.root));
    let real =
        fs::canonicalize(&paths.root).map_err(|e| JailDirError::Inspect(paths.root.clone(), e))?;
    if real != expected {
        return Err(JailDirError::UnexpectedPath(paths.root.clone(), real));
    }
    Ok(())
}

/// Refuses a pre-staged root that already holds something the jailer creates: it never
/// replaces (or writes through a hard link to) a file it did not put there. A pre-staged
/// `dev/` must be a real directory; the device nodes in it must not exist yet.
fn check_no_conflicts(paths: &JailPaths, includes: &[PathBuf]) -> Result<(), JailDirError> {
    let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
    let mut mine = vec![paths.exec_in_jail.clone(), paths.pid_file.clone()];
    mine.extend(includes.iter().map(|inc| include_target(paths, inc)));
    match fs::symlink_metadata(&paths.dev) {
        Ok(m) if !m.file_type().is_dir() => {
            return Err(JailDirError::NotARealDir(paths.dev.clone()))
        }
        Ok(_) => mine.extend(
            DEVICES
                .iter()
                .filter_map(|(d, _)| paths.device_in_jail(Path::new(d))),
        ),
        Err(_) => {}
    }
    match mine.into_iter().find(|p| exists(p)) {
        Some(p) => Err(JailDirError::Conflict(p)),
        None => Ok(()),
    }
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
            // Same id again while the first jail is there: refused, nothing touched.
            let again = build(&paths, &exec, &[], 1234, 1234, &mut Cleanup::new());
            assert!(
                matches!(&again, Err(JailDirError::Conflict(p)) if *p == paths.exec_in_jail),
                "{again:?}"
            );
        }
        assert!(c.run().is_empty());
        assert!(!base.exists(), "every directory the jailer created is gone");
        assert!(
            !base.parent().unwrap().exists(),
            "created parents are gone too"
        );
    }
    fn require_root() {
        // SAFETY: geteuid takes no arguments.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "mknod and chown need root: run the jailer tests as root (scripts/test does)"
        );
    }

    /// `<tmp>/<tag>/base` with `husk/sb/root` pre-staged as root-owned 0755 directories.
    fn pre_staged(tag: &str) -> (PathBuf, JailPaths) {
        let top = std::env::temp_dir().join(format!("husk-jd-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&top);
        let paths = JailPaths::new(&top.join("base"), "husk", "sb");
        fs::create_dir_all(&paths.root).unwrap();
        for d in [&paths.exec_dir, &paths.id_dir, &paths.root] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        (top, paths)
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn keeps_a_pre_staged_root_and_removes_only_its_own_files() {
        require_root();
        let (top, paths) = pre_staged("keep");
        fs::write(paths.root.join("vmlinux"), b"kernel").unwrap();
        let listener =
            std::os::unix::net::UnixListener::bind(paths.root.join("v.sock_5000")).unwrap();
        let inc = top.join("vm.json");
        fs::write(&inc, b"{}").unwrap();
        let exec = std::env::current_exe().unwrap();
        let mut c = Cleanup::new();
        let origin = build(&paths, &exec, &[inc], 1234, 1235, &mut c).unwrap();
        assert_eq!(origin, RootOrigin::PreStaged);
        assert_eq!(
            listing(&paths.root),
            ["dev", "husk", "v.sock_5000", "vm.json", "vmlinux"]
        );
        let meta = fs::metadata(&paths.root).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (1234, 1235),
            "the VMM may create its sockets"
        );
        assert!(
            !c.actions().contains(&Undo::Tree(paths.root.clone())),
            "a pre-staged root is never removed as a whole: {:?}",
            c.actions()
        );
        fs::write(&paths.pid_file, b"1\n").unwrap();
        c.push(Undo::File(paths.pid_file.clone())); // as jail::run does
        assert!(c.run().is_empty());
        assert_eq!(listing(&paths.root), ["v.sock_5000", "vmlinux"]);
        assert_eq!(fs::read(paths.root.join("vmlinux")).unwrap(), b"kernel");
        let meta = fs::metadata(&paths.root).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "owner given back");
        // The pre-staged listener still works after cleanup.
        let _client =
            std::os::unix::net::UnixStream::connect(paths.root.join("v.sock_5000")).unwrap();
        assert!(listener.accept().is_ok());
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn reuses_a_pre_staged_dev_dir_and_keeps_it() {
        require_root();
        let (top, paths) = pre_staged("dev");
        fs::create_dir(&paths.dev).unwrap();
        fs::write(paths.dev.join("keep-me"), b"").unwrap();
        let exec = std::env::current_exe().unwrap();
        let mut c = Cleanup::new();
        build(&paths, &exec, &[], 1234, 1234, &mut c).unwrap();
        assert!(listing(&paths.dev).contains(&"kvm".to_string()));
        assert!(c.run().is_empty());
        assert_eq!(listing(&paths.root), ["dev"]);
        assert_eq!(listing(&paths.dev), ["keep-me"]);
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn refuses_unsafe_pre_staged_roots_and_touches_nothing() {
        require_root();
        let exec = std::env::current_exe().unwrap();
        let inc = std::env::temp_dir().join(format!("husk-jd-inc-{}", std::process::id()));
        fs::write(&inc, b"x").unwrap();
        type Case<'a> = (&'a str, &'a dyn Fn(&JailPaths), fn(&JailDirError) -> bool);
        let cases: [Case; 7] = [
            (
                "root is a symlink",
                &|p: &JailPaths| {
                    let elsewhere = p.id_dir.join("elsewhere");
                    fs::rename(&p.root, &elsewhere).unwrap();
                    std::os::unix::fs::symlink(&elsewhere, &p.root).unwrap();
                },
                |e| matches!(e, JailDirError::NotARealDir(_)),
            ),
            (
                "id dir is a symlink",
                &|p: &JailPaths| {
                    let other = p.exec_dir.join("other");
                    fs::rename(&p.id_dir, &other).unwrap();
                    std::os::unix::fs::symlink(&other, &p.id_dir).unwrap();
                },
                |e| matches!(e, JailDirError::NotARealDir(_)),
            ),
            (
                "root is a file",
                &|p: &JailPaths| {
                    fs::remove_dir(&p.root).unwrap();
                    fs::write(&p.root, b"").unwrap();
                },
                |e| matches!(e, JailDirError::NotARealDir(_)),
            ),
            (
                "root world-writable",
                &|p: &JailPaths| {
                    fs::set_permissions(&p.root, fs::Permissions::from_mode(0o777)).unwrap()
                },
                |e| matches!(e, JailDirError::Writable(_, 0o777)),
            ),
            (
                "root owned by another uid",
                &|p: &JailPaths| std::os::unix::fs::chown(&p.root, Some(999), None).unwrap(),
                |e| matches!(e, JailDirError::BadOwner(_, 999)),
            ),
            (
                "an include's name is taken",
                &|p: &JailPaths| fs::write(p.root.join(inc_name()), b"pre-staged").unwrap(),
                |e| matches!(e, JailDirError::Conflict(_)),
            ),
            (
                "dev is a symlink",
                &|p: &JailPaths| std::os::unix::fs::symlink("/dev", &p.dev).unwrap(),
                |e| matches!(e, JailDirError::NotARealDir(_)),
            ),
        ];
        fn inc_name() -> String {
            format!("husk-jd-inc-{}", std::process::id())
        }
        for (i, (what, stage, expect)) in cases.iter().enumerate() {
            let (top, paths) = pre_staged(&format!("bad{i}"));
            stage(&paths);
            let before = fs::read_dir(&paths.id_dir).unwrap().count();
            let mut c = Cleanup::new();
            let r = build(
                &paths,
                &exec,
                std::slice::from_ref(&inc),
                1234,
                1234,
                &mut c,
            );
            match &r {
                Err(e) => assert!(expect(e), "{what}: wrong error {e:?}"),
                Ok(o) => panic!("{what}: accepted as {o:?}"),
            }
            assert!(c.actions().is_empty(), "{what}: created {:?}", c.actions());
            assert_eq!(
                fs::read_dir(&paths.id_dir).unwrap().count(),
                before,
                "{what}"
            );
            assert!(!paths.exec_in_jail.exists(), "{what}");
            fs::remove_dir_all(&top).unwrap();
        }
        fs::remove_file(&inc).unwrap();
    }
}
