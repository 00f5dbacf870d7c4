//! Where a credential request sends data, and the gate that refuses it.
//!
//! Every reference has destinations computed without I/O. A destination has a [`Badge`]:
//! `local` (nothing leaves the machine), `self-hosted` (a loopback or private address, or a host
//! the user declared in `egress.self_hosted`), `managed-cloud` (a provider's public API).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How far a request reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Badge {
    /// Nothing leaves the machine.
    Local,
    /// A server the user runs (loopback, private network, or declared self-hosted).
    SelfHosted,
    /// A cloud provider's public API.
    ManagedCloud,
}

impl Badge {
    /// `local`, `self-hosted` or `managed-cloud`.
    pub fn as_str(self) -> &'static str {
        match self {
            Badge::Local => "local",
            Badge::SelfHosted => "self-hosted",
            Badge::ManagedCloud => "managed-cloud",
        }
    }
}

impl fmt::Display for Badge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a destination is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "address", rename_all = "kebab-case")]
pub enum Target {
    /// The broker's own process environment.
    ProcessEnv,
    /// A file on this machine.
    File(PathBuf),
    /// A network endpoint, `host[:port]` or a URL.
    Host(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::ProcessEnv => f.write_str("process env"),
            Target::File(p) => write!(f, "file {}", p.display()),
            Target::Host(h) => f.write_str(h),
        }
    }
}

/// One place a request goes, and its badge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    /// Where.
    pub target: Target,
    /// How far that is.
    pub badge: Badge,
}

impl Destination {
    /// The broker's environment (badge `local`).
    pub fn process_env() -> Self {
        Destination {
            target: Target::ProcessEnv,
            badge: Badge::Local,
        }
    }
    /// A local file (badge `local`).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Destination {
            target: Target::File(path.into()),
            badge: Badge::Local,
        }
    }
    /// A network endpoint with the badge the backend would give it; the broker lowers it to
    /// `self-hosted` for loopback/private addresses and user-declared hosts.
    pub fn host(address: impl Into<String>, badge: Badge) -> Self {
        Destination {
            target: Target::Host(address.into()),
            badge,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.target, self.badge)
    }
}

/// The host part of `address`, which may be a URL, `host:port`, `[v6]:port` or a bare host.
pub fn host_of(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Whether `host` is on this machine or a private network by its address alone.
pub fn is_private_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => false,
    }
}

/// Whether `host` matches a user's `self_hosted` pattern: an exact host, or `*.suffix`.
pub fn matches_pattern(host: &str, pattern: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.ends_with(&format!(".{suffix}")),
        None => host == pattern,
    }
}

/// The badge of `dest` after the broker's rules: loopback/private hosts and declared
/// self-hosted hosts are `self-hosted`, never `managed-cloud`.
pub fn classify(mut dest: Destination, self_hosted: &[String]) -> Destination {
    if let Target::Host(address) = &dest.target {
        let host = host_of(address);
        if dest.badge == Badge::ManagedCloud
            && (is_private_host(host) || self_hosted.iter().any(|p| matches_pattern(host, p)))
        {
            dest.badge = Badge::SelfHosted;
        }
    }
    dest
}

/// Where a placeholder-mode credential's value goes: the hosts of its `proxy:` section
/// (`proxy.hosts`, exact or `*.suffix`), each a destination of its own with the broker's
/// badge rules applied (a public host is `managed-cloud`, a loopback or private one or a
/// declared `self_hosted` one `self-hosted`). Entries that are not strings are left out: the
/// proxy refuses such a section when it starts.
pub fn proxy_destinations(
    proxy: Option<&serde_json::Value>,
    self_hosted: &[String],
) -> Vec<Destination> {
    let Some(hosts) = proxy
        .and_then(|p| p.get("hosts"))
        .and_then(|h| h.as_array())
    else {
        return Vec::new();
    };
    hosts
        .iter()
        .filter_map(|h| h.as_str())
        .map(|h| {
            let h = h.trim();
            // `*.suffix` is classified by a name below the suffix.
            let host = match h.strip_prefix("*.") {
                Some(suffix) => format!("name.{suffix}"),
                None => h.to_string(),
            };
            let mut dest = classify(Destination::host(host, Badge::ManagedCloud), self_hosted);
            dest.target = Target::Host(h.to_string());
            dest
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_hosts_are_destinations_with_badges() {
        let proxy =
            serde_json::json!({ "hosts": ["api.openai.com", "127.0.0.1", "*.corp.example", 7] });
        let d = proxy_destinations(Some(&proxy), &["*.corp.example".into()]);
        let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "api.openai.com (managed-cloud)",
                "127.0.0.1 (self-hosted)",
                "*.corp.example (self-hosted)"
            ]
        );
        assert!(proxy_destinations(None, &[]).is_empty());
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("https://vault.internal:8200/v1"), "vault.internal");
        assert_eq!(host_of("http://[::1]:5000"), "::1");
        assert_eq!(
            host_of("secretsmanager.us-east-1.amazonaws.com"),
            "secretsmanager.us-east-1.amazonaws.com"
        );
        assert!(is_private_host("127.0.0.1"));
        assert!(is_private_host("10.1.2.3"));
        assert!(is_private_host("::1"));
        assert!(!is_private_host("8.8.8.8"));
        assert!(matches_pattern("vault.corp.example", "*.corp.example"));
        assert!(!matches_pattern("corp.example", "*.corp.example"));
    }

    #[test]
    fn loopback_endpoint_is_self_hosted() {
        let d = classify(
            Destination::host("http://127.0.0.1:5000", Badge::ManagedCloud),
            &[],
        );
        assert_eq!(d.badge, Badge::SelfHosted);
        let d = classify(
            Destination::host(
                "https://secretsmanager.us-east-1.amazonaws.com",
                Badge::ManagedCloud,
            ),
            &[],
        );
        assert_eq!(d.badge, Badge::ManagedCloud);
        let d = classify(
            Destination::host("https://vault.corp.example:8200", Badge::ManagedCloud),
            &["*.corp.example".into()],
        );
        assert_eq!(d.badge, Badge::SelfHosted);
    }
}
