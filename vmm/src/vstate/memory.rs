//! Guest RAM: anonymous mappings created with vm-memory from the architecture's
//! memory map, and their registration with KVM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::arch_memory_regions;
use crate::GuestMemoryMmap;

/// Errors creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("cannot allocate {mib} MiB of guest memory; lower --mem-mib or free host memory")]
    Create {
        /// Requested size.
        mib: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM refused guest memory slot {slot}")]
    Register {
        /// Slot number.
        slot: u32,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Host address lookup failed (cannot happen for a region we iterate over).
    #[error("guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
}

/// Allocate `mem_mib` MiB of guest RAM laid out per the x86_64 memory map.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let regions = arch_memory_regions(mem_mib << 20);
    GuestMemoryMmap::from_ranges(&regions).map_err(|source| MemoryError::Create {
        mib: mem_mib,
        source,
    })
}

/// Register every region of `mem` with the VM, one KVM slot per region.
///
/// # Safety
///
/// KVM keeps the host addresses of `mem`'s mappings: the caller must keep `mem` (or a
/// clone of it, which shares the mappings) alive for as long as `vm` exists, or the
/// guest would read and write freed host memory.
pub unsafe fn register_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::HostAddress(region.start_addr().0))?;
        let kregion = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range [host, host + len) is a live mapping owned by `mem`,
        // and the caller guarantees that `mem` outlives `vm` (see # Safety).
        unsafe { vm.set_user_memory_region(kregion) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}
