//! Firecracker's configuration types, shared by the JSON config file (`--config-file`)
//! and the API bodies (`PUT /boot-source` takes a [`BootSource`], and so on): the
//! subset husk honours is `boot-source`, `machine-config`, `drives`, `vsock`, `entropy`,
//! `logger` and `metrics`. Unknown fields are refused; Firecracker sections husk does not
//! support are refused by name when they configure something (an empty list or
//! `null`, as Firecracker tooling often writes, is fine).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::builder::{ConsoleConfig, DriveConfig, VmResources, VsockConfig};

/// Firecracker sections husk does not support (yet).
const UNSUPPORTED_SECTIONS: &[&str] = &[
    "network-interfaces",
    "balloon",
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
    #[error("unknown config section \"{0}\"; husk supports boot-source, machine-config, drives, vsock, entropy, logger and metrics")]
    UnknownSection(String),
    /// A required section is missing.
    #[error("the config file has no \"{0}\" section")]
    MissingSection(&'static str),
    /// A field value husk does not support.
    #[error("{0} is not supported by husk (yet)")]
    UnsupportedValue(&'static str),
    /// A field value out of range.
    #[error("{0}")]
    Invalid(String),
}

/// `boot-source` (also the body of `PUT /boot-source`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel image path.
    pub kernel_image_path: PathBuf,
    /// Initrd path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `machine-config` (also the body of `PUT /machine-config` and the answer of `GET`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
    /// CPU template (not supported; only absent, null or "None").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

impl Default for MachineConfig {
    /// Firecracker's defaults: 1 vCPU, 128 MiB.
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: Some("None".into()),
            cpu_template: None,
        }
    }
}

impl MachineConfig {
    /// Check the values husk supports (ranges are checked again at boot).
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::builder::{MAX_VCPUS, MIN_MEM_MIB};
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(ConfigError::Invalid(format!(
                "vcpu_count {} is out of range: use 1 to {MAX_VCPUS}",
                self.vcpu_count
            )));
        }
        if self.mem_size_mib < MIN_MEM_MIB {
            return Err(ConfigError::Invalid(format!(
                "mem_size_mib {} is too small: use at least {MIN_MEM_MIB}",
                self.mem_size_mib
            )));
        }
        if self.smt {
            return Err(ConfigError::UnsupportedValue("machine-config.smt = true"));
        }
        if self.huge_pages.as_deref().is_some_and(|h| h != "None") {
            return Err(ConfigError::UnsupportedValue(
                "machine-config.huge_pages other than \"None\"",
            ));
        }
        if self.cpu_template.as_deref().is_some_and(|t| t != "None") {
            return Err(ConfigError::UnsupportedValue("machine-config.cpu_template"));
        }
        Ok(())
    }

    /// Apply a `PATCH /machine-config` body: fields it has replace ours.
    pub fn patched(&self, u: &MachineConfigUpdate) -> Self {
        Self {
            vcpu_count: u.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: u.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: u.smt.unwrap_or(self.smt),
            track_dirty_pages: u.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: u.huge_pages.clone().or_else(|| self.huge_pages.clone()),
            cpu_template: u.cpu_template.clone().or_else(|| self.cpu_template.clone()),
        }
    }
}

/// The body of `PATCH /machine-config`: any subset of [`MachineConfig`]'s fields.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// vCPUs.
    pub vcpu_count: Option<u8>,
    /// Guest RAM in MiB.
    pub mem_size_mib: Option<u64>,
    /// SMT.
    pub smt: Option<bool>,
    /// Dirty page tracking.
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    pub huge_pages: Option<String>,
    /// CPU template.
    pub cpu_template: Option<String>,
}

impl MachineConfigUpdate {
    /// Whether the body set no field at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `logger` (also the body of `PUT /logger`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// File or named pipe for the log (default: stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Error, Warning, Info, Debug, Trace or Off (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Print the level on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print the source file and line on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log from this module path (prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl LoggerConfig {
    /// Check the level name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.level {
            Some(l) if crate::logger::parse_level(l).is_none() => Err(ConfigError::Invalid(
                format!("unknown log level {l:?}: use Error, Warning, Info, Debug, Trace or Off"),
            )),
            _ => Ok(()),
        }
    }
}

