//! The hash-chained audit log.
//!
//! One JSON object per line (`audit.path`, created 0600). The first line is a header with
//! `seq: 0` and a random 256-bit `genesis`; every later record carries `seq` (one more than the
//! line before) and `prev`, the hex SHA-256 of the previous line's bytes (without its newline),
//! so the first record chains to the header and through it to the genesis. Editing, dropping,
//! reordering or inserting a line breaks the chain at that point; [`verify`] names the first
//! bad `seq`.
//!
//! Truncating the tail leaves a valid chain, so each append also rewrites a checkpoint beside
//! the log (`<log>.checkpoint`: last `seq`, its digest and the log's length). [`verify`]
//! compares the log's end with it, and so does every append before it writes: a log whose
//! last record was cut or edited, whose last line is cut short or garbled, or a non-empty log
//! without a checkpoint (or with a FIFO or device in its place), refuses the append
//! (an [`ErrorKind::Io`] error, like an unwritable log) and runs `alert.command` when one is
//! set ([`AuditLog::with_alert`]), so the next request cannot launder the tampering into a
//! chain that verifies. The one state accepted besides an exact match is a checkpoint one
//! record behind whose digest the last record chains to (an append interrupted between the
//! two writes). The checkpoint is not a MAC: someone who can rewrite both files can forge a
//! shorter history; ship the log off the machine when that matters.
//!
//! Appends take an exclusive `flock` on the log, so several processes can share it without
//! forking the chain. The record is fsynced (unless `audit.fsync: false`) before the broker
//! hands out a credential; if it cannot be written the request is refused.
//!
//! Records hold names, references, scopes, ids, times and outcomes — never a value: the
//! [`Event`] type has no field that could hold a [`SecretValue`](crate::SecretValue).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::localfile;
use crate::retry::AlertCommand;
use crate::{Error, ErrorKind, Result};

/// The log format version written in the header.
pub const FORMAT_VERSION: u32 = 1;

/// The largest checkpoint file read (a real one is under 200 bytes).
const MAX_CHECKPOINT: u64 = 64 << 10;
/// The longest line [`verify`] reads as one record (a real one is well under 4 KiB).
const MAX_RECORD: u64 = 1 << 20;

/// Opens `path` for reading the way [`crate::localfile`] does (`O_NONBLOCK`, so a FIFO does not
/// wait for a writer) and refuses anything that is not a regular file.
fn open_regular(path: &Path) -> std::result::Result<File, localfile::ReadError> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    let kind = FileType::from_raw_mode(rustix::fs::fstat(&file)?.st_mode);
    if kind != FileType::RegularFile {
        return Err(localfile::ReadError::NotRegular(file_type_name(kind)));
    }
    Ok(file)
}

fn file_type_name(kind: rustix::fs::FileType) -> &'static str {
    use rustix::fs::FileType;
    match kind {
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        _ => "not a regular file",
    }
}

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
        }
    }
}

/// A record as written: the event plus its place in the chain.
#[derive(Debug, Clone, Serialize)]
struct Record<'a> {
    seq: u64,
    prev: &'a str,
    timestamp: String,
    #[serde(flatten)]
    event: &'a Event,
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
    let d = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in d {
        out.push_str(&format!("{b:02x}"));
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

/// The log's last line, as read before each append.
#[derive(Debug, Default)]
struct Tail {
    /// Where the last line starts.
    start: u64,
    seq: u64,
    digest: String,
    /// The last line's `prev` (empty for the header).
    prev: String,
}

/// An append-only, hash-chained audit log shared safely by threads and processes.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    options: AuditOptions,
    /// Serialises the appends of this process's threads (`flock` covers other processes).
    lock: Mutex<()>,
    alert: Option<AlertCommand>,
}

impl AuditLog {
    /// A log at `path`; nothing is opened until the first append.
    pub fn new(path: impl Into<PathBuf>, options: AuditOptions) -> Self {
        AuditLog {
            path: path.into(),
            options,
            lock: Mutex::new(()),
            alert: None,
        }
    }

    /// Runs `alert` when an append finds the log's tail does not match its checkpoint.
    pub fn with_alert(mut self, alert: Option<AlertCommand>) -> Self {
        self.alert = alert;
        self
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, what: &str, e: &std::io::Error) -> Error {
        Error::new(
            ErrorKind::Io,
            format!("cannot {what} audit log {}: {e}", self.path.display()),
        )
        .with_hint("the request was refused because it could not be recorded; fix the log's path or permissions")
    }

