//! husk guest agent library: the agent wire protocol shared by host and guest, the
//! function runners, the generic server, initramfs packing and the host client.
//!
//! Module map:
//! - [`protocol`]: frames and typed messages (host ⇄ agent).
//! - [`worker`]: the function-side frame format for worker-mode functions.

pub mod client;
pub mod config;
pub mod exec;
pub mod pack;
pub mod pid1;
pub mod protocol;
pub mod reaper;
pub mod runner;
pub mod server;
pub mod vsock;
pub mod worker;
