//! PGP master keys: the key file setting (armored, binary, several keys), wrong and
//! passphrase-protected keys, key groups with Shamir, and no plaintext in any error.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use broker_core::testkit::{Conformance, assert_no_canary};
use broker_core::{CredentialProvider, ErrorKind};
use broker_sops::{Settings, SopsProvider};
use common::*;

const KEY1: &str = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4";
const KEY2: &str = "D7229043384BCC60326C6FB9D8720D957C3D3074";
/// The freshly generated key in keys/pgp-wrong-key.asc (and, passphrase-protected, in
/// keys/pgp-protected-key.asc): no file here is encrypted to it.
const WRONG: &str = "BD36B5C16D4AC371628301C31523FA0047A0FCCC";

/// Plaintext values of the files used below: never in an error.
const CANARIES: &[&str] = &[
    "t00m4nys3cr3tz",
    "c4r1b0u",
    "secretuser1",
    "pgp-shamir-user",
    "pgp-shamir-s3cret",
    "MIIBPAIBAAJBAPTMNIyHuZtpLYc7VsHQtwOkWYobkUblmHWRmbXzlAX6K8tMf3Wf",
];

async fn refused(p: &SopsProvider, reference: &str) -> broker_core::Error {
    let err = resolve(p, reference, &fixtures())
        .await
        .expect_err("must be refused");
    assert_no_canary("error", &format!("{err} {err:?}"), CANARIES);
    err
}

#[tokio::test]
async fn either_key_of_a_two_key_file_decrypts() {
    // example.yaml is encrypted to both keys; a file holding only the second one is enough.
    let want = std::fs::read(fixtures().join("expected/upstream/example.yaml.decrypted")).unwrap();
    for key_file in [
        PGP_KEY_FILE,
        "keys/pgp-key2-only.asc",
        "keys/pgp-key1-only.gpg",
    ] {
        let got = resolve_ok(&pgp_provider_with(key_file), "sops:upstream/example.yaml").await;
        assert_same_document(Path::new("example.yaml"), &got, &want);
    }
    // A binary (unarmored) key file, one value by path.
    assert_eq!(
        resolve_ok(
            &pgp_provider_with("keys/pgp-key1-only.gpg"),
            "sops:upstream/examples/all_in_one/config/secret.enc.json#github_oauth_token"
        )
        .await,
        b"t00m4nys3cr3tz"
    );
}

#[tokio::test]
async fn upstream_no_mac_is_refused_with_the_pgp_key() {
    let err = refused(
        &pgp_provider(),
        "sops:upstream/functional-tests/res/no_mac.yaml",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(err.to_string().contains("MAC mismatch"), "{err}");
    assert!(err.to_string().contains("no MAC"), "{err}");
}

#[tokio::test]
async fn wrong_pgp_key_names_the_fingerprints_tried() {
    // format.enc.yaml is encrypted to key 1 only; the key file holds key 2 only.
    let err = refused(
        &pgp_provider_with("keys/pgp-key2-only.asc"),
        "sops:upstream/functional-tests/res/format.enc.yaml#foo",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("pgp {KEY1}")), "file key: {msg}");
    assert!(msg.contains(KEY2), "key tried: {msg}");
    assert!(msg.contains("pgp-key2-only.asc"), "key source: {msg}");

    // A freshly generated key opens nothing: both of the file's keys and ours are named.
    let err = refused(
        &pgp_provider_with("keys/pgp-wrong-key.asc"),
        "sops:upstream/example.yaml#myapp1",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let msg = err.to_string();
    for fp in [KEY1, KEY2, WRONG] {
        assert!(msg.contains(fp), "{fp}: {msg}");
    }

    // No PGP key at all: not configured, with a hint naming the setting.
    let err = refused(&keyless_provider(), "sops:upstream/example.yaml#myapp1").await;
    assert_eq!(err.kind(), ErrorKind::NotConfigured, "{err}");
    assert!(err.hint().unwrap_or("").contains("pgp_key_file"), "{err:?}");
}

#[tokio::test]
async fn bad_key_files_are_clear_errors() {
    let err = refused(
        &pgp_provider_with("keys/pgp-protected-key.asc"),
        "sops:upstream/example.yaml#myapp1",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string()
            .contains("passphrase-protected, which is not supported non-interactively"),
        "{err}"
    );
    assert!(err.to_string().contains(WRONG), "{err}");

    // Not a key file (an age identity file), and a missing one.
    let err = refused(
        &pgp_provider_with("keys/age-keys.txt"),
        "sops:upstream/example.yaml#myapp1",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string().contains("not an OpenPGP secret key"),
        "{err}"
    );
    let err = refused(
        &pgp_provider_with("keys/nonexistent.asc"),
        "sops:upstream/example.yaml#myapp1",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("nonexistent.asc"), "{err}");
}

#[tokio::test]
async fn a_pgp_key_satisfies_a_shamir_key_group() {
    // Written by sops 3.11.0: groups [pgp KEY1], [age mockRecipient], [age other], threshold 2.
    let file = "generated-pgp/shamir-pgp-age.enc.yaml";
    let both = SopsProvider::new(
        Settings {
            pgp_key_file: Some(PGP_KEY_FILE.into()),
            age_key_file: Some("keys/age-keys.txt".into()),
            ..Settings::default()
        },
        fixtures(),
    )
    .with_env(Default::default());
    let got = resolve_ok(&both, &format!("sops:{file}")).await;
    let want = std::fs::read(fixtures().join(format!("{file}.decrypted"))).unwrap();
    assert_same_document(Path::new(file), &got, &want);

    // Either key alone recovers one share of the two needed.
    for p in [pgp_provider(), age_provider()] {
        let err = refused(&p, &format!("sops:{file}#db.password")).await;
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(
            err.to_string()
                .contains("2 of 3 key groups needed, 1 recovered"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn check_counts_pgp_keys() {
    let check = pgp_provider()
        .check(&broker_core::provider::NoNestedRefs)
        .await;
    let text = format!("{check:?}");
    assert!(text.contains("2 PGP keys"), "{text}");
    assert!(text.contains(KEY1) && text.contains(KEY2), "{text}");
}

#[tokio::test]
async fn conformance() {
    let base = fixtures();
    let provider = pgp_provider();
    let wrong = pgp_provider_with("keys/pgp-wrong-key.asc");
    Conformance {
        provider: &provider,
        base_dir: &base,
        nested: &broker_core::provider::NoNestedRefs,
        string: (
            "sops:upstream/examples/all_in_one/config/secret.enc.json#github_oauth_token",
            b"t00m4nys3cr3tz",
        ),
        field: Some(("sops:upstream/example.yaml#app2.db.password", b"c4r1b0u")),
        missing: "sops:upstream/does-not-exist.yaml#a",
        wrong_credential: Some((&wrong, "sops:upstream/example.yaml#app2.db.password")),
        malformed: &["sops:", "sops://x.yaml", "sops:x.yaml#a..b"],
        canaries: CANARIES,
    }
    .run()
    .await;
    let dbg = format!("{provider:?}");
    assert_no_canary("Debug", &dbg, CANARIES);
}
