//! Detects what kind of KVM this machine offers: hardware virtualization (Intel VT-x or
//! AMD-V through `kvm_intel` / `kvm_amd`), PVM (`kvm_pvm`, which runs stock Linux guests
//! only at about 1 M instructions/s), or none.
//!
//! End-to-end tests that boot a real Linux guest need [`KvmKind::Hardware`]; elsewhere
//! they must run inside the emulated test host (`husk-testhost`).

use std::fs::OpenOptions;
use std::path::Path;

/// The kind of KVM found on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// `/dev/kvm` is usable and backed by hardware virtualization.
    Hardware,
    /// `/dev/kvm` is backed by PVM: only tiny or PVM-aware guests run at speed.
    Pvm,
    /// No usable hardware-virt KVM (`/dev/kvm` missing or no `kvm_intel`/`kvm_amd`).
    None,
}

/// The result of [`detect`]: the kind plus a one-line human-readable reason.
#[derive(Debug, Clone)]
pub struct Detection {
    /// What was found.
    pub kind: KvmKind,
    /// Why, in words (names the modules and device node that decided it).
    pub reason: String,
}

/// Inspects `/sys/module` and `/dev/kvm` to classify this host.
pub fn detect() -> Detection {
    detect_at(Path::new("/sys/module"), Path::new("/dev/kvm"))
}

/// [`detect`] with explicit paths, for tests.
pub fn detect_at(sys_module: &Path, dev_kvm: &Path) -> Detection {
    let has = |m: &str| sys_module.join(m).exists();
    let (pvm, intel, amd) = (has("kvm_pvm"), has("kvm_intel"), has("kvm_amd"));
    let usable = OpenOptions::new().read(true).write(true).open(dev_kvm);
    let d = |kind, reason: String| Detection { kind, reason };
    if pvm {
        return d(
            KvmKind::Pvm,
            "kvm_pvm is loaded: KVM is PVM-backed, no hardware virtualization".into(),
        );
    }
    if !intel && !amd {
        return d(
            KvmKind::None,
            "neither kvm_intel nor kvm_amd is loaded: no hardware virtualization".into(),
        );
    }
    let module = if intel { "kvm_intel" } else { "kvm_amd" };
    match usable {
        Ok(_) => d(
            KvmKind::Hardware,
            format!("{module} is loaded and {} is usable", dev_kvm.display()),
        ),
        Err(e) => d(
            KvmKind::None,
            format!(
                "{module} is loaded but {} cannot be opened: {e}",
                dev_kvm.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(mods: &[&str], with_dev: bool) -> (std::path::PathBuf, Detection) {
        let dir = std::env::temp_dir().join(format!(
            "husk-kvmhost-{}-{}",
            std::process::id(),
            mods.join("+")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mod")).unwrap();
        for m in mods {
            std::fs::create_dir_all(dir.join("mod").join(m)).unwrap();
        }
        if with_dev {
            std::fs::write(dir.join("kvm"), b"").unwrap();
        }
        let det = detect_at(&dir.join("mod"), &dir.join("kvm"));
        (dir, det)
    }

    #[test]
    fn classifies_module_sets() {
        let cases: [(&[&str], bool, KvmKind); 5] = [
            (&["kvm", "kvm_pvm"], true, KvmKind::Pvm),
            (&["kvm", "kvm_amd", "kvm_pvm"], true, KvmKind::Pvm),
            (&["kvm"], true, KvmKind::None),
            (&["kvm", "kvm_amd"], false, KvmKind::None),
            (&["kvm", "kvm_intel"], true, KvmKind::Hardware),
        ];
        for (mods, dev, want) in cases {
            let (dir, det) = fake(mods, dev);
            assert_eq!(det.kind, want, "{mods:?} dev={dev}: {}", det.reason);
            assert!(!det.reason.is_empty());
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
