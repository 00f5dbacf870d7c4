//! State that outlives one request: blocked agents and the leases the daemon issued (rate-limit
//! counters later). One small trait, so a shared store (for many daemons behind one address)
//! can replace the in-memory default without touching the request path.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use broker_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::config::Limits;

/// A lease the daemon handed to an agent. Secret-free: ids, names and times only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The backend's lease id (`token-accessor:...` for an OpenBao child token).
    pub lease_id: String,
    /// The credential's name.
    pub credential: String,
    /// The agent it was issued to.
    pub agent: String,
    /// The backend that issued it.
    pub backend: String,
    /// When it stops working, if known (RFC 3339).
    pub expires_at: Option<String>,
    /// Whether the backend can revoke it singly (OpenBao tokens and leases can; STS sessions
    /// cannot: those are only marked revoked).
    pub revocable: bool,
    /// Whether it was revoked (or, when not `revocable`, marked revoked) through the daemon.
    pub revoked: bool,
    #[serde(skip)]
    pub(crate) expires: Option<SystemTime>,
}

impl LeaseRecord {
    /// A live lease record.
    pub fn new(
        lease_id: String,
        credential: String,
        agent: String,
        backend: String,
        expires: Option<SystemTime>,
        revocable: bool,
    ) -> LeaseRecord {
        LeaseRecord {
            lease_id,
            credential,
            agent,
            backend,
            expires_at: expires.map(broker_core::audit::rfc3339),
            revocable,
            revoked: false,
            expires,
        }
    }

    /// When it stops working, if known.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }
}

/// The daemon's mutable state. Agent ids are normalised before they reach it.
#[async_trait]
pub trait State: Send + Sync + 'static {
    /// Blocks `agent`; `true` if it was not blocked before. An error means the block may not
    /// survive a restart; it must still hold in this process.
    async fn block(&self, agent: &str) -> Result<bool>;
    /// Unblocks `agent`; `true` if it was blocked.
    async fn unblock(&self, agent: &str) -> Result<bool>;
    /// Whether `agent` is blocked.
    async fn is_blocked(&self, agent: &str) -> Result<bool>;
    /// Records a lease handed out (again, for a cached one: the record is kept as it is).
    async fn record_lease(&self, lease: LeaseRecord) -> Result<()>;
    /// The lease `lease_id`, if the daemon issued it and it has not expired.
    async fn lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>>;
    /// Unexpired leases, of `agent` only or of everyone (`None`), in id order.
    async fn leases(&self, agent: Option<&str>) -> Result<Vec<LeaseRecord>>;
    /// Marks `lease_id` revoked; `true` if it was live.
    async fn mark_revoked(&self, lease_id: &str) -> Result<bool>;
    /// Takes one request from `agent`'s token bucket: `None` when admitted, else how long
    /// until the next request would be.
    async fn check_rate(&self, agent: &str) -> Result<Option<Duration>>;
    /// Forgets what no longer matters (full buckets, expired leases); the daemon calls it
    /// periodically so the maps do not grow without bound.
    async fn sweep(&self) -> Result<()>;
    /// Takes one of `agent`'s in-flight slots counted across every replica (at most `cap`):
    /// `None` when this state does not count them (the daemon's per-process cap is all there
    /// is), `Some(None)` when all are taken, `Some(Some(id))` when one was taken (give it back
    /// with [`State::give_slot`]; it lapses by itself if this process dies).
    async fn take_slot(&self, _agent: &str, _cap: u32) -> Result<Option<Option<String>>> {
        Ok(None)
    }
    /// [`State::check_rate`], then (when admitted and `cap` is not 0) [`State::take_slot`]: a
    /// shared store answers both in one round trip.
    async fn admit(
        &self,
        agent: &str,
        cap: u32,
    ) -> Result<(Option<Duration>, Option<Option<String>>)> {
        let wait = self.check_rate(agent).await?;
        if wait.is_some() || cap == 0 {
            return Ok((wait, None));
        }
        Ok((None, self.take_slot(agent, cap).await?))
    }
    /// Gives back a slot [`State::take_slot`] took.
    async fn give_slot(&self, _agent: &str, _id: &str) {}
    /// The lease cache this state shares with other replicas, if it is a shared store.
    fn shared_leases(&self) -> Option<std::sync::Arc<dyn broker_core::lease::SharedLeases>> {
        None
    }
}

type Limiter = governor::DefaultKeyedRateLimiter<String>;

/// The default [`State`]: in this process's memory; with a file ([`MemoryState::open`]),
/// blocks and issued leases are also written there on every change (atomically, 0600) and
/// read back on start, so they survive a restart. Rate-limit buckets start full again.
pub struct MemoryState {
    blocked: Mutex<BTreeSet<String>>,
    leases: Mutex<BTreeMap<String, LeaseRecord>>,
    limiter: Option<Limiter>,
    file: Option<PathBuf>,
    /// Serialises writes of `file`.
    saving: Mutex<()>,
}

/// What [`MemoryState::open`] keeps in its file. Secret-free.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    blocked: Vec<String>,
    leases: Vec<LeaseRecord>,
}

/// The largest state file read.
const MAX_STATE_FILE: u64 = 64 << 20;

