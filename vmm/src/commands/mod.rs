//! `husk` subcommands that talk to or prepare a sandbox without running a VM:
//! [`pack`] builds a guest initramfs for a function, [`invoke`] sends one invocation to a
//! running sandbox's agent, [`snapshot`] creates and restores function snapshots. Each
//! exposes clap `Args`.

pub mod invoke;
pub mod pack;
pub mod snapshot;
