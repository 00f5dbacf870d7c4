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

/// The shape of a credential's placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceholderShape {
    /// `prefix` followed by `length` random letters and digits (the default:
    /// `broker-placeholder-` and 40).
    Random {
        /// Text before the random part (so clients that check a key's prefix accept it).
        prefix: String,
        /// Random characters after the prefix; at least [`MIN_PLACEHOLDER_LENGTH`].
        length: usize,
    },
    /// A JWT-shaped placeholder (`header.claims.signature`, base64url, an unsigned header
    /// and a random signature) for clients that parse a token before sending it.
    Jwt,
}

impl Default for PlaceholderShape {
    fn default() -> Self {
        PlaceholderShape::Random {
            prefix: "broker-placeholder-".to_string(),
            length: 40,
        }
    }
}

/// `placeholder:` as written: `{ prefix, length }`, or `{ shape: jwt }`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShape {
    #[serde(default)]
    shape: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    length: Option<usize>,
}

impl RawShape {
    fn parse(self) -> std::result::Result<PlaceholderShape, String> {
        match self.shape.as_deref() {
            Some("jwt") => {
                if self.prefix.is_some() || self.length.is_some() {
                    return Err(
                        "`placeholder.shape: jwt` takes no `prefix` or `length`".to_string()
                    );
                }
                Ok(PlaceholderShape::Jwt)
            }
            None | Some("random") => {
                let PlaceholderShape::Random { prefix, length } = PlaceholderShape::default()
                else {
                    unreachable!("the default shape is random")
                };
                let prefix = self.prefix.unwrap_or(prefix);
                let length = self.length.unwrap_or(length);
                if length < MIN_PLACEHOLDER_LENGTH {
                    return Err(format!(
                        "`placeholder.length` is {length}; at least {MIN_PLACEHOLDER_LENGTH} random characters (128 bits) are needed"
                    ));
                }
                if length > 4096 || prefix.len() > 256 {
                    return Err("the placeholder is too long".into());
                }
                // Unreserved characters only: a placeholder reads the same in a header, a query,
                // a form and a JSON string, so the proxy finds it wherever it is allowed.
                if !prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
                {
                    return Err(
                        "`placeholder.prefix` may hold letters, digits and `-_.~` only".into(),
                    );
                }
                Ok(PlaceholderShape::Random { prefix, length })
            }
            Some(other) => Err(format!(
                "`placeholder.shape` is `{other}`; it is `random` (the default) or `jwt`"
            )),
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
    query: Vec<String>,
    #[serde(default)]
    path: bool,
    #[serde(default)]
    body: Vec<String>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    placeholder: RawShape,
    #[serde(default)]
    allow_http: bool,
}

/// The keys of a credential's `proxy:` section.
pub const RULE_KEYS: &str =
    "hosts, headers, query, path, body, methods, paths, placeholder, allow_http";

/// A credential's `proxy:` rules.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The hosts the value may be sent to.
    pub hosts: Vec<HostPattern>,
    /// The request headers the placeholder is replaced in (lower case).
    pub headers: Vec<HeaderName>,
    /// The query parameters whose value may be the placeholder (replaced by the value,
    /// percent-encoded); a placeholder anywhere else in the query stays as it is.
    pub query: Vec<String>,
    /// Whether a path segment that is exactly the placeholder takes the value
    /// (percent-encoded).
    pub path: bool,
    /// The body fields whose value may be the placeholder: form field names, or JSON paths
    /// from the root (`token`, `auth.token`) whose string is exactly the placeholder. Bodies
    /// up to [`crate::server::BODY_SCAN_LIMIT`].
    pub body: Vec<String>,
    /// The methods a request carrying the placeholder may use (upper case); empty: any.
    pub methods: Vec<hyper::Method>,
    /// The path prefixes a request carrying the placeholder may go to; empty: any.
    pub paths: Vec<String>,
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
        let raw: RawRules = serde_json::from_value(value.clone())
            .map_err(|e| fail(e.to_string()).with_hint(format!("keys: {RULE_KEYS}")))?;
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
        for field in raw.query.iter().chain(&raw.body) {
            if field.is_empty() || field.split('.').any(str::is_empty) {
                return Err(fail(format!("`{field}` is not a field name")));
            }
        }
        if headers.is_empty() && raw.query.is_empty() && !raw.path && raw.body.is_empty() {
            return Err(fail(
                "`headers` is empty and `query`, `path` and `body` are off: the value could go nowhere".into(),
            ));
        }
        let mut methods = Vec::new();
        for m in raw.methods.iter().flatten() {
            let upper = m.trim().to_ascii_uppercase();
            let method = hyper::Method::from_bytes(upper.as_bytes())
                .ok()
                .filter(|m| *m != hyper::Method::CONNECT)
                .ok_or_else(|| fail(format!("`{m}` is not an HTTP method")))?;
            methods.push(method);
        }
        if raw.methods.as_ref().is_some_and(Vec::is_empty) {
            return Err(fail("`methods` is empty: leave it out to allow any".into()));
        }
        let mut paths = Vec::new();
        for p in raw.paths.iter().flatten() {
            if !p.starts_with('/') || p.contains(['?', '#', '%', '\\']) || has_dot_segment(p) {
                return Err(fail(format!(
                    "`{p}` is not a path prefix (it starts with `/`, without `?`, `#`, `%`, `\\` or dot segments)"
                )));
            }
            paths.push(p.clone());
        }
        if raw.paths.as_ref().is_some_and(Vec::is_empty) {
            return Err(fail("`paths` is empty: leave it out to allow any".into()));
        }
        let placeholder = raw.placeholder.parse().map_err(fail)?;
        Ok(Rules {
            hosts,
            headers,
            query: raw.query,
            path: raw.path,
            body: raw.body,
            methods,
            paths,
            placeholder,
            allow_http: raw.allow_http,
        })
    }

