//! The one trait every backend implements.
//!
//! `resolve` reads a stored secret; `mint` creates a short-lived one; `revoke` ends a lease;
//! `rotate` replaces stored key material. `mint`, `revoke` and `rotate` default to a typed
//! [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) error. `egress` says where a
//! request would go without doing any I/O; `check` reports health for `broker doctor`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{DeliveryKind, Scope};
use crate::egress::Destination;
use crate::{Credential, Error, Reference, Result, SecretValue};

/// Who is asking, and for which task. Never holds a value.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The agent's id (`--agent` / `BROKER_AGENT_ID`).
    pub agent_id: Option<String>,
    /// A fresh id per request, for correlating audit records and backend logs.
    pub request_id: String,
    /// The task id, if the caller runs tasks.
    pub task_id: Option<String>,
    /// A lifetime this request asks for (a daemon's per-request `ttl`). It only ever shortens:
    /// a minted credential gets the shorter of this and the configured `ttl`.
    pub ttl: Option<Duration>,
    /// A scope this request asks for (a daemon's per-request `scope`), used in place of the
    /// credential's configured `scope:` for minting, policy, the lease cache key and the audit
    /// log. Whoever sets it must make sure it only narrows the configured one (`broker serve`
    /// refuses a wider one with `scope_too_wide`).
    pub scope: Option<Scope>,
    /// The caller's tenant, when a verified identity carries one (a daemon's JWT claim);
    /// `None` means the config's `tenant`. Policy sees it as `principal.tenant`.
    pub tenant: Option<String>,
    /// How the caller was identified, secret-free, for the audit log (`unix peer uid 1000 gid
    /// 1000 pid 42`, `mtls sha256:…`, `jwt iss=… sub=…`); `None` for a local CLI run.
    pub identity: Option<String>,
    /// Why the caller says it asks (a daemon request's `reason`), recorded as given.
    pub purpose: Option<String>,
    /// How a daemon verified the caller (`unix`, `mtls`, `jwt`); `None` is `local` (a
    /// self-declared `--agent`). Policy sees it as `principal.identity`.
    pub identity_method: Option<String>,
    /// Attributes of the verified identity (mapped JWT claims); policy sees them as the
    /// principal's tags.
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl RequestContext {
    /// A context with a new random request id.
    pub fn new() -> Self {
        RequestContext {
            agent_id: None,
            request_id: random_id(),
            task_id: None,
            ttl: None,
            scope: None,
            tenant: None,
            identity: None,
            purpose: None,
            identity_method: None,
            attributes: std::collections::BTreeMap::new(),
        }
    }
}

/// A random 128-bit id in hex.
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Resolves a nested reference (a backend's own auth material, such as `role_id_ref`) through
/// the broker, so the egress gate applies to it too.
#[async_trait]
pub trait ResolveRef: Send + Sync {
    /// Resolves `reference`; `purpose` names what it is for, for error messages.
    async fn resolve_ref(&self, reference: &Reference, purpose: &str) -> Result<SecretValue>;
}

/// A resolver for contexts without nested references: every call fails.
pub struct NoNestedRefs;

#[async_trait]
impl ResolveRef for NoNestedRefs {
    async fn resolve_ref(&self, reference: &Reference, purpose: &str) -> Result<SecretValue> {
        Err(Error::not_configured(format!(
            "nested reference for {purpose} cannot be resolved here"
        ))
        .with_reference(reference))
    }
}

/// What a credential asks of its backend beyond the reference: the few things backends read
/// from a credential's config entry, in a type of its own so the config file's shape
/// ([`CredentialSpec`](crate::CredentialSpec)) can change without touching any backend.
///
/// Built by [`CredentialSpec::terms`](crate::CredentialSpec::terms) for config credentials;
/// embedders fill it in directly. [`Terms::default()`] is an ad-hoc request: no TTL, no
/// scope, no options, and no delivery kind.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Terms<'a> {
    /// The requested lifetime (mint).
    pub ttl: Option<Duration>,
    /// The capability bound (mint).
    pub scope: Option<&'a Scope>,
    /// Backend-specific options (`identity:` for age, say). Settings, never values.
    pub options: Option<&'a BTreeMap<String, serde_json::Value>>,
    /// How the value is delivered (env or file); `None` when the caller delivers nothing
    /// (an ad-hoc or nested request).
    pub kind: Option<DeliveryKind>,
}

impl<'a> Terms<'a> {
    /// Terms with a delivery kind and nothing else.
    pub fn new(kind: Option<DeliveryKind>) -> Self {
        Terms {
            kind,
            ..Terms::default()
        }
    }
    /// Sets the requested lifetime.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }
    /// Sets the capability bound.
    #[must_use]
    pub fn with_scope(mut self, scope: Option<&'a Scope>) -> Self {
        self.scope = scope;
        self
    }
    /// Sets the backend-specific options.
    #[must_use]
    pub fn with_options(mut self, options: &'a BTreeMap<String, serde_json::Value>) -> Self {
        self.options = Some(options);
        self
    }
}

