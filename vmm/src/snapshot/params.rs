//! The API bodies of `PUT /snapshot/create` and `PUT /snapshot/load`, in Firecracker's
//! shapes (its swagger's `SnapshotCreateParams`, `SnapshotLoadParams`,
//! `MemoryBackend`, `VsockOverride`). Unknown fields are refused; fields husk does not
//! support are refused with a message that says so.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `snapshot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SnapshotType {
    /// Everything (the default).
    #[default]
    Full,
    /// Only pages dirtied since the last snapshot (not supported by husk).
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Full (default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// The state file to write.
    pub snapshot_path: PathBuf,
    /// The memory file to write.
    pub mem_file_path: PathBuf,
}

/// `mem_backend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// A memory file, mapped `MAP_PRIVATE`.
    File,
    /// A userfaultfd handler (not supported by husk).
    Uffd,
}

/// `mem_backend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// File or Uffd.
    pub backend_type: MemBackendType,
    /// The memory file (File).
    pub backend_path: PathBuf,
}

/// `vsock_override`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The Unix socket the restored vsock device listens on.
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The memory file (Firecracker's deprecated form; exclusive with `mem_backend`).
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    /// The memory backend.
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Resume the guest once loaded.
    #[serde(default)]
    pub resume_vm: bool,
    /// Dirty page tracking (refused when true).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Deprecated name of `track_dirty_pages` (refused when true).
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    /// A new vsock socket path for this restored sandbox.
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    /// Network overrides (husk has no network device: must be empty).
    #[serde(default)]
    pub network_overrides: Vec<serde_json::Value>,
    /// Advance kvmclock by the elapsed wall time (refused when true).
    #[serde(default)]
    pub clock_realtime: bool,
}

impl SnapshotCreateParams {
    /// Refuse what husk does not support.
    pub fn validate(&self) -> Result<(), String> {
        if self.snapshot_type == SnapshotType::Diff {
            return Err("diff snapshots are not supported by husk: use snapshot_type Full".into());
        }
        if self.snapshot_path.as_os_str().is_empty() || self.mem_file_path.as_os_str().is_empty() {
            return Err("snapshot_path and mem_file_path must not be empty".into());
        }
        if self.snapshot_path == self.mem_file_path {
            return Err("snapshot_path and mem_file_path must be different files".into());
        }
        Ok(())
    }
}

impl SnapshotLoadParams {
    /// The memory file, checking that exactly one of the two forms is given and that
    /// nothing husk does not support was asked for.
    pub fn mem_path(&self) -> Result<PathBuf, String> {
        if self.track_dirty_pages || self.enable_diff_snapshots {
            return Err("dirty page tracking is not supported by husk".into());
        }
        if self.clock_realtime {
            return Err("clock_realtime is not supported by husk: the agent's Restored message sets the guest's wall clock".into());
        }
        if !self.network_overrides.is_empty() {
            return Err("husk has no network devices: network_overrides must be empty".into());
        }
        match (&self.mem_file_path, &self.mem_backend) {
            (Some(p), None) => Ok(p.clone()),
            (None, Some(b)) if b.backend_type == MemBackendType::File => Ok(b.backend_path.clone()),
            (None, Some(_)) => {
                Err("mem_backend type Uffd is not supported by husk: use File".into())
            }
            (Some(_), Some(_)) => Err("give either mem_backend or mem_file_path, not both".into()),
            (None, None) => {
                Err("the memory file is missing: give mem_backend (or mem_file_path)".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_bodies_parse_and_unsupported_parts_are_refused() {
        let c: SnapshotCreateParams = serde_json::from_str(
            r#"{"snapshot_type":"Full","snapshot_path":"/s","mem_file_path":"/m"}"#,
        )
        .unwrap();
        c.validate().unwrap();
        let c: SnapshotCreateParams =
            serde_json::from_str(r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#).unwrap();
        assert_eq!(c.snapshot_type, SnapshotType::Full);
        let d: SnapshotCreateParams = serde_json::from_str(
            r#"{"snapshot_type":"Diff","snapshot_path":"/s","mem_file_path":"/m"}"#,
        )
        .unwrap();
        assert!(d.validate().unwrap_err().contains("Full"));
        assert!(serde_json::from_str::<SnapshotCreateParams>(
            r#"{"snapshot_path":"/s","mem_file_path":"/m","x":1}"#
        )
        .is_err());

        let l: SnapshotLoadParams = serde_json::from_str(
            r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},
                "resume_vm":true,"vsock_override":{"uds_path":"/v.sock"}}"#,
        )
        .unwrap();
        assert_eq!(l.mem_path().unwrap(), PathBuf::from("/m"));
        assert!(l.resume_vm);
        assert_eq!(l.vsock_override.unwrap().uds_path, PathBuf::from("/v.sock"));
        let legacy: SnapshotLoadParams =
            serde_json::from_str(r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#).unwrap();
        assert_eq!(legacy.mem_path().unwrap(), PathBuf::from("/m"));
        for bad in [
            r#"{"snapshot_path":"/s"}"#,
            r#"{"snapshot_path":"/s","mem_file_path":"/m","mem_backend":{"backend_type":"File","backend_path":"/m"}}"#,
            r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"}}"#,
            r#"{"snapshot_path":"/s","mem_file_path":"/m","track_dirty_pages":true}"#,
        ] {
            let p: SnapshotLoadParams = serde_json::from_str(bad).unwrap();
            assert!(p.mem_path().is_err(), "{bad}");
        }
    }
}
