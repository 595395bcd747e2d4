//! Metrics, Firecracker style: counters kept in atomics, written as one JSON object
//! per line to the file or named pipe given by `PUT /metrics` (or `--metrics-path`)
//! on each `FlushMetrics` action and when the VMM exits. There is no periodic flush:
//! an idle sandbox costs no wake-ups. As in Firecracker, each flush writes every counter's
//! increase since the previous flush (the first flush: since the VMM started), so a
//! consumer sums the lines; states and values (`activated`, `boot.ready_after_us`) are
//! written as they are.
//!
//! Where the counts come from: vCPU exits by kind from [`record_exit`] (called by the
//! vCPU loop's exit handler), API requests and errors from the API thread, per-device
//! guest accesses from the device manager's counting wrappers, boot time from the
//! boot-ready marker.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_ioctls::VcpuExit;
use serde_json::{json, Value};

use crate::config::MetricsConfig;

/// One counter: a running count and the count at the last flush.
#[derive(Debug, Default)]
pub struct Counter {
    count: AtomicU64,
    flushed: AtomicU64,
}

impl Counter {
    /// Zero.
    pub const fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }
    /// Add one.
    pub fn inc(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    /// The count since the VMM started.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    /// The increase since the previous call (the first call: since the start), for a
    /// flush. Increments racing with it land in the next flush, never lost or doubled.
    pub fn take_delta(&self) -> u64 {
        delta(&self.count, &self.flushed)
    }
}

/// `count` minus its value at the previous call (kept in `flushed`).
pub fn delta(count: &AtomicU64, flushed: &AtomicU64) -> u64 {
    let now = count.load(Ordering::Relaxed);
    now.wrapping_sub(flushed.swap(now, Ordering::Relaxed))
}

/// vCPU exits by kind (all vCPUs together).
#[derive(Debug, Default)]
pub struct VcpuExits {
    /// Port I/O reads.
    pub io_in: Counter,
    /// Port I/O writes.
    pub io_out: Counter,
    /// MMIO reads.
    pub mmio_read: Counter,
    /// MMIO writes.
    pub mmio_write: Counter,
    /// HLT (only without the in-kernel irqchip halting).
    pub hlt: Counter,
    /// Triple fault / shutdown.
    pub shutdown: Counter,
    /// KVM system events (reset, shutdown, crash).
    pub system_event: Counter,
    /// KVM could not enter the guest or failed internally.
    pub failures: Counter,
    /// Anything else.
    pub other: Counter,
}

/// API server counters.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// Requests parsed (well-formed HTTP).
    pub requests: Counter,
    /// Requests answered with a 4xx or 5xx status.
    pub errors: Counter,
    /// Connections dropped for malformed or oversized HTTP.
    pub bad_http: Counter,
}

/// All global counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// vCPU exits.
    pub vcpu: VcpuExits,
    /// The API server.
    pub api: ApiCounters,
}

/// The process's counters.
pub static METRICS: Metrics = Metrics {
    vcpu: VcpuExits {
        io_in: Counter::new(),
        io_out: Counter::new(),
        mmio_read: Counter::new(),
        mmio_write: Counter::new(),
        hlt: Counter::new(),
        shutdown: Counter::new(),
        system_event: Counter::new(),
        failures: Counter::new(),
        other: Counter::new(),
    },
    api: ApiCounters {
        requests: Counter::new(),
        errors: Counter::new(),
        bad_http: Counter::new(),
    },
};

/// Count one vCPU exit by kind.
pub fn record_exit(exit: &VcpuExit<'_>) {
    let c = &METRICS.vcpu;
    match exit {
        VcpuExit::IoIn(..) => c.io_in.inc(),
        VcpuExit::IoOut(..) => c.io_out.inc(),
        VcpuExit::MmioRead(..) => c.mmio_read.inc(),
        VcpuExit::MmioWrite(..) => c.mmio_write.inc(),
        VcpuExit::Hlt => c.hlt.inc(),
        VcpuExit::Shutdown => c.shutdown.inc(),
        VcpuExit::SystemEvent(..) => c.system_event.inc(),
        VcpuExit::FailEntry(..) | VcpuExit::InternalError => c.failures.inc(),
        _ => c.other.inc(),
    }
}

/// The global counters' increases since the previous flush, as JSON (devices and boot
/// time are added by the controller). Call once per flush.
pub fn take_global_json() -> Value {
    let v = &METRICS.vcpu;
    let a = &METRICS.api;
    json!({
        "vcpu": {
            "exit_io_in": v.io_in.take_delta(),
            "exit_io_out": v.io_out.take_delta(),
            "exit_mmio_read": v.mmio_read.take_delta(),
            "exit_mmio_write": v.mmio_write.take_delta(),
            "exit_hlt": v.hlt.take_delta(),
            "exit_shutdown": v.shutdown.take_delta(),
            "exit_system_event": v.system_event.take_delta(),
            "failures": v.failures.take_delta(),
            "exit_other": v.other.take_delta(),
        },
        "api_server": {
            "requests": a.requests.take_delta(),
            "errors": a.errors.take_delta(),
            "bad_http": a.bad_http.take_delta(),
        },
    })
}

