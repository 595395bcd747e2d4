use super::*;
use crate::devices::virtio::descriptor::tests::{desc, mem, F_WRITE};
use crate::devices::virtio::mmio::reg;
use crate::devices::virtio::rng::Entropy;
use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::devices::BusDevice;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, GuestAddress};

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// A live entropy transport whose queue (at 0x1_0000) has consumed one request.
fn live_rng(m: &GuestMemoryMmap) -> (MmioTransport, Arc<Mutex<Entropy>>) {
    let dev = Arc::new(Mutex::new(Entropy::new().unwrap()));
    let mut t = MmioTransport::new(m.clone(), dev.clone());
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    w(&mut t, reg::DRIVER_FEATURES, 1);
    w(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    let vq = MockSplitQueue::create(m, GuestAddress(0x1_0000), 16);
    w(&mut t, reg::QUEUE_NUM, 16);
    w(&mut t, reg::QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
    w(&mut t, reg::QUEUE_DRIVER_LOW, vq.avail_addr().0 as u32);
    w(&mut t, reg::QUEUE_DEVICE_LOW, vq.used_addr().0 as u32);
    w(&mut t, reg::QUEUE_READY, 1);
    w(&mut t, reg::STATUS, ALL_OK);
    assert!(dev.lock().unwrap().is_activated());
    vq.add_desc_chains(&[desc(0x4000, 8, F_WRITE, 0)], 0)
        .unwrap();
    assert_eq!(dev.lock().unwrap().process_queue().unwrap(), 1);
    (t, dev)
}

#[test]
fn save_restore_resumes_the_queue_where_it_was() {
    let m = mem();
    let (t, dev) = live_rng(&m);
    let state = t.save().unwrap();
    assert_eq!(state.status, ALL_OK);
    assert_eq!(state.queues[0].next_avail, 1);
    assert_eq!(state.queues[0].next_used, 1);
    let json = serde_json::to_string(&state).unwrap();
    let dev_state = dev.lock().unwrap().save();
    drop((t, dev));

    let back: MmioTransportState = serde_json::from_str(&json).unwrap();
    let dev2 = Arc::new(Mutex::new(Entropy::restore(&dev_state).unwrap()));
    let t2 = MmioTransport::restore(m.clone(), dev2.clone(), &back).unwrap();
    // Save, restore, save again: identical.
    assert_eq!(t2.save().unwrap(), state);
    assert!(dev2.lock().unwrap().is_activated());
    assert_eq!(
        dev2.lock().unwrap().acked_features(),
        1 << VIRTIO_F_VERSION_1
    );
    // The guest queues a second request: it lands in used slot 1, not 0.
    let m2 = &m;
    let avail = GuestAddress(state.queues[0].avail_ring);
    let used = GuestAddress(state.queues[0].used_ring);
    use vm_memory::Bytes;
    let table = GuestAddress(state.queues[0].desc_table);
    m2.write_obj(desc(0x5000, 16, F_WRITE, 0), table.unchecked_add(16))
        .unwrap();
    m2.write_obj(1u16, avail.unchecked_add(4 + 2)).unwrap();
    m2.write_obj(2u16, avail.unchecked_add(2)).unwrap();
    assert_eq!(dev2.lock().unwrap().process_queue().unwrap(), 1);
    assert_eq!(m2.read_obj::<u16>(used.unchecked_add(2)).unwrap(), 2);
    assert_eq!(m2.read_obj::<u32>(used.unchecked_add(4 + 8)).unwrap(), 1);
    assert_eq!(
        m2.read_obj::<u32>(used.unchecked_add(4 + 8 + 4)).unwrap(),
        16
    );
}

#[test]
fn hostile_states_are_refused() {
    let m = mem();
    let (t, _dev) = live_rng(&m);
    let good = t.save().unwrap();
    let fresh = || Arc::new(Mutex::new(Entropy::new().unwrap())) as Arc<Mutex<dyn VirtioDevice>>;
    let restore = |s: &MmioTransportState| MmioTransport::restore(m.clone(), fresh(), s).err();

    let mut s = good.clone();
    s.device_type = 19;
    assert!(matches!(
        restore(&s),
        Some(MmioRestoreError::DeviceType {
            saved: 19,
            actual: 4
        })
    ));
    let mut s = good.clone();
    s.status = status::ACKNOWLEDGE | status::DRIVER_OK;
    assert!(matches!(restore(&s), Some(MmioRestoreError::Status(5))));
    let mut s = good.clone();
    s.driver_features |= 1 << 3;
    assert!(matches!(restore(&s), Some(MmioRestoreError::Features(_))));
    let mut s = good.clone();
    s.queues.push(s.queues[0]);
    assert!(matches!(restore(&s), Some(MmioRestoreError::Queue { .. })));
    let mut s = good.clone();
    s.queues[0].size = 3;
    assert!(matches!(
        restore(&s),
        Some(MmioRestoreError::Queue { index: 0, .. })
    ));
    let mut s = good.clone();
    s.queues[0].max_size = 1024;
    assert!(matches!(
        restore(&s),
        Some(MmioRestoreError::Queue { index: 0, .. })
    ));
    let mut s = good.clone();
    s.queues[0].desc_table = 0x1_0008; // misaligned
    assert!(matches!(
        restore(&s),
        Some(MmioRestoreError::Queue { index: 0, .. })
    ));
    let mut s = good.clone();
    s.queues[0].used_ring = 0x10_0000; // outside guest memory
    assert!(matches!(
        restore(&s),
        Some(MmioRestoreError::Queue { index: 0, .. })
    ));
    let mut s = good.clone();
    s.queues[0].ready = false;
    assert!(matches!(
        restore(&s),
        Some(MmioRestoreError::Queue { index: 0, .. })
    ));
    // A transport that was not live restores without activating.
    let mut s = good.clone();
    s.status = status::ACKNOWLEDGE;
    s.queues[0].ready = false;
    let dev = fresh();
    MmioTransport::restore(m.clone(), dev.clone(), &s).unwrap();
    assert!(!dev.lock().unwrap().is_activated());
    // Unknown fields are refused.
    let mut v = serde_json::to_value(&good).unwrap();
    v["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<MmioTransportState>(v).is_err());
}
