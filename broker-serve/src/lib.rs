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
//! - [`proxy`]: placeholder mode for `broker run --from`: the egress proxy runs in the daemon.
//! - `RedisState` (feature `redis`; `serve.store.kind: redis`): many replicas sharing blocks,
//!   rate limits, lease records and (encrypted) minted credentials through Redis or Valkey,
//!   failing closed while the store is out of reach.
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
pub mod proxy;
mod state;
#[cfg(feature = "redis")]
mod store;
mod tls;

pub use api::{CredentialRequest, CredentialResponse, ScopeRequest, TtlValue};
pub use config::{
    AdminEntry, AgentEntry, ClientAuth, Limits, Rate, ServeConfig, SharedStore, TlsSettings,
    default_socket_path,
};
pub use error::ApiError;
pub use identity::{ClientCert, Method, Peer, Principal};
pub use listen::{Daemon, Reload, bind_socket, bind_socket_with_group};
pub use state::{LeaseRecord, MemoryState, State};
#[cfg(feature = "redis")]
pub use store::RedisState;

/// The most a request body may hold.
pub const BODY_LIMIT: usize = 64 * 1024;
