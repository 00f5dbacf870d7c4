//! The Vault provider: authentication, KV reads, minting, revocation and rotation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use broker_core::{
    Badge, Check, Credential, CredentialProvider, DeliveryKind, Destination, Error, ErrorKind,
    FieldSegment, Lease, Reference, Request, ResolveRef, Result, Rotation, SecretValue,
    async_trait, egress,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::client::{Client, ClientOptions, Failure, Method, Reply};
use crate::settings::{Auth, DEFAULT_ADDRESS, Settings, parse_timeout};

/// The default TTL of a minted child token when the credential gives no `ttl`.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The default Kubernetes service-account token file.
const K8S_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Reads, mints, revokes and rotates through one Vault server.
///
/// Built without I/O; it connects, reads TLS files and authenticates on first use.
#[derive(Clone)]
pub struct VaultProvider {
    inner: Arc<Inner>,
}

struct Inner {
    auth: Auth,
    base_dir: PathBuf,
    options: ClientOptions,
    client: Mutex<Option<Arc<Client>>>,
    session: tokio::sync::Mutex<Option<Session>>,
    mounts: Mutex<Vec<Mount>>,
}

/// The broker's own token and what Vault said about it.
struct Session {
    token: SecretValue,
    obtained: Instant,
    /// `None`: never expires (root tokens).
    ttl: Option<Duration>,
    renewable: bool,
}

impl Session {
    fn remaining(&self) -> Option<Duration> {
        self.ttl.map(|t| t.saturating_sub(self.obtained.elapsed()))
    }
}

#[derive(Clone, Debug)]
struct Mount {
    /// With a trailing `/`, e.g. `secret/`.
    path: String,
    /// `Some(1|2)` for KV mounts.
    kv: Option<u8>,
}

impl std::fmt::Debug for VaultProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultProvider")
            .field("address", &self.inner.options.address)
            .field("namespace", &self.inner.options.namespace)
            .field("auth", &self.inner.auth.method())
            .finish_non_exhaustive()
    }
}

enum CallError {
    Auth(Error),
    Http(Failure),
}

