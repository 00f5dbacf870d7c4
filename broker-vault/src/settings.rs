//! `backends.vault` settings.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

/// The default address when neither `address` nor `$VAULT_ADDR` is set (as the vault CLI).
pub const DEFAULT_ADDRESS: &str = "https://127.0.0.1:8200";

/// `backends.vault` in `.broker.yml`. Every secret is a reference, never inline.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The server, e.g. `https://vault.internal:8200`. Default: `$VAULT_ADDR`, then
    /// `https://127.0.0.1:8200`.
    #[serde(default)]
    pub address: Option<String>,
    /// A PEM file of CA certificates that replaces the system roots. Default: `$VAULT_CACERT`.
    #[serde(default)]
    pub ca_cert: Option<String>,
    /// A PEM client certificate (chain) for mTLS. Default: `$VAULT_CLIENT_CERT`.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// The PEM private key of `client_cert`. Default: `$VAULT_CLIENT_KEY`.
    #[serde(default)]
    pub client_key: Option<String>,
    /// Sent as `X-Vault-Namespace`. Default: `$VAULT_NAMESPACE`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Per-request timeout, e.g. `30s`. Default: 30 s.
    #[serde(default)]
    #[schemars(schema_with = "duration_schema")]
    pub timeout: Option<String>,
    /// How the broker authenticates itself. Default: `{ method: token }`.
    #[serde(default)]
    pub auth: Auth,
}

/// How the broker authenticates to Vault.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    /// A token: `token_ref`, else `$VAULT_TOKEN`, else `~/.vault-token`.
    Token {
        /// A reference to the token (e.g. `env:VAULT_TOKEN`).
        #[serde(default)]
        token_ref: Option<String>,
    },
    /// AppRole login.
    Approle {
        /// The auth mount. Default `approle`.
        #[serde(default)]
        mount: Option<String>,
        /// A reference to the role id.
        role_id_ref: String,
        /// A reference to the secret id (omit for roles with `bind_secret_id=false`).
        #[serde(default)]
        secret_id_ref: Option<String>,
    },
    /// JWT/OIDC login with a platform-injected identity token.
    Jwt {
        /// The auth mount. Default `jwt`.
        #[serde(default)]
        mount: Option<String>,
        /// The Vault role.
        role: String,
        /// The file holding the JWT (re-read at every login).
        #[serde(default)]
        jwt_file: Option<String>,
        /// Or a reference to the JWT.
        #[serde(default)]
        jwt_ref: Option<String>,
    },
    /// Kubernetes service-account login.
    Kubernetes {
        /// The auth mount. Default `kubernetes`.
        #[serde(default)]
        mount: Option<String>,
        /// The Vault role.
        role: String,
        /// The service-account token file. Default:
        /// `/var/run/secrets/kubernetes.io/serviceaccount/token`.
        #[serde(default)]
        token_file: Option<String>,
    },
}

impl Default for Auth {
    fn default() -> Self {
        Auth::Token { token_ref: None }
    }
}

impl Auth {
    /// `token`, `approle`, `jwt` or `kubernetes`.
    pub fn method(&self) -> &'static str {
        match self {
            Auth::Token { .. } => "token",
            Auth::Approle { .. } => "approle",
            Auth::Jwt { .. } => "jwt",
            Auth::Kubernetes { .. } => "kubernetes",
        }
    }

    /// The auth mount of a login method (`None` for tokens).
    pub fn mount(&self) -> Option<&str> {
        match self {
            Auth::Token { .. } => None,
            Auth::Approle { mount, .. } => Some(mount.as_deref().unwrap_or("approle")),
            Auth::Jwt { mount, .. } => Some(mount.as_deref().unwrap_or("jwt")),
            Auth::Kubernetes { mount, .. } => Some(mount.as_deref().unwrap_or("kubernetes")),
        }
    }

    /// Every nested reference of this method, for validation.
    pub fn references(&self) -> Vec<(&'static str, &str)> {
        match self {
            Auth::Token { token_ref } => token_ref
                .iter()
                .map(|r| ("token_ref", r.as_str()))
                .collect(),
            Auth::Approle {
                role_id_ref,
                secret_id_ref,
                ..
            } => {
                let mut v = vec![("role_id_ref", role_id_ref.as_str())];
                v.extend(secret_id_ref.iter().map(|r| ("secret_id_ref", r.as_str())));
                v
            }
            Auth::Jwt { jwt_ref, .. } => jwt_ref.iter().map(|r| ("jwt_ref", r.as_str())).collect(),
            Auth::Kubernetes { .. } => Vec::new(),
        }
    }
}

/// `timeout:` as [`parse_timeout`] reads it: a number of seconds, or `30s`, `1m30s`.
fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "oneOf": [
            { "type": "integer", "minimum": 0 },
            { "type": "string", "pattern": "^\\s*([0-9]+|([0-9]+[smhd])+)\\s*$" },
            { "type": "null" }
        ]
    })
}

/// Parses `30s`-style timeouts.
pub fn parse_timeout(text: Option<&str>) -> Result<Duration, String> {
    match text {
        None => Ok(Duration::from_secs(30)),
        Some(t) => broker_core::config::parse_duration(t),
    }
}