/// `metrics` (also the body of `PUT /metrics`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File or named pipe the metrics are flushed to, one JSON object per flush.
    pub metrics_path: PathBuf,
    /// Add the microVM id as a top-level `id` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit_id: Option<bool>,
    /// Operator-defined strings written under `properties` on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

/// `vsock` (also the body of `PUT /vsock`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockSection {
    /// Guest CID.
    pub guest_cid: u64,
    /// Host Unix socket.
    pub uds_path: PathBuf,
    /// Device id (accepted for compatibility, unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

impl VsockSection {
    /// Check the CID range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.guest_cid < 3 || self.guest_cid > u64::from(u32::MAX - 1) {
            return Err(ConfigError::Invalid(format!(
                "vsock guest CID {} is invalid: use a value from 3 to 4294967294",
                self.guest_cid
            )));
        }
        if self.uds_path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("vsock uds_path is empty".into()));
        }
        Ok(())
    }
}

/// One entry of `drives` (also the body of `PUT /drives/{drive_id}`): a raw image file
/// on virtio-blk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DriveSection {
    /// Drive id (alphanumeric or `_`); the guest reads it as the disk serial.
    pub drive_id: String,
    /// The image file on the host.
    pub path_on_host: PathBuf,
    /// The guest's root filesystem: attached first (`/dev/vda`) and named on the kernel
    /// command line (`root=/dev/vda ro|rw`, or `root=PARTUUID=<partuuid>`).
    pub is_root_device: bool,
    /// Opened read-only: the guest sees a read-only disk and writes get an I/O error.
    pub is_read_only: bool,
    /// Root partition's unique id, used in `root=` instead of `/dev/vda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
}

/// Firecracker's rule for resource ids: non-empty, alphanumeric or `_`.
pub fn valid_resource_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c == '_' || c.is_alphanumeric())
}

impl DriveSection {
    /// Check the id, the path and the partuuid.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_resource_id(&self.drive_id) {
            return Err(ConfigError::Invalid(format!(
                "drive_id {:?} is invalid: use letters, digits and underscores",
                self.drive_id
            )));
        }
        if self.path_on_host.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(format!(
                "drive {}: path_on_host is empty",
                self.drive_id
            )));
        }
        if let Some(p) = &self.partuuid {
            if !self.is_root_device {
                return Err(ConfigError::Invalid(format!(
                    "drive {}: partuuid is only used for the root device",
                    self.drive_id
                )));
            }
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(ConfigError::Invalid(format!(
                    "drive {}: partuuid {p:?} is invalid: use hex digits and dashes",
                    self.drive_id
                )));
            }
        }
        Ok(())
    }
}

impl DriveSection {
    /// The builder's view of this drive.
    pub fn to_drive_config(&self) -> DriveConfig {
        DriveConfig {
            id: self.drive_id.clone(),
            path: self.path_on_host.clone(),
            root: self.is_root_device,
            read_only: self.is_read_only,
            partuuid: self.partuuid.clone(),
        }
    }
}

/// Check a whole drive list: each drive, unique ids, at most one root device.
pub fn validate_drives(drives: &[DriveSection]) -> Result<(), ConfigError> {
    for (i, d) in drives.iter().enumerate() {
        d.validate()?;
        if drives[..i].iter().any(|o| o.drive_id == d.drive_id) {
            return Err(ConfigError::Invalid(format!(
                "drive id {} is used twice",
                d.drive_id
            )));
        }
    }
    if drives.iter().filter(|d| d.is_root_device).count() > 1 {
        return Err(ConfigError::Invalid(
            "more than one drive has is_root_device = true: a VM has one root device".into(),
        ));
    }
    Ok(())
}

/// `entropy` (also the body of `PUT /entropy`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EntropySection {
    /// Rate limiter (not supported; only absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

impl EntropySection {
    /// Refuse a rate limiter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(ConfigError::UnsupportedValue("entropy.rate_limiter"));
        }
        Ok(())
    }
}