impl CallError {
    fn into_error(self, what: &str, address: &str) -> Error {
        match self {
            CallError::Auth(e) => e,
            CallError::Http(f) => f.into_error(what, address),
        }
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

fn parse_ref(text: &str, key: &str) -> Result<Reference> {
    text.parse().map_err(|e: Error| {
        Error::invalid_config(format!("`backends.vault.auth.{key}`: {}", e.message()))
    })
}

fn to_secret(node: &Value) -> Result<SecretValue> {
    Ok(match node {
        Value::String(s) => SecretValue::copy_from(s.as_bytes()),
        other => SecretValue::new(
            serde_json::to_vec(other).map_err(|_| Error::internal("JSON re-encoding failed"))?,
        ),
    })
}

fn json_body<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>> {
    serde_json::to_vec(value)
        .map(Zeroizing::new)
        .map_err(|_| Error::internal("JSON encoding failed"))
}

#[derive(Deserialize)]
struct AuthReply {
    auth: Option<AuthBlock>,
}

#[derive(Deserialize)]
struct AuthBlock {
    client_token: String,
    #[serde(default)]
    accessor: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

impl VaultProvider {
    /// A provider from `backends.vault` settings; relative paths are resolved against
    /// `base_dir`. `$VAULT_ADDR`, `$VAULT_CACERT`, `$VAULT_CLIENT_CERT`/`$VAULT_CLIENT_KEY` and
    /// `$VAULT_NAMESPACE` are the defaults. No I/O.
    pub fn new(settings: Settings, base_dir: &Path) -> Result<Self> {
        let address = settings
            .address
            .clone()
            .or_else(|| env_nonempty("VAULT_ADDR"))
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        let address = address.trim_end_matches('/').to_string();
        if !(address.starts_with("http://") || address.starts_with("https://")) {
            return Err(Error::invalid_config(format!(
                "`backends.vault.address` must start with http:// or https://, got `{address}`"
            )));
        }
        let path = |p: String| broker_core::provider::resolve_path(base_dir, &p);
        let ca_cert = settings
            .ca_cert
            .clone()
            .or_else(|| env_nonempty("VAULT_CACERT"))
            .map(path);
        let client_cert = match (
            settings
                .client_cert
                .clone()
                .or_else(|| env_nonempty("VAULT_CLIENT_CERT")),
            settings
                .client_key
                .clone()
                .or_else(|| env_nonempty("VAULT_CLIENT_KEY")),
        ) {
            (Some(c), Some(k)) => Some((path(c), path(k))),
            (None, None) => None,
            _ => {
                return Err(Error::invalid_config(
                    "`backends.vault`: give both `client_cert` and `client_key`, or neither",
                ));
            }
        };
        let timeout = parse_timeout(settings.timeout.as_deref())
            .map_err(|m| Error::invalid_config(format!("`backends.vault.timeout`: {m}")))?;
        for (key, text) in settings.auth.references() {
            parse_ref(text, key)?;
        }
        let options = ClientOptions {
            address,
            ca_cert,
            client_cert,
            namespace: settings
                .namespace
                .clone()
                .or_else(|| env_nonempty("VAULT_NAMESPACE")),
            timeout,
            backoff: Duration::from_millis(200),
        };
        Ok(VaultProvider {
            inner: Arc::new(Inner {
                auth: settings.auth,
                base_dir: base_dir.to_path_buf(),
                options,
                client: Mutex::new(None),
                session: tokio::sync::Mutex::new(None),
                mounts: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Sets the first retry delay (default 200 ms; doubles per retry, plus jitter).
    #[must_use]
    pub fn with_backoff(self, backoff: Duration) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => {
                return VaultProvider { inner: shared };
            }
        };
        inner.options.backoff = backoff;
        VaultProvider {
            inner: Arc::new(inner),
        }
    }

    /// The server address.
    pub fn address(&self) -> &str {
        &self.inner.options.address
    }

    fn client(&self) -> Result<Arc<Client>> {
        let mut guard = self
            .inner
            .client
            .lock()
            .map_err(|_| Error::internal("client lock poisoned"))?;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let client = Arc::new(Client::new(self.inner.options.clone())?);
        *guard = Some(client.clone());
        Ok(client)
    }

    fn auth_label(&self) -> String {
        match self.inner.auth.mount() {
            Some(m) => format!("{} login at auth/{m}", self.inner.auth.method()),
            None => "token auth".to_string(),
        }
    }

    // ---- authentication -------------------------------------------------------------------

    /// The broker's token: cached, renewed when two thirds of its TTL are gone, re-obtained
    /// when it cannot be renewed.
    async fn token(&self, nested: &dyn ResolveRef) -> Result<SecretValue> {
        let mut guard = self.inner.session.lock().await;
        if let Some(s) = guard.as_mut() {
            match s.ttl {
                None => return Ok(s.token.clone()),
                Some(ttl) => {
                    let elapsed = s.obtained.elapsed();
                    if elapsed < ttl * 2 / 3 {
                        return Ok(s.token.clone());
                    }
                    if s.renewable && elapsed < ttl && self.renew(s).await.is_ok() {
                        return Ok(s.token.clone());
                    }
                }
            }
        }
        let session = self.obtain(nested).await?;
        let token = session.token.clone();
        *guard = Some(session);
        Ok(token)
    }

    async fn renew(&self, s: &mut Session) -> Result<()> {
        let client = self.client()?;
        let reply = client
            .send(
                Method::Post,
                "auth/token/renew-self",
                Some(&s.token),
                Some(b"{}"),
            )
            .await
            .map_err(|f| f.into_error("renewing the broker's token", client.address()))?;
        let parsed: AuthReply = serde_json::from_slice(&reply.body).map_err(|_| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                "unexpected answer to token renewal",
            )
        })?;
        let auth = parsed.auth.ok_or_else(|| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                "token renewal returned no auth",
            )
        })?;
        s.obtained = Instant::now();
        s.ttl = (auth.lease_duration > 0).then(|| Duration::from_secs(auth.lease_duration));
        s.renewable = auth.renewable;
        tracing::debug!(
            ttl = auth.lease_duration,
            "renewed the broker's Vault token"
        );
        Ok(())
    }

    async fn invalidate(&self) {
        *self.inner.session.lock().await = None;
    }

    async fn nested(&self, nested: &dyn ResolveRef, text: &str, key: &str) -> Result<SecretValue> {
        let reference = parse_ref(text, key)?;
        nested
            .resolve_ref(&reference, &format!("vault {key}"))
            .await
    }

    fn read_file(&self, path: &str, what: &str) -> Result<SecretValue> {
        let path = broker_core::provider::resolve_path(&self.inner.base_dir, path);
        let bytes = std::fs::read(&path).map_err(|e| {
            Error::io(
                format_args!("cannot read the {what} {}", path.display()),
                &e,
            )
        })?;
        let mut bytes = Zeroizing::new(bytes);
        while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.pop();
        }
        Ok(SecretValue::from(bytes))
    }

    async fn obtain(&self, nested: &dyn ResolveRef) -> Result<Session> {
        match &self.inner.auth {
            Auth::Token { token_ref } => {
                let (token, source) = match token_ref {
                    Some(r) => (
                        self.nested(nested, r, "token_ref").await?,
                        format!("token_ref `{r}`"),
                    ),
                    None => match std::env::var("VAULT_TOKEN").ok().filter(|t| !t.is_empty()) {
                        Some(t) => (SecretValue::from(t), "$VAULT_TOKEN".to_string()),
                        None => {
                            let file = match std::env::var_os("HOME") {
                                Some(h) => Path::new(&h).join(".vault-token"),
                                None => PathBuf::from(".vault-token"),
                            };
                            if !file.is_file() {
                                return Err(Error::not_configured(
                                    "no Vault token: `backends.vault.auth.token_ref` is not set, $VAULT_TOKEN is empty and ~/.vault-token does not exist",
                                )
                                .with_hint("set `auth: { method: token, token_ref: \"env:VAULT_TOKEN\" }` or another auth method"));
                            }
                            (
                                self.read_file(&file.to_string_lossy(), "Vault token file")?,
                                "~/.vault-token".to_string(),
                            )
                        }
                    },
                };
                self.lookup_self(token, &source).await
            }
            Auth::Approle {
                role_id_ref,
                secret_id_ref,
                ..
            } => {
                let role_id = self.nested(nested, role_id_ref, "role_id_ref").await?;
                let secret_id = match secret_id_ref {
                    Some(r) => Some(self.nested(nested, r, "secret_id_ref").await?),
                    None => None,
                };
                #[derive(Serialize)]
                struct Body<'a> {
                    role_id: &'a str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    secret_id: Option<&'a str>,
                }
                let secret_id_str = match &secret_id {
                    Some(s) => Some(s.expose_str()?),
                    None => None,
                };
                let body = json_body(&Body {
                    role_id: role_id.expose_str()?,
                    secret_id: secret_id_str,
                })?;
                self.login(&body).await
            }
            Auth::Jwt {
                role,
                jwt_file,
                jwt_ref,
                ..
            } => {
                let jwt = match (jwt_file, jwt_ref) {
                    (Some(f), None) => self.read_file(f, "JWT file")?,
                    (None, Some(r)) => self.nested(nested, r, "jwt_ref").await?,
                    _ => {
                        return Err(Error::invalid_config(
                            "`backends.vault.auth` (jwt): give exactly one of `jwt_file` and `jwt_ref`",
                        ));
                    }
                };
                self.login_role(role, &jwt).await
            }
            Auth::Kubernetes {
                role, token_file, ..
            } => {
                let jwt = self.read_file(
                    token_file.as_deref().unwrap_or(K8S_TOKEN_FILE),
                    "Kubernetes service-account token",
                )?;
                self.login_role(role, &jwt).await
            }
        }
    }

