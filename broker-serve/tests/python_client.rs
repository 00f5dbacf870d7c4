//! `examples/serve-client/client.py` (standard library only) against a daemon started here:
//! the manifest, a credential with its value redacted, and an exact error.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use broker_core::testkit::{assert_no_canary, record_skip};
use broker_env as _;
use common::Daemon;

const CANARY: &str = "canary-serve-python-0d7e5b19a3c4";

#[test]
#[ignore = "run by the other tests as the daemon process"]
fn daemon_child() {
    common::daemon_main();
}

fn python() -> Option<&'static str> {
    if Command::new("python3").arg("--version").output().is_ok() {
        return Some("python3");
    }
    record_skip("python3 is needed to run the example client");
    None
}

fn client(d: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/serve-client/client.py");
    let out = Command::new(python().unwrap())
        .arg(script)
        .arg(&d.socket)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_python_example_client_gets_a_redacted_credential() {
    if python().is_none() {
        return;
    }
    let uid = rustix::process::getuid().as_raw();
    let d = Daemon::start(
        &format!(
            "credentials:\n  api: {{ ref: \"env:BROKER_SERVE_TEST_CANARY\", as: API_TOKEN }}\n\
             audit: {{ path: audit.jsonl }}\n\
             serve:\n  listen: run/broker.sock\n  agents: [{{ id: agent-py, uid: {uid} }}]\n"
        ),
        &[("BROKER_SERVE_TEST_CANARY", CANARY)],
    );

    let (code, stdout, stderr) = client(&d, &["manifest"]);
    assert_eq!(code, Some(0), "{stderr}");
    let row: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        row,
        serde_json::json!({"credential": "api", "delivered_as": "API_TOKEN", "kind": "env", "ttl": null})
    );

    let (code, stdout, stderr) = client(&d, &["get", "api", "--ttl", "5m"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(!stdout.contains(CANARY));
    let body: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "companions",
            "expires_at",
            "request_id",
            "value",
            "value_length"
        ]
    );
    assert_eq!(body["value"], "[REDACTED:api]");
    assert_eq!(body["value_length"], CANARY.len());
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(!body["request_id"].as_str().unwrap().is_empty());

    // --reveal hands over the value itself.
    let (code, stdout, _) = client(&d, &["get", "api", "--reveal"]);
    assert_eq!(code, Some(0));
    let body: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(body["value"], CANARY);

    // Refusals: the daemon's status, kind and message, never a value.
    let (code, stdout, stderr) = client(&d, &["get", "nope"]);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert_eq!(
        stderr,
        "error: 404 unknown_credential: no credential named `nope`\n"
    );
    let (code, _, stderr) = client(&d, &["get", "api", "--ttl", "soon"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "error: 400 malformed_request: `ttl`: `soon` is not a duration (a number must precede `s`)\n"
    );

    // A scope can only narrow a configured one; a reason is recorded.
    let (code, _, stderr) = client(
        &d,
        &["get", "api", "--scope", r#"{"actions": ["s3:GetObject"]}"#],
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "error: 400 scope_too_wide: `api` has no configured `scope:` for a request to narrow\n"
    );
    let (code, _, _) = client(&d, &["get", "api", "--reason", "nightly report"]);
    assert_eq!(code, Some(0));

    let (logs, audit) = d.stop();
    assert_no_canary("daemon logs", &logs, &[CANARY]);
    assert_no_canary("audit log", &audit, &[CANARY]);
    assert!(audit.contains("\"agent_id\":\"agent-py\""));
    assert!(audit.contains("\"purpose\":\"nightly report\""), "{audit}");
}
