//! Fuzz the block device's request parsing and execution: the fuzz input *is* guest
//! memory (descriptor table, rings, request headers, data), so every chain, header,
//! sector and length is arbitrary. The device must never panic, and writes must never
//! reach beyond the image (the image file's size must not change).
#![no_main]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use husk_vmm::devices::virtio::block::Block;
use husk_vmm::devices::virtio::VirtioDevice;
use husk_vmm::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x1_0000;
const QSIZE: u16 = 16;
const IMAGE: u64 = 16 * 512;

fn queue() -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_ready(true);
    q.try_set_desc_table_address(GuestAddress(0)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(0x100)).unwrap();
    q.try_set_used_ring_address(GuestAddress(0x140)).unwrap();
    q
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    // One scratch image per fuzzing process, rewritten for every input.
    let path = std::env::temp_dir().join(format!("husk-fuzz-block-{}.img", std::process::id()));
    let image = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    image.write_all_at(&[0x5a; IMAGE as usize], 0).unwrap();
    // The first input byte picks read-only or read-write.
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let mut dev = Block::new("fuzz", &path, read_only).unwrap();
    dev.activate(mem.clone(), vec![queue()]).unwrap();
    for _ in 0..2 {
        let _ = dev.process_queue();
    }
    assert_eq!(image.metadata().unwrap().len(), IMAGE);
});
