//! broker-aws against a real moto 5.2.5 server with IAM enforcement on: conformance, canaries,
//! Secrets Manager reads (string, JSON, binary, stages, versions, regions), STS minting (trust
//! policy refusal, identity-policy denial, minted credentials calling GetCallerIdentity),
//! rotation; plus a capture server that checks exactly what AssumeRole sends and how often
//! it retries.
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use broker_aws::{AwsProvider, Settings};
use broker_core::config::Scope;
use broker_core::testkit::{
    self, Conformance, PeerProcess, assert_no_canary, capture_server, free_port, require_peer,
};
use broker_core::{
    Credential, CredentialProvider, CredentialSpec, DeliveryKind, ErrorKind, Reference, Request,
    RequestContext, ResolveRef, Result, SecretValue, async_trait,
};
use serde_json::Value;

/// A moto server set up by `tests/support/moto_setup.py`, IAM enforcement on.
struct Moto {
    peer: PeerProcess,
    fx: Value,
}

impl Moto {
    fn start() -> Option<Moto> {
        let python = require_peer("python")?;
        let peer = testkit::Moto::start("moto")?.peer;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/moto_setup.py");
        let out = Command::new(python)
            .arg(script)
            .arg(peer.url())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "moto setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fx = serde_json::from_slice(&out.stdout).unwrap();
        Some(Moto { peer, fx })
    }

    fn s(&self, path: &str) -> String {
        self.fx
            .pointer(path)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("fixture {path}"))
            .to_string()
    }

    /// A provider for this moto whose identity is the fixture keys at `/KEY/id`, `/KEY/secret`.
    fn provider(&self, key: &str) -> (AwsProvider, Keys) {
        let keys = Keys::new(&[
            ("env:TEST_AWS_KEY_ID", &self.s(&format!("/{key}/id"))),
            ("env:TEST_AWS_SECRET", &self.s(&format!("/{key}/secret"))),
        ]);
        (provider_with_keys(&self.peer.url(), false), keys)
    }

    fn canaries(&self) -> Vec<String> {
        let mut out: Vec<String> = ["string", "token", "previous", "eu"]
            .iter()
            .map(|k| self.s(&format!("/values/{k}")))
            .collect();
        out.push(self.s("/broker_key/secret"));
        out.push(self.s("/denied_key/secret"));
        out
    }
}

fn provider_with_keys(url: &str, token: bool) -> AwsProvider {
    let settings = Settings {
        region: Some("us-east-1".into()),
        endpoint_url: Some(url.to_string()),
        access_key_id_ref: Some("env:TEST_AWS_KEY_ID".into()),
        secret_access_key_ref: Some("env:TEST_AWS_SECRET".into()),
        session_token_ref: token.then(|| "env:TEST_AWS_TOKEN".into()),
        ..Settings::default()
    };
    AwsProvider::new(settings, &std::env::temp_dir()).unwrap()
}

/// Resolves the provider's key references from a map (in place of `env:`).
struct Keys(HashMap<String, SecretValue>);

impl Keys {
    fn new(pairs: &[(&str, &str)]) -> Keys {
        Keys(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), SecretValue::copy_from(v.as_bytes())))
                .collect(),
        )
    }
    fn from_minted(c: &Credential) -> Keys {
        let get = |var: &str| {
            c.companions()
                .iter()
                .find(|(k, _)| k == var)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("companion {var}"))
        };
        Keys(HashMap::from([
            ("env:TEST_AWS_KEY_ID".to_string(), get("AWS_ACCESS_KEY_ID")),
            (
                "env:TEST_AWS_SECRET".to_string(),
                get("AWS_SECRET_ACCESS_KEY"),
            ),
            ("env:TEST_AWS_TOKEN".to_string(), get("AWS_SESSION_TOKEN")),
        ]))
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

async fn resolve(p: &AwsProvider, keys: &Keys, text: &str) -> Result<Credential> {
    let reference: Reference = text.parse().unwrap();
    let base = std::env::temp_dir();
    let ctx = RequestContext::new();
    p.resolve(&Request::new(&reference, &base, &ctx).with_nested(keys))
        .await
}

