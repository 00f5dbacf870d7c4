//! The config this crate reads: a credential's `proxy:` section and the top-level
//! `egress.proxy` section. `broker-core` keeps both as given ([`CredentialSpec::proxy`],
//! [`EgressConfig::proxy`](broker_core::config::EgressConfig::proxy)); unknown keys are errors
//! here, naming the credential.
//!
//! ```yaml
//! egress:
//!   proxy: { default: deny, allow_hosts: ["pypi.org"], allow_private: false, upstream_ca: ca.pem }
//! credentials:
//!   openai:
//!     ref: "env:OPENAI_API_KEY"
//!     proxy:
//!       hosts: ["api.openai.com"]
//!       headers: [Authorization]
//!       placeholder: { prefix: "sk-proj-", length: 48 }
//!       allow_http: false   # the default: never put the value into a plain-HTTP request
//! ```

use std::path::{Path, PathBuf};

use broker_core::{CredentialSpec, Error, Result};
use hyper::header::HeaderName;
use serde::Deserialize;

use crate::addr;

/// The fewest random characters a placeholder may have: 22 characters of a 62-letter
/// alphabet carry 130 bits.
pub const MIN_PLACEHOLDER_LENGTH: usize = 22;

/// The headers a placeholder is replaced in when `headers:` is not given.
pub const DEFAULT_HEADERS: &[&str] = &["authorization", "x-api-key"];

/// A host pattern: an exact host (`api.example.com`, `127.0.0.1`) or `*.suffix`, which matches
/// any name below the suffix (not the suffix itself). Case-insensitive; IP literals are
/// compared in their normalised form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This host only.
    Exact(String),
    /// Any name ending in `.suffix` (the suffix is stored without the leading dot).
    Suffix(String),
}

impl HostPattern {
    /// Parses `text`; `None` when it is not a host or `*.suffix`.
    pub fn parse(text: &str) -> Option<HostPattern> {
        let text = text.trim();
        if let Some(suffix) = text.strip_prefix("*.") {
            let suffix = addr::normalise_name(suffix)?;
            return Some(HostPattern::Suffix(suffix));
        }
        addr::normalise_host(text).map(HostPattern::Exact)
    }

    /// Whether `host` (normalised, see [`addr::normalise_host`]) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        }
    }
}

/// Whether any of `patterns` matches `host`.
pub fn any_matches(patterns: &[HostPattern], host: &str) -> bool {
    patterns.iter().any(|p| p.matches(host))
}

/// The shape of a credential's placeholder: `prefix` followed by `length` random letters and
/// digits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceholderShape {
    /// Text before the random part (so clients that check a key's prefix accept it).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Random characters after the prefix; at least [`MIN_PLACEHOLDER_LENGTH`].
    #[serde(default = "default_length")]
    pub length: usize,
}

fn default_prefix() -> String {
    "broker-placeholder-".to_string()
}

fn default_length() -> usize {
    40
}

