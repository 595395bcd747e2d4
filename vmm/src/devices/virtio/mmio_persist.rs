//! Saving and restoring the virtio-mmio transport: the common configuration and the
//! virtqueue positions. The device's own state is saved by the device (`persist.rs` of
//! each device). A snapshot is untrusted input: every field is re-validated, and a
//! transport that was live (DRIVER_OK) re-activates its device with the restored queues.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::mmio::{check_queue_layout, clone_queues, pow2_floor, status, MmioTransport};
use super::VirtioDevice;
use crate::devices::bus::lock;
use crate::GuestMemoryMmap;

/// Why a transport cannot be saved.
#[derive(Debug, thiserror::Error)]
pub enum MmioSaveError {
    /// The active device does not expose its queues.
    #[error("active virtio device type {0} does not expose its queues; it cannot be snapshotted")]
    QueuesUnavailable(u32),
}

/// Why a saved transport state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum MmioRestoreError {
    /// The state describes a different device.
    #[error("saved transport is for device type {saved}, this device is type {actual}")]
    DeviceType {
        /// Type in the snapshot.
        saved: u32,
        /// Type of the device given to restore.
        actual: u32,
    },
    /// Queue count or sizes do not match the device.
    #[error("saved queue {index} does not fit the device: {reason}")]
    Queue {
        /// Queue index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The status word is not one the transport can be in.
    #[error("saved device status {0:#x} is not a state the transport can be in")]
    Status(u32),
    /// Features the device never offered.
    #[error("saved driver features {0:#x} include bits the device does not offer")]
    Features(u64),
    /// Re-activating the device failed.
    #[error("cannot re-activate the restored device: {0}")]
    Activate(String),
}

/// One virtqueue's saved state (a serializable copy of `virtio_queue::QueueState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtqueueState {
    /// Maximum size offered by the device.
    pub max_size: u16,
    /// Next available-ring index the device will read.
    pub next_avail: u16,
    /// Next used-ring index the device will write.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx_enabled: bool,
    /// Size chosen by the driver.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

impl From<QueueState> for VirtqueueState {
    fn from(s: QueueState) -> Self {
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<VirtqueueState> for QueueState {
    fn from(s: VirtqueueState) -> Self {
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

/// The saved state of an [`MmioTransport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioTransportState {
    /// virtio device type, checked on restore.
    pub device_type: u32,
    /// Status register.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The queues, in device order.
    pub queues: Vec<VirtqueueState>,
}

const VALID_STATUS: [u32; 5] = [
    0,
    status::ACKNOWLEDGE,
    status::ACKNOWLEDGE | status::DRIVER,
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
];

impl MmioTransport {
    /// Save the transport state (call with the vCPUs paused and the event loop idle).
    /// Queue positions come from the device while it is active (the transport's own
    /// copies stop at activation).
    pub fn save(&self) -> Result<MmioTransportState, MmioSaveError> {
        let d = lock(&self.device);
        let queues: Vec<VirtqueueState> = if d.is_activated() {
            let active = d.active_queues();
            if active.len() != self.queues.len() {
                return Err(MmioSaveError::QueuesUnavailable(d.device_type()));
            }
            active.iter().map(|q| q.state().into()).collect()
        } else {
            self.queues.iter().map(|q| q.state().into()).collect()
        };
        Ok(MmioTransportState {
            device_type: d.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
            config_generation: self.config_generation,
            queues,
        })
    }

    /// A transport for `device` (already restored from its own state) with `state`
    /// re-validated and applied. If the saved transport was live, the device is
    /// activated with the restored queues.
    pub fn restore(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        state: &MmioTransportState,
    ) -> Result<Self, MmioRestoreError> {
        let mut t = Self::new(mem, device);
        let (dev_type, avail, max_sizes) = {
            let d = lock(&t.device);
            (
                d.device_type(),
                d.avail_features(),
                d.queue_max_sizes().to_vec(),
            )
        };
        if state.device_type != dev_type {
            return Err(MmioRestoreError::DeviceType {
                saved: state.device_type,
                actual: dev_type,
            });
        }
        let flags = state.status & (status::FAILED | status::DEVICE_NEEDS_RESET);
        if !VALID_STATUS.contains(&(state.status & !flags)) {
            return Err(MmioRestoreError::Status(state.status));
        }
        if state.driver_features & !avail != 0 {
            return Err(MmioRestoreError::Features(state.driver_features));
        }
        if state.queues.len() != max_sizes.len() {
            return Err(MmioRestoreError::Queue {
                index: state.queues.len().min(max_sizes.len()),
                reason: format!(
                    "{} queues saved, the device has {}",
                    state.queues.len(),
                    max_sizes.len()
                ),
            });
        }
        let live = state.status & status::DRIVER_OK != 0;
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, (saved, &max)) in state.queues.iter().zip(&max_sizes).enumerate() {
            let bad = |reason: String| MmioRestoreError::Queue { index, reason };
            if saved.max_size != pow2_floor(max) {
                return Err(bad(format!("max size {} is not {max}", saved.max_size)));
            }
            let q = Queue::try_from(QueueState::from(*saved)).map_err(|e| bad(e.to_string()))?;
            if live {
                if !q.ready() {
                    return Err(bad("not ready on a live device".into()));
                }
                check_queue_layout(&q, &t.mem).map_err(bad)?;
            }
            queues.push(q);
        }
        t.queues = queues;
        t.status = state.status;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.driver_features = state.driver_features;
        t.queue_sel = state.queue_sel;
        t.config_generation = state.config_generation;
        t.interrupt_status
            .store(state.interrupt_status, Ordering::SeqCst);
        if state.status & status::FEATURES_OK != 0 {
            lock(&t.device).set_acked_features(state.driver_features);
        }
        if live {
            let queues =
                clone_queues(&t.queues).map_err(|e| MmioRestoreError::Activate(e.to_string()))?;
            lock(&t.device)
                .activate(t.mem.clone(), queues)
                .map_err(|e| MmioRestoreError::Activate(e.to_string()))?;
        }
        Ok(t)
    }
}

#[cfg(test)]
#[path = "mmio_persist_tests.rs"]
mod tests;
