//! The parts nothing emulates, against the test fake (`support`), which Google's official
//! Python clients check first: IAM Credentials minting (exact request fields), workload
//! identity federation through a fake Google STS, Secret Manager aliases, regional routes and
//! CRC32C, error classification and the retry budget.
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime};

use broker_core::retry::{self, RetryPolicy, Sleeper};
use broker_core::testkit::assert_no_canary;
use broker_core::{
    Credential, CredentialProvider, DeliveryKind, ErrorKind, Reference, Request, RequestContext,
    ResolveRef, Result, SecretValue, Terms, async_trait,
};
use broker_gcp::{Auth, GcpProvider, Settings};
use serde_json::{Value, json};
use support::{FakeGoogle, MINTED_PREFIX};

const SA: &str = "deployer@broker-test.iam.gserviceaccount.com";
const MID: &str = "middle@broker-test.iam.gserviceaccount.com";
const BROKER_TOKEN: &str = "ya29.broker-own-token-canary-5d1f";
const SECRET_CANARY: &str = "gcp-fake-canary-0b6e2a9d14c7";
const OIDC_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.oidc-subject-token-canary.sig";

/// Nested references, answered from a map.
struct Nested(HashMap<String, Vec<u8>>);

#[async_trait]
impl ResolveRef for Nested {
    async fn resolve_ref(&self, reference: &Reference, _purpose: &str) -> Result<SecretValue> {
        Ok(SecretValue::new(
            self.0.get(&reference.to_string()).unwrap().clone(),
        ))
    }
}

fn nested() -> Nested {
    Nested(HashMap::from([
        (
            "env:TEST_GCP_TOKEN".to_string(),
            BROKER_TOKEN.as_bytes().to_vec(),
        ),
        (
            "env:TEST_GCP_DENIED_TOKEN".to_string(),
            support::DENIED_TOKEN.as_bytes().to_vec(),
        ),
    ]))
}

fn provider(fake: &FakeGoogle, extra: impl FnOnce(&mut Settings)) -> GcpProvider {
    let mut settings = Settings {
        endpoint: Some(fake.url.clone()),
        iam_endpoint: Some(fake.url.clone()),
        auth: Some(Auth::AccessToken {
            token_ref: "env:TEST_GCP_TOKEN".into(),
        }),
        ..Settings::default()
    };
    extra(&mut settings);
    GcpProvider::new(settings).unwrap()
}

struct Call<'a> {
    text: &'a str,
    kind: Option<DeliveryKind>,
    ttl: Option<Duration>,
    options: Value,
}

impl<'a> Call<'a> {
    fn new(text: &'a str) -> Self {
        Call {
            text,
            kind: Some(DeliveryKind::Env),
            ttl: None,
            options: json!({}),
        }
    }

    async fn mint(&self, p: &GcpProvider, nested: &Nested) -> Result<Credential> {
        let reference: Reference = self.text.parse().unwrap();
        let ctx = RequestContext::new();
        let base = std::env::temp_dir();
        let options: BTreeMap<String, Value> =
            serde_json::from_value(self.options.clone()).unwrap();
        let mut terms = Terms::new(self.kind).with_ttl(self.ttl);
        terms = terms.with_options(&options);
        let request = Request::new(&reference, &base, &ctx)
            .with_credential("minted")
            .with_terms(terms)
            .with_nested(nested);
        if reference.scheme() == "gcp-sm" {
            p.resolve(&request).await
        } else {
            p.mint(&request).await
        }
    }
}