fn spec(
    reference: &str,
    kind: DeliveryKind,
    ttl: Option<u64>,
    scope: Option<Scope>,
) -> CredentialSpec {
    spec_with(reference, kind, ttl, scope, serde_json::json!({}))
}

/// A credential spec as the config loader builds it (so new core fields need no test edits).
fn spec_with(
    reference: &str,
    kind: DeliveryKind,
    ttl: Option<u64>,
    scope: Option<Scope>,
    options: Value,
) -> CredentialSpec {
    let mut registry = broker_core::Registry::new();
    broker_aws::register(&mut registry).unwrap();
    let mut cred = serde_json::json!({
        "mint": reference,
        "as": "DEPLOY",
        "kind": if kind == DeliveryKind::File { "file" } else { "env" },
    });
    if let Some(ttl) = ttl {
        cred["ttl"] = ttl.into();
    }
    if let Some(scope) = scope {
        cred["scope"] = serde_json::to_value(scope).unwrap();
    }
    for (k, v) in options.as_object().unwrap() {
        cred[k] = v.clone();
    }
    let text = format!("credentials:\n  deploy: {cred}\n");
    let path = std::env::temp_dir().join(".broker.yml");
    let mut config = broker_core::Config::from_str(&text, &path, &registry).unwrap();
    config.credentials.remove(0)
}

async fn mint(
    p: &AwsProvider,
    keys: &dyn ResolveRef,
    spec: &CredentialSpec,
    agent: &str,
) -> Result<Credential> {
    let base = std::env::temp_dir();
    let ctx = RequestContext {
        agent_id: Some(agent.into()),
        ..RequestContext::new()
    };
    p.mint(
        &Request::new(&spec.reference, &base, &ctx)
            .with_credential(&spec.name)
            .with_terms(spec.terms())
            .with_nested(keys),
    )
    .await
}

fn scope() -> Scope {
    Scope {
        actions: vec!["s3:GetObject".into()],
        resources: vec!["arn:aws:s3:::bucket-a/*".into()],
        conditions: None,
    }
}

