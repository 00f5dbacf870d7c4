//! The delivery engine (`broker_core::session`): a delivery applied to a child's environment,
//! the child's output redacted into an in-memory sink (values split across writes included),
//! file credentials re-minted while the child runs with the redactor swapped, and the scratch
//! dir wiped when the session ends. Children are `sh`; time comes from a test clock.
#![allow(clippy::unwrap_used, missing_docs)]

mod runtime_support;

use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use broker_core::lease::{ManualClock, RefreshPolicy};
use broker_core::redact::{self, Redactor};
use broker_core::session::{OutputBuffer, Pumps, SharedRedactor};
use broker_core::{Broker, RequestContext, SecretValue};
use runtime_support::*;

/// Runs `script` under `sh -c` with stdout and stderr pumped into one buffer.
fn run_sh(redactor: &SharedRedactor, script: &str) -> Vec<u8> {
    let out = OutputBuffer::default();
    let mut pumps = Pumps::new(redactor);
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(pumps.pipe("test-stdout", out.clone()).unwrap())
        .stderr(pumps.pipe("test-stderr", out.clone()).unwrap());
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    assert!(child.wait().unwrap().success());
    pumps.finish();
    out.contents()
}

#[test]
fn a_value_split_across_writes_is_redacted_into_a_buffer() {
    let value = SecretValue::copy_from(b"canary-split-6b1e-value");
    let redactor = SharedRedactor::new(Arc::new(Redactor::new([("api", &value)])));
    // Two writes by two printf calls, the value cut in the middle; then an ordinary line.
    let out = run_sh(
        &redactor,
        "printf 'token=canary-split-'; printf '6b1e-value\\n'; printf 'done\\n'",
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "token=[REDACTED:api]\ndone\n"
    );
}

#[test]
fn a_held_tail_that_is_no_value_is_released_at_exit() {
    let value = SecretValue::copy_from(b"canary-tail-91c4-value");
    let redactor = SharedRedactor::new(Arc::new(Redactor::new([("api", &value)])));
    // Ends with the beginning of the value: held back, then released as it is at the end.
    let out = run_sh(&redactor, "printf 'prompt> canary-tail'");
    assert_eq!(out, b"prompt> canary-tail");
}

#[test]
fn the_output_buffer_keeps_at_most_its_cap() {
    let redactor = SharedRedactor::new(Arc::new(Redactor::empty()));
    let out = OutputBuffer::with_cap(4);
    let mut pumps = Pumps::new(&redactor);
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("printf 'abcdefgh'")
        .stdout(pumps.pipe("capped", out.clone()).unwrap());
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    assert!(child.wait().unwrap().success(), "the child is not stopped");
    pumps.finish();
    assert_eq!(out.contents(), b"abcd");
    assert!(out.truncated());
}

/// A broker with an env credential (`API`) and a minted file credential (`MINTED`, 10 min),
/// on a test clock.
fn fixture(target: &str) -> (Fixture, Arc<ManualClock>, Arc<Script>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let minted = script(
        target,
        Script {
            ttl: Some(Duration::from_secs(600)),
            clock: Some(clock.clone()),
            ..Script::default()
        },
    );
    // Values are `{CANARY}-{call number}`: the static one counts from 100, so they differ.
    script(
        &format!("{target}-static"),
        Script {
            calls: AtomicU32::new(100),
            ..Script::default()
        },
    );
    let f = Fixture::new(&format!(
        "credentials:\n  api: {{ ref: \"scripted:{target}-static\", as: API }}\n  minted: {{ mint: \"scripted:{target}\", ttl: 10m, kind: file, as: MINTED }}\n"
    ));
    (f, clock, minted)
}

fn broker(f: &Fixture, clock: &Arc<ManualClock>) -> Broker {
    f.broker()
        .unwrap()
        .with_clock(clock.clone())
        .with_refresh_policy(RefreshPolicy {
            jitter: 0.0,
            ..RefreshPolicy::default()
        })
}

fn env_of<'a>(session: &'a broker_core::Session<'_>, var: &str) -> &'a SecretValue {
    &session
        .delivery()
        .env()
        .iter()
        .find(|(k, _)| k == var)
        .unwrap()
        .1
}

#[tokio::test]
async fn env_is_applied_files_are_delivered_and_output_is_redacted() {
    let (f, clock, _) = fixture("session-env");
    let broker = broker(&f, &clock);
    let session = broker.session(&[], &RequestContext::new()).await.unwrap();
    let seen = f.path("seen-by-child");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(format!(
        "printf '%s' \"$API\" > '{}'; echo \"api=$API\"; cat \"$MINTED\"; echo",
        seen.display()
    ));
    session.delivery().apply_to(&mut cmd);
    let out = OutputBuffer::default();
    let mut pumps = session.pumps();
    cmd.stdin(Stdio::null())
        .stdout(pumps.pipe("out", out.clone()).unwrap());
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    assert!(child.wait().unwrap().success());
    pumps.finish();

    assert_eq!(
        std::fs::read(&seen).unwrap(),
        env_of(&session, "API").expose(),
        "the child's environment holds the value's bytes"
    );
    let text = String::from_utf8(out.contents()).unwrap();
    assert_eq!(text, "api=[REDACTED:api]\n[REDACTED:minted]\n");
    assert!(!format!("{session:?}").contains(CANARY));
}