fn python(args: &[&str]) -> Option<Value> {
    let python = support::python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/faithful.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "faithful.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn the_fake_answers_googles_python_clients_as_google_does() {
    let fake = FakeGoogle::start();
    fake.add_account(SA);
    fake.add_account(MID);
    // IAM Credentials: access token (delegates, scope, lifetime), ID token, errors.
    let Some(iam) = python(&["iam", &fake.url, SA, MID]) else {
        return;
    };
    assert_eq!(iam["access_token_prefix"], MINTED_PREFIX);
    let expires = iam["expire_seconds_from_now"].as_f64().unwrap();
    assert!((500.0..=601.0).contains(&expires), "{iam}");
    assert_eq!(iam["id_token_audience"], "https://api.example.com");
    assert_eq!(iam["id_token_email"], SA);
    assert_eq!(
        iam["errors"],
        json!({
            "nobody@p.iam.gserviceaccount.com": "NotFound",
            "denied@p.iam.gserviceaccount.com": "Forbidden",
            "lifetime": "BadRequest",
        })
    );
    let seen = fake.seen();
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].body).unwrap(),
        json!({
            "delegates": [format!("projects/-/serviceAccounts/{MID}")],
            "scope": ["https://www.googleapis.com/auth/cloud-platform"],
            "lifetime": "600s",
        })
    );

    // Google STS through google-auth's external-account (identity pool) flow, plain and
    // impersonating through the fake IAM Credentials.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("oidc-token");
    std::fs::write(&token_file, OIDC_TOKEN).unwrap();
    fake.accept_subject_token(OIDC_TOKEN);
    let fed = python(&[
        "federation",
        &fake.url,
        token_file.to_str().unwrap(),
        &fake.url,
        SA,
    ])
    .unwrap();
    assert_eq!(fed["federated_prefix"], fake.federated_token()[..17]);
    assert_eq!(fed["impersonated_prefix"], MINTED_PREFIX);
    assert_eq!(fed["impersonated_expiry"], true);

    // Secret Manager: an alias, a regional name and a CRC32C the client accepts.
    let secret = "projects/broker-test/locations/europe-west1/secrets/regional";
    let n = fake.add_version(
        secret,
        b"regional-value",
        Some(support::crc32c(b"regional-value")),
    );
    fake.set_alias(secret, "prod", n);
    let read = python(&["sm-read", &fake.url, &format!("{secret}/versions/prod")]).unwrap();
    assert_eq!(read["name"], format!("{secret}/versions/1"));
    assert_eq!(read["crc32c"], support::crc32c(b"regional-value"));
    let err = python(&["sm-error", &fake.url, &format!("{secret}/versions/nope")]).unwrap();
    assert_eq!(err["code"], "NOT_FOUND", "{err}");
}

