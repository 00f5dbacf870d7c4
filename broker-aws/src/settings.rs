//! `backends.aws` settings.

use broker_core::{Error, Reference, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `backends.aws` section of `.broker.yml`. Every key is optional; unset keys fall back to
/// the AWS SDK's normal chain (environment, shared config/credentials files, web identity,
/// container and instance metadata).
///
/// ```yaml
/// backends:
///   aws:
///     region: us-east-1
///     endpoint_url: "http://127.0.0.1:5000"    # LocalStack, moto, a VPC endpoint
///     profile: ops
///     web_identity_token_file: /var/run/secrets/token
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The default region (after the secret ARN and `?region=`; before the SDK chain).
    #[serde(default)]
    pub region: Option<String>,
    /// Send every request here instead of the public AWS endpoints (else `AWS_ENDPOINT_URL`).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The shared-config profile for the broker's own identity.
    #[serde(default)]
    pub profile: Option<String>,
    /// An OIDC token file (a platform identity). With it, `aws-sts://` credentials are minted
    /// with `AssumeRoleWithWebIdentity`: no AWS keys needed. (For the broker's own calls the
    /// SDK chain already honours `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`.)
    #[serde(default)]
    pub web_identity_token_file: Option<String>,
    /// A reference to the broker's access key id (e.g. `env:BROKER_AWS_KEY_ID`), instead of
    /// the SDK chain. Needs `secret_access_key_ref`.
    #[serde(default)]
    pub access_key_id_ref: Option<String>,
    /// A reference to the broker's secret access key.
    #[serde(default)]
    pub secret_access_key_ref: Option<String>,
    /// A reference to a session token for the keys above (optional).
    #[serde(default)]
    pub session_token_ref: Option<String>,
}

/// Static-key references, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRefs {
    pub access_key_id: Reference,
    pub secret_access_key: Reference,
    pub session_token: Option<Reference>,
}

impl Settings {
    /// Checks the settings without I/O.
    pub(crate) fn validate(&self) -> Result<Option<KeyRefs>> {
        if let Some(region) = &self.region {
            check_region(region).map_err(|e| e.with_hint("in `backends.aws.region`"))?;
        }
        if let Some(url) = &self.endpoint_url {
            check_endpoint(url)?;
        }
        let parse = |key: &str, text: &str| {
            Reference::parse(text).map_err(|e| {
                Error::invalid_config(format!("`backends.aws.{key}`: {}", e.message()))
            })
        };
        match (&self.access_key_id_ref, &self.secret_access_key_ref) {
            (Some(id), Some(secret)) => Ok(Some(KeyRefs {
                access_key_id: parse("access_key_id_ref", id)?,
                secret_access_key: parse("secret_access_key_ref", secret)?,
                session_token: self
                    .session_token_ref
                    .as_deref()
                    .map(|t| parse("session_token_ref", t))
                    .transpose()?,
            })),
            (None, None) if self.session_token_ref.is_none() => Ok(None),
            _ => Err(Error::invalid_config(
                "`backends.aws` needs both `access_key_id_ref` and `secret_access_key_ref` (and `session_token_ref` only with them)",
            )),
        }
    }
}

/// A region name such as `us-east-1` (letters, digits and `-`).
pub(crate) fn check_region(region: &str) -> Result<()> {
    let ok = !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_config(format!(
            "`{region}` is not an AWS region name (e.g. us-east-1)"
        )))
    }
}

fn check_endpoint(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(Error::invalid_config(format!(
            "`backends.aws.endpoint_url` `{url}` is not an http(s) URL"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(Settings::default().validate().unwrap().is_none());
        let s = Settings {
            region: Some("eu-west-1".into()),
            endpoint_url: Some("http://127.0.0.1:5000".into()),
            access_key_id_ref: Some("env:A".into()),
            secret_access_key_ref: Some("env:B".into()),
            ..Settings::default()
        };
        assert!(s.validate().unwrap().is_some());
        for bad in [
            Settings {
                region: Some("EU WEST".into()),
                ..Settings::default()
            },
            Settings {
                endpoint_url: Some("127.0.0.1:5000".into()),
                ..Settings::default()
            },
            Settings {
                access_key_id_ref: Some("env:A".into()),
                ..Settings::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
