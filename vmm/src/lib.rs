//! husk VMM library: everything `husk` needs to build, run, pause and snapshot a microVM.
//!
//! Module map (see ARCHITECTURE.md for the full code map):
//! - [`arch`]: the x86_64 memory map and boot structures (page tables, GDT, zero page,
//!   MP table), CPUID and MSRs.
//! - [`vstate`]: guest memory, the KVM VM, vCPUs and their threads.
//! - [`devices`]: the device bus, legacy port-I/O devices and virtio-mmio devices.
//! - [`builder`]: validated VM resources → a paused [`vmm::Vmm`].
//! - [`vmm`]: the built VM: vCPUs, [`device_manager`], guest memory; pause/resume.
//! - [`controller`]: the VMM thread's event loop and the action channel.
//! - [`api`]: Firecracker's REST API on a Unix socket (its own thread).
//! - [`config`], [`cli`]: the configuration types (config file and API bodies) and
//!   the command line. [`logger`], [`metrics`]: logs and metrics.
//! - [`commands`]: subcommands that do not run a VM (`pack`, `invoke`).
//! - [`pool`]: K sandboxes restored from a snapshot, one fresh one per invocation.

pub mod api;
pub mod arch;
pub mod builder;
pub mod cli;
pub mod commands;
pub mod config;
pub mod controller;
pub mod device_manager;
pub mod devices;
pub mod logger;
pub mod metrics;
pub mod pool;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod stop;
pub mod vmm;
pub mod vstate;

/// Guest memory type used throughout the VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// The event manager of the VMM thread; devices are subscribers.
pub type EventManager = event_manager::EventManager<
    std::sync::Arc<std::sync::Mutex<dyn event_manager::MutEventSubscriber + Send>>,
>;
