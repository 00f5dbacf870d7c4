//! `broker audit verify [PATH]`: exact output and exit codes for an intact log, each kind of
//! tampering, a missing log, and the config's `audit.path`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use broker_core::audit::{AuditLog, AuditOptions, Event, EventKind, Severity};

const HINT: &str = "hint: records were edited, dropped, reordered or cut; keep this file as evidence and start a new log\n";

fn broker(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .current_dir(dir)
        .env_remove("BROKER_CONFIG")
        .env("BROKER_LOG", "off")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn make_log(dir: &Path, records: u64) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let log = AuditLog::new(&path, AuditOptions::default());
    for i in 1..=records {
        let mut e = Event::new(EventKind::Issuance, Severity::Info);
        e.credential = Some(format!("cred-{i}"));
        log.append(&e, SystemTime::UNIX_EPOCH).unwrap();
    }
    path
}

fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    f(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn an_intact_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 3);
    let out = broker(dir.path(), &["audit", "verify", log.to_str().unwrap()]);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(
        text(&out.stdout),
        format!(
            "ok: {}: 3 record(s), chain intact through seq 3; checkpoint matches\n",
            log.display()
        )
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn an_edited_record_fails_with_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 3);
    rewrite(&log, |l| l[2] = l[2].replace("cred-2", "cred-9"));
    let out = broker(dir.path(), &["audit", "verify", log.to_str().unwrap()]);
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: audit log {} is broken at seq 2 (line 3): seq 2 does not match the digest recorded by seq 3: it was edited\n{HINT}",
            log.display()
        )
    );
    assert_eq!(out.status.code(), Some(69));
}

#[test]
fn a_dropped_record_fails_with_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 4);
    rewrite(&log, |l| {
        l.remove(2);
    });
    let out = broker(dir.path(), &["audit", "verify", log.to_str().unwrap()]);
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: audit log {} is broken at seq 2 (line 3): expected seq 2, found 3: a record was dropped or moved\n{HINT}",
            log.display()
        )
    );
    assert_eq!(out.status.code(), Some(69));
}

#[test]
fn a_truncated_tail_fails_through_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 4);
    rewrite(&log, |l| l.truncate(3));
    let out = broker(dir.path(), &["audit", "verify", log.to_str().unwrap()]);
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: audit log {} is broken at seq 3 (line 4): the log ends at seq 2 but the checkpoint records seq 4: records were cut from the end\n{HINT}",
            log.display()
        )
    );
    assert_eq!(out.status.code(), Some(69));
}

#[test]
fn json_output_reports_the_problem_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 3);
    rewrite(&log, |l| l.swap(1, 2));
    let out = broker(
        dir.path(),
        &["audit", "verify", "--json", log.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["verification"]["problem"]["seq"], 1);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(out.status.code(), Some(69));
}

#[test]
fn a_missing_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = broker(dir.path(), &["audit", "verify", "nope.jsonl"]);
    assert_eq!(
        text(&out.stderr),
        "error: cannot read audit log nope.jsonl: No such file or directory (os error 2)\n"
    );
    assert_eq!(out.status.code(), Some(69));
}

#[test]
fn without_a_path_the_configs_audit_log_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".broker")).unwrap();
    make_log(&dir.path().join(".broker"), 2);
    std::fs::write(
        dir.path().join(".broker.yml"),
        "credentials: {}\naudit: { path: .broker/audit.jsonl }\n",
    )
    .unwrap();
    let out = broker(dir.path(), &["audit", "verify"]);
    let cfg_dir = std::fs::canonicalize(dir.path()).unwrap();
    let expected = format!(
        "ok: {}: 2 record(s), chain intact through seq 2; checkpoint matches\n",
        dir.path().join(".broker/audit.jsonl").display()
    );
    let alt = format!(
        "ok: {}: 2 record(s), chain intact through seq 2; checkpoint matches\n",
        cfg_dir.join(".broker/audit.jsonl").display()
    );
    let stdout = text(&out.stdout);
    assert!(stdout == expected || stdout == alt, "{stdout}");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn without_a_path_or_an_audit_section_it_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".broker.yml"), "credentials: {}\n").unwrap();
    let out = broker(dir.path(), &["audit", "verify"]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: no audit log configured in ")
            && stderr.ends_with(
                ".broker.yml\nhint: pass the log's PATH, or set `audit: { path: ... }` in the config\n"
            ),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn the_manifest_form_of_audit_still_works() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".broker.yml"), "credentials: {}\n").unwrap();
    let out = broker(dir.path(), &["audit"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("no credentials declared"));
}

/// F5: an edited last record behind a checkpoint that is one record behind used to print ok.
#[test]
fn an_edited_tail_behind_the_checkpoint_fails() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 2);
    rewrite(&log, |l| {
        l[2] = l[2].replace("cred-2", "cred-X");
        let mut forged: serde_json::Value = serde_json::from_str(&l[2]).unwrap();
        forged["seq"] = 3.into();
        forged["prev"] = broker_core::audit::digest(l[2].as_bytes()).into();
        l.push(forged.to_string());
    });
    let out = broker(dir.path(), &["audit", "verify", log.to_str().unwrap()]);
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: audit log {} is broken at seq 2 (line 3): seq 2 does not match the checkpoint's digest: it was edited\n{HINT}",
            log.display()
        )
    );
    assert_eq!(out.status.code(), Some(69));
}

/// F2: a FIFO in place of the checkpoint used to make `verify` hang; it is a broken log (69).
#[test]
fn a_fifo_checkpoint_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = make_log(dir.path(), 2);
    let cp = broker_core::audit::checkpoint_path(&log);
    std::fs::remove_file(&cp).unwrap();
    assert!(Command::new("mkfifo").arg(&cp).status().unwrap().success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["audit", "verify", log.to_str().unwrap()])
        .current_dir(dir.path())
        .env_remove("BROKER_CONFIG")
        .env("BROKER_LOG", "off")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`broker audit verify` blocked on a FIFO checkpoint");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: audit log {} is broken at seq 2 (line 3): checkpoint {} is a FIFO, not a regular file\n{HINT}",
            log.display(),
            cp.display()
        )
    );
    assert_eq!(out.status.code(), Some(69));
}

/// `broker audit` says so when the config turns the audit log off (`audit: { enabled: false }`),
/// in text and `--json` mode alike (stderr), and says nothing otherwise.
#[test]
fn the_manifest_warns_when_the_audit_log_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join(".broker.yml");
    std::fs::write(&config, "credentials: {}\naudit: { enabled: false }\n").unwrap();
    let warning = format!(
        "warning: the audit log is off (`audit: {{ enabled: false }}` in {}): nothing the broker hands out is recorded\n",
        config.display()
    );
    let out = broker(dir.path(), &["audit"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), warning);
    assert!(text(&out.stdout).contains("no credentials declared"));
    let out = broker(dir.path(), &["audit", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), warning);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();

    std::fs::write(&config, "credentials: {}\naudit: { path: audit.jsonl }\n").unwrap();
    let out = broker(dir.path(), &["audit"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), "");
}
