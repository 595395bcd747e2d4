//! The environment a `husk bench` report states: what KVM this is (hardware or PVM),
//! whether the host is bare metal, a VM, or husk's emulated KVM test host, the CPU
//! model and the host kernel.

use std::path::Path;

use super::report::Environment;

/// Detect the environment; `qemu` is the peer binary found (or none).
pub fn detect(qemu: Option<&Path>) -> Environment {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (kvm, kvm_module) = kvm_kind(Path::new("/sys/module"));
    let in_testhost = std::env::var("HUSK_IN_TESTHOST").is_ok_and(|v| v == "1");
    let (host, host_detail) = host_kind(&cpuinfo, in_testhost);
    Environment {
        kvm: kvm.into(),
        kvm_module: kvm_module.map(String::from),
        host: host.into(),
        host_detail,
        cpu_model: cpu_model(&cpuinfo),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        host_kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        husk_version: env!("CARGO_PKG_VERSION").into(),
        qemu: qemu.map(|p| p.display().to_string()),
    }
}

/// (kind, module) from the loaded KVM modules: PVM (as `vstate::vm` detects it) wins
/// over the hardware modules.
pub fn kvm_kind(sys_module: &Path) -> (&'static str, Option<&'static str>) {
    if sys_module == Path::new("/sys/module") && crate::vstate::vm::host_kvm_is_pvm() {
        return ("pvm", Some("kvm_pvm"));
    }
    for (m, kind) in [
        ("kvm_pvm", "pvm"),
        ("kvm_intel", "hardware"),
        ("kvm_amd", "hardware"),
    ] {
        if sys_module.join(m).exists() {
            return (kind, Some(m));
        }
    }
    ("unavailable", None)
}

/// The first `model name` in `/proc/cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// (`direct` | `virtual-machine` | `emulated`, why).
pub fn host_kind(cpuinfo: &str, in_testhost: bool) -> (&'static str, String) {
    let model = cpu_model(cpuinfo);
    if in_testhost || model.contains("TCG") {
        return (
            "emulated",
            format!("husk's emulated KVM test host (QEMU TCG, CPU {model:?}): times are far slower than on hardware"),
        );
    }
    let hypervisor = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "hypervisor"));
    if hypervisor {
        (
            "virtual-machine",
            "the CPU reports a hypervisor: nested KVM".into(),
        )
    } else {
        (
            "direct",
            "bare metal: no hypervisor flag in /proc/cpuinfo".into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCG: &str =
        "processor\t: 0\nmodel name\t: QEMU TCG CPU version 2.5+\nflags\t\t: fpu svm hypervisor\n";
    const METAL: &str = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu svm\n";
    const VM: &str = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu svm hypervisor\n";

    #[test]
    fn host_kind_tells_emulated_vm_and_metal_apart() {
        assert_eq!(host_kind(TCG, false).0, "emulated");
        assert_eq!(host_kind(METAL, true).0, "emulated");
        assert_eq!(host_kind(METAL, false).0, "direct");
        assert_eq!(host_kind(VM, false).0, "virtual-machine");
        assert_eq!(cpu_model(METAL), "AMD EPYC 7B13");
        assert_eq!(cpu_model(""), "unknown");
    }

    #[test]
    fn kvm_kind_from_modules() {
        let dir = std::env::temp_dir().join(format!("husk-bench-env-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(kvm_kind(&dir), ("unavailable", None));
        std::fs::create_dir(dir.join("kvm_amd")).unwrap();
        assert_eq!(kvm_kind(&dir), ("hardware", Some("kvm_amd")));
        std::fs::create_dir(dir.join("kvm_pvm")).unwrap();
        assert_eq!(kvm_kind(&dir), ("pvm", Some("kvm_pvm")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
