//! Where the proxy may connect: the egress check (names, policy, every resolved address) and
//! the injectable [`Resolver`] and [`Dialer`].
//!
//! A target is resolved once; every address is checked; only checked addresses are dialled
//! (no second lookup that a rebinding DNS server could answer differently). Tests inject a
//! resolver that maps names to whatever they like and a dialer that records what it was asked,
//! so blocking is proved without sending a packet.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use broker_core::async_trait;
use tokio::net::TcpStream;

use crate::addr::{self, Blocked};
use crate::settings::{DefaultAction, EgressPolicy, HostPattern, any_matches};

/// Turns a host name into addresses.
#[async_trait]
pub trait Resolver: Send + Sync {
    /// The addresses of `host` (a normalised name, never an IP literal).
    async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>>;
}

/// Opens TCP connections to checked addresses.
#[async_trait]
pub trait Dialer: Send + Sync {
    /// Connects to `addr` (already checked).
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream>;
}

/// The system resolver (`getaddrinfo` through tokio).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, port))
            .await?
            .map(|a| a.ip())
            .collect())
    }
}

/// Plain TCP connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpDialer;

#[async_trait]
impl Dialer for TcpDialer {
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// A target host and port as the client named it (CONNECT authority or absolute URI),
/// normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The normalised host (see [`addr::normalise_host`]).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl Target {
    /// Parses `host` and `port`; `None` when `host` is no host.
    pub fn new(host: &str, port: u16) -> Option<Target> {
        Some(Target {
            host: addr::normalise_host(host)?,
            port,
        })
    }

    /// `host:port` (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The egress check: policy, names, and every resolved address.
#[derive(Clone)]
pub struct Egress {
    /// The run's policy.
    pub policy: EgressPolicy,
    /// Hosts the credentials' rules name (reachable under `default: deny`).
    pub rule_hosts: Vec<HostPattern>,
    /// How names are resolved.
    pub resolver: Arc<dyn Resolver>,
}

impl Egress {
    /// The addresses `target` may be reached at, or why not. No address is returned that
    /// failed the check; a name with any blocked address is refused whole.
    pub async fn check(&self, target: &Target) -> Result<Vec<SocketAddr>, Refusal> {
        let host = target.host.as_str();
        if addr::is_metadata_name(host) {
            return Err(Refusal(format!(
                "`{host}` is a cloud metadata endpoint (always blocked)"
            )));
        }
        let literal = addr::ip_literal(host);
        if let Some(ip) = literal
            && let Some(b) = addr::classify(ip)
            && !self.permits(b)
        {
            return Err(Refusal(format!("`{host}` is {}", b.describe())));
        }
        let named =
            any_matches(&self.rule_hosts, host) || any_matches(&self.policy.allow_hosts, host);
        if self.policy.default == DefaultAction::Deny && !named {
            return Err(Refusal(format!(
                "`{host}` is not in egress.proxy.allow_hosts or any credential's proxy.hosts (egress.proxy.default: deny)"
            )));
        }
        let ips = match literal {
            Some(ip) => vec![ip],
            None => self
                .resolver
                .lookup(host, target.port)
                .await
                .map_err(|e| Refusal(format!("cannot resolve `{host}`: {e}")))?,
        };
        if ips.is_empty() {
            return Err(Refusal(format!("`{host}` has no address")));
        }
        let mut out = Vec::with_capacity(ips.len());
        for ip in ips {
            let ip = addr::canonical(ip);
            if let Some(b) = addr::classify(ip)
                && !self.permits(b)
            {
                return Err(Refusal(format!(
                    "`{host}` resolves to {ip}, {}",
                    b.describe()
                )));
            }
            out.push(SocketAddr::new(ip, target.port));
        }
        Ok(out)
    }

    fn permits(&self, b: Blocked) -> bool {
        b.private_class() && self.policy.allow_private
    }
}
