//! Retry: full-jitter backoff, at most 3 retries, retryable errors only, per-attempt timeout,
//! fail closed with an alert (audit record of severity `alert` and `alert.command`).
#![allow(clippy::unwrap_used, missing_docs)]

mod runtime_support;

use std::sync::Arc;
use std::time::Duration;

use broker_core::retry::{self, RetryPolicy};
use broker_core::{Error, ErrorKind, RequestContext};
use runtime_support::*;

fn fixture(target: &str, extra: &str) -> Fixture {
    Fixture::new(&format!(
        "credentials:\n  api: {{ ref: \"scripted:{target}\" }}\naudit: {{ path: audit.jsonl }}\n{extra}"
    ))
}

#[test]
fn backoff_ceilings_double_up_to_the_cap_and_jitter_stays_below_them() {
    let p = RetryPolicy {
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
        ..RetryPolicy::default()
    };
    assert_eq!(p.ceiling(0), Duration::from_millis(100));
    assert_eq!(p.ceiling(1), Duration::from_millis(200));
    assert_eq!(p.ceiling(2), Duration::from_millis(400));
    assert_eq!(p.ceiling(3), Duration::from_millis(500));
    assert_eq!(p.ceiling(40), Duration::from_millis(500));
    assert_eq!(p.delay(2, 0.0), Duration::ZERO);
    assert_eq!(p.delay(2, 0.5), Duration::from_millis(200));
    assert!(p.delay(2, 0.9999) < Duration::from_millis(400));
}

#[tokio::test]
async fn two_failures_then_success_is_three_calls() {
    let s = script("retry-2", Script::default());
    s.fail_next([Error::transient("503"), Error::transient("503")]);
    let f = fixture("retry-2", "");
    let sleeper = Arc::new(CountingSleeper::default());
    let broker = f
        .broker()
        .unwrap()
        .with_retry(fast_retry(), sleeper.clone());
    let c = broker.resolve("api", &RequestContext::new()).await.unwrap();
    assert!(c.value().expose_str().unwrap().starts_with(CANARY));
    assert_eq!(s.calls(), 3);
    let delays = sleeper.0.lock().unwrap().clone();
    assert_eq!(delays.len(), 2);
    assert!(delays[0] < Duration::from_millis(100) && delays[1] < Duration::from_millis(200));
    let lines = audit_lines(&f.path("audit.jsonl"));
    let issued = lines.last().unwrap();
    assert_eq!(issued["event"], "issuance");
    assert_eq!(issued["attempts"], 3);
}

#[tokio::test]
async fn four_failures_is_four_calls_then_an_error_and_an_alert() {
    let s = script("retry-4", Script::default());
    s.fail_next((0..4).map(|_| Error::transient("upstream returned 503")));
    let alert_out = tempfile::tempdir().unwrap();
    let alert_file = alert_out.path().join("alert.json");
    let f = fixture(
        "retry-4",
        &format!(
            "alert: {{ command: \"cat > '{}'\" }}\n",
            alert_file.display()
        ),
    );
    let sleeper = Arc::new(CountingSleeper::default());
    let broker = f
        .broker()
        .unwrap()
        .with_retry(fast_retry(), sleeper.clone());
    let err = broker
        .resolve("api", &RequestContext::new())
        .await
        .unwrap_err();
    assert_eq!(s.calls(), 4);
    assert_eq!(sleeper.0.lock().unwrap().len(), 3);
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(
        err.to_string(),
        "credential `api` (scripted:retry-4): upstream returned 503 (gave up after 4 attempts)"
    );
    let lines = audit_lines(&f.path("audit.jsonl"));
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "failure");
    assert_eq!(last["severity"], "alert");
    assert_eq!(last["attempts"], 4);
    assert_eq!(last["error_kind"], "transient");
    let alert: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&alert_file).unwrap()).unwrap();
    assert_eq!(alert["severity"], "alert");
    assert_eq!(alert["credential"], "api");
    assert_eq!(alert["reference"], "scripted:retry-4");
    assert!(alert["timestamp"].is_string());
    assert!(!alert.to_string().contains(CANARY));
}

