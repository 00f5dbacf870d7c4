//! Config loading, the egress gate and delivery, with test-only backends registered in a
//! private registry. The fake remote backend counts calls, so "refused before any I/O" is a
//! counter that stays at zero.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use broker_core::testkit::assert_no_canary;
use broker_core::{
    BackendContext, Badge, Broker, Capabilities, Config, Credential, CredentialProvider,
    Destination, ErrorKind, ProviderDescriptor, Reference, Registry, Request, RequestContext,
    Result, SecretValue, async_trait,
};

const CANARY: &str = "canary-config-9d2f41c07be3";

/// Calls to the remote backend at `GATED_ADDRESS`, which only the egress-off tests use.
static GATED_CALLS: AtomicUsize = AtomicUsize::new(0);
const GATED_ADDRESS: &str = "https://gated.example.com:8200";

/// A local backend returning the canary for any `env:` reference.
struct Local;

#[async_trait]
impl CredentialProvider for Local {
    fn egress(&self, _: &Reference, _: &Path) -> Result<Vec<Destination>> {
        Ok(vec![Destination::process_env()])
    }
    async fn resolve(&self, _: &Request<'_>) -> Result<Credential> {
        Ok(Credential::new(SecretValue::copy_from(CANARY.as_bytes())))
    }
}

/// A "remote" backend that must never be called while egress is off.
struct Remote {
    address: String,
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteSettings {
    address: Option<String>,
}

#[async_trait]
impl CredentialProvider for Remote {
    fn egress(&self, _: &Reference, _: &Path) -> Result<Vec<Destination>> {
        Ok(vec![Destination::host(
            self.address.clone(),
            Badge::ManagedCloud,
        )])
    }
    async fn resolve(&self, _: &Request<'_>) -> Result<Credential> {
        if self.address == GATED_ADDRESS {
            GATED_CALLS.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Credential::new(SecretValue::copy_from(b"remote-value")))
    }
}

fn build_local(_: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    Ok(Arc::new(Local))
}

fn build_remote(ctx: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    let s: RemoteSettings = ctx.parse_settings()?;
    Ok(Arc::new(Remote {
        address: s
            .address
            .unwrap_or_else(|| "https://vault.example.com:8200".into()),
    }))
}

static LOCAL: ProviderDescriptor = ProviderDescriptor {
    name: "env",
    schemes: &["env"],
    capabilities: Capabilities {
        resolve: true,
        mint: false,
        revoke: false,
        rotate: false,
    },
    default_badge: Badge::Local,
    credential_options: &[],
    grammar: &[],
    factory: build_local,
};

static REMOTE: ProviderDescriptor = ProviderDescriptor {
    name: "vault",
    schemes: &["vault"],
    capabilities: Capabilities {
        resolve: true,
        mint: true,
        revoke: true,
        rotate: false,
    },
    default_badge: Badge::SelfHosted,
    credential_options: &["role"],
    grammar: &[],
    factory: build_remote,
};

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(&LOCAL).unwrap();
    r.register(&REMOTE).unwrap();
    r
}

fn load(text: &str) -> Result<Config> {
    Config::from_str(text, Path::new("/cfg/.broker.yml"), &registry())
}

fn error(text: &str) -> String {
    let e = load(text)
        .and_then(|c| Broker::new(c, registry()))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::InvalidConfig | ErrorKind::InvalidReference | ErrorKind::NotConfigured
        ),
        "{e}"
    );
    e.to_string()
}

#[test]
fn minimal_config_and_defaults() {
    let c = load("credentials:\n  api-token: { ref: \"env:TOKEN\" }\n").unwrap();
    let spec = c.credential("api-token").unwrap();
    assert_eq!(spec.env_var, "API_TOKEN");
    assert_eq!(spec.kind, broker_core::DeliveryKind::Env);
    assert!(!c.egress.enabled);
    assert_eq!(c.egress.allow, vec![Badge::SelfHosted, Badge::ManagedCloud]);
    assert_eq!(load("").unwrap().credentials.len(), 0);
}

