//! Test support: a fresh OpenBao dev server per test, the `bao` CLI, nested references.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use broker_core::testkit::OpenBao;
use broker_core::{
    Credential, CredentialProvider, Error, Reference, Request, RequestContext, ResolveRef, Result,
    SecretValue, async_trait,
};
use broker_vault::{Auth, Settings, VaultProvider};

pub const ROOT: &str = "root";

/// A running `bao server -dev` (started by the shared [`OpenBao`] test support).
pub struct Dev {
    pub server: OpenBao,
}

impl Dev {
    /// Starts a dev server, or `None` (skip) when `bao` is not installed outside CI.
    pub fn start() -> Option<Dev> {
        OpenBao::start(ROOT, "bao-dev").map(|server| Dev { server })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.server.command(args)
    }

    /// Runs `bao ARGS` as root; panics on failure; returns stdout.
    pub fn bao(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `bao ARGS` with `input` on stdin.
    pub fn bao_stdin(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `bao ... -format=json` parsed.
    pub fn bao_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.insert(a.len().min(2), "-format=json");
        serde_json::from_str(&self.bao(&a)).unwrap()
    }

    /// A token with `policy` (written from `hcl`), TTL `ttl`.
    pub fn token_with_policy(&self, name: &str, hcl: &str, ttl: &str) -> String {
        self.bao_stdin(&["policy", "write", name, "-"], hcl);
        let v = self.bao_json(&[
            "token",
            "create",
            &format!("-policy={name}"),
            &format!("-ttl={ttl}"),
        ]);
        v["auth"]["client_token"].as_str().unwrap().to_string()
    }

    pub fn settings(&self, auth: Auth) -> Settings {
        Settings {
            address: Some(self.url()),
            auth,
            ..Settings::default()
        }
    }

    /// A provider authenticating with `token_ref: "test:token"` resolved by [`Refs`].
    pub fn provider(&self) -> VaultProvider {
        VaultProvider::new(
            self.settings(Auth::Token {
                token_ref: Some("env:BROKER_VAULT_TEST_TOKEN".into()),
            }),
            self.server.home.path(),
        )
        .unwrap()
        .with_backoff(Duration::from_millis(10))
    }

    pub fn base(&self) -> &Path {
        self.server.home.path()
    }
}

/// Nested references answered from a map (in place of the broker).
#[derive(Default)]
pub struct Refs(pub HashMap<String, String>);

impl Refs {
    pub fn with(pairs: &[(&str, &str)]) -> Refs {
        Refs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
    pub fn root() -> Refs {
        Refs::with(&[("env:BROKER_VAULT_TEST_TOKEN", ROOT)])
    }
}

#[async_trait]
impl ResolveRef for Refs {
    async fn resolve_ref(&self, reference: &Reference, purpose: &str) -> Result<SecretValue> {
        self.0
            .get(&reference.to_string())
            .map(|v| SecretValue::copy_from(v.as_bytes()))
            .ok_or_else(|| {
                Error::not_found(format!("no test value for {purpose}")).with_reference(reference)
            })
    }
}

pub async fn resolve(
    p: &dyn CredentialProvider,
    refs: &Refs,
    base: &Path,
    text: &str,
) -> Result<Credential> {
    let reference: Reference = text.parse().unwrap();
    let ctx = RequestContext::new();
    let req = Request::new(&reference, base, &ctx)
        .with_credential("t")
        .with_nested(refs);
    p.resolve(&req).await
}

pub async fn with_spec<T>(
    refs: &Refs,
    base: &Path,
    yaml: &str,
    f: impl AsyncFnOnce(&Request<'_>) -> T,
) -> T {
    let registry = {
        let mut r = broker_core::Registry::new();
        broker_vault::register(&mut r).unwrap();
        r
    };
    let config = broker_core::Config::from_str(yaml, &base.join(".broker.yml"), &registry).unwrap();
    let spec = config.credentials[0].clone();
    let ctx = RequestContext::new();
    let req = Request::new(&spec.reference, base, &ctx)
        .with_credential(&spec.name)
        .with_terms(spec.terms())
        .with_nested(refs);
    f(&req).await
}

pub fn value(c: &Credential) -> String {
    String::from_utf8(c.value().expose().to_vec()).unwrap()
}
