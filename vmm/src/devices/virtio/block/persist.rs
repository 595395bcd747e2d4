//! Saving and restoring the block device. Queue state is saved by the transport; the
//! image itself is not part of the snapshot (a restored VM must get the same image).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Block, BlockError};
use crate::devices::virtio::VirtioDevice;

/// The saved state of a [`Block`] device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockState {
    /// The drive id.
    pub id: String,
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
            read_only: self.read_only,
            capacity: self.capacity,
            acked_features: self.acked_features,
        }
    }

    /// A device with `state` restored on the image at `path` (not yet activated: the
    /// transport activates it with its restored queues). The state is untrusted: the
    /// image must have the size the guest saw, and the features must have been offered.
    pub fn restore(path: &Path, state: &BlockState) -> Result<Self, BlockError> {
        if !crate::config::valid_resource_id(&state.id) || state.id.len() > 64 {
            return Err(BlockError::BadState(format!(
                "drive id {:?} is invalid",
                state.id.chars().take(64).collect::<String>()
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
}
