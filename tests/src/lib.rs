//! husk test harness library: helpers for end-to-end tests ([`e2e`]), a newc cpio
//! writer for initramfs images ([`cpio`]), KVM host detection ([`kvmhost`]), and the
//! emulated KVM test host behind the `husk-testhost` binary ([`testhost`]).

pub mod cpio;
pub mod e2e;
pub mod kvmhost;
pub mod pgroup;
pub mod testhost;
