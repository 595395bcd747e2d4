//! A tiny `log` backend writing to stderr or a file, and rate limiting for log lines
//! the guest can trigger.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use log::{LevelFilter, Log, Metadata, Record};

/// The process start, for relative timestamps (boot time is measured from here).
static START: OnceLock<Instant> = OnceLock::new();

/// Record the process start. Call first thing in `main`.
pub fn mark_process_start() {
    let _ = START.get_or_init(Instant::now);
}

/// Nanoseconds since [`mark_process_start`] (or since the first call).
pub fn nanos_since_start() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

struct Logger {
    level: LevelFilter,
    file: Option<Mutex<File>>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = nanos_since_start();
        let line = format!(
            "[{:>6}.{:06}] husk {:<5} {}\n",
            t / 1_000_000_000,
            (t / 1000) % 1_000_000,
            record.level(),
            record.args()
        );
        match &self.file {
            Some(f) => {
                let _ = crate::devices::bus::lock(f).write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log file cannot be opened.
    #[error("cannot open the log file {0}; check the path and permissions")]
    Open(String, #[source] std::io::Error),
    /// A logger was already installed.
    #[error("the logger was already initialized")]
    AlreadySet,
}

/// Parse a Firecracker-style level name (Error, Warning, Info, Debug, Trace, Off).
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// Install the logger.
pub fn init(level: LevelFilter, path: Option<&std::path::Path>) -> Result<(), LoggerError> {
    let file = match path {
        Some(p) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| LoggerError::Open(p.display().to_string(), e))?,
        )),
        None => None,
    };
    log::set_logger(Box::leak(Box::new(Logger { level, file })))
        .map_err(|_| LoggerError::AlreadySet)?;
    log::set_max_level(level);
    Ok(())
}

/// Rate limiter for guest-triggerable log lines: the first `burst` events are let
/// through, then one in every `every`.
#[derive(Debug)]
pub struct RateLimit {
    count: AtomicU64,
    burst: u64,
    every: u64,
}

impl RateLimit {
    /// A limiter letting `burst` events through, then one in `every`.
    pub const fn new(burst: u64, every: u64) -> Self {
        Self {
            count: AtomicU64::new(0),
            burst,
            every,
        }
    }

    /// Count one event; true if it should be logged.
    pub fn allow(&self) -> bool {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        n < self.burst || (self.every > 0 && (n - self.burst) % self.every == self.every - 1)
    }

    /// How many events were counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Log at `$lvl` through the static rate limiter `$rl`.
#[macro_export]
macro_rules! log_limited {
    ($rl:expr, $lvl:ident, $($arg:tt)+) => {
        if $rl.allow() {
            log::$lvl!("{} (event #{}, rate limited)", format_args!($($arg)+), $rl.count());
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_a_burst_then_one_in_n() {
        let rl = RateLimit::new(3, 100);
        let allowed: Vec<u64> = (0..1000).filter(|_| rl.allow()).collect();
        assert_eq!(allowed.len(), 3 + 9);
        assert_eq!(rl.count(), 1000);
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("Warning"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("Debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("loud"), None);
    }
}
