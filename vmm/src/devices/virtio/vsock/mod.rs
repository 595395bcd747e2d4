//! virtio-vsock (device type 19) with the hybrid Unix-socket backend.
//!
//! - [`device`]: queues (rx, tx, event), features, config space (the guest CID).
//! - [`packet`]: the packet header and checked reads/writes of packets.
//! - [`backend`]: the trait between the device and its host side.
//! - [`unix`]: the Firecracker-compatible Unix-socket backend.
//! - [`persist`]: saved state.

pub mod backend;
pub mod device;
mod event_handler;
pub mod packet;
pub mod persist;
pub mod unix;

use std::io;
use std::path::PathBuf;

pub use device::{Vsock, QUEUE_SIZE};
pub use unix::VsockUnixBackend;

/// Errors of the vsock device and its backend.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or out of range.
    #[error("guest CID {0} is invalid: use a value from 3 to 4294967294")]
    InvalidCid(u64),
    /// The directory of the socket path does not exist.
    #[error("the directory of vsock socket {0} does not exist; create it first")]
    UdsDirMissing(PathBuf),
    /// Another process is listening on the socket path.
    #[error("vsock socket {0} is in use by a running listener (another husk?); pick another path")]
    UdsInUse(PathBuf),
    /// The path exists and is not a socket: we will not delete it.
    #[error("{0} exists and is not a socket; remove it or pick another vsock path")]
    UdsNotSocket(PathBuf),
    /// Binding the listening socket failed.
    #[error("cannot listen on vsock socket {path}")]
    UdsBind {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Creating the connection timer failed.
    #[error("cannot create the vsock connection timer")]
    Timer(#[source] io::Error),
    /// Creating an eventfd failed (likely out of file descriptors: raise `ulimit -n`).
    #[error("cannot create the vsock device's eventfds (check the open-files limit)")]
    EventFd(#[source] io::Error),
    /// The device is not active, so the guest cannot be told anything.
    #[error("the vsock device is not active yet")]
    NotActivated,
    /// The guest has no buffer in the event queue.
    #[error("the guest has no free buffer in the vsock event queue")]
    NoEventBuffer,
    /// Signalling the guest failed.
    #[error("cannot signal the vsock device's interrupt")]
    Interrupt(#[source] io::Error),
    /// A saved state does not fit this device.
    #[error("invalid vsock device state: {0}")]
    BadState(String),
}
