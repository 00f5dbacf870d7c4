//! A held audit log (`AuditLog::hold`, as the daemon uses it): concurrent appenders from
//! threads and tokio tasks share flushes and keep one contiguous chain, a failed flush fails
//! every appender in it, a second holder and a per-append writer are refused with the same
//! message, a tampered tail is refused at hold time with the alert, and a flush interrupted
//! before its checkpoint still verifies.
#![allow(clippy::unwrap_used, missing_docs)]

mod runtime_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use broker_core::audit::{
    self, AuditLog, AuditOptions, CheckpointStatus, Event, EventKind, Severity,
};
use broker_core::retry::AlertCommand;
use broker_core::{Broker, Error, ErrorKind, RequestContext};
use runtime_support::*;

fn event(n: u64) -> Event {
    let mut e = Event::new(EventKind::Issuance, Severity::Info);
    e.credential = Some(format!("cred-{n}"));
    e.outcome = Some("issued".into());
    e
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn new_log() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    (dir, path)
}

fn held(path: &Path) -> AuditLog {
    let log = AuditLog::new(path, AuditOptions::default());
    log.hold().unwrap();
    assert!(log.is_held());
    log
}

/// Waits until `n` appends are queued behind a paused writer (fails after 10 s).
fn wait_queued(log: &AuditLog, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.queued() < n {
        assert!(Instant::now() < deadline, "only {} queued", log.queued());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn assert_intact(path: &Path, records: u64) {
    let v = audit::verify(path).unwrap();
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(v.records, records);
    assert_eq!(v.checkpoint, CheckpointStatus::Matches);
}

fn assert_held_elsewhere(err: &Error, path: &Path) {
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(
        err.message(),
        format!(
            "audit log {} is held by another broker process",
            path.display()
        )
    );
    assert_eq!(
        err.hint(),
        Some("give the daemon and the CLI separate `audit.path`s")
    );
}

#[test]
fn threads_share_flushes_and_keep_one_chain() {
    let (_dir, path) = new_log();
    let log = held(&path);
    let mut seqs: Vec<u64> = Vec::new();
    std::thread::scope(|s| {
        // Sixteen appends queued behind a paused writer go out in one flush.
        let paused = log.pause_flushes();
        let first: Vec<_> = (0..16)
            .map(|i| {
                s.spawn({
                    let log = &log;
                    move || log.append(&event(i), now()).unwrap()
                })
            })
            .collect();
        wait_queued(&log, 16);
        drop(paused);
        seqs.extend(first.into_iter().map(|h| h.join().unwrap()));
        assert_eq!(log.flushes(), 1);
        // Then sixteen threads of fifty appends each, free-running.
        let rest: Vec<_> = (0..16)
            .map(|t| {
                s.spawn({
                    let log = &log;
                    move || {
                        (0..50)
                            .map(|i| log.append(&event(t * 100 + i), now()).unwrap())
                            .collect::<Vec<_>>()
                    }
                })
            })
            .collect();
        for h in rest {
            seqs.extend(h.join().unwrap());
        }
    });
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=816).collect::<Vec<_>>(),
        "each record its own seq"
    );
    assert!(log.flushes() < 816, "{} flushes", log.flushes());
    drop(log);
    assert_intact(&path, 816);
}

#[test]
fn tokio_tasks_await_their_flush() {
    let (_dir, path) = new_log();
    let log = Arc::new(held(&path));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut seqs: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for i in 0..20 {
                        out.push(log.append_async(&event(t * 100 + i), now()).await.unwrap());
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1280).collect::<Vec<_>>());
    assert!(log.flushes() < 1280, "{} flushes", log.flushes());
    drop(log);
    assert_intact(&path, 1280);
}

