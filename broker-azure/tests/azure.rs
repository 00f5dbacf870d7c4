//! broker-azure against the HTTPS fake of Key Vault and Entra ID (tests/support/fake.rs), which
//! the official Python SDKs drive first in the same run to prove it answers as Azure does:
//! conformance, canaries, every resolve error, the challenge, retries within the budget,
//! content types, minting with a client secret and with workload identity federation, and
//! rotation read back by the Python SDK.
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

#[path = "support/fake.rs"]
mod fake;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use broker_azure::{Auth, AzureProvider, Method, Settings};
use broker_core::testkit::{Conformance, assert_no_canary, require_peer};
use broker_core::{
    Credential, CredentialProvider, DeliveryKind, ErrorKind, Reference, Request, RequestContext,
    ResolveRef, Result, SecretValue, Terms, async_trait,
};
use fake::{BROKER_APP, DENIED_APP, FEDERATED_APP, FakeAzure, SUBJECT, TENANT, Version};
use serde_json::{Value, json};

const SECRET: &str = "broker-app-secret-c4n4ry-7f3a9d";
const PLAIN: &str = "plain-value-c4n4ry-51be0c2e";
const TOKEN_FIELD: &str = "json-token-c4n4ry-0d9e77a1";

fn canaries() -> Vec<&'static str> {
    vec![SECRET, PLAIN, TOKEN_FIELD]
}

/// Resolves `env:TEST_AZURE_SECRET` from a map.
struct Keys(HashMap<String, SecretValue>);

impl Keys {
    fn new(secret: &str) -> Keys {
        Keys(HashMap::from([(
            "env:TEST_AZURE_SECRET".to_string(),
            SecretValue::copy_from(secret.as_bytes()),
        )]))
    }
}

#[async_trait]
impl ResolveRef for Keys {
    async fn resolve_ref(&self, reference: &Reference, purpose: &str) -> Result<SecretValue> {
        self.0
            .get(&reference.to_string())
            .cloned()
            .ok_or_else(|| broker_core::Error::not_found(format!("no test value for {purpose}")))
    }
}

fn settings(fake: &FakeAzure, auth: Auth) -> Settings {
    Settings {
        auth: Some(auth),
        authority_host: Some(fake.authority()),
        vault_suffix: Some(fake.vault_suffix()),
        ca_cert: Some(fake.ca_path.display().to_string()),
    }
}

fn secret_auth(client: &str) -> Auth {
    Auth {
        method: Method::ClientSecret,
        tenant_id: Some(TENANT.into()),
        client_id: Some(client.into()),
        client_secret_ref: Some("env:TEST_AZURE_SECRET".into()),
        token_file: None,
    }
}

fn provider(fake: &FakeAzure, client: &str) -> AzureProvider {
    AzureProvider::new(settings(fake, secret_auth(client)), fake.dir.path()).unwrap()
}

async fn resolve_kind(
    p: &AzureProvider,
    keys: &Keys,
    text: &str,
    kind: Option<DeliveryKind>,
) -> Result<Credential> {
    let reference: Reference = text.parse().unwrap();
    let base = std::env::temp_dir();
    let ctx = RequestContext::new();
    p.resolve(
        &Request::new(&reference, &base, &ctx)
            .with_terms(Terms::new(kind))
            .with_nested(keys),
    )
    .await
}

async fn resolve(p: &AzureProvider, keys: &Keys, text: &str) -> Result<Credential> {
    resolve_kind(p, keys, text, None).await
}

/// A fake with kv1 holding the fixtures; apps: broker (get/set/list), denied, federated (get).
fn fixture() -> FakeAzure {
    let fake = FakeAzure::start(&["kv1"]);
    fake.app(BROKER_APP, Some(SECRET), false, &["get", "set", "list"]);
    fake.app(DENIED_APP, Some(SECRET), false, &[]);
    fake.app(FEDERATED_APP, None, true, &["get"]);
    fake.put("kv1", "plain", "an-older-value", None);
    fake.put("kv1", "plain", PLAIN, Some("text/plain"));
    fake.put(
        "kv1",
        "api",
        &json!({"token": TOKEN_FIELD, "nested": {"port": 5432}}).to_string(),
        Some("application/json"),
    );
    fake
}