    /// Appends `event` (timestamped `now`) and returns its `seq`. Fsynced before returning
    /// when [`AuditOptions::fsync`] is set. An error means nothing reliable was recorded: the
    /// caller must refuse the request.
    pub fn append(&self, event: &Event, now: SystemTime) -> Result<u64> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(parent) = self.path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| self.fail("create the directory of", &e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(&self.path)
            .map_err(|e| self.fail("open", &e))?;
        let kind = rustix::fs::FileType::from_raw_mode(
            rustix::fs::fstat(&file)
                .map_err(|e| self.fail("read", &std::io::Error::from(e)))?
                .st_mode,
        );
        if kind != rustix::fs::FileType::RegularFile {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot open audit log {}: {}, not a regular file",
                    self.path.display(),
                    file_type_name(kind)
                ),
            )
            .with_hint("the request was refused because it could not be recorded; point `audit.path` at a regular file"));
        }
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.fail("lock", &std::io::Error::from(e)))?;
        let result = self.append_locked(&mut file, event, now);
        let _ = rustix::fs::flock(&file, rustix::fs::FlockOperation::Unlock);
        result
    }

    fn append_locked(&self, file: &mut File, event: &Event, now: SystemTime) -> Result<u64> {
        let len = file.metadata().map_err(|e| self.fail("read", &e))?.len();
        // A cut or garbled last line is tampering like a mismatched checkpoint: refused the
        // same way, with the alert.
        let mut tail = self
            .read_tail(file, len)?
            .map_err(|problem| self.tampered(problem, now))?;
        self.check_tail(&tail, len, now)?;
        let mut buf = Vec::with_capacity(512);
        if len == 0 {
            let header = Header {
                seq: 0,
                event: "header",
                version: FORMAT_VERSION,
                genesis: format!(
                    "{:032x}{:032x}",
                    rand::random::<u128>(),
                    rand::random::<u128>()
                ),
                timestamp: rfc3339(now),
            };
            let line = serde_json::to_vec(&header)
                .map_err(|_| Error::internal("cannot encode the audit header"))?;
            tail.digest = digest(&line);
            tail.seq = 0;
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        let seq = tail.seq + 1;
        let record = Record {
            seq,
            prev: &tail.digest,
            timestamp: rfc3339(now),
            event,
        };
        let line = serde_json::to_vec(&record)
            .map_err(|_| Error::internal("cannot encode an audit record"))?;
        let new_digest = digest(&line);
        buf.extend_from_slice(&line);
        buf.push(b'\n');
        file.write_all(&buf).map_err(|e| self.fail("write", &e))?;
        if self.options.fsync {
            file.sync_data().map_err(|e| self.fail("sync", &e))?;
        }
        let checkpoint = Checkpoint {
            seq,
            digest: new_digest,
            len: Some(len + buf.len() as u64),
        };
        self.write_checkpoint(&checkpoint)?;
        Ok(seq)
    }

    /// Compares the log's last line (`tail`, the log being `len` bytes) with the checkpoint;
    /// on a mismatch runs the alert command and returns the refusal.
    fn check_tail(&self, tail: &Tail, len: u64, now: SystemTime) -> Result<()> {
        let cp_path = checkpoint_path(&self.path);
        let checkpoint = match localfile::read(&cp_path, MAX_CHECKPOINT) {
            Ok(text) => Some(serde_json::from_slice::<Checkpoint>(&text).ok()),
            Err(e) if e.is_not_found() => None,
            Err(localfile::ReadError::Io(e)) => {
                return Err(self.fail("read the checkpoint of", &e));
            }
            // A FIFO, device or oversized file in its place: never blocks, and is tampering.
            Err(e) => {
                return Err(self.tampered(
                    format!(
                        "audit log {} does not match its checkpoint: its checkpoint {} is {e}",
                        self.path.display(),
                        cp_path.display()
                    ),
                    now,
                ));
            }
        };
        let problem = match checkpoint {
            None if len == 0 => return Ok(()),
            None => format!(
                "it is not empty but has no checkpoint ({})",
                cp_path.display()
            ),
            Some(None) => format!("its checkpoint {} is unreadable", cp_path.display()),
            Some(Some(cp)) if len == 0 => format!(
                "it is empty but its checkpoint records seq {}: records were cut",
                cp.seq
            ),
            Some(Some(cp))
                if cp.seq == tail.seq
                    && cp.digest == tail.digest
                    && cp.len.is_none_or(|l| l == len) =>
            {
                return Ok(());
            }
            // An append interrupted between writing the record and the checkpoint.
            Some(Some(cp))
                if cp.seq + 1 == tail.seq
                    && cp.digest == tail.prev
                    && cp.len.is_none_or(|l| l == tail.start) =>
            {
                return Ok(());
            }
            Some(Some(cp)) if cp.seq > tail.seq => format!(
                "it ends at seq {} but its checkpoint records seq {}: records were cut from the end",
                tail.seq, cp.seq
            ),
            Some(Some(cp)) => format!(
                "its last record (seq {}) does not match its checkpoint (seq {}): it was edited",
                tail.seq, cp.seq
            ),
        };
        Err(self.tampered(
            format!(
                "audit log {} does not match its checkpoint: {problem}",
                self.path.display()
            ),
            now,
        ))
    }

    /// The refusal of an append to a tampered log: runs the alert command and returns an
    /// [`ErrorKind::Io`] error (exit 74, as for an unwritable log) with `message`.
    fn tampered(&self, message: String, now: SystemTime) -> Error {
        self.raise_alert(&message, now);
        Error::new(ErrorKind::Io, message).with_hint(
            "the request was refused because it could not be recorded; run `broker audit verify`, keep the log as evidence and start a new one",
        )
    }

    /// Runs the alert command (if any) with a secret-free event describing `message`. The log
    /// itself cannot take the record. A failure to run it is logged.
    fn raise_alert(&self, message: &str, now: SystemTime) {
        tracing::error!("{message}");
        let Some(cmd) = self.alert.clone() else {
            return;
        };
        let mut event = Event::new(EventKind::Failure, Severity::Alert);
        event.outcome = Some("audit_log_tampered".into());
        event.reason = Some(message.to_string());
        let mut json = serde_json::to_value(&event).unwrap_or_default();
        if let Some(map) = json.as_object_mut() {
            map.insert("timestamp".into(), rfc3339(now).into());
        }
        // `append` is synchronous and may run inside the caller's runtime: run the (async)
        // alert command on a thread of its own.
        let outcome = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("cannot start a runtime for alert.command", &e))
                .and_then(|rt| rt.block_on(cmd.run(&json)))
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("alert.command failed: {e}"),
            Err(_) => tracing::warn!("alert.command failed: its thread panicked"),
        }
    }

    /// Finds the last line's seq and digest by reading the end of the file. The inner error is
    /// a tail that is not a whole record (cut or garbled); the outer one an I/O failure.
    fn read_tail(&self, file: &mut File, len: u64) -> Result<std::result::Result<Tail, String>> {
        if len == 0 {
            return Ok(Ok(Tail::default()));
        }
        let mut window: u64 = 4096;
        loop {
            let start = len.saturating_sub(window);
            file.seek(SeekFrom::Start(start))
                .map_err(|e| self.fail("read", &e))?;
            let mut bytes = Vec::with_capacity((len - start) as usize);
            Read::take(&mut *file, len - start)
                .read_to_end(&mut bytes)
                .map_err(|e| self.fail("read", &e))?;
            let body = match bytes.last() {
                Some(b'\n') => &bytes[..bytes.len() - 1],
                _ => {
                    return Ok(Err(format!(
                        "audit log {} ends in a partial record: it was cut or a write was interrupted",
                        self.path.display()
                    )));
                }
            };
            let (line, line_start) = match body.iter().rposition(|b| *b == b'\n') {
                Some(i) => (&body[i + 1..], start + i as u64 + 1),
                None if start == 0 => (body, 0),
                // Not a record: do not read a huge garbage line into memory.
                None if len - start > MAX_RECORD => {
                    return Ok(Err(format!(
                        "the last record of audit log {} is unreadable: it is longer than {} bytes",
                        self.path.display(),
                        MAX_RECORD
                    )));
                }
                None => {
                    window *= 4;
                    continue;
                }
            };
            let value = serde_json::from_slice::<serde_json::Value>(line).ok();
            let prev = value
                .as_ref()
                .and_then(|v| v.get("prev").and_then(serde_json::Value::as_str))
                .unwrap_or("")
                .to_string();
            let Some(seq) = value
                .as_ref()
                .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
            else {
                return Ok(Err(format!(
                    "the last record of audit log {} is unreadable: it was edited or replaced",
                    self.path.display()
                )));
            };
            return Ok(Ok(Tail {
                start: line_start,
                seq,
                digest: digest(line),
                prev,
            }));
        }
    }

    fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()> {
        let path = checkpoint_path(&self.path);
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let body = serde_json::to_vec(checkpoint)
            .map_err(|_| Error::internal("cannot encode the audit checkpoint"))?;
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.write_all(b"\n")?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| self.fail("update the checkpoint of", &e))
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// The log.
    pub path: PathBuf,
    /// Records after the header.
    pub records: u64,
    /// The last good seq.
    pub last_seq: u64,
    /// Whether a checkpoint file exists and agrees with the log.
    pub checkpoint: CheckpointStatus,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

