//! The device manager: a typed handle per device (kind, id, bus window, IRQ, transport),
//! so pause, save, restore and metrics iterate devices without downcasting trait
//! objects. It also owns the two buses the vCPUs dispatch exits to.
//!
//! Every device goes on its bus behind a [`Counted`] wrapper that counts guest
//! accesses (the per-device metrics) without touching device code; the boot marker's
//! wrapper also wakes the controller when the guest signals ready.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{SubscriberId, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout;
use crate::devices::bus::lock;
use crate::devices::legacy::marker::NOT_READY;
use crate::devices::legacy::{BootMarker, SerialDevice, I8042};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::rng::Entropy;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::devices::{Bus, BusDevice, BusError};
use crate::{EventManager, GuestMemoryMmap};

/// Offset of the QueueNotify register in a virtio-mmio window.
pub use crate::devices::virtio::mmio::QUEUE_NOTIFY_OFFSET as MMIO_QUEUE_NOTIFY;

/// Errors attaching a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// Two devices claim the same addresses.
    #[error("device address conflict")]
    Bus(#[from] BusError),
    /// KVM refused an irqfd or ioeventfd.
    #[error("KVM refused to {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// No more virtio-mmio windows/IRQs.
    #[error("too many virtio devices: husk has room for 19")]
    TooManyDevices,
}

/// Guest accesses to one device, counted on the vCPU threads.
#[derive(Debug, Default)]
pub struct AccessCounters {
    /// Reads (port I/O IN or MMIO read).
    pub reads: AtomicU64,
    /// Writes (port I/O OUT or MMIO write).
    pub writes: AtomicU64,
    /// `reads` at the last metrics flush.
    flushed_reads: AtomicU64,
    /// `writes` at the last metrics flush.
    flushed_writes: AtomicU64,
}

/// A bus device behind a counter; `on_write` runs after each forwarded write.
pub struct Counted {
    inner: Arc<Mutex<dyn BusDevice>>,
    counters: Arc<AccessCounters>,
    on_write: Option<Box<dyn FnMut() + Send>>,
}

impl BusDevice for Counted {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner).read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner).write(offset, data);
        if let Some(f) = self.on_write.as_mut() {
            f();
        }
    }
}

/// A legacy (port-I/O) device, typed.
#[derive(Clone)]
pub enum LegacyHandle {
    /// The 8250 console UART.
    Serial(Arc<Mutex<SerialDevice>>),
    /// The i8042 (keyboard for Ctrl+Alt+Del, CPU reset).
    I8042(Arc<Mutex<I8042>>),
    /// The boot-ready marker port.
    BootMarker(Arc<Mutex<BootMarker>>),
    /// A device a test put on the bus by hand.
    #[cfg(test)]
    Other(Arc<Mutex<dyn BusDevice>>),
}

/// A virtio device, typed.
#[derive(Clone)]
pub enum VirtioHandle {
    /// virtio-vsock.
    Vsock(Arc<Mutex<Vsock>>),
    /// virtio-rng.
    Entropy(Arc<Mutex<Entropy>>),
    /// virtio-blk (one per drive).
    Block(Arc<Mutex<Block>>),
    /// A device a test attached.
    #[cfg(test)]
    Other(Arc<Mutex<dyn VirtioDevice>>),
}

/// One port-I/O device with its ports and IRQ.
pub struct PioDevice {
    /// Its id (`serial`, `i8042`, `boot-marker`).
    pub id: &'static str,
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub len: u16,
    /// Its GSI, if it raises interrupts.
    pub irq: Option<u32>,
    /// The device.
    pub handle: LegacyHandle,
    /// Guest accesses.
    pub counters: Arc<AccessCounters>,
}

/// One virtio-mmio device with its window, IRQ and transport.
pub struct MmioDevice {
    /// Its id (the Firecracker resource id, e.g. `vsock` or `entropy`).
    pub id: String,
    /// Window base address.
    pub base: u64,
    /// Window size.
    pub len: u64,
    /// Its GSI.
    pub irq: u32,
    /// The virtio-mmio transport (common configuration, queues).
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The device.
    pub device: VirtioHandle,
    /// Guest register accesses.
    pub counters: Arc<AccessCounters>,
}

/// Per-device counters, as written by a metrics flush (increases since the previous one).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceMetrics {
    /// Device id.
    pub id: String,
    /// Guest reads of its registers/ports.
    pub reads: u64,
    /// Guest writes to its registers/ports.
    pub writes: u64,
    /// virtio devices: whether the driver activated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activated: Option<bool>,
}

