//! The hash-chained audit log: tamper cases found at the right seq, tail truncation caught by
//! the checkpoint, an unwritable log refuses the request, two processes share one chain, and no
//! record ever holds a value.
#![allow(clippy::unwrap_used, missing_docs)]

mod runtime_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker_core::audit::{
    self, AuditLog, AuditOptions, CheckpointStatus, Event, EventKind, Severity,
};
use broker_core::lease::{ManualClock, RefreshPolicy};
use broker_core::retry::AlertCommand;
use broker_core::{Error, ErrorKind, RequestContext};
use runtime_support::*;

fn event(n: u64) -> Event {
    let mut e = Event::new(EventKind::Issuance, Severity::Info);
    e.credential = Some(format!("cred-{n}"));
    e.outcome = Some("issued".into());
    e
}

fn log_with(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::new(&path, AuditOptions::default());
    for i in 1..=n {
        assert_eq!(log.append(&event(i), t0()).unwrap(), i);
    }
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn bad_seq(path: &Path) -> u64 {
    let v = audit::verify(path).unwrap();
    v.problem
        .unwrap_or_else(|| panic!("tampering not detected"))
        .seq
}

#[test]
fn an_untouched_log_verifies_and_is_private() {
    let (_dir, path) = log_with(5);
    let v = audit::verify(&path).unwrap();
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(v.records, 5);
    assert_eq!(v.checkpoint, CheckpointStatus::Matches);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let l = lines(&path);
    let header: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
    assert_eq!(header["seq"], 0);
    assert_eq!(header["genesis"].as_str().unwrap().len(), 64);
    let first: serde_json::Value = serde_json::from_str(&l[1]).unwrap();
    assert_eq!(first["prev"], audit::digest(l[0].as_bytes()));
    assert_eq!(first["seq"], 1);
}

#[test]
fn genesis_differs_per_log() {
    let (_a, pa) = log_with(1);
    let (_b, pb) = log_with(1);
    assert_ne!(lines(&pa)[0], lines(&pb)[0]);
}

#[test]
fn an_edited_record_is_found_at_its_seq() {
    let (_dir, path) = log_with(6);
    let mut l = lines(&path);
    l[3] = l[3].replace("cred-3", "cred-X");
    write_lines(&path, &l);
    assert_eq!(bad_seq(&path), 3);
}

#[test]
fn a_dropped_record_is_found_at_its_seq() {
    let (_dir, path) = log_with(6);
    let mut l = lines(&path);
    l.remove(4);
    write_lines(&path, &l);
    let v = audit::verify(&path).unwrap();
    let p = v.problem.unwrap();
    assert_eq!(p.seq, 4);
    assert_eq!(
        p.reason,
        "expected seq 4, found 5: a record was dropped or moved"
    );
}

#[test]
fn reordered_records_are_found_at_the_first_moved_seq() {
    let (_dir, path) = log_with(6);
    let mut l = lines(&path);
    l.swap(2, 3);
    write_lines(&path, &l);
    assert_eq!(bad_seq(&path), 2);
}

#[test]
fn an_inserted_record_is_found() {
    let (_dir, path) = log_with(6);
    let mut l = lines(&path);
    // A forged record that chains correctly to seq 2 and claims seq 3.
    let forged = format!(
        r#"{{"seq":3,"prev":"{}","timestamp":"2027-01-15T08:00:00Z","event":"issuance","severity":"info","credential":"forged"}}"#,
        audit::digest(l[2].as_bytes())
    );
    l.insert(3, forged);
    write_lines(&path, &l);
    let p = audit::verify(&path).unwrap().problem.unwrap();
    assert_eq!(p.seq, 4);
    assert_eq!(
        p.reason,
        "expected seq 4, found 3: a record was inserted or moved"
    );
}

#[test]
fn an_edited_header_is_found_at_seq_0() {
    let (_dir, path) = log_with(3);
    let mut l = lines(&path);
    l[0] = l[0].replace("\"version\":1", "\"version\":2");
    write_lines(&path, &l);
    assert_eq!(bad_seq(&path), 0);
}

#[test]
fn tail_truncation_is_caught_by_the_checkpoint() {
    let (_dir, path) = log_with(6);
    let mut l = lines(&path);
    l.truncate(5); // header + seq 1..=4
    write_lines(&path, &l);
    let v = audit::verify(&path).unwrap();
    assert_eq!(v.checkpoint, CheckpointStatus::Mismatch);
    let p = v.problem.unwrap();
    assert_eq!(p.seq, 5);
    assert_eq!(
        p.reason,
        "the log ends at seq 4 but the checkpoint records seq 6: records were cut from the end"
    );
}

#[test]
fn an_edited_last_record_is_caught_by_the_checkpoint() {
    let (_dir, path) = log_with(4);
    let mut l = lines(&path);
    l[4] = l[4].replace("cred-4", "cred-Y");
    write_lines(&path, &l);
    assert_eq!(bad_seq(&path), 4);
}

/// A log whose appends run `alert.command`, which writes the alert event to the returned file.
fn alerting(dir: &Path, path: &Path) -> (AuditLog, std::path::PathBuf) {
    let alerted = dir.join("alert.json");
    let log = AuditLog::new(path, AuditOptions::default()).with_alert(Some(AlertCommand::new(
        format!("cat > '{}'", alerted.display()),
    )));
    (log, alerted)
}

/// The alert `alert.command` received, checked to be the tampering alert for `err`.
fn assert_alerted(alerted: &Path, err: &Error) {
    let alert: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(alerted).expect("alert.command ran"))
            .unwrap();
    assert_eq!(alert["severity"], "alert");
    assert_eq!(alert["outcome"], "audit_log_tampered");
    assert_eq!(alert["reason"], err.message());
}

