//! `husk invoke`: send one invocation to a running sandbox through its hybrid vsock
//! socket, print the body on stdout and the stderr tail (or, with `--logs`, all the
//! function's log output the agent sent) on stderr.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use husk_agent::client::{AgentClient, ClientConfig, ClientError};
use husk_agent::config::DEFAULT_PORT;
use husk_agent::protocol::{Crash, Invoke, InvokeResult, LogChunk, Status};
use husk_agent::sync::error_chain;

/// Exit status: the function succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit status: the function reported an error.
pub const EXIT_FUNCTION_ERROR: i32 = 1;
/// Exit status: usage error (clap).
pub const EXIT_USAGE: i32 = 2;
/// Exit status: the function ran past its deadline and was killed.
pub const EXIT_TIMEOUT: i32 = 3;
/// Exit status: the function crashed.
pub const EXIT_CRASHED: i32 = 4;
/// Exit status: the agent refused the invocation (e.g. sandbox already used).
pub const EXIT_REFUSED: i32 = 5;
/// Exit status: the sandbox could not be reached or answered garbage or too late.
pub const EXIT_TRANSPORT: i32 = 6;

const EXIT_HELP: &str = "\
Exit status:
  0  ok: the body is on stdout
  1  function error (exec: non-zero exit; worker: error response)
  2  usage error
  3  timeout: the function passed its deadline and was killed
  4  crashed: the function died (signal or unexpected exit)
  5  refused by the agent (sandbox already used, busy with another invocation,
     awaiting restore, payload too large)
  6  transport failure (socket missing, handshake, no reply in time, bad frames)";

/// `husk invoke` flags.
#[derive(Debug, Args)]
#[command(after_help = EXIT_HELP)]
pub struct InvokeArgs {
    /// The sandbox's hybrid vsock Unix socket (husk --vsock-uds).
    #[arg(long)]
    pub uds: PathBuf,
    /// Guest vsock port of the agent.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u32,
    /// Payload given inline.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Payload read from a file (default: stdin when neither flag is given).
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// Function deadline in milliseconds (default: the function's configured one).
    #[arg(long, default_value_t = 0)]
    pub deadline_ms: u32,
    /// How long to wait for the result in total (default: deadline + 10 s, or 60 s).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Invocation id echoed in the result.
    #[arg(long, default_value_t = 1)]
    pub id: u64,
    /// Request id handed to the function (HUSK_REQUEST_ID / worker header); default:
    /// the invocation id.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Environment variable for this invocation only, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Print all of the function's log output (stderr; stdout too in worker mode) on
    /// stderr, instead of only the last 4 KiB of its stderr.
    #[arg(long)]
    pub logs: bool,
    /// Keep retrying this long while the sandbox boots or is being restored (socket
    /// missing, agent not listening yet, or a restored agent that has not had husk's
    /// Restored handshake yet: the refused invocation is sent again).
    #[arg(long, default_value_t = 0)]
    pub wait_ready_ms: u64,
    /// Print timings (connect, round trip, agent-side duration) to stderr.
    #[arg(long)]
    pub timings: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

/// Wall-clock time in ms since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Read the payload from the flag, the file or stdin.
fn payload(args: &InvokeArgs) -> std::io::Result<Vec<u8>> {
    if let Some(p) = &args.payload {
        return Ok(p.clone().into_bytes());
    }
    if let Some(f) = &args.payload_file {
        return std::fs::read(f);
    }
    let mut buf = Vec::new();
    std::io::stdin().lock().read_to_end(&mut buf)?;
    Ok(buf)
}

/// The exit status for a result.
pub fn exit_status(r: &InvokeResult) -> i32 {
    match r.status {
        Status::Ok => EXIT_OK,
        Status::FunctionError { .. } => EXIT_FUNCTION_ERROR,
        Status::Timeout => EXIT_TIMEOUT,
        Status::Crashed(_) => EXIT_CRASHED,
    }
}

fn describe(status: Status) -> String {
    match status {
        Status::Ok => "ok".into(),
        Status::FunctionError { code } => format!("function error (code {code})"),
        Status::Timeout => "timeout: the function passed its deadline and was killed".into(),
        Status::Crashed(Crash::Signal(s)) => format!("crashed: killed by signal {s}"),
        Status::Crashed(Crash::Exit(c)) => format!("crashed: exited with code {c}"),
    }
}

fn client_error_status(e: &ClientError) -> i32 {
    match e {
        ClientError::Agent(_) => EXIT_REFUSED,
        _ => EXIT_TRANSPORT,
    }
}

/// Run `husk invoke`; returns the exit status.
pub fn run(args: &InvokeArgs) -> i32 {
    let payload = match payload(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("husk invoke: cannot read the payload: {e}");
            return EXIT_USAGE;
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms.unwrap_or(match args.deadline_ms {
        0 => 60_000,
        d => u64::from(d) + 10_000,
    }));
    let mut cfg = ClientConfig::new(&args.uds);
    cfg.port = args.port;
    let t0 = Instant::now();
    let wait = Duration::from_millis(args.wait_ready_ms);
    let mut client = match AgentClient::connect_with_retry(&cfg, wait) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("husk invoke: {}", error_chain(&e));
            return client_error_status(&e);
        }
    };
    let connected = t0.elapsed();
    let t1 = Instant::now();
    let inv = Invoke {
        request_id: args.request_id.clone(),
        // The platform's absolute deadline, by the host clock (the function's default
        // deadline is not known here: then the agent computes it).
        deadline_unix_ms: (args.deadline_ms > 0)
            .then(|| unix_ms().saturating_add(u64::from(args.deadline_ms))),
        env: args.env.clone(),
        stream_logs: args.logs,
        ..Invoke::new(args.id, args.deadline_ms, payload)
    };
    // Within --wait-ready-ms a restored agent still awaiting husk's Restored is "not
    // ready yet": the refused invocation is sent again.
    let (result, logs) = match client.invoke_when_restored(inv, timeout, t0 + wait) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("husk invoke: {}", error_chain(&e));
            return client_error_status(&e);
        }
    };
    let round_trip = t1.elapsed();
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&result.body);
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    if args.logs {
        print_logs(&mut err, &logs, &result);
    } else if !result.stderr_tail.is_empty() {
        let _ = err.write_all(&result.stderr_tail);
        if !result.stderr_tail.ends_with(b"\n") {
            let _ = err.write_all(b"\n");
        }
    }
    if result.output_truncated() {
        let _ = writeln!(
            err,
            "husk invoke: output was cut at the function's output cap"
        );
    }
    if result.status != Status::Ok {
        let _ = writeln!(err, "husk invoke: {}", describe(result.status));
    }
    if args.timings {
        let _ = writeln!(
            err,
            "husk invoke: sandbox {} generation {}: connect+hello {} us, round trip {} us, agent {} us",
            client.hello().sandbox_id,
            client.hello().restore_generation,
            connected.as_micros(),
            round_trip.as_micros(),
            result.duration_us
        );
    }
    exit_status(&result)
}

