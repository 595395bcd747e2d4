//! Saving and restoring the vsock device. Connections do not survive a snapshot: after
//! restore the device sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
//! ([`Vsock::send_transport_reset`]) and the guest drops its sockets. Queue state is
//! saved by the transport.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Vsock, VsockError};
use crate::devices::virtio::VirtioDevice;

/// The saved state of a [`Vsock`] device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockState {
    /// Guest CID.
    pub guest_cid: u64,
    /// Host socket path at save time (a restore may listen elsewhere).
    pub uds_path: PathBuf,
    /// Features the driver accepted.
    pub acked_features: u64,
}

impl Vsock {
    /// Save the device state.
    pub fn save(&self) -> VsockState {
        VsockState {
            guest_cid: self.cid(),
            uds_path: self.backend.uds_path().to_path_buf(),
            acked_features: self.acked_features,
        }
    }

    /// A device with `state` restored, listening on `uds_path` (which may differ from
    /// the saved one, e.g. one path per restored sandbox). The state is untrusted and
    /// re-validated.
    pub fn restore(state: &VsockState, uds_path: PathBuf) -> Result<Self, VsockError> {
        let mut dev = Self::new(state.guest_cid, uds_path)?;
        if state.acked_features & !dev.avail_features() != 0 {
            return Err(VsockError::BadState(format!(
                "acked features {:#x} were never offered",
                state.acked_features
            )));
        }
        dev.set_acked_features(state.acked_features);
        Ok(dev)
    }
}
