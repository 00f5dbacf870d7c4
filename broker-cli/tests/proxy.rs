//! `broker run` with `proxy:` credentials (issue 13): real clients (curl, Python `requests`
//! and `httpx`, Node 24's `fetch`) in the child call a local HTTPS upstream (its own test CA, on 127.0.0.1,
//! recording what it receives) with the placeholder they were given; the upstream sees the
//! value, the child never does.
//!
//! Only loopback is ever contacted. Blocking of metadata and private addresses is proved in
//! `broker-proxy/tests/proxy.rs` with an injected resolver and a recording dialer.
#![cfg(feature = "proxy")]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use broker_core::testkit::{assert_no_canary, require_peer};

mod proxy_upstream;

use proxy_upstream::{forwarded, json_lines, read, start_upstream};

const CANARY: &str = "sk-live-CANARY-5e1f0a9b3c7d2e48";
const FILE_CANARY: &str = "file-CANARY-0d9c8b7a6f5e4d3c";

/// What the child runs: curl, then Python `requests` and `httpx`, each with the placeholder.
const CHILD: &str = r#"
set -u
U="https://localhost:$UPSTREAM_PORT"
env > "$OUT/env.txt"
"$PY" -c 'import sys; sys.stdout.buffer.write(open("/proc/self/environ", "rb").read())' > "$OUT/proc-environ.txt"
cat "$API_FILE" > "$OUT/file.txt"
curl -sS --max-time 20 -o "$OUT/curl-echo.json" -w '%{http_code}' \
  -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
  -H 'Transfer-Encoding: chunked' --data-binary '{"hello":"world","n":[1,2,3]}' \
  "$U/curl/echo?q=1" > "$OUT/curl-echo.status"
curl -sS --max-time 20 -o /dev/null -w '%{http_code}' \
  -H "X-Api-Key: $(cat "$API_FILE")" "$U/curl/file" > "$OUT/curl-file.status"
curl -sS --max-time 20 -o "$OUT/reflect.txt" -w '%{http_code}' \
  -H "Authorization: Bearer $API_KEY" "$U/reflect" > "$OUT/reflect.status"
curl -sS --max-time 20 -o "$OUT/steal.txt" -w '%{http_code}' \
  -H "Authorization: Bearer $API_KEY" "https://127.0.0.1:$UPSTREAM_PORT/steal" > "$OUT/steal.status"
"$PY" "$OUT/clients.py"
"$NODE" "$OUT/client.mjs"
echo "child done; it holds $API_KEY"
"#;

/// Node's own `fetch` (Node ≥ 24 with `NODE_USE_ENV_PROXY=1`, which the run sets).
const NODE_CLIENT: &str = r#"
import { writeFileSync } from "node:fs";
const out = process.env.OUT;
const url = "https://localhost:" + process.env.UPSTREAM_PORT;
const auth = { authorization: "Bearer " + process.env.API_KEY };
let r = await fetch(url + "/node/echo", {
  method: "POST",
  headers: { ...auth, "content-type": "application/json" },
  body: JSON.stringify({ n: [1, 2, 3] }),
});
writeFileSync(out + "/node.json", JSON.stringify({ status: r.status, body: await r.json() }));
r = await fetch(url + "/reflect", { headers: auth });
writeFileSync(out + "/node-reflect.txt", await r.text());
"#;

const CLIENTS: &str = r#"
import json, os
import httpx, requests
out = os.environ["OUT"]
url = "https://localhost:" + os.environ["UPSTREAM_PORT"]
key = os.environ["API_KEY"]
r = requests.post(url + "/requests/echo", json={"n": [1, 2, 3]},
                  headers={"Authorization": "Bearer " + key}, timeout=20)
json.dump({"status": r.status_code, "body": r.json()}, open(out + "/requests.json", "w"))
r = requests.get(url + "/reflect", headers={"Authorization": "Bearer " + key}, timeout=20)
open(out + "/requests-reflect.txt", "w").write(r.text)
r = httpx.get(url + "/httpx/echo", headers={"X-Api-Key": key}, timeout=20)
json.dump({"status": r.status_code, "body": r.json()}, open(out + "/httpx.json", "w"))
"#;