    async fn login_role(&self, role: &str, jwt: &SecretValue) -> Result<Session> {
        #[derive(Serialize)]
        struct Body<'a> {
            role: &'a str,
            jwt: &'a str,
        }
        let body = json_body(&Body {
            role,
            jwt: jwt.expose_str()?,
        })?;
        self.login(&body).await
    }

    async fn login(&self, body: &[u8]) -> Result<Session> {
        let client = self.client()?;
        let mount = self.inner.auth.mount().unwrap_or("token");
        let label = self.auth_label();
        let reply = match client
            .send(
                Method::Post,
                &format!("auth/{mount}/login"),
                None,
                Some(body),
            )
            .await
        {
            Ok(r) => r,
            Err(f) if matches!(f.status(), Some(400 | 401 | 403 | 404)) => {
                let e = f.into_error(&label, client.address());
                return Err(Error::authentication_failed(format!(
                    "Vault {label} failed: {}",
                    e.message()
                        .rsplit_once(" (")
                        .map_or("", |(_, d)| d.trim_end_matches(')'))
                ))
                .with_hint(format!(
                    "check the {} role and credentials, and that auth/{mount} is enabled",
                    self.inner.auth.method()
                )));
            }
            Err(f) => return Err(f.into_error(&label, client.address())),
        };
        let parsed: AuthReply = serde_json::from_slice(&reply.body).map_err(|_| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                format!("unexpected answer to {label}"),
            )
        })?;
        let auth = parsed.auth.ok_or_else(|| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                format!("{label} returned no token"),
            )
        })?;
        Ok(Session {
            ttl: (auth.lease_duration > 0).then(|| Duration::from_secs(auth.lease_duration)),
            renewable: auth.renewable,
            token: SecretValue::from(auth.client_token),
            obtained: Instant::now(),
        })
    }

    async fn lookup_self(&self, token: SecretValue, source: &str) -> Result<Session> {
        let client = self.client()?;
        match client
            .send(Method::Get, "auth/token/lookup-self", Some(&token), None)
            .await
        {
            Ok(reply) => {
                let v = reply.json()?;
                let ttl = v["data"]["ttl"].as_u64().unwrap_or(0);
                Ok(Session {
                    token,
                    obtained: Instant::now(),
                    ttl: (ttl > 0).then(|| Duration::from_secs(ttl)),
                    renewable: v["data"]["renewable"].as_bool().unwrap_or(false),
                })
            }
            Err(f) if matches!(f.status(), Some(400 | 401 | 403)) => {
                Err(Error::authentication_failed(format!(
                    "Vault rejected the broker's token (token auth, from {source})"
                ))
                .with_hint("the token is wrong, expired or revoked; get a new one (`vault login`)"))
            }
            Err(f) => Err(f.into_error("looking up the broker's token", client.address())),
        }
    }

    /// One authenticated request; after a 403 the token is re-obtained once and the request
    /// repeated.
    async fn call(
        &self,
        nested: &dyn ResolveRef,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::result::Result<Reply, CallError> {
        let client = self.client().map_err(CallError::Auth)?;
        let token = self.token(nested).await.map_err(CallError::Auth)?;
        match client.send(method, path, Some(&token), body).await {
            Err(f) if f.status() == Some(403) => {
                self.invalidate().await;
                let token = self.token(nested).await.map_err(CallError::Auth)?;
                client
                    .send(method, path, Some(&token), body)
                    .await
                    .map_err(CallError::Http)
            }
            other => other.map_err(CallError::Http),
        }
    }

    // ---- KV ------------------------------------------------------------------------------

    async fn mount_for(&self, nested: &dyn ResolveRef, target: &str) -> Result<Mount> {
        if let Ok(cache) = self.inner.mounts.lock()
            && let Some(m) = cache.iter().find(|m| target.starts_with(&m.path))
        {
            return Ok(m.clone());
        }
        let client = self.client()?;
        let path = format!("sys/internal/ui/mounts/{target}");
        match self.call(nested, Method::Get, &path, None).await {
            Ok(reply) => {
                let v = reply.json()?;
                let data = &v["data"];
                let mount_path = data["path"].as_str().unwrap_or("").to_string();
                if mount_path.is_empty() || !target.starts_with(&mount_path) {
                    return Ok(fallback_mount(target));
                }
                let kind = data["type"].as_str().unwrap_or("");
                let kv = match kind {
                    "kv" | "generic" => Some(match data["options"]["version"].as_str() {
                        Some("2") => 2,
                        _ => 1,
                    }),
                    _ => None,
                };
                let mount = Mount {
                    path: mount_path,
                    kv,
                };
                if let Ok(mut cache) = self.inner.mounts.lock() {
                    cache.push(mount.clone());
                }
                Ok(mount)
            }
            Err(CallError::Http(f)) if matches!(f.status(), Some(400 | 403 | 404)) => {
                // As the vault CLI does: without preflight information, treat it as KV v1 (a
                // read of an explicit `data/` path works on v2 as well).
                Ok(fallback_mount(target))
            }
            Err(e) => Err(e.into_error("looking up the mount", client.address())),
        }
    }

    /// The secret at `reference` (KV v1/v2) as a JSON value, plus the KV version it came from.
    async fn read_kv(
        &self,
        nested: &dyn ResolveRef,
        reference: &Reference,
        mount: &Mount,
        for_rotate: bool,
    ) -> Result<(Value, Option<u64>)> {
        let target = reference.target();
        let client = self.client()?;
        let version = reference.query_param("version");
        if let Some(v) = version {
            if for_rotate {
                return Err(Error::new(
                    ErrorKind::InvalidReference,
                    "`?version=` cannot be rotated; rotate writes a new latest version",
                ));
            }
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::new(
                    ErrorKind::InvalidReference,
                    format!("`version={v}` is not a version number"),
                ));
            }
        }
        let api = match mount.kv {
            Some(2) => {
                let mut p = data_path(mount, target);
                if let Some(v) = version {
                    p.push_str(&format!("?version={v}"));
                }
                p
            }
            _ => {
                if version.is_some() {
                    return Err(Error::new(
                        ErrorKind::InvalidReference,
                        format!("`{}` is a KV v1 mount, which has no versions", mount.path),
                    ));
                }
                target.to_string()
            }
        };
        let what = format!("reading `{api}`");
        let reply =
            match self.call(nested, Method::Get, &api, None).await {
                Ok(r) => r,
                Err(CallError::Http(f)) if f.status() == Some(404) && mount.kv == Some(2) => {
                    if let Some(e) = deleted_version_error(&f.body_json()) {
                        return Err(e);
                    }
                    if for_rotate {
                        return Ok((Value::Object(Default::default()), Some(0)));
                    }
                    return Err(Error::not_found(format!("no secret at `{api}`")).with_hint(
                        format!("list what exists with `bao kv list {}`", mount.path),
                    ));
                }
                Err(CallError::Http(f)) if f.status() == Some(404) => {
                    if for_rotate {
                        return Ok((Value::Object(Default::default()), None));
                    }
                    return Err(Error::not_found(format!("no secret at `{api}`")));
                }
                Err(e) => return Err(e.into_error(&what, client.address())),
            };
        let mut v = reply.json()?;
        let data = v.get_mut("data").map(Value::take).unwrap_or(Value::Null);
        if mount.kv == Some(2) {
            let mut data = data;
            let meta_version = data["metadata"]["version"].as_u64();
            if data["data"].is_null() {
                if let Some(e) = deleted_version_error(&Some(serde_json::json!({ "data": data }))) {
                    return Err(e);
                }
                return Err(Error::not_found(format!("no data at `{api}`")));
            }
            Ok((data["data"].take(), meta_version))
        } else {
            Ok((data, None))
        }
    }

    fn deliver_whole(request: &Request<'_>, secret: &Value) -> Result<SecretValue> {
        if let Some(spec) = request.spec
            && spec.kind == DeliveryKind::Env
        {
            let fields: Vec<&str> = secret
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            return Err(Error::invalid_config(
                    "a Vault secret is a map of fields; an environment variable needs one field",
                )
                .with_hint(format!(
                    "add `#FIELD` to the reference (fields: {}), or set `kind: file` to get the whole secret as JSON",
                    fields.join(", ")
                )));
        }
        to_secret(secret)
    }

    // ---- mint ----------------------------------------------------------------------------

    async fn mint_token(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        let target = reference.target();
        let mut body = serde_json::Map::new();
        for (k, v) in reference.query() {
            match k.as_str() {
                "policies" => {
                    let list: Vec<Value> = v
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(|p| Value::String(p.to_string()))
                        .collect();
                    body.insert("policies".into(), Value::Array(list));
                }
                "num_uses" => {
                    let n: u64 = v.parse().map_err(|_| {
                        Error::new(
                            ErrorKind::InvalidReference,
                            format!("`num_uses={v}` is not a number"),
                        )
                    })?;
                    body.insert("num_uses".into(), n.into());
                }
                "renewable" => {
                    let b: bool = v.parse().map_err(|_| {
                        Error::new(
                            ErrorKind::InvalidReference,
                            format!("`renewable={v}` is not true or false"),
                        )
                    })?;
                    body.insert("renewable".into(), b.into());
                }
                "display_name" | "type" => {
                    body.insert(k.clone(), Value::String(v.clone()));
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::InvalidReference,
                        format!("unknown parameter `{other}` for a child token"),
                    )
                    .with_hint("accepted: policies, num_uses, renewable, display_name, type"));
                }
            }
        }
        let mut ttl = request.ttl().unwrap_or(DEFAULT_TOKEN_TTL);
        self.token(request.nested).await?;
        if let Some(remaining) = self
            .inner
            .session
            .lock()
            .await
            .as_ref()
            .and_then(Session::remaining)
            && ttl > remaining
        {
            tracing::warn!(
                requested = ttl.as_secs(),
                capped = remaining.as_secs(),
                "child token TTL capped to the broker's own token"
            );
            ttl = remaining;
        }
        body.insert("ttl".into(), secs(ttl).into());
        body.insert("explicit_max_ttl".into(), secs(ttl).into());
        body.entry("display_name")
            .or_insert_with(|| Value::String(format!("broker-{}", request.credential)));
        body.insert(
            "meta".into(),
            serde_json::json!({ "broker_request_id": request.context.request_id }),
        );
        let body = json_body(&Value::Object(body))?;
        let client = self.client()?;
        let reply = self
            .call(request.nested, Method::Post, target, Some(&body))
            .await
            .map_err(|e| e.into_error("creating a child token", client.address()))?;
        let parsed: AuthReply = serde_json::from_slice(&reply.body).map_err(|_| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                "unexpected answer to token creation",
            )
        })?;
        let auth = parsed.auth.ok_or_else(|| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                "token creation returned no token",
            )
        })?;
        let lease = (!auth.accessor.is_empty()).then(|| Lease {
            id: format!("token-accessor:{}", auth.accessor),
            expires_at: Some(SystemTime::now() + Duration::from_secs(auth.lease_duration)),
            renewable: auth.renewable,
        });
        let mut credential = Credential::new(SecretValue::from(auth.client_token));
        if let Some(lease) = lease {
            credential = credential.with_lease(lease);
        }
        Ok(credential)
    }

    async fn mint_dynamic(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        let target = reference.target();
        let is_read = target.split('/').any(|s| s == "creds");
        let client = self.client()?;
        let reply = if is_read {
            self.call(request.nested, Method::Get, target, None).await
        } else {
            let mut body = serde_json::Map::new();
            for (k, v) in reference.query() {
                body.insert(k.clone(), Value::String(v.clone()));
            }
            if let Some(ttl) = request.ttl() {
                body.insert("ttl".into(), secs(ttl).into());
            }
            let body = json_body(&Value::Object(body))?;
            self.call(request.nested, Method::Post, target, Some(&body))
                .await
        }
        .map_err(|e| e.into_error(&format!("minting from `{target}`"), client.address()))?;
        let v = reply.json()?;
        let data = &v["data"];
        let value = match reference.field_path() {
            Some(path) => to_secret(path.select(data).ok_or_else(|| {
                Error::not_found(format!("field `{path}` is not in the minted credential"))
            })?)?,
            None => match (data["private_key"].as_str(), data["certificate"].as_str()) {
                (Some(key), Some(cert)) => {
                    let mut pem = Zeroizing::new(String::new());
                    pem.push_str(key.trim_end());
                    pem.push('\n');
                    pem.push_str(cert.trim_end());
                    pem.push('\n');
                    for ca in data["ca_chain"].as_array().into_iter().flatten() {
                        if let Some(ca) = ca.as_str() {
                            pem.push_str(ca.trim_end());
                            pem.push('\n');
                        }
                    }
                    SecretValue::copy_from(pem.as_bytes())
                }
                _ => to_secret(data)?,
            },
        };
        let lease_id = v["lease_id"].as_str().unwrap_or("");
        let duration = v["lease_duration"].as_u64().unwrap_or(0);
        let lease = if !lease_id.is_empty() {
            Some(Lease {
                id: lease_id.to_string(),
                expires_at: (duration > 0)
                    .then(|| SystemTime::now() + Duration::from_secs(duration)),
                renewable: v["renewable"].as_bool().unwrap_or(false),
            })
        } else if let (Some(serial), Some((mount, _))) = (
            data["serial_number"].as_str(),
            target
                .rsplit_once("/issue/")
                .or_else(|| target.rsplit_once("/sign/")),
        ) {
            Some(Lease {
                id: format!("pki-serial:{mount}/{serial}"),
                expires_at: data["expiration"]
                    .as_u64()
                    .map(|e| SystemTime::UNIX_EPOCH + Duration::from_secs(e)),
                renewable: false,
            })
        } else {
            None
        };
        let mut credential = Credential::new(value);
        if let Some(lease) = lease {
            credential = credential.with_lease(lease);
        }
        Ok(credential)
    }
}

