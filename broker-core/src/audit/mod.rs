//! The hash-chained audit log.
//!
//! One JSON object per line (`audit.path`, created 0600). The first line is a header with
//! `seq: 0` and a random 256-bit `genesis`; every later record carries `seq` (one more than the
//! line before) and `prev`, the hex SHA-256 of the previous line's bytes (without its newline),
//! so the first record chains to the header and through it to the genesis. Editing, dropping,
//! reordering or inserting a line breaks the chain at that point; [`verify`] names the first
//! bad `seq`.
//!
//! Truncating the tail leaves a valid chain, so every flush also rewrites a checkpoint beside
//! the log (`<log>.checkpoint`: last `seq`, its digest and the log's length; written to a
//! temporary file and renamed). [`verify`] compares the log's end with it, and so does the
//! writer before its first write: a log whose last record was cut or edited, whose last line
//! is cut short or garbled, or a non-empty log without a checkpoint (or with a FIFO or device
//! in its place), is refused (an [`ErrorKind::Io`](crate::ErrorKind::Io) error, like an unwritable log) and runs
//! `alert.command` when one is set ([`AuditLog::with_alert`]), so the next request cannot
//! launder the tampering into a chain that verifies. The one state accepted besides an exact
//! match is a checkpoint behind by at most one flush ([`MAX_FLUSH`] records) that the records
//! after it chain to (a flush interrupted between its two writes). The checkpoint is not a
//! MAC: someone who can rewrite both files can forge a shorter history; ship the log off the
//! machine when that matters.
//!
//! Two ways to append, one file format:
//!
//! - **Per append** (the CLI; the default): each [`AuditLog::append`] opens the log, takes an
//!   exclusive `flock` (waiting at most [`AuditLog::with_lock_wait`], 5 s by default, then
//!   refusing: the log is held by another broker process), checks the tail against the
//!   checkpoint, writes one line, fsyncs and rewrites the checkpoint. Several short-lived
//!   processes can share one log this way.
//! - **Held** (a daemon): [`AuditLog::hold`], called once at start, opens the log, takes the
//!   `flock` without waiting (another holder is refused), checks the tail once and keeps the
//!   file, its lock and the chain's end in a writer thread until the log is dropped. Appends
//!   ([`AuditLog::append`], or [`AuditLog::append_async`] from async code) queue their record
//!   and wait; the writer takes everything queued, writes it, fsyncs once, rewrites the
//!   checkpoint once and then answers every record of that flush (group commit). A failed
//!   flush fails every record in it, and the writer re-reads and re-checks the tail before
//!   the next one. [`AuditLog::submit`] queues a record without waiting and hands back a
//!   [`Receipt`] to wait on later: flushes complete in order, so a request that queues its
//!   decision and waits for its issuance record waits for one flush, not two.
//!   [`AuditLog::flushes`] counts the flushes.
//!
//! Either way the record is fsynced (unless `audit.fsync: false`) before the broker hands out
//! a credential; if it cannot be written the request is refused.
//!
//! Records hold names, references, scopes, ids, times and outcomes — never a value: the
//! [`Event`] type has no field that could hold a [`SecretValue`](crate::SecretValue).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Result;
use crate::retry::AlertCommand;

mod file;
mod held;
mod verify;

use file::{Pending, Target};
pub use verify::{CheckpointStatus, Problem, Verification, verify};

/// The log format version written in the header.
pub const FORMAT_VERSION: u32 = 1;

/// The largest checkpoint file read (a real one is under 200 bytes).
const MAX_CHECKPOINT: u64 = 64 << 10;
/// The longest line [`verify`] reads as one record (a real one is well under 4 KiB).
const MAX_RECORD: u64 = 1 << 20;
/// The most records one flush of a held log writes (more queued wait for the next flush).
/// A checkpoint at most this many records behind the log's end is accepted as an interrupted
/// flush, when the records after it chain to the one it names.
pub const MAX_FLUSH: usize = 256;
/// How long a per-append write waits for the log's lock by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Routine: grants, issuances, revocations.
    Info,
    /// Refusals and failures that need no one's attention.
    Warning,
    /// Fail-closed outcomes someone should look at (retries exhausted, refresh failed past
    /// expiry). Also runs `alert.command`.
    Alert,
}

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A policy or egress decision (granted or denied).
    Decision,
    /// A credential handed to a caller.
    Issuance,
    /// A cached credential re-minted (or a failed refresh).
    Refresh,
    /// A lease revoked.
    Revocation,
    /// Stored key material rotated.
    Rotation,
    /// A request that failed after the decision.
    Failure,
    /// Something else worth recording (e.g. output redaction disabled for a run).
    Notice,
}

