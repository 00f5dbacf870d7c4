//! The `serve:` section of `.broker.yml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker_core::config::parse_duration;
use broker_core::{Config, Error, Result};
use serde::Deserialize;

use crate::identity::Method;
use crate::jwt::JwtVerifier;

/// One `serve.agents` entry: how a verified caller maps to an agent id. Exactly one of `uid`
/// (a unix peer, optionally with `gid`) and `spiffe` (a client certificate's SAN URI) names
/// the caller; a JWT's agent id comes from its claims (`serve.jwt`), not from here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// The agent id (normalised: trimmed, lower-cased).
    pub id: String,
    /// The unix peer's uid.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The unix peer's gid, when the uid alone is not enough.
    #[serde(default)]
    pub gid: Option<u32>,
    /// A client certificate's SPIFFE ID (SAN URI), e.g. `spiffe://example.org/ci/agent`.
    #[serde(default)]
    pub spiffe: Option<String>,
    /// The agent's tenant (default: the config's `tenant`).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// One `serve.admins` entry: a unix peer (`uid`), or a verified agent id (`id`) together with
/// the identity method that must have verified it (`method: unix | mtls | jwt`), allowed to
/// list and revoke every lease and to block agents. The method is required because agent ids
/// of different methods share one namespace: a token whose claim spells an mTLS admin's SPIFFE
/// ID must not be that admin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminEntry {
    /// The peer's uid.
    #[serde(default)]
    pub uid: Option<u32>,
    /// A verified agent id.
    #[serde(default)]
    pub id: Option<String>,
    /// With `id`: `unix`, `mtls` or `jwt`.
    #[serde(default)]
    pub method: Option<String>,
}

/// `serve.tls`: a TCP listener with TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: String,
    cert: String,
    key: String,
    #[serde(default)]
    client_ca: Option<String>,
    #[serde(default)]
    client_auth: Option<String>,
}

/// Whether TLS clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client presents a certificate chained to `client_ca` (mTLS).
    Required,
    /// A certificate is verified when presented; without one, a bearer token is required.
    Optional,
    /// No client certificates (no `client_ca`): bearer tokens only.
    None,
}

/// `serve.tls`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The address to listen on (`127.0.0.1:8443`).
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA client certificates must chain to (PEM).
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required.
    pub client_auth: ClientAuth,
}

/// `serve.admin`: the admin/metrics listener (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
}

/// `serve.denials`: when repeated refusals of one agent raise an alert.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDenials {
    #[serde(default)]
    threshold: Option<u32>,
    #[serde(default)]
    window: Option<String>,
}

/// `serve.store`: where blocks and issued leases are kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    url_ref: Option<String>,
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default)]
    key_ref: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    replica_id: Option<String>,
}

/// `serve.store` with `kind: redis`: replicas sharing leases, limits and blocks through
/// Redis (or Valkey). Secret settings are references, resolved when the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStore {
    /// A reference whose value is the server's URL (`redis://[:PASSWORD@]HOST:PORT[/DB]`,
    /// `rediss://` for TLS); it may carry the AUTH password, hence a reference.
    pub url_ref: broker_core::Reference,
    /// The CA certificates (PEM) a `rediss://` server must chain to, instead of the system's
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// A reference whose value is the key every replica shares to encrypt cached credentials
    /// (at least 32 bytes: an `AGE-SECRET-KEY-...` line, or random bytes).
    pub key_ref: broker_core::Reference,
    /// The prefix of every key the daemon writes (default `broker:`).
    pub prefix: String,
    /// This replica's name: in its audit log's file name and its local record of blocks
    /// (default: `$BROKER_REPLICA_ID`, else the host name, so that a restarted process finds
    /// its record; two replicas on one host need distinct names).
    pub replica_id: String,
    /// Whether the name was given (`replica_id` or `$BROKER_REPLICA_ID`) rather than taken
    /// from the host name.
    pub replica_id_configured: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    jwt: Option<crate::jwt::JwtSettings>,
    #[serde(default)]
    agents: Vec<AgentEntry>,
    #[serde(default)]
    admins: Vec<AdminEntry>,
    #[serde(default)]
    header_timeout: Option<String>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    denials: Option<RawDenials>,
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    revoke_on_shutdown: bool,
}

