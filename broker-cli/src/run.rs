//! `broker run`: resolve, deliver, run the child with its output redacted, pass its exit code
//! through, wipe. The user-facing description is `docs/run.md`.
//!
//! - Hygiene first ([`crate::hygiene`]): no core dumps, not dumpable, memory locked where
//!   allowed; then signal handlers; then resolution.
//! - Values reach the child only through its environment and 0600 scratch files: never argv,
//!   and never the broker's own environment.
//! - The delivery engine is [`broker_core::session`]: it applies the delivery to the child,
//!   pumps and redacts its output, re-mints `kind: file` credentials while it runs and wipes
//!   the scratch dir. This module keeps what is a terminal program's business: arguments,
//!   signals, the pseudo-terminal and controlling terminal, process hygiene, exit codes.
//! - Output: the child's stdout and stderr are pipes (or, when the broker's stdout is a
//!   terminal, a pseudo-terminal) read by one thread each ([`Pumps`]) and written to the
//!   broker's own stdout/stderr, redacted. A held-back tail (the beginning of what may be a
//!   secret) is released after [`FLUSH_AFTER`](broker_core::session::FLUSH_AFTER) of quiet.
//!   `--no-redact` hands the broker's own stdout/stderr to the child and records that in the
//!   audit log (the run is refused if it cannot be recorded). A run that delivers no value at
//!   all (an empty config) does the same without a record.
//! - Controlling terminal: when the broker has one (`/dev/tty` opens), the child gets the
//!   broker's pseudo-terminal as *its* controlling terminal (its own session, `setsid` +
//!   `TIOCSCTTY` in [`crate::sys`]), so what it writes to `/dev/tty` is redacted too (shown on
//!   the broker's stdout, or on the broker's terminal when stdout is not one). When the broker
//!   is in the terminal's foreground, the terminal is put in raw mode (output processing
//!   kept) and keystrokes are relayed to the pty, which is also the child's stdin when the
//!   broker's stdin is a terminal; the settings are restored when the run ends.
//! - Signals: the child gets a process group of its own (with a controlling terminal: a
//!   session) and SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to that group. Ctrl-C and
//!   Ctrl-\ typed on the terminal are relayed as bytes; the pty's line discipline signals the
//!   child. Only without a controlling terminal to give (or with `--no-redact`, or no value
//!   delivered) and stdin a
//!   terminal does the child stay in the terminal's foreground group: then the terminal
//!   delivers Ctrl-C and Ctrl-\ to it, the broker ignores SIGINT and SIGQUIT and keeps
//!   waiting, and forwards SIGTERM and SIGHUP to the child. After a
//!   forwarded signal the child gets `--grace` seconds, then SIGKILL; the scratch dir is wiped
//!   and the broker exits 128+n. Otherwise the exit code is the child's (128+n when a signal
//!   killed it; 127 when the command is not found, 126 when it cannot be run).

use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker_core::redact::MIN_LEN;
use broker_core::session::{Pumps, Session};
use broker_core::{Broker, Error, RequestContext};
use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};
use zeroize::Zeroize;

use crate::cli::RunArgs;
use crate::hygiene::{self, Hygiene};

/// How often the keystroke relay checks whether the run has ended.
const RELAY_POLL: Duration = Duration::from_millis(100);