#[tokio::test]
async fn resolve_with_iam_enforced() {
    let Some(moto) = Moto::start() else { return };
    let (provider, keys) = moto.provider("broker_key");
    let (denied, denied_keys) = moto.provider("denied_key");
    let canaries = moto.canaries();
    let canaries: Vec<&str> = canaries.iter().map(String::as_str).collect();
    let base = std::env::temp_dir();
    let string = moto.s("/values/string");
    let token = moto.s("/values/token");

    // The wrong-credential provider needs its own keys: wrap it.
    struct WithKeys<'a>(&'a AwsProvider, &'a Keys);
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
    let wrong = WithKeys(&denied, &denied_keys);
    Conformance {
        provider: &provider,
        base_dir: &base,
        nested: &keys,
        string: ("aws-sm://staging/plain", string.as_bytes()),
        field: Some(("aws-sm://staging/api#token", token.as_bytes())),
        missing: "aws-sm://staging/surely-missing",
        wrong_credential: Some((&wrong, "aws-sm://staging/plain")),
        malformed: &[
            "aws-sm://",
            "aws-sm://bad secret",
            "aws-sm://staging/api?stage=x",
            "aws-sm://arn:aws:secretsmanager::123456789012:secret:x",
            "aws-sts://arn:aws:iam::12345:role/x",
            "aws-sts://arn:aws:iam::123456789012:user/x",
        ],
        canaries: &canaries,
    }
    .run()
    .await;

    // AccessDenied surfaces cleanly, naming the secret.
    let err = resolve(&denied, &denied_keys, "aws-sm://staging/plain")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("staging/plain") && text.contains("AccessDenied"),
        "{text}"
    );
    assert!(text.contains("user/denied"), "{text}");
    assert_no_canary("denied error", &format!("{err} {err:?}"), &canaries);

    // Unknown keys: authentication failed, not retryable.
    let bogus = Keys::new(&[
        ("env:TEST_AWS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE"),
        ("env:TEST_AWS_SECRET", "fake-secret-generated-for-test"),
    ]);
    let err = resolve(
        &provider_with_keys(&moto.peer.url(), false),
        &bogus,
        "aws-sm://staging/plain",
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthenticationFailed, "{err}");
    assert!(!err.is_retryable());

    // JSON: nested fields; a wrong field names the field, never the document.
    let got = resolve(&provider, &keys, "aws-sm://staging/api#nested.port")
        .await
        .unwrap();
    assert_eq!(got.value().expose(), b"5432");
    let got = resolve(&provider, &keys, "aws-sm://staging/api#/token")
        .await
        .unwrap();
    assert_eq!(got.value().expose(), token.as_bytes());
    let err = resolve(&provider, &keys, "aws-sm://staging/api#tokn")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("tokn"), "{err}");
    assert_no_canary("wrong field", &format!("{err} {err:?}"), &canaries);
    let err = resolve(&provider, &keys, "aws-sm://staging/plain#x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_no_canary("field of a string", &format!("{err} {err:?}"), &canaries);

    // Binary secrets come back as bytes.
    let got = resolve(&provider, &keys, "aws-sm://staging/blob")
        .await
        .unwrap();
    let want: Vec<u8> = (0..moto.s("/values/binary").len() / 2)
        .map(|i| u8::from_str_radix(&moto.s("/values/binary")[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(got.value().expose(), &want[..]);

    // Stages and version ids.
    let got = resolve(
        &provider,
        &keys,
        "aws-sm://staging/plain?version-stage=AWSPREVIOUS",
    )
    .await
    .unwrap();
    assert_eq!(got.value().expose(), moto.s("/values/previous").as_bytes());
    let got = resolve(
        &provider,
        &keys,
        &format!(
            "aws-sm://staging/plain?version-id={}",
            moto.s("/plain_current_version")
        ),
    )
    .await
    .unwrap();
    assert_eq!(got.value().expose(), string.as_bytes());
    let err = resolve(
        &provider,
        &keys,
        "aws-sm://staging/plain?version-stage=NOPE",
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    // Regions: the secret lives in eu-west-1 only.
    let err = resolve(&provider, &keys, "aws-sm://eu/only")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.hint().unwrap_or_default().contains("region"), "{err:?}");
    let eu = moto.s("/values/eu");
    let got = resolve(&provider, &keys, "aws-sm://eu/only?region=eu-west-1")
        .await
        .unwrap();
    assert_eq!(got.value().expose(), eu.as_bytes());
    let got = resolve(&provider, &keys, &format!("aws-sm://{}", moto.s("/eu_arn")))
        .await
        .unwrap();
    assert_eq!(got.value().expose(), eu.as_bytes());

    // The egress destination is the configured endpoint, without I/O.
    let dests = provider
        .egress(&"aws-sm://staging/plain".parse().unwrap(), &base)
        .unwrap();
    assert_eq!(dests[0].target.to_string(), moto.peer.url());
    assert_eq!(dests[0].badge, broker_core::Badge::ManagedCloud);
}

#[tokio::test]
async fn mint_with_iam_enforced() {
    let Some(moto) = Moto::start() else { return };
    let (provider, keys) = moto.provider("broker_key");
    let mut canaries = moto.canaries();

    // The broker may assume agent-deploy; the minted credentials see the assumed-role ARN.
    let deploy = spec(
        &format!("aws-sts://{}", moto.s("/deploy_role")),
        DeliveryKind::Env,
        Some(900),
        Some(scope()),
    );
    let minted = mint(&provider, &keys, &deploy, "ci-bot").await.unwrap();
    assert!(!minted.delivers_primary_env());
    let vars: Vec<&str> = minted
        .companions()
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        vars,
        [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ]
    );
    let lease = minted.lease().unwrap();
    assert!(
        lease.id.contains("assumed-role/agent-deploy/ci-bot@"),
        "{}",
        lease.id
    );
    assert!(!lease.renewable);
    let doc: Value = serde_json::from_slice(minted.value().expose()).unwrap();
    assert_eq!(doc["Version"], 1);
    assert!(doc["Expiration"].as_str().unwrap().ends_with('Z'));
    for (_, v) in &minted.companions()[1..3] {
        canaries.push(v.expose_str().unwrap().to_string());
    }
    let canary_refs: Vec<&str> = canaries.iter().map(String::as_str).collect();
    assert_no_canary("minted Debug", &format!("{minted:?}"), &canary_refs);

    let as_minted = provider_with_keys(&moto.peer.url(), true);
    let minted_keys = Keys::from_minted(&minted);
    let check = as_minted.check(&minted_keys).await;
    assert!(check.ok, "{}", check.detail);
    assert!(
        check
            .detail
            .contains("arn:aws:sts::123456789012:assumed-role/agent-deploy/ci-bot@"),
        "{}",
        check.detail
    );
    // agent-deploy may read secrets.
    let got = resolve(&as_minted, &minted_keys, "aws-sm://staging/plain")
        .await
        .unwrap();
    assert_eq!(got.value().expose(), moto.s("/values/string").as_bytes());

    // A trust policy that names someone else refuses, naming the role.
    let refusing = spec(
        &format!("aws-sts://{}", moto.s("/refusing_role")),
        DeliveryKind::Env,
        None,
        None,
    );
    let err = mint(&provider, &keys, &refusing, "ci-bot")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("role/someone-else"), "{err}");
    assert!(err.hint().unwrap().contains("trust policy"), "{err:?}");
    assert!(!err.is_retryable());
    assert_no_canary("trust refusal", &format!("{err} {err:?}"), &canary_refs);

    // A role whose identity policy denies GetSecretValue: minting works, reading is denied.
    let no_secrets = spec(
        &format!("aws-sts://{}", moto.s("/no_secrets_role")),
        DeliveryKind::Env,
        None,
        None,
    );
    let minted = mint(&provider, &keys, &no_secrets, "ci-bot").await.unwrap();
    let as_minted = provider_with_keys(&moto.peer.url(), true);
    let err = resolve(
        &as_minted,
        &Keys::from_minted(&minted),
        "aws-sm://staging/plain",
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("assumed-role/no-secrets"), "{err}");

    // kind: file is a shared-credentials file; AWS_SHARED_CREDENTIALS_FILE points at it.
    let file_spec = spec(
        &format!("aws-sts://{}", moto.s("/deploy_role")),
        DeliveryKind::File,
        Some(3600),
        None,
    );
    let minted = mint(&provider, &keys, &file_spec, "ci-bot").await.unwrap();
    let text = minted.value().expose_str().unwrap();
    assert!(
        text.starts_with("[default]\naws_access_key_id = "),
        "file layout"
    );
    assert!(text.contains("\naws_secret_access_key = ") && text.contains("\naws_session_token = "));
    assert_eq!(minted.path_vars(), ["AWS_SHARED_CREDENTIALS_FILE"]);
    assert!(minted.companions().is_empty());
    let plain: Vec<&str> = minted
        .plain_env()
        .iter()
        .map(|(k, v)| if v == "us-east-1" { k.as_str() } else { "?" })
        .collect();
    assert_eq!(plain, ["AWS_DEFAULT_REGION", "AWS_REGION"]);

    // ttl outside STS's range and invalid scopes are refused before any call.
    for (ttl, scope) in [
        (Some(60), None),
        (Some(13 * 3600), None),
        (
            None,
            Some(Scope {
                actions: vec!["s3 GetObject".into()],
                ..scope()
            }),
        ),
    ] {
        let bad = spec(
            &format!("aws-sts://{}", moto.s("/deploy_role")),
            DeliveryKind::Env,
            ttl,
            scope,
        );
        // An endpoint nobody listens on: a call would be a Transient error.
        let offline = provider_with_keys(&format!("http://127.0.0.1:{}", free_port()), false);
        let err = mint(&offline, &keys, &bad, "ci-bot").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    }

    // revoke: Unsupported, with the alternative.
    let err = provider
        .revoke(lease.id.as_str(), &broker_core::provider::NoNestedRefs)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.hint().unwrap().contains("ttl"), "{err:?}");
}