#[test]
fn errors_name_file_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            "egres: {}\n",
            "/cfg/.broker.yml:1:1: unknown field `egres` (expected one of egress, credentials, backends, policy, audit, tenant, alert, serve, mcp)",
        ),
        (
            "credentials:\n  a: { ref: \"env:A\", colour: red }\n",
            "/cfg/.broker.yml:2:22: credential `a`: unknown key `colour`",
        ),
        (
            "credentials:\n  a: { ref: \"env:A\", rol: x }\n",
            "/cfg/.broker.yml:2:22: credential `a`: unknown key `rol`; did you mean `ref`?",
        ),
        (
            "credentials:\n  a: { ref: \"vualt:x/y\" }\n",
            "/cfg/.broker.yml:2:13: credential `a`: invalid reference `vualt:x/y` at column 1: unknown scheme `vualt`; did you mean `vault`?",
        ),
        (
            "credentials:\n  a: { ref: \"aws-sm://x\" }\n",
            "/cfg/.broker.yml:2:13: credential `a` (aws-sm://x): scheme `aws-sm` is not compiled into this broker",
        ),
        (
            "credentials:\n  a: { as: A }\n",
            "/cfg/.broker.yml:2:3: credential `a`: missing `ref:` (a stored secret) or `mint:` (a minted credential)",
        ),
        (
            "credentials:\n  a: { ref: \"env:A\", mint: \"vault:auth/token/create\" }\n",
            "/cfg/.broker.yml:2:28: credential `a`: give either `ref:` or `mint:`, not both",
        ),
        (
            "credentials:\n  a: { ref: \"env:A\", ttl: 5m }\n",
            "/cfg/.broker.yml:2:27: credential `a`: `ttl:` applies to `mint:` credentials only",
        ),
        (
            "credentials:\n  a: { mint: \"vault:auth/token/create\", ttl: 5x }\n",
            "/cfg/.broker.yml:2:46: credential `a`: `5x` is not a duration (use e.g. 90s, 15m, 1h30m)",
        ),
        (
            "credentials:\n  a: { mint: \"env:A\" }\n",
            "/cfg/.broker.yml:2:14: credential `a`: `env` references are read, not minted: write `ref:` instead of `mint:`",
        ),
        (
            "credentials:\n  a: { ref: \"env:A\", as: 9BAD }\n",
            "/cfg/.broker.yml:2:26: credential `a`: `as: 9BAD` is not a valid environment variable name",
        ),
        (
            "credentials:\n  a: { ref: \"env:A\", kind: socket }\n",
            "/cfg/.broker.yml:2:28: unknown variant `socket` (expected one of env, file)",
        ),
        (
            "credentials:\n  a: { ref: \"env:A\", as: X }\n  b: { ref: \"env:B\", as: X }\n",
            "/cfg/.broker.yml:3:3: credential `b`: delivered as `X`, which credential `a` already uses",
        ),
        (
            "credentials:\n  a: { ref: \"env:A\" }\n  a: { ref: \"env:B\" }\n",
            "/cfg/.broker.yml:3:3: duplicate key `a`",
        ),
        (
            "backends:\n  vualt: {}\n",
            "/cfg/.broker.yml:2:3: unknown backend `vualt`; did you mean `vault`?",
        ),
        (
            "backends:\n  aws: {}\n",
            "/cfg/.broker.yml:2:3: backend `aws` is not compiled into this broker",
        ),
        (
            "backends:\n  vault: { adress: x }\n",
            "/cfg/.broker.yml:2:12: unknown field `adress` (expected `address`)",
        ),
        (
            "egress: { enabled: maybe }\n",
            "/cfg/.broker.yml:1:20: invalid boolean",
        ),
        (
            "egress: { allow: [public] }\n",
            "/cfg/.broker.yml:1:19: unknown variant `public` (expected one of local, self-hosted, managed-cloud)",
        ),
        (
            "credentials: [a, b]\n",
            "/cfg/.broker.yml:1:1: invalid type: sequence, expected a map of credential names to { ref | mint, as, kind, ttl, scope }",
        ),
    ];
    let mut failures = Vec::new();
    for (text, want) in cases {
        let got = error(text);
        if got != *want {
            failures.push(format!("config:\n{text}want: {want}\ngot:  {got}\n"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn backend_specific_keys_are_accepted_when_declared() {
    let c = load("credentials:\n  a: { ref: \"vault:secret/x\", role: ci }\n").unwrap();
    assert_eq!(
        c.credential("a").unwrap().options["role"],
        serde_json::json!("ci")
    );
}

#[test]
fn relative_paths_resolve_against_the_config_dir() {
    let c = load("policy: p.cedar\naudit: { path: .broker/audit.jsonl }\n").unwrap();
    assert_eq!(c.policy.as_deref(), Some(Path::new("/cfg/p.cedar")));
    assert_eq!(
        c.audit_path.as_deref(),
        Some(Path::new("/cfg/.broker/audit.jsonl"))
    );
}

fn broker(text: &str) -> Broker {
    Broker::new(load(text).unwrap(), registry()).unwrap()
}

#[tokio::test]
async fn egress_off_refuses_remote_before_any_call() {
    let b = broker(&format!(
        "backends:\n  vault: {{ address: \"{GATED_ADDRESS}\" }}\ncredentials:\n  local: {{ ref: \"env:A\" }}\n  db: {{ ref: \"vault:secret/data/app#url\", as: DATABASE_URL }}\n"
    ));
    let err = b.resolve("db", &RequestContext::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::EgressDenied);
    assert_eq!(
        err.to_string(),
        format!(
            "credential `db` (vault:secret/data/app#url): egress is disabled; this would reach {GATED_ADDRESS} (managed-cloud)"
        )
    );
    assert_eq!(
        err.hint(),
        Some("set `egress.enabled: true` in /cfg/.broker.yml after reviewing `broker audit`")
    );
    // Delivering everything is refused as a whole, also before any call.
    let err = b.deliver(&[], &RequestContext::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::EgressDenied);
    assert_eq!(
        GATED_CALLS.load(Ordering::SeqCst),
        0,
        "the remote backend was called"
    );
    // The local credential still resolves.
    assert_eq!(
        b.resolve("local", &RequestContext::new())
            .await
            .unwrap()
            .value()
            .expose(),
        CANARY.as_bytes()
    );
}

#[tokio::test]
async fn egress_allow_list_is_per_badge() {
    let text = "egress: { enabled: true, allow: [self-hosted] }\ncredentials:\n  db: { ref: \"vault:secret/app#url\" }\n";
    let err = broker(text)
        .resolve("db", &RequestContext::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::EgressDenied);
    assert!(
        err.to_string()
            .contains("egress to managed-cloud destinations is not allowed"),
        "{err}"
    );

    // A declared self-hosted host passes the same allow list.
    let text = "egress: { enabled: true, allow: [self-hosted], self_hosted: [\"*.example.com\"] }\ncredentials:\n  db: { ref: \"vault:secret/app#url\" }\n";
    assert!(
        broker(text)
            .resolve("db", &RequestContext::new())
            .await
            .is_ok()
    );

    // Loopback is self-hosted by its address alone.
    let text = "egress: { enabled: true, allow: [self-hosted] }\nbackends:\n  vault: { address: \"http://127.0.0.1:8200\" }\ncredentials:\n  db: { ref: \"vault:secret/app#url\" }\n";
    assert!(
        broker(text)
            .resolve("db", &RequestContext::new())
            .await
            .is_ok()
    );
}

#[test]
fn manifest_is_secret_free_and_complete() {
    let b = broker(
        "credentials:\n  api: { ref: \"env:A\", as: API_TOKEN }\n  key: { ref: \"env:B\", kind: file }\n  ci: { mint: \"vault:auth/token/create?policies=ci\", ttl: 10m }\n",
    );
    let m = b.manifest().unwrap();
    let rows: Vec<(String, &str, Badge, bool, Option<String>)> = m
        .entries
        .iter()
        .map(|e| {
            (
                e.credential.clone(),
                e.backend,
                e.badge,
                e.allowed,
                e.ttl.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("api".into(), "env", Badge::Local, true, None),
            ("key".into(), "env", Badge::Local, true, None),
            (
                "ci".into(),
                "vault",
                Badge::ManagedCloud,
                false,
                Some("10m".into())
            ),
        ]
    );
    let json = serde_json::to_string(&m).unwrap();
    assert_no_canary("manifest", &json, &[CANARY]);
    assert!(json.contains("\"delivered_as\":\"API_TOKEN\""));
}

#[tokio::test]
async fn delivery_env_and_file() {
    let b = broker(
        "credentials:\n  api: { ref: \"env:A\" }\n  key: { ref: \"env:B\", kind: file, as: KEY_FILE }\n",
    );
    let mut d = b.deliver(&[], &RequestContext::new()).await.unwrap();
    let env: Vec<(&str, Vec<u8>)> = d
        .env()
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose().to_vec()))
        .collect();
    assert_eq!(env[0], ("API", CANARY.as_bytes().to_vec()));
    let path = String::from_utf8(env[1].1.clone()).unwrap();
    assert_eq!(env[1].0, "KEY_FILE");
    assert_eq!(std::fs::read(&path).unwrap(), CANARY.as_bytes());
    assert_eq!(
        broker_core::scratch::mode_of(Path::new(&path)).unwrap(),
        0o600
    );
    let dir = d.scratch().unwrap().path().to_path_buf();
    assert_no_canary("Debug of a delivery", &format!("{d:?}"), &[CANARY]);
    d.wipe().unwrap();
    assert!(!dir.exists());

    // Dropping a delivery wipes too.
    let d = b
        .deliver(&["key".into()], &RequestContext::new())
        .await
        .unwrap();
    let dir = d.scratch().unwrap().path().to_path_buf();
    drop(d);
    assert!(!dir.exists());
}

#[tokio::test]
async fn unknown_names_get_a_suggestion() {
    let b = broker("credentials:\n  api-token: { ref: \"env:A\" }\n");
    let err = b
        .resolve("api-tokn", &RequestContext::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no credential named `api-tokn` in /cfg/.broker.yml; did you mean `api-token`?"
    );
    assert_eq!(err.hint(), Some("declared credentials: api-token"));
}

#[test]
fn duplicate_registrations_are_refused() {
    let mut r = registry();
    assert!(r.register(&LOCAL).is_err());
    assert_eq!(r.schemes(), vec!["env".to_string(), "vault".to_string()]);
}