/// Runs `args.command` with the credentials named in `args.only` (all when empty).
pub async fn run(broker: &Broker, args: &RunArgs, context: RequestContext) -> Result<u8, Error> {
    let Some((program, rest)) = args.command.split_first() else {
        return Err(Error::invalid_config("no command given after `--`"));
    };
    // --isolate where namespaces cannot be created: refused before anything is resolved.
    #[cfg(feature = "proxy")]
    if args.isolate
        && let Some(code) = crate::isolate::refuse_unless_available()
    {
        return Ok(code);
    }
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
    let (mut session, daemon_proxy) = tokio::select! {
        s = session(broker, args, &context) => s?,
        n = signals.next() => return Ok(128 + n as u8),
    };
    // The broker's own logs and panics are redacted from here on, even with --no-redact.
    let live = session.redactor().install_global();
    // `proxy:` credentials: the child gets placeholders and the run's proxy (docs/proxy.md).
    // With --isolate the proxy always starts: it is the child's only way out.
    #[cfg(feature = "proxy")]
    let proxy = if args.isolate {
        Some(broker_proxy::RunProxy::start_isolated(broker, session.delivery(), &context).await?)
    } else {
        broker_proxy::RunProxy::start(broker, session.delivery(), &context).await?
    };
    for name in session.redactor().current().skipped() {
        tracing::warn!(
            credential = %name,
            "value shorter than {MIN_LEN} bytes: it is not redacted from output"
        );
    }
    #[cfg(debug_assertions)]
    test_hooks::maybe_panic(session.delivery());

    // No value delivered at all (an empty config, say), and none to come from a re-mint: the
    // child writes straight to the broker's outputs, as with --no-redact, and no pipe, pty or
    // output thread is set up for nothing.
    let nothing_to_redact = session.delivery().secrets().is_empty()
        && session.delivery().env().is_empty()
        && session.delivery().scratch().is_none()
        && session.redactor().current().is_empty();
    let plumbing = if args.no_redact || nothing_to_redact {
        Plumbing::inherit()
    } else {
        Plumbing::new().map_err(|e| Error::io("cannot set up the child's output", &e))?
    };

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest);
    // --isolate: the helper (crate::isolate) takes the command's place and runs it.
    #[cfg(feature = "proxy")]
    if args.isolate {
        // Never unisolated: no socket to relay to is an error, not a plain run.
        let (socket, port) = proxy
            .as_ref()
            .and_then(|p| Some((p.unix_socket()?, p.proxy().addr().port())))
            .ok_or_else(|| Error::internal("--isolate: the proxy has no unix socket"))?;
        cmd = crate::isolate::command(program, rest, socket, port);
    }
    session.delivery().apply_to_tokio(&mut cmd);
    #[cfg(feature = "proxy")]
    if let Some(proxy) = &proxy {
        proxy.apply_to_tokio(&mut cmd);
    }
    if let Some(remote) = &daemon_proxy {
        remote.apply_to_tokio(&mut cmd);
    }
    let Plumbing {
        child_stdin,
        child_stdout,
        child_stderr,
        sources,
        pty_master,
        ctty_slave,
        tty,
        relay_input,
    } = plumbing;
    // With a controlling terminal of its own the child is in its own session and group; it
    // shares the user's terminal only when the broker has none to give it (or --no-redact).
    let shares_terminal = ctty_slave.is_none() && std::io::stdin().is_terminal();
    match &ctty_slave {
        Some(slave) => crate::sys::controlling_terminal(&mut cmd, slave),
        None if !shares_terminal => {
            cmd.process_group(0);
        }
        None => {}
    }
    cmd.stdin(child_stdin)
        .stdout(child_stdout)
        .stderr(child_stderr)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // Drops the Command's copies of the child's ends (and its copy of the environment), and
    // the broker's copy of the pty slave, so the master reads EIO once the child is gone.
    drop(cmd);
    drop(ctty_slave);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = session.wipe();
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
        && let Err(e) = session.record_child(id)
    {
        tracing::warn!(error = %e, "could not record the child in the scratch dir's marker");
    }
    let pumps = start_pumps(&session, sources);
    // Keystrokes go to the child's pty (raw mode on the user's terminal until the run ends).
    let relay = match (&tty, &pty_master) {
        (Some(tty), Some(master)) if relay_input => TerminalRelay::start(tty, master),
        _ => None,
    };
    let mut winch = match &pty_master {
        Some(_) => signal(SignalKind::window_change()).ok(),
        None => None,
    };

    // Minted `kind: file` credentials are re-minted before they age out; the file is replaced
    // atomically and the redactor (the pumps' and the global one) extended with the new
    // values. Env values stay fixed. The first call schedules; failures are logged there.
    let _ = session.refresh().await;
    let outcome = loop {
        tokio::select! {
            status = child.wait() => break Outcome::Exited(status),
            () = session.refresh_due() => {
                // Runs to completion here (not cancel-safe).
                let _ = session.refresh().await;
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
                    copy_window_size(master, tty.as_deref());
                }
            }
        }
    };
    pumps.finish();
    drop(relay);
    if let Some(remote) = daemon_proxy {
        remote.stop().await;
    }
    let wiped = session.wipe();
    drop(session);
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

