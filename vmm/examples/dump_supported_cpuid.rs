//! Prints this host's `KVM_GET_SUPPORTED_CPUID` as a text table, one entry per line:
//! `function index flags eax ebx ecx edx` in hex. The CPUID unit tests read such
//! tables recorded on real hosts (`vmm/src/arch/x86_64/cpuid-fixtures/`).
//!
//! `cargo run -p husk-vmm --example dump_supported_cpuid > table.txt`

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kvm = Kvm::new()?;
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    println!("# KVM_GET_SUPPORTED_CPUID: function index flags eax ebx ecx edx");
    for e in cpuid.as_slice() {
        println!(
            "{:#010x} {:#x} {:#x} {:#010x} {:#010x} {:#010x} {:#010x}",
            e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx
        );
    }
    Ok(())
}