#[test]
fn a_failed_flush_fails_every_appender_in_it_and_the_next_flush_goes_on() {
    let (_dir, path) = new_log();
    let log = held(&path);
    assert_eq!(log.append(&event(1), now()).unwrap(), 1);
    std::thread::scope(|s| {
        let paused = log.pause_flushes();
        let appenders: Vec<_> = (0..8)
            .map(|i| {
                s.spawn({
                    let log = &log;
                    move || log.append(&event(10 + i), now())
                })
            })
            .collect();
        wait_queued(&log, 8);
        log.fail_next_flush();
        drop(paused);
        for h in appenders {
            let err = h.join().unwrap().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Io);
            assert_eq!(
                err.message(),
                format!(
                    "cannot write audit log {}: injected failure (testkit)",
                    path.display()
                )
            );
        }
    });
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "nothing of that flush was written");
    // The writer reads and checks the tail again, then continues the chain.
    assert_eq!(log.append(&event(2), now()).unwrap(), 2);
    drop(log);
    assert_intact(&path, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard holds back the writer, a thread of its own; no task waits on it.
#[allow(clippy::await_holding_lock)]
async fn a_failed_flush_fails_async_appenders_too() {
    let (_dir, path) = new_log();
    let log = Arc::new(held(&path));
    let paused = log.pause_flushes();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append_async(&event(i), now()).await })
        })
        .collect();
    let waiter = log.clone();
    tokio::task::spawn_blocking(move || wait_queued(&waiter, 8))
        .await
        .unwrap();
    log.fail_next_flush();
    drop(paused);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err().kind(), ErrorKind::Io);
    }
    assert_eq!(log.append_async(&event(9), now()).await.unwrap(), 1);
}

#[test]
fn a_second_holder_is_refused_until_the_first_is_dropped() {
    let (_dir, path) = new_log();
    let first = held(&path);
    first.append(&event(1), now()).unwrap();
    let second = AuditLog::new(&path, AuditOptions::default());
    assert_held_elsewhere(&second.hold().unwrap_err(), &path);
    assert!(!second.is_held());
    drop(first);
    second.hold().unwrap();
    assert_eq!(second.append(&event(2), now()).unwrap(), 2);
    drop(second);
    assert_intact(&path, 2);
}

#[test]
fn a_per_append_writer_waits_then_refuses_while_the_log_is_held() {
    let (_dir, path) = new_log();
    let daemon = held(&path);
    daemon.append(&event(1), now()).unwrap();
    let cli =
        AuditLog::new(&path, AuditOptions::default()).with_lock_wait(Duration::from_millis(100));
    assert_held_elsewhere(&cli.append(&event(2), now()).unwrap_err(), &path);
    // `broker audit verify` waits the default 5 s, then says the same.
    let err = audit::verify(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(
        err.message(),
        format!(
            "audit log {} is held by another broker process",
            path.display()
        )
    );
    drop(daemon);
    assert_eq!(cli.append(&event(2), now()).unwrap(), 2);
    assert_intact(&path, 2);
}

#[test]
fn a_tampered_tail_is_refused_at_hold_time_with_the_alert() {
    let (dir, path) = new_log();
    let log = AuditLog::new(&path, AuditOptions::default());
    for i in 1..=3 {
        log.append(&event(i), now()).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("cred-3", "cred-X")).unwrap();
    let alerted = dir.path().join("alert.json");
    let log = AuditLog::new(&path, AuditOptions::default()).with_alert(Some(AlertCommand::new(
        format!("cat > '{}'", alerted.display()),
    )));
    let err = log.hold().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(
        err.message(),
        format!(
            "audit log {} does not match its checkpoint: its last record (seq 3) does not match its checkpoint (seq 3): it was edited",
            path.display()
        )
    );
    assert!(!log.is_held());
    let alert: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&alerted).expect("alert.command ran"))
            .unwrap();
    assert_eq!(alert["severity"], "alert");
    assert_eq!(alert["outcome"], "audit_log_tampered");
    assert_eq!(alert["reason"], err.message());
    // The refusal released the lock: the next holder is refused for the tampering again,
    // not because the log is held.
    let other = AuditLog::new(&path, AuditOptions::default());
    assert_eq!(other.hold().unwrap_err().message(), err.message());
}

