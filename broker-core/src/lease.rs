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
//!
//! ## Shared across processes
//!
//! Several processes (the replicas of `broker serve`) can share one cache through a
//! [`SharedLeases`] store ([`LeaseCache::set_shared`]). The per-process cache stays in front:
//! a fresh local entry is served without asking the store (unless the store says its lease was
//! revoked). On a local miss, inside the per-key singleflight, the store is asked for a fresh
//! entry; if it has none, this process takes the store's per-key lock (with a fencing token)
//! and fetches, or, when another process holds it, waits for that process's value (or for the
//! lock to lapse, then takes over). So a burst spread over every replica causes one fetch.
//! Errors from the store fail the request (closed). Without a store nothing changes.

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

/// A credential as a [`SharedLeases`] store keeps it. Holds a value: no `Debug` of it.
pub struct SharedEntry {
    /// The credential.
    pub credential: Credential,
    /// When it expires (shared entries always expire).
    pub expires_at: SystemTime,
    /// When the fleet should re-mint it (chosen once, by the process that fetched it).
    pub refresh_at: SystemTime,
}

impl std::fmt::Debug for SharedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEntry")
            .field("credential", &self.credential)
            .field("expires_at", &self.expires_at)
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// A lease cache shared by several processes: the seam a shared store (Redis, say) fills.
///
/// Entries that never expire (stored secrets) are not shared; each process keeps its own.
#[async_trait::async_trait]
pub trait SharedLeases: Send + Sync {
    /// The entry for `key`, if the store has one that has not expired.
    async fn get(&self, key: &CacheKey) -> Result<Option<SharedEntry>>;
    /// Takes `key`'s fetch lock: `Some(fencing token)` when this process now holds it, `None`
    /// when another does. Tokens only grow; the lock lapses by itself after a while.
    async fn try_lock(&self, key: &CacheKey) -> Result<Option<u64>>;
    /// Stores `entry` fetched under `token` and releases the lock; `false` (nothing written)
    /// when an entry written under a newer token is there.
    async fn put(&self, key: &CacheKey, token: u64, entry: &SharedEntry) -> Result<bool>;
    /// Releases the lock taken with `token` without a value (the fetch failed, or its result
    /// is not shared), waking the waiters.
    async fn unlock(&self, key: &CacheKey, token: u64) -> Result<()>;
    /// Waits until `key` changes (a value landed or the lock was released) or a short while
    /// passes; `round` counts the waits so far (for backoff).
    async fn wait(&self, key: &CacheKey, round: u32);
    /// How long a waiter keeps waiting for another process's fetch before giving up.
    fn max_wait(&self) -> Duration;
    /// Whether lease `lease_id` was revoked anywhere in the fleet (a local check: no I/O).
    fn revoked(&self, lease_id: &str) -> bool;
    /// The fetch holding `key`'s lock (`token`) was dropped before it stored or released
    /// anything (its caller went away): release the lock without waiting (from a spawned
    /// task, say), so that waiters need not wait for it to lapse. The default does nothing.
    fn abandon(&self, key: &CacheKey, token: u64) {
        let _ = (key, token);
    }
}

/// Hands a held shared fetch lock back ([`SharedLeases::abandon`]) when dropped armed, that is
/// when the future holding it was dropped mid-way.
struct Held<'a> {
    shared: &'a dyn SharedLeases,
    key: &'a CacheKey,
    token: u64,
    armed: bool,
}

impl Held<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.abandon(self.key, self.token);
        }
    }
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

