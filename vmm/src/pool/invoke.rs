//! One invocation on a leased sandbox, and how a failure of the sandbox itself (its VMM
//! died, the agent stopped answering) becomes a clear status for the caller.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use husk_agent::client::ClientError;
use husk_agent::protocol::{
    Crash, ErrorCode, ErrorMsg, Invoke, InvokeResult, LogChunk, Message, Status,
};

use super::Sandbox;

/// Why an invocation on a pooled sandbox produced no result from the function.
#[derive(Debug, thiserror::Error)]
pub enum InvokeFailure {
    /// The agent refused the invocation (relayed as is).
    #[error("agent error {}: {}", .0.code, .0.message)]
    Agent(ErrorMsg),
    /// The sandbox's VMM exited during the invocation.
    #[error("sandbox {id}'s VMM exited ({status}) during the invocation; the pool replaced it")]
    Crashed {
        /// Sandbox id.
        id: String,
        /// The VMM's exit status.
        status: ExitStatus,
    },
    /// No result within the pool's invocation timeout.
    #[error(
        "sandbox {id} gave no result within {timeout_ms} ms; the pool destroyed and replaced it"
    )]
    TimedOut {
        /// Sandbox id.
        id: String,
        /// The timeout.
        timeout_ms: u128,
    },
    /// Another failure talking to the agent.
    #[error("talking to sandbox {id} failed; the pool replaced it")]
    Transport {
        /// Sandbox id.
        id: String,
        /// The cause.
        #[source]
        source: ClientError,
    },
}

impl InvokeFailure {
    /// The frame the caller gets: a Result with status crashed or timeout (the message
    /// in the stderr tail) when the sandbox died or hung, else an Error frame.
    pub fn to_message(&self, inv_id: u64, took: Duration) -> Message {
        let result = |status| {
            Message::Result(InvokeResult {
                id: inv_id,
                status,
                flags: 0,
                duration_us: took.as_micros() as u64,
                body: Vec::new(),
                stderr_tail: format!("husk pool: {self}\n").into_bytes(),
                logs_dropped: 0,
            })
        };
        match self {
            Self::Agent(e) => Message::Error(e.clone()),
            Self::Crashed { status, .. } => result(Status::Crashed(match status.signal() {
                Some(s) => Crash::Signal(s),
                None => Crash::Exit(status.code().unwrap_or(-1)),
            })),
            Self::TimedOut { .. } => result(Status::Timeout),
            Self::Transport { .. } => Message::Error(ErrorMsg::new(
                ErrorCode::Internal,
                husk_agent::sync::error_chain(self),
            )),
        }
    }
}

/// After the connection to a sandbox broke, how long a VMM that is not exiting gets to
/// show an exit status before the failure counts as a transport error.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// The longest wait for the exit status of a VMM that is exiting.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Run `inv` on `sb` within `timeout` (connect included).
pub fn invoke(
    sb: &mut Sandbox,
    inv: Invoke,
    timeout: Duration,
) -> Result<(InvokeResult, Vec<LogChunk>), InvokeFailure> {
    let start = Instant::now();
    let result = sb
        .connect_agent(timeout.min(Duration::from_secs(10)))
        .and_then(|mut c| c.invoke_with_logs(inv, timeout.saturating_sub(start.elapsed())));
    match result {
        Ok(r) => Ok(r),
        Err(ClientError::Agent(e)) => Err(InvokeFailure::Agent(e)),
        Err(e) => {
            // A VMM that died closes its sockets before the kernel has finished tearing
            // it down: wait for its exit status while it is on its way out (up to
            // EXIT_WAIT); one that is not gets EXIT_GRACE to show an exit.
            let broke = Instant::now();
            loop {
                if let Some(status) = sb.exited() {
                    log::debug!(
                        "pool: sandbox {}'s exit status came {} ms after its connection broke",
                        sb.id,
                        broke.elapsed().as_millis()
                    );
                    return Err(InvokeFailure::Crashed {
                        id: sb.id.clone(),
                        status,
                    });
                }
                let waited = broke.elapsed();
                if waited >= EXIT_WAIT || (waited >= EXIT_GRACE && !sb.exiting()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(match e {
                ClientError::Timeout(_) => InvokeFailure::TimedOut {
                    id: sb.id.clone(),
                    timeout_ms: timeout.as_millis(),
                },
                source => InvokeFailure::Transport {
                    id: sb.id.clone(),
                    source,
                },
            })
        }
    }
}
