//! State that outlives one request: blocked agents today; leases and rate-limit counters
//! later. One small trait, so a shared store (for many daemons behind one address) can replace
//! the in-memory default without touching the request path.

use std::collections::BTreeSet;
use std::sync::Mutex;

use async_trait::async_trait;
use broker_core::Result;

/// The daemon's mutable state. Agent ids are normalised before they reach it.
#[async_trait]
pub trait State: Send + Sync + 'static {
    /// Blocks `agent`; `true` if it was not blocked before.
    async fn block(&self, agent: &str) -> Result<bool>;
    /// Unblocks `agent`; `true` if it was blocked.
    async fn unblock(&self, agent: &str) -> Result<bool>;
    /// Whether `agent` is blocked.
    async fn is_blocked(&self, agent: &str) -> Result<bool>;
}

/// The default [`State`]: in this process's memory, gone on restart.
#[derive(Debug, Default)]
pub struct MemoryState {
    blocked: Mutex<BTreeSet<String>>,
}

impl MemoryState {
    fn blocked(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl State for MemoryState {
    async fn block(&self, agent: &str) -> Result<bool> {
        Ok(self.blocked().insert(agent.to_string()))
    }
    async fn unblock(&self, agent: &str) -> Result<bool> {
        Ok(self.blocked().remove(agent))
    }
    async fn is_blocked(&self, agent: &str) -> Result<bool> {
        Ok(self.blocked().contains(agent))
    }
}