/// Errors of the metrics system.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The file or pipe cannot be opened.
    #[error("cannot open the metrics file {0}; check the path and permissions")]
    Open(String, #[source] std::io::Error),
    /// Writing a line failed.
    #[error("cannot write metrics")]
    Write(#[source] std::io::Error),
}

/// Opens a log or metrics destination without blocking: a named pipe is opened
/// read-write (so the open does not wait for a reader), a missing file is created, and
/// writes are non-blocking (a full pipe loses the line instead of stalling the VMM).
pub fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Where flushed metrics go.
#[derive(Debug)]
pub struct MetricsSink {
    file: File,
    id: Option<String>,
    properties: Option<Value>,
}

impl MetricsSink {
    /// Open the destination of `cfg`; `id` is the microVM id for `emit_id`.
    pub fn open(cfg: &MetricsConfig, id: &str) -> Result<Self, MetricsError> {
        let file = open_nonblocking(&cfg.metrics_path)
            .map_err(|e| MetricsError::Open(cfg.metrics_path.display().to_string(), e))?;
        Ok(Self {
            file,
            id: cfg.emit_id.unwrap_or(false).then(|| id.to_string()),
            properties: cfg
                .properties
                .as_ref()
                .and_then(|p| serde_json::to_value(p).ok()),
        })
    }

    /// Write `body` (an object) as one line, with `utc_timestamp_ms`, and `id` and
    /// `properties` when configured.
    pub fn write(&mut self, mut body: Value) -> Result<(), MetricsError> {
        if let Some(o) = body.as_object_mut() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            o.insert("utc_timestamp_ms".into(), now.into());
            if let Some(id) = &self.id {
                o.insert("id".into(), id.clone().into());
            }
            if let Some(p) = &self.properties {
                o.insert("properties".into(), p.clone());
            }
        }
        let mut line = body.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(MetricsError::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_counted_by_kind() {
        let before = METRICS.vcpu.io_out.get();
        record_exit(&VcpuExit::IoOut(0x3f8, b"x"));
        record_exit(&VcpuExit::Hlt);
        assert!(METRICS.vcpu.io_out.get() > before);
        // (Other tests' vCPUs count exits concurrently: only lower bounds here.)
        let j = take_global_json();
        assert!(j["vcpu"]["exit_io_out"].as_u64().unwrap() >= 1);
        assert!(j["vcpu"]["exit_hlt"].as_u64().unwrap() >= 1);
        assert!(j["api_server"]["requests"].is_u64());
    }

    #[test]
    fn each_flush_writes_the_increase_since_the_previous_one() {
        let c = Counter::new();
        for _ in 0..3 {
            c.inc();
        }
        assert_eq!(c.take_delta(), 3, "first flush: since the start");
        assert_eq!(c.take_delta(), 0, "nothing happened since");
        c.inc();
        assert_eq!(c.take_delta(), 1);
        assert_eq!(c.get(), 4, "the running count is kept");
    }

    #[test]
    fn a_named_pipe_opens_without_a_reader_and_a_full_pipe_never_blocks() {
        let path = std::env::temp_dir().join(format!("husk-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let cfg = MetricsConfig {
            metrics_path: path.clone(),
            emit_id: None,
            properties: None,
        };
        let mut sink = MetricsSink::open(&cfg, "x").unwrap();
        // Nobody reads: the pipe fills up (64 KiB) and writes fail instead of blocking.
        let big = json!({ "pad": "x".repeat(4096) });
        let failed = (0..64).any(|_| sink.write(big.clone()).is_err());
        assert!(failed, "a full pipe must refuse writes, not block");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn sink_writes_one_json_object_per_line() {
        let dir = std::env::temp_dir().join(format!("husk-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let cfg = MetricsConfig {
            metrics_path: dir.clone(),
            emit_id: Some(true),
            properties: Some([("team".to_string(), "a".to_string())].into()),
        };
        let mut sink = MetricsSink::open(&cfg, "vm1").unwrap();
        sink.write(json!({"x": 1})).unwrap();
        sink.write(json!({"x": 2})).unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["x"], 2);
        assert_eq!(lines[0]["id"], "vm1");
        assert_eq!(lines[0]["properties"]["team"], "a");
        assert!(lines[0]["utc_timestamp_ms"].as_u64().unwrap() > 0);
        let _ = std::fs::remove_file(&dir);
    }
}
