//! Where a jail lives on the host: `<base>/<exec file name>/<id>/root`.

use std::path::{Path, PathBuf};

/// Device nodes the VMM may need, as host paths; `required` ones must exist.
pub const DEVICES: &[(&str, bool)] = &[
    ("/dev/kvm", true),
    ("/dev/urandom", true),
    ("/dev/userfaultfd", false),
];

/// Host paths of one jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPaths {
    /// `<base>/<exec name>`, shared by all jails of this VMM binary.
    pub exec_dir: PathBuf,
    /// `<base>/<exec name>/<id>`.
    pub id_dir: PathBuf,
    /// `<base>/<exec name>/<id>/root`: becomes `/` of the VMM.
    pub root: PathBuf,
    /// The VMM binary inside the jail (host path).
    pub exec_in_jail: PathBuf,
    /// Path of the VMM binary as seen from inside the jail (`/<exec name>`).
    pub exec_in_chroot: PathBuf,
    /// `<root>/dev`.
    pub dev: PathBuf,
    /// `<root>/<exec name>.pid`, written in daemon mode.
    pub pid_file: PathBuf,
}

impl JailPaths {
    /// Builds the paths; `exec_name` and `id` are already validated single components.
    pub fn new(base: &Path, exec_name: &str, id: &str) -> Self {
        let exec_dir = base.join(exec_name);
        let id_dir = exec_dir.join(id);
        let root = id_dir.join("root");
        Self {
            exec_in_jail: root.join(exec_name),
            exec_in_chroot: Path::new("/").join(exec_name),
            dev: root.join("dev"),
            pid_file: root.join(format!("{exec_name}.pid")),
            exec_dir,
            id_dir,
            root,
        }
    }

    /// Host path of a device node inside the jail, e.g. `/dev/kvm` -> `<root>/dev/kvm`.
    pub fn device_in_jail(&self, host_dev: &Path) -> Option<PathBuf> {
        host_dev.file_name().map(|n| self.dev.join(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = JailPaths::new(Path::new("/srv/jailer"), "husk", "sb-1");
        assert_eq!(p.exec_dir, Path::new("/srv/jailer/husk"));
        assert_eq!(p.id_dir, Path::new("/srv/jailer/husk/sb-1"));
        assert_eq!(p.root, Path::new("/srv/jailer/husk/sb-1/root"));
        assert_eq!(p.exec_in_jail, Path::new("/srv/jailer/husk/sb-1/root/husk"));
        assert_eq!(p.exec_in_chroot, Path::new("/husk"));
        assert_eq!(p.dev, Path::new("/srv/jailer/husk/sb-1/root/dev"));
        assert_eq!(p.pid_file, Path::new("/srv/jailer/husk/sb-1/root/husk.pid"));
        assert_eq!(
            p.device_in_jail(Path::new("/dev/kvm")).unwrap(),
            Path::new("/srv/jailer/husk/sb-1/root/dev/kvm")
        );
    }
}