/// Runs tests/support/python_check.py against the fake; `None` when Python is missing locally.
fn python(fake: &FakeAzure, client: &str, secret: &str, actions: Value) -> Option<Vec<Value>> {
    let python = require_peer("python")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/python_check.py");
    let out = Command::new(python)
        .arg(script)
        .arg(fake.port.to_string())
        .arg(&fake.ca_path)
        .arg(TENANT)
        .arg(client)
        .arg("kv1")
        .arg(actions.to_string())
        .env("FAKE_AZURE_CLIENT_SECRET", secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python_check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn the_python_sdk_accepts_the_fake() {
    let fake = fixture();
    fake.put_version(
        "kv1",
        "off",
        Version {
            enabled: false,
            ..fake.versions("kv1", "plain")[0].clone()
        },
    );
    let Some(out) = python(
        &fake,
        BROKER_APP,
        SECRET,
        json!([
            {"op": "get", "name": "plain"},
            {"op": "set", "name": "py", "value": "from-python", "content_type": "text/plain", "tags": {"team": "infra"}},
            {"op": "get", "name": "py"},
            {"op": "versions", "name": "plain"},
            {"op": "get", "name": "missing"},
            {"op": "get", "name": "off"},
        ]),
    ) else {
        return;
    };
    assert_eq!(out[0]["value"], PLAIN);
    assert_eq!(out[0]["content_type"], "text/plain");
    let plain = fake.versions("kv1", "plain");
    assert_eq!(out[0]["version"], plain[1].id.as_str());
    assert_eq!(out[2]["value"], "from-python");
    assert_eq!(out[2]["version"], out[1]["version"]);
    assert_eq!(out[2]["tags"]["team"], "infra");
    let versions: Vec<&str> = out[3]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(versions, [plain[0].id.as_str(), plain[1].id.as_str()]);
    assert_eq!(out[4]["error"], "not_found");
    assert_eq!(out[4]["code"], "SecretNotFound");
    assert_eq!(out[5]["status"], 403);
    assert_eq!(out[5]["code"], "Forbidden");
    // The SDK's first request carried no token and met the challenge.
    let log = fake.log();
    assert!(
        log.iter().any(|l| l.contains("/oauth2/v2.0/token")),
        "{log:?}"
    );

    // A wrong client secret: azure-identity reports Entra's refusal, so nothing is read.
    let out = python(
        &fake,
        BROKER_APP,
        "wrong",
        json!([{"op": "get", "name": "plain"}]),
    )
    .unwrap();
    assert!(
        out[0]["message"]
            .as_str()
            .unwrap()
            .contains("AADSTS7000215"),
        "{out:?}"
    );
    assert!(out[0]["value"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_conformance_errors_and_content_types() {
    let fake = fixture();
    let keys = Keys::new(SECRET);
    let p = provider(&fake, BROKER_APP);
    let denied = provider(&fake, DENIED_APP);
    let base = std::env::temp_dir();

    struct WithKeys<'a>(&'a AzureProvider, &'a Keys);
    #[async_trait]
    impl CredentialProvider for WithKeys<'_> {
        fn egress(&self, r: &Reference, b: &Path) -> Result<Vec<broker_core::Destination>> {
            self.0.egress(r, b)
        }
        async fn resolve(&self, request: &Request<'_>) -> Result<Credential> {
            let ctx = RequestContext::new();
            let r = Request::new(request.reference, request.base_dir, &ctx).with_nested(self.1);
            self.0.resolve(&r).await
        }
    }
    let denied_keys = Keys::new(SECRET);
    let wrong = WithKeys(&denied, &denied_keys);
    Conformance {
        provider: &p,
        base_dir: &base,
        nested: &keys,
        string: ("azurekv://kv1/plain", PLAIN.as_bytes()),
        field: Some(("azurekv://kv1/api#token", TOKEN_FIELD.as_bytes())),
        missing: "azurekv://kv1/surely-missing",
        wrong_credential: Some((&wrong, "azurekv://kv1/plain")),
        malformed: &[
            "azurekv://kv1",
            "azurekv://k/plain",
            "azurekv://kv1/bad_name",
            "azurekv://kv1/plain/not-a-version",
            "azure-token://contoso/11111111-1111-1111-1111-111111111111",
            "azure-token://contoso.onmicrosoft.com/not-a-guid",
        ],
        canaries: &canaries(),
    }
    .run()
    .await;
    // The first request met the 401 challenge, then the SDK fetched a token for the vault's
    // resource and repeated it.
    let log = fake.log();
    let first_get = log
        .iter()
        .position(|l| l.contains("/secrets/plain"))
        .unwrap();
    assert!(log[first_get + 1].contains("/oauth2/v2.0/token"), "{log:?}");
    assert!(log[first_get + 2].contains("/secrets/plain"), "{log:?}");

    // A version; an old version; a missing version.
    let versions = fake.versions("kv1", "plain");
    let got = resolve(
        &p,
        &keys,
        &format!("azurekv://kv1/plain/{}", versions[0].id),
    )
    .await
    .unwrap();
    assert_eq!(got.value().expose(), b"an-older-value");
    let err = resolve(
        &p,
        &keys,
        "azurekv://kv1/plain/0123456789abcdef0123456789abcdef",
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("SecretNotFound"), "{err}");

    // Denied: 403 naming the reference and Key Vault's reason.
    let err = resolve(&denied, &keys, "azurekv://kv1/plain")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("azurekv://kv1/plain") && text.contains("AccessDenied"),
        "{text}"
    );
    assert!(!err.is_retryable());
    assert_no_canary("denied", &format!("{err} {err:?}"), &canaries());

    // Disabled, not yet valid, expired: distinct errors.
    let template = versions[1].clone();
    fake.put_version(
        "kv1",
        "off",
        Version {
            enabled: false,
            ..template.clone()
        },
    );
    fake.put_version(
        "kv1",
        "later",
        Version {
            nbf: Some(4_000_000_000),
            ..template.clone()
        },
    );
    fake.put_version(
        "kv1",
        "old",
        Version {
            exp: Some(1_000_000_000),
            ..template.clone()
        },
    );
    let mut seen = Vec::new();
    for (name, words) in [
        ("off", "is disabled"),
        ("later", "not valid yet"),
        ("old", "expired at 2001-09-09T01:46:40Z"),
    ] {
        let err = resolve(&p, &keys, &format!("azurekv://kv1/{name}"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{text}");
        assert!(
            text.contains(words) && text.contains(&format!("azurekv://kv1/{name}")),
            "{text}"
        );
        assert_no_canary(name, &format!("{err} {err:?}"), &canaries());
        seen.push(text);
    }
    assert!(seen[0].contains("SecretDisabled"), "{}", seen[0]);

    // 429 with Retry-After twice, then success: retried within one call.
    fake.clear_log();
    fake.fail("/secrets/api", 429, Some(1), 2);
    let got = resolve(&p, &keys, "azurekv://kv1/api#nested.port")
        .await
        .unwrap();
    assert_eq!(got.value().expose(), b"5432");
    assert_eq!(
        fake.log()
            .iter()
            .filter(|l| l.contains("/secrets/api"))
            .count(),
        3
    );
    // 503 always: 4 attempts in all, then a transient error the broker does not retry again.
    fake.clear_log();
    fake.fail("/secrets/api", 503, None, 100);
    let err = resolve(&p, &keys, "azurekv://kv1/api").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(!err.is_retryable());
    assert_eq!(err.exhausted_attempts(), Some(4));
    assert!(err.to_string().contains("azurekv://kv1/api"), "{err}");
    assert_eq!(
        fake.log()
            .iter()
            .filter(|l| l.contains("/secrets/api"))
            .count(),
        4
    );
    fake.clear_faults();

    // PEM and PKCS#12 content types are files.
    let pem = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
    fake.put("kv1", "cert", pem, Some(broker_azure::PEM_CONTENT_TYPE));
    fake.put(
        "kv1",
        "pfx",
        "AAECAw==",
        Some(broker_azure::PKCS12_CONTENT_TYPE),
    );
    let err = resolve_kind(&p, &keys, "azurekv://kv1/cert", Some(DeliveryKind::Env))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.hint().unwrap().contains("kind: file"));
    let got = resolve_kind(&p, &keys, "azurekv://kv1/cert", Some(DeliveryKind::File))
        .await
        .unwrap();
    assert_eq!(got.value().expose(), pem.as_bytes());
    let got = resolve_kind(&p, &keys, "azurekv://kv1/pfx", Some(DeliveryKind::File))
        .await
        .unwrap();
    assert_eq!(got.value().expose(), &[0, 1, 2, 3]);

    // A wrong client secret: authentication failed, not retryable, nothing leaked.
    let err = resolve(
        &p_fresh(&fake),
        &Keys::new("wrong-secret"),
        "azurekv://kv1/plain",
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthenticationFailed, "{err}");
    assert!(err.to_string().contains("AADSTS7000215"), "{err}");
    assert!(!err.is_retryable());

    // Egress: the vault and the authority, without I/O.
    let dests = p
        .egress(&"azurekv://kv1/plain".parse().unwrap(), &base)
        .unwrap();
    assert_eq!(dests[0].target.to_string(), fake.vault_url("kv1"));
    assert_eq!(dests[0].badge, broker_core::Badge::ManagedCloud);
}

fn p_fresh(fake: &FakeAzure) -> AzureProvider {
    provider(fake, BROKER_APP)
}

async fn mint(p: &AzureProvider, keys: &dyn ResolveRef, text: &str) -> Result<Credential> {
    let reference: Reference = text.parse().unwrap();
    let base = std::env::temp_dir();
    let ctx = RequestContext::new();
    p.mint(
        &Request::new(&reference, &base, &ctx)
            .with_terms(Terms::new(Some(DeliveryKind::Env)))
            .with_nested(keys),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn mint_with_a_client_secret_and_with_federation() {
    let fake = fixture();
    let keys = Keys::new(SECRET);
    let p = provider(&fake, BROKER_APP);
    let minted = mint(
        &p,
        &keys,
        &format!("azure-token://{TENANT}/{BROKER_APP}?scope=https://vault.localhost/.default"),
    )
    .await
    .unwrap();
    let token = minted.value().expose_str().unwrap().to_string();
    assert!(token.starts_with("eyFAKE."), "shape");
    let lease = minted.lease().unwrap();
    assert!(
        lease.id.contains(BROKER_APP) && !lease.id.contains(&token),
        "{}",
        lease.id
    );
    let left = lease
        .expires_at
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left.as_secs() > 3000 && left.as_secs() <= 3600, "{left:?}");
    assert_no_canary("minted Debug", &format!("{minted:?}"), &[&token]);

    // The default scope is ARM's.
    fake.clear_log();
    mint(&p, &keys, &format!("azure-token://{TENANT}/{BROKER_APP}"))
        .await
        .unwrap();
    assert!(fake.log().iter().any(|l| l.contains("/oauth2/v2.0/token")));

    // A client secret belongs to one client.
    let err = mint(&p, &keys, &format!("azure-token://{TENANT}/{DENIED_APP}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    // An unknown tenant: Entra's refusal, named.
    let err = mint(
        &p,
        &keys,
        "azure-token://00000000-0000-0000-0000-0000000000bb/11111111-1111-1111-1111-111111111111",
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthenticationFailed, "{err}");
    assert!(err.to_string().contains("AADSTS90002"), "{err}");

    // Workload identity: a federated token file exchanged as a client assertion.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, fake.federated_token(SUBJECT, fake::AUDIENCE, 600)).unwrap();
    let federated = AzureProvider::new(
        settings(
            &fake,
            Auth {
                method: Method::WorkloadIdentity,
                tenant_id: Some(TENANT.into()),
                client_id: Some(FEDERATED_APP.into()),
                client_secret_ref: None,
                token_file: Some(file.display().to_string()),
            },
        ),
        dir.path(),
    )
    .unwrap();
    let nothing = broker_core::provider::NoNestedRefs;
    let minted = mint(
        &federated,
        &nothing,
        &format!("azure-token://{TENANT}/{FEDERATED_APP}"),
    )
    .await
    .unwrap();
    assert!(minted.value().expose_str().unwrap().starts_with("eyFAKE."));
    // The federated app may read: the same identity serves Key Vault.
    let got = federated
        .resolve(&Request::new(
            &"azurekv://kv1/plain".parse().unwrap(),
            dir.path(),
            &RequestContext::new(),
        ))
        .await
        .unwrap();
    assert_eq!(got.value().expose(), PLAIN.as_bytes());
    let dests = federated
        .egress(&"azurekv://kv1/plain".parse().unwrap(), dir.path())
        .unwrap();
    assert!(
        dests.iter().any(|d| d.target.to_string().contains("token")),
        "{dests:?}"
    );
    // A token for another subject, or expired: refused by Entra with its reason.
    for (sub, valid) in [("system:serviceaccount:ci:other", 600), (SUBJECT, -60)] {
        std::fs::write(&file, fake.federated_token(sub, fake::AUDIENCE, valid)).unwrap();
        let err = mint(
            &federated,
            &nothing,
            &format!("azure-token://{TENANT}/{FEDERATED_APP}"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AuthenticationFailed, "{err}");
        assert!(err.to_string().contains("AADSTS700211"), "{err}");
    }

    // Revoke: unsupported, saying why.
    let err = p
        .revoke(&lease_id(), &broker_core::provider::NoNestedRefs)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

fn lease_id() -> String {
    format!("azure-token:{TENANT}/{BROKER_APP}")
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_sets_a_version_the_python_sdk_reads() {
    let fake = fixture();
    let keys = Keys::new(SECRET);
    let p = provider(&fake, BROKER_APP);
    fake.put_version(
        "kv1",
        "db",
        Version {
            id: "00000000000000000000000000000001".into(),
            value: json!({"user": "app", "password": "old-password-c4n4ry"}).to_string(),
            content_type: Some("application/json".into()),
            enabled: true,
            nbf: None,
            exp: None,
            tags: [("owner".to_string(), "team-a".to_string())].into(),
            created: 1,
        },
    );
    let base = std::env::temp_dir();
    let ctx = RequestContext::new();
    let reference: Reference = "azurekv://kv1/db#password".parse().unwrap();
    let rotation = p
        .rotate(&Request::new(&reference, &base, &ctx).with_nested(&keys))
        .await
        .unwrap();
    let version = rotation.version.clone().unwrap();
    assert!(rotation.summary.contains(&version), "{}", rotation.summary);
    let versions = fake.versions("kv1", "db");
    assert_eq!(versions.len(), 2);
    let new = &versions[1];
    assert_eq!(new.id, version);
    assert_eq!(new.content_type.as_deref(), Some("application/json"));
    assert_eq!(new.tags["owner"], "team-a");
    let doc: Value = serde_json::from_str(&new.value).unwrap();
    assert_eq!(doc["user"], "app");
    let password = doc["password"].as_str().unwrap().to_string();
    assert_eq!(password.len(), 40);
    assert!(!rotation.summary.contains(&password));

    // Whole-value rotation of a plain secret.
    let reference: Reference = "azurekv://kv1/plain".parse().unwrap();
    let plain_rotation = p
        .rotate(&Request::new(&reference, &base, &ctx).with_nested(&keys))
        .await
        .unwrap();
    let got = resolve(&p, &keys, "azurekv://kv1/plain").await.unwrap();
    assert_eq!(got.value().expose().len(), 40);

    // The official SDK reads the new versions.
    let Some(out) = python(
        &fake,
        BROKER_APP,
        SECRET,
        json!([{"op": "get", "name": "db"}, {"op": "get", "name": "plain"}]),
    ) else {
        return;
    };
    assert_eq!(out[0]["version"], version.as_str());
    let read: Value = serde_json::from_str(out[0]["value"].as_str().unwrap()).unwrap();
    assert_eq!(read["password"], password.as_str());
    assert_eq!(out[0]["tags"]["owner"], "team-a");
    assert_eq!(out[1]["version"], plain_rotation.version.unwrap().as_str());
    assert_eq!(
        out[1]["value"].as_str().unwrap().as_bytes(),
        got.value().expose()
    );

    // Versions, as the broker lists them, include both.
    let listed = p.list_versions("kv1", "db", &keys).await.unwrap();
    assert_eq!(
        listed,
        ["00000000000000000000000000000001", version.as_str()]
    );
}
