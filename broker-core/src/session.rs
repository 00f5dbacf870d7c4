//! The delivery engine: run one task with delivered credentials, its output redacted, file
//! credentials re-minted while it runs, and everything wiped when it ends.
//!
//! `broker run`, the daemon, the MCP server and embedders share this module; none of them
//! re-implements a step. The pieces:
//!
//! - [`Delivery::apply_to`] / [`Delivery::apply_to_tokio`]: put the delivered values in a
//!   child's environment (the bytes as they are, through `OsStr`; never argv). `kind: file`
//!   credentials are 0600 files in the delivery's scratch dir and their variables hold the path.
//! - [`Session`]: a [`Delivery`] plus the [`SharedRedactor`] built from its values and the
//!   background re-mint of minted `kind: file` credentials ([`Session::refresh_due`] and
//!   [`Session::refresh`], or [`Session::wait`] which runs both until the child exits). A
//!   re-mint replaces the file atomically and swaps in a redactor that matches the old and the
//!   new values *before* the next read of the child's output.
//! - [`Pumps`]: one thread per output source (a pipe or a pty master) that reads, redacts and
//!   writes to any [`Write`] sink — the terminal for `broker run`, an [`OutputBuffer`] with a
//!   size cap for a daemon. Streaming and split-write safe: the tail that may be the beginning
//!   of a value is held back and released after [`FLUSH_AFTER`] of quiet; when the child has
//!   exited ([`Pumps::finish`]) what its leftover processes still write is drained until
//!   [`DRAIN_QUIET`] of quiet, at most [`DRAIN_LIMIT`].
//! - Wipe: the scratch dir is wiped by [`Session::wipe`] or when the session (its delivery) is
//!   dropped, on error and panic paths too. [`Session::record_child`] records the child in the
//!   scratch dir's marker so a sweep by another process spares its files while it runs.
//!
//! The engine's redactor is its own ([`SharedRedactor`]), not the process-wide
//! [`redact::live`] one; a program that also wants its own logs and panic
//! messages redacted installs it globally with [`SharedRedactor::install_global`], which
//! follows every swap.
//!
//! Terminal matters (a pseudo-terminal, the controlling terminal, signal forwarding, raw mode)
//! are the caller's: `broker run` keeps them in the CLI. See `docs/library.md`.
//!
//! ```no_run
//! # async fn demo() -> broker_core::Result<()> {
//! use std::process::Stdio;
//! use broker_core::session::{OutputBuffer, Session};
//! use broker_core::{Broker, RequestContext};
//!
//! let broker = Broker::discover(&std::env::current_dir().unwrap(), None)?;
//! let mut session = broker.session(&[], &RequestContext::new()).await?;
//! let output = OutputBuffer::with_cap(1 << 20);
//! let mut pumps = session.pumps();
//!
//! let mut cmd = tokio::process::Command::new("deploy.sh");
//! session.delivery().apply_to_tokio(&mut cmd);
//! cmd.stdin(Stdio::null())
//!     .stdout(pumps.pipe("stdout", output.clone()).expect("pipe"))
//!     .stderr(pumps.pipe("stderr", output.clone()).expect("pipe"))
//!     .kill_on_drop(true);
//! let mut child = cmd.spawn().expect("spawn");
//! drop(cmd); // closes the broker's copies of the pipes' write ends
//! if let Some(pid) = child.id() {
//!     session.record_child(pid)?;
//! }
//! let status = session.wait(&mut child).await.expect("wait");
//! pumps.finish(); // drains what is left, joins the threads
//! session.wipe().expect("wipe");
//! println!("{status}: {}", String::from_utf8_lossy(&output.contents()));
//! # Ok(()) }
//! ```

use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use zeroize::Zeroize;

use crate::redact::{self, Redactor};
use crate::{Broker, Delivery, RequestContext, Result, SecretValue};

/// A held-back tail (the beginning of what may be a value) is released after this long
/// without new output.
pub const FLUSH_AFTER: Duration = Duration::from_millis(200);
/// After [`Pumps::finish`], output from processes the child left behind is read until this
/// much quiet, or at most [`DRAIN_LIMIT`].
pub const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// The longest a pump keeps draining after [`Pumps::finish`].
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long [`Session::refresh`] waits before trying again after a failed re-mint.
pub const REFRESH_RETRY: Duration = Duration::from_secs(30);

impl Delivery {
    /// Sets the delivered variables in `cmd`'s environment (values as raw bytes; file
    /// credentials as the path of their 0600 file). Nothing goes to argv.
    pub fn apply_to(&self, cmd: &mut std::process::Command) {
        for (var, value) in self.env() {
            cmd.env(var, env_value(value));
        }
    }

