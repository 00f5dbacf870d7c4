//! `broker run`: resolve, deliver, run the child with its output redacted, pass its exit code
//! through, wipe. The user-facing description is `docs/run.md`.
//!
//! - Hygiene first ([`crate::hygiene`]): no core dumps, not dumpable, memory locked where
//!   allowed; then signal handlers; then resolution.
//! - Values reach the child only through its environment and 0600 scratch files: never argv,
//!   and never the broker's own environment.
//! - Output: the child's stdout and stderr are pipes (or, when the broker's stdout is a
//!   terminal, a pseudo-terminal) read by one thread each and written to the broker's own
//!   stdout/stderr through a [`RedactStream`](broker_core::redact::RedactStream). A held-back
//!   tail (the beginning of what may be a secret) is released after [`FLUSH_AFTER`] of quiet.
//!   `--no-redact` hands the broker's own stdout/stderr to the child and records that in the
//!   audit log (the run is refused if it cannot be recorded).
//! - Signals: when stdin is not a terminal the child gets a process group of its own and
//!   SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to that group. When stdin is a
//!   terminal the child stays in the terminal's foreground group (it must, to read it), so
//!   the terminal already delivers Ctrl-C and Ctrl-\ to it: the broker ignores SIGINT and
//!   SIGQUIT and keeps waiting, and forwards SIGTERM and SIGHUP to the child. After a
//!   forwarded signal the child gets `--grace` seconds, then SIGKILL; the scratch dir is wiped
//!   and the broker exits 128+n. Otherwise the exit code is the child's (128+n when a signal
//!   killed it; 127 when the command is not found, 126 when it cannot be run).

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use broker_core::redact::{self, MIN_LEN, Redactor};
use broker_core::{Broker, Delivery, Error, RequestContext};
use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};
use zeroize::Zeroize;

use crate::cli::RunArgs;
use crate::hygiene::{self, Hygiene};