/// `serve.limits`: per-agent request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// How fast an agent's token bucket refills: a number of requests per second, or
    /// `"N/s"`, `"N/m"`, `"N/h"` (0: no rate limit).
    #[serde(deserialize_with = "rate")]
    pub rate: Rate,
    /// The bucket's size: how many requests an agent may make at once after a quiet spell.
    pub burst: u32,
    /// Requests one agent may have in flight at once (0: no cap).
    pub concurrency: u32,
    /// Open connections in all (further ones are closed at once).
    pub connections: u32,
    /// Open connections from one peer (a unix uid, an IP address), so one cannot starve the
    /// others.
    pub connections_per_peer: u32,
}

/// A refill rate: `requests` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many requests (0: unlimited).
    pub requests: u32,
    /// Per how long.
    pub per: Duration,
}

impl Rate {
    /// `n` requests per second.
    pub fn per_second(n: u32) -> Rate {
        Rate {
            requests: n,
            per: Duration::from_secs(1),
        }
    }
}

fn rate<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Rate, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u32),
        Text(String),
    }
    let bad =
        || serde::de::Error::custom("expected a number (per second) or \"N/s\", \"N/m\", \"N/h\"");
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(Rate::per_second(n)),
        Raw::Text(t) => {
            let (n, unit) = t.split_once('/').ok_or_else(bad)?;
            let requests = n.trim().parse().map_err(|_| bad())?;
            let per = match unit.trim() {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                _ => return Err(bad()),
            };
            Ok(Rate {
                requests,
                per: Duration::from_secs(per),
            })
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate: Rate::per_second(100),
            burst: 200,
            concurrency: 64,
            connections: 4096,
            connections_per_peer: 256,
        }
    }
}

/// The daemon's settings, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The unix socket path (`serve.listen`; default [`default_socket_path`] unless only
    /// `serve.tls` is configured); `None`: no unix socket.
    pub listen: Option<PathBuf>,
    /// The socket file's mode (`serve.mode`, an octal string; default `0600`).
    pub mode: u32,
    /// The socket file's group (`serve.group`: a name or a gid).
    pub group: Option<u32>,
    /// The TLS listener (`serve.tls`).
    pub tls: Option<TlsSettings>,
    /// The admin/metrics listener (`serve.admin.listen`).
    pub admin_listen: Option<SocketAddr>,
    /// JWT bearer identity (`serve.jwt`).
    pub jwt: Option<Arc<JwtVerifier>>,
    /// How callers map to agents.
    pub agents: Vec<AgentEntry>,
    /// Who is an admin.
    pub admins: Vec<AdminEntry>,
    /// How long a client may take to send its request headers (`serve.header_timeout`;
    /// default 10s).
    pub header_timeout: Duration,
    /// Per-agent limits (`serve.limits`).
    pub limits: Limits,
    /// Refusals of one agent within `denial_window` that raise an alert (`serve.denials`;
    /// default 20 in 60s; 0: never).
    pub denial_threshold: u32,
    /// The window for `denial_threshold`.
    pub denial_window: Duration,
    /// Where blocks and issued leases are kept across restarts (`serve.store.path`; default
    /// `.broker/serve-state.json` beside the config).
    pub store_path: PathBuf,
    /// The shared store (`serve.store.kind: redis`); `None`: this process's memory (and
    /// `store_path`).
    pub shared_store: Option<SharedStore>,
    /// Revoke the leases this daemon issued when it shuts down (`serve.revoke_on_shutdown`).
    pub revoke_on_shutdown: bool,
}