    /// [`Delivery::apply_to`] for a [`tokio::process::Command`].
    pub fn apply_to_tokio(&self, cmd: &mut tokio::process::Command) {
        for (var, value) in self.env() {
            cmd.env(var, env_value(value));
        }
    }
}

fn env_value(value: &SecretValue) -> &OsStr {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(value.expose())
}

/// A redactor that can be swapped while pumps use it (after a re-mint). Cloning shares it.
#[derive(Clone)]
pub struct SharedRedactor {
    inner: Arc<SharedInner>,
}

struct SharedInner {
    current: RwLock<Arc<Redactor>>,
    /// Whether [`SharedRedactor::install_global`] is in effect: swaps are published to
    /// [`redact::set_live`] too.
    global: AtomicBool,
}

impl fmt::Debug for SharedRedactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedRedactor")
            .field(&*self.current())
            .finish()
    }
}

impl SharedRedactor {
    /// Shares `redactor`.
    pub fn new(redactor: Arc<Redactor>) -> SharedRedactor {
        SharedRedactor {
            inner: Arc::new(SharedInner {
                current: RwLock::new(redactor),
                global: AtomicBool::new(false),
            }),
        }
    }

    /// A redactor for every value `delivery` holds.
    pub fn for_delivery(delivery: &Delivery) -> SharedRedactor {
        Self::new(Arc::new(Redactor::new(
            delivery.secrets().iter().map(|(n, v)| (n.as_str(), v)),
        )))
    }

    /// The redactor in use now.
    pub fn current(&self) -> Arc<Redactor> {
        Arc::clone(
            &self
                .inner
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Swaps in `redactor` (it should match at least what the old one did). Pumps pick it up
    /// before their next read; held bytes are matched against it.
    pub fn replace(&self, redactor: Arc<Redactor>) {
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if self.inner.global.load(Ordering::SeqCst) {
            redact::set_live(Arc::clone(&redactor));
        }
        *current = redactor;
    }

    /// Also installs this redactor as the process-wide one ([`redact::set_live`]) for the
    /// program's own logs and panic messages, following every [`replace`](Self::replace),
    /// until the returned guard is dropped (which calls [`redact::clear_live`]).
    #[must_use = "the global redactor is removed when the guard is dropped"]
    pub fn install_global(&self) -> GlobalRedactor {
        let current = self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner.global.store(true, Ordering::SeqCst);
        redact::set_live(Arc::clone(&current));
        drop(current);
        GlobalRedactor {
            shared: self.clone(),
        }
    }
}

/// Keeps a [`SharedRedactor`] installed as the process-wide redactor; see
/// [`SharedRedactor::install_global`].
#[derive(Debug)]
pub struct GlobalRedactor {
    shared: SharedRedactor,
}

impl Drop for GlobalRedactor {
    fn drop(&mut self) {
        let _current = self
            .shared
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.shared.inner.global.store(false, Ordering::SeqCst);
        redact::clear_live();
    }
}

/// When the next re-mint of file credentials is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextRefresh {
    /// Not asked yet: due at once.
    Unscheduled,
    At(SystemTime),
    Never,
}

/// One task's delivered credentials: the [`Delivery`], the redactor of its values, and the
/// re-mint schedule of its minted `kind: file` credentials. See the [module docs](self).
pub struct Session<'b> {
    broker: &'b Broker,
    context: RequestContext,
    delivery: Delivery,
    redactor: SharedRedactor,
    /// Values written by re-mints, kept (and redacted) until the session ends.
    renewed: Vec<(String, SecretValue)>,
    next_refresh: NextRefresh,
}

impl fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("delivery", &self.delivery)
            .field("redactor", &self.redactor)
            .field(
                "renewed",
                &self.renewed.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("next_refresh", &self.next_refresh)
            .finish()
    }
}

impl Broker {
    /// Delivers `names` (every credential when empty; see [`Broker::deliver`]) and starts a
    /// [`Session`] for them.
    pub async fn session(&self, names: &[String], context: &RequestContext) -> Result<Session<'_>> {
        let delivery = self.deliver(names, context).await?;
        Ok(Session::new(self, delivery, context.clone()))
    }
}