/// Runs `f` on a thread of its own; fails (instead of hanging) when it takes over 10 s.
fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("blocked for 10 s"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the thread panicked"),
    }
}

/// F6: a cut last line used to refuse the append as an integrity error (exit 69) without the
/// alert; it is tampering like a mismatched checkpoint: exit 74 and `alert.command`.
#[test]
fn a_partial_last_line_is_reported_and_blocks_appends() {
    let (dir, path) = log_with(2);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"seq\":3,");
    std::fs::write(&path, &text).unwrap();
    assert!(audit::verify(&path).unwrap().problem.is_some());
    let (log, alerted) = alerting(dir.path(), &path);
    let err = log.append(&event(3), t0()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(
        err.message(),
        format!(
            "audit log {} ends in a partial record: it was cut or a write was interrupted",
            path.display()
        )
    );
    assert_alerted(&alerted, &err);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "nothing appended"
    );
}

/// F6: the same for the tail of `truncate -s -30`.
#[test]
fn a_truncated_last_line_refuses_the_append_with_the_alert() {
    let (dir, path) = log_with(3);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 30)
        .unwrap();
    let (log, alerted) = alerting(dir.path(), &path);
    let err = log.append(&event(4), t0()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(
        err.message()
            .ends_with("ends in a partial record: it was cut or a write was interrupted"),
        "{err}"
    );
    assert_alerted(&alerted, &err);
}

/// F6: a garbage last line is refused the same way.
#[test]
fn a_garbage_last_line_refuses_the_append_with_the_alert() {
    let (dir, path) = log_with(2);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("garbage\n");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(bad_seq(&path), 3);
    let (log, alerted) = alerting(dir.path(), &path);
    let err = log.append(&event(3), t0()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(
        err.message(),
        format!(
            "the last record of audit log {} is unreadable: it was edited or replaced",
            path.display()
        )
    );
    assert_alerted(&alerted, &err);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "nothing appended"
    );
}

/// F5: with the checkpoint one record behind, `verify` accepted any digest: edit the
/// checkpointed last record, append one that chains to the edit, and the log verified.
#[test]
fn an_edited_checkpointed_record_is_caught_when_the_checkpoint_is_behind() {
    let (_dir, path) = log_with(2);
    let mut l = lines(&path);
    l[2] = l[2].replace("cred-2", "cred-X");
    let mut forged: serde_json::Value = serde_json::from_str(&l[2]).unwrap();
    forged["seq"] = 3.into();
    forged["prev"] = audit::digest(l[2].as_bytes()).into();
    l.push(forged.to_string());
    write_lines(&path, &l);
    let v = audit::verify(&path).unwrap();
    assert_eq!(v.checkpoint, CheckpointStatus::Mismatch);
    let p = v.problem.expect("the edit is found");
    assert_eq!(p.seq, 2);
    assert_eq!(
        p.reason,
        "seq 2 does not match the checkpoint's digest: it was edited"
    );
}

