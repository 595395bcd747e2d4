//! The virtio-mmio transport, version 2 ("modern" only; virtio 1.x, section 4.2).
//!
//! [`MmioTransport`] is the [`BusDevice`] the builder puts on the MMIO bus at a 4 KiB
//! window. It owns the common configuration (status, feature negotiation, queue setup)
//! and hands validated queues to its [`VirtioDevice`] on DRIVER_OK. Every guest access
//! is hostile input: wrong widths, misaligned or unknown offsets, out-of-order status
//! writes and queue changes after DRIVER_OK are logged (rate-limited) and ignored;
//! nothing a guest writes can make the transport panic.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::ratelimit::warn_limited;
use super::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_MMIO_INT_CONFIG};
use crate::devices::bus::lock;
use crate::devices::BusDevice;
use crate::GuestMemoryMmap;

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The only transport version husk implements.
pub const MMIO_VERSION: u32 = 2;
/// VendorID register: "HUSK" in little endian.
pub const MMIO_VENDOR_ID: u32 = 0x4b53_5548;
/// Size of the MMIO window of one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (the device manager registers ioeventfds here).
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;
/// Offset where the device-specific configuration space starts.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Register offsets (virtio 1.x, 4.2.2).
pub mod reg {
    /// MagicValue (R).
    pub const MAGIC_VALUE: u64 = 0x00;
    /// Version (R).
    pub const VERSION: u64 = 0x04;
    /// DeviceID (R).
    pub const DEVICE_ID: u64 = 0x08;
    /// VendorID (R).
    pub const VENDOR_ID: u64 = 0x0c;
    /// DeviceFeatures (R).
    pub const DEVICE_FEATURES: u64 = 0x10;
    /// DeviceFeaturesSel (W).
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    /// DriverFeatures (W).
    pub const DRIVER_FEATURES: u64 = 0x20;
    /// DriverFeaturesSel (W).
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    /// QueueSel (W).
    pub const QUEUE_SEL: u64 = 0x30;
    /// QueueNumMax (R).
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    /// QueueNum (W).
    pub const QUEUE_NUM: u64 = 0x38;
    /// QueueReady (RW).
    pub const QUEUE_READY: u64 = 0x44;
    /// QueueNotify (W).
    pub const QUEUE_NOTIFY: u64 = 0x50;
    /// InterruptStatus (R).
    pub const INTERRUPT_STATUS: u64 = 0x60;
    /// InterruptACK (W).
    pub const INTERRUPT_ACK: u64 = 0x64;
    /// Status (RW).
    pub const STATUS: u64 = 0x70;
    /// QueueDescLow (W).
    pub const QUEUE_DESC_LOW: u64 = 0x80;
    /// QueueDescHigh (W).
    pub const QUEUE_DESC_HIGH: u64 = 0x84;
    /// QueueDriverLow (W).
    pub const QUEUE_DRIVER_LOW: u64 = 0x90;
    /// QueueDriverHigh (W).
    pub const QUEUE_DRIVER_HIGH: u64 = 0x94;
    /// QueueDeviceLow (W).
    pub const QUEUE_DEVICE_LOW: u64 = 0xa0;
    /// QueueDeviceHigh (W).
    pub const QUEUE_DEVICE_HIGH: u64 = 0xa4;
    /// ConfigGeneration (R).
    pub const CONFIG_GENERATION: u64 = 0xfc;
}

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and the device is live.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Largest power of two that is at most `max` (at least 1).
pub(super) fn pow2_floor(max: u16) -> u16 {
    if max == 0 {
        1
    } else {
        1 << (15 - max.leading_zeros())
    }
}

/// The virtio-mmio register file of one device.
pub struct MmioTransport {
    pub(super) mem: GuestMemoryMmap,
    pub(super) device: Arc<Mutex<dyn VirtioDevice>>,
    pub(super) interrupt_status: Arc<AtomicU32>,
    pub(super) device_features_sel: u32,
    pub(super) driver_features_sel: u32,
    pub(super) driver_features: u64,
    pub(super) queue_sel: u32,
    pub(super) queues: Vec<Queue>,
    pub(super) status: u32,
    pub(super) config_generation: u32,
}

