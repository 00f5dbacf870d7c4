//! `broker run`: resolve, deliver, run the child, pass its exit code through, wipe.
//!
//! Signals: SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the broker are forwarded to the child
//! (to its process group when stdin is not a terminal and the child got a group of its own);
//! if the child is still running after a grace period it is killed. The scratch dir is wiped
//! on every path and the broker exits 128+n after a signal, else with the child's code.
//! Values reach the child only through its environment and scratch files: never argv, and
//! never the broker's own environment.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use broker_core::{Broker, Error, RequestContext};
use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};

/// How long a child gets to exit after a forwarded signal before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// Runs `command` with the credentials named in `only` (all when empty).
pub async fn run(
    broker: &Broker,
    only: &[String],
    context: RequestContext,
    command: &[OsString],
) -> Result<u8, Error> {
    let Some((program, args)) = command.split_first() else {
        return Err(Error::invalid_config("no command given after `--`"));
    };
    // Listen before resolving: a signal during resolution must still wipe what was written.
    let mut signals = Signals::new()?;
    let mut delivery = tokio::select! {
        d = broker.deliver(only, &context) => d?,
        n = signals.next() => return Ok(128 + n as u8),
    };

    let own_group = !std::io::stdin().is_terminal();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    for (var, value) in delivery.env() {
        cmd.env(var, OsString::from_vec(value.expose().to_vec()));
    }
    if own_group {
        cmd.process_group(0);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = delivery.wipe();
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let shown = program.to_string_lossy();
            eprintln!("error: cannot run `{shown}`: {e}");
            return Ok(code);
        }
    };
    drop(cmd);
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));

    let status = tokio::select! {
        status = child.wait() => Some(status),
        n = signals.next() => {
            forward(pid, own_group, n);
            match tokio::time::timeout(GRACE, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("child did not exit {}s after the signal; killing it", GRACE.as_secs());
                    forward(pid, own_group, rustix::process::Signal::KILL.as_raw());
                    let _ = child.wait().await;
                }
            }
            let _ = delivery.wipe();
            return Ok(128 + n as u8);
        }
    };
    let wiped = delivery.wipe();
    let status = status.unwrap_or_else(|| Ok(std::process::ExitStatus::from_raw(0)));
    let code = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => code as u8,
            (None, Some(sig)) => 128 + sig as u8,
            (None, None) => 1,
        },
        Err(e) => return Err(Error::io("waiting for the child failed", &e)),
    };
    if let Err(e) = wiped {
        return Err(Error::io("could not wipe the scratch dir", &e));
    }
    Ok(code)
}

fn forward(pid: Option<Pid>, own_group: bool, signo: i32) {
    let (Some(pid), Some(sig)) = (pid, Signal::from_named_raw(signo)) else {
        return;
    };
    let result = if own_group {
        rustix::process::kill_process_group(pid, sig)
    } else {
        rustix::process::kill_process(pid, sig)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "forwarding signal failed (child already gone?)");
    }
}

/// The signals `broker run` forwards.
struct Signals(Vec<(i32, tokio::signal::unix::Signal)>);

impl Signals {
    fn new() -> Result<Self, Error> {
        let kinds = [
            (libc_signo::SIGINT, SignalKind::interrupt()),
            (libc_signo::SIGTERM, SignalKind::terminate()),
            (libc_signo::SIGHUP, SignalKind::hangup()),
            (libc_signo::SIGQUIT, SignalKind::quit()),
        ];
        let mut out = Vec::new();
        for (n, kind) in kinds {
            out.push((
                n,
                signal(kind).map_err(|e| Error::io("cannot install signal handlers", &e))?,
            ));
        }
        Ok(Signals(out))
    }

    /// Waits for the next signal and returns its number.
    async fn next(&mut self) -> i32 {
        let futures = self.0.iter_mut().map(|(n, s)| {
            let n = *n;
            Box::pin(async move {
                s.recv().await;
                n
            })
        });
        futures_select_all(futures).await
    }
}

async fn futures_select_all<F: std::future::Future<Output = i32> + Unpin>(
    futures: impl Iterator<Item = F>,
) -> i32 {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(move |cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(n) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(n);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Signal numbers (Linux).
mod libc_signo {
    pub const SIGHUP: i32 = 1;
    pub const SIGINT: i32 = 2;
    pub const SIGQUIT: i32 = 3;
    pub const SIGTERM: i32 = 15;
}
