//! `broker mcp`: a Model Context Protocol server, so an agent uses credentials without
//! seeing them.
//!
//! An MCP client (a coding agent) starts `broker mcp` over stdio, or reaches
//! `broker mcp --listen 127.0.0.1:PORT` over streamable HTTP, and gets three tools:
//!
//! - `list_credentials`: the manifest (names, references, destinations, badges, delivery),
//!   filtered by policy to what this agent may use. Never a value.
//! - `run`: an argv array executed directly (no shell added), with the named credentials
//!   delivered by the same engine as `broker run` ([`broker_core::session`]): policy, egress
//!   gate, lease cache and audit log first; the child's output redacted of every delivered
//!   value and its encodings, capped, and returned with the exit code; the process group
//!   killed on timeout; the scratch dir wiped on every path. See [`run`].
//! - `reveal_credential`: offered only when some credential says `mcp: { reveal: true }`;
//!   shows that value and records the reveal in the audit log.
//!
//! Identity: over stdio the agent id is `mcp.agent` in the config or `--agent` — the local
//! user's word, as for `broker run`. Over HTTP every request carries a bearer token verified by
//! [`broker_serve::jwt::JwtVerifier`] (`serve.jwt`), and the token's agent id is the one policy
//! and the audit log see.
//!
//! - [`McpConfig`]: the `mcp:` section.
//! - [`BrokerMcp`]: the server (an [`rmcp::ServerHandler`]).
//! - [`serve_stdio`], [`serve_http`]: the two transports.
//!
//! See `docs/mcp.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod http;
pub mod run;
mod server;
mod settings;

pub use http::{HttpOptions, MCP_PATH, serve_http};
pub use server::{BrokerMcp, Identity};
pub use settings::{DEFAULT_PASS_ENV, McpConfig};

use std::sync::Arc;

use broker_core::{Broker, Error, ErrorKind, Result};

/// Serves MCP over this process's stdin and stdout until the client closes stdin.
///
/// Nothing else may write to stdout meanwhile: children get pipes (never the server's
/// stdout) and the broker's own logs go to stderr.
pub async fn serve_stdio(broker: Arc<Broker>, agent: Option<String>) -> Result<()> {
    use rmcp::ServiceExt;
    let server = BrokerMcp::stdio(broker, agent)?;
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("the MCP session did not start: {e}")))?;
    running
        .waiting()
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("the MCP session failed: {e}")))?;
    Ok(())
}
