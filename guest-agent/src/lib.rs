//! husk guest agent library: the agent wire protocol shared by host and guest, the
//! function runners, the generic server, initramfs packing and the host client.
//!
//! Module map:
//! - [`protocol`]: frames and typed messages (host ⇄ agent), `Codec`, size limits.
//! - [`client`]: host side for schedulers (hybrid vsock handshake, invoke, restored).
//! - [`server`]: the agent's connection handling and invocation rules, generic over a
//!   [`server::Listener`] (vsock in the guest, Unix sockets in tests) and a
//!   [`server::Platform`] (reboot, entropy, clock).
//! - [`exec`] / [`runner`]: running the function (exec mode per invocation, worker mode
//!   long-lived), deadlines, output caps, stderr tails.
//! - [`worker`]: the function-side frame format for worker-mode functions.
//! - [`reaper`]: spawning functions in their own process group; reaping as PID 1.
//! - [`config`]: boot options (`husk.*` on the kernel command line) and function.json.
//! - [`pid1`]: mounts, SIGTERM, reboot, the ready marker. [`vsock`]: AF_VSOCK listener.
//! - [`pack`]: the reproducible initramfs packer behind `husk pack`.
//! - [`sync`]: the poison-tolerant lock helpers and the one error-chain printer.

pub mod client;
pub mod config;
pub mod exec;
pub mod pack;
pub mod pid1;
pub mod protocol;
pub mod reaper;
pub mod runner;
pub mod server;
pub mod sync;
pub mod vsock;
pub mod worker;