/// `$XDG_RUNTIME_DIR/broker/broker.sock`; without `XDG_RUNTIME_DIR`, `/run/broker/broker.sock`
/// for root, otherwise an error asking for `serve.listen`.
pub fn default_socket_path(xdg_runtime_dir: Option<&Path>, euid: u32) -> Result<PathBuf> {
    match xdg_runtime_dir {
        Some(dir) if !dir.as_os_str().is_empty() => Ok(dir.join("broker").join("broker.sock")),
        _ if euid == 0 => Ok(PathBuf::from("/run/broker/broker.sock")),
        _ => Err(Error::invalid_config(
            "no socket path: XDG_RUNTIME_DIR is not set and this is not root",
        )
        .with_hint("set `serve.listen: /path/to/broker.sock` in the config")),
    }
}

impl ServeConfig {
    /// Reads the `serve:` section of `config` (an absent section is all defaults), resolving a
    /// relative `listen` against the config's directory.
    pub fn from_config(config: &Config) -> Result<ServeConfig> {
        let raw: RawServe = match &config.serve {
            Some(s) => s.parse()?,
            None => RawServe::default(),
        };
        let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        let checked = Self::validate(
            raw,
            config.base_dir(),
            xdg.as_deref(),
            rustix::process::geteuid().as_raw(),
        )
        .map_err(|e| e.with_location(config.path().display().to_string()))?;
        checked.require_policy_for_open_identities(config.policy.is_some())?;
        Ok(checked)
    }

