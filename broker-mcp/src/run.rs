//! The `run` tool: one command with credentials delivered, through the delivery engine
//! ([`broker_core::session`]) that `broker run` uses.
//!
//! - `argv` is executed directly (`argv[0]` looked up in the child's `PATH`), never through a
//!   shell the server adds; `mcp.allow_programs` may restrict `argv[0]`.
//! - The child's environment is `mcp.pass_env` from the server's (not all of it: backend
//!   tokens and the sources of `env:` credentials stay out) plus the delivered credentials.
//!   Its stdin is `/dev/null`; its stdout and stderr are pipes read by the engine's pumps,
//!   redacted and kept in memory up to `max_output_bytes` each — never the server's stdout,
//!   which carries the JSON-RPC stream.
//! - The child leads a process group of its own. At the timeout the group gets `SIGTERM`, then
//!   `SIGKILL` [`KILL_GRACE`] later; when the child exits, whatever it left in its group is
//!   killed too, and so is the whole group if the request is cancelled (a drop guard).
//! - The scratch dir is wiped on every path (the session wipes on drop as well).

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use broker_core::redact::Redactor;
use broker_core::session::{OutputBuffer, Session};
use broker_core::{Broker, Delivery, Error, ErrorKind, RequestContext};
use rustix::process::{Pid, Signal};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::settings::McpConfig;

/// The timeout when a request gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest timeout a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The output cap (per stream) when a request gives none.
pub const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;
/// The largest output cap (per stream) a request may ask for.
pub const MAX_OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// How long the process group has between `SIGTERM` and `SIGKILL` after a timeout.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// The `run` tool's arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The command and its arguments, executed directly (no shell): `["terraform", "plan"]`.
    /// To use shell syntax, say so: `["sh", "-c", "..."]` (if the config allows `sh`).
    pub argv: Vec<String>,
    /// Names of the credentials to deliver (see `list_credentials`). Each is checked by policy
    /// and recorded in the audit log; the command receives them in its environment (or as a
    /// file whose path is in its environment). Empty: none.
    #[serde(default)]
    pub credentials: Vec<String>,
    /// The working directory (default: the server's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Seconds before the command's process group is killed (default 60, at most 3600).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// The most bytes of stdout, and of stderr, kept (default 65536, at most 16 MiB); more is
    /// dropped and `truncated` is true.
    #[serde(default)]
    pub max_output_bytes: Option<u64>,
    /// Why the command is run (recorded in the audit log).
    #[serde(default)]
    pub reason: Option<String>,
}

/// What a `run` returns. Output is redacted: every delivered value, and its common encodings,
/// is `[REDACTED:<name>]`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunOutput {
    /// The exit code, when the command exited by itself.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Whether the timeout ended it.
    pub timed_out: bool,
    /// Its standard output, redacted (lossy UTF-8).
    pub stdout: String,
    /// Its standard error, redacted (lossy UTF-8).
    pub stderr: String,
    /// Whether stdout or stderr went past `max_output_bytes` (the rest was dropped).
    pub truncated: bool,
    /// The credentials delivered.
    pub credentials: Vec<String>,
}

/// A refusal or failure of `run`, for the tool's error result. Never holds a value.
#[derive(Debug)]
pub struct RunError(pub Error);

impl From<Error> for RunError {
    fn from(e: Error) -> Self {
        RunError(e)
    }
}

/// Commands one agent may have running at once through this server; more are refused.
pub const MAX_RUNS_PER_AGENT: usize = 4;

/// The run slots of each agent (an agent with none running has no entry).
fn slots() -> &'static std::sync::Mutex<std::collections::HashMap<String, usize>> {
    static SLOTS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
        std::sync::OnceLock::new();
    SLOTS.get_or_init(Default::default)
}

/// One of an agent's [`MAX_RUNS_PER_AGENT`] run slots, given back on drop.
struct RunSlot(String);

impl RunSlot {
    fn take(agent: &str) -> Option<RunSlot> {
        let mut slots = slots().lock().unwrap_or_else(|p| p.into_inner());
        let n = slots.entry(agent.to_string()).or_insert(0);
        if *n >= MAX_RUNS_PER_AGENT {
            return None;
        }
        *n += 1;
        Some(RunSlot(agent.to_string()))
    }
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        let mut slots = slots().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = slots.get_mut(&self.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                slots.remove(&self.0);
            }
        }
    }
}