impl Verification {
    /// Whether the chain is intact and the checkpoint does not show a truncation.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// How the checkpoint compares with the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStatus {
    /// It names the log's last record.
    Matches,
    /// It names an earlier record (a crash between the append and the checkpoint update).
    Behind,
    /// There is none (a problem: cut records could not be detected).
    Missing,
    /// It disagrees with the log (see the problem).
    Mismatch,
}

/// The first place the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The first bad seq.
    pub seq: u64,
    /// The line of the file it was found on (1-based).
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

/// Recomputes the chain of the log at `path` and compares its end with the checkpoint.
/// A broken chain, a checkpoint that does not name one of the log's records by its digest (and
/// length), or one that is not a regular file or does not parse, is a [`Verification`] with a
/// [`Problem`]. A log that is missing or not a regular file is an error of its kind
/// ([`ErrorKind::Integrity`] for the latter); an I/O failure reading either file is an
/// [`ErrorKind::Io`] error.
///
/// The log is streamed (one record of at most 1 MiB in memory at a time) from a file opened
/// `O_NONBLOCK` and checked to be a regular file, under a shared `flock` so a concurrent append
/// is not seen half done; the checkpoint is read through [`localfile`] (at most 64 KiB).
pub fn verify(path: &Path) -> Result<Verification> {
    use std::io::BufRead;
    let read_error =
        |e: &std::io::Error| Error::io(format_args!("cannot read audit log {}", path.display()), e);
    let file = open_regular(path).map_err(|e| {
        e.to_error(
            format_args!("cannot read audit log {}", path.display()),
            ErrorKind::Integrity,
        )
    })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared)
        .map_err(|e| read_error(&e.into()))?;
    let cp_path = checkpoint_path(path);
    // Read now (under the lock), judged after the chain: a broken chain is reported first.
    let checkpoint = match localfile::read(&cp_path, MAX_CHECKPOINT) {
        Err(e) if e.is_not_found() => None,
        Err(localfile::ReadError::Io(e)) => {
            return Err(Error::io(
                format_args!("cannot read checkpoint {}", cp_path.display()),
                &e,
            ));
        }
        Err(e) => Some(Err(format!("checkpoint {} is {e}", cp_path.display()))),
        Ok(text) => Some(
            serde_json::from_slice::<Checkpoint>(&text)
                .map_err(|_| format!("checkpoint {} is unreadable", cp_path.display())),
        ),
    };
    let cp_seq = match &checkpoint {
        Some(Ok(cp)) => Some(cp.seq),
        _ => None,
    };
    let mut out = Verification {
        path: path.to_path_buf(),
        records: 0,
        last_seq: 0,
        checkpoint: CheckpointStatus::Missing,
        problem: None,
    };
    let bad = |seq: u64, line: u64, reason: String| Some(Problem { seq, line, reason });
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    let mut offset: u64 = 0;
    let mut partial = false;
    let mut prev_digest = String::new();
    // The digest of record `cp_seq` and the log's length after it.
    let mut at_checkpoint: Option<(String, u64)> = None;
    for expected in 0u64.. {
        let lineno = expected + 1;
        line.clear();
        let n = Read::take(&mut reader, MAX_RECORD + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| read_error(&e))?;
        if n == 0 {
            if expected == 0 {
                out.problem = bad(0, 1, "the log is empty: its header is missing".into());
                return Ok(out);
            }
            break;
        }
        offset += n as u64;
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if n as u64 > MAX_RECORD {
            out.problem = bad(
                expected,
                lineno,
                format!("the line is longer than {MAX_RECORD} bytes: not a record"),
            );
            return Ok(out);
        } else {
            partial = true;
        }
        let value: serde_json::Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(_) => {
                out.problem = bad(expected, lineno, "not a JSON record".into());
                return Ok(out);
            }
        };
        let seq = value.get("seq").and_then(serde_json::Value::as_u64);
        if expected == 0 {
            let header_ok = seq == Some(0)
                && value.get("event").and_then(|v| v.as_str()) == Some("header")
                && value
                    .get("genesis")
                    .and_then(|v| v.as_str())
                    .is_some_and(|g| g.len() == 64);
            if !header_ok {
                out.problem = bad(
                    0,
                    lineno,
                    "the header record (seq 0, genesis) is missing or altered".into(),
                );
                return Ok(out);
            }
        } else {
            match seq {
                Some(s) if s == expected => {}
                Some(s) => {
                    let what = if s > expected {
                        format!("expected seq {expected}, found {s}: a record was dropped or moved")
                    } else {
                        format!(
                            "expected seq {expected}, found {s}: a record was inserted or moved"
                        )
                    };
                    out.problem = bad(expected, lineno, what);
                    return Ok(out);
                }
                None => {
                    out.problem = bad(expected, lineno, "the record has no seq".into());
                    return Ok(out);
                }
            }
            let prev = value.get("prev").and_then(|v| v.as_str()).unwrap_or("");
            if prev != prev_digest {
                out.problem = bad(
                    expected - 1,
                    lineno - 1,
                    format!(
                        "seq {} does not match the digest recorded by seq {expected}: it was edited",
                        expected - 1
                    ),
                );
                return Ok(out);
            }
        }
        prev_digest = digest(&line);
        out.last_seq = expected;
        out.records = expected;
        if cp_seq == Some(expected) {
            at_checkpoint = Some((prev_digest.clone(), offset));
        }
        if partial {
            break;
        }
    }
    if partial {
        out.problem = bad(
            out.last_seq,
            out.last_seq + 1,
            "the last line has no newline: a partial write".into(),
        );
        return Ok(out);
    }
    let last = out.last_seq;
    match checkpoint {
        None => {
            // Without it, records cut from the end leave a chain that verifies.
            out.problem = bad(
                last,
                last + 1,
                format!(
                    "checkpoint {} is missing: records may have been cut from the end",
                    cp_path.display()
                ),
            );
        }
        Some(Err(reason)) => {
            out.checkpoint = CheckpointStatus::Mismatch;
            out.problem = bad(last, last + 1, reason);
        }
        Some(Ok(cp)) if cp.seq > last => {
            out.checkpoint = CheckpointStatus::Mismatch;
            out.problem = bad(
                last + 1,
                last + 2,
                format!(
                    "the log ends at seq {last} but the checkpoint records seq {}: records were cut from the end",
                    cp.seq
                ),
            );
        }
        Some(Ok(cp)) => {
            // The same rule as an append's check: the checkpoint names the last record, or the
            // one before it (an append interrupted between its two writes), by digest and length.
            let (cp_digest, cp_end) = at_checkpoint.unwrap_or_default();
            out.checkpoint = CheckpointStatus::Mismatch;
            if cp.digest != cp_digest {
                out.problem = bad(
                    cp.seq,
                    cp.seq + 1,
                    format!(
                        "seq {} does not match the checkpoint's digest: it was edited",
                        cp.seq
                    ),
                );
            } else if let Some(len) = cp.len.filter(|l| *l != cp_end) {
                out.problem = bad(
                    cp.seq,
                    cp.seq + 1,
                    format!(
                        "the log is {cp_end} bytes long through seq {} but the checkpoint records {len}: it was edited",
                        cp.seq
                    ),
                );
            } else if cp.seq == last {
                out.checkpoint = CheckpointStatus::Matches;
            } else if cp.seq + 1 == last {
                out.checkpoint = CheckpointStatus::Behind;
            } else {
                out.problem = bad(
                    cp.seq + 1,
                    cp.seq + 2,
                    format!(
                        "the checkpoint records seq {} but the log goes on to seq {last}: records were added past it",
                        cp.seq
                    ),
                );
            }
        }
    }
    Ok(out)
}