fn fallback_mount(target: &str) -> Mount {
    let first = target.split('/').next().unwrap_or(target);
    Mount {
        path: format!("{first}/"),
        kv: Some(1),
    }
}

/// The KV v2 read path: `MOUNT/data/PATH`, keeping an explicit `data/`.
fn data_path(mount: &Mount, target: &str) -> String {
    let rest = &target[mount.path.len().min(target.len())..];
    if rest.starts_with("data/") {
        target.to_string()
    } else {
        format!("{}data/{rest}", mount.path)
    }
}

/// The KV v2 write path for rotation.
fn deleted_version_error(body: &Option<Value>) -> Option<Error> {
    let meta = &body.as_ref()?["data"]["metadata"];
    let version = meta["version"].as_u64().unwrap_or(0);
    if meta["destroyed"].as_bool() == Some(true) {
        return Some(
            Error::not_found(format!("version {version} of the secret was destroyed"))
                .with_hint("a destroyed version cannot be recovered; read another `?version=`"),
        );
    }
    if meta["deletion_time"]
        .as_str()
        .is_some_and(|t| !t.is_empty())
    {
        return Some(
            Error::not_found(format!("version {version} of the secret is deleted")).with_hint(
                "undelete it (`bao kv undelete -versions=N`) or read another `?version=`",
            ),
        );
    }
    None
}