/// The task's credentials: from the daemon named by `--from` (with the daemon's proxy for
/// its placeholder-mode credentials), or resolved locally.
async fn session<'b>(
    broker: &'b Broker,
    args: &RunArgs,
    context: &RequestContext,
) -> Result<(Session<'b>, Option<DaemonProxy>), Error> {
    #[cfg(feature = "serve")]
    if let Some(daemon) = args.daemon.endpoint()? {
        let label = format!("credentials from the daemon at {}", daemon.describe());
        let (delivery, grant) =
            crate::progress::waiting(&label, broker_serve::client::deliver(&daemon, &args.only))
                .await?;
        let proxy = match grant {
            Some(grant) => Some(DaemonProxy::new(daemon, grant).await?),
            None => None,
        };
        return Ok((Session::new(broker, delivery, context.clone()), proxy));
    }
    let label = match args.only.as_slice() {
        [one] => crate::progress::label(broker, one),
        _ => "the task's credentials".to_string(),
    };
    let session = crate::progress::waiting(&label, broker.session(&args.only, context)).await?;
    Ok((session, None))
}

/// The daemon's egress proxy for a `run --from` with placeholder-mode credentials: the child
/// gets its URL and the run's CA; the daemon stops it when the run ends (or at the end of its
/// lifetime, should the broker die first).
#[cfg(feature = "serve")]
struct DaemonProxy {
    daemon: broker_serve::client::Endpoint,
    /// `None` once stopped.
    id: Option<String>,
    env: broker_proxy::ProxyEnv,
}

#[cfg(feature = "serve")]
impl DaemonProxy {
    async fn new(
        daemon: broker_serve::client::Endpoint,
        grant: broker_serve::proxy::ProxyGrant,
    ) -> Result<DaemonProxy, Error> {
        match broker_proxy::ProxyEnv::new(&grant.url, &grant.ca_pem) {
            Ok(env) => Ok(DaemonProxy {
                daemon,
                id: Some(grant.id.clone()),
                env,
            }),
            Err(e) => {
                let _ = broker_serve::client::stop_proxy(&daemon, &grant.id).await;
                Err(e)
            }
        }
    }

    fn apply_to_tokio(&self, cmd: &mut tokio::process::Command) {
        self.env.apply_to_tokio(cmd);
    }

    /// Asks the daemon to stop the proxy (the run is over): up to three tries.
    async fn stop(mut self) {
        if let Some(id) = self.id.take() {
            stop_daemon_proxy(&self.daemon, &id).await;
        }
    }
}

#[cfg(feature = "serve")]
async fn stop_daemon_proxy(daemon: &broker_serve::client::Endpoint, id: &str) {
    let mut wait = std::time::Duration::from_millis(100);
    for attempt in 1..=3 {
        match broker_serve::client::stop_proxy(daemon, id).await {
            Ok(()) => return,
            Err(e) if attempt == 3 => {
                tracing::warn!("the daemon's proxy for this run was not stopped: {e}");
            }
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

/// Every way out of a run that did not reach [`DaemonProxy::stop`] (an error after the
/// proxy started) still stops it, from a thread of its own.
#[cfg(feature = "serve")]
impl Drop for DaemonProxy {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let daemon = self.daemon.clone();
        let stopper = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(stop_daemon_proxy(&daemon, &id));
            }
        });
        let _ = stopper.join();
    }
}

/// Without `serve`, there is no daemon and so no daemon proxy.
#[cfg(not(feature = "serve"))]
struct DaemonProxy;

#[cfg(not(feature = "serve"))]
impl DaemonProxy {
    fn apply_to_tokio(&self, _cmd: &mut tokio::process::Command) {}
    async fn stop(self) {}
}

enum Outcome {
    Exited(std::io::Result<std::process::ExitStatus>),
    Signalled(i32),
}

