//! VM state: guest memory, the KVM VM and the vCPUs.

pub mod memory;
pub mod vcpu;
pub mod vm;

#[cfg(test)]
mod kvm_tests;
#[cfg(test)]
pub(crate) mod test_guest;
