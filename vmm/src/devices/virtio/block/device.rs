//! The block device: one request queue served from a raw image file.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::request::{
    collect, parse, status_addr, SECTOR_SIZE, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_OK,
};
use crate::devices::virtio::queue_set::{read_config_bytes, QueueSet};
use crate::devices::virtio::ratelimit::warn_limited;
use crate::devices::virtio::{
    ActivateError, IrqTrigger, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_VRING,
};
use crate::GuestMemoryMmap;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Feature bit: the device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: the device has a write cache and honours FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Errors of the block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened.
    #[error("cannot open the drive image {0} (check the path and its permissions)")]
    Open(PathBuf, #[source] io::Error),
    /// The image's size cannot be read.
    #[error("cannot read the size of the drive image {0}")]
    Metadata(PathBuf, #[source] io::Error),
    /// Creating an eventfd failed.
    #[error("cannot create the block device's eventfds (check the open-files limit)")]
    EventFd(#[source] io::Error),
    /// Signalling the guest failed.
    #[error("cannot signal the block device's interrupt")]
    Interrupt(#[source] io::Error),
    /// A saved state does not fit this device.
    #[error("invalid block device state: {0}")]
    BadState(String),
}

/// The virtio-blk device for one drive.
#[derive(Debug)]
pub struct Block {
    pub(super) id: String,
    /// The image's host path (saved with a snapshot so a restore reopens it).
    pub(super) path: PathBuf,
    pub(super) serial: [u8; VIRTIO_BLK_ID_BYTES],
    pub(super) file: File,
    pub(super) read_only: bool,
    /// Usable image size in bytes (a multiple of 512).
    pub(super) capacity: u64,
    pub(super) acked_features: u64,
    pub(super) qs: QueueSet,
}

impl Block {
    /// A drive `id` backed by the raw image at `path`, opened read-only or read-write.
    /// An image whose size is not a multiple of 512 loses its tail (as with Firecracker).
    pub fn new(id: &str, path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| BlockError::Open(path.to_path_buf(), e))?;
        let size = file
            .metadata()
            .map_err(|e| BlockError::Metadata(path.to_path_buf(), e))?
            .len();
        if size % SECTOR_SIZE != 0 {
            log::warn!(
                "drive {id}: image {} is {size} bytes, not a multiple of 512; the last {} bytes are not visible to the guest",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            id: id.to_string(),
            path: path.to_path_buf(),
            serial,
            file,
            read_only,
            capacity: size - size % SECTOR_SIZE,
            acked_features: 0,
            qs: QueueSet::new(&[QUEUE_SIZE]).map_err(BlockError::EventFd)?,
        })
    }

    /// The drive id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The image's host path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the drive is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Usable size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Answer every request the driver has queued. Returns how many chains were used.
    pub fn process_queue(&mut self) -> Result<usize, BlockError> {
        let Some((mem, queue)) = self.qs.active(0) else {
            return Ok(0);
        };
        let mut used = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let (head, descs) = collect(chain);
            let status_at = status_addr(mem, &descs);
            let result = parse(mem, &descs, self.capacity)
                .and_then(|req| req.execute(mem, &self.file, self.read_only, &self.serial));
            let (status, data_written) = match result {
                Ok(n) => (VIRTIO_BLK_S_OK, n),
                Err(e) => {
                    warn_limited!("virtio-blk {}: request refused: {e}", self.id);
                    (e.status(), 0)
                }
            };
            let len = match status_at {
                Some(addr) => match mem.write_obj(status, addr) {
                    Ok(()) => data_written.saturating_add(1),
                    Err(e) => {
                        warn_limited!("virtio-blk {}: cannot write the status: {e}", self.id);
                        0
                    }
                },
                None => 0,
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                warn_limited!("virtio-blk {}: cannot return a buffer: {e}", self.id);
                break;
            }
            used += 1;
        }
        if used > 0 {
            self.qs
                .irq()
                .trigger(VIRTIO_MMIO_INT_VRING)
                .map_err(BlockError::Interrupt)?;
        }
        Ok(used)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        let ro = if self.read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_FLUSH) | ro
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.qs.max_sizes()
    }

    fn queue_events(&self) -> &[EventFd] {
        self.qs.events()
    }

    fn interrupt(&self) -> &IrqTrigger {
        self.qs.irq()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Configuration space: capacity in 512-byte sectors (le64); nothing else is
        // offered (no SIZE_MAX/SEG_MAX/BLK_SIZE features).
        read_config_bytes(&(self.capacity / SECTOR_SIZE).to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn_limited!(
            "virtio-blk {}: config write at {offset:#x} ignored (read-only config)",
            self.id
        );
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        // Requests queued before DRIVER_OK are served by the event loop (no file I/O on
        // a vCPU thread).
        self.qs
            .activate(mem, queues, "the block device has exactly one queue", 0)
    }

    fn is_activated(&self) -> bool {
        self.qs.is_activated()
    }

    fn active_queues(&self) -> &[Queue] {
        self.qs.queues()
    }

    fn reset(&mut self) -> bool {
        self.qs.deactivate();
        self.acked_features = 0;
        true
    }
}