#[tokio::test]
async fn aliases_regional_secrets_and_checksums() {
    let fake = FakeGoogle::start();
    let global = "projects/broker-test/secrets/api";
    let regional = "projects/broker-test/locations/us-central1/secrets/api";
    fake.add_version(global, b"one", Some(support::crc32c(b"one")));
    let two = fake.add_version(
        global,
        SECRET_CANARY.as_bytes(),
        Some(support::crc32c(SECRET_CANARY.as_bytes())),
    );
    fake.set_alias(global, "stable", two);
    fake.add_version(regional, b"in-region", None);
    // A payload whose checksum does not match (corrupted in transit).
    fake.add_version(
        "projects/broker-test/secrets/corrupt",
        SECRET_CANARY.as_bytes(),
        Some(12345),
    );
    let p = provider(&fake, |_| {});
    let nested = nested();

    let got = Call::new("gcp-sm://broker-test/api/stable")
        .mint(&p, &nested)
        .await
        .unwrap();
    assert_eq!(got.value().expose(), SECRET_CANARY.as_bytes());
    let got = Call::new("gcp-sm://broker-test/api?location=us-central1")
        .mint(&p, &nested)
        .await
        .unwrap();
    assert_eq!(got.value().expose(), b"in-region");
    let paths: Vec<String> = fake.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/v1/projects/broker-test/secrets/api/versions/stable:access",
            "/v1/projects/broker-test/locations/us-central1/secrets/api/versions/latest:access",
        ]
    );
    // The broker's own token, from its reference, is the bearer token.
    for seen in fake.seen() {
        assert_eq!(
            seen.authorization.as_deref(),
            Some(&*format!("Bearer {BROKER_TOKEN}"))
        );
    }

    let err = Call::new("gcp-sm://broker-test/corrupt")
        .mint(&p, &nested)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        "`gcp-sm://broker-test/corrupt`: secret version projects/broker-test/secrets/corrupt/versions/latest: the payload does not match its CRC32C checksum (corrupted in transit or at rest)"
    );
    assert_no_canary(
        "integrity error",
        &format!("{err} {err:?}"),
        &[SECRET_CANARY, BROKER_TOKEN],
    );

    // Missing project and denied access are distinct.
    let err = Call::new("gcp-sm://missing-project/api")
        .mint(&p, &nested)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("no such project"), "{err}");
    let err = Call::new("gcp-sm://forbidden-project/api")
        .mint(&p, &nested)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(
        err.to_string()
            .contains("Google denied AccessSecretVersion"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

struct NoSleep;

impl Sleeper for NoSleep {
    fn sleep(&self, _: Duration) -> retry::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[tokio::test]
async fn transient_failures_get_four_attempts_in_all() {
    let fake = FakeGoogle::start();
    fake.add_version("projects/broker-test/secrets/api", b"value", None);
    let p = provider(&fake, |_| {});
    let nested = nested();
    let unavailable = support::error(503, "UNAVAILABLE", "The service is currently unavailable.");
    let throttled = support::error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.");
    let bad = support::error(400, "INVALID_ARGUMENT", "Bad request.");
    for (answer, retryable) in [(&unavailable, true), (&throttled, true), (&bad, false)] {
        fake.clear_seen();
        fake.script(&[(answer.0, answer.1.as_str()); 6]);
        let call = Call::new("gcp-sm://broker-test/api");
        let failure = retry::retry(&RetryPolicy::default(), &NoSleep, |_| {
            call.mint(&p, &nested)
        })
        .await
        .err()
        .unwrap();
        let attempts = fake.seen().len();
        if retryable {
            // The client makes one attempt per call; the broker's layer makes the other three.
            assert_eq!(attempts, 4, "{}", answer.1);
        } else {
            assert_eq!(attempts, 1, "{}", answer.1);
        }
        let _ = failure;
    }
    fake.script(&[(unavailable.0, unavailable.1.as_str())]);
    let err = Call::new("gcp-sm://broker-test/api")
        .mint(&p, &nested)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.is_retryable());
    // After one failure the next attempt succeeds.
    let got = Call::new("gcp-sm://broker-test/api")
        .mint(&p, &nested)
        .await
        .unwrap();
    assert_eq!(got.value().expose(), b"value");
}

#[tokio::test]
async fn access_tokens_carry_the_scopes_lifetime_and_delegates_asked_for() {
    let fake = FakeGoogle::start();
    fake.add_account(SA);
    fake.add_account(MID);
    let p = provider(&fake, |_| {});
    let nested = nested();
    let text = format!("gcp-iam://{SA}");

    // Defaults: cloud-platform, 1 h, no delegates; delivered as GOOGLE_OAUTH_ACCESS_TOKEN only.
    let before = SystemTime::now();
    let minted = Call::new(&text).mint(&p, &nested).await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].path,
        format!("/v1/projects/-/serviceAccounts/{SA}:generateAccessToken")
    );
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {BROKER_TOKEN}"))
    );
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].body).unwrap(),
        json!({"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "3600s"})
    );
    assert!(
        minted
            .value()
            .expose()
            .starts_with(MINTED_PREFIX.as_bytes())
    );
    assert!(!minted.delivers_primary_env());
    let names: Vec<&str> = minted
        .companions()
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(names, ["GOOGLE_OAUTH_ACCESS_TOKEN"]);
    let lease = minted.lease().unwrap();
    let expires = lease.expires_at.unwrap().duration_since(before).unwrap();
    assert!((3590..=3601).contains(&expires.as_secs()), "{expires:?}");
    assert!(
        lease
            .id
            .starts_with(&format!("projects/-/serviceAccounts/{SA}@"))
    );
    let token = String::from_utf8(minted.value().expose().to_vec()).unwrap();
    assert_no_canary(
        "a minted credential's Debug",
        &format!("{minted:?}"),
        &[&token],
    );
    assert_no_canary("the lease id", &lease.id, &[&token]);

    // Explicit scopes (short names expand), a ttl and a delegation chain; kind: file.
    fake.clear_seen();
    let call = Call {
        text: &text,
        kind: Some(DeliveryKind::File),
        ttl: Some(Duration::from_secs(600)),
        options: json!({"scopes": ["devstorage.read_only", "https://www.googleapis.com/auth/bigquery"], "delegates": [MID]}),
    };
    let minted = call.mint(&p, &nested).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&fake.seen()[0].body).unwrap(),
        json!({
            "delegates": [format!("projects/-/serviceAccounts/{MID}")],
            "scope": ["https://www.googleapis.com/auth/devstorage.read_only", "https://www.googleapis.com/auth/bigquery"],
            "lifetime": "600s",
        })
    );
    assert_eq!(minted.path_vars(), ["CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"]);

    // A ttl outside 1s..1h is refused before any call.
    fake.clear_seen();
    let call = Call {
        ttl: Some(Duration::from_secs(7200)),
        ..Call::new(&text)
    };
    let err = call.mint(&p, &nested).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert_eq!(
        err.to_string(),
        format!("`gcp-iam://{SA}`: `ttl` 7200s is outside what IAM Credentials grants (1s to 1h)")
    );
    assert!(fake.seen().is_empty());
    // With the ceiling raised to 12h the broker sends it (this fake, without the org
    // policy, refuses it as Google would).
    let raised = provider(&fake, |s| s.max_token_lifetime = Some("12h".into()));
    let err = call.mint(&raised, &nested).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string()
            .contains("INVALID_ARGUMENT: Lifetime must be between"),
        "{err}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&fake.seen()[0].body).unwrap()["lifetime"],
        "7200s"
    );
}

