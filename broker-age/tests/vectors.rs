//! The upstream sops age test vectors (`tests/fixtures/upstream-age`, see its README).
#![allow(clippy::unwrap_used)]

mod common;

use broker_age::{IdentityList, IdentitySpec, Settings};
use broker_core::testkit::assert_no_canary;
use broker_core::{ErrorKind, Reference, ResolveRef, Result, SecretValue, async_trait};
use common::*;

fn plain() -> Vec<u8> {
    std::fs::read(fixture("mockEncryptedKeyPlain")).unwrap()
}

#[tokio::test]
async fn x25519_vector() {
    let p = with_identities(&[&fixture("mockIdentity")]);
    let got = resolve(&p, "age:mockEncryptedKey.age", &fixture(""))
        .await
        .unwrap();
    assert_eq!(got.value().expose(), plain());
    assert_eq!(plain(), b"data");
}

#[tokio::test]
async fn ssh_ed25519_vector() {
    let p = with_identities(&[&fixture("mockSshIdentity")]);
    let got = resolve(&p, "agenix:mockEncryptedSshKey.age", &fixture(""))
        .await
        .unwrap();
    assert_eq!(got.value().expose(), plain());
}

#[tokio::test]
async fn other_identity_does_not_match() {
    let p = with_identities(&[&fixture("mockOtherIdentity"), &fixture("mockSshIdentity")]);
    let err = resolve(&p, "age:mockEncryptedKey.age", &fixture(""))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let text = err.to_string();
    assert!(text.contains("no identity matches"), "{text}");
    assert!(
        text.contains("mockOtherIdentity") && text.contains("mockSshIdentity"),
        "{text}"
    );
    let secret = std::fs::read_to_string(fixture("mockOtherIdentity")).unwrap();
    assert_no_canary("error", &format!("{err} {err:?}"), &[secret.trim()]);
}

#[tokio::test]
async fn passphrase_protected_identity_file_is_refused_clearly() {
    let p = with_identities(&[&fixture("mockEncryptedIdentity.age")]);
    let err = resolve(&p, "age:mockEncryptedKey.age", &fixture(""))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("passphrase-protected"), "{err}");
    assert!(err.to_string().contains("non-interactively"), "{err}");
}

#[tokio::test]
async fn hybrid_identity_is_unsupported() {
    let p = with_identities(&[&fixture("mockHybridIdentity")]);
    let err = resolve(&p, "age:mockEncryptedKey.age", &fixture(""))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("post-quantum"), "{err}");
    let secret = std::fs::read_to_string(fixture("mockHybridIdentity")).unwrap();
    assert_no_canary("error", &format!("{err} {err:?}"), &[secret.trim()]);
}

/// Resolves `env:AGE_TEST_KEY` to the mock identity (stands in for the broker).
struct KeyFromRef;

#[async_trait]
impl ResolveRef for KeyFromRef {
    async fn resolve_ref(&self, reference: &Reference, purpose: &str) -> Result<SecretValue> {
        assert_eq!(purpose, "age identity");
        assert_eq!(reference.to_string(), "env:AGE_TEST_KEY");
        Ok(SecretValue::new(
            std::fs::read(fixture("mockIdentity")).unwrap(),
        ))
    }
}

#[tokio::test]
async fn identity_through_a_reference() {
    let settings = Settings {
        identity: IdentityList(vec![IdentitySpec::Ref("env:AGE_TEST_KEY".parse().unwrap())]),
        ..Settings::default()
    };
    let p = provider(settings, None);
    let got = resolve_with(&p, "age:mockEncryptedKey.age", &fixture(""), &KeyFromRef)
        .await
        .unwrap();
    assert_eq!(got.value().expose(), plain());
    // Without a resolver for nested references, the error names the reference.
    let err = resolve(&p, "age:mockEncryptedKey.age", &fixture(""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("env:AGE_TEST_KEY"), "{err}");
}
