//! The daemon on a unix socket in a temp dir, run as a child process (this test binary,
//! re-executed with the canary in its environment), with an `env:` credential and an audit log.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::path::Path;

use broker_core::testkit::assert_no_canary;
use broker_serve::client::{self, Answer};
use common::{Daemon, kind_of};

const CANARY: &str = "canary-serve-7f3a9c1e5b2d4f60a8e1";
const OTHER_UID: u32 = 65534;
const AGENT_B_UID: u32 = 65533;

/// The daemon itself, when re-executed by [`start`]; does nothing in a normal test run.
#[test]
#[ignore = "run by the other tests as the daemon process"]
fn daemon_child() {
    use broker_env as _;
    common::daemon_main();
}

/// The daemon with an `env:` credential holding the canary, `Agent-A` (this uid, also admin)
/// and `extra_agents` (YAML list items); `BROKER_AGENT_ID` is set to show it is ignored.
fn start(extra_agents: &str) -> Daemon {
    let uid = rustix::process::getuid().as_raw();
    let config = format!(
        "credentials:\n  api: {{ ref: \"env:BROKER_SERVE_TEST_CANARY\", as: API_TOKEN }}\n\
         audit: {{ path: audit.jsonl }}\n\
         serve:\n  listen: run/broker.sock\n  agents:\n    - {{ id: Agent-A, uid: {uid} }}\n{extra_agents}\
         \x20 admins: [{{ uid: {uid} }}]\n"
    );
    Daemon::start(
        &config,
        &[
            ("BROKER_SERVE_TEST_CANARY", CANARY),
            ("BROKER_AGENT_ID", "admin-by-claim"),
        ],
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A request with a raw (possibly not UTF-8, possibly oversized) body.
fn call(socket: &Path, method: &str, path: &str, body: &[u8]) -> Answer {
    rt().block_on(client::call(socket, method, path, body.to_vec()))
        .unwrap()
}

#[test]
fn a_mapped_peer_gets_the_value_and_refusals_have_exact_kinds() {
    let d = start("");
    let bodies = std::cell::RefCell::new(String::new());
    let expect = |a: Answer, status: u16, kind: &str| {
        let text = String::from_utf8_lossy(&a.body).to_string();
        assert_eq!(a.status, status, "{text}");
        assert_eq!(kind_of(&a), kind, "{text}");
        bodies.borrow_mut().push_str(&text);
    };

    // The mapped uid (ours) gets the value.
    let a = call(&d.socket, "POST", "/v1/credentials/api", b"{}");
    assert_eq!(a.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["value"], CANARY);
    assert_eq!(v["request_id"].as_str().unwrap().len(), 32);
    // An empty body is `{}`; a shorter ttl caps expires_at.
    let a = call(&d.socket, "POST", "/v1/credentials/api", b"");
    assert_eq!(a.status, 200);
    let a = call(
        &d.socket,
        "POST",
        "/v1/credentials/api",
        br#"{"ttl": "5m", "task_id": "t-1"}"#,
    );
    assert_eq!(a.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert!(v["expires_at"].is_string());

    // Bad input.
    expect(
        call(&d.socket, "POST", "/v1/credentials/api", b"{not json"),
        400,
        "malformed_request",
    );
    expect(
        call(&d.socket, "POST", "/v1/credentials/api", br#"{"nope": 1}"#),
        400,
        "malformed_request",
    );
    let big = vec![b' '; broker_serve::BODY_LIMIT + 1];
    expect(
        call(&d.socket, "POST", "/v1/credentials/api", &big),
        413,
        "body_too_large",
    );
    expect(
        call(&d.socket, "POST", "/v1/credentials/nope", b"{}"),
        404,
        "unknown_credential",
    );
    expect(
        call(&d.socket, "GET", "/v1/nothing", b""),
        404,
        "no_such_route",
    );
    expect(
        call(&d.socket, "GET", "/v1/credentials/api", b""),
        405,
        "method_not_allowed",
    );

    // The manifest is secret-free and lists what the agent may request.
    let a = call(&d.socket, "GET", "/v1/manifest", b"");
    assert_eq!(a.status, 200);
    let text = String::from_utf8_lossy(&a.body).to_string();
    assert!(text.contains("\"credential\":\"api\""), "{text}");
    bodies.borrow_mut().push_str(&text);

    // Admin blocks the agent: refused until unblocked.
    let a = call(&d.socket, "POST", "/v1/agents/AGENT-A/block", b"");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    expect(
        call(&d.socket, "POST", "/v1/credentials/api", b"{}"),
        403,
        "agent_blocked",
    );
    expect(
        call(&d.socket, "GET", "/v1/manifest", b""),
        403,
        "agent_blocked",
    );
    let a = call(&d.socket, "POST", "/v1/agents/agent-a/unblock", b"");
    assert_eq!(a.status, 200);
    assert_eq!(
        call(&d.socket, "POST", "/v1/credentials/api", b"{}").status,
        200
    );

    let a = call(&d.socket, "GET", "/healthz", b"");
    assert_eq!(a.status, 200);

    let (logs, audit) = d.stop();
    assert_no_canary("error bodies", &bodies.borrow(), &[CANARY]);
    assert_no_canary("daemon logs", &logs, &[CANARY]);
    assert_no_canary("audit log", &audit, &[CANARY]);
    assert!(audit.contains("\"agent_id\":\"agent-a\""), "{audit}");
    assert!(
        !audit.contains("admin-by-claim"),
        "BROKER_AGENT_ID must be ignored: {audit}"
    );
    assert!(audit.contains("\"outcome\":\"agent_blocked\""), "{audit}");
    assert!(logs.contains("serving"), "{logs}");
}

/// Runs `curl` against `socket` as `uid` (root only; skipped otherwise).
fn curl_as(uid: u32, socket: &Path, method: &str, path: &str) -> Option<(u16, String)> {
    common::can_switch_uid().then(|| common::curl_as(uid, socket, method, path, ""))
}

#[test]
fn other_uids_are_identified_by_the_kernel() {
    let d = start(&format!("    - {{ id: agent-b, uid: {AGENT_B_UID} }}\n"));
    d.open_to_all();
    let Some((status, body)) = curl_as(OTHER_UID, &d.socket, "POST", "/v1/credentials/api") else {
        d.stop();
        return;
    };
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"kind\":\"unknown_peer\""), "{body}");
    let (status, body) =
        curl_as(AGENT_B_UID, &d.socket, "POST", "/v1/agents/agent-a/block").unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"kind\":\"not_admin\""), "{body}");
    let (status, body) = curl_as(AGENT_B_UID, &d.socket, "POST", "/v1/credentials/api").unwrap();
    assert_eq!(status, 200, "agent-b is mapped: {body}");
    assert!(body.contains(CANARY));
    let (logs, audit) = d.stop();
    assert_no_canary("daemon logs", &logs, &[CANARY]);
    assert_no_canary("audit log", &audit, &[CANARY]);
    assert!(audit.contains("\"outcome\":\"unknown_peer\""), "{audit}");
    assert!(audit.contains(&format!("uid {OTHER_UID}")), "{audit}");
    assert!(audit.contains("\"agent_id\":\"agent-b\""), "{audit}");
}

#[test]
fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let rt = rt();
    let _guard = rt.enter();
    let live = broker_serve::bind_socket(&path, 0o600).unwrap();
    let e = broker_serve::bind_socket(&path, 0o600).unwrap_err();
    assert!(e.message().contains("another daemon"), "{e}");
    drop(live);
    // The file stays behind with nobody accepting: stale, replaced. (Another test thread
    // forking a child may hold the closed listener's fd until its exec: give it a moment.)
    assert!(path.exists());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let _again = loop {
        match broker_serve::bind_socket(&path, 0o600) {
            Ok(l) => break l,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.message().contains("another daemon"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"x").unwrap();
    let e = broker_serve::bind_socket(&path, 0o600).unwrap_err();
    assert!(e.message().contains("not a socket"), "{e}");
}