#[tokio::test]
async fn id_tokens_and_refusals() {
    let fake = FakeGoogle::start();
    fake.add_account(SA);
    let p = provider(&fake, |_| {});
    let nested = nested();
    let text = format!("gcp-iam://{SA}?id-token=true&audience=https%3A%2F%2Fapi.example.com");
    let call = Call {
        options: json!({"include_email": true}),
        ..Call::new(&text)
    };
    let minted = call.mint(&p, &nested).await.unwrap();
    let seen = fake.seen();
    assert_eq!(
        seen[0].path,
        format!("/v1/projects/-/serviceAccounts/{SA}:generateIdToken")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].body).unwrap(),
        json!({"audience": "https://api.example.com", "includeEmail": true})
    );
    assert!(
        minted
            .value()
            .expose()
            .ends_with(support::ID_TOKEN_SIGNATURE.as_bytes())
    );
    assert!(minted.delivers_primary_env());
    assert!(minted.lease().unwrap().expires_at.is_some());

    // Unknown and refused service accounts: distinct, not retryable, naming the reference.
    let nobody = "gcp-iam://nobody@broker-test.iam.gserviceaccount.com";
    let err = Call::new(nobody).mint(&p, &nested).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(!err.is_retryable());
    assert!(
        err.to_string().starts_with(&format!("`{nobody}`: ")),
        "{err}"
    );
    let denied = "gcp-iam://denied@broker-test.iam.gserviceaccount.com";
    let err = Call::new(denied).mint(&p, &nested).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert_eq!(
        err.to_string(),
        format!(
            "`{denied}`: Google denied GenerateAccessToken on service account denied@broker-test.iam.gserviceaccount.com (PERMISSION_DENIED: Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).)"
        )
    );
    assert_eq!(
        err.hint(),
        Some(
            "grant the broker's identity roles/iam.serviceAccountTokenCreator on the service account (and on each delegate)"
        )
    );
    assert_no_canary("mint error", &format!("{err} {err:?}"), &[BROKER_TOKEN]);

    // Revoke is unsupported, and says why.
    let err = p.revoke("anything", &nested).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("cannot be revoked"), "{err}");
}

