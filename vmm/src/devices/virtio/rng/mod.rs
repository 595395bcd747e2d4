//! virtio-entropy (device type 4): hands the guest bytes from the host's `getrandom`.

mod device;
mod event_handler;
pub mod persist;

pub use device::{Entropy, EntropyError, MAX_BYTES_PER_CHAIN, QUEUE_SIZE};
