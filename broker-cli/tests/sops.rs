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
    let out = broker(d, &["get", "--reveal", "db_password"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, PASSWORD.as_bytes());
    let out = broker(d, &["get", "--reveal", "first_key"]);
    assert_eq!(out.stdout, b"key-one", "{}", text(&out));
    let out = broker(d, &["get", "--reveal", "dotenv_key"]);
    assert_eq!(out.stdout, b"key-one", "{}", text(&out));

    let out = broker(d, &["get", "--reveal", "whole_file"]);
    assert!(out.status.success(), "{}", text(&out));
    let doc = String::from_utf8(out.stdout).unwrap();
    assert!(
        doc.contains("password: s3cr3t-pa55") && doc.contains("- key-two"),
        "{doc}"
    );

    let out = broker(d, &["get", "--reveal", "whole_env"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("kind: file") && t.contains("#some.key"), "{t}");
    assert_no_canary("whole-document env error", &t, &[PASSWORD, "key-one"]);

    let out = broker(d, &["audit", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("kms.eu-west-1.amazonaws.com"), "{t}");
    assert_no_canary("audit", &t, &[PASSWORD, "key-one"]);

    let out = broker(d, &["get", "--reveal", "kms"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("egress") && t.contains("kms.eu-west-1.amazonaws.com"),
        "{t}"
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
    assert!(out.status.success(), "{}", text(&out));
    assert_no_canary("rotate output", &text(&out), &[PASSWORD]);
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
    assert_eq!(out.stdout, PASSWORD.as_bytes(), "{}", text(&out));
}