/// F5: "behind" is one flush at most (`MAX_FLUSH` records, a held log's group commit
/// interrupted between the records and the checkpoint), as for appends.
#[test]
fn a_checkpoint_more_than_one_flush_behind_fails_verify() {
    let (_dir, path) = log_with(2);
    let cp = audit::checkpoint_path(&path);
    let old = std::fs::read(&cp).unwrap();
    let log = AuditLog::new(&path, AuditOptions { fsync: false });
    log.append(&event(3), t0()).unwrap();
    log.append(&event(4), t0()).unwrap();
    std::fs::write(&cp, &old).unwrap();
    let v = audit::verify(&path).unwrap();
    assert_eq!(v.checkpoint, CheckpointStatus::Behind);
    assert!(v.is_ok(), "{v:?}");
    let last = 2 + audit::MAX_FLUSH as u64 + 1;
    for i in 5..=last {
        log.append(&event(i), t0()).unwrap();
    }
    std::fs::write(&cp, old).unwrap();
    let v = audit::verify(&path).unwrap();
    assert_eq!(v.checkpoint, CheckpointStatus::Mismatch);
    let p = v.problem.expect("the stale checkpoint is found");
    assert_eq!(p.seq, 3);
    assert_eq!(
        p.reason,
        format!(
            "the checkpoint records seq 2 but the log goes on to seq {last}: records were added past it"
        )
    );
}

/// F2: a FIFO in place of the checkpoint used to block every append and `verify` forever.
#[test]
fn a_fifo_checkpoint_fails_appends_and_verify_at_once() {
    let (dir, path) = log_with(2);
    let cp = audit::checkpoint_path(&path);
    std::fs::remove_file(&cp).unwrap();
    rustix::fs::mkfifoat(rustix::fs::CWD, &cp, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
    let (log, alerted) = alerting(dir.path(), &path);
    let err = within_deadline(move || log.append(&event(3), t0()).unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(
        err.message(),
        format!(
            "audit log {} does not match its checkpoint: its checkpoint {} is a FIFO, not a regular file",
            path.display(),
            cp.display()
        )
    );
    assert_alerted(&alerted, &err);
    let p = path.clone();
    let v = within_deadline(move || audit::verify(&p).unwrap());
    assert_eq!(v.checkpoint, CheckpointStatus::Mismatch);
    assert_eq!(
        v.problem.unwrap().reason,
        format!("checkpoint {} is a FIFO, not a regular file", cp.display())
    );
}

/// F2: `verify` of a FIFO (or device) fails at once instead of blocking or reading forever.
#[test]
fn verify_refuses_a_log_that_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.jsonl");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let p = fifo.clone();
    let err = within_deadline(move || audit::verify(&p).unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Integrity);
    assert_eq!(
        err.message(),
        format!(
            "cannot read audit log {}: a FIFO, not a regular file",
            fifo.display()
        )
    );
    let err = within_deadline(|| audit::verify(Path::new("/dev/zero")).unwrap_err());
    assert_eq!(
        err.message(),
        "cannot read audit log /dev/zero: a character device, not a regular file"
    );
    // Appends refuse it too, instead of writing into a pipe.
    let log = AuditLog::new(&fifo, AuditOptions::default());
    let err = within_deadline(move || log.append(&event(1), t0()).unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Io);
}

/// Issue 10: an append used to continue from whatever the log's last line was, so one normal
/// request after records were cut made the chain verify again.
#[test]
fn a_cut_last_record_refuses_the_next_append_and_stays_detected() {
    let (dir, path) = log_with(4);
    let mut l = lines(&path);
    l.truncate(4); // header + seq 1..=3
    write_lines(&path, &l);
    let alerted = dir.path().join("alert.json");
    let log = AuditLog::new(&path, AuditOptions::default()).with_alert(Some(AlertCommand::new(
        format!("cat > '{}'", alerted.display()),
    )));
    let err = log.append(&event(5), t0()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(
        err.message(),
        format!(
            "audit log {} does not match its checkpoint: it ends at seq 3 but its checkpoint records seq 4: records were cut from the end",
            path.display()
        )
    );
    assert_eq!(lines(&path), l, "nothing was appended");
    assert_eq!(bad_seq(&path), 4);
    let alert: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&alerted).unwrap()).unwrap();
    assert_eq!(alert["severity"], "alert");
    assert_eq!(alert["outcome"], "audit_log_tampered");
    assert_eq!(alert["reason"], err.message());
}

