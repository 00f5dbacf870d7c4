//! What a `gcp-sm://` or `gcp-iam://` reference asks for, checked without I/O.

use std::time::Duration;

use broker_core::{Error, ErrorKind, Reference, Request, Result};

/// The scope `gcp-iam://` access tokens get when the credential names none.
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A `gcp-sm://PROJECT/SECRET[/VERSION][?location=L][#field]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretTarget {
    pub project: String,
    pub secret: String,
    /// A number, `latest` (the default) or an alias.
    pub version: String,
    /// `?location=`: a regional secret.
    pub location: Option<String>,
}

impl SecretTarget {
    pub(crate) fn parse(reference: &Reference) -> Result<SecretTarget> {
        let mut parts = reference.target().split('/');
        let (Some(project), Some(secret)) = (parts.next(), parts.next()) else {
            return Err(Error::new(
                ErrorKind::InvalidReference,
                "expected PROJECT/SECRET[/VERSION]",
            )
            .with_reference(reference));
        };
        let version = parts.next().unwrap_or("latest");
        let location = reference.query_param("location").map(str::to_string);
        if let Some(l) = &location {
            check_location(l).map_err(|e| e.with_reference(reference))?;
        }
        Ok(SecretTarget {
            project: project.to_string(),
            secret: secret.to_string(),
            version: version.to_string(),
            location,
        })
    }

    /// `projects/P[/locations/L]/secrets/S`.
    pub(crate) fn secret_name(&self) -> String {
        match &self.location {
            Some(l) => format!(
                "projects/{}/locations/{l}/secrets/{}",
                self.project, self.secret
            ),
            None => format!("projects/{}/secrets/{}", self.project, self.secret),
        }
    }

    /// `projects/P[/locations/L]/secrets/S/versions/V`.
    pub(crate) fn version_name(&self) -> String {
        format!("{}/versions/{}", self.secret_name(), self.version)
    }
}

/// A location such as `us-central1` (lowercase letters, digits and `-`).
pub(crate) fn check_location(location: &str) -> Result<()> {
    let ok = !location.is_empty()
        && location.len() <= 40
        && location
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !location.starts_with('-')
        && !location.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidReference,
            format!(
                "`?location={}` is not a Google Cloud location (e.g. us-central1)",
                broker_core::grammar::elide(location)
            ),
        ))
    }
}

/// What a `gcp-iam://SA_EMAIL[?id-token=true&audience=URL]` credential mints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountTarget {
    pub email: String,
    pub delegates: Vec<String>,
    pub token: TokenKind,
}

/// An access token or an ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenKind {
    Access {
        scopes: Vec<String>,
        lifetime: Duration,
    },
    Id {
        audience: String,
        include_email: bool,
    },
}

impl AccountTarget {
    /// The target of `request`, with its lifetime checked against `max_lifetime` (before any
    /// call).
    pub(crate) fn parse(request: &Request<'_>, max_lifetime: Duration) -> Result<AccountTarget> {
        let reference = request.reference;
        let email = reference.target().to_string();
        let id_token = match reference.query_param("id-token") {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidReference,
                    "`?id-token=` is `true` or `false`",
                )
                .with_reference(reference));
            }
        };
        let audience = reference.query_param("audience");
        let delegates = string_list(request, "delegates")?.unwrap_or_default();
        for d in &delegates {
            if !d.contains('@') || d.contains('/') {
                return Err(Error::invalid_config(format!(
                    "`delegates`: `{}` is not a service account email",
                    broker_core::grammar::elide(d)
                )));
            }
        }
        let token = match (id_token, audience) {
            (true, Some(audience)) if !audience.is_empty() => {
                if request.scope().is_some() || request.option("scopes").is_some() {
                    return Err(Error::invalid_config(
                        "an ID token has an audience, not OAuth scopes: drop `scope:` / `scopes:`",
                    ));
                }
                let include_email = match request.option("include_email") {
                    None => false,
                    Some(serde_json::Value::Bool(b)) => *b,
                    Some(_) => {
                        return Err(Error::invalid_config("`include_email` is true or false"));
                    }
                };
                TokenKind::Id {
                    audience: audience.to_string(),
                    include_email,
                }
            }
            (true, _) => {
                return Err(Error::new(
                    ErrorKind::InvalidReference,
                    "an ID token needs `&audience=URL`",
                )
                .with_reference(reference));
            }
            (false, Some(_)) => {
                return Err(Error::new(
                    ErrorKind::InvalidReference,
                    "`?audience=` is for ID tokens: add `id-token=true`",
                )
                .with_reference(reference));
            }
            (false, None) => TokenKind::Access {
                scopes: scopes(request)?,
                lifetime: lifetime(request.ttl(), max_lifetime)?,
            },
        };
        Ok(AccountTarget {
            email,
            delegates,
            token,
        })
    }
}

