use super::*;
use crate::devices::virtio::{ActivateError, IrqTrigger};
use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::EventFd;

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

struct TestDevice {
    avail: u64,
    acked: u64,
    max_sizes: Vec<u16>,
    evts: Vec<EventFd>,
    irq: IrqTrigger,
    config: [u8; 8],
    activated_with: Option<Vec<Queue>>,
    fail_activate: bool,
    resets: u32,
}

impl TestDevice {
    fn new() -> Self {
        Self {
            avail: VERSION_1 | 1,
            acked: 0,
            max_sizes: vec![16, 16],
            evts: (0..2)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
            irq: IrqTrigger::new().unwrap(),
            config: *b"abcdefgh",
            activated_with: None,
            fail_activate: false,
            resets: 0,
        }
    }
}

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn avail_features(&self) -> u64 {
        self.avail
    }
    fn acked_features(&self) -> u64 {
        self.acked
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn interrupt(&self) -> &IrqTrigger {
        &self.irq
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let Ok(off) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = off
            .checked_add(data.len())
            .and_then(|end| self.config.get(off..end))
        {
            data.copy_from_slice(src);
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::BadQueue {
                index: 0,
                reason: "test".into(),
            });
        }
        self.activated_with = Some(queues);
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.activated_with.is_some()
    }
    fn reset(&mut self) -> bool {
        self.resets += 1;
        self.activated_with = None;
        true
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn setup() -> (MmioTransport, Arc<Mutex<TestDevice>>) {
    let dev = Arc::new(Mutex::new(TestDevice::new()));
    let t = MmioTransport::new(mem(), dev.clone());
    (t, dev)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0xaau8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport, features: u64) {
    w(t, reg::STATUS, status::ACKNOWLEDGE);
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 0);
    w(t, reg::DRIVER_FEATURES, features as u32);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    w(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, index: u32, base: u64) {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(base), 16);
    w(t, reg::QUEUE_SEL, index);
    w(t, reg::QUEUE_NUM, 16);
    for (lo, addr) in [
        (reg::QUEUE_DESC_LOW, vq.desc_table_addr().0),
        (reg::QUEUE_DRIVER_LOW, vq.avail_addr().0),
        (reg::QUEUE_DEVICE_LOW, vq.used_addr().0),
    ] {
        w(t, lo, addr as u32);
        w(t, lo + 4, (addr >> 32) as u32);
    }
    w(t, reg::QUEUE_READY, 1);
}

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identification_registers() {
    let (mut t, _) = setup();
    assert_eq!(r(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r(&mut t, reg::VERSION), 2);
    assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
    assert_eq!(r(&mut t, reg::VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1); // VERSION_1 is bit 32
    w(&mut t, reg::DEVICE_FEATURES_SEL, 7);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 16);
    w(&mut t, reg::QUEUE_SEL, 2);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
}

#[test]
fn bad_widths_misaligned_and_unknown_offsets_are_harmless() {
    let (mut t, _) = setup();
    let mut one = [0xffu8; 1];
    t.read(reg::MAGIC_VALUE, &mut one);
    assert_eq!(one, [0]);
    let mut eight = [0xffu8; 8];
    t.read(reg::MAGIC_VALUE, &mut eight);
    assert_eq!(eight, [0; 8]);
    let mut four = [0xffu8; 4];
    t.read(0x2, &mut four);
    assert_eq!(four, [0; 4]);
    assert_eq!(r(&mut t, 0xc8), 0);
    // Writes of bad width or to unknown/misaligned offsets change nothing.
    t.write(reg::STATUS, &[1]);
    t.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
    w(&mut t, reg::STATUS + 1, 1);
    w(&mut t, 0xe0, 0xdead_beef);
    w(&mut t, reg::MAGIC_VALUE, 0);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    assert_eq!(r(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
    // Config space: any width, out of range leaves zeros.
    let mut cfg = [0u8; 3];
    t.read(0x102, &mut cfg);
    assert_eq!(&cfg, b"cde");
    let mut cfg = [0xffu8; 4];
    t.read(0xffe, &mut cfg);
    assert_eq!(cfg, [0; 4]);
    t.read(u64::MAX, &mut cfg);
    t.write(u64::MAX, &cfg);
}

#[test]
fn full_init_activates_device_with_driver_queues() {
    let (mut t, dev) = setup();
    negotiate(&mut t, VERSION_1 | 1);
    assert_eq!(dev.lock().unwrap().acked, VERSION_1 | 1);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    w(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    w(&mut t, reg::STATUS, ALL_OK);
    assert_eq!(r(&mut t, reg::STATUS), ALL_OK);
    let d = dev.lock().unwrap();
    let qs = d.activated_with.as_ref().unwrap();
    assert_eq!(qs.len(), 2);
    assert_eq!(qs[1].desc_table(), 0x2_0000);
    assert_eq!(qs[1].size(), 16);
    assert!(qs[0].ready());
}

#[test]
fn features_not_offered_are_dropped_and_version_1_is_required() {
    let (mut t, dev) = setup();
    negotiate(&mut t, 1 | (1 << 5) | (1 << 40));
    // Without VERSION_1, FEATURES_OK does not stick.
    assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
    assert_eq!(dev.lock().unwrap().acked, 0);
    w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    w(&mut t, reg::DRIVER_FEATURES, 1 | (1 << 8));
    w(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(
        r(&mut t, reg::STATUS),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
    );
    assert_eq!(dev.lock().unwrap().acked, VERSION_1 | 1);
    // Features are frozen after FEATURES_OK.
    w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    w(&mut t, reg::DRIVER_FEATURES, 0);
    assert_eq!(t.driver_features, VERSION_1 | 1);
}

#[test]
fn bad_status_transitions_are_ignored() {
    let (mut t, dev) = setup();
    w(&mut t, reg::STATUS, ALL_OK);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    w(&mut t, reg::STATUS, status::DRIVER);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    w(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::FEATURES_OK,
    );
    assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE);
    // Clearing a bit without a reset is not allowed either.
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, reg::STATUS, status::DRIVER);
    assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
    w(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FAILED,
    );
    assert_eq!(
        r(&mut t, reg::STATUS),
        status::ACKNOWLEDGE | status::DRIVER | status::FAILED
    );
    assert!(!dev.lock().unwrap().is_activated());
}

#[test]
fn queue_registers_frozen_after_driver_ok() {
    let (mut t, _dev) = setup();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    w(&mut t, reg::STATUS, ALL_OK);
    w(&mut t, reg::QUEUE_SEL, 0);
    w(&mut t, reg::QUEUE_NUM, 4);
    w(&mut t, reg::QUEUE_DESC_LOW, 0x5_0000);
    w(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    assert_eq!(t.queues()[0].size(), 16);
    assert_eq!(t.queues()[0].desc_table(), 0x1_0000);
}

#[test]
fn queue_registers_rejected_before_features_ok_and_when_invalid() {
    let (mut t, _dev) = setup();
    w(&mut t, reg::QUEUE_NUM, 8);
    assert_eq!(t.queues()[0].size(), 16);
    negotiate(&mut t, VERSION_1);
    w(&mut t, reg::QUEUE_NUM, 3); // not a power of two
    w(&mut t, reg::QUEUE_NUM, 32); // above max
    w(&mut t, reg::QUEUE_NUM, 0x1_0008); // above u16
    assert_eq!(t.queues()[0].size(), 16);
    w(&mut t, reg::QUEUE_DESC_LOW, 0x1001); // misaligned
    assert_eq!(t.queues()[0].desc_table(), 0);
    // Rings outside guest memory: QueueReady does not stick.
    w(&mut t, reg::QUEUE_DESC_HIGH, 1);
    w(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    // Missing queue: ignored.
    w(&mut t, reg::QUEUE_SEL, 9);
    w(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
}

#[test]
fn driver_ok_without_ready_queues_needs_reset() {
    let (mut t, dev) = setup();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    w(&mut t, reg::STATUS, ALL_OK);
    let st = r(&mut t, reg::STATUS);
    assert_eq!(st & status::DRIVER_OK, 0);
    assert_ne!(st & status::DEVICE_NEEDS_RESET, 0);
    assert!(!dev.lock().unwrap().is_activated());
    assert_eq!(
        r(&mut t, reg::INTERRUPT_STATUS),
        super::super::VIRTIO_MMIO_INT_CONFIG
    );
}

#[test]
fn activation_failure_needs_reset_then_reset_recovers() {
    let (mut t, dev) = setup();
    dev.lock().unwrap().fail_activate = true;
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    w(&mut t, reg::STATUS, ALL_OK);
    assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    w(&mut t, reg::STATUS, 0);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    assert!(!t.queues()[0].ready());
    dev.lock().unwrap().fail_activate = false;
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 0x1_0000);
    setup_queue(&mut t, 1, 0x2_0000);
    w(&mut t, reg::STATUS, ALL_OK);
    assert_eq!(r(&mut t, reg::STATUS), ALL_OK);
    // Reset of an active device resets the device too.
    w(&mut t, reg::STATUS, 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
    assert!(!dev.lock().unwrap().is_activated());
}

#[test]
fn notify_signals_queue_eventfd_and_interrupt_ack_clears_bits() {
    let (mut t, dev) = setup();
    w(&mut t, reg::QUEUE_NOTIFY, 1);
    w(&mut t, reg::QUEUE_NOTIFY, 7);
    {
        let d = dev.lock().unwrap();
        assert_eq!(d.evts[1].read().unwrap(), 1);
        assert!(d.evts[0].read().is_err()); // EAGAIN: not signalled
        d.irq.trigger(0x3).unwrap();
    }
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 3);
    w(&mut t, reg::INTERRUPT_ACK, 1);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 2);
}

#[test]
fn random_register_traffic_never_panics_and_keeps_invariants() {
    let (mut t, dev) = setup();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..20_000 {
        let r = next();
        // Mostly real registers, sometimes anything in (and past) the window.
        let offset = if r & 3 == 0 {
            next() % 0x1100
        } else {
            (next() % 0x30) * 4
        };
        let width = [4usize, 4, 4, 1, 2, 8, 3, 0][(next() % 8) as usize];
        let v = match next() % 4 {
            0 => next() as u32 & 0xff,
            1 => 1,
            2 => 0,
            _ => next() as u32,
        };
        let mut buf = vec![0u8; width];
        if r & 4 == 0 {
            t.read(offset, &mut buf);
        } else {
            let bytes = v.to_le_bytes();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = bytes[i % 4];
            }
            t.write(offset, &buf);
        }
        if round % 1000 == 999 {
            // Occasionally drive a clean init so activation paths get exercised too.
            w(&mut t, reg::STATUS, 0);
            negotiate(&mut t, VERSION_1);
            setup_queue(&mut t, 0, 0x1_0000);
            setup_queue(&mut t, 1, 0x2_0000);
            w(&mut t, reg::STATUS, ALL_OK);
            assert_eq!(r_status(&mut t), ALL_OK);
        }
        let st = t.status();
        let active = dev.lock().unwrap().is_activated();
        assert_eq!(
            st & status::DRIVER_OK != 0,
            active,
            "status {st:#x} vs activated {active}"
        );
        assert_eq!(dev.lock().unwrap().acked & !(VERSION_1 | 1), 0);
    }
}

fn r_status(t: &mut MmioTransport) -> u32 {
    r(t, reg::STATUS)
}