    /// Whether a request with `method` to `target` (path and query) with `headers` may carry
    /// the value. With `methods:` set, a request asking for another method (an
    /// `X-HTTP-Method-Override`-style header, or `_method=` in the query) never matches. With
    /// `paths:` set, a path a server might read as another one never matches (see
    /// `ambiguous_path`).
    pub fn allows_request(
        &self,
        method: &hyper::Method,
        target: &str,
        headers: &hyper::HeaderMap,
    ) -> bool {
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let method_ok = self.methods.is_empty()
            || (self.methods.contains(method)
                && !overrides_method(target)
                && !METHOD_OVERRIDE_HEADERS
                    .iter()
                    .any(|h| headers.contains_key(*h)));
        let path_ok = self.paths.is_empty()
            || (!ambiguous_path(path) && self.paths.iter().any(|p| prefix_matches(p, path)));
        method_ok && path_ok
    }
}

/// Whether a request target asks for another method through the query (`_method=`).
fn overrides_method(path_and_query: &str) -> bool {
    path_and_query.split_once('?').is_some_and(|(_, q)| {
        q.split('&').any(|pair| {
            pair.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("_method"))
        })
    })
}

/// The request headers that ask a server for another method than the request line's.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether `prefix` covers `path`: equal, or `path` goes on below it (`/v1` covers `/v1/x`,
/// not `/v10`; `/v1/` covers `/v1/x`).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'))
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| seg == "." || seg == "..")
}

/// A path a server might read as another one: dot segments, a backslash, encoded `.`, `/`
/// or backslash, a `;` (path parameters: `/v1/..;/admin` is `/admin` to some servers), or an
/// empty segment (`//`).
fn ambiguous_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    has_dot_segment(path)
        || path.contains(['\\', ';'])
        || path.contains("//")
        || ["%2e", "%2f", "%5c", "%3b"]
            .iter()
            .any(|e| lower.contains(e))
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
