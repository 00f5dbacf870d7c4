//! The lease cache: credentials kept in memory for this process, re-minted before they expire.
//!
//! - A credential is cached under a [`CacheKey`] (credential name and scope). A cached value is
//!   served while its remaining lifetime exceeds the refresh margin: the larger of 20% of its
//!   lifetime and 60 s (never more than half the lifetime), minus a random jitter of up to 10%
//!   of the margin so that many processes do not re-mint at the same instant.
//! - Past the margin, exactly one fetch runs per key and every concurrent caller waits on it
//!   (singleflight, a per-key async mutex with a double check after acquiring it).
//! - If that refresh fails, the old credential is served only while it is still valid; once it
//!   has expired the error is returned (fail closed).
//! - Values without an expiry (stored secrets from KV or Secret Manager) stay cached for the
//!   life of the process. Eviction drops the entry, and [`SecretValue`](crate::SecretValue)
//!   zeroizes its buffer on drop. Nothing is ever written to disk.
//!
//! Time comes from a [`Clock`], so tests drive expiry with a [`ManualClock`] instead of sleeping.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::{Credential, Error, Result};

/// A source of wall-clock time.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> Self {
        ManualClock(Mutex::new(start))
    }
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
    /// Sets the clock to `to`.
    pub fn set(&self, to: SystemTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// When to refresh a cached credential.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshPolicy {
    /// The margin as a fraction of the credential's lifetime (default 0.2).
    pub fraction: f64,
    /// The smallest margin (default 60 s).
    pub min_margin: Duration,
    /// The largest jitter as a fraction of the margin (default 0.1; 0 disables jitter).
    pub jitter: f64,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            fraction: 0.2,
            min_margin: Duration::from_secs(60),
            jitter: 0.1,
        }
    }
}

impl RefreshPolicy {
    /// The margin for a credential living `lifetime`: `max(fraction × lifetime, min_margin)`,
    /// capped at half the lifetime so a short-lived credential is still reused.
    pub fn margin(&self, lifetime: Duration) -> Duration {
        let proportional = lifetime.mul_f64(self.fraction.clamp(0.0, 1.0));
        proportional.max(self.min_margin).min(lifetime / 2)
    }

    /// When a credential issued at `issued` and expiring at `expires` should be refreshed,
    /// with the jitter drawn from `unit` (a number in `[0, 1)`).
    pub fn refresh_at(&self, issued: SystemTime, expires: SystemTime, unit: f64) -> SystemTime {
        let lifetime = expires.duration_since(issued).unwrap_or_default();
        let margin = self.margin(lifetime);
        let jitter = margin.mul_f64((self.jitter * unit).clamp(0.0, 1.0));
        expires
            .checked_sub(margin + jitter)
            .unwrap_or(issued)
            .max(issued)
    }
}

/// What a cache entry is keyed by: the credential's name and its scope (canonical JSON); for
/// minted credentials also the agent they were issued to and a requested lifetime, so two
/// agents never share a minted lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The credential's name.
    pub credential: String,
    /// The scope, as canonical text; empty when unscoped.
    pub scope: String,
    /// The agent a minted credential is issued to (`None`: shared).
    pub agent: Option<String>,
    /// A lifetime shorter than the configured one, when a request asked for it.
    pub ttl: Option<Duration>,
}

impl CacheKey {
    /// A key for `credential` with `scope`, shared by every agent.
    pub fn new(credential: impl Into<String>, scope: impl Into<String>) -> Self {
        CacheKey {
            credential: credential.into(),
            scope: scope.into(),
            agent: None,
            ttl: None,
        }
    }
    /// The same key for `agent` only.
    #[must_use]
    pub fn with_agent(mut self, agent: Option<String>) -> Self {
        self.agent = agent;
        self
    }
    /// The same key for a requested lifetime.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }
}

/// How a [`LeaseCache::get`] was served.
#[derive(Debug, Clone, PartialEq)]
pub enum Served {
    /// From the cache, without a fetch.
    Cached,
    /// From a fetch (first use, or the entry had expired).
    Fetched,
    /// From a fetch that replaced an entry inside its refresh margin.
    Refreshed,
    /// The refresh failed; the old credential, still valid, was served. Holds the error.
    Stale(Error),
}

/// A credential from the cache with how it was served.
#[derive(Debug)]
pub struct Lookup {
    /// A copy of the cached credential (the cache keeps its own).
    pub credential: Credential,
    /// When it stops working, if known.
    pub expires_at: Option<SystemTime>,
    /// When the cache will next re-mint it, if ever.
    pub refresh_at: Option<SystemTime>,
    /// Cache hit, fetch, refresh or stale.
    pub served: Served,
}

/// What a fetch hands the cache.
pub struct Fetched {
    /// The credential.
    pub credential: Credential,
    /// When it expires (`None`: never, for this process).
    pub expires_at: Option<SystemTime>,
    /// Whether the cache may keep it. A minted credential without a known expiry is not kept.
    pub cacheable: bool,
}

struct Entry {
    credential: Credential,
    expires_at: Option<SystemTime>,
    refresh_at: Option<SystemTime>,
}