fn generate_value() -> SecretValue {
    use base64::Engine as _;
    let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
    SecretValue::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_slice()))
}

#[async_trait]
impl CredentialProvider for VaultProvider {
    fn egress(&self, _reference: &Reference, _base_dir: &Path) -> Result<Vec<Destination>> {
        // Every non-private host is `managed-cloud` unless the user declares it self-hosted
        // (`egress.self_hosted`); the broker lowers loopback/private addresses itself.
        let address = &self.inner.options.address;
        let host = egress::host_of(address).to_ascii_lowercase();
        let badge = if egress::is_private_host(&host) {
            Badge::SelfHosted
        } else {
            Badge::ManagedCloud
        };
        Ok(vec![Destination::host(address.clone(), badge)])
    }

    async fn resolve(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        let attach = |e: Error| e.with_reference(reference);
        for (k, _) in reference.query() {
            if k != "version" {
                return Err(attach(
                    Error::new(
                        ErrorKind::InvalidReference,
                        format!("unknown parameter `{k}` for a Vault read"),
                    )
                    .with_hint(
                        "reads accept `?version=N` (KV v2); parameters of `mint:` go with mint",
                    ),
                ));
            }
        }
        let mount = self
            .mount_for(request.nested, reference.target())
            .await
            .map_err(attach)?;
        let (secret, _) = self
            .read_kv(request.nested, reference, &mount, false)
            .await
            .map_err(attach)?;
        let value = match reference.field_path() {
            Some(path) => {
                let node = path.select(&secret).ok_or_else(|| {
                    let fields: Vec<&str> = secret
                        .as_object()
                        .map(|o| o.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    attach(
                        Error::not_found(format!("field `{path}` is not in the secret"))
                            .with_hint(format!("fields: {}", fields.join(", "))),
                    )
                })?;
                to_secret(node).map_err(attach)?
            }
            None => Self::deliver_whole(request, &secret).map_err(attach)?,
        };
        Ok(Credential::new(value))
    }

    async fn mint(&self, request: &Request<'_>) -> Result<Credential> {
        let target = request.reference.target();
        let result = if target == "auth/token/create"
            || target == "auth/token/create-orphan"
            || target.starts_with("auth/token/create/")
        {
            self.mint_token(request).await
        } else {
            self.mint_dynamic(request).await
        };
        result.map_err(|e| e.with_reference(request.reference))
    }

    async fn revoke(&self, lease_id: &str, nested: &dyn ResolveRef) -> Result<()> {
        if lease_id.is_empty()
            || lease_id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid_config(format!(
                "`{lease_id}` is not a lease id"
            )));
        }
        let client = self.client()?;
        let (path, body) = if let Some(accessor) = lease_id.strip_prefix("token-accessor:") {
            (
                "auth/token/revoke-accessor".to_string(),
                serde_json::json!({ "accessor": accessor }),
            )
        } else if let Some(rest) = lease_id.strip_prefix("pki-serial:") {
            let (mount, serial) = rest.rsplit_once('/').ok_or_else(|| {
                Error::invalid_config(format!("`{lease_id}` is not pki-serial:MOUNT/SERIAL"))
            })?;
            (
                format!("{mount}/revoke"),
                serde_json::json!({ "serial_number": serial }),
            )
        } else {
            (
                "sys/leases/revoke".to_string(),
                serde_json::json!({ "lease_id": lease_id }),
            )
        };
        let body = json_body(&body)?;
        let method = if path == "sys/leases/revoke" {
            Method::Put
        } else {
            Method::Post
        };
        self.call(nested, method, &path, Some(&body))
            .await
            .map(|_| ())
            .map_err(|e| e.into_error(&format!("revoking lease `{lease_id}`"), client.address()))
    }

    async fn rotate(&self, request: &Request<'_>) -> Result<Rotation> {
        let reference = request.reference;
        let attach = |e: Error| e.with_reference(reference);
        let field = match reference.field_path().as_ref().map(|p| p.0.as_slice()) {
            Some([FieldSegment::Key(k)]) => k.clone(),
            _ => {
                return Err(attach(
                    Error::new(
                        ErrorKind::InvalidReference,
                        "rotate needs one top-level `#field`: the field to regenerate",
                    )
                    .with_hint("e.g. `vault:secret/app#token`"),
                ));
            }
        };
        let mount = self
            .mount_for(request.nested, reference.target())
            .await
            .map_err(attach)?;
        if mount.kv.is_none() {
            return Err(attach(Error::unsupported("rotate").with_hint(
                "rotate writes KV secrets; dynamic secrets are minted, not rotated",
            )));
        }
        let (mut secret, version) = self
            .read_kv(request.nested, reference, &mount, true)
            .await
            .map_err(attach)?;
        let obj = secret
            .as_object_mut()
            .ok_or_else(|| attach(Error::internal("the stored secret is not a map")))?;
        let value = generate_value();
        obj.insert(
            field.clone(),
            Value::String(value.expose_str()?.to_string()),
        );
        let client = self.client()?;
        let target = reference.target();
        if mount.kv == Some(2) {
            let path = data_path(&mount, target);
            let body = json_body(&serde_json::json!({
                "options": { "cas": version.unwrap_or(0) },
                "data": secret,
            }))?;
            let reply = self
                .call(request.nested, Method::Post, &path, Some(&body))
                .await
                .map_err(|e| {
                    attach(e.into_error(&format!("writing `{path}`"), client.address()))
                })?;
            let new_version = reply.json()?["data"]["version"].as_u64();
            Ok(Rotation {
                summary: format!(
                    "wrote a new version of `{path}` with a generated `{field}` (other fields and metadata kept)"
                ),
                version: new_version.map(|v| v.to_string()),
            })
        } else {
            let body = json_body(&secret)?;
            self.call(request.nested, Method::Post, target, Some(&body))
                .await
                .map_err(|e| {
                    attach(e.into_error(&format!("writing `{target}`"), client.address()))
                })?;
            Ok(Rotation {
                summary: format!(
                    "overwrote `{target}` with a generated `{field}`; KV v1 keeps no history, the previous value is gone"
                ),
                version: None,
            })
        }
    }

    async fn check(&self, nested: &dyn ResolveRef) -> Check {
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return Check::failed(e.to_string()),
        };
        let address = client.address().to_string();
        match client
            .send(Method::Get, "sys/seal-status", None, None)
            .await
        {
            Ok(reply) => {
                if let Ok(v) = reply.json()
                    && v["sealed"].as_bool() == Some(true)
                {
                    return Check::failed(format!("Vault at {address} is sealed"));
                }
            }
            Err(f) => {
                return Check::failed(f.into_error("checking seal status", &address).to_string());
            }
        }
        match self.token(nested).await {
            Ok(_) => {
                let remaining = self
                    .inner
                    .session
                    .lock()
                    .await
                    .as_ref()
                    .and_then(Session::remaining);
                Check::ok(format!(
                    "reachable at {address}, authenticated ({}; token {})",
                    self.auth_label(),
                    match remaining {
                        Some(r) => format!("expires in {}s", r.as_secs()),
                        None => "does not expire".to_string(),
                    }
                ))
            }
            Err(e) => Check::failed(format!("reachable at {address}; {e}")),
        }
    }
}
