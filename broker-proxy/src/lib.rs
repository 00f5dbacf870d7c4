//! `broker-proxy`: the run's egress proxy. The child holds a placeholder; the value is put in
//! on the way out, only toward the hosts its credential names.
//!
//! - [`settings`]: a credential's `proxy:` rules and the top-level `egress.proxy` policy.
//! - [`placeholder`]: random placeholders of a configurable shape (≥ 128 bits).
//! - [`addr`] and [`net`]: host normalisation (IP literals in every spelling), the blocked
//!   ranges, the egress check, and the injectable [`Resolver`] and [`Dialer`].
//! - [`ca`]: the run's CA (key only in memory) and per-host leaf certificates.
//! - [`server`]: the proxy itself ([`Proxy`]): CONNECT with TLS interception and absolute-form
//!   HTTP, the exfiltration alert, redacted streaming responses, audit records; the values
//!   go into headers, path, query and JSON/form bodies as each credential's rules say.
//! - [`websocket`]: upgrades, relayed with the upstream's frames redacted.
//! - [`audit`]: where its records go ([`LogAudit`]: the broker's log and alert hook).
//! - [`run`]: `broker run`'s use of it ([`RunProxy`]).
//!
//! See `docs/proxy.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod addr;
pub mod audit;
pub mod ca;
pub mod net;
pub mod placeholder;
pub mod run;
pub mod server;
pub mod settings;
mod substitute;
pub mod websocket;

pub use audit::{AuditSink, LogAudit, MemoryAudit};
pub use net::{Dialer, Egress, Resolver, SystemResolver, Target, TcpDialer};
pub use run::{ProxyEnv, RunProxy};
pub use server::{Admit, ProxiedCredential, Proxy, ProxyOptions};
pub use settings::{EgressPolicy, HostPattern, Rules};
