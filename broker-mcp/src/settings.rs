//! The `mcp:` section of `.broker.yml`.

use broker_core::{Config, Error, Result};
use serde::Deserialize;

/// The variables a `run` child gets from the server's own environment when `mcp.pass_env` is
/// not set. Everything else (backend tokens, the sources of `env:` credentials) stays out of
/// the child's reach; the delivered credentials are added on top.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM",
    "TMPDIR",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcp {
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    allow_programs: Option<Vec<String>>,
    #[serde(default)]
    pass_env: Option<Vec<String>>,
}

/// `mcp:` in the config, validated.
///
/// ```yaml
/// mcp:
///   agent: claude-code            # the stdio agent id (the local user's word); --agent overrides
///   allow_programs: [terraform, /usr/bin/psql]   # argv[0] must be one of these (exactly)
///   pass_env: [PATH, HOME, LANG]  # variables a child inherits from the server
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct McpConfig {
    /// The agent id for stdio sessions (normalised), unless `--agent` says otherwise.
    pub agent: Option<String>,
    /// When set, `run` executes only these programs: `argv[0]` must equal an entry exactly (a
    /// bare name is looked up in the child's `PATH`; a path is used as written).
    pub allow_programs: Option<Vec<String>>,
    /// The variables a child inherits from the server's environment ([`DEFAULT_PASS_ENV`](crate::DEFAULT_PASS_ENV)
    /// unless set).
    pub pass_env: Vec<String>,
}

impl McpConfig {
    /// Reads `mcp:` from `config` (the defaults when absent).
    pub fn from_config(config: &Config) -> Result<McpConfig> {
        let raw: RawMcp = match &config.mcp {
            Some(section) => section.parse::<Option<RawMcp>>()?.unwrap_or_default(),
            None => RawMcp::default(),
        };
        let at = || format!("{}: in `mcp`", config.path().display());
        let agent = match raw.agent {
            Some(a) => broker_core::policy::normalize_agent_id(&a)
                .map_err(|e| Error::invalid_config(format!("`mcp.agent`: {}", e.message())))
                .map_err(|e| e.with_location(at()))?,
            None => None,
        };
        if let Some(programs) = &raw.allow_programs
            && let Some(bad) = programs.iter().find(|p| p.trim().is_empty())
        {
            return Err(Error::invalid_config(format!(
                "`mcp.allow_programs` has an empty entry ({bad:?})"
            ))
            .with_location(at()));
        }
        let pass_env = raw
            .pass_env
            .unwrap_or_else(|| DEFAULT_PASS_ENV.iter().map(|s| s.to_string()).collect());
        Ok(McpConfig {
            agent,
            allow_programs: raw.allow_programs,
            pass_env,
        })
    }

    /// Whether `program` (a run's `argv[0]`) may be executed.
    pub fn allows(&self, program: &str) -> bool {
        match &self.allow_programs {
            None => true,
            Some(list) => list.iter().any(|p| p == program),
        }
    }
}
