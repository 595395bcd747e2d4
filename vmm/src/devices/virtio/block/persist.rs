//! Saving and restoring the block device. Queue state is saved by the transport; the
//! image itself is not part of the snapshot: a restore reopens the image at the saved
//! path (or an override), which must still have the size the guest saw.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Block, BlockError};
use crate::devices::virtio::VirtioDevice;

/// Longest image path a state may carry (Linux PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;

/// The saved state of a [`Block`] device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockState {
    /// The drive id.
    pub id: String,
    /// The image's host path when the snapshot was taken.
    pub path: PathBuf,
    /// Whether the drive was read-only.
    pub read_only: bool,
    /// Usable image size in bytes the guest saw.
    pub capacity: u64,
    /// Features the driver accepted.
    pub acked_features: u64,
}

impl Block {
    /// Save the device state.
    pub fn save(&self) -> BlockState {
        BlockState {
            id: self.id.clone(),
            path: self.path.clone(),
            read_only: self.read_only,
            capacity: self.capacity,
            acked_features: self.acked_features,
        }
    }

    /// A device with `state` restored on the image at `path_override`, or at the saved
    /// path when `None` (not yet activated: the transport activates it with its restored
    /// queues). The state is untrusted: the id and path must be well formed, the image
    /// must exist and have the size the guest saw, it is opened read-only if the drive
    /// was, and the features must have been offered.
    pub fn restore(path_override: Option<&Path>, state: &BlockState) -> Result<Self, BlockError> {
        if !crate::config::valid_resource_id(&state.id) || state.id.len() > 64 {
            return Err(BlockError::BadState(format!(
                "drive id {:?} is invalid",
                state.id.chars().take(64).collect::<String>()
            )));
        }
        let saved = state.path.as_os_str().len();
        if saved == 0 || saved > MAX_PATH_BYTES {
            return Err(BlockError::BadState(format!(
                "drive {}: the saved image path is empty or longer than {MAX_PATH_BYTES} bytes",
                state.id
            )));
        }
        let path = path_override.unwrap_or(&state.path);
        if !path.is_file() {
            return Err(BlockError::BadState(format!(
                "drive {}: the image {} is missing (or not a regular file); the snapshot needs the image it was taken with at that path",
                state.id,
                path.display()
            )));
        }
        let mut dev = Self::new(&state.id, path, state.read_only)?;
        if dev.capacity != state.capacity {
            return Err(BlockError::BadState(format!(
                "drive {}: the image {} has {} usable bytes, the snapshot expects {}; restore with the same image",
                state.id,
                path.display(),
                dev.capacity,
                state.capacity
            )));
        }
        if state.acked_features & !dev.avail_features() != 0 {
            return Err(BlockError::BadState(format!(
                "acked features {:#x} were never offered",
                state.acked_features
            )));
        }
        dev.set_acked_features(state.acked_features);
        Ok(dev)
    }

    /// After a restore, with the vCPUs' LAPICs loaded: raise the used-ring interrupt of
    /// an active drive. A completion whose interrupt was still on its way into KVM when
    /// the snapshot was taken is otherwise lost, and the guest waits on that request
    /// forever; a spurious interrupt is harmless (the driver finds nothing new). Requests
    /// the guest had queued but the device had not yet served are picked up by the queue
    /// notification the activation writes.
    pub fn kick_after_restore(&self) -> Result<(), BlockError> {
        if !self.is_activated() {
            return Ok(());
        }
        self.interrupt()
            .trigger(crate::devices::virtio::VIRTIO_MMIO_INT_VRING)
            .map_err(BlockError::Interrupt)
    }
}
