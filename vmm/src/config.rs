//! Firecracker's JSON configuration file (`--config-file`), the subset husk honours:
//! `boot-source`, `machine-config`, `vsock`, `entropy`. Unknown fields are refused;
//! Firecracker sections husk does not support are refused by name when they configure
//! something (an empty list or `null`, as Firecracker tooling often writes, is fine).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::builder::{ConsoleConfig, VmResources, VsockConfig};

/// Firecracker sections husk does not support (yet).
const UNSUPPORTED_SECTIONS: &[&str] = &[
    "drives",
    "network-interfaces",
    "balloon",
    "logger",
    "metrics",
    "mmds-config",
    "cpu-config",
    "memory-hotplug",
    "pmem",
    "serial",
];

/// Errors reading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// Not valid JSON or a field is wrong.
    #[error("invalid config file: {0}")]
    Parse(#[source] serde_json::Error),
    /// The top level is not an object.
    #[error("invalid config file: the top level must be a JSON object")]
    NotAnObject,
    /// A Firecracker section husk does not support.
    #[error("config section \"{0}\" is not supported by husk (yet); remove it")]
    UnsupportedSection(String),
    /// A section name neither husk nor Firecracker knows.
    #[error("unknown config section \"{0}\"; husk supports boot-source, machine-config, vsock and entropy")]
    UnknownSection(String),
    /// A required section is missing.
    #[error("the config file has no \"{0}\" section")]
    MissingSection(&'static str),
    /// A field value husk does not support.
    #[error("{0} is not supported by husk (yet)")]
    UnsupportedValue(&'static str),
}

/// `boot-source`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel image path.
    pub kernel_image_path: PathBuf,
    /// Initrd path.
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub boot_args: Option<String>,
}

/// `machine-config`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs.
    pub vcpu_count: u8,
    /// Guest RAM in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (only `false`).
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking (accepted; used by snapshots later).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages (only "None").
    #[serde(default)]
    pub huge_pages: Option<String>,
    /// CPU template (not supported; only absent or null).
    #[serde(default)]
    pub cpu_template: Option<String>,
}

/// `vsock`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockSection {
    /// Guest CID.
    pub guest_cid: u64,
    /// Host Unix socket.
    pub uds_path: PathBuf,
    /// Device id (accepted for compatibility, unused).
    #[serde(default)]
    pub vsock_id: Option<String>,
}

/// `entropy`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EntropySection {
    /// Rate limiter (not supported; only absent or null).
    #[serde(default)]
    pub rate_limiter: Option<serde_json::Value>,
}

/// The parsed config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel, initrd and command line.
    #[serde(rename = "boot-source")]
    pub boot_source: BootSource,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    /// virtio-vsock.
    #[serde(default)]
    pub vsock: Option<VsockSection>,
    /// virtio-rng.
    #[serde(default)]
    pub entropy: Option<EntropySection>,
}

fn is_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