#[tokio::test]
async fn workload_identity_federation_exchanges_the_oidc_token_then_impersonates() {
    let fake = FakeGoogle::start();
    fake.add_account(SA);
    fake.accept_subject_token(OIDC_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("github-oidc-token");
    std::fs::write(&token_file, OIDC_TOKEN).unwrap();
    let audience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/github";
    let document = json!({
        "type": "external_account",
        "audience": audience,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": format!("{}/v1/token", fake.url),
        "credential_source": {"file": token_file.to_str().unwrap()},
    });
    let nested = Nested(HashMap::from([(
        "env:GCP_FEDERATION".to_string(),
        document.to_string().into_bytes(),
    )]));
    let p = provider(&fake, |s| {
        s.auth = Some(Auth::Credentials {
            credentials_ref: "env:GCP_FEDERATION".into(),
        })
    });
    let minted = Call::new(&format!("gcp-iam://{SA}"))
        .mint(&p, &nested)
        .await
        .unwrap();
    assert!(
        minted
            .value()
            .expose()
            .starts_with(MINTED_PREFIX.as_bytes())
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/token")
    );
    let form: BTreeMap<String, String> = seen[0]
        .body
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_string(), decode(v))
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("audience", audience),
        ("scope", "https://www.googleapis.com/auth/cloud-platform"),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("subject_token", OIDC_TOKEN),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(form, expected);
    assert_eq!(
        seen[1].path,
        format!("/v1/projects/-/serviceAccounts/{SA}:generateAccessToken")
    );
    assert_eq!(
        seen[1].authorization.as_deref(),
        Some(&*format!("Bearer {}", fake.federated_token()))
    );

    // A subject token the STS does not accept: the broker cannot authenticate.
    std::fs::write(&token_file, "not-accepted").unwrap();
    let p = provider(&fake, |s| {
        s.auth = Some(Auth::Credentials {
            credentials_ref: "env:GCP_FEDERATION".into(),
        })
    });
    let err = Call::new(&format!("gcp-iam://{SA}"))
        .mint(&p, &nested)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthenticationFailed, "{err}");
    assert_no_canary(
        "federation error",
        &format!("{err} {err:?}"),
        &[OIDC_TOKEN, &fake.federated_token()],
    );
}