impl std::fmt::Debug for MemoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryState")
            .field("blocked", &*lock(&self.blocked))
            .field("leases", &lock(&self.leases).len())
            .field("rate_limited", &self.limiter.is_some())
            .finish()
    }
}

impl Default for MemoryState {
    fn default() -> Self {
        MemoryState::new(Limits::default())
    }
}

impl MemoryState {
    /// An empty state whose token buckets follow `limits` (`rate: 0`: no rate limit).
    pub fn new(limits: Limits) -> MemoryState {
        let limiter = NonZeroU32::new(limits.rate.requests).and_then(|n| {
            let burst = NonZeroU32::new(limits.burst).unwrap_or(n);
            governor::Quota::with_period(limits.rate.per / n.get())
                .map(|q| governor::RateLimiter::keyed(q.allow_burst(burst)))
        });
        MemoryState {
            blocked: Mutex::default(),
            leases: Mutex::default(),
            limiter,
            file: None,
            saving: Mutex::default(),
        }
    }

    /// A state kept in `path` as well: read now (a missing file is an empty state; its
    /// directory is created 0700), rewritten on every block, unblock, new lease and
    /// revocation.
    pub fn open(limits: Limits, path: &Path) -> Result<MemoryState> {
        let mut state = MemoryState::new(limits);
        match broker_core::localfile::read(path, MAX_STATE_FILE) {
            Ok(bytes) => {
                let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidConfig,
                        format!(
                            "the daemon's state file {} is not valid: {e}",
                            path.display()
                        ),
                    )
                    .with_hint("move it aside to start with no blocks and no leases")
                })?;
                *lock(&state.blocked) = saved.blocked.into_iter().collect();
                let now = SystemTime::now();
                let mut leases = lock(&state.leases);
                for mut lease in saved.leases {
                    lease.expires = lease.expires_at.as_deref().and_then(parse_time);
                    if lease.expires.is_none_or(|e| e > now) {
                        leases.insert(lease.lease_id.clone(), lease);
                    }
                }
            }
            Err(e) if e.is_not_found() => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
                }
            }
            Err(e) => {
                return Err(e.to_error(
                    format!("the daemon's state file {}", path.display()),
                    ErrorKind::Io,
                ));
            }
        }
        state.file = Some(path.to_path_buf());
        Ok(state)
    }

    /// Writes the file, if there is one. A failure fails the change that caused it.
    fn save(&self) -> Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let _one_writer = lock(&self.saving);
        let saved = Saved {
            version: 1,
            blocked: lock(&self.blocked).iter().cloned().collect(),
            leases: self.live().values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&saved)
            .map_err(|e| Error::internal(format!("cannot encode the daemon's state: {e}")))?;
        broker_core::localfile::write_atomically(path, &bytes)
    }
}

pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryState {
    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LeaseRecord>> {
        let mut leases = lock(&self.leases);
        let now = SystemTime::now();
        leases.retain(|_, l| l.expires.is_none_or(|e| e > now));
        leases
    }
}

#[async_trait]
impl State for MemoryState {
    // A change that cannot be kept in the file is undone (memory never claims what a restart
    // would not read), except a block: the kill switch holds in this process regardless, and
    // the error says it would not survive a restart.
    async fn block(&self, agent: &str) -> Result<bool> {
        let changed = lock(&self.blocked).insert(agent.to_string());
        self.save()?;
        Ok(changed)
    }
    async fn unblock(&self, agent: &str) -> Result<bool> {
        let changed = lock(&self.blocked).remove(agent);
        if let Err(e) = self.save() {
            if changed {
                lock(&self.blocked).insert(agent.to_string());
            }
            return Err(e);
        }
        Ok(changed)
    }
    async fn is_blocked(&self, agent: &str) -> Result<bool> {
        Ok(lock(&self.blocked).contains(agent))
    }
    async fn record_lease(&self, lease: LeaseRecord) -> Result<()> {
        let id = lease.lease_id.clone();
        let new = match self.live().entry(lease.lease_id.clone()) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(lease);
                true
            }
            std::collections::btree_map::Entry::Occupied(_) => false,
        };
        if new && let Err(e) = self.save() {
            lock(&self.leases).remove(&id);
            return Err(e);
        }
        Ok(())
    }
    async fn lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>> {
        Ok(self.live().get(lease_id).cloned())
    }
    async fn leases(&self, agent: Option<&str>) -> Result<Vec<LeaseRecord>> {
        Ok(self
            .live()
            .values()
            .filter(|l| agent.is_none_or(|a| l.agent == a))
            .cloned()
            .collect())
    }
    async fn mark_revoked(&self, lease_id: &str) -> Result<bool> {
        let changed = self
            .live()
            .get_mut(lease_id)
            .is_some_and(|l| !std::mem::replace(&mut l.revoked, true));
        if changed && let Err(e) = self.save() {
            if let Some(l) = lock(&self.leases).get_mut(lease_id) {
                l.revoked = false;
            }
            return Err(e);
        }
        Ok(changed)
    }
    async fn check_rate(&self, agent: &str) -> Result<Option<Duration>> {
        use governor::clock::{Clock, DefaultClock};
        let Some(limiter) = &self.limiter else {
            return Ok(None);
        };
        Ok(limiter
            .check_key(&agent.to_string())
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now())))
    }
    async fn sweep(&self) -> Result<()> {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        drop(self.live());
        Ok(())
    }
}
