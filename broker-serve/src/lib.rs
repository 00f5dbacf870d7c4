//! `broker serve`: the agent-facing daemon and its client.
//!
//! The daemon listens on a unix socket, takes each connection's identity from the kernel
//! (`SO_PEERCRED`), maps it to an agent id through `serve.agents` in the config, and answers
//! JSON over HTTP/1.1 under `/v1/`. Every credential request goes through
//! [`Broker::resolve`](broker_core::Broker::resolve) with the *verified* agent id, so the
//! runtime layers (policy → egress gate → lease cache → retry → audit) apply unchanged.
//! An agent's `--agent` / `BROKER_AGENT_ID` means nothing here.
//!
//! - [`ServeConfig`]: the `serve:` section.
//! - [`Daemon`]: binds the socket and serves until a shutdown signal.
//! - [`State`]: blocks and issued leases (and later rate limits) behind one small trait;
//!   [`MemoryState`] is the default.
//! - [`client`]: asks a daemon for a credential over its socket.
//!
//! See `docs/serve.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admin;
mod api;
pub mod client;
mod config;
mod error;
pub mod identity;
pub mod jwt;
mod listen;
pub mod metrics;
mod state;
mod tls;

pub use api::{CredentialRequest, CredentialResponse, ScopeRequest, TtlValue};
pub use config::{
    AdminEntry, AgentEntry, ClientAuth, Limits, Rate, ServeConfig, TlsSettings, default_socket_path,
};
pub use error::ApiError;
pub use identity::{ClientCert, Method, Peer, Principal};
pub use listen::{Daemon, Reload, bind_socket, bind_socket_with_group};
pub use state::{LeaseRecord, MemoryState, State};

/// The most a request body may hold.
pub const BODY_LIMIT: usize = 64 * 1024;
