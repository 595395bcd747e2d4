//! Devices: the bus the vCPUs dispatch exits to, and the emulated devices on it.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