    /// A JWT issuer, or a client CA whose unmapped SPIFFE IDs are agents, vouches for callers
    /// nobody listed one by one (any workflow of a CI provider, any service account of a
    /// cluster, any workload of a trust domain). Without a Cedar policy every one of them would
    /// get every declared credential (the allowlist), so such a daemon needs a policy file.
    fn require_policy_for_open_identities(&self, has_policy: bool) -> Result<()> {
        if has_policy {
            return Ok(());
        }
        let open = if self.jwt.is_some() {
            Some("`serve.jwt` accepts any token its issuer signs for the audience")
        } else if self.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            Some("`serve.tls.client_ca` makes every SPIFFE ID it certifies an agent")
        } else {
            None
        };
        match open {
            None => Ok(()),
            Some(why) => Err(Error::invalid_config(format!(
                "{why}, and without a policy file each of them would get every credential"
            ))
            .with_hint(
                "add `policy: FILE.cedar` that says which principals may have what \
                 (docs/serve.md, Identity)",
            )),
        }
    }

    fn validate(
        raw: RawServe,
        base_dir: &Path,
        xdg: Option<&Path>,
        euid: u32,
    ) -> Result<ServeConfig> {
        let listen = match raw.listen {
            Some(l) if l.trim().is_empty() => {
                return Err(Error::invalid_config("`serve.listen` is empty"));
            }
            Some(l) if l == "none" => None,
            Some(l) => Some(base_dir.join(l)),
            None if raw.tls.is_some() => None,
            None => Some(default_socket_path(xdg, euid)?),
        };
        let mode = match raw.mode {
            None => 0o600,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777 && m & 0o7 == 0)
                .ok_or_else(|| {
                    Error::invalid_config(format!(
                        "`serve.mode: {m:?}` is not an octal mode without access for others"
                    ))
                    .with_hint("write it as a string, e.g. `mode: \"0660\"`")
                })?,
        };
        let group = raw.group.as_deref().map(group_id).transpose()?;
        let mut agents: Vec<AgentEntry> = Vec::new();
        for mut a in raw.agents {
            a.id = broker_core::policy::normalize_agent_id(&a.id)?
                .ok_or_else(|| Error::invalid_config("`serve.agents`: an entry has an empty id"))?;
            match (&a.uid, &a.spiffe) {
                (Some(_), None) => {}
                (None, Some(uri)) if uri.starts_with("spiffe://") && a.gid.is_none() => {}
                _ => {
                    return Err(Error::invalid_config(format!(
                        "`serve.agents`: `{}` needs exactly one of `uid` (with an optional \
                         `gid`) and `spiffe: spiffe://...`",
                        a.id
                    )));
                }
            }
            if let Some(other) = agents
                .iter()
                .find(|b| b.uid == a.uid && b.gid == a.gid && b.spiffe == a.spiffe)
            {
                return Err(Error::invalid_config(format!(
                    "`serve.agents`: one caller is mapped twice (`{}` and `{}`)",
                    other.id, a.id
                )));
            }
            agents.push(a);
        }
        let mut admins = raw.admins;
        for a in &mut admins {
            if a.uid.is_some() == a.id.is_some() {
                return Err(Error::invalid_config(
                    "`serve.admins`: each entry needs exactly one of `uid` and `id`",
                ));
            }
            if let Some(id) = a.id.take() {
                a.id = broker_core::policy::normalize_agent_id(&id)?;
                if !matches!(a.method.as_deref(), Some("unix" | "mtls" | "jwt")) {
                    return Err(Error::invalid_config(format!(
                        "`serve.admins`: `{id}` needs `method: unix | mtls | jwt`, the identity \
                         method that must have verified it"
                    )));
                }
            } else if a.method.is_some() {
                return Err(Error::invalid_config(
                    "`serve.admins`: `method` goes with `id`, not with `uid`",
                ));
            }
        }
        let duration = |key: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(t) => {
                parse_duration(&t).map_err(|e| Error::invalid_config(format!("`serve.{key}`: {e}")))
            }
        };
        let header_timeout = duration(
            "header_timeout",
            raw.header_timeout,
            Duration::from_secs(10),
        )?;
        if raw.limits.rate.requests > 0 && raw.limits.burst == 0 {
            return Err(Error::invalid_config(
                "`serve.limits.burst` must be at least 1 when `rate` is set",
            ));
        }
        if raw.limits.connections == 0 || raw.limits.connections_per_peer == 0 {
            return Err(Error::invalid_config(
                "`serve.limits.connections` and `connections_per_peer` must be at least 1",
            ));
        }
        let jwt = raw
            .jwt
            .map(|j| JwtVerifier::new(j, base_dir).map(Arc::new))
            .transpose()?;
        let tls = raw
            .tls
            .map(|t| tls_settings(t, base_dir, jwt.is_some()))
            .transpose()?;
        let admin_listen = raw
            .admin
            .map(|a| {
                a.listen.parse::<SocketAddr>().map_err(|_| {
                    Error::invalid_config(format!(
                        "`serve.admin.listen: {}` is not an address such as 127.0.0.1:9464",
                        broker_core::grammar::elide(&a.listen)
                    ))
                })
            })
            .transpose()?;
        let denials = raw.denials.unwrap_or(RawDenials {
            threshold: None,
            window: None,
        });
        let (store_path, shared_store) = store_settings(raw.store, base_dir)?;
        Ok(ServeConfig {
            limits: raw.limits,
            listen,
            mode,
            group,
            tls,
            admin_listen,
            jwt,
            agents,
            admins,
            header_timeout,
            denial_threshold: denials.threshold.unwrap_or(20),
            denial_window: duration("denials.window", denials.window, Duration::from_secs(60))?,
            store_path,
            shared_store,
            revoke_on_shutdown: raw.revoke_on_shutdown,
        })
    }

    /// The agent a unix peer with `uid`/`gid` is, if any: an entry naming both wins over one
    /// naming only the uid.
    pub fn agent_for_unix(&self, uid: u32, gid: u32) -> Option<&AgentEntry> {
        self.agents
            .iter()
            .find(|a| a.uid == Some(uid) && a.gid == Some(gid))
            .or_else(|| {
                self.agents
                    .iter()
                    .find(|a| a.uid == Some(uid) && a.gid.is_none())
            })
    }

    /// The agent a client certificate with SAN URI `spiffe` is mapped to, if any.
    pub fn agent_for_spiffe(&self, spiffe: &str) -> Option<&AgentEntry> {
        self.agents
            .iter()
            .find(|a| a.spiffe.as_deref() == Some(spiffe))
    }

    /// The agent id a unix peer is, if any (see [`ServeConfig::agent_for_unix`]).
    pub fn agent_for(&self, uid: u32, gid: u32) -> Option<&str> {
        self.agent_for_unix(uid, gid).map(|a| a.id.as_str())
    }

    /// Whether a caller (a unix peer's `uid`, a verified `agent` id and its method) is an admin.
    pub fn is_admin(&self, uid: Option<u32>, agent: Option<(&str, Method)>) -> bool {
        self.admins.iter().any(|a| {
            (a.uid.is_some() && a.uid == uid)
                || agent.is_some_and(|(id, method)| {
                    a.id.as_deref() == Some(id) && a.method.as_deref() == Some(method.as_str())
                })
        })
    }
}