#[test]
fn an_edited_last_record_refuses_the_next_append() {
    let (_dir, path) = log_with(4);
    let mut l = lines(&path);
    l[4] = l[4].replace("cred-4", "cred-Y");
    write_lines(&path, &l);
    let err = AuditLog::new(&path, AuditOptions::default())
        .append(&event(5), t0())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(
        err.message(),
        format!(
            "audit log {} does not match its checkpoint: its last record (seq 4) does not match its checkpoint (seq 4): it was edited",
            path.display()
        )
    );
    assert_eq!(lines(&path), l);
    assert_eq!(bad_seq(&path), 4);
}

#[test]
fn a_deleted_checkpoint_fails_verify_and_refuses_appends() {
    let (_dir, path) = log_with(3);
    let cp = audit::checkpoint_path(&path);
    std::fs::remove_file(&cp).unwrap();
    let v = audit::verify(&path).unwrap();
    assert_eq!(v.checkpoint, CheckpointStatus::Missing);
    let p = v.problem.unwrap();
    assert_eq!(p.seq, 3);
    assert_eq!(
        p.reason,
        format!(
            "checkpoint {} is missing: records may have been cut from the end",
            cp.display()
        )
    );
    // Cutting records and then deleting the checkpoint does not help either.
    let mut l = lines(&path);
    l.truncate(3);
    write_lines(&path, &l);
    assert!(audit::verify(&path).unwrap().problem.is_some());
    let err = AuditLog::new(&path, AuditOptions::default())
        .append(&event(4), t0())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(
        err.message(),
        format!(
            "audit log {} does not match its checkpoint: it is not empty but has no checkpoint ({})",
            path.display(),
            cp.display()
        )
    );
    assert!(!cp.exists(), "the refused append wrote no checkpoint");
}

#[test]
fn an_append_interrupted_before_its_checkpoint_does_not_block_the_next() {
    let (_dir, path) = log_with(3);
    let cp = audit::checkpoint_path(&path);
    let behind = std::fs::read(&cp).unwrap();
    AuditLog::new(&path, AuditOptions::default())
        .append(&event(4), t0())
        .unwrap();
    std::fs::write(&cp, behind).unwrap(); // as if the process died before the rename
    assert_eq!(
        audit::verify(&path).unwrap().checkpoint,
        CheckpointStatus::Behind
    );
    let log = AuditLog::new(&path, AuditOptions::default());
    assert_eq!(log.append(&event(5), t0()).unwrap(), 5);
    let v = audit::verify(&path).unwrap();
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(v.checkpoint, CheckpointStatus::Matches);
}

#[test]
fn appends_continue_the_chain_across_writers_in_one_process() {
    let (_dir, path) = log_with(3);
    let other = AuditLog::new(&path, AuditOptions { fsync: false });
    assert_eq!(other.append(&event(4), t0()).unwrap(), 4);
    let first = AuditLog::new(&path, AuditOptions::default());
    assert_eq!(first.append(&event(5), t0()).unwrap(), 5);
    assert!(audit::verify(&path).unwrap().is_ok());
}

