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

/// Where log lines go and how they look; replaced as a whole by [`configure`].
struct LogState {
    level: LevelFilter,
    file: Option<File>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

static STATE: Mutex<LogState> = Mutex::new(LogState {
    level: LevelFilter::Warn,
    file: None,
    show_level: true,
    show_origin: false,
    module: None,
});

struct Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut st = crate::devices::bus::lock(&STATE);
        if let Some(m) = &st.module {
            if !record
                .module_path()
                .is_some_and(|p| p.starts_with(m.as_str()))
            {
                return;
            }
        }
        let t = nanos_since_start();
        let mut line = format!(
            "[{:>6}.{:06}] husk ",
            t / 1_000_000_000,
            (t / 1000) % 1_000_000
        );
        if st.show_level {
            line.push_str(&format!("{:<5} ", record.level()));
        }
        if st.show_origin {
            line.push_str(&format!(
                "{}:{} ",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!("{}\n", record.args()));
        match st.file.as_mut() {
            // A full pipe drops the line: logging never blocks the VMM.
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
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
    /// Unknown level name.
    #[error("unknown log level {0:?}: use Off, Error, Warning, Info, Debug or Trace")]
    Level(String),
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

/// Install the logger (stderr, or `path`: a file, created if missing, or a named pipe).
pub fn init(level: LevelFilter, path: Option<&std::path::Path>) -> Result<(), LoggerError> {
    let file = match path {
        Some(p) => Some(
            crate::metrics::open_nonblocking(p)
                .map_err(|e| LoggerError::Open(p.display().to_string(), e))?,
        ),
        None => None,
    };
    {
        let mut st = crate::devices::bus::lock(&STATE);
        st.level = level;
        st.file = file;
    }
    log::set_logger(&Logger).map_err(|_| LoggerError::AlreadySet)?;
    log::set_max_level(level);
    Ok(())
}

/// Reconfigure the installed logger (`PUT /logger`, `--show-level`, the config file's
/// `logger` section). Fields left out keep Firecracker's defaults: level Info, no
/// level or origin shown, stderr.
pub fn configure(cfg: &crate::config::LoggerConfig) -> Result<(), LoggerError> {
    let level = match &cfg.level {
        Some(l) => parse_level(l).ok_or_else(|| LoggerError::Level(l.clone()))?,
        None => LevelFilter::Info,
    };
    let file = match &cfg.log_path {
        Some(p) => Some(
            crate::metrics::open_nonblocking(p)
                .map_err(|e| LoggerError::Open(p.display().to_string(), e))?,
        ),
        None => None,
    };
    let mut st = crate::devices::bus::lock(&STATE);
    *st = LogState {
        level,
        file,
        show_level: cfg.show_level.unwrap_or(false),
        show_origin: cfg.show_log_origin.unwrap_or(false),
        module: cfg.module.clone(),
    };
    // The logger itself may not be installed yet (tests): install it, once.
    let _ = log::set_logger(&Logger);
    log::set_max_level(level);
    Ok(())
}

/// Show or hide the level and the origin on each line (the `--show-level` and
/// `--show-log-origin` flags).
pub fn set_format(show_level: bool, show_origin: bool) {
    let mut st = crate::devices::bus::lock(&STATE);
    st.show_level = show_level;
    st.show_origin = show_origin;
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
    fn configure_writes_to_the_file_with_level_and_origin() {
        let path = std::env::temp_dir().join(format!("husk-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let cfg = crate::config::LoggerConfig {
            log_path: Some(path.clone()),
            level: Some("Info".into()),
            show_level: Some(true),
            show_log_origin: Some(true),
            module: None,
        };
        configure(&cfg).unwrap();
        log::info!("hello from the logger test");
        log::debug!("below the level");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("INFO  "), "{text}");
        assert!(text.contains("logger.rs:"), "{text}");
        assert!(text.contains("hello from the logger test"), "{text}");
        assert!(!text.contains("below the level"), "{text}");
        let bad = crate::config::LoggerConfig {
            level: Some("loud".into()),
            ..Default::default()
        };
        assert!(matches!(configure(&bad), Err(LoggerError::Level(_))));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("Warning"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("Debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("loud"), None);
    }
}
