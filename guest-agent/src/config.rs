//! Agent configuration: boot options from the kernel command line and the function
//! config file the packer puts in the initramfs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::DEFAULT_PAYLOAD_LIMIT;

/// Default vsock port the agent listens on.
pub const DEFAULT_PORT: u32 = 1024;
/// Where the packer puts the function config.
pub const FUNCTION_CONFIG_PATH: &str = "/husk/function.json";
/// Default deadline when neither the invocation nor the config sets one.
pub const DEFAULT_DEADLINE_MS: u32 = 30_000;
/// Longest deadline the agent accepts (15 minutes).
pub const MAX_DEADLINE_MS: u32 = 15 * 60 * 1000;
/// Default bound on a worker's initialisation (spawn -> its ready frame).
pub const DEFAULT_INIT_TIMEOUT_MS: u32 = 60_000;
/// Default cap on captured stdout.
pub const DEFAULT_OUTPUT_CAP: usize = DEFAULT_PAYLOAD_LIMIT;
/// Largest function config file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A boot option had a value that does not parse.
    #[error("invalid kernel command line option {key}={value}: {reason}")]
    BadOption {
        /// The option name.
        key: String,
        /// Its value.
        value: String,
        /// What is expected.
        reason: &'static str,
    },
    /// The function config file could not be read.
    #[error("cannot read function config {path}; pack the initramfs with `husk pack`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The function config file is not valid.
    #[error("invalid function config {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A semantic check failed.
    #[error("invalid function config: {0}")]
    Invalid(String),
}

/// Options read from `/proc/cmdline` (`husk.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    /// vsock port to listen on (`husk.port`).
    pub port: u32,
    /// Allow more than one invocation (`husk.reuse=1`).
    pub reuse: bool,
    /// Largest invocation payload (`husk.payload_limit`).
    pub payload_limit: usize,
    /// Refuse invocations until a `Restored` message arrives (`husk.await_restore=1`).
    pub await_restore: bool,
    /// Initial sandbox id (`husk.sandbox_id`); random when absent.
    pub sandbox_id: Option<String>,
    /// Function config path (`husk.config`).
    pub config_path: PathBuf,
}

impl Default for BootOptions {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            reuse: false,
            payload_limit: DEFAULT_PAYLOAD_LIMIT,
            await_restore: false,
            sandbox_id: None,
            config_path: PathBuf::from(FUNCTION_CONFIG_PATH),
        }
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::BadOption {
            key: key.into(),
            value: v.into(),
            reason: "expected 0 or 1",
        }),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError> {
    v.parse().map_err(|_| ConfigError::BadOption {
        key: key.into(),
        value: v.into(),
        reason: "expected a decimal number",
    })
}

impl BootOptions {
    /// Parse a kernel command line; non-`husk.` words are ignored, unknown `husk.`
    /// options are returned as warnings.
    pub fn from_cmdline(cmdline: &str) -> Result<(Self, Vec<String>), ConfigError> {
        let mut o = Self::default();
        let mut warnings = Vec::new();
        for word in cmdline.split_ascii_whitespace() {
            let Some(opt) = word.strip_prefix("husk.") else {
                continue;
            };
            let (key, value) = opt.split_once('=').unwrap_or((opt, "1"));
            let full = format!("husk.{key}");
            match key {
                "port" => o.port = parse_num(&full, value)?,
                "reuse" => o.reuse = parse_bool(&full, value)?,
                "await_restore" => o.await_restore = parse_bool(&full, value)?,
                "payload_limit" => {
                    let n: usize = parse_num(&full, value)?;
                    if n == 0 || n > 1 << 30 {
                        return Err(ConfigError::BadOption {
                            key: full,
                            value: value.into(),
                            reason: "expected 1 to 1073741824 bytes",
                        });
                    }
                    o.payload_limit = n;
                }
                "sandbox_id" => {
                    if value.is_empty() || value.len() > 64 {
                        return Err(ConfigError::BadOption {
                            key: full,
                            value: value.into(),
                            reason: "expected 1 to 64 characters",
                        });
                    }
                    o.sandbox_id = Some(value.to_string());
                }
                "config" => o.config_path = PathBuf::from(value),
                _ => warnings.push(format!("ignoring unknown boot option {word}")),
            }
        }
        Ok((o, warnings))
    }
}

/// How the function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One process per invocation; payload on stdin, body on stdout.
    Exec,
    /// One process started at boot, framed requests on stdin (see [`crate::worker`]).
    Worker,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exec" => Ok(Self::Exec),
            "worker" => Ok(Self::Worker),
            _ => Err(format!("unknown mode {s:?}; use exec or worker")),
        }
    }
}

/// The function config (`/husk/function.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Absolute path of the function executable in the guest.
    pub path: PathBuf,
    /// Exec or worker.
    pub mode: Mode,
    /// Arguments after the program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment (the function gets only this plus `HUSK_MODE`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Deadline used when an invocation sets none.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u32,
    /// Cap on captured stdout bytes.
    #[serde(default = "default_output_cap")]
    pub output_cap: usize,
    /// Working directory.
    #[serde(default = "default_workdir")]
    pub workdir: PathBuf,
    /// Worker mode: the worker writes a ready frame ([`crate::worker::STATUS_READY`])
    /// when its initialisation is done, and the agent waits for it before it reports
    /// ready. `false` for a worker that does not send one: it counts as ready as soon
    /// as it was started.
    #[serde(default = "default_true")]
    pub ready_frame: bool,
    /// Worker mode: how long the agent waits for the ready frame (at boot and when it
    /// restarts a worker) before it gives up on the worker.
    #[serde(default = "default_init_timeout")]
    pub init_timeout_ms: u32,
}