enum FromShared {
    Entry(Entry),
    Locked(u64),
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
    shared: RwLock<Option<Arc<dyn SharedLeases>>>,
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
            .field("shared", &self.shared().is_some())
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
            shared: RwLock::new(None),
        }
    }

    /// Shares the cache with other processes through `shared` (`None`: this process only).
    pub fn set_shared(&self, shared: Option<Arc<dyn SharedLeases>>) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = shared;
    }

    /// The shared store, if any.
    pub fn shared(&self) -> Option<Arc<dyn SharedLeases>> {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `entry`'s lease was revoked elsewhere in the fleet.
    fn revoked_elsewhere(&self, entry: &Entry) -> bool {
        match (self.shared(), entry.credential.lease()) {
            (Some(shared), Some(lease)) => shared.revoked(&lease.id),
            _ => false,
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
        entry.refresh_at.is_none_or(|r| now < r) && !self.revoked_elsewhere(entry)
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
        let previous = previous.filter(|e| !self.revoked_elsewhere(e));
        let mut token = None;
        if let Some(shared) = self.shared() {
            match self.ask_shared(&*shared, key).await? {
                FromShared::Entry(entry) => {
                    let entry = Arc::new(entry);
                    let out = Self::lookup(&entry, Served::Cached);
                    slot.store(Some(entry));
                    return Ok(out);
                }
                FromShared::Locked(t) => token = Some((shared, t)),
            }
        }
        // Released at once if this future is dropped before it stored or released anything.
        let held = token.as_ref().map(|(shared, t)| Held {
            shared: &**shared,
            key,
            token: *t,
            armed: true,
        });
        let result = fetch().await;
        if let Some((shared, t)) = &token {
            let put = match &result {
                Ok(Fetched {
                    credential,
                    expires_at: Some(expires_at),
                    cacheable: true,
                }) => {
                    let refresh_at = self.policy.refresh_at(
                        self.clock.now(),
                        *expires_at,
                        rand::random::<f64>(),
                    );
                    let entry = SharedEntry {
                        credential: credential.clone(),
                        expires_at: *expires_at,
                        refresh_at,
                    };
                    Some(shared.put(key, *t, &entry).await.map(|_| refresh_at))
                }
                _ => None,
            };
            match put {
                // The value is minted: serve it here even if the store failed to keep it.
                Some(Err(e)) => {
                    tracing::warn!("the shared lease store did not keep a fetched credential: {e}");
                    let _ = shared.unlock(key, *t).await;
                }
                Some(Ok(_)) => {}
                None => {
                    if let Err(e) = shared.unlock(key, *t).await {
                        tracing::warn!("cannot release a shared fetch lock: {e}");
                    }
                }
            }
        }
        if let Some(held) = held {
            held.disarm();
        }
        match result {
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

    /// A fresh entry from the shared store, or its lock (waiting for another process's fetch
    /// while it holds the lock, up to [`SharedLeases::max_wait`]).
    async fn ask_shared(&self, shared: &dyn SharedLeases, key: &CacheKey) -> Result<FromShared> {
        let deadline = std::time::Instant::now() + shared.max_wait();
        let mut round = 0;
        loop {
            if let Some(entry) = self.fresh_shared(shared, key).await? {
                return Ok(FromShared::Entry(entry));
            }
            if let Some(token) = shared.try_lock(key).await? {
                let held = Held {
                    shared,
                    key,
                    token,
                    armed: true,
                };
                // Double check under the lock: the previous holder may have stored a value
                // between our read and our lock.
                let checked = self.fresh_shared(shared, key).await;
                held.disarm();
                return match checked {
                    Ok(Some(entry)) => {
                        shared.unlock(key, token).await?;
                        Ok(FromShared::Entry(entry))
                    }
                    Ok(None) => Ok(FromShared::Locked(token)),
                    Err(e) => {
                        let _ = shared.unlock(key, token).await;
                        Err(e)
                    }
                };
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::new(
                    crate::ErrorKind::Transient,
                    format!(
                        "another replica has been fetching `{}` for over {}s",
                        key.credential,
                        shared.max_wait().as_secs()
                    ),
                ));
            }
            shared.wait(key, round).await;
            round = round.saturating_add(1);
        }
    }

    /// The shared store's entry for `key` if it is outside its refresh margin and its lease
    /// was not revoked.
    async fn fresh_shared(
        &self,
        shared: &dyn SharedLeases,
        key: &CacheKey,
    ) -> Result<Option<Entry>> {
        let Some(found) = shared.get(key).await? else {
            return Ok(None);
        };
        let revoked = found
            .credential
            .lease()
            .is_some_and(|l| shared.revoked(&l.id));
        Ok(
            (self.clock.now() < found.refresh_at && !revoked).then(|| Entry {
                credential: found.credential,
                expires_at: Some(found.expires_at),
                refresh_at: Some(found.refresh_at),
            }),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretValue;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    /// A [`SharedLeases`] in memory: what a shared store does, minus the network.
    #[derive(Default)]
    struct FakeShared {
        entries: Mutex<HashMap<CacheKey, (u64, SharedEntry)>>,
        locks: Mutex<HashMap<CacheKey, u64>>,
        fence: AtomicU64,
        notify: tokio::sync::Notify,
        revoked: Mutex<Vec<String>>,
        abandoned: AtomicU32,
    }

    #[async_trait::async_trait]
    impl SharedLeases for FakeShared {
        async fn get(&self, key: &CacheKey) -> Result<Option<SharedEntry>> {
            Ok(self
                .entries
                .lock()
                .unwrap()
                .get(key)
                .map(|(_, e)| SharedEntry {
                    credential: e.credential.clone(),
                    expires_at: e.expires_at,
                    refresh_at: e.refresh_at,
                }))
        }
        async fn try_lock(&self, key: &CacheKey) -> Result<Option<u64>> {
            let token = self.fence.fetch_add(1, Ordering::SeqCst) + 1;
            let mut locks = self.locks.lock().unwrap();
            if locks.contains_key(key) {
                return Ok(None);
            }
            locks.insert(key.clone(), token);
            Ok(Some(token))
        }
        async fn put(&self, key: &CacheKey, token: u64, entry: &SharedEntry) -> Result<bool> {
            let newer = {
                let mut entries = self.entries.lock().unwrap();
                let newer = entries.get(key).is_some_and(|(t, _)| *t > token);
                if !newer {
                    entries.insert(
                        key.clone(),
                        (
                            token,
                            SharedEntry {
                                credential: entry.credential.clone(),
                                expires_at: entry.expires_at,
                                refresh_at: entry.refresh_at,
                            },
                        ),
                    );
                }
                newer
            };
            self.unlock(key, token).await?;
            Ok(!newer)
        }
        async fn unlock(&self, key: &CacheKey, token: u64) -> Result<()> {
            let mut locks = self.locks.lock().unwrap();
            if locks.get(key) == Some(&token) {
                locks.remove(key);
            }
            self.notify.notify_waiters();
            Ok(())
        }
        async fn wait(&self, _key: &CacheKey, _round: u32) {
            let _ = tokio::time::timeout(Duration::from_millis(20), self.notify.notified()).await;
        }
        fn max_wait(&self) -> Duration {
            Duration::from_secs(5)
        }
        fn revoked(&self, lease_id: &str) -> bool {
            self.revoked.lock().unwrap().iter().any(|r| r == lease_id)
        }
        fn abandon(&self, key: &CacheKey, token: u64) {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
            let mut locks = self.locks.lock().unwrap();
            if locks.get(key) == Some(&token) {
                locks.remove(key);
            }
            self.notify.notify_waiters();
        }
    }

    fn minted(n: u32, clock: &dyn Clock) -> Fetched {
        Fetched {
            credential: Credential::new(SecretValue::from(format!("v{n}"))).with_lease(
                crate::Lease {
                    id: format!("lease-{n}"),
                    expires_at: None,
                    renewable: false,
                },
            ),
            expires_at: Some(clock.now() + Duration::from_secs(600)),
            cacheable: true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn caches_sharing_a_store_fetch_once_between_them() {
        let clock: Arc<ManualClock> = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
        let shared = Arc::new(FakeShared::default());
        let caches: Vec<Arc<LeaseCache>> = (0..3)
            .map(|_| {
                let c = LeaseCache::new(clock.clone(), RefreshPolicy::default());
                c.set_shared(Some(shared.clone()));
                Arc::new(c)
            })
            .collect();
        let fetches = Arc::new(AtomicU32::new(0));
        let key = CacheKey::new("db", "");
        let mut tasks = Vec::new();
        for i in 0..30 {
            let cache = caches[i % 3].clone();
            let (fetches, key, clock) = (fetches.clone(), key.clone(), clock.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(&key, || async {
                        let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Ok(minted(n, &*clock))
                    })
                    .await
                    .map(|l| l.credential.value().expose().to_vec())
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), b"v1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // Past the refresh point, one re-mint for all of them.
        clock.advance(Duration::from_secs(590));
        for cache in &caches {
            let l = cache
                .get(&key, || async {
                    let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok(minted(n, &*clock))
                })
                .await
                .unwrap();
            assert_eq!(l.credential.value().expose(), b"v2");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);

        // A lease revoked elsewhere is not served from any cache.
        shared.revoked.lock().unwrap().push("lease-2".into());
        let l = caches[0]
            .get(&key, || async {
                let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(minted(n, &*clock))
            })
            .await
            .unwrap();
        assert_eq!(l.credential.value().expose(), b"v3");
    }

    #[tokio::test]
    async fn a_fetch_dropped_mid_way_hands_its_lock_back() {
        let clock: Arc<ManualClock> = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
        let shared = Arc::new(FakeShared::default());
        let cache = LeaseCache::new(clock.clone(), RefreshPolicy::default());
        cache.set_shared(Some(shared.clone()));
        let key = CacheKey::new("db", "");
        // The caller goes away while its fetch holds the fleet's lock.
        let (started, entered) = tokio::sync::oneshot::channel::<()>();
        let mut started = Some(started);
        {
            let fetch = cache.get(&key, || async {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
                std::future::pending::<Result<Fetched>>().await
            });
            tokio::pin!(fetch);
            tokio::select! {
                _ = &mut fetch => unreachable!("the fetch never ends"),
                _ = entered => {}
            }
        }
        assert_eq!(shared.abandoned.load(Ordering::SeqCst), 1);
        assert!(shared.locks.lock().unwrap().is_empty());
        // The next caller takes the lock at once and fetches.
        let l = cache
            .get(&key, || async { Ok(minted(1, &*clock)) })
            .await
            .unwrap();
        assert_eq!(l.credential.value().expose(), b"v1");
        // A fetch that ends normally hands nothing back twice.
        assert_eq!(shared.abandoned.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_lapsed_lock_is_taken_over_and_a_stale_writer_loses() {
        let clock: Arc<ManualClock> = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
        let shared = Arc::new(FakeShared::default());
        let key = CacheKey::new("db", "");
        // A replica took the lock and died; the lock lapses while we wait.
        let ghost = shared.try_lock(&key).await.unwrap().unwrap();
        let lapse = {
            let shared = shared.clone();
            let key = key.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(60)).await;
                shared.locks.lock().unwrap().remove(&key);
            })
        };
        let cache = LeaseCache::new(clock.clone(), RefreshPolicy::default());
        cache.set_shared(Some(shared.clone()));
        let l = cache
            .get(&key, || async { Ok(minted(7, &*clock)) })
            .await
            .unwrap();
        lapse.await.unwrap();
        assert_eq!(l.credential.value().expose(), b"v7");
        // The ghost comes back with its old token: it does not overwrite the newer entry.
        let old = minted(1, &*clock);
        let wrote = shared
            .put(
                &key,
                ghost,
                &SharedEntry {
                    credential: old.credential,
                    expires_at: old.expires_at.unwrap(),
                    refresh_at: old.expires_at.unwrap(),
                },
            )
            .await
            .unwrap();
        assert!(!wrote);
        assert_eq!(
            shared
                .get(&key)
                .await
                .unwrap()
                .unwrap()
                .credential
                .value()
                .expose(),
            b"v7"
        );
    }
}