#[tokio::test]
async fn rotate_puts_pending_then_promotes() {
    let Some(moto) = Moto::start() else { return };
    let (provider, keys) = moto.provider("broker_key");
    let before = resolve(&provider, &keys, "aws-sm://staging/rotate")
        .await
        .unwrap();
    let reference: Reference = "aws-sm://staging/rotate#password".parse().unwrap();
    let base = std::env::temp_dir();
    let ctx = RequestContext::new();
    let rotation = provider
        .rotate(&Request::new(&reference, &base, &ctx).with_nested(&keys))
        .await
        .unwrap();
    assert!(
        rotation.summary.contains("AWSCURRENT"),
        "{}",
        rotation.summary
    );
    let after = resolve(&provider, &keys, "aws-sm://staging/rotate")
        .await
        .unwrap();
    let (b, a): (Value, Value) = (
        serde_json::from_slice(before.value().expose()).unwrap(),
        serde_json::from_slice(after.value().expose()).unwrap(),
    );
    assert_ne!(a["password"], b["password"]);
    assert_eq!(a["password"].as_str().unwrap().len(), 40);
    assert_eq!(a["user"], "app");
    assert!(!rotation.summary.contains(a["password"].as_str().unwrap()));
    let previous = resolve(
        &provider,
        &keys,
        "aws-sm://staging/rotate?version-stage=AWSPREVIOUS",
    )
    .await
    .unwrap();
    assert_eq!(previous.value(), before.value());
    let current = resolve(
        &provider,
        &keys,
        &format!(
            "aws-sm://staging/rotate?version-id={}",
            rotation.version.unwrap()
        ),
    )
    .await
    .unwrap();
    assert_eq!(current.value(), after.value());
}