fn default_deadline() -> u32 {
    DEFAULT_DEADLINE_MS
}
fn default_output_cap() -> usize {
    DEFAULT_OUTPUT_CAP
}
fn default_workdir() -> PathBuf {
    PathBuf::from("/")
}
fn default_true() -> bool {
    true
}
fn default_init_timeout() -> u32 {
    DEFAULT_INIT_TIMEOUT_MS
}

impl FunctionConfig {
    /// A config with defaults for everything but path and mode.
    pub fn new(path: impl Into<PathBuf>, mode: Mode) -> Self {
        Self {
            path: path.into(),
            mode,
            args: Vec::new(),
            env: BTreeMap::new(),
            deadline_ms: DEFAULT_DEADLINE_MS,
            output_cap: DEFAULT_OUTPUT_CAP,
            workdir: default_workdir(),
            ready_frame: true,
            init_timeout_ms: DEFAULT_INIT_TIMEOUT_MS,
        }
    }

    /// Check values a bad config could get wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.deadline_ms == 0 || self.deadline_ms > MAX_DEADLINE_MS {
            return Err(ConfigError::Invalid(format!(
                "deadline_ms must be 1..={MAX_DEADLINE_MS}, got {}",
                self.deadline_ms
            )));
        }
        if self.init_timeout_ms == 0 || self.init_timeout_ms > MAX_DEADLINE_MS {
            return Err(ConfigError::Invalid(format!(
                "init_timeout_ms must be 1..={MAX_DEADLINE_MS}, got {}",
                self.init_timeout_ms
            )));
        }
        if self.output_cap == 0 || self.output_cap > 1 << 30 {
            return Err(ConfigError::Invalid(format!(
                "output_cap must be 1..=1073741824, got {}",
                self.output_cap
            )));
        }
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("path is empty".into()));
        }
        Ok(())
    }

    /// Serialize as pretty JSON with sorted keys (deterministic).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parse and validate.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Self, ConfigError> {
        let c: Self = serde_json::from_slice(bytes).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        f.take(MAX_CONFIG_BYTES)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        Self::from_json(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_options_parse() {
        let (o, w) = BootOptions::from_cmdline(
            "console=ttyS0 quiet husk.port=2000 husk.reuse=1 husk.payload_limit=1024 husk.await_restore husk.sandbox_id=sb1 husk.frob=2",
        )
        .unwrap();
        assert_eq!(o.port, 2000);
        assert!(o.reuse);
        assert!(o.await_restore);
        assert_eq!(o.payload_limit, 1024);
        assert_eq!(o.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(w.len(), 1);
        let (d, _) = BootOptions::from_cmdline("console=ttyS0").unwrap();
        assert_eq!(d, BootOptions::default());
    }

    #[test]
    fn bad_cmdline_values_are_errors() {
        for bad in [
            "husk.port=x",
            "husk.reuse=maybe",
            "husk.payload_limit=0",
            "husk.payload_limit=99999999999",
            "husk.sandbox_id=",
        ] {
            assert!(
                matches!(
                    BootOptions::from_cmdline(bad),
                    Err(ConfigError::BadOption { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn function_config_round_trips_and_rejects_unknown_fields() {
        let mut c = FunctionConfig::new("/husk/fn/echo", Mode::Worker);
        c.args.push("-v".into());
        c.env.insert("A".into(), "1".into());
        let json = c.to_json();
        assert_eq!(FunctionConfig::from_json(Path::new("x"), &json).unwrap(), c);
        let minimal = br#"{"path":"/f","mode":"exec"}"#;
        let m = FunctionConfig::from_json(Path::new("x"), minimal).unwrap();
        assert_eq!(m.deadline_ms, DEFAULT_DEADLINE_MS);
        assert_eq!(
            (m.ready_frame, m.init_timeout_ms),
            (true, DEFAULT_INIT_TIMEOUT_MS)
        );
        let opt_out = br#"{"path":"/f","mode":"worker","ready_frame":false,"init_timeout_ms":500}"#;
        let o = FunctionConfig::from_json(Path::new("x"), opt_out).unwrap();
        assert_eq!((o.ready_frame, o.init_timeout_ms), (false, 500));
        let no_time = br#"{"path":"/f","mode":"worker","init_timeout_ms":0}"#;
        assert!(matches!(
            FunctionConfig::from_json(Path::new("x"), no_time),
            Err(ConfigError::Invalid(_))
        ));
        let unknown = br#"{"path":"/f","mode":"exec","bogus":1}"#;
        assert!(matches!(
            FunctionConfig::from_json(Path::new("x"), unknown),
            Err(ConfigError::Parse { .. })
        ));
        let zero = br#"{"path":"/f","mode":"exec","deadline_ms":0}"#;
        assert!(matches!(
            FunctionConfig::from_json(Path::new("x"), zero),
            Err(ConfigError::Invalid(_))
        ));
    }
}
