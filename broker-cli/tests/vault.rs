//! `broker run` with `vault:` credentials (a KV field, a whole secret as a file, a minted child
//! token) against a fresh OpenBao dev server; the broker authenticates with `$VAULT_TOKEN`.
#![cfg(feature = "vault")]
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use broker_core::testkit::{OpenBao, assert_no_canary};

const DB_URL: &str = "postgres://app:canary-vault-cli-51f0@db/app";
const ROOT: &str = "canary-root-token-cli-8c1e";

struct Bao {
    server: OpenBao,
}

impl Bao {
    fn start() -> Option<Bao> {
        OpenBao::start(ROOT, "bao-cli").map(|server| Bao { server })
    }

    fn bao(&self, args: &[&str]) {
        self.server.bao(args);
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn broker(bao: &Bao, dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .current_dir(dir)
        .env("VAULT_TOKEN", ROOT)
        .env("HOME", bao.server.home.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                bao.server.bin.parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env_remove("VAULT_ADDR")
        .env_remove("BAO_TOKEN")
        .env_remove("BAO_ADDR")
        .output()
        .unwrap()
}

const CHILD: &str = r#"
[ "$DATABASE_URL" = "$1" ] && echo db-ok
grep -q '"user":"alice"' "$APP_JSON" && echo file-ok
[ "$(stat -c %a "$APP_JSON")" = 600 ] && echo file-mode-ok
BAO_ADDR="$2" BAO_TOKEN="$CHILD_TOKEN" bao token lookup -format=json > /dev/null && echo token-ok
exit 7
"#;

#[test]
fn run_with_vault_credentials() {
    let Some(bao) = Bao::start() else { return };
    bao.bao(&[
        "kv",
        "put",
        "secret/staging",
        &format!("url={DB_URL}"),
        "user=alice",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let url = bao.server.peer.url();
    std::fs::write(
        dir.path().join(".broker.yml"),
        format!(
            r#"egress: {{ enabled: true }}
backends:
  vault: {{ address: "{url}" }}
credentials:
  db:  {{ ref: "vault:secret/staging#url", as: DATABASE_URL }}
  app: {{ ref: "vault:secret/data/staging", as: APP_JSON, kind: file }}
  ci:  {{ mint: "vault:auth/token/create?policies=default&num_uses=3", ttl: 10m, as: CHILD_TOKEN }}
"#
        ),
    )
    .unwrap();

    let audit = broker(&bao, dir.path(), &["audit", "--json"]);
    assert_eq!(audit.status.code(), Some(0), "{}", text(&audit));
    assert_eq!(stderr(&audit), "");
    let manifest: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    for entry in manifest["entries"].as_array().unwrap() {
        assert_eq!(entry["backend"], "vault");
        assert_eq!(entry["badge"], "self-hosted", "{entry}");
        assert_eq!(
            entry["destinations"],
            serde_json::json!([
                { "target": { "type": "host", "address": url }, "badge": "self-hosted" }
            ]),
            "{entry}"
        );
    }

    let out = broker(
        &bao,
        dir.path(),
        &["run", "--", "sh", "-c", CHILD, "child", DB_URL, &url],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(7), "{all}");
    assert_eq!(stdout(&out), "db-ok\nfile-ok\nfile-mode-ok\ntoken-ok\n");
    assert_eq!(stderr(&out), "");
    assert_no_canary("broker run output", &all, &[DB_URL, ROOT]);

    // Without egress the same config is refused before any request.
    let cfg = std::fs::read_to_string(dir.path().join(".broker.yml")).unwrap();
    std::fs::write(
        dir.path().join(".broker.yml"),
        cfg.replace("enabled: true", "enabled: false"),
    )
    .unwrap();
    let out = broker(&bao, dir.path(), &["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!(
            "error: credential `db` (vault:secret/staging#url): egress is disabled; this would reach {url} (self-hosted)\n\
             hint: set `egress.enabled: true` in {} after reviewing `broker audit`\n",
            dir.path().join(".broker.yml").display()
        )
    );
}

/// Watches the token file until its content changes, then proves the new token works and that
/// printing it is redacted (only a redactor extended with the re-minted value can do that).
const WATCH: &str = r#"
first=$(cat "$TOKEN_FILE")
i=0
while [ $i -lt 150 ]; do
  sleep 0.1
  now=$(cat "$TOKEN_FILE")
  if [ "$now" != "$first" ]; then
    echo reminted
    [ "$(stat -c %a "$TOKEN_FILE")" = 600 ] && echo mode-ok
    BAO_ADDR="$1" BAO_TOKEN="$now" bao token lookup -format=json > /dev/null && echo new-token-ok
    echo "new: $now"
    exit 0
  fi
  i=$((i+1))
done
echo never-reminted
exit 1
"#;

#[test]
fn minted_file_credential_is_reminted_during_a_long_run() {
    let Some(bao) = Bao::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = bao.server.peer.url();
    // A 4 s token: the refresh margin is capped at half the TTL, so it is re-minted after ~2 s.
    std::fs::write(
        dir.path().join(".broker.yml"),
        format!(
            r#"egress: {{ enabled: true }}
backends:
  vault: {{ address: "{url}" }}
credentials:
  tok: {{ mint: "vault:auth/token/create?policies=default", ttl: 4s, as: TOKEN_FILE, kind: file }}
"#
        ),
    )
    .unwrap();
    let out = broker(
        &bao,
        dir.path(),
        &["run", "--", "sh", "-c", WATCH, "watch", &url],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(
        stdout(&out),
        "reminted\nmode-ok\nnew-token-ok\nnew: [REDACTED:tok]\n"
    );
    assert_eq!(stderr(&out), "");
    assert_no_canary("broker run output", &all, &[ROOT]);
}

/// A local HTTP server on 127.0.0.1 that answers every request with `response` (a whole HTTP
/// response), or resets the connection when `response` is empty. Returns the address and
/// the number of requests seen.
fn canned_server(
    response: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (addr, count)
}

/// Runs `broker` in `dir` against a Vault at `addr` (`VAULT_TOKEN` set, nothing else).
fn broker_at(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .current_dir(dir)
        .env("VAULT_TOKEN", ROOT)
        .env("HOME", dir)
        .env_remove("VAULT_ADDR")
        .env_remove("BAO_TOKEN")
        .env_remove("BAO_ADDR")
        .env_remove("BROKER_CONFIG")
        .env_remove("BROKER_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn project_at(addr: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".broker.yml"),
        format!(
            "egress: {{ enabled: true }}\nbackends:\n  vault: {{ address: \"{addr}\" }}\ncredentials:\n  db: {{ ref: \"vault:secret/app#url\" }}\naudit: {{ path: audit.jsonl }}\n{extra}"
        ),
    )
    .unwrap();
    dir
}

fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Issue 10, defect 2: Vault answering 503 (or resetting connections) is an outage: the
/// client's own retries run out after 4 attempts, the failure record says `severity: alert`
/// with `attempts: 4`, and `alert.command` runs.
#[test]
fn a_vault_outage_raises_the_alert() {
    const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 29\r\nconnection: close\r\n\r\n{\"errors\":[\"upstream error\"]}";
    for response in [UNAVAILABLE, ""] {
        let (addr, count) = canned_server(response);
        let dir = project_at(&addr, "alert: { command: \"cat > alert.json\" }\n");
        let out = broker_at(dir.path(), &["get", "db", "--reveal"]);
        assert_eq!(out.status.code(), Some(75), "{}", text(&out));
        let expected = if response.is_empty() {
            format!(
                "error: credential `db` (vault:secret/app#url): cannot reach Vault at {addr} while looking up the broker's token (request failed: connection closed before message completed; 4 attempts)\nhint: check `address` (or $VAULT_ADDR), the network, and TLS settings (ca_cert)\n"
            )
        } else {
            "error: credential `db` (vault:secret/app#url): Vault failed while looking up the broker's token (HTTP 503: upstream error; gave up after 4 attempts)\n".to_string()
        };
        assert_eq!(stdout(&out), "");
        assert_eq!(stderr(&out), expected);
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 4);
        let records = audit_records(dir.path());
        let failure = records.last().unwrap();
        assert_eq!(failure["event"], "failure", "{failure}");
        assert_eq!(failure["severity"], "alert", "{failure}");
        assert_eq!(failure["attempts"], 4, "{failure}");
        let alert: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("alert.json")).unwrap()).unwrap();
        assert_eq!(alert["severity"], "alert");
        assert_eq!(alert["attempts"], 4);
        assert_eq!(alert["credential"], "db");
        assert_no_canary("outage", &(text(&out) + &alert.to_string()), &[ROOT]);
    }
}

/// Issue 10, defect 9: a redirect (never followed) or a body that is not JSON is an answer
/// the broker cannot use: exit 69 with a message naming it, not 70 ("a bug").
#[test]
fn unusable_vault_answers_exit_69() {
    const REDIRECT: &str = "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:9/v1/auth/token/lookup-self\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    const NOT_JSON: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 15\r\nconnection: close\r\n\r\n<html>hi</html>";
    for response in [REDIRECT, NOT_JSON] {
        let (addr, count) = canned_server(response);
        let dir = project_at(&addr, "");
        let out = broker_at(dir.path(), &["get", "db", "--reveal"]);
        assert_eq!(out.status.code(), Some(69), "{}", text(&out));
        let expected = if response == REDIRECT {
            format!(
                "error: credential `db` (vault:secret/app#url): unexpected answer from Vault at {addr} while looking up the broker's token (HTTP 307: a redirect, which the broker does not follow)\nhint: point `address` (or $VAULT_ADDR) at the server the redirect names, after checking it\n"
            )
        } else {
            "error: credential `db` (vault:secret/app#url): Vault answered with a body that is not JSON\nhint: check that `address` (or $VAULT_ADDR) names the Vault server itself, not a proxy or a web page\n".to_string()
        };
        assert_eq!(stdout(&out), "");
        assert_eq!(stderr(&out), expected);
        // One request: the redirect is not followed, and neither is retried.
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
