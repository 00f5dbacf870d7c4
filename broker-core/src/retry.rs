//! Retry with full-jitter exponential backoff, a per-attempt timeout, and fail-closed alerts.
//!
//! - Only errors the provider marks retryable ([`Error::is_retryable`]: 5xx, timeouts,
//!   throttling) are retried; everything else fails at once.
//! - At most [`MAX_RETRIES`] retries (four attempts). Before retry `n` (from 0) the broker
//!   sleeps a random duration in `[0, min(max_delay, base_delay × 2ⁿ))` ("full jitter").
//! - Each attempt runs under [`RetryPolicy::timeout`]; a timeout is a retryable
//!   [`crate::ErrorKind::Transient`] error.
//! - There is no fallback to another source: after the last attempt the error is returned and
//!   the broker raises an alert ([`AlertCommand`] and an audit record of severity `alert`).
//!   The same holds when a backend spent its own retries ([`Error::exhausted_after`]): the
//!   error is not retried again and counts as exhausted with the backend's attempts.
//!
//! Sleeping goes through a [`Sleeper`], so tests count delays instead of waiting.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Error, ErrorKind, Result};

/// The most retries the broker ever makes for one request.
pub const MAX_RETRIES: u32 = 3;

/// Retry and timeout settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; capped at [`MAX_RETRIES`]. Default 3.
    pub max_retries: u32,
    /// The first backoff ceiling. Default 100 ms.
    pub base_delay: Duration,
    /// The largest backoff ceiling. Default 5 s.
    pub max_delay: Duration,
    /// The time one attempt may take. Default 30 s.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: MAX_RETRIES,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The backoff ceiling before retry `n` (from 0): `min(max_delay, base_delay × 2ⁿ)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// A full-jitter delay before retry `n`, drawn with `unit` in `[0, 1)`.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        self.ceiling(n).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A boxed future, for the [`Sleeper`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Waits between attempts.
pub trait Sleeper: Send + Sync {
    /// Sleeps for `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'_, ()>;
}

/// Sleeps with `tokio::time::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, duration: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// The outcome of a retried operation that failed for good.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The last error, annotated with the number of attempts when there was more than one.
    pub error: Error,
    /// How many attempts were made.
    pub attempts: u32,
    /// Whether the error was retryable and the retries ran out (an alert condition).
    pub exhausted: bool,
}

/// Runs `op` under `policy`: a timeout per attempt, retries for retryable errors only.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    sleeper: &dyn Sleeper,
    mut op: F,
) -> std::result::Result<(T, u32), Failure>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let max_retries = policy.max_retries.min(MAX_RETRIES);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = match tokio::time::timeout(policy.timeout, op(attempt)).await {
            Ok(r) => r,
            Err(_) => Err(Error::transient(format!(
                "timed out after {}",
                crate::config::format_duration(policy.timeout)
            ))),
        };
        let error = match result {
            Ok(v) => return Ok((v, attempt)),
            Err(e) => e,
        };
        // A backend that retries internally (Vault's client, the AWS SDK) marks the error it
        // gives up with: that is exhaustion too, counted with the backend's attempts.
        if let Some(inner) = error.exhausted_attempts() {
            let attempts = attempt - 1 + inner;
            return Err(Failure {
                error: error.exhausted_after(attempts),
                attempts,
                exhausted: true,
            });
        }
        if !error.is_retryable() {
            return Err(Failure {
                error,
                attempts: attempt,
                exhausted: false,
            });
        }
        if attempt > max_retries {
            let message = format!("{} (gave up after {attempt} attempts)", error.message());
            let mut out = Error::new(error.kind(), message)
                .retryable(true)
                .exhausted_after(attempt);
            if let Some(c) = error.credential() {
                out = out.with_credential(c);
            }
            if let Some(r) = error.reference() {
                out = out.with_reference(r);
            }
            if let Some(h) = error.hint() {
                out = out.with_hint(h);
            }
            return Err(Failure {
                error: out,
                attempts: attempt,
                exhausted: true,
            });
        }
        let delay = policy.delay(attempt - 1, rand::random::<f64>());
        tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, kind = %error.kind(), "retrying");
        sleeper.sleep(delay).await;
    }
}

/// `alert.command`: a shell command run with an alert event's JSON on its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertCommand {
    /// The command line, run with `sh -c`.
    pub command: String,
    /// How long it may run before it is killed, with every process it started (it runs in
    /// its own process group). Default 10 s.
    pub timeout: Duration,
}