/// One audit event, before it gets its `seq`, `prev` and `timestamp`. Secret-free by
/// construction: every field is a name, an id, a reference, a time or an outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What the record is about.
    pub event: EventKind,
    /// How serious it is.
    pub severity: Severity,
    /// The agent that asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The tenant of the broker's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The request's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The task's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// `resolve`, `mint`, `revoke`, `rotate`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The credential's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Its reference (never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The requested scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<serde_json::Value>,
    /// The requested lifetime, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// When the credential expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
    /// The lease id (a handle, never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// `granted` or `denied`, for decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Why: the policy ids that decided, the gate's reason, the error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `issued`, `cached`, `refreshed`, `stale`, `failed`, `revoked`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The error kind, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// How many provider attempts were made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// How the caller was identified (a daemon's verified peer, certificate or token), never
    /// a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Why the caller said it asked (free text from the request, elided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The HTTP exchange an egress proxy forwarded or refused (never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpExchange>,
}

/// What an egress proxy's audit record says about one request: where it went and what came
/// back. Secret-free: the path is without its query and redacted of every delivered value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpExchange {
    /// `host:port` the request went (or was to go) to: the CONNECT authority or absolute URI.
    pub host: String,
    /// The method.
    pub method: String,
    /// The path, without the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The upstream's status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Response body bytes relayed to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl Event {
    /// An event of `kind` and `severity` with every other field empty.
    pub fn new(kind: EventKind, severity: Severity) -> Self {
        Event {
            event: kind,
            severity,
            agent_id: None,
            tenant: None,
            request_id: None,
            task_id: None,
            action: None,
            credential: None,
            reference: None,
            backend: None,
            scope: None,
            ttl: None,
            expiry: None,
            lease_id: None,
            decision: None,
            reason: None,
            outcome: None,
            error_kind: None,
            attempts: None,
            identity: None,
            purpose: None,
            http: None,
        }
    }
}

#[derive(Debug, Serialize)]
struct Header {
    seq: u64,
    event: &'static str,
    version: u32,
    genesis: String,
    timestamp: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    seq: u64,
    digest: String,
    /// The log's length in bytes after that record (absent in checkpoints of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    len: Option<u64>,
}

/// RFC 3339 text for `t` (UTC, seconds precision or better).
pub fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in d {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The checkpoint file kept beside `log`.
pub fn checkpoint_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".checkpoint");
    log.with_file_name(name)
}

/// Audit log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// Whether each append is fsynced before returning. Default true.
    pub fsync: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions { fsync: true }
    }
}

/// Counters and test hooks shared by a log and its writer thread.
#[derive(Debug, Default)]
struct Shared {
    /// Flushes completed (one write + fsync + checkpoint each).
    flushes: AtomicU64,
    /// Records queued for the writer and not yet taken into a flush.
    queued: AtomicU64,
    /// Test hook: the next flush fails before it writes anything.
    #[cfg(feature = "testkit")]
    fail_next: std::sync::atomic::AtomicBool,
    /// Test hook: the writer waits on this lock before it takes a batch.
    #[cfg(feature = "testkit")]
    gate: Mutex<()>,
}

/// An append-only, hash-chained audit log shared safely by threads and processes: one open and
/// `flock` per append by default, or held open by one writer thread with group commit after
/// [`AuditLog::hold`] (see the [module docs](self)).
#[derive(Debug)]
pub struct AuditLog {
    target: Target,
    /// How long a per-append write waits for another process's lock.
    lock_wait: Duration,
    /// Serialises the per-append writes of this process's threads (`flock` covers other
    /// processes) and [`AuditLog::hold`].
    lock: Mutex<()>,
    /// The writer thread, once held.
    held: OnceLock<held::Held>,
    shared: Arc<Shared>,
}

impl AuditLog {
    /// A log at `path`; nothing is opened until the first append (or [`AuditLog::hold`]).
    pub fn new(path: impl Into<PathBuf>, options: AuditOptions) -> Self {
        AuditLog {
            target: Target {
                path: path.into(),
                fsync: options.fsync,
                alert: None,
            },
            lock_wait: DEFAULT_LOCK_WAIT,
            lock: Mutex::new(()),
            held: OnceLock::new(),
            shared: Arc::default(),
        }
    }

    /// Runs `alert` when the log's tail does not match its checkpoint. Set it before
    /// [`AuditLog::hold`].
    pub fn with_alert(mut self, alert: Option<AlertCommand>) -> Self {
        self.target.alert = alert;
        self
    }