impl Default for PlaceholderShape {
    fn default() -> Self {
        PlaceholderShape {
            prefix: default_prefix(),
            length: default_length(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    hosts: Vec<String>,
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    placeholder: PlaceholderShape,
    #[serde(default)]
    allow_http: bool,
}

/// A credential's `proxy:` rules.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The hosts the value may be sent to.
    pub hosts: Vec<HostPattern>,
    /// The request headers the placeholder is replaced in (lower case).
    pub headers: Vec<HeaderName>,
    /// The placeholder's shape.
    pub placeholder: PlaceholderShape,
    /// Whether the value may be put into plain-HTTP (cleartext) requests. Off by default: a
    /// placeholder in a plain `http://` request is refused unless this is set.
    pub allow_http: bool,
}

impl Rules {
    /// The rules of `spec`, or `None` when it has no `proxy:` section.
    pub fn of(spec: &CredentialSpec) -> Result<Option<Rules>> {
        match &spec.proxy {
            None => Ok(None),
            Some(value) => Self::from_json(&spec.name, value).map(Some),
        }
    }

    /// Parses credential `name`'s `proxy:` section.
    pub fn from_json(name: &str, value: &serde_json::Value) -> Result<Rules> {
        let fail =
            |msg: String| Error::invalid_config(format!("`proxy`: {msg}")).with_credential(name);
        let raw: RawRules = serde_json::from_value(value.clone()).map_err(|e| {
            fail(e.to_string()).with_hint("keys: hosts, headers, placeholder, allow_http")
        })?;
        if raw.hosts.is_empty() {
            return Err(fail(
                "`hosts` is empty: name the hosts the value may go to".into(),
            ));
        }
        let mut hosts = Vec::new();
        for h in &raw.hosts {
            hosts.push(
                HostPattern::parse(h)
                    .ok_or_else(|| fail(format!("`{h}` is not a host or `*.suffix`")))?,
            );
        }
        let names = raw
            .headers
            .unwrap_or_else(|| DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect());
        let mut headers = Vec::new();
        for h in &names {
            let name = HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                .map_err(|_| fail(format!("`{h}` is not a header name")))?;
            if name == hyper::header::HOST || name.as_str().starts_with("proxy-") {
                return Err(fail(format!("`{h}` cannot carry a value")));
            }
            headers.push(name);
        }
        if headers.is_empty() {
            return Err(fail("`headers` is empty".into()));
        }
        let shape = raw.placeholder;
        if shape.length < MIN_PLACEHOLDER_LENGTH {
            return Err(fail(format!(
                "`placeholder.length` is {}; at least {MIN_PLACEHOLDER_LENGTH} random characters (128 bits) are needed",
                shape.length
            )));
        }
        if shape.length > 4096 || shape.prefix.len() > 256 {
            return Err(fail("the placeholder is too long".into()));
        }
        if !shape.prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(fail(
                "`placeholder.prefix` must be printable ASCII without spaces".into(),
            ));
        }
        Ok(Rules {
            hosts,
            headers,
            placeholder: shape,
            allow_http: raw.allow_http,
        })
    }
}

/// `egress.proxy.default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Only hosts named by a credential's `proxy.hosts` or by `allow_hosts` (the default).
    #[default]
    Deny,
    /// Any host that passes the address checks.
    Allow,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    default: DefaultAction,
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default)]
    allow_private: bool,
    #[serde(default)]
    upstream_ca: Option<String>,
}

/// `egress.proxy`: the run's egress policy through the proxy.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Whether hosts nothing names are reachable.
    pub default: DefaultAction,
    /// Hosts reachable without a credential.
    pub allow_hosts: Vec<HostPattern>,
    /// Whether private and loopback addresses may be reached (metadata endpoints never).
    pub allow_private: bool,
    /// Extra roots (PEM) trusted for upstream TLS, absolute.
    pub upstream_ca: Option<PathBuf>,
}

impl EgressPolicy {
    /// Parses `egress.proxy` (absent: the defaults); relative paths are resolved against
    /// `base_dir`.
    pub fn parse(value: Option<&serde_json::Value>, base_dir: &Path) -> Result<EgressPolicy> {
        let fail = |msg: String| Error::invalid_config(format!("`egress.proxy`: {msg}"));
        let raw: RawPolicy = match value {
            None | Some(serde_json::Value::Null) => RawPolicy::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                fail(e.to_string())
                    .with_hint("keys: default, allow_hosts, allow_private, upstream_ca")
            })?,
        };
        let mut allow_hosts = Vec::new();
        for h in &raw.allow_hosts {
            allow_hosts.push(
                HostPattern::parse(h)
                    .ok_or_else(|| fail(format!("`{h}` is not a host or `*.suffix`")))?,
            );
        }
        Ok(EgressPolicy {
            default: raw.default,
            allow_hosts,
            allow_private: raw.allow_private,
            upstream_ca: raw
                .upstream_ca
                .map(|p| broker_core::provider::resolve_path(base_dir, &p)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = HostPattern::parse("*.Example.com.").unwrap();
        assert!(p.matches("api.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        let e = HostPattern::parse("API.example.com").unwrap();
        assert!(e.matches("api.example.com"));
        assert!(!e.matches("x.api.example.com"));
        let ip = HostPattern::parse("0x7f.1").unwrap();
        assert!(ip.matches("127.0.0.1"));
        assert!(HostPattern::parse("a b").is_none());
    }

    #[test]
    fn allow_http_is_off_by_default_and_unknown_keys_stay_errors() {
        let rules = Rules::from_json("api", &serde_json::json!({ "hosts": ["api.test"] })).unwrap();
        assert!(!rules.allow_http);
        let rules = Rules::from_json(
            "api",
            &serde_json::json!({ "hosts": ["api.test"], "allow_http": true }),
        )
        .unwrap();
        assert!(rules.allow_http);
        let err = Rules::from_json(
            "api",
            &serde_json::json!({ "hosts": ["api.test"], "allow_plain_http": true }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("allow_plain_http"), "{err}");
    }
}
