//! Why the VM stopped, and the signal devices and vCPUs use to stop it.
//!
//! Process exit statuses of `husk` (also in `husk --help`):
//! - 0: the guest reset or rebooted (i8042 reset, triple fault, KVM shutdown), or
//!   powered off/halted ("reboot: Power down" / "reboot: System halted" on its console),
//!   or `husk snapshot create --at-ready` took its snapshot;
//! - 1: a VMM or configuration error (including a vCPU that KVM could not run);
//! - 2: command-line usage error;
//! - 3: the guest kernel panicked ("Kernel panic - not syncing" on the console);
//! - 4: the boot timeout expired before the guest wrote the ready marker;
//! - 5: the guest agent reported a fatal error (it wrote its fatal value to the marker
//!   port).
//! - 128 + N: the VMM received termination signal N (SIGTERM: 143, SIGINT: 130) and
//!   stopped the guest cleanly, as a shell reports a process killed by N.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset or rebooted.
    Reset,
    /// The guest powered off or halted (seen on its console).
    PowerOff,
    /// The guest kernel panicked.
    GuestPanic,
    /// A vCPU or device failed.
    Error(String),
    /// The boot timeout expired.
    BootTimeout,
    /// The guest agent reported a fatal error through the marker port.
    AgentFatal,
    /// The VMM received this termination signal (SIGTERM, SIGINT).
    Signal(i32),
    /// `husk snapshot create --at-ready` took its snapshot.
    SnapshotTaken,
}

impl StopReason {
    /// The `husk` process exit status for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::Reset | StopReason::PowerOff | StopReason::SnapshotTaken => 0,
            StopReason::Error(_) => 1,
            StopReason::GuestPanic => 3,
            StopReason::BootTimeout => 4,
            StopReason::AgentFatal => 5,
            StopReason::Signal(n) => 128 + n,
        }
    }
}

/// A shared "stop the VM" request: the first reason recorded wins; the eventfd wakes
/// the VMM's event loop.
#[derive(Debug)]
pub struct StopSignal {
    reason: Arc<Mutex<Option<StopReason>>>,
    evt: EventFd,
}

impl StopSignal {
    /// A new signal with no reason recorded.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Arc::new(Mutex::new(None)),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Another handle to the same signal.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            reason: self.reason.clone(),
            evt: self.evt.try_clone()?,
        })
    }

    /// Request a stop. Only the first reason is kept.
    pub fn stop(&self, reason: StopReason) {
        {
            let mut r = lock(&self.reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot wake the VMM event loop to stop the VM: {e}");
        }
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<StopReason> {
        lock(&self.reason).clone()
    }

    /// The eventfd to poll.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes() {
        let s = StopSignal::new().unwrap();
        let c = s.try_clone().unwrap();
        assert_eq!(s.reason(), None);
        c.stop(StopReason::GuestPanic);
        s.stop(StopReason::Reset);
        assert_eq!(s.reason(), Some(StopReason::GuestPanic));
        assert_eq!(s.eventfd().read().unwrap(), 2);
        assert_eq!(StopReason::GuestPanic.exit_code(), 3);
        assert_eq!(StopReason::Reset.exit_code(), 0);
        assert_eq!(StopReason::Error("x".into()).exit_code(), 1);
        assert_eq!(StopReason::Signal(libc::SIGTERM).exit_code(), 143);
    }
}
