//! The built `broker` binary with `sops:` credentials: `get` of one key and of a whole file,
//! `kind: env` on a whole document refused with a hint, `audit` (local, egress off), a
//! KMS-only file refused by the egress gate, and `rotate` (real sops 3.11.0 still decrypts).
#![cfg(feature = "sops")]
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use broker_core::testkit::{assert_no_canary, require_peer};

const PASSWORD: &str = "s3cr3t-pa55";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker-sops/tests/fixtures")
}

fn broker(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("SOPS_AGE_KEY_FILE", fixtures().join("keys/age-keys.txt"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
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

/// What `get --reveal whole_file` prints: the decrypted document, re-serialised.
const WHOLE_FILE: &str = "db:
    user: broker
    password: s3cr3t-pa55
    port: 5432
    tls: true
    ratio: 0.75
api_keys:
    - key-one
    - key-two
multiline: |
    line one
    line two
unicode: h\u{e9}llo w\u{f6}rld \u{2713}
public_unencrypted: not-secret
";

const KMS_ONLY: &str = "secret: ENC[AES256_GCM,data:AAAA,iv:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]
sops:
    kms:
        - arn: arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
          enc: AQICAHhexample
    lastmodified: \"2026-01-01T00:00:00Z\"
    mac: ENC[AES256_GCM,data:AAAA,iv:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]
    version: 3.11.0
";

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["secrets.enc.yaml", "secrets.enc.env"] {
        std::fs::copy(
            fixtures().join("generated-sops-3.11.0").join(f),
            dir.path().join(f),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("kms.yaml"), KMS_ONLY).unwrap();
    std::fs::write(
        dir.path().join(".broker.yml"),
        "credentials:\n  db_password: { ref: \"sops:secrets.enc.yaml#db.password\", as: DB_PASSWORD }\n  \
         first_key: { ref: 'sops:secrets.enc.yaml#[\"api_keys\"][0]', as: FIRST_KEY }\n  \
         whole_file: { ref: \"sops:secrets.enc.yaml\", as: SECRETS_FILE, kind: file }\n  \
         whole_env: { ref: \"sops:secrets.enc.yaml\", as: SECRETS_ENV }\n  \
         dotenv_key: { ref: \"sops:secrets.enc.env#API_KEY\", as: API_KEY }\n  \
         kms: { ref: \"sops:kms.yaml#secret\", as: KMS_SECRET }\n",
    )
    .unwrap();
    dir
}

#[test]
fn get_audit_and_refusals() {
    let dir = setup();
    let d = dir.path();
    for (name, value) in [
        ("db_password", PASSWORD),
        ("first_key", "key-one"),
        ("dotenv_key", "key-one"),
        ("whole_file", WHOLE_FILE),
    ] {
        let out = broker(d, &["get", "--reveal", name]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        assert_eq!(stdout(&out), value, "{name}");
        assert_eq!(stderr(&out), "", "{name}");
    }

    let out = broker(d, &["get", "--reveal", "whole_env"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "error: credential `whole_env` (sops:secrets.enc.yaml): the whole yaml document cannot be delivered as one environment variable\n\
         hint: select one key (`sops:secrets.enc.yaml#some.key`) or use `kind: file`\n"
    );

    let out = broker(d, &["audit", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(stderr(&out), "");
    let t = text(&out);
    assert_no_canary("audit", &t, &[PASSWORD, "key-one"]);
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kms = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["credential"] == "kms")
        .unwrap();
    assert_eq!(
        kms["destinations"],
        serde_json::json!([
            { "target": { "type": "file", "address": d.join("kms.yaml") }, "badge": "local" },
            { "target": { "type": "host", "address": "https://kms.eu-west-1.amazonaws.com" }, "badge": "managed-cloud" },
        ]),
        "{t}"
    );
    assert_eq!(kms["allowed"], false, "{t}");

    let out = broker(d, &["get", "--reveal", "kms"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!(
            "error: credential `kms` (sops:kms.yaml#secret): egress is disabled; this would reach https://kms.eu-west-1.amazonaws.com (managed-cloud)\n\
             hint: set `egress.enabled: true` in {} after reviewing `broker audit`\n",
            d.join(".broker.yml").display()
        )
    );
}

#[test]
fn rotate_then_real_sops_decrypts() {
    let Some(sops) = require_peer("sops") else {
        return;
    };
    let dir = setup();
    let d = dir.path();
    let before = std::fs::read(d.join("secrets.enc.yaml")).unwrap();
    let out = broker(d, &["rotate", "db_password"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "rotated `db_password`: re-encrypted {} with a new data key for 1 master key\n",
            d.join("secrets.enc.yaml").display()
        )
    );
    assert_eq!(stderr(&out), "");
    assert_ne!(before, std::fs::read(d.join("secrets.enc.yaml")).unwrap());
    let out = Command::new(sops)
        .args([
            "--disable-version-check",
            "decrypt",
            "--extract",
            "[\"db\"][\"password\"]",
        ])
        .arg(d.join("secrets.enc.yaml"))
        .env("SOPS_AGE_KEY_FILE", fixtures().join("keys/age-keys.txt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, PASSWORD.as_bytes());
    let out = broker(d, &["get", "--reveal", "db_password"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(stdout(&out), PASSWORD);
}