impl MmioTransport {
    /// A transport for `device`, whose queues will live in `mem`.
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>) -> Self {
        let (interrupt_status, queues) = {
            let d = lock(&device);
            let queues = d
                .queue_max_sizes()
                .iter()
                // A power of two no larger than u16::MAX / 2 + 1 is always accepted.
                .filter_map(|&max| Queue::new(pow2_floor(max)).ok())
                .collect();
            (d.interrupt().irq_status.clone(), queues)
        };
        Self {
            mem,
            device,
            interrupt_status,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            config_generation: 0,
        }
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The transport's view of the queues (configuration as written by the driver).
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => lock(&self.device).device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let features = lock(&self.device).avail_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => self.write_driver_features(v),
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            reg::QUEUE_NOTIFY => self.notify(v),
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::STATUS => self.set_status(v),
            _ => warn_limited!("virtio-mmio: write {v:#x} to unknown register {offset:#x} ignored"),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
            warn_limited!(
                "virtio-mmio: DriverFeatures written in status {:#x}, ignored",
                self.status
            );
            return;
        }
        let (shift, mask) = match self.driver_features_sel {
            0 => (0, 0x0000_0000_ffff_ffffu64),
            1 => (32, 0xffff_ffff_0000_0000u64),
            sel => {
                warn_limited!("virtio-mmio: DriverFeatures page {sel} does not exist, ignored");
                return;
            }
        };
        let avail = lock(&self.device).avail_features();
        let wanted = u64::from(v) << shift;
        if wanted & !avail != 0 {
            warn_limited!(
                "virtio-mmio: driver accepted features {:#x} the device did not offer; dropped",
                wanted & !avail
            );
        }
        self.driver_features = (self.driver_features & !mask) | (wanted & avail);
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if self.status & status::DRIVER_OK != 0 {
            warn_limited!(
                "virtio-mmio: queue register {offset:#x} written after DRIVER_OK, ignored"
            );
            return;
        }
        if self.status & status::FEATURES_OK == 0 {
            warn_limited!(
                "virtio-mmio: queue register {offset:#x} written before FEATURES_OK, ignored"
            );
            return;
        }
        let sel = self.queue_sel;
        let mem = self.mem.clone();
        let Some(q) = self.selected_queue() else {
            warn_limited!(
                "virtio-mmio: queue register {offset:#x} written for missing queue {sel}"
            );
            return;
        };
        if offset == reg::QUEUE_READY {
            if v == 0 {
                q.set_ready(false);
            } else if let Err(reason) = check_queue_layout(q, &mem) {
                warn_limited!("virtio-mmio: queue {sel} not made ready: {reason}");
            } else {
                q.set_ready(true);
            }
            return;
        }
        if q.ready() {
            warn_limited!(
                "virtio-mmio: queue {sel} register {offset:#x} written while ready, ignored"
            );
            return;
        }
        let set_low = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        let set_high = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        let result = match offset {
            reg::QUEUE_NUM => u16::try_from(v)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|n| q.try_set_size(n)),
            reg::QUEUE_DESC_LOW => {
                q.try_set_desc_table_address(GuestAddress(set_low(q.desc_table())))
            }
            reg::QUEUE_DESC_HIGH => {
                q.try_set_desc_table_address(GuestAddress(set_high(q.desc_table())))
            }
            reg::QUEUE_DRIVER_LOW => {
                q.try_set_avail_ring_address(GuestAddress(set_low(q.avail_ring())))
            }
            reg::QUEUE_DRIVER_HIGH => {
                q.try_set_avail_ring_address(GuestAddress(set_high(q.avail_ring())))
            }
            reg::QUEUE_DEVICE_LOW => {
                q.try_set_used_ring_address(GuestAddress(set_low(q.used_ring())))
            }
            _ => q.try_set_used_ring_address(GuestAddress(set_high(q.used_ring()))),
        };
        if let Err(e) = result {
            warn_limited!(
                "virtio-mmio: queue {sel} register {offset:#x} value {v:#x} rejected: {e}"
            );
        }
    }

    fn notify(&self, v: u32) {
        let d = lock(&self.device);
        match d.queue_events().get(v as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    warn_limited!("virtio-mmio: cannot signal queue {v}: {e}");
                }
            }
            None => warn_limited!("virtio-mmio: notify for missing queue {v} ignored"),
        }
    }

    fn set_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if v & FAILED != 0 {
            warn_limited!("virtio-mmio: driver marked the device FAILED (status {v:#x})");
            self.status |= FAILED;
            return;
        }
        if v == old {
            return;
        }
        let ok_transition = (old == 0 && v == ACKNOWLEDGE)
            || (old == ACKNOWLEDGE && v == ACKNOWLEDGE | DRIVER)
            || (old == ACKNOWLEDGE | DRIVER && v == old | FEATURES_OK)
            || (old == ACKNOWLEDGE | DRIVER | FEATURES_OK && v == old | DRIVER_OK);
        if !ok_transition {
            warn_limited!("virtio-mmio: status change {old:#x} -> {v:#x} not allowed, ignored");
            return;
        }
        match v & !old {
            FEATURES_OK => {
                if self.driver_features & (1u64 << VIRTIO_F_VERSION_1) == 0 {
                    warn_limited!(
                        "virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are \
                         not supported); FEATURES_OK refused"
                    );
                    return;
                }
                lock(&self.device).set_acked_features(self.driver_features);
                self.status = v;
            }
            DRIVER_OK => self.activate(v),
            _ => self.status = v,
        }
    }

    fn activate(&mut self, v: u32) {
        let mut failed = None;
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                failed = Some(format!("queue {i} is not ready"));
                break;
            }
            if let Err(reason) = check_queue_layout(q, &self.mem) {
                failed = Some(format!("queue {i}: {reason}"));
                break;
            }
        }
        let mut d = lock(&self.device);
        let result = match failed {
            Some(reason) => Err(reason),
            None if d.is_activated() => Err("device is already active".to_string()),
            None => match clone_queues(&self.queues) {
                Ok(queues) => d
                    .activate(self.mem.clone(), queues)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("queue state cannot be copied: {e}")),
            },
        };
        match result {
            Ok(()) => self.status = v,
            Err(reason) => {
                warn_limited!(
                    "virtio-mmio: device type {} not activated: {reason}",
                    d.device_type()
                );
                self.status |= status::DEVICE_NEEDS_RESET;
                if let Err(e) = d.interrupt().trigger(VIRTIO_MMIO_INT_CONFIG) {
                    warn_limited!("virtio-mmio: cannot signal config interrupt: {e}");
                }
            }
        }
    }

    fn reset(&mut self) {
        let mut d = lock(&self.device);
        if d.is_activated() && !d.reset() {
            warn_limited!(
                "virtio-mmio: device type {} cannot be reset; it needs a new VM",
                d.device_type()
            );
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        drop(d);
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt_status.store(0, Ordering::SeqCst);
    }
}