/// One request to a provider.
#[non_exhaustive]
pub struct Request<'a> {
    /// What to resolve or mint.
    pub reference: &'a Reference,
    /// The credential's name in the config (or the reference text for ad-hoc requests).
    pub credential: &'a str,
    /// What the credential asks for: TTL, scope, options, delivery kind.
    pub terms: Terms<'a>,
    /// The directory relative paths are resolved against (the config file's directory).
    pub base_dir: &'a Path,
    /// Who is asking.
    pub context: &'a RequestContext,
    /// Resolves nested references (backend auth material).
    pub nested: &'a dyn ResolveRef,
}

impl<'a> Request<'a> {
    /// A request for `reference` with default [`Terms`], relative to `base_dir`.
    pub fn new(reference: &'a Reference, base_dir: &'a Path, context: &'a RequestContext) -> Self {
        Request {
            reference,
            credential: "",
            terms: Terms::default(),
            base_dir,
            context,
            nested: &NoNestedRefs,
        }
    }
    /// Sets the credential name.
    #[must_use]
    pub fn with_credential(mut self, name: &'a str) -> Self {
        self.credential = name;
        self
    }
    /// Sets what the credential asks for.
    #[must_use]
    pub fn with_terms(mut self, terms: Terms<'a>) -> Self {
        self.terms = terms;
        self
    }
    /// Sets the nested-reference resolver.
    #[must_use]
    pub fn with_nested(mut self, nested: &'a dyn ResolveRef) -> Self {
        self.nested = nested;
        self
    }
    /// The requested TTL (mint credentials).
    pub fn ttl(&self) -> Option<Duration> {
        self.terms.ttl
    }
    /// The requested scope (mint credentials).
    pub fn scope(&self) -> Option<&'a Scope> {
        self.terms.scope
    }
    /// A backend-specific credential option (`identity:` for age, say), as JSON.
    pub fn option(&self, key: &str) -> Option<&'a serde_json::Value> {
        self.terms.options.and_then(|o| o.get(key))
    }
    /// How the value is delivered; `None` for an ad-hoc or nested request.
    pub fn kind(&self) -> Option<DeliveryKind> {
        self.terms.kind
    }
    /// `path` made absolute against the base dir; `~/` expands to `$HOME`.
    pub fn path(&self, path: &str) -> PathBuf {
        resolve_path(self.base_dir, path)
    }
}

/// `path` made absolute against `base`; a leading `~/` expands to `$HOME`.
pub fn resolve_path(base: &Path, path: &str) -> PathBuf {
    if let Some(rest) = path.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return Path::new(&home).join(rest);
    }
    base.join(path)
}

/// What `rotate` did, for the audit log and the CLI. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// A one-line description, e.g. "re-encrypted secrets.age to 2 recipients".
    pub summary: String,
    /// The new version, where the backend has versions.
    pub version: Option<String>,
}

/// The result of a health check, for `broker doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Whether the backend is usable.
    pub ok: bool,
    /// What was checked and what was found. Never a value.
    pub detail: String,
}

impl Check {
    /// A passing check.
    pub fn ok(detail: impl Into<String>) -> Self {
        Check {
            ok: true,
            detail: detail.into(),
        }
    }
    /// A failing check.
    pub fn failed(detail: impl Into<String>) -> Self {
        Check {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// A secret backend.
#[async_trait]
pub trait CredentialProvider: Send + Sync {
    /// Where a request for `reference` would send data. Must not do I/O.
    fn egress(&self, reference: &Reference, base_dir: &Path) -> Result<Vec<Destination>>;

    /// Reads a stored secret.
    async fn resolve(&self, request: &Request<'_>) -> Result<Credential>;

    /// Creates a short-lived credential.
    async fn mint(&self, request: &Request<'_>) -> Result<Credential> {
        let _ = request;
        Err(Error::unsupported("mint"))
    }

    /// Ends a lease early. `nested` resolves the backend's own auth material.
    async fn revoke(&self, lease_id: &str, nested: &dyn ResolveRef) -> Result<()> {
        let _ = (lease_id, nested);
        Err(Error::unsupported("revoke"))
    }

    /// Replaces the stored key material behind `request.reference`.
    async fn rotate(&self, request: &Request<'_>) -> Result<Rotation> {
        let _ = request;
        Err(Error::unsupported("rotate"))
    }

    /// Whether the backend is reachable and the broker can authenticate. Never returns values.
    /// `nested` resolves the backend's own auth material.
    async fn check(&self, nested: &dyn ResolveRef) -> Check {
        let _ = nested;
        Check::ok("nothing to check")
    }
}