/// Runs `request` for `context`; at most [`MAX_RUNS_PER_AGENT`] at once per agent.
pub async fn run(
    broker: &Broker,
    config: &McpConfig,
    request: &RunRequest,
    context: &RequestContext,
) -> std::result::Result<RunOutput, RunError> {
    let agent = context.agent_id.clone().unwrap_or_default();
    let Some(_slot) = RunSlot::take(&agent) else {
        return Err(Error::new(
            ErrorKind::Transient,
            format!(
                "agent `{agent}` already has {MAX_RUNS_PER_AGENT} commands running through this server"
            ),
        )
        .with_hint("wait for one to finish")
        .into());
    };
    let Some(program) = request.argv.first() else {
        return Err(
            Error::invalid_config("`argv` is empty: give the program and its arguments").into(),
        );
    };
    if program.is_empty() {
        return Err(Error::invalid_config("`argv[0]` is empty").into());
    }
    if !config.allows(program) {
        let allowed = config.allow_programs.as_deref().unwrap_or_default();
        broker.record_notice(
            context,
            "program_refused",
            &format!(
                "mcp run: `{}` is not in mcp.allow_programs",
                broker_core::grammar::elide(program)
            ),
        )?;
        return Err(Error::new(
            ErrorKind::PolicyDenied,
            format!(
                "`{}` is not in `mcp.allow_programs`",
                broker_core::grammar::elide(program)
            ),
        )
        .with_hint(format!("programs allowed: {}", allowed.join(", ")))
        .into());
    }
    let timeout = request
        .timeout_seconds
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
        .min(MAX_TIMEOUT);
    let cap = request
        .max_output_bytes
        .map_or(DEFAULT_OUTPUT_CAP, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        })
        .min(MAX_OUTPUT_CAP);
    let cwd = match &request.cwd {
        Some(dir) => {
            let path = PathBuf::from(dir);
            if !path.is_dir() {
                return Err(Error::not_found(format!(
                    "the working directory `{}` does not exist",
                    broker_core::grammar::elide(dir)
                ))
                .into());
            }
            Some(path)
        }
        None => None,
    };

    // A placeholder-mode credential's value never reaches a child here: the egress proxy that
    // would substitute it runs only under `broker run` (see docs/proxy.md).
    if let Some(spec) = request
        .credentials
        .iter()
        .filter_map(|name| broker.config().credential(name))
        .find(|spec| spec.proxy.is_some())
    {
        broker.record_notice(
            context,
            "proxy_only",
            &format!(
                "mcp run: `{}` is delivered only through the egress proxy",
                spec.name
            ),
        )?;
        return Err(Error::new(
            ErrorKind::PolicyDenied,
            format!(
                "credential `{}` is delivered only as a placeholder through the egress proxy, \
                 which `broker mcp` does not run",
                spec.name
            ),
        )
        .with_hint("run the command with `broker run` instead")
        .into());
    }
    // Policy, egress gate, lease cache, retry and audit, for each name, before anything runs.
    let mut session = if request.credentials.is_empty() {
        Session::new(
            broker,
            Delivery::from_credentials(std::iter::empty())?,
            context.clone(),
        )
    } else {
        broker.session(&request.credentials, context).await?
    };
    let result = run_child(&mut session, program, request, cwd, config, timeout, cap).await;
    let wiped = session.wipe();
    drop(session);
    let mut output = result?;
    wiped.map_err(|e| Error::io("could not wipe the scratch dir", &e))?;
    output.credentials = request.credentials.clone();
    Ok(output)
}