/// A held-back tail is released after this long without new output.
pub const FLUSH_AFTER: Duration = Duration::from_millis(200);
/// After the child exits, output from processes it left behind is read until this much
/// quiet, or at most [`DRAIN_LIMIT`].
const DRAIN_QUIET: Duration = Duration::from_millis(100);
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Runs `args.command` with the credentials named in `args.only` (all when empty).
pub async fn run(broker: &Broker, args: &RunArgs, context: RequestContext) -> Result<u8, Error> {
    let Some((program, rest)) = args.command.split_first() else {
        return Err(Error::invalid_config("no command given after `--`"));
    };
    let _hygiene = Hygiene::enter();
    tracing::debug!(applied = ?_hygiene.applied(), "process hygiene");
    // Listen before resolving: a signal during resolution must still wipe what was written.
    let mut signals = Signals::new()?;
    if args.no_redact {
        broker.record_notice(
            &context,
            "redaction_disabled",
            "broker run --no-redact: the child's output is not redacted",
        )?;
        tracing::warn!(
            "--no-redact: the child's output is not redacted (recorded in the audit log)"
        );
    }
    let mut delivery = tokio::select! {
        d = broker.deliver(&args.only, &context) => d?,
        n = signals.next() => return Ok(128 + n as u8),
    };
    // The broker's own logs and panics are redacted from here on, even with --no-redact.
    let live = LiveRedactor::install(&delivery);
    for name in live.0.skipped() {
        tracing::warn!(
            credential = %name,
            "value shorter than {MIN_LEN} bytes: it is not redacted from output"
        );
    }
    #[cfg(debug_assertions)]
    test_hooks::maybe_panic(&delivery);

    let shares_terminal = std::io::stdin().is_terminal();
    let plumbing = if args.no_redact {
        Plumbing::inherit()
    } else {
        Plumbing::new().map_err(|e| Error::io("cannot set up the child's output", &e))?
    };

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest);
    for (var, value) in delivery.env() {
        cmd.env(var, OsString::from_vec(value.expose().to_vec()));
    }
    if !shares_terminal {
        cmd.process_group(0);
    }
    let Plumbing {
        child_stdout,
        child_stderr,
        sources,
        pty_master,
    } = plumbing;
    cmd.stdout(child_stdout)
        .stderr(child_stderr)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // Drops the Command's copies of the child's ends (and its copy of the environment).
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = delivery.wipe();
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            hygiene::eprint_redacted(&format!(
                "error: cannot run `{}`: {e}",
                program.to_string_lossy()
            ));
            return Ok(code);
        }
    };
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    // If the broker dies (SIGKILL, SIGABRT, ...) the child's files must outlive it until it exits.
    if let Some(id) = child.id()
        && let Err(e) = delivery.record_child(id)
    {
        tracing::warn!(error = %e, "could not record the child in the scratch dir's marker");
    }
    let pumps = Pumps::start(sources, &live.0);
    let mut winch = match &pty_master {
        Some(_) => signal(SignalKind::window_change()).ok(),
        None => None,
    };

    // Minted `kind: file` credentials are re-minted before they age out; the file is replaced
    // atomically and the redactor extended with the new values. Env values stay fixed.
    let mut renewed: Vec<(String, broker_core::SecretValue)> = Vec::new();
    let mut next_refresh = match broker.refresh_files(&delivery, &context).await {
        Ok(r) => r.next,
        Err(e) => {
            tracing::warn!("cannot schedule re-minting of file credentials: {e}");
            None
        }
    };
    let outcome = loop {
        tokio::select! {
            status = child.wait() => break Outcome::Exited(status),
            () = sleep_until(next_refresh) => {
                next_refresh = match broker.refresh_files(&delivery, &context).await {
                    Ok(r) => {
                        if !r.secrets.is_empty() {
                            renewed.extend(r.secrets);
                            let all = delivery.secrets().iter().chain(renewed.iter());
                            redact::set_live(Arc::new(Redactor::new(all.map(|(n, v)| (n.as_str(), v)))));
                        }
                        r.next
                    }
                    Err(e) => {
                        tracing::warn!("re-minting file credentials failed: {e}; retrying in {}s", REFRESH_RETRY.as_secs());
                        Some(std::time::SystemTime::now() + REFRESH_RETRY)
                    }
                };
            }
            n = signals.next() => {
                if shares_terminal && (n == signo::SIGINT || n == signo::SIGQUIT) {
                    tracing::debug!(signal = n, "the terminal delivered this to the child too; waiting for it");
                    continue;
                }
                forward(pid, !shares_terminal, n);
                if tokio::time::timeout(args.grace(), child.wait()).await.is_err() {
                    tracing::warn!(
                        "child did not exit {}s after the signal; killing it",
                        args.grace().as_secs()
                    );
                    forward(pid, !shares_terminal, Signal::KILL.as_raw());
                    let _ = child.wait().await;
                }
                break Outcome::Signalled(n);
            }
            () = next_winch(&mut winch) => {
                if let Some(master) = &pty_master {
                    copy_window_size(master);
                }
            }
        }
    };
    pumps.finish();
    let wiped = delivery.wipe();
    drop(delivery);
    drop(live);
    let code = match outcome {
        Outcome::Signalled(n) => 128 + n as u8,
        Outcome::Exited(Ok(s)) => match (s.code(), s.signal()) {
            (Some(code), _) => code as u8,
            (None, Some(sig)) => 128 + sig as u8,
            (None, None) => 1,
        },
        Outcome::Exited(Err(e)) => return Err(Error::io("waiting for the child failed", &e)),
    };
    if let Err(e) = wiped {
        return Err(Error::io("could not wipe the scratch dir", &e));
    }
    Ok(code)
}

/// How long to wait before trying again after a failed re-mint.
const REFRESH_RETRY: Duration = Duration::from_secs(30);

