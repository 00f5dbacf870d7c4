//! The broker's own Vault token: token, AppRole, JWT and Kubernetes logins, renewal, and
//! authenticated requests that re-obtain the token once after a 403.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use broker_core::{Error, ErrorKind, ResolveRef, Result, SecretValue};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::client::{Method, Reply};
use crate::errors::CallError;
use crate::provider::{VaultProvider, json_body, parse_ref};
use crate::settings::Auth;

/// The default Kubernetes service-account token file.
const K8S_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The largest token, JWT or PEM file the Vault backend reads.
pub(crate) const MAX_LOCAL_FILE: u64 = 1 << 20;

/// Reads a token, JWT or PEM file through [`broker_core::localfile`]: a FIFO, device or
/// directory fails at once instead of blocking the broker or exhausting its memory, and so does
/// a file over [`MAX_LOCAL_FILE`] ([`ErrorKind::Unsupported`]; OS errors keep their kind).
pub(crate) fn read_local(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    broker_core::localfile::read(path, MAX_LOCAL_FILE).map_err(|e| {
        e.to_error(
            format_args!("cannot read the {what} {}", path.display()),
            ErrorKind::Unsupported,
        )
    })
}

/// The broker's own token and what Vault said about it.
pub(crate) struct Session {
    token: SecretValue,
    obtained: Instant,
    /// `None`: never expires (root tokens).
    ttl: Option<Duration>,
    pub(crate) renewable: bool,
}

impl Session {
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.ttl.map(|t| t.saturating_sub(self.obtained.elapsed()))
    }
}

#[derive(Deserialize)]
pub(crate) struct AuthReply {
    pub(crate) auth: Option<AuthBlock>,
}

#[derive(Deserialize)]
pub(crate) struct AuthBlock {
    pub(crate) client_token: String,
    #[serde(default)]
    pub(crate) accessor: String,
    #[serde(default)]
    pub(crate) lease_duration: u64,
    #[serde(default)]
    pub(crate) renewable: bool,
}

impl VaultProvider {
    /// The broker's token: cached, renewed when two thirds of its TTL are gone, re-obtained
    /// when it cannot be renewed.
    pub(crate) async fn token(&self, nested: &dyn ResolveRef) -> Result<SecretValue> {
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

    pub(crate) async fn nested(
        &self,
        nested: &dyn ResolveRef,
        text: &str,
        key: &str,
    ) -> Result<SecretValue> {
        let reference = parse_ref(text, key)?;
        nested
            .resolve_ref(&reference, &format!("vault {key}"))
            .await
    }

    fn read_file(&self, path: &str, what: &str) -> Result<SecretValue> {
        let path = broker_core::provider::resolve_path(&self.inner.base_dir, path);
        let mut bytes = read_local(&path, what)?;
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
    pub(crate) async fn call(
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
}