#[tokio::test]
async fn web_identity_mint() {
    let Some(moto) = Moto::start() else { return };
    // AssumeRoleWithWebIdentity is unsigned, and moto with IAM enforcement on cannot handle an
    // unsigned request (KeyError on the Authorization header): switch enforcement off here.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", moto.peer.port)).unwrap();
    write!(
        conn,
        "POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\ninf"
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"),
        "{reply}"
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "fake.oidc.token-for-tests\n").unwrap();
    let settings = Settings {
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto.peer.url()),
        web_identity_token_file: Some(token_file.display().to_string()),
        ..Settings::default()
    };
    let provider = AwsProvider::new(settings, dir.path()).unwrap();
    let deploy = spec(
        &format!("aws-sts://{}", moto.s("/deploy_role")),
        DeliveryKind::Env,
        None,
        None,
    );
    let dests = provider.egress(&deploy.reference, dir.path()).unwrap();
    assert!(
        dests.iter().any(|d| d.target.to_string().contains("token")),
        "{dests:?}"
    );
    let minted = mint(
        &provider,
        &broker_core::provider::NoNestedRefs,
        &deploy,
        "ci-bot",
    )
    .await
    .unwrap();
    assert!(
        minted.lease().unwrap().id.contains("agent-deploy"),
        "{:?}",
        minted.lease()
    );
    let as_minted = provider_with_keys(&moto.peer.url(), true);
    let check = as_minted.check(&Keys::from_minted(&minted)).await;
    assert!(
        check.ok && check.detail.contains("assumed-role/agent-deploy/ci-bot@"),
        "{}",
        check.detail
    );
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

const ASSUME_ROLE_XML: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials><AccessKeyId>ASIAFAKEFORTESTS0001</AccessKeyId><SecretAccessKey>fake-secret-for-capture-test</SecretAccessKey><SessionToken>fake-token-for-capture-test</SessionToken><Expiration>2030-01-01T00:15:00Z</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROAFAKE:s</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/agent-deploy/s</Arn></AssumedRoleUser></AssumeRoleResult></AssumeRoleResponse>"#;