fn decode(v: &str) -> String {
    let v = v.replace('+', " ");
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn a_service_account_key_by_reference_signs_its_own_jwt() {
    let fake = FakeGoogle::start();
    fake.add_account(SA);
    let broker_sa = "broker@broker-test.iam.gserviceaccount.com";
    let Some(generated) = python(&["sa-key", broker_sa]) else {
        return;
    };
    let private_key = generated["key"]["private_key"]
        .as_str()
        .unwrap()
        .to_string();
    let nested = Nested(HashMap::from([(
        "env:GCP_SA_KEY".to_string(),
        generated["key"].to_string().into_bytes(),
    )]));
    let p = provider(&fake, |s| {
        s.auth = Some(Auth::Credentials {
            credentials_ref: "env:GCP_SA_KEY".into(),
        })
    });
    let minted = Call::new(&format!("gcp-iam://{SA}"))
        .mint(&p, &nested)
        .await
        .unwrap();
    assert!(
        minted
            .value()
            .expose()
            .starts_with(MINTED_PREFIX.as_bytes())
    );
    let seen = fake.seen();
    // No token endpoint call: the key signs a JWT that is sent as the bearer token, which
    // the key's public half verifies.
    assert_eq!(seen.len(), 1, "{seen:?}");
    let jwt = seen[0]
        .authorization
        .as_deref()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    let verified = python(&["verify-jwt", generated["public"].as_str().unwrap(), &jwt]).unwrap();
    assert_eq!(verified["header"]["alg"], "RS256");
    assert_eq!(verified["header"]["kid"], "0123456789abcdef");
    assert_eq!(verified["claims"]["iss"], broker_sa);
    assert_eq!(verified["claims"]["sub"], broker_sa);
    assert_eq!(
        verified["claims"]["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    // The key never shows in what the provider prints.
    let key_body = private_key.lines().nth(5).unwrap().to_string();
    assert_no_canary("provider Debug", &format!("{p:?}"), &[&key_body]);

    // A document of another type is refused, naming the type only.
    let nested = Nested(HashMap::from([(
        "env:GCP_SA_KEY".to_string(),
        br#"{"type":"authorized_user","refresh_token":"gcp-refresh-canary-77aa"}"#.to_vec(),
    )]));
    let p = provider(&fake, |s| {
        s.auth = Some(Auth::Credentials {
            credentials_ref: "env:GCP_SA_KEY".into(),
        })
    });
    let err = Call::new(&format!("gcp-iam://{SA}"))
        .mint(&p, &nested)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert_eq!(
        err.to_string(),
        format!(
            "`gcp-iam://{SA}`: the Google credentials document has type `authorized_user`; the broker takes `service_account` or `external_account`"
        )
    );
    assert_no_canary("error", &format!("{err:?}"), &["gcp-refresh-canary-77aa"]);
}

#[tokio::test]
async fn the_metadata_server_identity() {
    let fake = FakeGoogle::start();
    fake.add_account(SA);
    let p = provider(&fake, |s| {
        s.auth = Some(Auth::Metadata {
            endpoint: Some(fake.url.clone()),
        })
    });
    let nested = nested();
    Call::new(&format!("gcp-iam://{SA}"))
        .mint(&p, &nested)
        .await
        .unwrap();
    let seen = fake.seen();
    let token = seen
        .iter()
        .find(|s| s.path == "/computeMetadata/v1/instance/service-accounts/default/token")
        .unwrap_or_else(|| panic!("no metadata token request: {seen:?}"));
    assert_eq!(token.method, "GET");
    assert_eq!(token.metadata_flavor.as_deref(), Some("Google"));
    assert_eq!(
        token.query,
        "scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform"
    );
    let iam = seen.last().unwrap();
    assert_eq!(
        iam.path,
        format!("/v1/projects/-/serviceAccounts/{SA}:generateAccessToken")
    );
    assert_eq!(
        iam.authorization.as_deref(),
        Some(&*format!("Bearer {}", support::METADATA_TOKEN))
    );
    // The metadata server is part of the egress manifest.
    let r: Reference = format!("gcp-iam://{SA}").parse().unwrap();
    let d = p.egress(&r, Path::new("/")).unwrap();
    assert_eq!(d.len(), 2, "{d:?}");

    // Without `auth`, nothing is sent and the error says what to set.
    let p = provider(&fake, |s| s.auth = None);
    fake.clear_seen();
    let err = Call::new(&format!("gcp-iam://{SA}"))
        .mint(&p, &nested)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConfigured);
    assert!(fake.seen().is_empty());
    let check = p.check(&nested).await;
    assert!(!check.ok);
}

/// A stand-in `env:` backend for the broker-level test: every reference resolves to the
/// broker's own test token (the broker's identity by reference, without touching the process
/// environment).
mod fixed {
    use std::path::Path;
    use std::sync::Arc;

    use broker_core::{
        BackendContext, Badge, Capabilities, Credential, CredentialProvider, Destination,
        ProviderDescriptor, Reference, Request, Result, SecretValue, async_trait,
    };

    struct Fixed;

    #[async_trait]
    impl CredentialProvider for Fixed {
        fn egress(&self, _: &Reference, _: &Path) -> Result<Vec<Destination>> {
            Ok(vec![])
        }
        async fn resolve(&self, _: &Request<'_>) -> Result<Credential> {
            Ok(Credential::new(SecretValue::copy_from(
                super::BROKER_TOKEN.as_bytes(),
            )))
        }
    }

    fn build(_: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
        Ok(Arc::new(Fixed))
    }

    pub static DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
        name: "fixed",
        schemes: &["env"],
        capabilities: Capabilities {
            resolve: true,
            mint: false,
            revoke: false,
            rotate: false,
        },
        default_badge: Badge::Local,
        credential_options: &[],
        grammar: &[broker_core::grammar::ENV],
        factory: build,
    };
}

#[tokio::test]
async fn the_lease_cache_shares_a_token_and_re_mints_it_before_expiry() {
    use broker_core::lease::ManualClock;
    use std::sync::Arc;

    let fake = FakeGoogle::start();
    fake.add_account(SA);
    let mut registry = broker_core::Registry::new();
    broker_gcp::register(&mut registry).unwrap();
    registry.register(&fixed::DESCRIPTOR).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"egress: {{ enabled: true }}
audit: {{ enabled: false }}
backends:
  gcp:
    iam_endpoint: "{url}"
    auth: {{ method: access_token, token_ref: "env:TEST_GCP_TOKEN" }}
credentials:
  deploy: {{ mint: "gcp-iam://{SA}", ttl: 10m }}
"#,
        url = fake.url
    );
    let config =
        broker_core::Config::from_str(&config, &dir.path().join(".broker.yml"), &registry).unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let broker = broker_core::Broker::new(config, registry)
        .unwrap()
        .with_clock(clock.clone());
    let ctx = RequestContext::new();
    let first = broker.resolve("deploy", &ctx).await.unwrap();
    let again = broker.resolve("deploy", &ctx).await.unwrap();
    assert_eq!(first.value().expose(), again.value().expose());
    assert_eq!(
        fake.seen().len(),
        1,
        "the second request is served from the cache"
    );
    // Nine minutes on, the 10-minute token is inside its refresh margin: a new one is minted.
    clock.advance(Duration::from_secs(9 * 60));
    let fresh = broker.resolve("deploy", &ctx).await.unwrap();
    assert_ne!(fresh.value().expose(), first.value().expose());
    assert_eq!(fake.seen().len(), 2);
    for seen in fake.seen() {
        assert_eq!(
            seen.authorization.as_deref(),
            Some(&*format!("Bearer {BROKER_TOKEN}"))
        );
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_transient() {
    // A port nothing listens on (bound, then closed), over https: the TLS stack is set up and
    // the connection is refused, which is retryable.
    let port = broker_core::testkit::free_port();
    let p = GcpProvider::new(Settings {
        endpoint: Some(format!("https://127.0.0.1:{port}")),
        auth: Some(Auth::None),
        ..Settings::default()
    })
    .unwrap();
    let nested = nested();
    let err = Call::new("gcp-sm://broker-test/api")
        .mint(&p, &nested)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.is_retryable());
    assert!(
        err.to_string()
            .starts_with("`gcp-sm://broker-test/api`: AccessSecretVersion on secret version projects/broker-test/secrets/api/versions/latest: cannot reach Google"),
        "{err}"
    );
}

#[tokio::test]
async fn conformance_with_wrong_credentials() {
    let fake = FakeGoogle::start();
    fake.add_version(
        "projects/broker-test/secrets/plain",
        SECRET_CANARY.as_bytes(),
        Some(support::crc32c(SECRET_CANARY.as_bytes())),
    );
    let doc = format!(r#"{{"db":{{"password":"{SECRET_CANARY}"}}}}"#);
    fake.add_version("projects/broker-test/secrets/doc", doc.as_bytes(), None);
    let p = provider(&fake, |_| {});
    let denied = provider(&fake, |s| {
        s.auth = Some(Auth::AccessToken {
            token_ref: "env:TEST_GCP_DENIED_TOKEN".into(),
        })
    });
    let anonymous = provider(&fake, |s| s.auth = Some(Auth::None));
    let nested = nested();
    for wrong in [&denied, &anonymous] {
        broker_core::testkit::Conformance {
            provider: &p,
            base_dir: Path::new("/"),
            nested: &nested,
            string: ("gcp-sm://broker-test/plain", SECRET_CANARY.as_bytes()),
            field: Some((
                "gcp-sm://broker-test/doc#db.password",
                SECRET_CANARY.as_bytes(),
            )),
            missing: "gcp-sm://broker-test/absent",
            wrong_credential: Some((wrong, "gcp-sm://broker-test/plain")),
            malformed: &[
                "gcp-sm://broker-test/plain/00",
                "gcp-sm://broker-test/pl@in",
                "gcp-sm://broker-test/plain?location=x&region=y",
            ],
            canaries: &[SECRET_CANARY, BROKER_TOKEN, support::DENIED_TOKEN],
        }
        .run()
        .await;
    }
    let err = Call::new("gcp-sm://broker-test/plain")
        .mint(&anonymous, &nested)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthenticationFailed, "{err}");
}