#[test]
fn clients_in_the_child_reach_the_upstream_with_a_value_they_never_see() {
    let Some(python) = require_peer("python") else {
        return;
    };
    let has_clients = Command::new(&python)
        .args(["-c", "import requests, httpx"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_clients {
        broker_core::testkit::record_skip("Python `requests` and `httpx` are not in the venv");
        return;
    }
    let Some(node) = require_peer("node24") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (upstream, port) = start_upstream(&python, dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("clients.py"), CLIENTS).unwrap();
    std::fs::write(out.join("client.mjs"), NODE_CLIENT).unwrap();
    std::fs::write(dir.path().join("child.sh"), CHILD).unwrap();
    std::fs::write(
        dir.path().join(".broker.yml"),
        r#"egress:
  enabled: true
  allow: [self-hosted]
  proxy: { allow_private: true, allow_hosts: ["127.0.0.1"], upstream_ca: upstream-ca.pem }
credentials:
  api:
    ref: "env:PROXY_TEST_API_SOURCE"
    as: API_KEY
    proxy: { hosts: ["localhost"], placeholder: { prefix: "sk-live-", length: 32 } }
  api_file:
    ref: "env:PROXY_TEST_FILE_SOURCE"
    as: API_FILE
    kind: file
    proxy: { hosts: ["localhost"], headers: [X-Api-Key] }
audit: { path: audit.jsonl }
"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_broker"))
        .current_dir(dir.path())
        .args(["run", "--", "sh"])
        .arg(dir.path().join("child.sh"))
        .env("PROXY_TEST_API_SOURCE", CANARY)
        .env("PROXY_TEST_FILE_SOURCE", FILE_CANARY)
        .env("UPSTREAM_PORT", port.to_string())
        .env("OUT", &out)
        .env("PY", &python)
        .env("NODE", &node)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    drop(upstream);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let canaries = [CANARY, FILE_CANARY];

    // The child's view: placeholders only, in its env, /proc/self/environ, file and output.
    let env = read(out.join("env.txt"));
    let placeholder = env
        .lines()
        .find_map(|l| l.strip_prefix("API_KEY="))
        .unwrap()
        .to_string();
    assert!(placeholder.starts_with("sk-live-") && placeholder.len() == 8 + 32);
    let file_placeholder = read(out.join("file.txt"));
    assert!(file_placeholder.starts_with("broker-placeholder-"));
    for var in [
        "HTTPS_PROXY=http://broker:",
        "HTTP_PROXY=http://broker:",
        "NO_PROXY=\n",
        "NODE_USE_ENV_PROXY=1",
        "SSL_CERT_FILE=",
        "REQUESTS_CA_BUNDLE=",
        "NODE_EXTRA_CA_CERTS=",
        "CURL_CA_BUNDLE=",
        "GIT_SSL_CAINFO=",
    ] {
        assert!(env.contains(var), "{var} missing from the child's env");
    }
    let bundle = env
        .lines()
        .find_map(|l| l.strip_prefix("SSL_CERT_FILE="))
        .unwrap();
    assert!(!Path::new(bundle).exists(), "the CA bundle is wiped");
    for (what, text) in [
        ("child env", env.clone()),
        ("/proc/self/environ", read(out.join("proc-environ.txt"))),
        ("file credential", file_placeholder.clone()),
        ("broker stdout", stdout.clone()),
        ("broker stderr", stderr.clone()),
    ] {
        assert_no_canary(what, &text, &canaries);
    }
    assert!(
        stdout.contains(&format!("it holds {placeholder}")),
        "{stdout}"
    );

    // The upstream's view: the values, in the configured headers.
    let seen = json_lines(&read(dir.path().join("upstream.jsonl")));
    let request = |path: &str| {
        seen.iter()
            .find(|r| r["path"].as_str().unwrap().starts_with(path))
            .unwrap_or_else(|| panic!("{path} not received: {seen:?}"))
    };
    let bearer = format!("Bearer {CANARY}");
    let curl = request("/curl/echo");
    assert_eq!(curl["headers"]["authorization"], bearer.as_str());
    assert_eq!(curl["headers"]["accept-encoding"], "identity");
    assert_eq!(curl["body"], r#"{"hello":"world","n":[1,2,3]}"#);
    assert_eq!(request("/curl/file")["headers"]["x-api-key"], FILE_CANARY);
    let py = request("/requests/echo");
    assert_eq!(py["headers"]["authorization"], bearer.as_str());
    assert_eq!(py["body"], r#"{"n": [1, 2, 3]}"#);
    assert_eq!(request("/httpx/echo")["headers"]["x-api-key"], CANARY);
    let node_request = request("/node/echo");
    assert_eq!(node_request["headers"]["authorization"], bearer.as_str());
    assert_eq!(node_request["body"], r#"{"n":[1,2,3]}"#);
    assert!(
        !seen.iter().any(|r| r["path"] == "/steal"),
        "the placeholder toward another host was forwarded"
    );
    for r in &seen {
        assert!(r["headers"].get("proxy-authorization").is_none());
    }

    // What came back to the clients.
    assert_eq!(read(out.join("curl-echo.status")), "200");
    assert_eq!(read(out.join("curl-file.status")), "200");
    assert_eq!(read(out.join("reflect.status")), "200");
    let echoed: serde_json::Value =
        serde_json::from_str(&read(out.join("curl-echo.json"))).unwrap();
    assert_eq!(echoed["body"], r#"{"hello":"world","n":[1,2,3]}"#);
    let nd: serde_json::Value = serde_json::from_str(&read(out.join("node.json"))).unwrap();
    assert_eq!(nd["status"], 200);
    for file in ["reflect.txt", "requests-reflect.txt", "node-reflect.txt"] {
        let text = read(out.join(file));
        assert!(
            text.contains("you sent: Bearer [REDACTED:api] (twice: Bearer [REDACTED:api])"),
            "{file}: {text}"
        );
        assert_no_canary(file, &text, &canaries);
    }
    let py: serde_json::Value = serde_json::from_str(&read(out.join("requests.json"))).unwrap();
    assert_eq!(py["status"], 200);
    let hx: serde_json::Value = serde_json::from_str(&read(out.join("httpx.json"))).unwrap();
    assert_eq!(hx["status"], 200);
    assert_eq!(read(out.join("steal.status")), "403");
    assert!(read(out.join("steal.txt")).contains("may not be sent to 127.0.0.1"));

    // The audit log: one record per request that used a value, the alert, never a value.
    let audit = read(dir.path().join("audit.jsonl"));
    assert_no_canary("audit log", &audit, &canaries);
    let records = json_lines(&audit);
    let proxied = forwarded(&records);
    assert_eq!(proxied.len(), 8, "{proxied:?}");
    let curl_record = proxied
        .iter()
        .find(|r| r["http"]["path"] == "/curl/echo")
        .unwrap();
    assert_eq!(curl_record["credential"], "api");
    let http = &curl_record["http"];
    assert_eq!(http["method"], "POST");
    assert_eq!(http["status"], 200);
    assert!(http["bytes"].as_u64().is_some(), "{http}");
    assert!(!http.to_string().contains("q=1"), "{http}");
    let alerts: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["severity"] == "alert")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["credential"], "api");
    assert_eq!(alerts[0]["outcome"], "blocked");
    // The proxy's records are links of the same hash chain.
    let verify = Command::new(env!("CARGO_BIN_EXE_broker"))
        .current_dir(dir.path())
        .args(["audit", "verify"])
        .arg(dir.path().join("audit.jsonl"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn a_credential_without_proxy_is_delivered_as_before_and_no_proxy_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".broker.yml"),
        "credentials:\n  plain: { ref: \"env:PROXY_TEST_PLAIN\", as: PLAIN }\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_broker"))
        .current_dir(dir.path())
        .args(["run", "--", "sh", "-c", "env"])
        .env("PROXY_TEST_PLAIN", CANARY)
        .env_remove("HTTPS_PROXY")
        .env_remove("SSL_CERT_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("PLAIN=[REDACTED:plain]"), "{stdout}");
    assert!(!stdout.contains("HTTPS_PROXY="), "{stdout}");
}

#[test]
fn bad_proxy_sections_are_config_errors_naming_the_credential() {
    let dir = tempfile::tempdir().unwrap();
    for (section, expect) in [
        ("{ hosts: [] }", "`hosts` is empty"),
        (
            "{ hosts: [a.example], colour: red }",
            "unknown field `colour`",
        ),
        (
            "{ hosts: [a.example], placeholder: { length: 8 } }",
            "at least 22 random characters",
        ),
    ] {
        std::fs::write(
            dir.path().join(".broker.yml"),
            format!("credentials:\n  api: {{ ref: \"env:PROXY_TEST_X\", proxy: {section} }}\n"),
        )
        .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_broker"))
            .current_dir(dir.path())
            .args(["run", "--", "true"])
            .env("PROXY_TEST_X", CANARY)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{section}");
        assert!(stderr.contains("credential `api`"), "{stderr}");
        assert!(stderr.contains(expect), "{section}: {stderr}");
        assert_no_canary("stderr", &stderr, &[CANARY]);
    }
}

#[test]
fn proxy_hosts_are_destinations_listed_by_audit_and_refused_with_egress_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join(".broker.yml");
    std::fs::write(
        &config,
        "credentials:\n  api:\n    ref: \"env:PROXY_TEST_X\"\n    proxy: { hosts: [api.example.com, \"127.0.0.1\"] }\n",
    )
    .unwrap();
    let broker = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_broker"))
            .current_dir(dir.path())
            .args(args)
            .env("PROXY_TEST_X", CANARY)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let audit = broker(&["audit"]);
    let stdout = String::from_utf8_lossy(&audit.stdout);
    assert!(
        stdout.contains("process env, api.example.com (via proxy), 127.0.0.1 (via proxy)"),
        "{stdout}"
    );
    assert!(stdout.contains("$API, placeholder"), "{stdout}");
    let row = stdout.lines().find(|l| l.starts_with("api ")).unwrap();
    assert!(
        row.contains("managed-cloud") && row.ends_with("refused"),
        "{row}"
    );
    let json = broker(&["audit", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        doc["entries"][0]["proxy_destinations"],
        serde_json::json!([
            { "target": { "type": "host", "address": "api.example.com" }, "badge": "managed-cloud" },
            { "target": { "type": "host", "address": "127.0.0.1" }, "badge": "self-hosted" }
        ])
    );

    // `broker run` refuses before the proxy starts or the child runs.
    let run = broker(&["run", "--", "sh", "-c", "echo ran"]);
    assert_eq!(run.status.code(), Some(77));
    assert!(run.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&run.stderr),
        format!(
            "error: credential `api`: egress is disabled; this would reach api.example.com (managed-cloud)\nhint: set `egress.enabled: true` in {} after reviewing `broker audit`\n",
            config.display()
        )
    );
    assert_no_canary("audit", &stdout, &[CANARY]);
}