impl AlertCommand {
    /// An alert command with the default timeout.
    pub fn new(command: impl Into<String>) -> Self {
        AlertCommand {
            command: command.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Runs the command with `event` (secret-free JSON) on stdin and waits for it, at most
    /// [`AlertCommand::timeout`]. Its output is discarded; a failure is returned, not raised.
    ///
    /// Strings in the event longer than [`ALERT_STRING_LIMIT`] characters are elided, so a
    /// huge reference cannot make a huge payload. The payload is written under the same
    /// deadline (a command that never reads its stdin cannot stall the broker), and when `sh`
    /// exits or times out its whole process group is killed, so nothing it started outlives it.
    pub async fn run(&self, event: &serde_json::Value) -> Result<()> {
        let mut event = event.clone();
        cap_strings(&mut event);
        let mut payload = serde_json::to_vec(&event)
            .map_err(|_| Error::internal("cannot encode the alert event"))?;
        payload.push(b'\n');
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.run_blocking(&payload))
            .await
            .map_err(|_| Error::internal("the alert command task failed"))?
    }

    fn run_blocking(&self, payload: &[u8]) -> Result<()> {
        use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
        use std::os::unix::process::CommandExt;
        // Its own process group, so everything it started can be killed, not just `sh`.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io("cannot start alert.command", &e))?;
        let deadline = std::time::Instant::now() + self.timeout;
        // The group id is the child's pid (`process_group(0)`). It cannot be reused while the
        // child is not reaped, so the group is killed before the child is reaped.
        let group = Pid::from_child(&child);
        let kill_group = || {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        };
        // The payload is written without blocking, a piece at a time, inside the deadline
        // loop: a command that never reads its stdin must not hold the broker past it.
        let mut stdin = child.stdin.take().and_then(|pipe| {
            rustix::io::ioctl_fionbio(&pipe, true).ok()?;
            Some(pipe)
        });
        let mut written = 0usize;
        loop {
            if let Some(pipe) = stdin.as_mut() {
                match pipe.write(&payload[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // A command that ignores its input closes the pipe early: not an error.
                    Err(_) => written = payload.len(),
                }
                if written >= payload.len() {
                    stdin = None;
                }
            }
            // Look without reaping (`NOWAIT`), so the group id stays reserved.
            let exited = rustix::process::waitid(
                WaitId::Pid(group),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
            );
            match exited {
                Ok(Some(_)) => {
                    drop(stdin.take());
                    // `sh` is done: whatever it left running in the background goes with it.
                    kill_group();
                    let status = child
                        .wait()
                        .map_err(|e| Error::io("cannot wait for alert.command", &e))?;
                    if status.success() {
                        return Ok(());
                    }
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("alert.command exited with {status}"),
                    ));
                }
                Ok(None) if std::time::Instant::now() >= deadline => {
                    drop(stdin.take());
                    kill_group();
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!(
                            "alert.command did not finish within {}s and was killed",
                            self.timeout.as_secs()
                        ),
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    drop(stdin.take());
                    kill_group();
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::io(
                        "cannot wait for alert.command",
                        &std::io::Error::from(e),
                    ));
                }
            }
        }
    }
}

/// The most characters of one string an alert event passes to `alert.command`; longer strings
/// keep their first [`ALERT_STRING_LIMIT`] characters, an ellipsis and their length.
pub const ALERT_STRING_LIMIT: usize = 1024;

/// Elides every string in `value` (keys included) longer than [`ALERT_STRING_LIMIT`].
fn cap_strings(value: &mut serde_json::Value) {
    fn cap(text: &str) -> Option<String> {
        let (cut, _) = text.char_indices().nth(ALERT_STRING_LIMIT)?;
        Some(format!(
            "{}… ({} chars)",
            &text[..cut],
            text.chars().count()
        ))
    }
    match value {
        serde_json::Value::String(s) => {
            if let Some(short) = cap(s) {
                *s = short;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(cap_strings),
        serde_json::Value::Object(map) => {
            let long_keys: Vec<String> = map.keys().filter(|k| cap(k).is_some()).cloned().collect();
            for key in long_keys {
                if let Some(mut v) = map.remove(&key) {
                    cap_strings(&mut v);
                    map.insert(cap(&key).unwrap_or(key), v);
                }
            }
            map.values_mut().for_each(cap_strings);
        }
        _ => {}
    }
}
