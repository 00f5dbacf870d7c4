//! Running the daemon: SIGHUP reloads, blocks that survive a restart, the denial-storm alert,
//! the admin listener (metrics, readiness), connection caps and slow clients.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use broker_core::testkit::assert_no_canary;
use broker_env as _;
use common::{Daemon, free_port, http_get, kind_of, wait_for_audit, wait_for_port};

const CANARY: &str = "canary-serve-operations-5e0b2a71c4";
const AGENT_B_UID: u32 = 65533;

#[test]
#[ignore = "run by the other tests as the daemon process"]
fn daemon_child() {
    common::daemon_main();
}

fn config(extra_credentials: &str, serve_extra: &str) -> String {
    config_alerting(extra_credentials, serve_extra, "/dev/null")
}

/// [`config`] with `alert.command` appending to `alerts`.
fn config_alerting(extra_credentials: &str, serve_extra: &str, alerts: &str) -> String {
    let uid = rustix::process::getuid().as_raw();
    format!(
        "credentials:\n  api: {{ ref: \"env:BROKER_SERVE_TEST_CANARY\", as: API_TOKEN }}\n{extra_credentials}\
         audit: {{ path: audit.jsonl }}\n\
         alert: {{ command: \"cat >> '{alerts}'\" }}\n\
         serve:\n  listen: run/broker.sock\n  agents:\n    - {{ id: agent-a, uid: {uid} }}\n\
         \x20   - {{ id: agent-b, uid: {AGENT_B_UID} }}\n\
         \x20 admins: [{{ uid: {uid} }}]\n{serve_extra}"
    )
}

const ENV: &[(&str, &str)] = &[("BROKER_SERVE_TEST_CANARY", CANARY)];

#[test]
fn sighup_reloads_a_good_config_and_keeps_the_old_one_when_the_new_one_fails() {
    let d = Daemon::start(&config("", ""), ENV);
    let a = d.call("POST", "/v1/credentials/new", "{}");
    assert_eq!(
        (a.status, kind_of(&a).as_str()),
        (404, "unknown_credential")
    );

    let path = d.dir.path().join(".broker.yml");
    std::fs::write(
        &path,
        config(
            "  new: { ref: \"env:BROKER_SERVE_TEST_CANARY\", as: NEW }\n",
            "",
        ),
    )
    .unwrap();
    d.signal("HUP");
    wait_for_audit(&d, "\"outcome\":\"config_reloaded\"");
    let a = d.call("POST", "/v1/credentials/new", "{}");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));

    std::fs::write(&path, "credentials: [this is not a map\n").unwrap();
    d.signal("HUP");
    let audit = wait_for_audit(&d, "\"outcome\":\"config_reload_failed\"");
    let a = d.call("POST", "/v1/credentials/new", "{}");
    assert_eq!(a.status, 200, "the old config stays in force");
    let (logs, audit_after) = d.stop();
    assert!(
        logs.contains("reload failed, the old config stays in force"),
        "{logs}"
    );
    for text in [&logs, &audit, &audit_after] {
        assert_no_canary("daemon output", text, &[CANARY]);
    }
}

#[test]
fn a_block_survives_a_restart_and_the_state_file_is_private_and_secret_free() {
    let d = Daemon::start(&config("", ""), ENV);
    let a = d.call("POST", "/v1/agents/agent-a/block", "");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = d.call("POST", "/v1/credentials/api", "{}");
    assert_eq!((a.status, kind_of(&a).as_str()), (403, "agent_blocked"));
    let (_, dir) = d.stop_keeping_dir();

    let state = dir.path().join(".broker/serve-state.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("agent-a"), "{text}");
    assert_no_canary("state file", &text, &[CANARY]);

    let d = Daemon::start_in(dir, &config("", ""), ENV);
    let a = d.call("POST", "/v1/credentials/api", "{}");
    assert_eq!(
        (a.status, kind_of(&a).as_str()),
        (403, "agent_blocked"),
        "still blocked after a restart"
    );
    let a = d.call("POST", "/v1/agents/agent-a/unblock", "");
    assert_eq!(a.status, 200);
    let a = d.call("POST", "/v1/credentials/api", "{}");
    assert_eq!(a.status, 200);
    d.stop();
}

#[test]
fn a_denial_storm_raises_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let alerts_path = dir.path().join("alerts.jsonl");
    let d = Daemon::start_in(
        dir,
        &config_alerting(
            "",
            "  denials: { threshold: 3, window: 60s }\n",
            alerts_path.to_str().unwrap(),
        ),
        ENV,
    );
    for name in ["probe-1", "probe-2", "probe-3"] {
        let a = d.call("POST", &format!("/v1/credentials/{name}"), "{}");
        assert_eq!(a.status, 404);
    }
    let audit = wait_for_audit(&d, "\"outcome\":\"denial_storm\"");
    // An unmapped peer is counted by its uid, whatever its pid: three processes, one storm.
    if common::can_switch_uid() {
        d.open_to_all();
        for _ in 0..3 {
            let (status, _) =
                common::curl_as(65534, &d.socket, "POST", "/v1/credentials/api", "{}");
            assert_eq!(status, 403);
        }
        wait_for_audit(&d, "refusals of `uid:65534`");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&alerts_path)
        .unwrap_or_default()
        .contains("denial_storm")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "alert.command did not run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let alert = std::fs::read_to_string(&alerts_path).unwrap();
    assert!(alert.contains("\"agent_id\":\"agent-a\""), "{alert}");
    assert!(audit.contains("\"severity\":\"alert\""), "{audit}");
    let (logs, _) = d.stop();
    for text in [&logs, &audit, &alert] {
        assert_no_canary("daemon output", text, &[CANARY]);
    }
}