/// Issue 10, defect 2: a backend that spent its own retries (Vault's client, the AWS SDK)
/// returns a non-retryable error marked exhausted; that is an outage all the same: one call
/// here, but an `alert` record with the backend's attempt count, and `alert.command` runs.
#[tokio::test]
async fn retries_exhausted_inside_the_backend_raise_the_alert_with_its_attempts() {
    let s = script("retry-inner", Script::default());
    s.fail_next([
        Error::transient("upstream returned 503; gave up after 4 attempts")
            .retryable(false)
            .exhausted_after(4),
    ]);
    let alert_out = tempfile::tempdir().unwrap();
    let alert_file = alert_out.path().join("alert.json");
    let f = fixture(
        "retry-inner",
        &format!(
            "alert: {{ command: \"cat > '{}'\" }}\n",
            alert_file.display()
        ),
    );
    let sleeper = Arc::new(CountingSleeper::default());
    let broker = f
        .broker()
        .unwrap()
        .with_retry(fast_retry(), sleeper.clone());
    let err = broker
        .resolve("api", &RequestContext::new())
        .await
        .unwrap_err();
    // Not multiplied by the broker's own retries.
    assert_eq!(s.calls(), 1);
    assert!(sleeper.0.lock().unwrap().is_empty());
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(err.exhausted_attempts(), Some(4));
    let lines = audit_lines(&f.path("audit.jsonl"));
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "failure");
    assert_eq!(last["severity"], "alert");
    assert_eq!(last["attempts"], 4);
    let alert: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&alert_file).unwrap()).unwrap();
    assert_eq!(alert["severity"], "alert");
    assert_eq!(alert["attempts"], 4);
    assert_eq!(alert["credential"], "api");
}

#[tokio::test]
async fn a_non_retryable_error_is_one_call_and_no_alert() {
    let s = script("retry-nf", Script::default());
    s.fail_next([Error::not_found("no such secret")]);
    let alert_out = tempfile::tempdir().unwrap();
    let alert_file = alert_out.path().join("alert.json");
    let f = fixture(
        "retry-nf",
        &format!(
            "alert: {{ command: \"cat > '{}'\" }}\n",
            alert_file.display()
        ),
    );
    let sleeper = Arc::new(CountingSleeper::default());
    let broker = f
        .broker()
        .unwrap()
        .with_retry(fast_retry(), sleeper.clone());
    let err = broker
        .resolve("api", &RequestContext::new())
        .await
        .unwrap_err();
    assert_eq!(s.calls(), 1);
    assert!(sleeper.0.lock().unwrap().is_empty());
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let lines = audit_lines(&f.path("audit.jsonl"));
    assert_eq!(lines.last().unwrap()["severity"], "warning");
    assert!(!alert_file.exists());
}

#[tokio::test(start_paused = true)]
async fn each_attempt_has_a_timeout_and_a_hang_fails_closed() {
    let s = script(
        "hang",
        Script {
            hang: true,
            ..Script::default()
        },
    );
    let f = fixture("hang", "");
    let policy = RetryPolicy {
        timeout: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    let broker = f
        .broker()
        .unwrap()
        .with_retry(policy, Arc::new(CountingSleeper::default()));
    let err = broker
        .resolve("api", &RequestContext::new())
        .await
        .unwrap_err();
    assert_eq!(s.calls(), 4);
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert_eq!(
        err.message(),
        "timed out after 2s (gave up after 4 attempts)"
    );
}

#[tokio::test]
async fn more_than_three_retries_are_never_made() {
    let policy = RetryPolicy {
        max_retries: 10,
        ..RetryPolicy::default()
    };
    let sleeper = CountingSleeper::default();
    let mut calls = 0;
    let failure = retry::retry(&policy, &sleeper, |_| {
        calls += 1;
        async { Err::<(), _>(Error::transient("throttled")) }
    })
    .await
    .unwrap_err();
    assert_eq!(calls, 4);
    assert_eq!(failure.attempts, 4);
    assert!(failure.exhausted);
}

/// Issue 10, defect 12: a timed-out `alert.command` is killed with everything it started (its
/// own process group), not just `sh`.
#[tokio::test]
async fn a_timed_out_alert_command_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let cmd = retry::AlertCommand {
        command: format!(
            "sleep 1000 & echo $! > '{}.tmp' && mv '{0}.tmp' '{0}'; wait",
            pid_file.display()
        ),
        timeout: Duration::from_secs(2),
    };
    let err = cmd.run(&serde_json::json!({})).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "alert.command did not finish within 2s and was killed"
    );
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    // Gone, or a zombie waiting for its new parent to reap it.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state != 'Z' && state != 'X')
            })
            .unwrap_or(false)
    };
    let mut tries = 0;
    while alive() && tries < 500 {
        std::thread::sleep(Duration::from_millis(10));
        tries += 1;
    }
    let survived = alive();
    if survived {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
    }
    assert!(
        !survived,
        "the alert command's child {pid} outlived its timeout"
    );
}