/// Copy queues (virtio_queue::Queue is not Clone; its state round-trips exactly).
pub fn clone_queues(queues: &[Queue]) -> Result<Vec<Queue>, virtio_queue::Error> {
    queues.iter().map(|q| Queue::try_from(q.state())).collect()
}

/// Check a queue's size and ring placement: each ring must lie inside guest memory.
pub(super) fn check_queue_layout(q: &Queue, mem: &GuestMemoryMmap) -> Result<(), String> {
    let size = u64::from(q.size());
    if size == 0 || size > u64::from(q.max_size()) || !size.is_power_of_two() {
        return Err(format!(
            "size {size} is not a power of two up to {}",
            q.max_size()
        ));
    }
    let areas = [
        ("descriptor table", q.desc_table(), 16 * size),
        ("available ring", q.avail_ring(), 6 + 2 * size),
        ("used ring", q.used_ring(), 6 + 8 * size),
    ];
    for (name, addr, len) in areas {
        // `len` is at most 16 * 32768, which fits in usize.
        if !mem.check_range(GuestAddress(addr), len as usize) {
            return Err(format!(
                "{name} at {addr:#x} (+{len:#x}) is outside guest memory"
            ));
        }
    }
    Ok(())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn_limited!(
                "virtio-mmio: {}-byte read at {offset:#x} (registers are 4 bytes, aligned)",
                data.len()
            );
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn_limited!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored (registers are 4 bytes)",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            warn_limited!("virtio-mmio: misaligned write at {offset:#x} ignored");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
