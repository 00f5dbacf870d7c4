//! Placeholder mode with `broker run --from` (issue 13): the proxy runs in the daemon, so a
//! `proxy:` credential's value never reaches the agent's broker or its child. The agent's
//! curl calls a local HTTPS upstream (its own test CA, 127.0.0.1) with the placeholder
//! through the daemon's proxy; the upstream sees the value.
#![cfg(all(feature = "serve", feature = "proxy"))]
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use broker_core::testkit::{assert_no_canary, require_peer};

mod proxy_upstream;
mod serve_daemon;

use proxy_upstream::{forwarded, json_lines, read, start_upstream};
use serve_daemon::Daemon;

const CANARY: &str = "sk-live-CANARY-remote-9a8b7c6d5e4f";

const CHILD: &str = r#"
set -u
env > "$OUT/env.txt"
curl -sS --max-time 20 -o "$OUT/echo.json" -w '%{http_code}' \
  -H "Authorization: Bearer $API_KEY" "https://localhost:$UPSTREAM_PORT/remote/echo?q=1" > "$OUT/echo.status"
curl -sS --max-time 20 -o "$OUT/reflect.txt" -w '%{http_code}' \
  -H "Authorization: Bearer $API_KEY" "https://localhost:$UPSTREAM_PORT/reflect" > "$OUT/reflect.status"
curl -sS --max-time 20 -o "$OUT/steal.txt" -w '%{http_code}' \
  -H "Authorization: Bearer $API_KEY" "https://127.0.0.1:$UPSTREAM_PORT/steal" > "$OUT/steal.status"
echo "child holds $API_KEY"
"#;

#[test]
fn a_run_from_the_daemon_gets_a_placeholder_and_the_daemons_proxy() {
    let Some(python) = require_peer("python") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (upstream, port) = start_upstream(&python, dir.path());
    let uid = rustix::process::getuid().as_raw();
    std::fs::write(
        dir.path().join(".broker.yml"),
        format!(
            "egress:\n  enabled: true\n  allow: [self-hosted]\n  \
             proxy: {{ allow_private: true, allow_hosts: [\"127.0.0.1\"], upstream_ca: upstream-ca.pem }}\n\
             credentials:\n  api:\n    ref: \"env:REMOTE_API_SOURCE\"\n    as: API_KEY\n    \
             proxy: {{ hosts: [localhost], placeholder: {{ prefix: sk-live-, length: 32 }} }}\n\
             audit: {{ path: audit.jsonl }}\n\
             serve:\n  listen: run/broker.sock\n  agents: [{{ id: agent-a, uid: {uid} }}]\n"
        ),
    )
    .unwrap();
    let upstream_log = dir.path().join("upstream.jsonl");
    let daemon = Daemon::start(dir, &[("REMOTE_API_SOURCE", CANARY)]);

    // The agent: no config, no value in its environment.
    let work = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(work.path().join("child.sh"), CHILD).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["run", "--from"])
        .arg(&daemon.socket)
        .args(["--", "sh"])
        .arg(work.path().join("child.sh"))
        .current_dir(work.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env("OUT", &out)
        .env("UPSTREAM_PORT", port.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    drop(upstream);
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stdout}\n{stderr}");

    // The child: a placeholder and the daemon's proxy.
    let env = read(out.join("env.txt"));
    let placeholder = env
        .lines()
        .find_map(|l| l.strip_prefix("API_KEY="))
        .unwrap()
        .to_string();
    assert!(placeholder.starts_with("sk-live-") && placeholder.len() == 8 + 32);
    let proxy_url = env
        .lines()
        .find_map(|l| l.strip_prefix("HTTPS_PROXY="))
        .unwrap()
        .to_string();
    assert!(proxy_url.starts_with("http://broker:"), "{proxy_url}");
    assert!(env.contains("NODE_EXTRA_CA_CERTS="));
    // The placeholder is what this run holds, so its output redacts it like a value.
    assert!(stdout.contains("child holds [REDACTED:api]"), "{stdout}");

    // The upstream saw the value; the wrong host got nothing.
    let seen = json_lines(&read(upstream_log));
    let echo = seen
        .iter()
        .find(|r| r["path"] == "/remote/echo?q=1")
        .unwrap();
    assert_eq!(echo["headers"]["authorization"], format!("Bearer {CANARY}"));
    assert!(!seen.iter().any(|r| r["path"] == "/steal"));
    assert_eq!(read(out.join("echo.status")), "200");
    assert_eq!(read(out.join("steal.status")), "403");
    let reflect = read(out.join("reflect.txt"));
    assert!(reflect.contains("Bearer [REDACTED:api]"), "{reflect}");

    // The run ended: so did the daemon's proxy for it.
    let after = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--proxy", &proxy_url])
        .arg(format!("http://localhost:{port}/late"))
        .env_clear()
        .output()
        .unwrap();
    assert!(!after.status.success(), "the run's proxy outlived the run");

    // The daemon's audit log: the resolve, each proxied request and the alert, by agent-a.
    let (logs, audit) = daemon.stop();
    let records = json_lines(&audit);
    let proxied = forwarded(&records);
    assert_eq!(proxied.len(), 2, "{proxied:?}");
    assert!(proxied.iter().all(|r| r["agent_id"] == "agent-a"));
    assert_eq!(proxied[0]["http"]["path"], "/remote/echo");
    let alerts: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["severity"] == "alert" && r["action"] == "proxy")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    for (what, text) in [
        ("client stdout", &stdout),
        ("client stderr", &stderr),
        ("child env", &env),
        ("reflected answer", &reflect),
        ("daemon logs", &logs),
        ("daemon audit log", &audit),
    ] {
        assert_no_canary(what, text, &[CANARY]);
    }
}
