//! Tampering, missing MACs, wrong and missing keys, network master keys: always refused with
//! a value-free error of the right kind.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use broker_core::testkit::{Conformance, assert_no_canary};
use broker_core::{Badge, CredentialProvider, ErrorKind, Reference};
use broker_sops::{Settings, SopsProvider};
use common::*;

/// Plaintext values of generated-sops-3.11.0/secrets.enc.yaml: must never show in errors.
const CANARIES: &[&str] = &["s3cr3t-pa55", "key-one", "key-two", "héllo wörld"];

fn generated_yaml() -> String {
    std::fs::read_to_string(fixtures().join("generated-sops-3.11.0/secrets.enc.yaml")).unwrap()
}

async fn refused(text: &str, name: &str) -> broker_core::Error {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), text).unwrap();
    let p = SopsProvider::new(Settings::default(), dir.path()).with_env(env(&[(
        "SOPS_AGE_KEY_FILE",
        &fixtures().join("keys/age-keys.txt"),
    )]));
    let err = resolve(&p, &format!("sops:{name}#db.password"), dir.path())
        .await
        .expect_err("tampered file must be refused");
    assert_no_canary("error", &format!("{err} {err:?}"), CANARIES);
    err
}

fn line_with<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap()
}

#[tokio::test]
async fn tampering_is_refused() {
    let doc = generated_yaml();
    // A flipped ciphertext character: GCM refuses.
    let user = line_with(&doc, "user:");
    let flipped = user.replacen("data:W", "data:X", 1);
    let err = refused(&doc.replace(user, &flipped), "flip.yaml").await;
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(err.to_string().contains("AES-GCM"), "{err}");

    // Two values swapped between keys: their AAD (key path) no longer matches.
    let (user, pass) = (line_with(&doc, "user:"), line_with(&doc, "password:"));
    let swapped = doc
        .replace(user, "@@USER@@")
        .replace(pass, &pass.replace("password:", "user:"))
        .replace("@@USER@@", &user.replace("user:", "password:"));
    let err = refused(&swapped, "swap.yaml").await;
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");

    // Two list elements reordered: same AAD, but the MAC covers order.
    let keys: Vec<&str> = doc.lines().filter(|l| l.starts_with("    - ENC")).collect();
    let reordered = doc
        .replace(keys[0], "@@0@@")
        .replace(keys[1], keys[0])
        .replace("@@0@@", keys[1]);
    let err = refused(&reordered, "reorder.yaml").await;
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(err.to_string().contains("MAC mismatch"), "{err}");

    // A dropped value.
    let dropped = doc.replace(&format!("{}\n", line_with(&doc, "ratio:")), "");
    let err = refused(&dropped, "drop.yaml").await;
    assert!(err.to_string().contains("MAC mismatch"), "{err}");

    // An injected cleartext value (the unencrypted suffix keeps it in clear, the MAC covers it).
    let injected = doc.replace(
        "public_unencrypted:",
        "evil_unencrypted: 1\npublic_unencrypted:",
    );
    let err = refused(&injected, "inject.yaml").await;
    assert!(err.to_string().contains("MAC mismatch"), "{err}");

    // A changed cleartext value.
    let changed = doc.replace("not-secret", "changed");
    let err = refused(&changed, "changed.yaml").await;
    assert!(err.to_string().contains("MAC mismatch"), "{err}");

    // lastmodified is the MAC's AAD.
    let lm = line_with(&doc, "lastmodified:");
    let err = refused(
        &doc.replace(lm, "    lastmodified: \"2030-01-01T00:00:00Z\""),
        "lm.yaml",
    )
    .await;
    assert!(err.to_string().contains("MAC mismatch"), "{err}");

    // No MAC at all.
    let nomac = doc.replace(&format!("{}\n", line_with(&doc, "mac:")), "");
    let err = refused(&nomac, "nomac.yaml").await;
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(err.to_string().contains("MAC mismatch"), "{err}");
}

