//! `husk` subcommands that talk to or prepare a sandbox without running a VM:
//! [`pack`] builds a guest initramfs for a function, [`image`] an ext4 root filesystem,
//! [`invoke`] sends one invocation to a running sandbox's agent, [`snapshot`] creates
//! and restores function snapshots, [`bench`] measures cold-start figures by running
//! sandboxes. Each exposes clap `Args`.

pub mod bench;
pub mod image;
pub mod invoke;
pub mod pack;
pub mod pool;
pub mod snapshot;
