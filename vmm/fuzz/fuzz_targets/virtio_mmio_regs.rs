//! Fuzz the virtio-mmio transport with arbitrary register traffic (any offset, width
//! and value) in front of the entropy device, with guest memory also fuzz-controlled.
//! It must never panic, and DRIVER_OK must be set exactly when the device is active.
#![no_main]

use std::sync::{Arc, Mutex};

use husk_vmm::devices::virtio::mmio::{status, MmioTransport};
use husk_vmm::devices::virtio::rng::Entropy;
use husk_vmm::devices::virtio::VirtioDevice;
use husk_vmm::devices::BusDevice;
use husk_vmm::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let (ops, memory) = data.split_at(data.len().min(8 * 512));
    let n = memory.len().min(0x1_0000);
    mem.write_slice(&memory[..n], GuestAddress(0)).unwrap();
    let dev = Arc::new(Mutex::new(Entropy::new().unwrap()));
    let mut t = MmioTransport::new(mem, dev.clone());
    if data.first().is_some_and(|b| b & 0x80 != 0) {
        // Start from a live device half of the time, so the fuzzer spends its effort on
        // frozen registers, resets and queue processing rather than on finding the init
        // sequence.
        let w = |t: &mut MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());
        w(&mut t, 0x70, status::ACKNOWLEDGE);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0x0);
        w(&mut t, 0x90, 0x100);
        w(&mut t, 0xa0, 0x140);
        w(&mut t, 0x44, 1);
        let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        w(&mut t, 0x70, ok);
        assert_eq!(t.status(), ok);
    }
    // Each op: [kind, offset_lo, offset_hi, width, value x4].
    for op in ops.chunks_exact(8) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) % 0x1100;
        let width = usize::from(op[3] % 9);
        let value = [op[4], op[5], op[6], op[7], op[4], op[5], op[6], op[7]];
        if op[0] & 1 == 0 {
            let mut buf = vec![0u8; width];
            t.read(offset, &mut buf);
        } else {
            t.write(offset, &value[..width]);
        }
        let active = dev.lock().unwrap().is_activated();
        assert_eq!(t.status() & status::DRIVER_OK != 0, active);
        if active {
            // The event loop's work, done here to reach the queue code too.
            let _ = dev.lock().unwrap().process_queue();
        }
    }
});