/// Where the child's stdin, stdout and stderr go, what the broker reads, and the terminal the
/// child gets as its controlling terminal.
struct Plumbing {
    child_stdin: Stdio,
    child_stdout: Stdio,
    child_stderr: Stdio,
    /// Read ends (pipe or pty master), each with where its redacted bytes go.
    sources: Vec<(OwnedFd, Sink)>,
    pty_master: Option<OwnedFd>,
    /// The pty slave to make the child's controlling terminal (when the broker has one).
    ctty_slave: Option<OwnedFd>,
    /// The broker's own controlling terminal (`/dev/tty`).
    tty: Option<Arc<OwnedFd>>,
    /// Whether to relay keystrokes from `tty` to the pty (the broker is in the foreground).
    relay_input: bool,
}

#[derive(Debug, Clone)]
enum Sink {
    Stdout,
    Stderr,
    /// The broker's controlling terminal, for the pty when stdout is not a terminal.
    Tty(Arc<OwnedFd>),
}

impl Sink {
    fn name(&self) -> &'static str {
        match self {
            Sink::Stdout => "broker-stdout",
            Sink::Stderr => "broker-stderr",
            Sink::Tty(_) => "broker-tty",
        }
    }
}

impl Plumbing {
    /// The child writes straight to the broker's stdout and stderr (`--no-redact`).
    fn inherit() -> Plumbing {
        Plumbing {
            child_stdin: Stdio::inherit(),
            child_stdout: Stdio::inherit(),
            child_stderr: Stdio::inherit(),
            sources: Vec::new(),
            pty_master: None,
            ctty_slave: None,
            tty: None,
            relay_input: false,
        }
    }

    /// A pty when the broker's stdout is a terminal or the broker has a controlling terminal;
    /// see the module docs.
    fn new() -> std::io::Result<Plumbing> {
        let stdout_tty = std::io::stdout().is_terminal();
        let stderr_tty = std::io::stderr().is_terminal();
        let stdin_tty = std::io::stdin().is_terminal();
        let tty = controlling_tty().map(Arc::new);
        let mut sources = Vec::new();
        let pty = if stdout_tty || tty.is_some() {
            open_pty(tty.as_deref())
                .map_err(|e| {
                    tracing::debug!(error = %e, "no pseudo-terminal; the child's output goes through pipes");
                })
                .ok()
        } else {
            None
        };
        let Some((master, slave)) = pty else {
            return Ok(Plumbing {
                child_stdin: Stdio::inherit(),
                child_stdout: pipe_to(Sink::Stdout, &mut sources)?,
                child_stderr: pipe_to(Sink::Stderr, &mut sources)?,
                sources,
                pty_master: None,
                ctty_slave: None,
                tty: None,
                relay_input: false,
            });
        };
        // Reading or reconfiguring the terminal from a background job would stop the broker
        // (SIGTTIN/SIGTTOU): relay keystrokes only from the foreground.
        let relay_input = tty.as_deref().is_some_and(is_foreground);
        let child_stdout = if stdout_tty {
            Stdio::from(slave.try_clone()?)
        } else {
            pipe_to(Sink::Stdout, &mut sources)?
        };
        let child_stderr = if stdout_tty && stderr_tty {
            Stdio::from(slave.try_clone()?)
        } else {
            pipe_to(Sink::Stderr, &mut sources)?
        };
        let child_stdin = if relay_input && stdin_tty {
            Stdio::from(slave.try_clone()?)
        } else {
            Stdio::inherit()
        };
        let master_sink = match &tty {
            Some(t) if !stdout_tty => Sink::Tty(Arc::clone(t)),
            _ => Sink::Stdout,
        };
        let pty_master = Some(master.try_clone()?);
        sources.push((master, master_sink));
        Ok(Plumbing {
            child_stdin,
            child_stdout,
            child_stderr,
            sources,
            pty_master,
            ctty_slave: tty.is_some().then_some(slave),
            tty,
            relay_input,
        })
    }
}

/// The broker's controlling terminal, if it has one.
fn controlling_tty() -> Option<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        "/dev/tty",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// Whether this process's group is the terminal's foreground group.
fn is_foreground(tty: &OwnedFd) -> bool {
    rustix::termios::tcgetpgrp(tty).is_ok_and(|g| g == rustix::process::getpgrp())
}

fn pipe_to(sink: Sink, sources: &mut Vec<(OwnedFd, Sink)>) -> std::io::Result<Stdio> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    sources.push((read, sink));
    Ok(Stdio::from(write))
}