/// The OAuth scopes: `scopes:` (option), else `scope.actions`, else cloud-platform. A short
/// name (`devstorage.read_only`) means `https://www.googleapis.com/auth/devstorage.read_only`.
fn scopes(request: &Request<'_>) -> Result<Vec<String>> {
    let explicit = string_list(request, "scopes")?;
    if explicit.is_some() && request.scope().is_some_and(|s| !s.actions.is_empty()) {
        return Err(Error::invalid_config(
            "give OAuth scopes once: `scopes:` or `scope.actions`, not both",
        ));
    }
    let listed = explicit
        .or_else(|| request.scope().map(|s| s.actions.clone()))
        .unwrap_or_default();
    if listed.is_empty() {
        return Ok(vec![DEFAULT_SCOPE.to_string()]);
    }
    listed
        .into_iter()
        .map(|s| {
            if s.is_empty() || s.contains(char::is_whitespace) {
                Err(Error::invalid_config(format!(
                    "`{}` is not an OAuth scope",
                    broker_core::grammar::elide(&s)
                )))
            } else if s.starts_with("https://") {
                Ok(s)
            } else {
                Ok(format!("https://www.googleapis.com/auth/{s}"))
            }
        })
        .collect()
}

/// The token lifetime: `ttl` (default 1 h), refused outside 1 s..`max`.
fn lifetime(ttl: Option<Duration>, max: Duration) -> Result<Duration> {
    let wanted = ttl.unwrap_or(crate::settings::DEFAULT_MAX_LIFETIME.min(max));
    if wanted < Duration::from_secs(1) || wanted > max {
        let ceiling = if max == crate::settings::DEFAULT_MAX_LIFETIME {
            "1h".to_string()
        } else {
            format!("{}s", max.as_secs())
        };
        return Err(Error::invalid_config(format!(
            "`ttl` {}s is outside what IAM Credentials grants (1s to {ceiling})",
            wanted.as_secs()
        ))
        .with_hint(
            "lower `ttl`; up to 12h needs the org policy iam.allowServiceAccountCredentialLifetimeExtension and `backends.gcp.max_token_lifetime`",
        ));
    }
    Ok(wanted)
}

/// A credential option that is a list of strings (or one string).
fn string_list(request: &Request<'_>, key: &str) -> Result<Option<Vec<String>>> {
    match request.option(key) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::invalid_config(format!("`{key}` is a list of strings")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(Error::invalid_config(format!(
            "`{key}` is a list of strings"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use broker_core::{RequestContext, Terms};

    use super::*;

    #[test]
    fn secret_targets() {
        let r: Reference = "gcp-sm://my-project/db/3#password".parse().unwrap();
        let t = SecretTarget::parse(&r).unwrap();
        assert_eq!(
            t.version_name(),
            "projects/my-project/secrets/db/versions/3"
        );
        let r: Reference = "gcp-sm://my-project/db?location=europe-west1"
            .parse()
            .unwrap();
        let t = SecretTarget::parse(&r).unwrap();
        assert_eq!(
            t.version_name(),
            "projects/my-project/locations/europe-west1/secrets/db/versions/latest"
        );
        let r: Reference = "gcp-sm://my-project/db?location=EU".parse().unwrap();
        assert_eq!(
            SecretTarget::parse(&r).unwrap_err().kind(),
            ErrorKind::InvalidReference
        );
    }

    fn account(
        text: &str,
        ttl: Option<Duration>,
        options: &[(&str, serde_json::Value)],
    ) -> Result<AccountTarget> {
        let r: Reference = text.parse().unwrap();
        let base = std::env::temp_dir();
        let ctx = RequestContext::new();
        let options: BTreeMap<String, serde_json::Value> = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let req = Request::new(&r, &base, &ctx)
            .with_terms(Terms::new(None).with_ttl(ttl).with_options(&options));
        AccountTarget::parse(&req, crate::settings::DEFAULT_MAX_LIFETIME)
    }

    #[test]
    fn account_targets() {
        let sa = "gcp-iam://deployer@my-project.iam.gserviceaccount.com";
        let t = account(sa, None, &[]).unwrap();
        assert_eq!(
            t.token,
            TokenKind::Access {
                scopes: vec![DEFAULT_SCOPE.into()],
                lifetime: Duration::from_secs(3600)
            }
        );
        let t = account(
            sa,
            Some(Duration::from_secs(600)),
            &[
                ("scopes", serde_json::json!(["devstorage.read_only"])),
                (
                    "delegates",
                    serde_json::json!(["mid@my-project.iam.gserviceaccount.com"]),
                ),
            ],
        )
        .unwrap();
        assert_eq!(
            t.token,
            TokenKind::Access {
                scopes: vec!["https://www.googleapis.com/auth/devstorage.read_only".into()],
                lifetime: Duration::from_secs(600)
            }
        );
        assert_eq!(t.delegates.len(), 1);
        let err = account(sa, Some(Duration::from_secs(7200)), &[]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        let t = account(
            &format!("{sa}?id-token=true&audience=https://api.example.com"),
            None,
            &[],
        )
        .unwrap();
        assert!(matches!(t.token, TokenKind::Id { .. }));
        assert!(account(&format!("{sa}?id-token=true"), None, &[]).is_err());
        assert!(account(&format!("{sa}?audience=x"), None, &[]).is_err());
    }
}