#[tokio::test]
async fn upstream_no_mac_is_refused() {
    // Only a PGP key wraps it: without that key it stops before the MAC (tests/pgp.rs checks
    // the "no MAC" refusal with the key); never a value either way.
    let err = resolve(
        &age_provider(),
        "sops:upstream/functional-tests/res/no_mac.yaml",
        &fixtures(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConfigured, "{err}");
    let err = resolve(
        &pgp_provider(),
        "sops:upstream/functional-tests/res/no_mac.yaml",
        &fixtures(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(err.to_string().contains("MAC mismatch"), "{err}");
}

#[tokio::test]
async fn wrong_and_missing_keys() {
    let other = fixtures().join("other-age-key.txt");
    let dir = tempfile::tempdir().unwrap();
    // mockOtherIdentity: a valid identity that decrypts nothing here.
    let other_key = std::fs::read_to_string(
        fixtures().join("upstream/age/keysource_test.go.extracted/mockOtherIdentity"),
    )
    .unwrap();
    let other_file = dir.path().join("other.txt");
    std::fs::write(&other_file, other_key.trim()).unwrap();
    let _ = other;
    let wrong = SopsProvider::new(Settings::default(), fixtures())
        .with_env(env(&[("SOPS_AGE_KEY_FILE", &other_file)]));
    let err = resolve(
        &wrong,
        "sops:derived-age/example.age.yaml#myapp1",
        &fixtures(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string().contains("age1lzd99"),
        "names the file's keys: {err}"
    );

    let err = resolve(
        &keyless_provider(),
        "sops:derived-age/example.age.yaml#myapp1",
        &fixtures(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConfigured, "{err}");
    assert!(
        err.hint().unwrap_or("").contains("SOPS_AGE_KEY_FILE"),
        "{err:?}"
    );

    // The default location ~/.config/sops/age/keys.txt, and XDG_CONFIG_HOME.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".config/sops/age")).unwrap();
    std::fs::copy(
        fixtures().join("keys/age-keys.txt"),
        home.path().join(".config/sops/age/keys.txt"),
    )
    .unwrap();
    let p =
        SopsProvider::new(Settings::default(), fixtures()).with_env(env(&[("HOME", home.path())]));
    assert_eq!(
        resolve_ok(&p, "sops:derived-age/example.age.yaml#app2.db.user").await,
        b"eve"
    );
    let p = SopsProvider::new(Settings::default(), fixtures())
        .with_env(env(&[("XDG_CONFIG_HOME", &home.path().join(".config"))]));
    assert_eq!(
        resolve_ok(&p, "sops:derived-age/example.age.yaml#app2.db.user").await,
        b"eve"
    );

    // SOPS_AGE_KEY (the key text itself) and the age_key_file setting.
    let key_text = std::fs::read_to_string(fixtures().join("keys/age-keys.txt")).unwrap();
    let p = SopsProvider::new(Settings::default(), fixtures()).with_env(
        [("SOPS_AGE_KEY".to_string(), key_text)]
            .into_iter()
            .collect(),
    );
    assert_eq!(
        resolve_ok(&p, "sops:derived-age/example.age.yaml#app2.db.user").await,
        b"eve"
    );
    let settings = Settings {
        age_key_file: Some("keys/age-keys.txt".into()),
        ..Settings::default()
    };
    let p = SopsProvider::new(settings, fixtures()).with_env(Default::default());
    assert_eq!(
        resolve_ok(&p, "sops:derived-age/example.age.yaml#app2.db.user").await,
        b"eve"
    );

    // A named key file that does not exist is an error naming it.
    let p = SopsProvider::new(Settings::default(), fixtures()).with_env(env(&[(
        "SOPS_AGE_KEY_FILE",
        Path::new("/nonexistent/keys.txt"),
    )]));
    let err = resolve(&p, "sops:derived-age/example.age.yaml#myapp1", &fixtures())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/keys.txt"), "{err}");
}

const KMS_ONLY: &str = "secret: ENC[AES256_GCM,data:AAAA,iv:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]
sops:
    kms:
        - arn: arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
          created_at: \"2026-01-01T00:00:00Z\"
          enc: AQICAHhexample
    hc_vault:
        - vault_address: https://vault.internal.example:8200
          engine_path: sops
          key_name: app
          created_at: \"2026-01-01T00:00:00Z\"
          enc: vault:v1:example
    lastmodified: \"2026-01-01T00:00:00Z\"
    mac: ENC[AES256_GCM,data:AAAA,iv:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]
    unencrypted_suffix: _unencrypted
    version: 3.11.0
";

#[tokio::test]
async fn network_master_keys_are_egress_and_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kms.yaml"), KMS_ONLY).unwrap();
    let p = age_provider();
    let reference: Reference = "sops:kms.yaml#secret".parse().unwrap();
    let dests = p.egress(&reference, dir.path()).unwrap();
    let text: Vec<String> = dests.iter().map(|d| format!("{d} {}", d.badge)).collect();
    assert!(
        dests.iter().any(|d| d.badge == Badge::ManagedCloud),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("kms.eu-west-1.amazonaws.com")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("vault.internal.example")),
        "{text:?}"
    );
    let err = resolve(&keyless_provider(), "sops:kms.yaml#secret", dir.path())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(
        err.to_string().contains("comes with the aws backend"),
        "{err}"
    );

    // A file that an age key opens stays local even if it also lists a KMS key in that group.
    let reference: Reference = "sops:derived-age/example.age.yaml".parse().unwrap();
    let dests = p.egress(&reference, &fixtures()).unwrap();
    assert!(dests.iter().all(|d| d.badge == Badge::Local));
}

#[tokio::test]
async fn conformance() {
    let base = fixtures();
    let wrong_key = tempfile::tempdir().unwrap();
    let other = wrong_key.path().join("other.txt");
    std::fs::write(
        &other,
        std::fs::read_to_string(
            base.join("upstream/age/keysource_test.go.extracted/mockOtherIdentity"),
        )
        .unwrap()
        .trim(),
    )
    .unwrap();
    let wrong = SopsProvider::new(Settings::default(), &base)
        .with_env(env(&[("SOPS_AGE_KEY_FILE", &other)]));
    let provider = age_provider();
    let bin_plain = std::fs::read(base.join("generated-sops-3.11.0/plain/secrets.bin")).unwrap();
    Conformance {
        provider: &provider,
        base_dir: &base,
        nested: &broker_core::provider::NoNestedRefs,
        string: (
            "sops:generated-sops-3.11.0/secrets.bin.enc.json?format=binary",
            &bin_plain,
        ),
        field: Some((
            "sops:generated-sops-3.11.0/secrets.enc.yaml#db.password",
            b"s3cr3t-pa55",
        )),
        missing: "sops:generated-sops-3.11.0/does-not-exist.yaml#a",
        wrong_credential: Some((
            &wrong,
            "sops:generated-sops-3.11.0/secrets.enc.yaml#db.password",
        )),
        malformed: &[
            "sops:",
            "sops://x.yaml",
            "sops:x.yaml?fmt=json",
            "sops:x.yaml#a..b",
            "sops:x.yaml#a[x]",
        ],
        canaries: CANARIES,
    }
    .run()
    .await;
    let err = resolve(
        &provider,
        "sops:generated-sops-3.11.0/secrets.enc.yaml?format=toml",
        &base,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidReference, "{err}");
    let dbg = format!("{provider:?}");
    assert_no_canary("Debug", &dbg, CANARIES);
}