impl VmConfig {
    /// Parse a config file's text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(ConfigError::Parse)?;
        let obj = value.as_object_mut().ok_or(ConfigError::NotAnObject)?;
        let keys: Vec<String> = obj.keys().cloned().collect();
        for k in keys {
            if UNSUPPORTED_SECTIONS.contains(&k.as_str()) {
                if obj.get(&k).is_some_and(|v| !is_empty(v)) {
                    return Err(ConfigError::UnsupportedSection(k));
                }
                obj.remove(&k);
            } else if !matches!(
                k.as_str(),
                "boot-source" | "machine-config" | "vsock" | "entropy"
            ) {
                return Err(ConfigError::UnknownSection(k));
            }
        }
        if !obj.contains_key("boot-source") {
            return Err(ConfigError::MissingSection("boot-source"));
        }
        let cfg: VmConfig = serde_json::from_value(value).map_err(ConfigError::Parse)?;
        if let Some(m) = &cfg.machine_config {
            if m.smt {
                return Err(ConfigError::UnsupportedValue("machine-config.smt = true"));
            }
            if m.huge_pages.as_deref().is_some_and(|h| h != "None") {
                return Err(ConfigError::UnsupportedValue(
                    "machine-config.huge_pages other than \"None\"",
                ));
            }
            if m.cpu_template.as_deref().is_some_and(|t| t != "None") {
                return Err(ConfigError::UnsupportedValue("machine-config.cpu_template"));
            }
        }
        if let Some(e) = &cfg.entropy {
            if e.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
                return Err(ConfigError::UnsupportedValue("entropy.rate_limiter"));
            }
        }
        Ok(cfg)
    }

    /// Read and parse a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        Self::parse(&text)
    }

    /// The VM resources this config describes (validated later by the builder).
    pub fn to_resources(&self) -> VmResources {
        let mut r = VmResources::new(self.boot_source.kernel_image_path.clone());
        r.initrd = self.boot_source.initrd_path.clone();
        r.cmdline = self.boot_source.boot_args.clone();
        if let Some(m) = &self.machine_config {
            r.vcpus = m.vcpu_count;
            r.mem_mib = m.mem_size_mib;
        }
        r.vsock = self.vsock.as_ref().map(|v| VsockConfig {
            guest_cid: v.guest_cid,
            uds_path: v.uds_path.clone(),
        });
        r.entropy = self.entropy.is_some();
        r.console = ConsoleConfig::Stdout;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
      "boot-source": {
        "kernel_image_path": "/srv/vmlinux",
        "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
        "initrd_path": "/srv/initrd.cpio"
      },
      "drives": [],
      "machine-config": {
        "vcpu_count": 2,
        "mem_size_mib": 1024,
        "smt": false,
        "track_dirty_pages": false,
        "huge_pages": "None"
      },
      "network-interfaces": [],
      "vsock": { "guest_cid": 3, "uds_path": "./v.sock", "vsock_id": "vsock0" },
      "entropy": { "rate_limiter": null },
      "balloon": null
    }"#;

    #[test]
    fn parses_firecracker_config() {
        let c = VmConfig::parse(FULL).unwrap();
        let r = c.to_resources();
        assert_eq!(r.kernel, PathBuf::from("/srv/vmlinux"));
        assert_eq!(r.initrd, Some(PathBuf::from("/srv/initrd.cpio")));
        assert_eq!(
            r.cmdline.as_deref(),
            Some("console=ttyS0 reboot=k panic=1 pci=off")
        );
        assert_eq!((r.vcpus, r.mem_mib), (2, 1024));
        assert_eq!(r.vsock.as_ref().map(|v| v.guest_cid), Some(3));
        assert!(r.entropy);
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let c = VmConfig::parse(r#"{"boot-source": {"kernel_image_path": "k"}}"#).unwrap();
        let r = c.to_resources();
        assert_eq!((r.vcpus, r.mem_mib, r.entropy), (1, 128, false));
        assert_eq!(r.cmdline, None);
    }

    #[test]
    fn rejects_unsupported_and_unknown() {
        let drives = r#"{"boot-source": {"kernel_image_path": "k"},
            "drives": [{"drive_id": "rootfs", "path_on_host": "r.ext4", "is_root_device": true, "is_read_only": false}]}"#;
        let e = VmConfig::parse(drives).unwrap_err();
        assert!(
            matches!(e, ConfigError::UnsupportedSection(ref s) if s == "drives"),
            "{e}"
        );
        assert!(e.to_string().contains("not supported by husk"));

        let e = VmConfig::parse(r#"{"boot-source": {"kernel_image_path": "k"}, "gpu": {}}"#)
            .unwrap_err();
        assert!(matches!(e, ConfigError::UnknownSection(ref s) if s == "gpu"));

        let e =
            VmConfig::parse(r#"{"boot-source": {"kernel_image_path": "k", "kernel_path": "x"}}"#)
                .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");

        let e = VmConfig::parse(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#)
            .unwrap_err();
        assert!(matches!(e, ConfigError::MissingSection("boot-source")));

        let smt = r#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 64, "smt": true}}"#;
        assert!(matches!(
            VmConfig::parse(smt),
            Err(ConfigError::UnsupportedValue(_))
        ));

        let rl = r#"{"boot-source": {"kernel_image_path": "k"}, "entropy": {"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}}"#;
        assert!(matches!(
            VmConfig::parse(rl),
            Err(ConfigError::UnsupportedValue("entropy.rate_limiter"))
        ));

        assert!(matches!(
            VmConfig::parse("[1]"),
            Err(ConfigError::NotAnObject)
        ));
        assert!(matches!(VmConfig::parse("{"), Err(ConfigError::Parse(_))));
    }
}
