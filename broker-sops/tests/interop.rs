//! Interop with the real Go sops 3.11.0: files it wrote decrypt here to what it prints, and
//! files we rotate decrypt there to the same document. Extra cases are generated at test time.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use broker_core::{CredentialProvider, ErrorKind, Reference, Request, RequestContext};
use broker_sops::{Settings, SopsProvider};
use common::*;

const RECIPIENT: &str = "age1lzd99uklcjnc0e7d860axevet2cz99ce9pq6tzuzd05l5nr28ams36nvun";

const MAC_ONLY_RULE: &str = "creation_rules:\n  - age: age1lzd99uklcjnc0e7d860axevet2cz99ce9pq6tzuzd05l5nr28ams36nvun\n    encrypted_regex: ^(int|multi)$\n    mac_only_encrypted: true\n";

/// Three key groups, any two recover the data key; the third group's key is not ours.
const SHAMIR_RULE: &str = "creation_rules:\n  - shamir_threshold: 2\n    key_groups:\n      - age: [age1lzd99uklcjnc0e7d860axevet2cz99ce9pq6tzuzd05l5nr28ams36nvun]\n      - age: [age1lzd99uklcjnc0e7d860axevet2cz99ce9pq6tzuzd05l5nr28ams36nvun]\n      - age: [age1afnrdrkyvy0sl5e08t9ffs4c7g5e5npc8luf7hjc77syewg5gajsls4r90]\n";

fn sops() -> Option<PathBuf> {
    broker_core::testkit::require_peer("sops")
}

fn keys_file() -> PathBuf {
    fixtures().join("keys/age-keys.txt")
}

fn ssh_identity() -> PathBuf {
    fixtures().join("upstream/age/keysource_test.go.extracted/mockSshIdentity")
}

/// Input/output type flags for a sops invocation on `file`.
fn type_flags(file: &Path, binary: bool) -> Vec<String> {
    if binary {
        vec![
            "--input-type".into(),
            "json".into(),
            "--output-type".into(),
            "binary".into(),
        ]
    } else {
        Vec::new()
    }
    .into_iter()
    .chain(if file.extension().is_some_and(|e| e == "env") {
        vec![
            "--input-type".into(),
            "dotenv".into(),
            "--output-type".into(),
            "dotenv".into(),
        ]
    } else {
        Vec::new()
    })
    .collect()
}