impl<'b> Session<'b> {
    /// A session for `delivery`, made by `broker` for `context`.
    pub fn new(broker: &'b Broker, delivery: Delivery, context: RequestContext) -> Session<'b> {
        let redactor = SharedRedactor::for_delivery(&delivery);
        Session {
            broker,
            context,
            delivery,
            redactor,
            renewed: Vec::new(),
            next_refresh: NextRefresh::Unscheduled,
        }
    }

    /// The delivered values and scratch dir.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The redactor of every value this session has held (delivered and re-minted).
    pub fn redactor(&self) -> &SharedRedactor {
        &self.redactor
    }

    /// Pumps that redact with this session's redactor, swaps included.
    pub fn pumps(&self) -> Pumps {
        Pumps::new(&self.redactor)
    }

    /// Records the child's pid in the scratch dir's marker; see [`Delivery::record_child`].
    pub fn record_child(&self, pid: u32) -> Result<()> {
        self.delivery.record_child(pid)
    }

    /// Wipes the scratch dir now (it is also wiped when the session is dropped).
    pub fn wipe(&mut self) -> io::Result<()> {
        self.delivery.wipe()
    }

    /// When [`refresh`](Self::refresh) is due next: `Some(None)` before the first call (due at
    /// once), `None` when nothing will need a re-mint.
    pub fn next_refresh(&self) -> Option<Option<SystemTime>> {
        match self.next_refresh {
            NextRefresh::Unscheduled => Some(None),
            NextRefresh::At(at) => Some(Some(at)),
            NextRefresh::Never => None,
        }
    }

    /// Completes when [`refresh`](Self::refresh) is due (at once before its first call); never
    /// when no credential needs a re-mint. Cancel-safe: use it in a `select!` loop and call
    /// `refresh` in the branch's handler.
    pub async fn refresh_due(&self) {
        match self.next_refresh {
            NextRefresh::Unscheduled => {}
            NextRefresh::At(at) => {
                let now = self.broker.runtime.clock.now();
                tokio::time::sleep(at.duration_since(now).unwrap_or_default()).await;
            }
            NextRefresh::Never => std::future::pending().await,
        }
    }

    /// Re-mints the minted `kind: file` credentials that are due ([`Broker::refresh_files`]):
    /// each file is replaced atomically and the redactor swapped for one that also matches the
    /// new values. Schedules the next call; after a failure (logged at warn level and returned)
    /// the next try is [`REFRESH_RETRY`] later (or never, when the first scheduling failed).
    /// Returns how many new values were written.
    ///
    /// Not cancel-safe: once started, let it finish (the redactor may already match a value
    /// whose file was not written yet, and the schedule is not updated).
    pub async fn refresh(&mut self) -> Result<usize> {
        let first = self.next_refresh == NextRefresh::Unscheduled;
        let (delivery, renewed, redactor) = (&self.delivery, &mut self.renewed, &self.redactor);
        // The redactor learns each new value before its file is replaced: a child that reads
        // the file and prints it at once is still redacted.
        let learn = |fresh: &[(String, SecretValue)]| {
            renewed.extend(fresh.iter().cloned());
            let all = delivery.secrets().iter().chain(renewed.iter());
            redactor.replace(Arc::new(Redactor::new(all.map(|(n, v)| (n.as_str(), v)))));
        };
        match self
            .broker
            .refresh_files(&self.delivery, &self.context, learn)
            .await
        {
            Ok(r) => {
                self.next_refresh = r.next.map_or(NextRefresh::Never, NextRefresh::At);
                Ok(r.secrets.len())
            }
            Err(e) if first => {
                tracing::warn!("cannot schedule re-minting of file credentials: {e}");
                self.next_refresh = NextRefresh::Never;
                Err(e)
            }
            Err(e) => {
                tracing::warn!(
                    "re-minting file credentials failed: {e}; retrying in {}s",
                    REFRESH_RETRY.as_secs()
                );
                self.next_refresh =
                    NextRefresh::At(self.broker.runtime.clock.now() + REFRESH_RETRY);
                Err(e)
            }
        }
    }

    /// Waits for `child` to exit, re-minting file credentials when they are due (failures
    /// are logged and retried; see [`refresh`](Self::refresh)).
    ///
    /// Not cancel-safe (a re-mint may be under way): to wait for other events as well, select
    /// on `child.wait()` and [`refresh_due`](Self::refresh_due) yourself.
    pub async fn wait(&mut self, child: &mut tokio::process::Child) -> io::Result<ExitStatus> {
        loop {
            tokio::select! {
                status = child.wait() => return status,
                () = self.refresh_due() => {
                    let _ = self.refresh().await;
                }
            }
        }
    }
}

/// Output pumps: one thread per source (a pipe's read end or a pty master), each reading,
/// redacting with a [`SharedRedactor`] and writing to its sink. See the [module docs](self).
///
/// A sink that fails (EPIPE, ...) stops its pump, which then closes its source: a child still
/// writing gets `SIGPIPE`, as in a shell pipeline whose reader went away.
pub struct Pumps {
    redactor: SharedRedactor,
    done: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Pumps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pumps")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Pumps {
    /// No pumps yet; each redacts with `redactor` (swaps included).
    pub fn new(redactor: &SharedRedactor) -> Pumps {
        Pumps {
            redactor: redactor.clone(),
            done: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    /// Starts a thread named `name` pumping `source` to `sink`. The pump ends at end of file
    /// (or `EIO`, a pty master whose slave every process closed), when the sink fails, or
    /// after draining once [`finish`](Self::finish) is called.
    pub fn spawn<W: Write + Send + 'static>(
        &mut self,
        name: &str,
        source: OwnedFd,
        mut sink: W,
    ) -> io::Result<()> {
        let (done, redactor) = (Arc::clone(&self.done), self.redactor.clone());
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || pump(&source, &mut sink, &redactor, &done))?;
        self.threads.push(thread);
        Ok(())
    }