/// `serve.store`: the memory store's file, or the shared store's settings (then the file is
/// the replica's own durable record of blocks, named by its replica id).
fn store_settings(
    raw: Option<RawStore>,
    base_dir: &Path,
) -> Result<(PathBuf, Option<SharedStore>)> {
    let raw = raw.unwrap_or(RawStore {
        kind: None,
        path: None,
        url_ref: None,
        ca_file: None,
        key_ref: None,
        prefix: None,
        replica_id: None,
    });
    let default_path = || base_dir.join(".broker/serve-state.json");
    match raw.kind.as_deref() {
        None | Some("memory") => {
            if let Some(key) = [
                ("url_ref", raw.url_ref.is_some()),
                ("ca_file", raw.ca_file.is_some()),
                ("key_ref", raw.key_ref.is_some()),
                ("prefix", raw.prefix.is_some()),
                ("replica_id", raw.replica_id.is_some()),
            ]
            .iter()
            .find(|(_, set)| *set)
            {
                return Err(Error::invalid_config(format!(
                    "`serve.store.{}` goes with `kind: redis`",
                    key.0
                )));
            }
            Ok((
                raw.path.map_or_else(default_path, |p| base_dir.join(p)),
                None,
            ))
        }
        Some("redis") => {
            let reference = |key: &str, v: Option<String>| -> Result<broker_core::Reference> {
                let v = v.ok_or_else(|| {
                    Error::invalid_config(format!(
                        "`serve.store.kind: redis` needs `{key}` (a reference, e.g.                          `env:BROKER_STORE_{}`)",
                        if key == "url_ref" { "URL" } else { "KEY" }
                    ))
                })?;
                v.parse().map_err(|e: Error| {
                    Error::invalid_config(format!("`serve.store.{key}`: {}", e.message()))
                })
            };
            let url_ref = reference("url_ref", raw.url_ref)?;
            let key_ref = reference("key_ref", raw.key_ref)?;
            let from_env = std::env::var("BROKER_REPLICA_ID")
                .ok()
                .filter(|v| !v.is_empty());
            let replica_id_configured = raw.replica_id.is_some() || from_env.is_some();
            let replica_id = match raw.replica_id.or(from_env) {
                Some(id) => id,
                None => {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    let host = if host.is_empty() {
                        "replica".into()
                    } else {
                        host
                    };
                    // Stable across restarts: the record of blocks must be found again.
                    host
                }
            };
            if replica_id.is_empty()
                || replica_id.len() > 64
                || !replica_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                || replica_id.starts_with('.')
            {
                return Err(Error::invalid_config(format!(
                    "`serve.store.replica_id: {}` must be 1-64 letters, digits, `-`, `_` or `.`                      (it names files)",
                    broker_core::grammar::elide(&replica_id)
                )));
            }
            let path = match raw.path {
                Some(p) => base_dir.join(p),
                None => base_dir.join(format!(".broker/serve-blocks.{replica_id}.json")),
            };
            Ok((
                path,
                Some(SharedStore {
                    url_ref,
                    ca_file: raw.ca_file.map(|c| base_dir.join(c)),
                    key_ref,
                    prefix: raw.prefix.unwrap_or_else(|| "broker:".into()),
                    replica_id,
                    replica_id_configured,
                }),
            ))
        }
        Some(other) => Err(Error::invalid_config(format!(
            "`serve.store.kind: {}` is not one of `memory`, `redis`",
            broker_core::grammar::elide(other)
        ))),
    }
}

