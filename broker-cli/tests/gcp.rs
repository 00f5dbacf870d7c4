//! `broker run` / `broker audit` / `broker doctor` with a `gcp-sm://` credential read from
//! drongo (seeded by Google's official Python client) and `gcp-iam://` tokens minted through
//! the IAM Credentials fake of broker-gcp's test support: exact output and exit codes.
#![cfg(feature = "gcp")]
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

#[path = "../../broker-gcp/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use broker_core::testkit::{self, assert_no_canary, require_peer};
use serde_json::{Value, json};
use support::FakeGoogle;

const PROJECT: &str = "broker-cli-test";
const SA: &str = "deployer@broker-cli-test.iam.gserviceaccount.com";
const API_TOKEN: &str = "gcp-cli-canary-4c1d8e27a95f";
const BROKER_TOKEN: &str = "ya29.broker-cli-own-token-canary";

struct Peers {
    drongo: &'static testkit::Drongo,
    fake: FakeGoogle,
    python: PathBuf,
}

/// One drongo for this test binary, seeded once by Google's Python client.
fn drongo(python: &Path) -> Option<&'static testkit::Drongo> {
    static PEER: std::sync::OnceLock<Option<testkit::Drongo>> = std::sync::OnceLock::new();
    PEER.get_or_init(|| {
        let drongo = testkit::Drongo::start("drongo-cli")?;
        drongo.reset();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker-gcp/tests/support/faithful.py");
        let doc = format!(r#"{{"user":"app","token":"{API_TOKEN}"}}"#);
        let out = Command::new(python)
            .arg(script)
            .args(["sm-seed", &drongo.url(), PROJECT, "api", &doc])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "seeding drongo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(drongo)
    })
    .as_ref()
}

fn peers() -> Option<Peers> {
    let python = require_peer("python")?;
    let drongo = drongo(&python)?;
    let fake = FakeGoogle::start();
    fake.add_account(SA);
    Some(Peers {
        drongo,
        fake,
        python,
    })
}