/// Write the function's log output in arrival order, then say whether it was cut.
fn print_logs(err: &mut impl Write, logs: &[LogChunk], result: &InvokeResult) {
    for l in logs {
        let _ = err.write_all(&l.data);
    }
    if logs.last().is_some_and(|l| !l.data.ends_with(b"\n")) {
        let _ = err.write_all(b"\n");
    }
    if result.logs_truncated() {
        let _ = writeln!(
            err,
            "husk invoke: logs cut at the agent's cap; {} bytes dropped",
            result.logs_dropped
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: Status) -> InvokeResult {
        InvokeResult {
            id: 1,
            status,
            flags: 0,
            duration_us: 0,
            body: vec![],
            stderr_tail: vec![],
            logs_dropped: 0,
        }
    }

    #[test]
    fn statuses_map_to_distinct_exit_codes() {
        let codes = [
            exit_status(&result(Status::Ok)),
            exit_status(&result(Status::FunctionError { code: 2 })),
            exit_status(&result(Status::Timeout)),
            exit_status(&result(Status::Crashed(Crash::Signal(11)))),
        ];
        assert_eq!(
            codes,
            [EXIT_OK, EXIT_FUNCTION_ERROR, EXIT_TIMEOUT, EXIT_CRASHED]
        );
        assert_eq!(
            client_error_status(&ClientError::SocketMissing("/x".into())),
            EXIT_TRANSPORT
        );
    }

    #[test]
    fn missing_socket_is_a_transport_failure() {
        let args = InvokeArgs {
            uds: "/nonexistent/husk.sock".into(),
            port: DEFAULT_PORT,
            payload: Some("x".into()),
            payload_file: None,
            deadline_ms: 0,
            timeout_ms: Some(100),
            wait_ready_ms: 0,
            id: 1,
            timings: false,
            request_id: None,
            env: vec![],
            logs: false,
        };
        assert_eq!(run(&args), EXIT_TRANSPORT);
    }

    #[test]
    fn logs_are_printed_in_order_with_a_note_when_cut() {
        use husk_agent::protocol::{LogStream, RESULT_LOGS_TRUNCATED};
        let chunk = |stream, data: &[u8]| LogChunk {
            id: 1,
            stream,
            data: data.to_vec(),
        };
        let logs = [
            chunk(LogStream::Stderr, b"one\n"),
            chunk(LogStream::Stdout, b"two"),
        ];
        let mut r = result(Status::Ok);
        let mut out = Vec::new();
        print_logs(&mut out, &logs, &r);
        assert_eq!(out, b"one\ntwo\n");
        r.flags = RESULT_LOGS_TRUNCATED;
        r.logs_dropped = 77;
        let mut out = Vec::new();
        print_logs(&mut out, &logs, &r);
        assert!(String::from_utf8_lossy(&out).ends_with("cap; 77 bytes dropped\n"));
    }

    #[test]
    fn env_flag_needs_name_and_value() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("nope").is_err());
    }
}