async fn run_child(
    session: &mut Session<'_>,
    program: &str,
    request: &RunRequest,
    cwd: Option<PathBuf>,
    config: &McpConfig,
    timeout: Duration,
    cap: usize,
) -> std::result::Result<RunOutput, RunError> {
    let stdout = OutputBuffer::with_cap(cap);
    let stderr = OutputBuffer::with_cap(cap);
    let mut pumps = session.pumps();
    let pipe_error = |e: std::io::Error| Error::io("cannot set up the command's output", &e);

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&request.argv[1..]).env_clear();
    for name in &config.pass_env {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    session.delivery().apply_to_tokio(&mut cmd);
    if let Some(dir) = &cwd {
        cmd.current_dir(dir);
    }
    cmd.stdin(Stdio::null())
        .stdout(
            pumps
                .pipe("mcp-stdout", stdout.clone())
                .map_err(pipe_error)?,
        )
        .stderr(
            pumps
                .pipe("mcp-stderr", stderr.clone())
                .map_err(pipe_error)?,
        )
        .process_group(0)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // Our copies of the pipes' write ends (and of the environment) go now.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            drop(pumps);
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("cannot run `{}`: {e}", broker_core::grammar::elide(program)),
            )
            .into());
        }
    };
    let group = child
        .id()
        .and_then(|id| Pid::from_raw(i32::try_from(id).ok()?))
        .map(GroupGuard);
    if let Some(id) = child.id()
        && let Err(e) = session.record_child(id)
    {
        tracing::warn!(error = %e, "could not record the child in the scratch dir's marker");
    }

    let _ = session.refresh().await;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = session.refresh_due() => {
                let _ = session.refresh().await;
            }
            () = tokio::time::sleep_until(deadline) => {
                timed_out = true;
                if let Some(g) = &group {
                    g.signal(Signal::TERM);
                }
                match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                    Ok(status) => break status,
                    Err(_) => {
                        if let Some(g) = &group {
                            g.signal(Signal::KILL);
                        }
                        break child.wait().await;
                    }
                }
            }
        }
    };
    // What the child left in its group holds its credentials: it goes too.
    drop(group);
    tokio::task::spawn_blocking(move || pumps.finish())
        .await
        .map_err(|e| Error::internal(format!("the output threads failed: {e}")))?;
    let status = status.map_err(|e| Error::io("waiting for the command failed", &e))?;
    let redactor = session.redactor().current();
    let text = |b: &OutputBuffer| {
        String::from_utf8_lossy(&redact_wrapped(&redactor, &b.take())).into_owned()
    };
    Ok(RunOutput {
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        truncated: stdout.truncated() || stderr.truncated(),
        stdout: text(&stdout),
        stderr: text(&stderr),
        credentials: Vec::new(),
    })
}

/// A second pass over the complete (already redacted) output: the streaming redactor matches
/// within the bytes as written, so a value encoded and then wrapped over several lines
/// (`base64` wraps at 76 columns, `openssl base64` at 64, `xxd -p` at 60) slips past it.
/// Each wrapped block — two or more lines of base64 (or hex) characters, all of one width of
/// at least [`WRAP_MIN`] but the last, which may be shorter — is joined and redacted again;
/// when that finds a value, the block is replaced by the joined, redacted text.
pub fn redact_wrapped(redactor: &Redactor, output: &[u8]) -> Vec<u8> {
    /// The content of an encoded line (without its line ending), or `None`.
    fn encoded(line: &[u8]) -> Option<&[u8]> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let ok = !line.is_empty()
            && line.iter().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
            });
        ok.then_some(line)
    }
    let lines: Vec<&[u8]> = output.split_inclusive(|&b| b == b'\n').collect();
    let mut out = Vec::with_capacity(output.len());
    let mut i = 0;
    while i < lines.len() {
        let width = encoded(lines[i]).map_or(0, <[u8]>::len);
        let mut end = i + 1;
        if width >= WRAP_MIN {
            while end < lines.len() && encoded(lines[end]).is_some_and(|l| l.len() == width) {
                end += 1;
            }
            if end < lines.len() && encoded(lines[end]).is_some_and(|l| l.len() < width) {
                end += 1;
            }
        }
        if end - i < 2 {
            out.extend_from_slice(lines[i]);
            i += 1;
            continue;
        }
        let joined: Vec<u8> = lines[i..end]
            .iter()
            .filter_map(|l| encoded(l))
            .flatten()
            .copied()
            .collect();
        match redactor.redact(&joined) {
            std::borrow::Cow::Owned(redacted) => {
                out.extend_from_slice(&redacted);
                if lines[end - 1].ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
            std::borrow::Cow::Borrowed(_) => {
                lines[i..end].iter().for_each(|l| out.extend_from_slice(l));
            }
        }
        i = end;
    }
    out
}

/// The narrowest line width [`redact_wrapped`] treats as a wrapped encoding.
pub const WRAP_MIN: usize = 16;

/// The child's process group; killed (`SIGKILL`) when dropped, so nothing the command started
/// outlives the run, whichever way it ends (a cancelled request included).
struct GroupGuard(Pid);

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Err(e) = rustix::process::kill_process_group(self.0, signal) {
            tracing::debug!(error = %e, "signalling the command's process group failed (gone?)");
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process_group(self.0, Signal::KILL);
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn an_agent_has_at_most_four_runs_at_once_and_others_are_not_held_up() {
        let held: Vec<RunSlot> = (0..MAX_RUNS_PER_AGENT)
            .map(|_| RunSlot::take("slot-test-a").unwrap())
            .collect();
        assert!(RunSlot::take("slot-test-a").is_none());
        let other = RunSlot::take("slot-test-b");
        assert!(other.is_some());
        drop(held);
        assert!(RunSlot::take("slot-test-a").is_some());
    }
}