/// Sleeps until `at` (at once if it has passed); never wakes for `None`.
async fn sleep_until(at: Option<std::time::SystemTime>) {
    match at {
        Some(at) => {
            let wait = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

enum Outcome {
    Exited(std::io::Result<std::process::ExitStatus>),
    Signalled(i32),
}

/// Installs the process-wide redactor for the delivery's values; removes it on drop.
struct LiveRedactor(Arc<Redactor>);

impl LiveRedactor {
    fn install(delivery: &Delivery) -> LiveRedactor {
        let redactor = Arc::new(Redactor::new(
            delivery.secrets().iter().map(|(n, v)| (n.as_str(), v)),
        ));
        redact::set_live(Arc::clone(&redactor));
        LiveRedactor(redactor)
    }
}

impl Drop for LiveRedactor {
    fn drop(&mut self) {
        redact::clear_live();
    }
}

/// Where the child's stdout and stderr go, and what the broker reads.
struct Plumbing {
    child_stdout: Stdio,
    child_stderr: Stdio,
    /// Read ends (pipe or pty master), each with where its redacted bytes go.
    sources: Vec<(OwnedFd, Sink)>,
    pty_master: Option<OwnedFd>,
}

#[derive(Debug, Clone, Copy)]
enum Sink {
    Stdout,
    Stderr,
}

impl Plumbing {
    /// The child writes straight to the broker's stdout and stderr (`--no-redact`).
    fn inherit() -> Plumbing {
        Plumbing {
            child_stdout: Stdio::inherit(),
            child_stderr: Stdio::inherit(),
            sources: Vec::new(),
            pty_master: None,
        }
    }

    fn new() -> std::io::Result<Plumbing> {
        let stdout_tty = std::io::stdout().is_terminal();
        let stderr_tty = std::io::stderr().is_terminal();
        let mut sources = Vec::new();
        let mut pty_master = None;
        let (child_stdout, child_stderr_pty) = match stdout_tty.then(open_pty).transpose() {
            Ok(Some((master, slave))) => {
                let for_stderr = if stderr_tty {
                    Some(Stdio::from(slave.try_clone()?))
                } else {
                    None
                };
                pty_master = Some(master.try_clone()?);
                sources.push((master, Sink::Stdout));
                (Stdio::from(slave), for_stderr)
            }
            Ok(None) => (pipe_to(Sink::Stdout, &mut sources)?, None),
            Err(e) => {
                tracing::debug!(error = %e, "no pseudo-terminal; the child's stdout is a pipe");
                (pipe_to(Sink::Stdout, &mut sources)?, None)
            }
        };
        let child_stderr = match child_stderr_pty {
            Some(s) => s,
            None => pipe_to(Sink::Stderr, &mut sources)?,
        };
        Ok(Plumbing {
            child_stdout,
            child_stderr,
            sources,
            pty_master,
        })
    }
}

fn pipe_to(sink: Sink, sources: &mut Vec<(OwnedFd, Sink)>) -> std::io::Result<Stdio> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    sources.push((read, sink));
    Ok(Stdio::from(write))
}

/// A pseudo-terminal whose slave passes the child's bytes through unchanged (no output
/// post-processing, so `\n` stays `\n`), sized like the broker's terminal.
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use rustix::termios::{OptionalActions, OutputModes, tcgetattr, tcsetattr};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if let Ok(mut termios) = tcgetattr(&slave) {
        termios.output_modes.remove(OutputModes::OPOST);
        let _ = tcsetattr(&slave, OptionalActions::Now, &termios);
    }
    copy_window_size(&master);
    Ok((master, slave))
}

fn copy_window_size(master: &OwnedFd) {
    if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()) {
        let _ = rustix::termios::tcsetwinsize(master, size);
    }
}