/// All devices of a microVM and the buses they sit on.
#[derive(Default)]
pub struct DeviceManager {
    io_bus: Bus,
    mmio_bus: Bus,
    pio: Vec<PioDevice>,
    mmio: Vec<MmioDevice>,
    cmdline_entries: Vec<String>,
    /// The event-manager subscriptions of the attached virtio devices.
    subscribers: Vec<SubscriberId>,
}

impl DeviceManager {
    /// No devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// A manager around buses a test filled by hand (no typed handles).
    pub fn from_buses(io_bus: Bus, mmio_bus: Bus) -> Self {
        Self {
            io_bus,
            mmio_bus,
            ..Self::default()
        }
    }

    /// The port-I/O bus (cloning shares the devices).
    pub fn io_bus(&self) -> &Bus {
        &self.io_bus
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Bus {
        &self.mmio_bus
    }

    /// The port-I/O devices.
    pub fn pio_devices(&self) -> &[PioDevice] {
        &self.pio
    }

    /// The i8042 controller, if attached.
    pub fn i8042(&self) -> Option<&Arc<Mutex<I8042>>> {
        self.pio.iter().find_map(|d| match &d.handle {
            LegacyHandle::I8042(dev) => Some(dev),
            _ => None,
        })
    }

    /// The virtio-mmio devices, in attach order.
    pub fn mmio_devices(&self) -> &[MmioDevice] {
        &self.mmio
    }

    /// The `virtio_mmio.device=` command line entries for the attached devices.
    pub fn cmdline_entries(&self) -> &[String] {
        &self.cmdline_entries
    }

    /// Put a port-I/O device on the bus. `ready` (boot marker only): `(ready_at,
    /// eventfd)`, the eventfd is written once when `ready_at` gets set.
    pub fn attach_pio(
        &mut self,
        id: &'static str,
        base: u16,
        len: u16,
        irq: Option<u32>,
        handle: LegacyHandle,
        ready: Option<(Arc<AtomicU64>, EventFd)>,
    ) -> Result<(), DeviceManagerError> {
        let inner: Arc<Mutex<dyn BusDevice>> = match &handle {
            LegacyHandle::Serial(d) => d.clone(),
            LegacyHandle::I8042(d) => d.clone(),
            LegacyHandle::BootMarker(d) => d.clone(),
            #[cfg(test)]
            LegacyHandle::Other(d) => d.clone(),
        };
        let counters = Arc::new(AccessCounters::default());
        let on_write = ready.map(|(ready_at, evt)| {
            let mut sent = false;
            Box::new(move || {
                if !sent && ready_at.load(Ordering::SeqCst) != NOT_READY {
                    sent = true;
                    if let Err(e) = evt.write(1) {
                        log::error!("cannot tell the controller the guest is ready: {e}");
                    }
                }
            }) as Box<dyn FnMut() + Send>
        });
        let counted = Counted {
            inner,
            counters: counters.clone(),
            on_write,
        };
        self.io_bus.insert(
            Arc::new(Mutex::new(counted)),
            u64::from(base),
            u64::from(len),
        )?;
        self.pio.push(PioDevice {
            id,
            base,
            len,
            irq,
            handle,
            counters,
        });
        Ok(())
    }

    /// Attach a virtio device at the next window: its transport goes on the MMIO bus,
    /// each queue's eventfd becomes an ioeventfd on QueueNotify (datamatch = queue
    /// index), its interrupt eventfd an irqfd on the window's GSI, and the device an
    /// event-manager subscriber. Returns (base, irq).
    pub fn attach_virtio<D>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        em: &mut EventManager,
        id: &str,
        device: Arc<Mutex<D>>,
        handle: VirtioHandle,
    ) -> Result<(u64, u32), DeviceManagerError>
    where
        D: VirtioDevice + event_manager::MutEventSubscriber + 'static,
    {
        let index =
            u32::try_from(self.mmio.len()).map_err(|_| DeviceManagerError::TooManyDevices)?;
        let (base, irq) =
            layout::virtio_mmio_window(index).ok_or(DeviceManagerError::TooManyDevices)?;
        {
            let d = lock(&device);
            for (i, evt) in d.queue_events().iter().enumerate() {
                vm.register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + MMIO_QUEUE_NOTIFY),
                    i as u32,
                )
                .map_err(|e| DeviceManagerError::Kvm("register a virtio queue ioeventfd", e))?;
            }
            vm.register_irqfd(&d.interrupt().irq_evt, irq)
                .map_err(|e| DeviceManagerError::Kvm("register a virtio irqfd", e))?;
        }
        let transport = Arc::new(Mutex::new(MmioTransport::new(mem.clone(), device.clone())));
        let counters = Arc::new(AccessCounters::default());
        let counted = Counted {
            inner: transport.clone(),
            counters: counters.clone(),
            on_write: None,
        };
        self.mmio_bus.insert(
            Arc::new(Mutex::new(counted)),
            base,
            layout::VIRTIO_MMIO_SIZE,
        )?;
        self.subscribers.push(em.add_subscriber(device));
        self.cmdline_entries
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.mmio.push(MmioDevice {
            id: id.to_string(),
            base,
            len: layout::VIRTIO_MMIO_SIZE,
            irq,
            transport,
            device: handle,
            counters,
        });
        Ok((base, irq))
    }

    /// Take the attached virtio devices out of `em` (a build that failed half-way, so
    /// its devices are dropped with the manager: a vsock device's socket path is free
    /// again for a retry). Idempotent.
    pub fn remove_subscribers(&mut self, em: &mut EventManager) {
        for id in self.subscribers.drain(..) {
            if let Err(e) = em.remove_subscriber(id) {
                log::warn!("cannot remove a device from the event loop: {e:?}");
            }
        }
    }

    /// Per-device counters for a metrics flush, port-I/O devices first: the accesses
    /// since the previous call (the first call: since attach).
    pub fn take_metrics(&self) -> Vec<DeviceMetrics> {
        use crate::metrics::delta;
        let pio = self.pio.iter().map(|d| DeviceMetrics {
            id: d.id.to_string(),
            reads: delta(&d.counters.reads, &d.counters.flushed_reads),
            writes: delta(&d.counters.writes, &d.counters.flushed_writes),
            activated: None,
        });
        let mmio = self.mmio.iter().map(|d| DeviceMetrics {
            id: d.id.clone(),
            reads: delta(&d.counters.reads, &d.counters.flushed_reads),
            writes: delta(&d.counters.writes, &d.counters.flushed_writes),
            activated: Some(lock(lock(&d.transport).device()).is_activated()),
        });
        pio.chain(mmio).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn pio_devices_are_counted_and_the_marker_wakes_once() {
        let mut dm = DeviceManager::new();
        let rec = Arc::new(Mutex::new(Recorder::default()));
        dm.attach_pio(
            "rec",
            0x100,
            4,
            Some(7),
            LegacyHandle::Other(rec.clone()),
            None,
        )
        .unwrap();
        let marker = Arc::new(Mutex::new(BootMarker::new(false)));
        let ready_at = lock(&marker).ready_at();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        dm.attach_pio(
            "boot-marker",
            0x440,
            1,
            None,
            LegacyHandle::BootMarker(marker),
            Some((ready_at, evt.try_clone().unwrap())),
        )
        .unwrap();
        let mut d = [0u8; 1];
        assert!(dm.io_bus().read(0x102, &mut d));
        assert_eq!(d, [2]);
        assert!(dm.io_bus().write(0x101, &[9]));
        assert_eq!(lock(&rec).0, vec![(1, vec![9])]);
        // A write that is not the ready value does not wake the controller.
        assert!(dm.io_bus().write(0x440, &[1]));
        assert!(evt.read().is_err(), "no wake-up before ready");
        assert!(dm.io_bus().write(0x440, &[layout::BOOT_MARKER_READY]));
        assert!(dm.io_bus().write(0x440, &[layout::BOOT_MARKER_READY]));
        assert_eq!(evt.read().unwrap(), 1, "exactly one wake-up");
        let m = dm.take_metrics();
        assert_eq!(
            m[0],
            DeviceMetrics {
                id: "rec".into(),
                reads: 1,
                writes: 1,
                activated: None
            }
        );
        assert_eq!((m[1].id.as_str(), m[1].writes), ("boot-marker", 3));
        assert_eq!(dm.pio_devices()[0].irq, Some(7));
        // The next flush carries only what happened since.
        assert!(dm.io_bus().write(0x101, &[1]));
        let m = dm.take_metrics();
        assert_eq!((m[0].reads, m[0].writes), (0, 1));
        assert_eq!(m[1].writes, 0);
    }
}
