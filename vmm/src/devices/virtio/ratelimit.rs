//! Rate-limited logging for messages a guest can trigger.
//!
//! A guest that writes garbage to a register or queues bad descriptors in a loop must not
//! be able to fill the host's disk through our log. Every such log line goes through
//! `warn_limited!` (crate-private macro of this module): each call site
//! gets its own [`LogLimiter`], which lets a burst of [`BURST`] messages through per
//! [`WINDOW_MS`] and counts the rest; the count is reported with the next message that
//! gets through.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Length of one rate-limiting window, in milliseconds.
pub const WINDOW_MS: u64 = 5_000;
/// Messages let through per call site and window.
pub const BURST: u32 = 10;

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The state of one rate-limited call site. Lock-free; usable from any thread.
#[derive(Debug)]
pub struct LogLimiter {
    window_start: AtomicU64,
    in_window: AtomicU32,
    suppressed: AtomicU32,
}

impl LogLimiter {
    /// A limiter whose first window starts with its first message.
    pub const fn new() -> Self {
        Self {
            window_start: AtomicU64::new(u64::MAX),
            in_window: AtomicU32::new(0),
            suppressed: AtomicU32::new(0),
        }
    }

    /// Whether a message may be logged now. Returns `Some(n)` when it may, `n` being the
    /// number of messages suppressed since the last one logged; `None` when it must be
    /// dropped.
    pub fn check(&self) -> Option<u32> {
        self.check_at(now_ms())
    }

    /// [`check`](Self::check) at an explicit time (milliseconds), for tests.
    pub fn check_at(&self, now: u64) -> Option<u32> {
        let start = self.window_start.load(Ordering::Relaxed);
        if start == u64::MAX || now.saturating_sub(start) >= WINDOW_MS {
            self.window_start.store(now, Ordering::Relaxed);
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::warn!` with a per-call-site rate limit; use it for every message the guest can
/// trigger.
macro_rules! warn_limited {
    ($($arg:tt)*) => {{
        static LIMITER: $crate::devices::virtio::ratelimit::LogLimiter =
            $crate::devices::virtio::ratelimit::LogLimiter::new();
        if let Some(suppressed) = LIMITER.check() {
            if suppressed > 0 {
                log::warn!("({} similar messages suppressed)", suppressed);
            }
            log::warn!($($arg)*);
        }
    }};
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppress_then_report() {
        let l = LogLimiter::new();
        for _ in 0..BURST {
            assert_eq!(l.check_at(100), Some(0));
        }
        assert_eq!(l.check_at(200), None);
        assert_eq!(l.check_at(WINDOW_MS + 99), None);
        // A new window: the suppressed count is reported once.
        assert_eq!(l.check_at(WINDOW_MS + 100), Some(2));
        assert_eq!(l.check_at(WINDOW_MS + 101), Some(0));
    }

    #[test]
    fn macro_compiles_and_runs_many_times() {
        for i in 0..100 {
            warn_limited!("test message {}", i);
        }
    }
}