#[tokio::test]
async fn an_unwritable_log_refuses_the_request_before_any_backend_call() {
    let s = script("audit-unwritable", Script::default());
    let f = Fixture::new(
        "credentials:\n  api: { ref: \"scripted:audit-unwritable\" }\naudit: { path: blocker/audit.jsonl }\n",
    );
    f.write("blocker", "a file where the log's directory should be");
    let broker = f.broker().unwrap();
    let err = broker
        .resolve("api", &RequestContext::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().starts_with("cannot "), "{err}");
    assert!(err.message().contains("audit log"), "{err}");
    assert_eq!(s.calls(), 0);
    let err = broker
        .deliver(&[], &RequestContext::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(s.calls(), 0);
}

/// Appends 10,000 records when run as a child by the test below; does nothing otherwise.
#[test]
fn writer_child() {
    let Some(path) = std::env::var_os("BROKER_AUDIT_CHILD_LOG") else {
        return;
    };
    let log = AuditLog::new(&path, AuditOptions { fsync: false });
    for i in 0..10_000 {
        log.append(&event(i), t0()).unwrap();
    }
}

#[test]
fn two_processes_appending_ten_thousand_records_each_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        std::process::Command::new(&exe)
            .args(["--exact", "writer_child", "--test-threads=1"])
            .env("BROKER_AUDIT_CHILD_LOG", &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let v = audit::verify(&path).unwrap();
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(v.records, 20_000);
    assert_eq!(v.checkpoint, CheckpointStatus::Matches);
}

#[tokio::test]
async fn no_record_of_any_kind_holds_a_value() {
    let clock = Arc::new(ManualClock::new(t0()));
    let s = script(
        "audit-kinds",
        Script {
            ttl: Some(Duration::from_secs(600)),
            clock: Some(clock.clone()),
            ..Script::default()
        },
    );
    let plain = script("audit-kinds-static", Script::default());
    let alert_dir = tempfile::tempdir().unwrap();
    let alert_file = alert_dir.path().join("alerts.jsonl");
    let f = Fixture::new(&format!(
        "credentials:\n  minted: {{ mint: \"scripted:audit-kinds\", ttl: 10m, kind: file }}\n  plain: {{ ref: \"scripted:audit-kinds-static\" }}\naudit: {{ path: audit.jsonl }}\nalert: {{ command: \"cat >> '{}'\" }}\n",
        alert_file.display()
    ));
    let broker = f
        .broker()
        .unwrap()
        .with_clock(clock.clone())
        .with_refresh_policy(RefreshPolicy {
            jitter: 0.0,
            ..RefreshPolicy::default()
        })
        .with_retry(fast_retry(), Arc::new(CountingSleeper::default()));
    let ctx = RequestContext {
        agent_id: Some("agent-7".into()),
        task_id: Some("task-9".into()),
        ..RequestContext::new()
    };
    let mut delivery = broker.deliver(&[], &ctx).await.unwrap(); // decisions + issuances
    broker.resolve("plain", &ctx).await.unwrap(); // cached
    clock.advance(Duration::from_secs(500));
    let refreshed = broker.refresh_files(&delivery, &ctx, |_| {}).await.unwrap(); // refresh
    assert_eq!(refreshed.secrets.len(), 1);
    let file = delivery.scratch().unwrap().path().join("minted");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        refreshed.secrets[0].1.expose()
    );
    clock.advance(Duration::from_secs(500)); // inside the new margin, still valid
    s.fail_next([Error::permission_denied("role revoked")]);
    broker.resolve("minted", &ctx).await.unwrap(); // stale (refresh failed, still valid)
    clock.advance(Duration::from_secs(600)); // expired
    s.fail_next((0..4).map(|_| Error::transient("503")));
    broker.resolve("minted", &ctx).await.unwrap_err(); // failure, alert
    plain.fail_next([Error::not_found("gone")]);
    broker.cache().clear();
    broker.resolve("plain", &ctx).await.unwrap_err(); // failure, warning
    broker
        .revoke_as("lease-x", Some("scripted"), &ctx)
        .await
        .unwrap(); // revocation
    broker
        .revoke_as("missing-lease", Some("scripted"), &ctx)
        .await
        .unwrap_err();
    broker.rotate("plain", &ctx).await.unwrap_err(); // unsupported: failure
    broker
        .record_notice(&ctx, "redaction_disabled", "broker run --no-redact")
        .unwrap();
    broker.resolve("nope", &ctx).await.unwrap_err(); // denied decision
    delivery.wipe().unwrap();

    let text = std::fs::read_to_string(f.path("audit.jsonl")).unwrap();
    let values: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: std::collections::BTreeSet<String> = values
        .iter()
        .map(|v| {
            format!(
                "{}/{}",
                v["event"].as_str().unwrap(),
                v["outcome"]
                    .as_str()
                    .or(v["decision"].as_str())
                    .unwrap_or("-")
            )
        })
        .collect();
    for expected in [
        "header/-",
        "decision/granted",
        "decision/denied",
        "issuance/issued",
        "issuance/cached",
        "refresh/refreshed",
        "refresh/stale",
        "failure/failed",
        "revocation/revoked",
        "notice/redaction_disabled",
    ] {
        assert!(
            kinds.contains(expected),
            "no {expected} record in {kinds:?}"
        );
    }
    assert!(values.iter().any(|v| v["severity"] == "alert"));
    assert!(
        values
            .iter()
            .all(|v| v["event"] == "header" || v["request_id"].is_string())
    );
    assert!(!text.contains("canary-"), "a value reached the audit log");
    let alerts = std::fs::read_to_string(&alert_file).unwrap();
    assert!(alerts.contains("\"severity\":\"alert\""));
    assert!(!alerts.contains("canary-"));
    for v in &values {
        assert!(!format!("{v:?}").contains("canary-"));
    }
    assert!(audit::verify(&f.path("audit.jsonl")).unwrap().is_ok());
}