    /// How long a per-append write waits for the log's `flock` when another process holds it
    /// (default [`DEFAULT_LOCK_WAIT`]) before it refuses: the log is held by another broker
    /// process. Another short append releases it within milliseconds; a daemon that
    /// [holds](AuditLog::hold) the log never does.
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.target.path
    }

    /// Holds the log for this value's lifetime (a daemon calls it once at start): opens it,
    /// takes its exclusive `flock` without waiting, checks its tail against the checkpoint
    /// (refusing a tampered log and running the alert, as an append does) and starts the
    /// writer thread that group-commits every later append. The file and its lock are released
    /// when the log is dropped. Holding a held log again does nothing.
    ///
    /// Another process (or another [`AuditLog`] value) holding the lock is an
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) error: `audit log PATH is held by another broker process`, with the
    /// hint to give the daemon and the CLI separate `audit.path`s.
    pub fn hold(&self) -> Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.held.get().is_some() {
            return Ok(());
        }
        let mut file = self.target.open()?;
        self.target.lock(&file, Duration::ZERO)?;
        // Dropping `file` on an error releases the lock.
        let chain = self.target.chain_at_end(&mut file, SystemTime::now())?;
        let held = held::Held::start(self.target.clone(), file, chain, self.shared.clone())?;
        let _ = self.held.set(held);
        Ok(())
    }

    /// Whether [`AuditLog::hold`] succeeded: appends go through the writer thread.
    pub fn is_held(&self) -> bool {
        self.held.get().is_some()
    }

    /// How many flushes (one write, one fsync, one checkpoint rewrite each) this log has
    /// completed. Held, concurrent appends share flushes, so this grows slower than the
    /// record count; per append it grows by one each.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    /// Records waiting for the held log's writer to take them into a flush.
    pub fn queued(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Appends `event` (timestamped `now`) and returns its `seq`, once it is written and
    /// fsynced (when [`AuditOptions::fsync`] is set). An error means nothing reliable was
    /// recorded: the caller must refuse the request.
    ///
    /// Held, this blocks the calling thread until the flush covering the record; from async
    /// code use [`AuditLog::append_async`].
    pub fn append(&self, event: &Event, now: SystemTime) -> Result<u64> {
        let pending = Pending::new(event, now)?;
        match self.held.get() {
            Some(held) => held.append(pending, &self.shared),
            None => self.append_direct(&pending, now),
        }
    }

    /// [`AuditLog::append`] for async callers: held, it awaits the flush covering the record
    /// without blocking the runtime's thread. Not held, it appends in place as
    /// [`AuditLog::append`] does (blocking, as the CLI always has).
    pub async fn append_async(&self, event: &Event, now: SystemTime) -> Result<u64> {
        self.submit(event, now)?.wait().await
    }

    /// Queues `event` without waiting for its flush: [`Receipt::wait`] does. Held, this never
    /// blocks; not held, the record is written (and fsynced) before this returns. Lets a
    /// request queue an early record (its decision) and wait once, for the flush that covers
    /// its last record: flushes complete in order, so by then the early one is answered too.
    /// An error here or from [`Receipt::wait`] means the record may not be written: refuse.
    pub fn submit(&self, event: &Event, now: SystemTime) -> Result<Receipt> {
        let pending = Pending::new(event, now)?;
        Ok(Receipt(match self.held.get() {
            Some(held) => ReceiptState::Queued {
                reply: held.submit(pending, &self.shared)?,
                stopped: held.stopped_error(),
            },
            None => ReceiptState::Done(Ok(self.append_direct(&pending, now)?)),
        }))
    }

    /// One append with the log opened and locked for it alone.
    fn append_direct(&self, pending: &Pending, now: SystemTime) -> Result<u64> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = self.target.open()?;
        self.target.lock(&file, self.lock_wait)?;
        let result = self
            .target
            .chain_at_end(&mut file, now)
            .and_then(|mut chain| self.target.flush(&mut file, &mut chain, &[pending]));
        let _ = rustix::fs::flock(&file, rustix::fs::FlockOperation::Unlock);
        if result.is_ok() {
            self.shared.flushes.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// Test hooks (feature `testkit`): make a held log's flush fail, or hold its writer back so
/// several appends queue into one flush.
#[cfg(feature = "testkit")]
impl AuditLog {
    /// The next flush fails before it writes anything, as a write error would.
    pub fn fail_next_flush(&self) {
        self.shared.fail_next.store(true, Ordering::SeqCst);
    }

    /// Holds the writer back until the guard is dropped: appends queue ([`AuditLog::queued`])
    /// and are then written in one flush.
    pub fn pause_flushes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared.gate.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A record queued by [`AuditLog::submit`]; [`Receipt::wait`] gives its `seq` once the flush
/// that covers it is done (or that flush's error). Dropping it leaves the record queued.
#[derive(Debug)]
#[must_use = "wait for the record's flush before acting on the request"]
pub struct Receipt(ReceiptState);

#[derive(Debug)]
enum ReceiptState {
    Done(Result<u64>),
    Queued {
        reply: tokio::sync::oneshot::Receiver<Result<u64>>,
        stopped: crate::Error,
    },
}

impl Receipt {
    /// A receipt that is already answered (no log: nothing to wait for).
    pub fn ready(seq: Result<u64>) -> Receipt {
        Receipt(ReceiptState::Done(seq))
    }

    /// Waits (without blocking the thread) for the flush that covers the record.
    pub async fn wait(self) -> Result<u64> {
        match self.0 {
            ReceiptState::Done(result) => result,
            ReceiptState::Queued { reply, stopped } => reply.await.map_err(|_| stopped)?,
        }
    }
}