#[tokio::test]
async fn the_scratch_dir_is_wiped_when_the_session_is_dropped() {
    let (f, clock, _) = fixture("session-wipe");
    let broker = broker(&f, &clock);
    let session = broker.session(&[], &RequestContext::new()).await.unwrap();
    let path = std::path::PathBuf::from(
        String::from_utf8(env_of(&session, "MINTED").expose().to_vec()).unwrap(),
    );
    assert!(std::fs::read(&path).unwrap().starts_with(CANARY.as_bytes()));
    let dir = session.delivery().scratch().unwrap().path().to_path_buf();
    drop(session);
    assert!(!path.exists());
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_re_mint_replaces_the_file_and_swaps_the_redactor() {
    let (f, clock, minted) = fixture("session-refresh");
    let broker = broker(&f, &clock);
    let mut session = broker.session(&[], &RequestContext::new()).await.unwrap();
    let live = session.redactor().install_global();
    let before = session.redactor().current();
    assert_eq!(session.next_refresh(), Some(None), "due at once");

    // The first call schedules: nothing is due yet.
    assert_eq!(session.refresh().await.unwrap(), 0);
    assert_eq!(
        session.next_refresh(),
        Some(Some(t0() + Duration::from_secs(480)))
    );
    assert_eq!(minted.calls(), 1);

    clock.advance(Duration::from_secs(500));
    tokio::time::timeout(Duration::from_secs(60), session.refresh_due())
        .await
        .expect("due on the test clock");
    assert_eq!(session.refresh().await.unwrap(), 1);
    assert_eq!(minted.calls(), 2);
    let after = session.redactor().current();
    assert!(!Arc::ptr_eq(&before, &after));
    assert!(
        Arc::ptr_eq(&redact::live().unwrap(), &after),
        "the global redactor follows the swap"
    );

    let fresh = SecretValue::from(format!("{CANARY}-2"));
    let file = session.delivery().scratch().unwrap().path().join("minted");
    assert_eq!(std::fs::read(&file).unwrap(), fresh.expose());
    let out = run_sh(
        session.redactor(),
        &format!("cat '{}'; echo; echo {CANARY}-1", file.display()),
    );
    assert_eq!(out, b"[REDACTED:minted]\n[REDACTED:minted]\n");

    drop(live);
    assert!(redact::live().is_none());
}

#[tokio::test]
async fn wait_re_mints_while_the_child_runs() {
    let (f, clock, minted) = fixture("session-wait");
    let broker = broker(&f, &clock);
    let mut session = broker.session(&[], &RequestContext::new()).await.unwrap();
    clock.advance(Duration::from_secs(500)); // past the refresh margin
    let file = session.delivery().scratch().unwrap().path().join("minted");
    let old = std::fs::read(&file).unwrap();
    let out = OutputBuffer::default();
    let mut pumps = session.pumps();
    let mut cmd = tokio::process::Command::new("sh");
    // Waits for the file to change (the re-mint), then prints the new and the old value.
    cmd.arg("-c").arg(
        "while [ \"$(cat \"$MINTED\")\" = \"$OLD\" ]; do sleep 0.05; done; cat \"$MINTED\"; echo; echo \"$OLD\"",
    );
    session.delivery().apply_to_tokio(&mut cmd);
    cmd.env("OLD", std::ffi::OsStr::from_bytes(&old));
    cmd.stdin(Stdio::null())
        .stdout(pumps.pipe("out", out.clone()).unwrap())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    session.record_child(child.id().unwrap()).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), session.wait(&mut child))
        .await
        .expect("the re-mint happens while the child waits for it")
        .unwrap();
    assert!(status.success());
    pumps.finish();
    assert_eq!(minted.calls(), 2);
    assert_eq!(out.contents(), b"[REDACTED:minted]\n[REDACTED:minted]\n");
    session.wipe().unwrap();
    assert!(!session.delivery().scratch().unwrap().path().exists());
}

#[test]
fn a_pty_master_is_pumped_until_every_slave_is_closed() {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let value = SecretValue::copy_from(b"canary-pty-52d0-value");
    let redactor = SharedRedactor::new(Arc::new(Redactor::new([("api", &value)])));
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let out = OutputBuffer::default();
    let mut pumps = Pumps::new(&redactor);
    pumps.spawn("pty", master, out.clone()).unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("printf 'key=canary-pty-'; printf '52d0-value.'")
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave));
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // the last copy of the slave outside the child: the master reads EIO after it
    assert!(child.wait().unwrap().success());
    pumps.finish();
    assert_eq!(out.contents(), b"key=[REDACTED:api].");
}

/// A sink that refuses every write.
struct Broken;

impl std::io::Write for Broken {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failed_sink_closes_the_source_and_the_child_gets_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    let redactor = SharedRedactor::new(Arc::new(Redactor::empty()));
    let mut pumps = Pumps::new(&redactor);
    let mut cmd = std::process::Command::new("yes");
    cmd.stdin(Stdio::null())
        .stdout(pumps.pipe("broken", Broken).unwrap());
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    // `yes` writes forever: only a closed pipe ends it. (A hang guard, not a timing check.)
    let mut status = None;
    for _ in 0..600 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = status else {
        child.kill().unwrap();
        panic!("the child kept writing to a pump whose sink failed");
    };
    assert_eq!(status.signal(), Some(13), "SIGPIPE");
    pumps.finish();
}
