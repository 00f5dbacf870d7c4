//! Who is asking: what the transport verified about a connection ([`Peer`]) and the one
//! principal a request maps to ([`Principal`]), or a refusal.
//!
//! A request carrying `Authorization: Bearer` is identified by its token alone (`serve.jwt`),
//! on any listener. Otherwise the connection says who it is: a unix peer by its uid/gid
//! (`SO_PEERCRED`, mapped through `serve.agents`), a TLS client by its verified certificate's
//! SPIFFE ID (mapped through `serve.agents`, else the SPIFFE ID itself is the agent id). A TLS
//! client with neither a certificate nor a token is refused: there is no anonymous access.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use crate::config::ServeConfig;
use crate::error::ApiError;

/// What the transport verified about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A unix socket peer, from `SO_PEERCRED`.
    Unix {
        /// The peer's uid.
        uid: u32,
        /// The peer's gid.
        gid: u32,
        /// The peer's pid, when the kernel reports it.
        pid: Option<i32>,
    },
    /// A TCP peer over TLS.
    Tls {
        /// Its address.
        addr: SocketAddr,
        /// Its client certificate, verified against `serve.tls.client_ca`, if it sent one.
        cert: Option<Arc<ClientCert>>,
    },
}

/// A verified client certificate: its fingerprint and SAN URIs. Secret-free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// `sha256:` and the hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
    /// Its SAN URIs (a SPIFFE ID is one).
    pub uris: Vec<String>,
}

impl ClientCert {
    /// Reads the fingerprint and SAN URIs of a (verified) certificate's DER.
    pub fn from_der(der: &[u8]) -> ClientCert {
        let fingerprint = format!("sha256:{}", hex::encode(Sha256::digest(der)));
        let uris = x509_parser::parse_x509_certificate(der)
            .ok()
            .and_then(|(_, cert)| {
                cert.subject_alternative_name().ok().flatten().map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                            _ => None,
                        })
                        .collect()
                })
            })
            .unwrap_or_default();
        ClientCert { fingerprint, uris }
    }

    /// Its SPIFFE ID: the one SAN URI with the `spiffe` scheme (SPIFFE X.509-SVIDs have
    /// exactly one URI SAN).
    pub fn spiffe_id(&self) -> Option<&str> {
        match self.uris.as_slice() {
            [only] if only.starts_with("spiffe://") => Some(only),
            _ => None,
        }
    }
}

impl Peer {
    /// Secret-free, for logs and the audit log.
    pub fn describe(&self) -> String {
        match self {
            Peer::Unix {
                uid,
                gid,
                pid: Some(pid),
            } => format!("unix peer uid {uid} gid {gid} pid {pid}"),
            Peer::Unix {
                uid,
                gid,
                pid: None,
            } => format!("unix peer uid {uid} gid {gid}"),
            Peer::Tls {
                addr,
                cert: Some(c),
            } => format!(
                "mtls {addr} {}{}",
                c.fingerprint,
                c.spiffe_id()
                    .map(|s| format!(" {}", broker_core::grammar::elide(s)))
                    .unwrap_or_default()
            ),
            Peer::Tls { addr, cert: None } => format!("tls {addr} without a client certificate"),
        }
    }

    /// The unix uid, for a unix peer.
    pub fn uid(&self) -> Option<u32> {
        match self {
            Peer::Unix { uid, .. } => Some(*uid),
            Peer::Tls { .. } => None,
        }
    }

    /// What connection caps and denial counts take this peer as: its uid, its IPv4 address, or
    /// the /64 of its IPv6 address (one host usually holds a whole /64).
    pub fn cap_key(&self) -> String {
        match self {
            Peer::Unix { uid, .. } => format!("uid:{uid}"),
            Peer::Tls { addr, .. } => match addr.ip().to_canonical() {
                std::net::IpAddr::V4(v4) => format!("ip:{v4}"),
                std::net::IpAddr::V6(v6) => {
                    let s = v6.segments();
                    format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
        }
    }
}

/// How a principal was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Unix peer credentials.
    Unix,
    /// A client certificate.
    Mtls,
    /// A JWT bearer token.
    Jwt,
}

impl Method {
    /// `unix`, `mtls`, `jwt`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Unix => "unix",
            Method::Mtls => "mtls",
            Method::Jwt => "jwt",
        }
    }
}

/// The verified caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The agent id, when the caller maps to an agent.
    pub agent: Option<String>,
    /// Whether the caller is in `serve.admins`.
    pub admin: bool,
    /// Its tenant, when the identity carries one.
    pub tenant: Option<String>,
    /// How it was verified.
    pub method: Method,
    /// Secret-free description for the audit log (peer pid, certificate fingerprint, token
    /// issuer and subject).
    pub identity: String,
    /// Attributes from the identity (JWT claims mapped by `serve.jwt.attributes`).
    pub attributes: BTreeMap<String, String>,
}

