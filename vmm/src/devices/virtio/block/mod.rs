//! virtio-blk (device type 2): one drive backed by a raw image file, read-only or
//! read-write; IN, OUT, FLUSH and GET_ID (the serial is the drive id). Other request
//! types (discard, write-zeroes) are answered `VIRTIO_BLK_S_UNSUPP`.

mod device;
mod event_handler;
pub mod persist;
pub mod request;

pub use device::{Block, BlockError, QUEUE_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};

#[cfg(test)]
mod tests;