/// The whole configuration: a parsed config file, or what the API set so far (then
/// `boot-source` may still be missing). `GET /vm/config` answers with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel, initrd and command line.
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    /// virtio-blk drives, in configuration order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveSection>,
    /// virtio-vsock.
    #[serde(default)]
    pub vsock: Option<VsockSection>,
    /// virtio-rng.
    #[serde(default)]
    pub entropy: Option<EntropySection>,
    /// Logging.
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    /// Metrics.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
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
            } else if k == "drives" && obj.get(&k).is_some_and(serde_json::Value::is_null) {
                // Firecracker tooling writes `"drives": null` for "no drives".
                obj.remove(&k);
            } else if !matches!(
                k.as_str(),
                "boot-source"
                    | "machine-config"
                    | "drives"
                    | "vsock"
                    | "entropy"
                    | "logger"
                    | "metrics"
            ) {
                return Err(ConfigError::UnknownSection(k));
            }
        }
        if !obj.contains_key("boot-source") {
            return Err(ConfigError::MissingSection("boot-source"));
        }
        let cfg: VmConfig = serde_json::from_value(value).map_err(ConfigError::Parse)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every section that is present.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(m) = &self.machine_config {
            m.validate()?;
        }
        if let Some(e) = &self.entropy {
            e.validate()?;
        }
        validate_drives(&self.drives)?;
        if let Some(v) = &self.vsock {
            v.validate()?;
        }
        if let Some(l) = &self.logger {
            l.validate()?;
        }
        Ok(())
    }

    /// The configuration in Firecracker's `GET /vm/config` shape: every section key
    /// present (`null` or `[]` for what is not configured or not supported), which
    /// [`VmConfig::parse`] accepts back.
    pub fn to_full_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "balloon": null,
            "drives": self.drives,
            "boot-source": self.boot_source,
            "cpu-config": null,
            "logger": self.logger,
            "machine-config": self.machine_config.clone().unwrap_or_default(),
            "metrics": self.metrics,
            "mmds-config": null,
            "network-interfaces": [],
            "vsock": self.vsock,
            "entropy": self.entropy,
        });
        if let Some(o) = v.as_object_mut() {
            // Firecracker tooling writes these as null or []: keep the same shape.
            o.entry("cpu-config").or_insert(serde_json::Value::Null);
        }
        v
    }

    /// Read and parse a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        Self::parse(&text)
    }

    /// The VM resources this config describes (validated later by the builder).
    pub fn to_resources(&self) -> Result<VmResources, ConfigError> {
        let boot = self
            .boot_source
            .as_ref()
            .ok_or(ConfigError::MissingSection("boot-source"))?;
        let mut r = VmResources::new(boot.kernel_image_path.clone());
        r.initrd = boot.initrd_path.clone();
        r.cmdline = boot.boot_args.clone();
        if let Some(m) = &self.machine_config {
            r.vcpus = m.vcpu_count;
            r.mem_mib = m.mem_size_mib;
        }
        r.vsock = self.vsock.as_ref().map(|v| VsockConfig {
            guest_cid: v.guest_cid,
            uds_path: v.uds_path.clone(),
        });
        r.entropy = self.entropy.is_some();
        r.drives = self
            .drives
            .iter()
            .map(DriveSection::to_drive_config)
            .collect();
        r.console = ConsoleConfig::Stdout;
        Ok(r)
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
        let r = c.to_resources().unwrap();
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
        let r = c.to_resources().unwrap();
        assert_eq!((r.vcpus, r.mem_mib, r.entropy), (1, 128, false));
        assert_eq!(r.cmdline, None);
    }

    #[test]
    fn rejects_unsupported_and_unknown() {
        let e = VmConfig::parse(
            r#"{"boot-source": {"kernel_image_path": "k"}, "balloon": {"amount_mib": 1}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, ConfigError::UnsupportedSection(ref s) if s == "balloon"),
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
        let cid = r#"{"boot-source": {"kernel_image_path": "k"}, "vsock": {"guest_cid": 2, "uds_path": "/v"}}"#;
        assert!(VmConfig::parse(cid)
            .unwrap_err()
            .to_string()
            .contains("CID 2"));
        let lvl = r#"{"boot-source": {"kernel_image_path": "k"}, "logger": {"level": "Loud"}}"#;
        assert!(VmConfig::parse(lvl)
            .unwrap_err()
            .to_string()
            .contains("Loud"));
    }

    #[test]
    fn full_json_round_trips_through_parse() {
        let mut c = VmConfig::parse(FULL).unwrap();
        c.logger = Some(LoggerConfig {
            level: Some("Info".into()),
            ..Default::default()
        });
        let json = c.to_full_json();
        assert_eq!(json["drives"], serde_json::json!([]));
        assert_eq!(json["machine-config"]["vcpu_count"], 2);
        assert_eq!(json["vsock"]["guest_cid"], 3);
        assert!(json["metrics"].is_null());
        let back = VmConfig::parse(&json.to_string()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn drives_parse_validate_and_round_trip() {
        let text = r#"{"boot-source": {"kernel_image_path": "k"},
            "drives": [
              {"drive_id": "rootfs", "path_on_host": "r.ext4", "is_root_device": true, "is_read_only": true},
              {"drive_id": "data_1", "path_on_host": "d.img", "is_root_device": false, "is_read_only": false}
            ]}"#;
        let c = VmConfig::parse(text).unwrap();
        let r = c.to_resources().unwrap();
        assert_eq!(r.drives.len(), 2);
        assert_eq!(
            r.drives[0],
            DriveConfig {
                id: "rootfs".into(),
                path: PathBuf::from("r.ext4"),
                root: true,
                read_only: true,
                partuuid: None,
            }
        );
        assert!(!r.drives[1].root && !r.drives[1].read_only);
        let json = c.to_full_json();
        assert_eq!(json["drives"][1]["drive_id"], "data_1");
        assert_eq!(VmConfig::parse(&json.to_string()).unwrap().drives, c.drives);
        // null and [] mean no drives.
        for none in ["null", "[]"] {
            let t = format!(r#"{{"boot-source": {{"kernel_image_path": "k"}}, "drives": {none}}}"#);
            assert!(VmConfig::parse(&t).unwrap().drives.is_empty());
        }
        let bad = |drives: &str| {
            let t =
                format!(r#"{{"boot-source": {{"kernel_image_path": "k"}}, "drives": {drives}}}"#);
            VmConfig::parse(&t).unwrap_err().to_string()
        };
        let d = |id: &str, root: bool, extra: &str| {
            format!(
                r#"{{"drive_id": "{id}", "path_on_host": "x", "is_root_device": {root}, "is_read_only": true{extra}}}"#
            )
        };
        assert!(bad(&format!(
            "[{}]",
            d("a", true, r#", "cache_type": "Unsafe""#)
        ))
        .contains("unknown field"));
        assert!(
            bad(&format!("[{}, {}]", d("a", true, ""), d("b", true, "")))
                .contains("one root device")
        );
        assert!(
            bad(&format!("[{}, {}]", d("a", false, ""), d("a", false, ""))).contains("used twice")
        );
        assert!(bad(&format!("[{}]", d("a-b", false, ""))).contains("drive_id"));
        assert!(bad(&format!(
            "[{}]",
            d("a", false, r#", "partuuid": "0eaa91a0-01""#)
        ))
        .contains("only used for the root"));
        assert!(bad(&format!("[{}]", d("a", true, r#", "partuuid": "x y""#))).contains("partuuid"));
        assert!(
            bad(r#"[{"drive_id": "a", "path_on_host": "x", "is_root_device": true}]"#)
                .contains("is_read_only")
        );
        let ok = VmConfig::parse(&format!(
            r#"{{"boot-source": {{"kernel_image_path": "k"}}, "drives": [{}]}}"#,
            d("root", true, r#", "partuuid": "0eaa91a0-01""#)
        ))
        .unwrap();
        assert_eq!(ok.drives[0].partuuid.as_deref(), Some("0eaa91a0-01"));
    }

    #[test]
    fn machine_config_patch_and_validation() {
        let m = MachineConfig::default();
        assert_eq!((m.vcpu_count, m.mem_size_mib), (1, 128));
        let u: MachineConfigUpdate = serde_json::from_str(r#"{"vcpu_count": 2}"#).unwrap();
        let p = m.patched(&u);
        assert_eq!((p.vcpu_count, p.mem_size_mib), (2, 128));
        assert!(MachineConfigUpdate::default().is_empty());
        assert!(serde_json::from_str::<MachineConfigUpdate>(r#"{"vcpus": 2}"#).is_err());
        let bad = m.patched(&MachineConfigUpdate {
            vcpu_count: Some(33),
            ..Default::default()
        });
        assert!(bad.validate().unwrap_err().to_string().contains("1 to 32"));
        let small = m.patched(&MachineConfigUpdate {
            mem_size_mib: Some(8),
            ..Default::default()
        });
        assert!(small.validate().is_err());
    }
}