/// A pseudo-terminal whose slave passes the child's bytes through unchanged (no output
/// post-processing, so `\n` stays `\n`), sized like the broker's terminal.
fn open_pty(tty: Option<&OwnedFd>) -> std::io::Result<(OwnedFd, OwnedFd)> {
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
    copy_window_size(&master, tty);
    Ok((master, slave))
}

/// Copies the window size of the broker's stdout (or else its controlling terminal).
fn copy_window_size(master: &OwnedFd, tty: Option<&OwnedFd>) {
    let size = rustix::termios::tcgetwinsize(std::io::stdout().as_fd())
        .or_else(|e| tty.map_or(Err(e), rustix::termios::tcgetwinsize));
    if let Ok(size) = size {
        let _ = rustix::termios::tcsetwinsize(master, size);
    }
}

/// Relays keystrokes from the user's terminal to the child's pty, with the terminal in raw
/// mode (its output processing left on) so Ctrl-C, Ctrl-\ and Ctrl-Z reach the pty's line
/// discipline, which signals the child. Dropping it restores the terminal's settings.
struct TerminalRelay {
    tty: Arc<OwnedFd>,
    saved: rustix::termios::Termios,
    done: Arc<AtomicBool>,
}

impl TerminalRelay {
    fn start(tty: &Arc<OwnedFd>, master: &OwnedFd) -> Option<TerminalRelay> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(&**tty)
            .map_err(|e| tracing::debug!(error = %e, "cannot read the terminal's settings"))
            .ok()?;
        let master = master
            .try_clone()
            .map_err(|e| tracing::debug!(error = %e, "cannot relay the terminal's input"))
            .ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        raw.output_modes = saved.output_modes;
        if let Err(e) = tcsetattr(&**tty, OptionalActions::Now, &raw) {
            tracing::debug!(error = %e, "cannot put the terminal in raw mode; input is not relayed");
            return None;
        }
        let relay = TerminalRelay {
            tty: Arc::clone(tty),
            saved,
            done: Arc::new(AtomicBool::new(false)),
        };
        let (from, done) = (Arc::clone(tty), Arc::clone(&relay.done));
        // Not joined: a write to a pty whose child stopped reading may block; the thread ends
        // with the process.
        if let Err(e) = std::thread::Builder::new()
            .name("broker-stdin".into())
            .spawn(move || relay_input(&from, &master, &done))
        {
            tracing::debug!(error = %e, "cannot start the input relay");
            return None;
        }
        Some(relay)
    }
}

impl Drop for TerminalRelay {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        self.done.store(true, Ordering::SeqCst);
        let _ = tcsetattr(&*self.tty, OptionalActions::Now, &self.saved);
    }
}

fn relay_input(tty: &OwnedFd, master: &OwnedFd, done: &AtomicBool) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::io::Errno;
    let mut buf = [0u8; 4096];
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: RELAY_POLL.subsec_nanos().into(),
    };
    while !done.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(tty, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => {}
            Err(_) => break,
        }
        if done.load(Ordering::SeqCst) {
            break;
        }
        match rustix::io::read(tty, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if write_all(master, &buf[..n]).is_err() {
                    break;
                }
            }
            Err(Errno::INTR | Errno::AGAIN) => {}
            Err(_) => break,
        }
    }
    // Typed input may be a password.
    buf.zeroize();
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn next_winch(winch: &mut Option<tokio::signal::unix::Signal>) {
    match winch {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// One engine pump per output source, each writing to its sink.
fn start_pumps(session: &Session<'_>, sources: Vec<(OwnedFd, Sink)>) -> Pumps {
    let mut pumps = session.pumps();
    for (fd, sink) in sources {
        if let Err(e) = pumps.spawn(sink.name(), fd, sink) {
            tracing::error!(error = %e, "cannot start an output thread");
        }
    }
    pumps
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout => std::io::stdout().write(data),
            Sink::Stderr => std::io::stderr().write(data),
            Sink::Tty(tty) => Ok(rustix::io::write(&**tty, data)?),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().lock().write_all(data),
            Sink::Stderr => std::io::stderr().lock().write_all(data),
            Sink::Tty(tty) => write_all(tty, data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().flush(),
            Sink::Stderr => std::io::stderr().flush(),
            Sink::Tty(_) => Ok(()),
        }
    }
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