/// A group name or number as a gid.
fn group_id(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| {
            Error::invalid_config(format!(
                "`serve.group: {}` is not a group on this machine",
                broker_core::grammar::elide(group)
            ))
        })
}

fn tls_settings(raw: RawTls, base_dir: &Path, bearer: bool) -> Result<TlsSettings> {
    let listen = raw.listen.parse::<SocketAddr>().map_err(|_| {
        Error::invalid_config(format!(
            "`serve.tls.listen: {}` is not an address such as 127.0.0.1:8443",
            broker_core::grammar::elide(&raw.listen)
        ))
    })?;
    let client_auth = match (raw.client_auth.as_deref(), &raw.client_ca) {
        (None | Some("required"), Some(_)) => ClientAuth::Required,
        (Some("optional"), Some(_)) => ClientAuth::Optional,
        (None | Some("none"), None) => ClientAuth::None,
        (Some(other), _) => {
            return Err(Error::invalid_config(format!(
                "`serve.tls.client_auth: {}` needs `client_ca` and is one of `required`, \
                 `optional` (`none` without `client_ca`)",
                broker_core::grammar::elide(other)
            )));
        }
    };
    if client_auth != ClientAuth::Required && !bearer {
        return Err(Error::invalid_config(
            "`serve.tls` lets clients in without a certificate but `serve.jwt` is not set: \
             nobody could be identified",
        )
        .with_hint("set `serve.tls.client_ca` (mTLS), or configure `serve.jwt`"));
    }
    Ok(TlsSettings {
        listen,
        cert: base_dir.join(raw.cert),
        key: base_dir.join(raw.key),
        client_ca: raw.client_ca.map(|c| base_dir.join(c)),
        client_auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: serde_json::Value) -> RawServe {
        serde_json::from_value(yaml).expect("raw")
    }

    #[test]
    fn default_socket_path_rules() {
        let p = default_socket_path(Some(Path::new("/run/user/7")), 7).expect("xdg");
        assert_eq!(p, Path::new("/run/user/7/broker/broker.sock"));
        let p = default_socket_path(None, 0).expect("root");
        assert_eq!(p, Path::new("/run/broker/broker.sock"));
        let e = default_socket_path(None, 1000).expect_err("no xdg");
        assert_eq!(e.kind(), broker_core::ErrorKind::InvalidConfig);
        assert!(e.hint().unwrap_or_default().contains("serve.listen"));
    }

    #[test]
    fn agents_are_normalised_and_matched() {
        let c = ServeConfig::validate(
            raw(serde_json::json!({
                "listen": "s.sock",
                "agents": [{"id": " CI-Agent ", "uid": 5}, {"id": "b", "uid": 5, "gid": 9}],
                "admins": [{"uid": 0}],
                "mode": "0660"
            })),
            Path::new("/base"),
            None,
            1,
        )
        .expect("valid");
        assert_eq!(c.listen.as_deref(), Some(Path::new("/base/s.sock")));
        assert_eq!(c.mode, 0o660);
        assert_eq!(c.agent_for(5, 1), Some("ci-agent"));
        assert_eq!(c.agent_for(5, 9), Some("b"));
        assert_eq!(c.agent_for(6, 9), None);
        assert!(
            c.is_admin(Some(0), None) && !c.is_admin(Some(5), Some(("ci-agent", Method::Unix)))
        );
    }

    #[test]
    fn admin_ids_name_the_method_that_verified_them() {
        let c = ServeConfig::validate(
            raw(serde_json::json!({
                "listen": "s",
                "admins": [{"id": "spiffe://example.org/ops", "method": "mtls"}]
            })),
            Path::new("/"),
            None,
            1,
        )
        .expect("valid");
        assert!(c.is_admin(None, Some(("spiffe://example.org/ops", Method::Mtls))));
        // A token whose agent claim spells the same id is not that admin.
        assert!(!c.is_admin(None, Some(("spiffe://example.org/ops", Method::Jwt))));
        for bad in [
            serde_json::json!([{"id": "ops"}]),
            serde_json::json!([{"id": "ops", "method": "ldap"}]),
            serde_json::json!([{"uid": 0, "method": "unix"}]),
        ] {
            let e = ServeConfig::validate(
                raw(serde_json::json!({"listen": "s", "admins": bad})),
                Path::new("/"),
                None,
                1,
            )
            .expect_err("refused");
            assert_eq!(e.kind(), broker_core::ErrorKind::InvalidConfig, "{e}");
        }
    }

    #[test]
    fn open_identities_need_a_policy_file() {
        let c = ServeConfig::validate(
            raw(serde_json::json!({
                "tls": {"listen": "127.0.0.1:8443", "cert": "c.pem", "key": "k.pem", "client_ca": "ca.pem"}
            })),
            Path::new("/base"),
            None,
            1,
        )
        .expect("valid");
        let e = c
            .require_policy_for_open_identities(false)
            .expect_err("no policy");
        assert!(e.message().contains("client_ca"), "{e}");
        assert!(e.hint().unwrap_or_default().contains("policy:"), "{e:?}");
        c.require_policy_for_open_identities(true)
            .expect("a policy");
        let unix_only = ServeConfig::validate(
            raw(serde_json::json!({"listen": "s"})),
            Path::new("/"),
            None,
            1,
        )
        .expect("valid");
        unix_only
            .require_policy_for_open_identities(false)
            .expect("mapped uids only");
    }

    #[test]
    fn store_settings_by_kind() {
        let store = |v: serde_json::Value| {
            ServeConfig::validate(
                raw(serde_json::json!({"listen": "s", "store": v})),
                Path::new("/base"),
                None,
                1,
            )
        };
        let c = store(serde_json::json!({"path": "state.json"})).expect("memory");
        assert_eq!(c.store_path, Path::new("/base/state.json"));
        assert!(c.shared_store.is_none());
        let c = store(serde_json::json!({
            "kind": "redis", "url_ref": "env:BROKER_STORE_URL", "key_ref": "env:BROKER_STORE_KEY",
            "replica_id": "r-1", "ca_file": "ca.pem"
        }))
        .expect("redis");
        let shared = c.shared_store.expect("shared");
        assert_eq!(shared.replica_id, "r-1");
        assert_eq!(shared.prefix, "broker:");
        assert_eq!(shared.url_ref.to_string(), "env:BROKER_STORE_URL");
        assert_eq!(shared.ca_file.as_deref(), Some(Path::new("/base/ca.pem")));
        assert_eq!(
            c.store_path,
            Path::new("/base/.broker/serve-blocks.r-1.json")
        );
        for (bad, says) in [
            (
                serde_json::json!({"url_ref": "env:U"}),
                "goes with `kind: redis`",
            ),
            (
                serde_json::json!({"kind": "etcd"}),
                "is not one of `memory`, `redis`",
            ),
            (
                serde_json::json!({"kind": "redis", "key_ref": "env:K"}),
                "needs `url_ref`",
            ),
            (
                serde_json::json!({"kind": "redis", "url_ref": "env:U", "key_ref": "env:K",
                                   "replica_id": "../x"}),
                "must be 1-64 letters",
            ),
        ] {
            let e = store(bad.clone()).expect_err("refused");
            assert!(e.message().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_mode_and_duplicates_refused() {
        for bad in ["0666", "rw", "1777"] {
            let e = ServeConfig::validate(
                raw(serde_json::json!({"listen": "s", "mode": bad})),
                Path::new("/"),
                None,
                1,
            )
            .expect_err(bad);
            assert_eq!(e.kind(), broker_core::ErrorKind::InvalidConfig);
        }
        let e = ServeConfig::validate(
            raw(serde_json::json!({"listen": "s", "agents": [{"id": "a", "uid": 1}, {"id": "b", "uid": 1}]})),
            Path::new("/"),
            None,
            1,
        )
        .expect_err("dup");
        assert!(e.message().contains("mapped twice"));
    }
}
