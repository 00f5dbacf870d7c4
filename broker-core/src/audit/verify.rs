//! `broker audit verify`: recompute the chain and compare its end with the checkpoint.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::file::{flock_within, held_elsewhere, open_regular};
use super::{Checkpoint, MAX_CHECKPOINT, MAX_FLUSH, MAX_RECORD, checkpoint_path, digest};
use crate::localfile;
use crate::{Error, ErrorKind, Result};

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
    /// It names an earlier record at most one flush ([`MAX_FLUSH`](super::MAX_FLUSH) records)
    /// back (a crash between a flush and its checkpoint update).
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
/// is not seen half done; the checkpoint is read through [`localfile`] (at most 64 KiB). A log
/// whose lock stays taken for [`DEFAULT_LOCK_WAIT`](super::DEFAULT_LOCK_WAIT) (a daemon holds
/// it) is an [`ErrorKind::Io`] error: `audit log PATH is held by another broker process`.
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
    if !flock_within(&file, false, super::DEFAULT_LOCK_WAIT).map_err(|e| read_error(&e))? {
        return Err(Error::new(ErrorKind::Io, held_elsewhere(path))
            .with_hint("a running daemon holds its log; stop it to verify the log, or verify a log no daemon holds"));
    }
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
            // an earlier one at most one flush back (a flush interrupted between its two
            // writes; one record back for a checkpoint without a length), by digest and length.
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
            } else if last - cp.seq == 1 || (cp.len.is_some() && last - cp.seq <= MAX_FLUSH as u64)
            {
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