/// Whether a process is running (not gone, not a zombie waiting to be reaped).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Polls for up to 5 s until `pid` stops running; kills it and fails if it does not.
fn assert_gone(pid: &str, what: &str) {
    let mut tries = 0;
    while running(pid) && tries < 500 {
        std::thread::sleep(Duration::from_millis(10));
        tries += 1;
    }
    let survived = running(pid);
    if survived {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }
    assert!(!survived, "{what} {pid} is still running");
}

/// Reads the file a command writes its pid into, waiting up to 5 s for it.
fn read_pid(path: &std::path::Path) -> String {
    for _ in 0..500 {
        if let Ok(pid) = std::fs::read_to_string(path) {
            return pid.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} was never written", path.display());
}

/// Finding F3: a command that never reads its stdin cannot hold the broker past the timeout
/// with a payload larger than a pipe buffer (64 KiB); it is killed with its process group.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_command_that_never_reads_a_huge_payload_is_still_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let cmd = retry::AlertCommand {
        command: format!(
            "echo $$ > '{}.tmp' && mv '{0}.tmp' '{0}'; sleep 300",
            pid_file.display()
        ),
        timeout: Duration::from_secs(1),
    };
    // Many strings under the per-string cap: the payload stays above 64 KiB.
    let event = serde_json::json!({ "refs": vec!["x".repeat(1000); 200] });
    assert!(serde_json::to_vec(&event).unwrap().len() > 128 * 1024);
    let err = tokio::time::timeout(Duration::from_secs(60), cmd.run(&event))
        .await
        .expect("alert.command hung past its timeout")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "alert.command did not finish within 1s and was killed"
    );
    let pid = read_pid(&pid_file);
    let group = rustix::process::Pid::from_raw(pid.parse().unwrap()).unwrap();
    let mut tries = 0;
    while rustix::process::test_kill_process_group(group).is_ok() && tries < 500 {
        std::thread::sleep(Duration::from_millis(10));
        tries += 1;
    }
    assert!(
        rustix::process::test_kill_process_group(group).is_err(),
        "the alert command's process group {pid} outlived its timeout"
    );
}

/// Finding F3: a huge string in the event (a 70 KB reference) is elided before it reaches
/// the command.
#[tokio::test]
async fn long_strings_in_the_alert_event_are_elided() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("event.json");
    let cmd = retry::AlertCommand::new(format!("cat > '{}'", out.display()));
    let reference = format!("env:{}", "A".repeat(70_000));
    cmd.run(&serde_json::json!({ "reference": reference, "kind": "transient" }))
        .await
        .unwrap();
    let event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let shown = event["reference"].as_str().unwrap();
    let expected = format!(
        "env:{}… (70004 chars)",
        "A".repeat(retry::ALERT_STRING_LIMIT - 4)
    );
    assert_eq!(shown, expected);
    assert_eq!(event["kind"], "transient");
}

/// Finding F4: when `sh` exits, whatever it started in the background is killed with it.
#[tokio::test]
async fn an_alert_commands_background_children_die_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let cmd = retry::AlertCommand::new(format!(
        "sleep 45 & echo $! > '{}.tmp' && mv '{0}.tmp' '{0}'; echo started",
        pid_file.display()
    ));
    cmd.run(&serde_json::json!({})).await.unwrap();
    let pid = read_pid(&pid_file);
    assert_gone(&pid, "the alert command's background child");
}
