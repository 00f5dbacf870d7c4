//! What an `aws-sm://` or `aws-sts://` reference asks for, checked without I/O.

use std::collections::BTreeMap;

use broker_core::{Error, ErrorKind, Reference, Request, Result};

use crate::settings::check_region;

/// An `aws-sm://SECRET_ID[?version-stage=S|version-id=V&region=R][#field]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretTarget {
    /// A secret name or full ARN.
    pub id: String,
    /// The region named by the ARN or `?region=`.
    pub region: Option<String>,
    /// `?version-stage=`.
    pub stage: Option<String>,
    /// `?version-id=`.
    pub version_id: Option<String>,
}

impl SecretTarget {
    pub(crate) fn parse(reference: &Reference) -> Result<SecretTarget> {
        let id = reference.target().to_string();
        let arn_region = id
            .strip_prefix("arn:")
            .and_then(|rest| rest.split(':').nth(2))
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        let query_region = reference.query_param("region").map(str::to_string);
        if let Some(r) = &query_region {
            check_region(r).map_err(|e| e.with_reference(reference))?;
        }
        if let (Some(a), Some(q)) = (&arn_region, &query_region)
            && a != q
        {
            return Err(Error::new(
                ErrorKind::InvalidReference,
                format!("the secret ARN is in region `{a}` but `?region={q}` asks for another"),
            )
            .with_reference(reference));
        }
        for (key, value) in reference.query() {
            if (key == "version-stage" || key == "version-id") && value.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidReference,
                    format!("`?{key}=` needs a value"),
                )
                .with_reference(reference));
            }
        }
        Ok(SecretTarget {
            id,
            region: arn_region.or(query_region),
            stage: reference.query_param("version-stage").map(str::to_string),
            version_id: reference.query_param("version-id").map(str::to_string),
        })
    }
}

/// An `aws-sts://ROLE_ARN[?external-id=..&source-identity=..&region=..&tag.KEY=VALUE]`
/// reference plus the credential's options (`external_id`, `source_identity`,
/// `session_tags`, `region`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RoleTarget {
    pub role_arn: String,
    pub region: Option<String>,
    pub external_id: Option<String>,
    pub source_identity: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl RoleTarget {
    pub(crate) fn parse(request: &Request<'_>) -> Result<RoleTarget> {
        let reference = request.reference;
        let invalid = |msg: String| {
            Error::new(ErrorKind::InvalidReference, msg)
                .with_reference(reference)
                .with_hint(
                    "aws-sts://ROLE_ARN accepts ?external-id=, ?source-identity=, ?region= and ?tag.KEY=VALUE",
                )
        };
        let mut target = RoleTarget {
            role_arn: reference.target().to_string(),
            ..RoleTarget::default()
        };
        for (key, value) in reference.query() {
            match (key.as_str(), key.strip_prefix("tag.")) {
                ("external-id", _) => target.external_id = Some(value.clone()),
                ("source-identity", _) => target.source_identity = Some(value.clone()),
                ("region", _) => target.region = Some(value.clone()),
                (_, Some(tag)) if !tag.is_empty() => {
                    target.tags.insert(tag.to_string(), value.clone());
                }
                _ => return Err(invalid(format!("unknown query parameter `{key}`"))),
            }
        }
        let option_str = |key: &str| -> Result<Option<String>> {
            match request.option(key) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(Error::invalid_config(format!("`{key}` must be a string"))),
            }
        };
        if let Some(v) = option_str("external_id")? {
            target.external_id = Some(v);
        }
        if let Some(v) = option_str("source_identity")? {
            target.source_identity = Some(v);
        }
        if let Some(v) = option_str("region")? {
            target.region = Some(v);
        }
        match request.option("session_tags") {
            None => {}
            Some(serde_json::Value::Object(map)) => {
                for (k, v) in map {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(Error::invalid_config(format!(
                                "session tag `{k}` must be a string"
                            )));
                        }
                    };
                    target.tags.insert(k.clone(), v);
                }
            }
            Some(_) => {
                return Err(Error::invalid_config(
                    "`session_tags` must be a map of tag names to values",
                ));
            }
        }
        if let Some(r) = &target.region {
            check_region(r)?;
        }
        if let Some(e) = &target.external_id
            && (e.len() < 2 || e.len() > 1224)
        {
            return Err(Error::invalid_config(
                "an external id has 2 to 1224 characters",
            ));
        }
        if let Some(s) = &target.source_identity {
            let ok = (2..=64).contains(&s.len())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
            if !ok {
                return Err(Error::invalid_config(
                    "a source identity has 2 to 64 characters from [A-Za-z0-9_+=,.@-]",
                ));
            }
        }
        if target.tags.len() > 50 {
            return Err(Error::invalid_config("STS accepts at most 50 session tags"));
        }
        for (k, v) in &target.tags {
            if k.is_empty() || k.len() > 128 || v.len() > 256 {
                return Err(Error::invalid_config(format!(
                    "session tag `{k}`: keys have 1 to 128 characters, values at most 256"
                )));
            }
        }
        Ok(target)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secret_targets() {
        let r: Reference = "aws-sm://staging/api?version-stage=AWSPREVIOUS#token"
            .parse()
            .unwrap();
        let t = SecretTarget::parse(&r).unwrap();
        assert_eq!(t.id, "staging/api");
        assert_eq!(t.stage.as_deref(), Some("AWSPREVIOUS"));
        assert_eq!(t.region, None);
        let r: Reference =
            "aws-sm://arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"
                .parse()
                .unwrap();
        assert_eq!(
            SecretTarget::parse(&r).unwrap().region.as_deref(),
            Some("eu-west-1")
        );
        let r: Reference =
            "aws-sm://arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf?region=us-east-1"
                .parse()
                .unwrap();
        assert!(SecretTarget::parse(&r).is_err());
    }

    #[test]
    fn role_targets() {
        let r: Reference =
            "aws-sts://arn:aws:iam::123456789012:role/deploy?external-id=xyz&tag.team=infra"
                .parse()
                .unwrap();
        let base = std::env::temp_dir();
        let ctx = broker_core::RequestContext::new();
        let t = RoleTarget::parse(&Request::new(&r, &base, &ctx)).unwrap();
        assert_eq!(t.external_id.as_deref(), Some("xyz"));
        assert_eq!(t.tags.get("team").map(String::as_str), Some("infra"));
        let r: Reference = "aws-sts://arn:aws:iam::123456789012:role/deploy?bogus=1"
            .parse()
            .unwrap();
        let err = RoleTarget::parse(&Request::new(&r, &base, &ctx)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidReference);
    }
}