/// A refusal before any principal is known.
fn refused(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, kind, message)
}

/// The principal for a request from `peer` with an optional `Authorization` header value.
/// Errors carry the refusal and the peer's description (for the audit record).
pub async fn verify(
    config: &ServeConfig,
    peer: &Peer,
    authorization: Option<&[u8]>,
) -> Result<Principal, ApiError> {
    if let Some(header) = authorization {
        return bearer(config, peer, header).await;
    }
    let (entry, method) = match peer {
        Peer::Unix { uid, gid, .. } => (config.agent_for_unix(*uid, *gid), Method::Unix),
        Peer::Tls { cert: Some(c), .. } => {
            let Some(spiffe) = c.spiffe_id() else {
                return Err(refused(
                    StatusCode::UNAUTHORIZED,
                    "unknown_peer",
                    "the client certificate has no single SPIFFE ID (URI SAN)",
                ));
            };
            match config.agent_for_spiffe(spiffe) {
                Some(e) => (Some(e), Method::Mtls),
                None => {
                    // Agent ids are lower-cased but SPIFFE paths are case-sensitive: an ID
                    // that is not already in its normal form could pose as another.
                    let agent = broker_core::policy::normalize_agent_id(spiffe)
                        .ok()
                        .flatten()
                        .filter(|id| id == spiffe)
                        .ok_or_else(|| {
                            refused(
                                StatusCode::UNAUTHORIZED,
                                "unknown_peer",
                                "the client certificate's SPIFFE ID is not a valid agent id as \
                                 it is (lower case, no blanks): map it in `serve.agents`",
                            )
                        })?;
                    return Ok(Principal {
                        admin: config.is_admin(None, Some((&agent, Method::Mtls))),
                        agent: Some(agent),
                        tenant: None,
                        method: Method::Mtls,
                        identity: peer.describe(),
                        attributes: BTreeMap::new(),
                    });
                }
            }
        }
        Peer::Tls { cert: None, .. } => {
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "no client certificate and no bearer token",
            ));
        }
    };
    let agent = entry.map(|e| e.id.clone());
    let admin = config.is_admin(peer.uid(), agent.as_deref().map(|a| (a, method)));
    if agent.is_none() && !admin {
        let who = match peer {
            Peer::Unix { uid, gid, .. } => format!("uid {uid} gid {gid}"),
            Peer::Tls { .. } => "the client certificate".into(),
        };
        return Err(refused(
            StatusCode::FORBIDDEN,
            "unknown_peer",
            format!("{who} is not mapped to an agent in `serve.agents`"),
        ));
    }
    Ok(Principal {
        agent,
        admin,
        tenant: entry.and_then(|e| e.tenant.clone()),
        method,
        identity: peer.describe(),
        attributes: BTreeMap::new(),
    })
}

async fn bearer(config: &ServeConfig, peer: &Peer, header: &[u8]) -> Result<Principal, ApiError> {
    let Some(verifier) = &config.jwt else {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "bearer_not_accepted",
            "this daemon takes no bearer tokens (`serve.jwt` is not set)",
        ));
    };
    let token = std::str::from_utf8(header)
        .ok()
        .and_then(|h| {
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            refused(
                StatusCode::UNAUTHORIZED,
                "token_malformed",
                "the Authorization header is not `Bearer <token>`",
            )
        })?;
    let verified = verifier.verify(token).await.map_err(|r| {
        let status = if r.kind == "jwks_unavailable" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::UNAUTHORIZED
        };
        refused(status, r.kind, r.message)
    })?;
    let identity = match peer {
        Peer::Tls { cert: Some(c), .. } => format!("{} via {}", verified.describe(), c.fingerprint),
        _ => format!("{} via {}", verified.describe(), peer.describe()),
    };
    Ok(Principal {
        admin: config.is_admin(None, Some((&verified.agent, Method::Jwt))),
        agent: Some(verified.agent),
        tenant: verified.tenant,
        method: Method::Jwt,
        identity,
        attributes: verified.attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_needs_exactly_one_spiffe_uri() {
        let mut c = ClientCert {
            fingerprint: "sha256:00".into(),
            uris: vec!["spiffe://example.org/a".into()],
        };
        assert_eq!(c.spiffe_id(), Some("spiffe://example.org/a"));
        c.uris.push("spiffe://example.org/b".into());
        assert_eq!(c.spiffe_id(), None);
        c.uris = vec!["https://example.org/a".into()];
        assert_eq!(c.spiffe_id(), None);
    }
}
