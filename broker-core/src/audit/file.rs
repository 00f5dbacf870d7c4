//! The log file itself: opening and locking it, reading its tail and checking it against the
//! checkpoint, and writing one flush (records, fsync, checkpoint). Both ways of appending use
//! it: one open + flock per append ([`AuditLog::append`](super::AuditLog::append) without
//! [`hold`](super::AuditLog::hold)) and the held log's writer thread ([`super::held`]).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{
    Checkpoint, Event, EventKind, FORMAT_VERSION, Header, MAX_CHECKPOINT, MAX_FLUSH, MAX_RECORD,
    Severity, checkpoint_path, digest, rfc3339,
};
use crate::localfile;
use crate::retry::AlertCommand;
use crate::{Error, ErrorKind, Result};

/// Opens `path` for reading the way [`crate::localfile`] does (`O_NONBLOCK`, so a FIFO does not
/// wait for a writer) and refuses anything that is not a regular file.
pub(super) fn open_regular(
    path: &std::path::Path,
) -> std::result::Result<File, localfile::ReadError> {
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

/// Takes an exclusive (or shared) `flock` on `file`, waiting at most `wait` for another
/// holder. `Ok(false)`: the lock is still taken when `wait` has passed.
///
/// Polling a non-blocking lock would starve against another process that appends in a loop,
/// so the wait is a blocking `flock` on a duplicate of the descriptor, in a thread of its
/// own, given up after `wait`. A lock it takes after that is released with the open file (its
/// duplicate closes when the thread ends, `file` when the caller drops it); a thread still
/// waiting on a log held for good stays blocked until the process exits.
pub(super) fn flock_within(file: &File, exclusive: bool, wait: Duration) -> std::io::Result<bool> {
    use rustix::fs::FlockOperation;
    let (now, blocking) = if exclusive {
        (
            FlockOperation::NonBlockingLockExclusive,
            FlockOperation::LockExclusive,
        )
    } else {
        (
            FlockOperation::NonBlockingLockShared,
            FlockOperation::LockShared,
        )
    };
    match rustix::fs::flock(file, now) {
        Ok(()) => return Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {}
        Err(e) => return Err(e.into()),
    }
    if wait.is_zero() {
        return Ok(false);
    }
    let fd = file.try_clone()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("audit-lock-wait".into())
        .spawn(move || {
            let locked = loop {
                match rustix::fs::flock(&fd, blocking) {
                    Err(e) if e == rustix::io::Errno::INTR => continue,
                    other => break other,
                }
            };
            let _ = tx.send(locked);
        })?;
    match rx.recv_timeout(wait) {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Ok(false),
    }
}

/// The message of a log another process holds (a daemon that called `hold`).
pub(super) fn held_elsewhere(path: &std::path::Path) -> String {
    format!(
        "audit log {} is held by another broker process",
        path.display()
    )
}

/// The log's last line, as read from the file.
#[derive(Debug, Default)]
struct Tail {
    /// Where the last line starts.
    start: u64,
    seq: u64,
    digest: String,
    /// The last line's `prev` (empty for the header).
    prev: String,
}

/// Where the chain ends: what the next record continues from.
#[derive(Debug, Clone, Default)]
pub(super) struct Chain {
    /// The last record's seq (0: the header, or nothing yet when `len` is 0).
    pub(super) seq: u64,
    /// The last line's digest.
    pub(super) digest: String,
    /// The log's length in bytes.
    pub(super) len: u64,
}

/// One record waiting to be written: its event as JSON and its timestamp.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) body: Vec<u8>,
    pub(super) timestamp: String,
}

impl Pending {
    /// Encodes `event` (the appender's share of the work, done before queueing).
    pub(super) fn new(event: &Event, now: SystemTime) -> Result<Pending> {
        let body = serde_json::to_vec(event)
            .map_err(|_| Error::internal("cannot encode an audit record"))?;
        if body.first() != Some(&b'{') {
            return Err(Error::internal("cannot encode an audit record"));
        }
        Ok(Pending {
            body,
            timestamp: rfc3339(now),
        })
    }
}

/// The line of record `seq`: `seq`, `prev` and `timestamp`, then the event's fields (the
/// object `body`, as serde writes it).
fn record_line(seq: u64, prev: &str, pending: &Pending) -> Vec<u8> {
    let mut line = Vec::with_capacity(pending.body.len() + 160);
    // Hex and RFC 3339 text need no JSON escaping.
    let _ = write!(
        line,
        "{{\"seq\":{seq},\"prev\":\"{prev}\",\"timestamp\":\"{}\"",
        pending.timestamp
    );
    let rest = &pending.body[1..];
    if rest != b"}" {
        line.push(b',');
    }
    line.extend_from_slice(rest);
    line
}

/// Where the log is and how to refuse: what the per-append path and the writer thread share.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) path: PathBuf,
    pub(super) fsync: bool,
    pub(super) alert: Option<AlertCommand>,
}

impl Target {
    pub(super) fn fail(&self, what: &str, e: &std::io::Error) -> Error {
        Error::new(
            ErrorKind::Io,
            format!("cannot {what} audit log {}: {e}", self.path.display()),
        )
        .with_hint("the request was refused because it could not be recorded; fix the log's path or permissions")
    }

    /// Another process holds the log (a daemon's [`hold`](super::AuditLog::hold)).
    pub(super) fn held_elsewhere(&self) -> Error {
        Error::new(ErrorKind::Io, held_elsewhere(&self.path))
            .with_hint("give the daemon and the CLI separate `audit.path`s")
    }