async fn next_winch(winch: &mut Option<tokio::signal::unix::Signal>) {
    match winch {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// One reader thread per output stream.
struct Pumps {
    done: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pumps {
    fn start(sources: Vec<(OwnedFd, Sink)>, redactor: &Arc<Redactor>) -> Pumps {
        let done = Arc::new(AtomicBool::new(false));
        let threads = sources
            .into_iter()
            .filter_map(|(fd, sink)| {
                let (done, redactor) = (Arc::clone(&done), Arc::clone(redactor));
                std::thread::Builder::new()
                    .name(format!("broker-{sink:?}").to_lowercase())
                    .spawn(move || pump(fd, sink, &redactor, &done))
                    .map_err(|e| tracing::error!(error = %e, "cannot start an output thread"))
                    .ok()
            })
            .collect();
        Pumps { done, threads }
    }

    /// The child is gone: drain what is left and wait for the threads.
    fn finish(self) {
        self.done.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn pump(src: OwnedFd, sink: Sink, redactor: &Arc<Redactor>, done: &AtomicBool) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::io::Errno;
    let mut stream = redactor.stream();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut drain_since: Option<Instant> = None;
    let mut healthy = true;
    while healthy {
        if done.load(Ordering::SeqCst) {
            let since = *drain_since.get_or_insert_with(Instant::now);
            if since.elapsed() > DRAIN_LIMIT {
                break;
            }
        }
        let wait = if stream.held() > 0 {
            FLUSH_AFTER
        } else {
            DRAIN_QUIET
        };
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: wait.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&src, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => {
                stream.flush(&mut out);
                healthy = emit(sink, &mut out);
                if done.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(_) => break,
        }
        // A re-minted file credential installs a redactor that also matches the new values.
        if let Some(latest) = redact::live()
            && !Arc::ptr_eq(&latest, stream.redactor())
        {
            stream.rebase(latest);
        }
        match rustix::io::read(&src, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                stream.push(&buf[..n], &mut out);
                healthy = emit(sink, &mut out);
            }
            Err(Errno::INTR | Errno::AGAIN) => {}
            // EIO: a pty master whose slave has been closed by every process.
            Err(_) => break,
        }
    }
    stream.flush(&mut out);
    if healthy {
        emit(sink, &mut out);
    }
    buf.zeroize();
    out.zeroize();
    // Dropping `src` closes the read end: a child still writing gets SIGPIPE, as in a shell
    // pipeline whose reader went away.
}

/// Writes `out` to the sink and clears it; false when the sink is gone (EPIPE).
fn emit(sink: Sink, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let result = match sink {
        Sink::Stdout => {
            let mut o = std::io::stdout().lock();
            o.write_all(out).and_then(|()| o.flush())
        }
        Sink::Stderr => {
            let mut e = std::io::stderr().lock();
            e.write_all(out).and_then(|()| e.flush())
        }
    };
    out.zeroize();
    out.clear();
    result.is_ok()
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
            (signo::SIGINT, SignalKind::interrupt()),
            (signo::SIGTERM, SignalKind::terminate()),
            (signo::SIGHUP, SignalKind::hangup()),
            (signo::SIGQUIT, SignalKind::quit()),
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
        let mut futures: Vec<_> = self
            .0
            .iter_mut()
            .map(|(n, s)| {
                let n = *n;
                Box::pin(async move {
                    s.recv().await;
                    n
                })
            })
            .collect();
        std::future::poll_fn(move |cx| {
            for f in futures.iter_mut() {
                if let std::task::Poll::Ready(n) = f.as_mut().poll(cx) {
                    return std::task::Poll::Ready(n);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// Signal numbers (Linux).
mod signo {
    pub const SIGHUP: i32 = 1;
    pub const SIGINT: i32 = 2;
    pub const SIGQUIT: i32 = 3;
    pub const SIGTERM: i32 = 15;
}

/// Hooks for the leak-test suite; compiled into debug builds only.
#[cfg(debug_assertions)]
mod test_hooks {
    use broker_core::Delivery;

    /// With `BROKER_TEST_PANIC_WITH_VALUE` set, panics with the first delivered value in the
    /// message, so `tests/leaks.rs` can check that the panic hook redacts it and that the
    /// scratch dir is still wiped while unwinding.
    pub fn maybe_panic(delivery: &Delivery) {
        if std::env::var_os("BROKER_TEST_PANIC_WITH_VALUE").is_none() {
            return;
        }
        let shown = delivery
            .secrets()
            .first()
            .map(|(_, v)| String::from_utf8_lossy(v.expose()).into_owned())
            .unwrap_or_default();
        panic!("test-only panic while holding a value: {shown}");
    }
}
