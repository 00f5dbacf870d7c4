//! The `serve:` section of `.broker.yml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use broker_core::config::parse_duration;
use broker_core::{Config, Error, Result};
use serde::Deserialize;

/// One `serve.agents` entry: a unix peer (uid, optionally gid) and the agent id it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// The agent id (normalised: trimmed, lower-cased).
    pub id: String,
    /// The peer's uid.
    pub uid: u32,
    /// The peer's gid, when the uid alone is not enough.
    #[serde(default)]
    pub gid: Option<u32>,
}

/// One `serve.admins` entry: a unix peer allowed to block and unblock agents.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminEntry {
    /// The peer's uid.
    pub uid: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    agents: Vec<AgentEntry>,
    #[serde(default)]
    admins: Vec<AdminEntry>,
    #[serde(default)]
    header_timeout: Option<String>,
    #[serde(default)]
    limits: Limits,
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
        }
    }
}

/// The daemon's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The unix socket path (`serve.listen`; default [`default_socket_path`]).
    pub listen: PathBuf,
    /// The socket file's mode (`serve.mode`, an octal string; default `0600`).
    pub mode: u32,
    /// Peers that are agents.
    pub agents: Vec<AgentEntry>,
    /// Peers that are admins.
    pub admins: Vec<AdminEntry>,
    /// How long a client may take to send its request headers (`serve.header_timeout`;
    /// default 10s).
    pub header_timeout: Duration,
    /// Per-agent limits (`serve.limits`).
    pub limits: Limits,
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
        Self::validate(
            raw,
            config.base_dir(),
            xdg.as_deref(),
            rustix::process::geteuid().as_raw(),
        )
        .map_err(|e| e.with_location(config.path().display().to_string()))
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
            Some(l) => base_dir.join(l),
            None => default_socket_path(xdg, euid)?,
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
        let mut agents: Vec<AgentEntry> = Vec::new();
        for mut a in raw.agents {
            a.id = broker_core::policy::normalize_agent_id(&a.id)?.ok_or_else(|| {
                Error::invalid_config(format!("`serve.agents`: uid {} has an empty id", a.uid))
            })?;
            if let Some(other) = agents.iter().find(|b| b.uid == a.uid && b.gid == a.gid) {
                return Err(Error::invalid_config(format!(
                    "`serve.agents`: uid {} is mapped twice (`{}` and `{}`)",
                    a.uid, other.id, a.id
                )));
            }
            agents.push(a);
        }
        let header_timeout = match raw.header_timeout {
            None => Duration::from_secs(10),
            Some(t) => parse_duration(&t)
                .map_err(|e| Error::invalid_config(format!("`serve.header_timeout`: {e}")))?,
        };
        if raw.limits.rate.requests > 0 && raw.limits.burst == 0 {
            return Err(Error::invalid_config(
                "`serve.limits.burst` must be at least 1 when `rate` is set",
            ));
        }
        Ok(ServeConfig {
            limits: raw.limits,
            listen,
            mode,
            agents,
            admins: raw.admins,
            header_timeout,
        })
    }

    /// The agent id a peer with `uid`/`gid` is, if any: an entry naming both wins over one
    /// naming only the uid.
    pub fn agent_for(&self, uid: u32, gid: u32) -> Option<&str> {
        self.agents
            .iter()
            .find(|a| a.uid == uid && a.gid == Some(gid))
            .or_else(|| self.agents.iter().find(|a| a.uid == uid && a.gid.is_none()))
            .map(|a| a.id.as_str())
    }

    /// Whether a peer with `uid` is an admin.
    pub fn is_admin(&self, uid: u32) -> bool {
        self.admins.iter().any(|a| a.uid == uid)
    }
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
        assert_eq!(c.listen, Path::new("/base/s.sock"));
        assert_eq!(c.mode, 0o660);
        assert_eq!(c.agent_for(5, 1), Some("ci-agent"));
        assert_eq!(c.agent_for(5, 9), Some("b"));
        assert_eq!(c.agent_for(6, 9), None);
        assert!(c.is_admin(0) && !c.is_admin(5));
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