/// `sops decrypt FILE` with the test keys; panics with stderr on failure.
fn sops_decrypt(bin: &Path, file: &Path, binary: bool) -> Vec<u8> {
    let out = Command::new(bin)
        .arg("--disable-version-check")
        .arg("decrypt")
        .args(type_flags(file, binary))
        .arg(file)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SOPS_AGE_KEY_FILE", keys_file())
        .env("SOPS_AGE_SSH_PRIVATE_KEY_FILE", ssh_identity())
        .env("GNUPGHOME", "/nonexistent-broker-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sops decrypt {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `sops encrypt` of `plain` (written into `dir` as `name`) with extra flags; returns the path.
fn sops_encrypt(bin: &Path, dir: &Path, name: &str, plain: &str, flags: &[&str]) -> PathBuf {
    let plain_path = dir.join(format!("plain-{name}"));
    std::fs::write(&plain_path, plain).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("--disable-version-check");
    if flags.first() == Some(&"--config") {
        // A creation rule carries options sops has no flag for (mac_only_encrypted).
        let config = dir.join(format!("{name}.sops.yaml"));
        std::fs::write(&config, flags[1]).unwrap();
        cmd.arg("--config").arg(&config).arg("encrypt");
    } else {
        cmd.arg("encrypt").args(["--age", RECIPIENT]).args(flags);
    }
    let out = cmd
        .arg(&plain_path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sops encrypt {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(name);
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn ssh_provider() -> SopsProvider {
    SopsProvider::new(Settings::default(), fixtures())
        .with_env(env(&[("SOPS_AGE_SSH_PRIVATE_KEY_FILE", &ssh_identity())]))
}

#[tokio::test]
async fn generated_by_sops_3_11_decrypt_like_sops() {
    let Some(bin) = sops() else { return };
    let dir = fixtures().join("generated-sops-3.11.0");
    for name in [
        "secrets.enc.yaml",
        "secrets.enc.json",
        "secrets.enc.env",
        "secrets.enc.ini",
        "secrets.encrypted-regex.enc.yaml",
        "secrets.two-recipients.enc.json",
    ] {
        let file = dir.join(name);
        let got = resolve_ok(&age_provider(), &format!("sops:{}", file.display())).await;
        assert_same_document(&file, &got, &sops_decrypt(&bin, &file, false));
    }
    let file = dir.join("secrets.bin.enc.json");
    let got = resolve_ok(
        &age_provider(),
        &format!("sops:{}?format=binary", file.display()),
    )
    .await;
    assert_eq!(got, sops_decrypt(&bin, &file, true));
    assert_eq!(got, std::fs::read(dir.join("plain/secrets.bin")).unwrap());

    let file = dir.join("secrets.ssh-ed25519.enc.yaml");
    let got = resolve_ok(&ssh_provider(), &format!("sops:{}", file.display())).await;
    assert_same_document(&file, &got, &sops_decrypt(&bin, &file, false));
}

#[tokio::test]
async fn single_values_by_path() {
    let p = age_provider();
    let f = "generated-sops-3.11.0/secrets.enc.yaml";
    for (field, want) in [
        ("db.password", "s3cr3t-pa55"),
        ("db.port", "5432"),
        ("db.tls", "true"),
        ("db.ratio", "0.75"),
        ("api_keys[1]", "key-two"),
        (r#"["db"]["user"]"#, "broker"),
        ("/db/user", "broker"),
        ("multiline", "line one\nline two\n"),
        ("unicode", "héllo wörld ✓"),
        ("public_unencrypted", "not-secret"),
    ] {
        let got = resolve_ok(&p, &format!("sops:{f}#{field}")).await;
        assert_eq!(String::from_utf8(got).unwrap(), want, "#{field}");
    }
    let db = resolve_ok(&p, &format!("sops:{f}#db")).await;
    assert!(
        String::from_utf8(db)
            .unwrap()
            .contains("password: s3cr3t-pa55")
    );
    let got = resolve_ok(&p, "sops:generated-sops-3.11.0/secrets.enc.json#db.port").await;
    assert_eq!(got, b"5432");
    let got = resolve_ok(&p, "sops:generated-sops-3.11.0/secrets.enc.ini#api.key").await;
    assert_eq!(got, b"key-one");
    let got = resolve_ok(&p, "sops:generated-sops-3.11.0/secrets.enc.env#DB_PASSWORD").await;
    assert_eq!(got, b"s3cr3t-pa55");
    let err = resolve(&p, &format!("sops:{f}#db.nope"), &fixtures())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("db.nope"), "{err}");
}

/// Real sops encrypts many shapes; we decrypt them like sops; we rotate; sops decrypts ours.
#[tokio::test]
async fn generated_cases_round_trip_through_rotate() {
    let Some(bin) = sops() else { return };
    let dir = tempfile::tempdir().unwrap();
    let yaml = "# top comment\nnested:\n    deeper:\n        list:\n            - one\n            - 2\n            - 3.5\n            - true\n            - {inner: value}\n        # after the list, in the map\n        multi: |\n            first\n            second\n# between\nunicode_ключ: значение ✓\nempty: \"\"\nnumbers:\n    int: 42\n    neg: -7\n    float: 1.25\n    big: 1234567890\nbools: [true, false]\nnull_value: null\npublic_unencrypted: visible\n";
    let json = "{\n\t\"a\": {\"b\": [1, 2.5, \"three\", false, null]},\n\t\"empty\": \"\",\n\t\"uni\": \"ü✓\",\n\t\"n\": 5432\n}\n";
    let env_text = "# comment\nA=1\nB=with spaces\nC=multi\\nline\nEMPTY=\n";
    let ini = "; head\n[s1]\nk1 = v1\nk2 = 2\n\n[s2]\nk = x y z\n";
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("full.yaml", yaml, vec![]),
        (
            "regex.yaml",
            yaml,
            vec!["--encrypted-regex", "^(int|multi|list)$"],
        ),
        (
            "unregex.yaml",
            yaml,
            vec!["--unencrypted-regex", "^numbers$"],
        ),
        ("suffix.yaml", yaml, vec!["--encrypted-suffix", "_secret"]),
        ("maconly.yaml", yaml, vec!["--config", MAC_ONLY_RULE]),
        ("shamir.yaml", yaml, vec!["--config", SHAMIR_RULE]),
        ("full.json", json, vec![]),
        ("full.env", env_text, vec![]),
        ("full.ini", ini, vec![]),
        (
            "groups.yaml",
            yaml,
            vec!["--shamir-secret-sharing-threshold", "1", "--age", RECIPIENT],
        ),
    ];
    let p = SopsProvider::new(Settings::default(), dir.path())
        .with_env(env(&[("SOPS_AGE_KEY_FILE", &keys_file())]));
    for (name, plain, flags) in cases {
        let file = sops_encrypt(&bin, dir.path(), name, plain, &flags);
        let want = sops_decrypt(&bin, &file, false);
        let got = resolve_ok_at(&p, &file).await;
        assert_same_document(&file, &got, &want);

        let before = std::fs::read(&file).unwrap();
        rotate(&p, &file).await;
        let after = std::fs::read(&file).unwrap();
        assert_ne!(before, after, "{name}: rotate rewrote nothing");
        assert_same_document(&file, &sops_decrypt(&bin, &file, false), &want);
        assert_same_document(&file, &resolve_ok_at(&p, &file).await, &want);
    }
    // Binary: rotate keeps the blob.
    let blob = "line one\nline two\n\u{1F511}\n";
    let file = sops_encrypt(&bin, dir.path(), "blob.bin", blob, &[]);
    rotate(&p, &file).await;
    assert_eq!(sops_decrypt(&bin, &file, true), blob.as_bytes());
}

async fn resolve_ok_at(p: &SopsProvider, file: &Path) -> Vec<u8> {
    resolve(p, &format!("sops:{}", file.display()), Path::new("/"))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

async fn rotate(p: &SopsProvider, file: &Path) {
    let reference: Reference = format!("sops:{}", file.display()).parse().unwrap();
    let ctx = RequestContext::new();
    let req = Request::new(&reference, Path::new("/"), &ctx);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file).unwrap().permissions());
    let r = p
        .rotate(&req)
        .await
        .unwrap_or_else(|e| panic!("rotate {}: {e}", file.display()));
    assert!(r.summary.contains("new data key"), "{}", r.summary);
    let after =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file).unwrap().permissions());
    assert_eq!(mode, after, "rotate kept the file mode");
}
