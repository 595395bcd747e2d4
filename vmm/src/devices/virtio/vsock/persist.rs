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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::unix::tests::TempDir;
    use crate::devices::virtio::VIRTIO_F_VERSION_1;

    #[test]
    fn save_restore_roundtrip_and_validation() {
        let dir = TempDir::new("persist");
        let mut dev = Vsock::new(7, dir.0.join("a.sock")).unwrap();
        dev.set_acked_features(1 << VIRTIO_F_VERSION_1);
        let state = dev.save();
        assert_eq!(state.guest_cid, 7);
        let json = serde_json::to_string(&state).unwrap();
        let back: VsockState = serde_json::from_str(&json).unwrap();
        let restored = Vsock::restore(&back, dir.0.join("b.sock")).unwrap();
        assert_eq!(restored.cid(), 7);
        assert_eq!(restored.acked_features(), 1 << VIRTIO_F_VERSION_1);
        assert_eq!(restored.backend().uds_path(), dir.0.join("b.sock"));
        drop(restored);
        let mut bad = state.clone();
        bad.acked_features |= 1;
        assert!(matches!(
            Vsock::restore(&bad, dir.0.join("c.sock")),
            Err(VsockError::BadState(_))
        ));
        bad = state;
        bad.guest_cid = 2;
        assert!(matches!(
            Vsock::restore(&bad, dir.0.join("d.sock")),
            Err(VsockError::InvalidCid(2))
        ));
    }
}