    /// Opens (creating it 0600, and its directory) the log for appending; refuses anything
    /// but a regular file, and never follows a symlink or waits on a FIFO.
    pub(super) fn open(&self) -> Result<File> {
        if let Some(parent) = self.path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| self.fail("create the directory of", &e))?;
        }
        let file = OpenOptions::new()
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
        Ok(file)
    }

    /// Takes the exclusive `flock` on `file`, waiting at most `wait` for another holder.
    pub(super) fn lock(&self, file: &File, wait: Duration) -> Result<()> {
        match flock_within(file, true, wait) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.held_elsewhere()),
            Err(e) => Err(self.fail("lock", &e)),
        }
    }

    /// Reads the log's end and checks it against the checkpoint (running the alert and
    /// refusing when they disagree): where the next record continues the chain.
    pub(super) fn chain_at_end(&self, file: &mut File, now: SystemTime) -> Result<Chain> {
        let len = file.metadata().map_err(|e| self.fail("read", &e))?.len();
        // A cut or garbled last line is tampering like a mismatched checkpoint: refused the
        // same way, with the alert.
        let tail = self
            .read_tail(file, len)?
            .map_err(|problem| self.tampered(problem, now))?;
        self.check_tail(file, &tail, len, now)?;
        Ok(Chain {
            seq: tail.seq,
            digest: tail.digest,
            len,
        })
    }

    /// Writes `batch` after `chain` (the header first when the log is empty), fsyncs once
    /// (unless `audit.fsync: false`) and rewrites the checkpoint once. On success `chain` is
    /// the new end and the first record's seq is returned; on an error `chain` is unchanged
    /// and the file's end is unknown (read it again with [`Target::chain_at_end`]).
    pub(super) fn flush(
        &self,
        file: &mut File,
        chain: &mut Chain,
        batch: &[&Pending],
    ) -> Result<u64> {
        let Some(first) = batch.first() else {
            return Ok(chain.seq + 1);
        };
        let mut next = chain.clone();
        let mut buf = Vec::with_capacity(batch.len() * 512);
        if next.len == 0 {
            let header = Header {
                seq: 0,
                event: "header",
                version: FORMAT_VERSION,
                genesis: format!(
                    "{:032x}{:032x}",
                    rand::random::<u128>(),
                    rand::random::<u128>()
                ),
                timestamp: first.timestamp.clone(),
            };
            let line = serde_json::to_vec(&header)
                .map_err(|_| Error::internal("cannot encode the audit header"))?;
            next.digest = digest(&line);
            next.seq = 0;
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        let first_seq = next.seq + 1;
        for pending in batch {
            next.seq += 1;
            let line = record_line(next.seq, &next.digest, pending);
            next.digest = digest(&line);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        file.write_all(&buf).map_err(|e| self.fail("write", &e))?;
        if self.fsync {
            file.sync_data().map_err(|e| self.fail("sync", &e))?;
        }
        next.len += buf.len() as u64;
        self.write_checkpoint(&Checkpoint {
            seq: next.seq,
            digest: next.digest.clone(),
            len: Some(next.len),
        })?;
        *chain = next;
        Ok(first_seq)
    }

    /// Compares the log's last line (`tail`, the log being `len` bytes) with the checkpoint;
    /// on a mismatch runs the alert command and returns the refusal.
    fn check_tail(&self, file: &mut File, tail: &Tail, len: u64, now: SystemTime) -> Result<()> {
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
            // A flush of several records interrupted the same way: the records past the
            // checkpoint must chain to the one it names.
            Some(Some(cp))
                if cp.seq < tail.seq
                    && tail.seq - cp.seq <= MAX_FLUSH as u64
                    && cp.len.is_some_and(|l| l < len) =>
            {
                match self.chains_from(file, &cp, len)? {
                    None => return Ok(()),
                    Some(problem) => problem,
                }
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

    /// Whether the records between the checkpoint's end (`cp.len`) and `len` continue the
    /// chain from the record the checkpoint names. `Some(problem)` when they do not.
    fn chains_from(&self, file: &mut File, cp: &Checkpoint, len: u64) -> Result<Option<String>> {
        let cp_len = cp.len.unwrap_or_default();
        let named = match self.read_tail(file, cp_len)? {
            Ok(t) if t.seq == cp.seq && t.digest == cp.digest => t,
            _ => {
                return Ok(Some(format!(
                    "seq {} does not match the checkpoint's digest: it was edited",
                    cp.seq
                )));
            }
        };
        file.seek(SeekFrom::Start(cp_len))
            .map_err(|e| self.fail("read", &e))?;
        let mut reader = std::io::BufReader::new(Read::take(&mut *file, len - cp_len));
        let mut prev = named.digest;
        let mut line = Vec::new();
        for expected in cp.seq + 1.. {
            line.clear();
            let n = Read::take(&mut reader, MAX_RECORD + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| self.fail("read", &e))?;
            if n == 0 {
                return Ok(None);
            }
            if line.pop() != Some(b'\n') || expected - cp.seq > MAX_FLUSH as u64 {
                break;
            }
            let value = serde_json::from_slice::<serde_json::Value>(&line).ok();
            let seq = value.as_ref().and_then(|v| v.get("seq")?.as_u64());
            let chained = value.as_ref().and_then(|v| v.get("prev")?.as_str()) == Some(&prev);
            if seq != Some(expected) || !chained {
                break;
            }
            prev = digest(&line);
        }
        Ok(Some(format!(
            "the records after its checkpoint (seq {}) do not continue the chain: they were edited",
            cp.seq
        )))
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
        // Appends are synchronous and may run inside the caller's runtime: run the (async)
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
