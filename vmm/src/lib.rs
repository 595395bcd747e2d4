//! husk VMM library: everything `husk` needs to build, run, pause and snapshot a microVM.
//!
//! Module map (see ARCHITECTURE.md for the full code map):
//! - [`devices`]: the device bus, legacy port-I/O devices and virtio-mmio devices.

pub mod devices;

/// Guest memory type used throughout the VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
