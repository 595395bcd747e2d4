//! `husk` subcommands that talk to or prepare a sandbox without running a VM:
//! [`pack`] builds a guest initramfs for a function, [`invoke`] sends one invocation to a
//! running sandbox's agent, [`bench`] measures cold-start figures by running sandboxes.
//! Each exposes clap `Args` and a `run` returning an exit status.

pub mod bench;
pub mod invoke;
pub mod pack;