    /// A pipe whose read end is pumped to `sink` (a thread named `name`); give the returned
    /// write end to the child (`Command::stdout`/`stderr`) and drop the `Command` after spawning
    /// it, so the pump sees end of file when the child is done.
    pub fn pipe<W: Write + Send + 'static>(&mut self, name: &str, sink: W) -> io::Result<Stdio> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        self.spawn(name, read, sink)?;
        Ok(Stdio::from(write))
    }

    /// The child is gone: drain what is left (see [`DRAIN_QUIET`], [`DRAIN_LIMIT`]), release
    /// held tails and wait for the threads.
    pub fn finish(mut self) {
        self.done.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

impl Drop for Pumps {
    /// Without [`finish`](Pumps::finish): the threads drain and end on their own.
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    }
}

fn pump(src: &OwnedFd, sink: &mut dyn Write, redactor: &SharedRedactor, done: &AtomicBool) {
    use rustix::event::{PollFd, PollFlags, poll};
    use rustix::io::Errno;
    let mut stream = redactor.current().stream();
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
        let mut fds = [PollFd::new(src, PollFlags::IN)];
        match poll(&mut fds, Some(&timespec(wait))) {
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
        // A re-minted file credential swaps in a redactor that also matches the new values.
        let latest = redactor.current();
        if !Arc::ptr_eq(&latest, stream.redactor()) {
            stream.rebase(latest);
        }
        match rustix::io::read(src.as_fd(), &mut buf) {
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
}

/// Writes `out` to the sink, flushes it and clears `out`; false when the sink failed.
fn emit(sink: &mut dyn Write, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let result = sink.write_all(out).and_then(|()| sink.flush());
    out.zeroize();
    out.clear();
    result.is_ok()
}

/// A [`Write`] sink that keeps (redacted) output in memory up to a cap; clones share the
/// buffer. Bytes past the cap are dropped (the writer still reports them written, so the
/// child is not stopped) and [`truncated`](Self::truncated) says so. Zeroized on drop.
#[derive(Clone)]
pub struct OutputBuffer {
    inner: Arc<Mutex<BufferInner>>,
}

struct BufferInner {
    bytes: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Drop for BufferInner {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for OutputBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("OutputBuffer")
            .field("len", &inner.bytes.len())
            .field("cap", &inner.cap)
            .field("truncated", &inner.truncated)
            .finish()
    }
}

impl Default for OutputBuffer {
    /// No cap.
    fn default() -> Self {
        Self::with_cap(usize::MAX)
    }
}

impl OutputBuffer {
    /// A buffer that keeps at most `cap` bytes.
    pub fn with_cap(cap: usize) -> OutputBuffer {
        OutputBuffer {
            inner: Arc::new(Mutex::new(BufferInner {
                bytes: Vec::new(),
                cap,
                truncated: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BufferInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of what was kept so far.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// Takes what was kept so far, leaving the buffer empty (the cap counts from zero again).
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().bytes)
    }

    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.lock().bytes.len()
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether bytes were dropped at the cap.
    pub fn truncated(&self) -> bool {
        self.lock().truncated
    }
}

impl Write for OutputBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut inner = self.lock();
        let room = inner.cap.saturating_sub(inner.bytes.len());
        if data.len() > room {
            inner.truncated = true;
        }
        let keep = data.len().min(room);
        inner.bytes.extend_from_slice(&data[..keep]);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