#[tokio::test]
async fn assume_role_sends_exactly_the_scope_and_retries_at_most_three_times() {
    // Two 503s, then success: the SDK retries transient errors.
    let (url, seen) = capture_server(|n| {
        if n <= 2 {
            (
                503,
                "<ErrorResponse><Error><Code>ServiceUnavailable</Code></Error></ErrorResponse>"
                    .into(),
            )
        } else {
            (200, ASSUME_ROLE_XML.into())
        }
    });
    let keys = Keys::new(&[
        ("env:TEST_AWS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE"),
        ("env:TEST_AWS_SECRET", "fake-secret-generated-for-test"),
    ]);
    let provider = provider_with_keys(&url, false);
    let s = spec_with(
        "aws-sts://arn:aws:iam::123456789012:role/agent-deploy?external-id=ext-123&tag.team=infra",
        DeliveryKind::Env,
        Some(1800),
        Some(Scope {
            actions: vec!["s3:GetObject".into(), "s3:ListBucket".into()],
            resources: vec![
                "arn:aws:s3:::bucket-a/*".into(),
                "arn:aws:s3:::bucket-a".into(),
            ],
            conditions: Some(
                serde_json::json!({"StringEquals": {"aws:RequestedRegion": "us-east-1"}}),
            ),
        }),
        serde_json::json!({"source_identity": "ci-bot"}),
    );
    let base = std::env::temp_dir();
    let ctx = RequestContext {
        agent_id: Some("ci bot".into()),
        request_id: "0123456789abcdef0123456789abcdef".into(),
        ..RequestContext::new()
    };
    let minted = provider
        .mint(
            &Request::new(&s.reference, &base, &ctx)
                .with_terms(s.terms())
                .with_nested(&keys),
        )
        .await
        .unwrap();
    assert_eq!(
        minted.lease().unwrap().id,
        "arn:aws:sts::123456789012:assumed-role/agent-deploy/s"
    );
    let doc: Value = serde_json::from_slice(minted.value().expose()).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({"Version": 1, "AccessKeyId": "ASIAFAKEFORTESTS0001",
            "SecretAccessKey": "fake-secret-for-capture-test", "SessionToken": "fake-token-for-capture-test",
            "Expiration": "2030-01-01T00:15:00Z"})
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "two retries then success");
    let params = form(&seen[2]);
    assert_eq!(params["Action"], "AssumeRole");
    assert_eq!(
        params["RoleArn"],
        "arn:aws:iam::123456789012:role/agent-deploy"
    );
    assert_eq!(
        params["RoleSessionName"],
        "ci-bot@0123456789abcdef0123456789abcdef"
    );
    assert_eq!(params["DurationSeconds"], "1800");
    assert_eq!(params["ExternalId"], "ext-123");
    assert_eq!(params["SourceIdentity"], "ci-bot");
    assert_eq!(params["Tags.member.1.Key"], "team");
    assert_eq!(params["Tags.member.1.Value"], "infra");
    assert_eq!(
        params["Policy"],
        r#"{"Statement":[{"Action":["s3:GetObject","s3:ListBucket"],"Condition":{"StringEquals":{"aws:RequestedRegion":"us-east-1"}},"Effect":"Allow","Resource":["arn:aws:s3:::bucket-a/*","arn:aws:s3:::bucket-a"]}],"Version":"2012-10-17"}"#
    );

    // Always 503: exactly 4 attempts (3 retries), then a transient error that the broker
    // must not retry again.
    let (url, seen) = capture_server(|_| {
        (
            503,
            "<ErrorResponse><Error><Code>ServiceUnavailable</Code></Error></ErrorResponse>".into(),
        )
    });
    let provider = provider_with_keys(&url, false);
    let err = provider
        .mint(
            &Request::new(&s.reference, &base, &ctx)
                .with_terms(s.terms())
                .with_nested(&keys),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(!err.is_retryable());
    // Exhausted (an alert for the broker), with the SDK's true attempt count.
    assert_eq!(err.exhausted_attempts(), Some(4), "{err}");
    assert!(err.to_string().contains("role/agent-deploy"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 4);

    // AccessDenied is not retried.
    let (url, seen) = capture_server(|_| {
        (403, "<ErrorResponse><Error><Code>AccessDenied</Code><Message>not allowed</Message></Error></ErrorResponse>".into())
    });
    let provider = provider_with_keys(&url, false);
    let err = provider
        .mint(
            &Request::new(&s.reference, &base, &ctx)
                .with_terms(s.terms())
                .with_nested(&keys),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}