#[test]
fn the_admin_listener_serves_metrics_and_readiness_without_values() {
    let port = free_port();
    let d = Daemon::start(
        &config(
            "",
            &format!("  admin: {{ listen: \"127.0.0.1:{port}\" }}\n"),
        ),
        ENV,
    );
    wait_for_port(port);
    assert_eq!(d.call("POST", "/v1/credentials/api", "{}").status, 200);
    assert_eq!(d.call("POST", "/v1/credentials/nope", "{}").status, 404);
    let (status, metrics) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("broker_serve_requests_total{route=\"credentials\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("broker_serve_refusals_total{kind=\"unknown_credential\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("broker_serve_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert_eq!(http_get(port, "/readyz").0, 200);
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert_eq!(
        http_get(port, "/v1/credentials/api").0,
        404,
        "the API is not on the admin port"
    );
    let (logs, audit) = d.stop();
    for text in [&metrics, &logs, &audit] {
        assert_no_canary("daemon output", text, &[CANARY]);
    }
}

/// Raises this process's open-file limit to `want` (or as far as allowed); the limit got.
fn raise_nofile(want: u64) -> u64 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = limit.maximum.unwrap_or(want);
    let soft = want.min(hard);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(soft),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    soft
}

#[test]
fn ten_thousand_idle_connections_and_a_slow_client_do_not_starve_others() {
    let d = Daemon::start(
        &config(
            "",
            "  header_timeout: 1s\n  limits: { connections: 20000, connections_per_peer: 64 }\n",
        ),
        ENV,
    );
    d.open_to_all();
    let limit = raise_nofile(10_400);
    let count = (limit.saturating_sub(300) as usize).min(10_000);
    eprintln!("opening {count} idle connections (open-file limit {limit})");
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        match UnixStream::connect(&d.socket) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect failed after {} connections: {e}", idle.len()),
        }
    }
    // Another uid is still served while this uid sits on (far more than) its cap.
    if common::can_switch_uid() {
        let (status, body) =
            common::curl_as(AGENT_B_UID, &d.socket, "POST", "/v1/credentials/api", "{}");
        assert_eq!(status, 200, "{body}");
    }
    // The idle connections past this uid's cap were closed at once.
    let mut closed = 0;
    for s in idle.iter_mut().skip(64).take(200) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        if matches!(s.read(&mut buf), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 200, "connections over the per-peer cap are closed");
    // The first 64 were idle past the header timeout: hyper drops them too.
    let first = &mut idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    drop(idle);

    // A client that sends half its headers is cut off; the daemon keeps serving.
    let mut slow = UnixStream::connect(&d.socket).unwrap();
    slow.write_all(b"POST /v1/credentials/api HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let n = slow.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = d.call("POST", "/v1/credentials/api", "{}");
        if a.status == 200 {
            break;
        }
        // The closed connections may take a moment to leave the per-peer count.
        assert!(
            std::time::Instant::now() < deadline,
            "not served: {}",
            a.status
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (logs, audit) = d.stop();
    for text in [&logs, &audit] {
        assert_no_canary("daemon output", text, &[CANARY]);
    }
}

#[test]
fn a_placeholder_mode_credential_is_never_served() {
    let d = Daemon::start(
        &config(
            "  hidden: { ref: \"env:BROKER_SERVE_TEST_CANARY\", as: HIDDEN, proxy: { hosts: [api.example.com] } }\n",
            "",
        ),
        ENV,
    );
    let a = d.call("POST", "/v1/credentials/hidden", "{}");
    assert_eq!((a.status, kind_of(&a).as_str()), (403, "proxy_only"));
    let manifest = String::from_utf8_lossy(&d.call("GET", "/v1/manifest", "").body).to_string();
    assert!(manifest.contains("\"api\""), "{manifest}");
    assert!(!manifest.contains("hidden"), "{manifest}");
    let body = String::from_utf8_lossy(&a.body).to_string();
    let (logs, audit) = d.stop();
    for text in [&body, &manifest, &logs, &audit] {
        assert_no_canary("daemon output", text, &[CANARY]);
    }
    assert!(audit.contains("\"outcome\":\"proxy_only\""), "{audit}");
}