#[derive(Default)]
struct Slot {
    current: RwLock<Option<Arc<Entry>>>,
    flight: tokio::sync::Mutex<()>,
}

impl Slot {
    fn current(&self) -> Option<Arc<Entry>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn store(&self, entry: Option<Arc<Entry>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = entry;
    }
}

/// An in-memory, per-process credential cache with singleflight refresh.
pub struct LeaseCache {
    slots: RwLock<HashMap<CacheKey, Arc<Slot>>>,
    clock: Arc<dyn Clock>,
    policy: RefreshPolicy,
}

impl std::fmt::Debug for LeaseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<CacheKey> = self
            .slots
            .read()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("LeaseCache")
            .field("keys", &keys)
            .field("policy", &self.policy)
            .finish()
    }
}

impl LeaseCache {
    /// An empty cache using `clock` and `policy`.
    pub fn new(clock: Arc<dyn Clock>, policy: RefreshPolicy) -> Self {
        LeaseCache {
            slots: RwLock::new(HashMap::new()),
            clock,
            policy,
        }
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn slot(&self, key: &CacheKey) -> Arc<Slot> {
        if let Some(s) = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return s.clone();
        }
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn is_fresh(&self, entry: &Entry, now: SystemTime) -> bool {
        entry.refresh_at.is_none_or(|r| now < r)
    }

    fn lookup(entry: &Entry, served: Served) -> Lookup {
        Lookup {
            credential: entry.credential.clone(),
            expires_at: entry.expires_at,
            refresh_at: entry.refresh_at,
            served,
        }
    }

    /// The cached credential for `key` if it is outside its refresh margin; never fetches.
    pub fn peek(&self, key: &CacheKey) -> Option<Lookup> {
        let slot = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)?
            .clone();
        let entry = slot.current()?;
        self.is_fresh(&entry, self.clock.now())
            .then(|| Self::lookup(&entry, Served::Cached))
    }

    /// The credential for `key`: cached while fresh, else fetched once for all concurrent
    /// callers. A failed refresh serves the old credential while it is valid, then fails.
    pub async fn get<F, Fut>(&self, key: &CacheKey, fetch: F) -> Result<Lookup>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched>>,
    {
        let slot = self.slot(key);
        if let Some(entry) = slot.current()
            && self.is_fresh(&entry, self.clock.now())
        {
            return Ok(Self::lookup(&entry, Served::Cached));
        }
        let _flight = slot.flight.lock().await;
        // Double check: the caller that held the lock may have refreshed it already.
        let previous = slot.current();
        if let Some(entry) = &previous
            && self.is_fresh(entry, self.clock.now())
        {
            return Ok(Self::lookup(entry, Served::Cached));
        }
        match fetch().await {
            Ok(fetched) => {
                let issued = self.clock.now();
                let refresh_at = fetched
                    .expires_at
                    .map(|exp| self.policy.refresh_at(issued, exp, rand::random::<f64>()));
                let entry = Arc::new(Entry {
                    credential: fetched.credential,
                    expires_at: fetched.expires_at,
                    refresh_at,
                });
                let served = if previous.is_some() {
                    Served::Refreshed
                } else {
                    Served::Fetched
                };
                let out = Self::lookup(&entry, served);
                // Replacing the entry drops the old one, zeroizing its values.
                slot.store(fetched.cacheable.then_some(entry));
                Ok(out)
            }
            Err(error) => {
                let now = self.clock.now();
                match previous {
                    Some(old) if old.expires_at.is_some_and(|exp| now < exp) => {
                        Ok(Self::lookup(&old, Served::Stale(error)))
                    }
                    Some(_) => {
                        slot.store(None);
                        Err(error)
                    }
                    None => Err(error),
                }
            }
        }
    }

    /// Drops the entry for `key` (its values are zeroized).
    pub fn evict(&self, key: &CacheKey) {
        let removed = self
            .slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(slot) = removed {
            slot.store(None);
        }
    }

    /// Drops every entry holding lease `lease_id` (revoked, say); returns how many were dropped.
    pub fn evict_lease(&self, lease_id: &str) -> usize {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for slot in slots.values() {
            if slot
                .current()
                .is_some_and(|e| e.credential.lease().is_some_and(|l| l.id == lease_id))
            {
                slot.store(None);
                n += 1;
            }
        }
        n
    }

    /// Drops every entry whose credential has expired; returns how many were dropped.
    pub fn evict_expired(&self) -> usize {
        let now = self.clock.now();
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for slot in slots.values() {
            if slot
                .current()
                .is_some_and(|e| e.expires_at.is_some_and(|exp| exp <= now))
            {
                slot.store(None);
                n += 1;
            }
        }
        n
    }

    /// Drops every entry (their values are zeroized).
    pub fn clear(&self) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        for slot in slots.values() {
            slot.store(None);
        }
        slots.clear();
    }

    /// How many entries hold a credential.
    pub fn len(&self) -> usize {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.current().is_some())
            .count()
    }

    /// Whether no entry holds a credential.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
