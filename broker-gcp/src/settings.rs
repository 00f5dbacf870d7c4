//! `backends.gcp` settings.

use std::time::Duration;

use broker_core::{Error, Reference, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// The longest token lifetime IAM Credentials grants without an organization policy.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest token lifetime an organization policy
/// (`constraints/iam.allowServiceAccountCredentialLifetimeExtension`) can allow.
pub const EXTENDED_MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The `backends.gcp` section of `.broker.yml`.
///
/// ```yaml
/// backends:
///   gcp:
///     endpoint: "http://127.0.0.1:9090"          # Secret Manager: an emulator or Private Service Connect
///     iam_endpoint: "https://iamcredentials.googleapis.com"
///     max_token_lifetime: 12h                    # only if an org policy allows it
///     auth:
///       method: credentials                      # a service-account key or external-account JSON
///       credentials_ref: "sops:gcp.enc.json"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Send Secret Manager requests here instead of `https://secretmanager.googleapis.com` (or
    /// the regional `https://secretmanager.LOCATION.rep.googleapis.com` for `?location=`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Send IAM Credentials requests here instead of `https://iamcredentials.googleapis.com`.
    #[serde(default)]
    pub iam_endpoint: Option<String>,
    /// The longest `ttl` a `gcp-iam://` access token may ask for: `1h` (the default) up to
    /// `12h`, which needs the organization policy that allows it.
    #[serde(default)]
    #[schemars(schema_with = "duration_schema")]
    pub max_token_lifetime: Option<String>,
    /// How the broker authenticates itself to Google.
    #[serde(default)]
    pub auth: Option<Auth>,
}

/// The broker's own Google identity: one source of Application Default Credentials, named
/// explicitly, with its material given by reference.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// A service-account key or an external-account (workload identity federation) JSON
    /// document, given by reference (`sops:gcp.enc.json`, `env:GCP_CREDENTIALS_JSON`). Its
    /// `type` says which.
    Credentials {
        /// The reference to the JSON document.
        credentials_ref: String,
    },
    /// The metadata server (GCE, GKE, Cloud Run).
    Metadata {
        /// Another metadata server address (default: the platform's, `$GCE_METADATA_HOST`).
        #[serde(default)]
        endpoint: Option<String>,
    },
    /// An OAuth access token given by reference (it expires; the broker does not refresh it).
    AccessToken {
        /// The reference to the token.
        token_ref: String,
    },
    /// No credentials at all: only for emulators that check none.
    None,
}

/// The settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checked {
    pub max_lifetime: Duration,
    pub auth: Option<CheckedAuth>,
}

/// [`Auth`] with its references parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckedAuth {
    Credentials(Reference),
    Metadata(Option<String>),
    AccessToken(Reference),
    None,
}

impl Settings {
    /// Checks the settings without I/O.
    pub(crate) fn validate(&self) -> Result<Checked> {
        if let Some(url) = &self.endpoint {
            check_endpoint("endpoint", url)?;
        }
        if let Some(url) = &self.iam_endpoint {
            check_endpoint("iam_endpoint", url)?;
        }
        let max_lifetime = match &self.max_token_lifetime {
            None => DEFAULT_MAX_LIFETIME,
            Some(text) => {
                let d = broker_core::config::parse_duration(text).map_err(|_| {
                    Error::invalid_config(format!(
                        "`backends.gcp.max_token_lifetime` `{}` is not a duration (e.g. 1h, 12h)",
                        broker_core::grammar::elide(text)
                    ))
                })?;
                if d < Duration::from_secs(1) || d > EXTENDED_MAX_LIFETIME {
                    return Err(Error::invalid_config(
                        "`backends.gcp.max_token_lifetime` is between 1s and 12h (Google's ceiling with the lifetime-extension org policy)",
                    ));
                }
                d
            }
        };
        let parse = |key: &str, text: &str| {
            Reference::parse(text).map_err(|e| {
                Error::invalid_config(format!("`backends.gcp.auth.{key}`: {}", e.message()))
            })
        };
        let auth = match &self.auth {
            None => None,
            Some(Auth::Credentials { credentials_ref }) => Some(CheckedAuth::Credentials(parse(
                "credentials_ref",
                credentials_ref,
            )?)),
            Some(Auth::Metadata { endpoint }) => {
                if let Some(url) = endpoint {
                    check_endpoint("auth.endpoint", url)?;
                }
                Some(CheckedAuth::Metadata(endpoint.clone()))
            }
            Some(Auth::AccessToken { token_ref }) => {
                Some(CheckedAuth::AccessToken(parse("token_ref", token_ref)?))
            }
            Some(Auth::None) => Some(CheckedAuth::None),
        };
        Ok(Checked { max_lifetime, auth })
    }
}

/// `max_token_lifetime:` as [`Settings::validate`] reads it: a number of seconds, or `1h`,
/// `12h`, `90m`.
fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "oneOf": [
            { "type": "integer", "minimum": 1, "maximum": 43200 },
            { "type": "string", "pattern": "^\\s*([0-9]+|([0-9]+[smhd])+)\\s*$" },
            { "type": "null" }
        ]
    })
}

fn check_endpoint(key: &str, url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(Error::invalid_config(format!(
            "`backends.gcp.{key}` `{}` is not an http(s) URL",
            broker_core::grammar::elide(url)
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let checked = Settings::default().validate().unwrap();
        assert_eq!(checked.max_lifetime, DEFAULT_MAX_LIFETIME);
        assert!(checked.auth.is_none());
        let s = Settings {
            endpoint: Some("http://127.0.0.1:9090".into()),
            max_token_lifetime: Some("12h".into()),
            auth: Some(Auth::Credentials {
                credentials_ref: "sops:gcp.enc.json".into(),
            }),
            ..Settings::default()
        };
        let checked = s.validate().unwrap();
        assert_eq!(checked.max_lifetime, EXTENDED_MAX_LIFETIME);
        assert!(matches!(checked.auth, Some(CheckedAuth::Credentials(_))));
        for bad in [
            Settings {
                endpoint: Some("127.0.0.1:9090".into()),
                ..Settings::default()
            },
            Settings {
                max_token_lifetime: Some("13h".into()),
                ..Settings::default()
            },
            Settings {
                auth: Some(Auth::AccessToken {
                    token_ref: "nope".into(),
                }),
                ..Settings::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
