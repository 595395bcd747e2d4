//! `warn_limited!`: `log::warn!` for messages a guest can trigger (a guest that writes
//! garbage to a register or queues bad descriptors in a loop must not fill the host's
//! disk through the log). It goes through the codebase's one rate limiter,
//! [`crate::logger::RateLimit`], with one limiter per call site: the first [`BURST`]
//! messages pass, then one in every [`EVERY`], each tagged with its event count.

/// Messages let through per call site before limiting starts.
pub const BURST: u64 = 10;
/// After the burst, one message in this many is logged.
pub const EVERY: u64 = 1000;

/// `log::warn!` with a per-call-site rate limit; use it for every message the guest can
/// trigger.
macro_rules! warn_limited {
    ($($arg:tt)*) => {{
        static LIMITER: $crate::logger::RateLimit = $crate::logger::RateLimit::new(
            $crate::devices::virtio::ratelimit::BURST,
            $crate::devices::virtio::ratelimit::EVERY,
        );
        $crate::log_limited!(LIMITER, warn, $($arg)*);
    }};
}
pub(crate) use warn_limited;