impl Peers {
    fn project(&self, credentials: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"egress: {{ enabled: true }}
backends:
  gcp:
    endpoint: "{drongo}"
    iam_endpoint: "{fake}"
    auth: {{ method: access_token, token_ref: "env:TEST_GCP_BROKER_TOKEN" }}
audit: {{ path: audit.jsonl }}
credentials:
{credentials}"#,
            drongo = self.drongo.url(),
            fake = self.fake.url,
        );
        std::fs::write(dir.path().join(".broker.yml"), config).unwrap();
        dir
    }

    fn broker(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_broker"))
            .args(args)
            .env_remove("BROKER_LOG")
            .current_dir(dir)
            .env("TEST_GCP_BROKER_TOKEN", BROKER_TOKEN)
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .env_remove("GOOGLE_OAUTH_ACCESS_TOKEN")
            .env_remove("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE")
            .env("BROKER_AGENT_ID", "cli-test")
            .output()
            .unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const CREDENTIALS: &str = r#"  api: { ref: "gcp-sm://broker-cli-test/api#token", as: API_TOKEN }
  deploy:
    mint: "gcp-iam://deployer@broker-cli-test.iam.gserviceaccount.com"
    ttl: 10m
    scope: { actions: ["devstorage.read_only"] }
  gcloud: { mint: "gcp-iam://deployer@broker-cli-test.iam.gserviceaccount.com", kind: file }
"#;

/// The child checks its environment and prints only facts (and one token, to be redacted).
const CHILD: &str = r#"
import os, stat, sys
print("api token ok" if os.environ["API_TOKEN"] == sys.argv[1] else "api token WRONG")
token = os.environ["GOOGLE_OAUTH_ACCESS_TOKEN"]
print("access token minted" if token.startswith("ya29.fake-minted-") else "access token WRONG")
assert "DEPLOY" not in os.environ, "kind: env delivers GOOGLE_OAUTH_ACCESS_TOKEN only"
path = os.environ["CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"]
assert path == os.environ["GCLOUD"], (path, os.environ["GCLOUD"])
assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
print("gcloud token file ok" if open(path).read().startswith("ya29.fake-minted-") else "file WRONG")
print("leak:", token)
"#;

#[test]
fn run_audit_and_doctor_with_gcp_sm_and_gcp_iam() {
    let Some(peers) = peers() else { return };
    let dir = peers.project(CREDENTIALS);

    let audit = peers.broker(dir.path(), &["audit", "--json"]);
    assert_eq!(audit.status.code(), Some(0), "{}", stderr(&audit));
    let manifest: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let rows: Vec<(String, String, String)> = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let d = &e["destinations"][0];
            (
                e["backend"].as_str().unwrap().to_string(),
                d["badge"].as_str().unwrap_or_default().to_string(),
                d["target"]["address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    // Loopback endpoints: the badge follows the endpoint down to self-hosted.
    assert_eq!(
        rows,
        [
            ("gcp".into(), "self-hosted".into(), peers.drongo.url()),
            ("gcp".into(), "self-hosted".into(), peers.fake.url.clone()),
            ("gcp".into(), "self-hosted".into(), peers.fake.url.clone()),
        ],
        "{manifest}"
    );

    let out = peers.broker(
        dir.path(),
        &[
            "run",
            "--",
            peers.python.to_str().unwrap(),
            "-c",
            CHILD,
            API_TOKEN,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "api token ok\naccess token minted\ngcloud token file ok\nleak: [REDACTED:deploy]\n"
    );
    assert_eq!(stderr(&out), "");
    assert_no_canary(
        "broker run output",
        &(stdout(&out) + &stderr(&out)),
        &[API_TOKEN, BROKER_TOKEN],
    );
    let seen_run = peers.fake.seen();
    // The audit log records each credential, never a value.
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_no_canary(
        "audit log",
        &audit,
        &[API_TOKEN, BROKER_TOKEN, "ya29.fake-minted-"],
    );
    for name in ["api", "deploy", "gcloud"] {
        assert!(
            audit.contains(&format!("\"credential\":\"{name}\"")),
            "{name} not audited: {audit}"
        );
    }
    // The broker's own trace logs carry no value either (a fresh run: nothing cached).
    let out = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["run", "--", "true"])
        .current_dir(dir.path())
        .env("TEST_GCP_BROKER_TOKEN", BROKER_TOKEN)
        .env("BROKER_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_no_canary(
        "broker trace logs",
        &(stdout(&out) + &stderr(&out)),
        &[API_TOKEN, BROKER_TOKEN, "ya29.fake-minted-"],
    );
    // What the broker asked IAM Credentials for: one token per credential, the broker's own
    // token as bearer.
    let mut bodies: Vec<Value> = seen_run
        .iter()
        .map(|s| {
            assert_eq!(
                s.path,
                format!("/v1/projects/-/serviceAccounts/{SA}:generateAccessToken")
            );
            assert_eq!(
                s.authorization.as_deref(),
                Some(&*format!("Bearer {BROKER_TOKEN}"))
            );
            serde_json::from_str(&s.body).unwrap()
        })
        .collect();
    bodies.sort_by_key(|b| b["lifetime"].to_string());
    assert_eq!(
        bodies,
        [
            json!({"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "3600s"}),
            json!({"scope": ["https://www.googleapis.com/auth/devstorage.read_only"], "lifetime": "600s"}),
        ]
    );

    let out = peers.broker(dir.path(), &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doctor: Value = serde_json::from_slice(&out.stdout).unwrap();
    let gcp = doctor["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "gcp")
        .unwrap()
        .clone();
    assert_eq!(gcp["detail"], "authenticated (access token)", "{gcp}");
    let out = peers.broker(dir.path(), &["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with("gcp "))
        .unwrap_or_else(|| panic!("no gcp row: {text}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>().join(" "),
        "gcp gcp-sm,gcp-iam yes yes ok authenticated (access token)"
    );
    assert!(text.starts_with("compiled in: "), "{text}");
    assert!(text.lines().next().unwrap().contains(" gcp,"), "{text}");
}

#[test]
fn refusals_are_one_line_with_a_hint_and_exit_69() {
    let Some(peers) = peers() else { return };
    let dir = peers.project(
        r#"  missing: { ref: "gcp-sm://broker-cli-test/missing" }
  refused: { mint: "gcp-iam://denied@broker-cli-test.iam.gserviceaccount.com" }
  toolong: { mint: "gcp-iam://deployer@broker-cli-test.iam.gserviceaccount.com", ttl: 2h }
"#,
    );
    let out = peers.broker(dir.path(), &["run", "--only", "missing", "--", "true"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "error: credential `missing` (gcp-sm://broker-cli-test/missing): secret version projects/broker-cli-test/secrets/missing/versions/latest: no such secret (NOT_FOUND: Secret [projects/broker-cli-test/secrets/missing] not found.)\n\
         hint: check the project, secret, version (a number, `latest` or an alias) and `?location=`; disabled versions can be enabled again, destroyed ones cannot\n"
    );

    let out = peers.broker(dir.path(), &["run", "--only", "refused", "--", "true"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "error: credential `refused` (gcp-iam://denied@broker-cli-test.iam.gserviceaccount.com): Google denied GenerateAccessToken on service account denied@broker-cli-test.iam.gserviceaccount.com (PERMISSION_DENIED: Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).)\n\
         hint: grant the broker's identity roles/iam.serviceAccountTokenCreator on the service account (and on each delegate)\n"
    );

    let seen_before = peers.fake.seen().len();
    let out = peers.broker(dir.path(), &["run", "--only", "toolong", "--", "true"]);
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "error: credential `toolong` (gcp-iam://deployer@broker-cli-test.iam.gserviceaccount.com): `ttl` 7200s is outside what IAM Credentials grants (1s to 1h)\n\
         hint: lower `ttl`; up to 12h needs the org policy iam.allowServiceAccountCredentialLifetimeExtension and `backends.gcp.max_token_lifetime`\n"
    );
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    // Refused before any call.
    assert_eq!(peers.fake.seen().len(), seen_before);
}

#[test]
fn rotate_adds_a_version_the_official_client_reads() {
    let Some(peers) = peers() else { return };
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker-gcp/tests/support/faithful.py");
    let python = |args: &[&str]| -> Value {
        let out = Command::new(&peers.python)
            .arg(&script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    python(&[
        "sm-seed",
        &peers.drongo.url(),
        PROJECT,
        "rotated",
        API_TOKEN,
    ]);
    let dir = peers.project(
        "  rotated: { ref: \"gcp-sm://broker-cli-test/rotated\", disable_previous: true }\n",
    );
    let out = peers.broker(dir.path(), &["rotate", "rotated"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "rotated `rotated`: added version 2 with a new random value for secret projects/broker-cli-test/secrets/rotated and disabled version 1\n"
    );
    assert_eq!(stderr(&out), "");
    let name = |v: &str| format!("projects/{PROJECT}/secrets/rotated/versions/{v}");
    let read = python(&["sm-read", &peers.drongo.url(), &name("latest")]);
    assert_eq!(read["name"], name("2"));
    use base64::Engine as _;
    let value = base64::engine::general_purpose::STANDARD
        .decode(read["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(value.len(), 40);
    assert_ne!(value, API_TOKEN.as_bytes());
    let state = python(&["sm-state", &peers.drongo.url(), &name("1")]);
    assert_eq!(state["state"], "DISABLED");
    // The new value is what `broker run` now delivers.
    let out = peers.broker(
        dir.path(),
        &[
            "run",
            "--",
            "sh",
            "-c",
            "test ${#ROTATED} = 40 && echo delivered",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "delivered\n");
}