/// A crash between a flush's records and its checkpoint leaves the checkpoint one flush
/// behind: accepted when the records past it chain to the record it names, refused (with the
/// alert) when one of them was edited.
#[test]
fn a_flush_interrupted_before_its_checkpoint_is_accepted_and_an_edit_past_it_is_not() {
    let (_dir, path) = new_log();
    let log = held(&path);
    log.append(&event(1), now()).unwrap();
    let cp = audit::checkpoint_path(&path);
    let before = std::fs::read(&cp).unwrap();
    std::thread::scope(|s| {
        let paused = log.pause_flushes();
        let appenders: Vec<_> = (0..10)
            .map(|i| {
                s.spawn({
                    let log = &log;
                    move || log.append(&event(10 + i), now()).unwrap()
                })
            })
            .collect();
        wait_queued(&log, 10);
        drop(paused);
        for h in appenders {
            h.join().unwrap();
        }
    });
    drop(log);
    std::fs::write(&cp, &before).unwrap();
    let v = audit::verify(&path).unwrap();
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(v.checkpoint, CheckpointStatus::Behind);
    let text = std::fs::read_to_string(&path).unwrap();

    let log = held(&path);
    assert_eq!(log.append(&event(99), now()).unwrap(), 12);
    drop(log);
    assert_intact(&path, 12);

    // The same state with record 5 (past the checkpoint) edited. By its seq, not by a
    // credential: the appenders ran in any order, and an edit of the last record cannot be
    // seen while the checkpoint is behind (nothing after it names its digest).
    let edited: String = text
        .lines()
        .map(|l| {
            if l.starts_with("{\"seq\":5,") {
                format!("{}\n", l.replacen("\"cred-", "\"cred-XX-", 1))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(edited, text, "record 5 was edited");
    std::fs::write(&path, edited).unwrap();
    std::fs::write(&cp, &before).unwrap();
    let err = AuditLog::new(&path, AuditOptions::default())
        .hold()
        .unwrap_err();
    assert_eq!(
        err.message(),
        format!(
            "audit log {} does not match its checkpoint: the records after its checkpoint (seq 1) do not continue the chain: they were edited",
            path.display()
        )
    );
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

/// The daemon's shape: a held log behind a shared `Broker`, 64 concurrent resolves on a
/// two-thread runtime, each recorded (decision + issuance) through `record_async`.
#[test]
fn concurrent_resolves_through_a_held_broker_log() {
    let _s = script("held-audit", Script::default());
    let f = Fixture::new(
        "credentials:\n  plain: { ref: \"scripted:held-audit\" }\naudit: { path: audit.jsonl }\n",
    );
    let broker: Arc<Broker> = Arc::new(f.broker().unwrap());
    broker.audit_log().unwrap().hold().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let broker = broker.clone();
                tokio::spawn(assert_send(async move {
                    let ctx = RequestContext {
                        agent_id: Some(format!("agent-{i}")),
                        ..RequestContext::new()
                    };
                    broker.resolve("plain", &ctx).await.map(|_| ())?;
                    broker
                        .record_async(&broker.context_event(
                            EventKind::Notice,
                            Severity::Info,
                            &ctx,
                        ))
                        .await
                }))
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    let log = broker.audit_log().unwrap();
    assert!(log.flushes() < 64 * 3, "{} flushes", log.flushes());
    drop(rt);
    drop(broker);
    assert_intact(&f.path("audit.jsonl"), 64 * 3);
}

/// A request queues its decision without waiting and waits once, for its issuance's flush;
/// when the flush that holds its decision fails, the credential is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard holds back the writer, a thread of its own; no task waits on it.
#[allow(clippy::await_holding_lock)]
async fn a_request_whose_decision_was_not_written_is_refused() {
    let _s = script("held-audit-fail", Script::default());
    let f = Fixture::new(
        "credentials:\n  plain: { ref: \"scripted:held-audit-fail\" }\naudit: { path: audit.jsonl }\n",
    );
    let broker: Arc<Broker> = Arc::new(f.broker().unwrap());
    let log = broker.audit_log().unwrap();
    log.hold().unwrap();
    let paused = log.pause_flushes();
    let request = tokio::spawn({
        let broker = broker.clone();
        async move {
            broker
                .resolve("plain", &RequestContext::new())
                .await
                .map(|_| ())
        }
    });
    // Both records (decision, issuance) queue behind the paused writer: one flush for both.
    let waiter = broker.clone();
    tokio::task::spawn_blocking(move || wait_queued(waiter.audit_log().unwrap(), 2))
        .await
        .unwrap();
    log.fail_next_flush();
    drop(paused);
    let err = request.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("injected failure"), "{err}");
    // The next request is recorded and served.
    broker
        .resolve("plain", &RequestContext::new())
        .await
        .unwrap();
}
