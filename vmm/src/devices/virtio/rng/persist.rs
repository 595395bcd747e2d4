//! Saving and restoring the entropy device. Queue state is saved by the transport.

use serde::{Deserialize, Serialize};

use super::{Entropy, EntropyError};
use crate::devices::virtio::VirtioDevice;

/// The saved state of an [`Entropy`] device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyState {
    /// Features the driver accepted.
    pub acked_features: u64,
}

impl Entropy {
    /// Save the device state.
    pub fn save(&self) -> EntropyState {
        EntropyState {
            acked_features: self.acked_features,
        }
    }

    /// A device with `state` restored (not yet activated: the transport activates it with
    /// its restored queues). The state is untrusted and re-validated.
    pub fn restore(state: &EntropyState) -> Result<Self, EntropyError> {
        let mut dev = Self::new()?;
        if state.acked_features & !dev.avail_features() != 0 {
            return Err(EntropyError::BadState(format!(
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
    use crate::devices::virtio::VIRTIO_F_VERSION_1;

    #[test]
    fn save_restore_roundtrip_and_validation() {
        let mut dev = Entropy::new().unwrap();
        dev.set_acked_features(1 << VIRTIO_F_VERSION_1);
        let state = dev.save();
        let json = serde_json::to_string(&state).unwrap();
        let back: EntropyState = serde_json::from_str(&json).unwrap();
        let restored = Entropy::restore(&back).unwrap();
        assert_eq!(restored.save(), state);
        let err = Entropy::restore(&EntropyState { acked_features: 1 }).unwrap_err();
        assert!(matches!(err, EntropyError::BadState(_)));
        assert!(serde_json::from_str::<EntropyState>(r#"{"acked_features":0,"x":1}"#).is_err());
    }
}
