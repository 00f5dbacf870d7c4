//! The shared store (`serve.store.kind: redis`): many replicas, one truth.
//!
//! What Redis (or Valkey) holds, under `serve.store.prefix` (default `broker:`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `blocked` | set | blocked agent ids |
//! | `leases` | hash | lease id → the secret-free [`LeaseRecord`] (JSON) |
//! | `rate:{agent}` | string | the agent's GCRA "theoretical arrival time" (µs), expiring |
//! | `inflight:{agent}` | sorted set | the agent's requests in flight (id → lapse time) |
//! | `cache:{sha256}` | hash | a cached credential: `tok` (fencing token) and `ct`, its XChaCha20-Poly1305 ciphertext; expires with the credential |
//! | `lock:{sha256}` | string | the fetch lock of that entry (a fencing token), expiring |
//! | `fence` | string | the fencing-token counter |
//! | `epoch` | string | written once; its absence tells a replica the store lost its data |
//! | `gen` | string | the block generation: raised by every block and unblock, never lowered |
//! | `events` | channel | `block`, `unblock` (with their generation), `revoke` and `lease` notifications |
//!
//! Cached credentials are encrypted with a key derived (HKDF-SHA256) from `serve.store.key_ref`'s
//! value; the Redis key name and the fencing token are the associated data, so an entry moved
//! to another key or token does not decrypt. Plaintext buffers are zeroized.
//!
//! Each replica mirrors the blocked set and the revoked leases in memory, refreshed by the
//! `events` subscription. The mirror is trusted only while that subscription is up (after a
//! full re-read on every (re)connect); otherwise every request that depends on the store is
//! refused (`store_unavailable`).
//!
//! Each replica keeps a durable local record: the blocks it knows, the `epoch` and the highest
//! block generation it saw, and the blocks pressed here that the store has not taken yet. A
//! store found without an `epoch`, with another `epoch` than the record's (it restarted empty,
//! and another replica wrote a new one first), or with a generation below the one the record
//! saw (a failover lost writes) has lost data: the blocks this replica knows are written back
//! (and announced) before its mirror is re-read. A block and an unblock are one script each
//! (change the set, raise the generation, announce), so every replica applies them in the
//! store's order.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use broker_core::lease::{CacheKey, SharedEntry, SharedLeases};
use broker_core::{Broker, Credential, Error, ErrorKind, Lease, Result, SecretValue};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::StreamExt;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::{Limits, SharedStore};
use crate::state::{LeaseRecord, State};

/// The message of every refusal caused by the store being out of reach.
pub(crate) const UNAVAILABLE: &str = crate::error::STORE_UNAVAILABLE;

/// How long a fetch lock lives: a replica that dies mid-fetch blocks the key this long. A
/// fetch that runs longer renews it every third of this, up to [`LOCK_HOLD`].
const LOCK_TTL: Duration = Duration::from_secs(30);
/// The longest a fetch keeps renewing its lock (a hung fetch does not hold the key forever).
const LOCK_HOLD: Duration = Duration::from_secs(300);
/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscription is pinged.
const HEARTBEAT: Duration = Duration::from_millis(250);

/// A change of the store's health, for the daemon to audit and alert on.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    /// Whether the store is usable now.
    pub(crate) up: bool,
    /// What happened (secret-free).
    pub(crate) detail: String,
}

/// The generation of the last full re-read, and per agent the generation and outcome
/// (blocked?) of the last change applied since.
type Applied = (u64, HashMap<String, (u64, bool)>);

/// What the daemon does when a lease is revoked anywhere in the fleet.
pub(crate) type RevokeHook = Arc<dyn Fn(&str) + Send + Sync>;

/// This replica's durable record (`serve.store.path`).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Record {
    /// The store's `epoch` when the record was written.
    #[serde(default)]
    epoch: Option<String>,
    /// The highest block generation seen.
    #[serde(default)]
    generation: u64,
    /// The blocks known.
    #[serde(default)]
    blocked: BTreeSet<String>,
    /// Blocks pressed here that the store has not taken yet.
    #[serde(default)]
    pending: BTreeSet<String>,
}

impl Record {
    /// A record from its bytes; an earlier version's plain list of blocks counts as blocks
    /// from an unknown epoch (re-asserted).
    fn parse(bytes: &[u8]) -> Option<Record> {
        // (A struct would also deserialize from a list: tell them apart first.)
        match serde_json::from_slice::<serde_json::Value>(bytes).ok()? {
            v @ serde_json::Value::Object(_) => serde_json::from_value(v).ok(),
            v @ serde_json::Value::Array(_) => serde_json::from_value::<BTreeSet<String>>(v)
                .ok()
                .map(|blocked| Record {
                    blocked,
                    ..Record::default()
                }),
            _ => None,
        }
    }
}

/// The shared [`State`] and [`SharedLeases`] on Redis.
pub struct RedisState {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    cipher: XChaCha20Poly1305,
    prefix: String,
    channel: String,
    limits: Limits,
    /// The mirror of `blocked` and of revoked lease ids; trusted only while `healthy`.
    blocked: Mutex<BTreeSet<String>>,
    revoked: Mutex<HashSet<String>>,
    healthy: AtomicBool,
    /// Blocks pressed here that the store has not taken yet (it was away).
    pending: Mutex<BTreeSet<String>>,
    /// The store's `epoch` as last seen (here or, after a restart, in the durable record).
    epoch: Mutex<Option<String>>,
    /// The highest block generation seen (likewise).
    generation: Mutex<u64>,
    /// Per agent, the generation and outcome (blocked?) of the last block or unblock applied
    /// to the mirror since the last full re-read, which was at generation `floor`.
    applied: Mutex<Applied>,
    /// Called with a lease id when any replica revokes it (evicts it from the local cache).
    on_revoke: Mutex<Option<RevokeHook>>,
    /// The renewal tasks of the fetch locks held here, by `(h, token)`.
    renewing: Mutex<HashMap<(String, u64), tokio::task::AbortHandle>>,
    /// Waiters for `cache:{h}` changes, by `h`.
    waiters: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// This replica's durable record of the blocks it knows.
    record: PathBuf,
    health: tokio::sync::mpsc::UnboundedSender<Health>,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.inner.prefix)
            .field("healthy", &self.inner.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn unavailable(detail: impl std::fmt::Display) -> Error {
    tracing::warn!("shared store: {detail}");
    Error::new(ErrorKind::Transient, UNAVAILABLE)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The 32-byte cipher key from the shared key's value (HKDF-SHA256).
fn cipher_from(key: &SecretValue) -> Result<XChaCha20Poly1305> {
    let material = key.expose();
    let trimmed = std::str::from_utf8(material)
        .map(|s| s.trim().as_bytes())
        .unwrap_or(material);
    if trimmed.len() < 32 {
        return Err(Error::invalid_config(
            "`serve.store.key_ref`'s value is shorter than 32 bytes",
        )
        .with_hint(
            "use an age identity (`age-keygen`) or 32 random bytes, e.g. `openssl rand -hex 32`",
        ));
    }
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"broker-serve store v1"), trimmed);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(b"lease cache: xchacha20poly1305", &mut *okm)
        .map_err(|_| Error::internal("key derivation failed"))?;
    XChaCha20Poly1305::new_from_slice(&*okm).map_err(|_| Error::internal("bad key length"))
}

impl RedisState {
    /// Sets what to do when any replica revokes a lease (evict it from this replica's cache).
    pub(crate) fn on_revoke(&self, hook: RevokeHook) {
        *lock(&self.inner.on_revoke) = Some(hook);
    }

    /// Resolves `settings`' references through `broker`, connects, and starts the
    /// subscription that keeps this replica's mirror of blocks and revocations. Health changes
    /// are sent to `health`.
    pub(crate) async fn connect(
        settings: &SharedStore,
        limits: Limits,
        record: PathBuf,
        broker: &Broker,
        health: tokio::sync::mpsc::UnboundedSender<Health>,
    ) -> Result<RedisState> {
        use broker_core::provider::ResolveRef;
        let url = broker
            .resolve_ref(&settings.url_ref, "serve.store.url_ref")
            .await?;
        let key = broker
            .resolve_ref(&settings.key_ref, "serve.store.key_ref")
            .await?;
        let cipher = cipher_from(&key)?;
        drop(key);
        let url_text = url
            .expose_str()
            .map_err(|_| Error::invalid_config("`serve.store.url_ref`'s value is not text"))?;
        let bad_url = |e: redis::RedisError| {
            // The URL may hold a password: name the setting, not the value.
            Error::invalid_config(format!(
                "`serve.store.url_ref`'s value is not a redis:// or rediss:// URL ({:?})",
                e.kind()
            ))
        };
        let client = match &settings.ca_file {
            Some(ca) => {
                let root_cert = std::fs::read(ca)
                    .map_err(|e| Error::io(format!("reading {}", ca.display()), &e))?;
                if rustls::crypto::CryptoProvider::get_default().is_none() {
                    let _ = rustls::crypto::ring::default_provider().install_default();
                }
                redis::Client::build_with_tls(
                    url_text,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
                .map_err(bad_url)?
            }
            None => redis::Client::open(url_text).map_err(bad_url)?,
        };
        drop(url);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| unavailable(format!("cannot set up the connection: {e}")))?;
        let prefix = settings.prefix.clone();
        let inner = Arc::new(Inner {
            client,
            conn,
            cipher,
            channel: format!("{prefix}events"),
            prefix,
            limits,
            blocked: Mutex::default(),
            revoked: Mutex::default(),
            healthy: AtomicBool::new(false),
            epoch: Mutex::default(),
            generation: Mutex::default(),
            applied: Mutex::default(),
            on_revoke: Mutex::default(),
            pending: Mutex::default(),
            renewing: Mutex::default(),
            waiters: Mutex::default(),
            record,
            health,
        });
        // What this replica recorded before: its blocks are re-asserted if the store lost its
        // data since (no epoch, another epoch, or a lower generation than recorded); blocks
        // pressed during an outage are written first.
        if let Ok(bytes) = broker_core::localfile::read(&inner.record, 16 << 20) {
            match Record::parse(&bytes) {
                Some(r) => {
                    // A record of an earlier version has no epoch: its blocks are re-asserted.
                    let epoch = r.epoch.unwrap_or_else(|| "(unknown)".into());
                    *lock(&inner.epoch) = Some(epoch);
                    *lock(&inner.generation) = r.generation;
                    lock(&inner.blocked).extend(r.blocked);
                    lock(&inner.blocked).extend(r.pending.iter().cloned());
                    lock(&inner.pending).extend(r.pending);
                }
                None => tracing::warn!(
                    "the local record of blocks {} does not parse; ignored",
                    inner.record.display()
                ),
            }
        } else if !settings.replica_id_configured {
            tracing::warn!(
                "no local record of blocks at {}: if this replica ran before, set \
                 `serve.store.replica_id` (or BROKER_REPLICA_ID) to a stable name and keep \
                 the record on a persistent volume, or blocks can be lost when Redis restarts \
                 empty",
                inner.record.display()
            );
        }
        let (first, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(subscribe(Arc::downgrade(&inner), Some(first)));
        // Start serving once the mirror is in sync, or after a short while (refusing what
        // depends on the store until it is).
        let _ = tokio::time::timeout(Duration::from_secs(5), ready).await;
        Ok(RedisState { inner })
    }
}

/// Keeps the subscription up: subscribe, re-read everything, follow the events; on any
/// failure mark the store unhealthy and try again (backoff up to 2 s).
async fn subscribe(
    inner: std::sync::Weak<Inner>,
    mut first: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut delay = Duration::from_millis(50);
    // Whether the current outage was reported (once per outage, including one at start).
    let mut reported = false;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let result = follow(&strong, &mut first).await;
        let was = strong.healthy.swap(false, Ordering::SeqCst);
        if was {
            reported = false;
            delay = Duration::from_millis(50);
        }
        if !reported {
            reported = true;
            let detail = match result {
                Ok(()) => "the subscription ended".to_string(),
                Err(e) => e,
            };
            let _ = strong.health.send(Health {
                up: false,
                detail: format!("{UNAVAILABLE}: {detail}"),
            });
        }
        // Wake the lease waiters: they re-check and fail closed.
        for n in lock(&strong.waiters).values() {
            n.notify_waiters();
        }
        drop(strong);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// One subscription's life; returns when it ends.
async fn follow(
    inner: &Arc<Inner>,
    first: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> std::result::Result<(), String> {
    let connect = tokio::time::timeout(COMMAND_TIMEOUT, inner.client.get_async_pubsub());
    let mut pubsub = connect
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))?;
    pubsub
        .subscribe(&inner.channel)
        .await
        .map_err(|e| format!("cannot subscribe: {e}"))?;
    inner.resync().await.map_err(|e| e.message().to_string())?;
    let _ = inner.health.send(Health {
        up: true,
        detail: "the shared store (serve.store) is reachable; blocks and revocations in sync"
            .into(),
    });
    inner.healthy.store(true, Ordering::SeqCst);
    if let Some(tx) = first.take() {
        let _ = tx.send(());
    }
    // A subscription on a dead connection delivers nothing and may not notice for a long
    // while: ping through it, and give up on it at the first ping unanswered in time.
    let (mut sink, mut stream) = pubsub.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Ok(());
                };
                if let Ok(payload) = msg.get_payload::<String>() {
                    inner.apply(&payload);
                }
            }
            _ = heartbeat.tick() => {
                match tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("the subscription failed a ping: {e}")),
                    Err(_) => return Err("the subscription did not answer a ping".into()),
                }
            }
        }
    }
}

impl Inner {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn conn(&self) -> redis::aio::ConnectionManager {
        self.conn.clone()
    }

    /// Runs a command with the timeout; a failure is `store_unavailable`.
    async fn run<T, F>(&self, what: &str, f: F) -> Result<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(COMMAND_TIMEOUT * 2, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(format!("{what}: {e}"))),
            Err(_) => Err(unavailable(format!("{what}: timed out"))),
        }
    }

    fn require_healthy(&self) -> Result<()> {
        if self.healthy.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Transient, UNAVAILABLE))
        }
    }

    /// Applies one notification to the mirror.
    fn apply(&self, payload: &str) {
        let Some((what, arg)) = payload.split_once('\n') else {
            return;
        };
        match what {
            "block" | "unblock" => {
                // `{generation}\n{agent}`; an earlier version's `{agent}` applies as it comes.
                let (generation, agent) = match arg.split_once('\n') {
                    Some((g, a)) => match g.parse::<u64>() {
                        Ok(g) => (Some(g), a),
                        Err(_) => (None, arg),
                    },
                    None => (None, arg),
                };
                self.apply_change(agent, what == "block", generation);
                self.save_record();
            }
            "revoke" => {
                tracing::warn!(
                    lease = arg,
                    "a lease revoked in the fleet leaves this cache"
                );
                lock(&self.revoked).insert(arg.to_string());
                let hook = lock(&self.on_revoke).clone();
                if let Some(hook) = hook {
                    hook(arg);
                }
            }
            "lease" => {
                if let Some(n) = lock(&self.waiters).get(arg) {
                    n.notify_waiters();
                }
            }
            _ => {}
        }
    }

    /// Applies a block (`blocked`) or unblock of `agent` at `generation` (none: an earlier
    /// version's event, applied as it comes) unless a later change of that agent was applied.
    /// A block pressed here and not yet in the store is not undone by an earlier unblock.
    fn apply_change(&self, agent: &str, blocked: bool, generation: Option<u64>) {
        let mut applied = lock(&self.applied);
        if let Some(g) = generation {
            {
                let mut seen = lock(&self.generation);
                *seen = (*seen).max(g);
            }
            if g <= applied.0 || applied.1.get(agent).is_some_and(|(at, _)| *at >= g) {
                return;
            }
            applied.1.insert(agent.to_string(), (g, blocked));
        }
        if blocked {
            lock(&self.blocked).insert(agent.to_string());
        } else if !lock(&self.pending).contains(agent) {
            lock(&self.blocked).remove(agent);
        }
    }

    /// Runs the block or unblock script for `agent`: `(changed, generation)`.
    async fn change(&self, agent: &str, blocked: bool) -> Result<(bool, u64)> {
        let mut conn = self.conn();
        let (changed, generation): (i64, u64) = self
            .run(
                if blocked { "blocking" } else { "unblocking" },
                redis::Script::new(CHANGE)
                    .key(self.key("blocked"))
                    .key(self.key("gen"))
                    .arg(if blocked { "block" } else { "unblock" })
                    .arg(agent)
                    .arg(&self.channel)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok((changed == 1, generation))
    }

    /// After this replica's own block (`blocked`) or unblock of `agent` landed at `generation`:
    /// the mirror follows unless a later change of that agent was applied already.
    fn landed(&self, agent: &str, blocked: bool, generation: u64) {
        lock(&self.pending).remove(agent);
        let mut applied = lock(&self.applied);
        {
            let mut seen = lock(&self.generation);
            *seen = (*seen).max(generation);
        }
        match applied.1.get(agent) {
            Some(&(at, state)) if at > generation => {
                // A later change was applied (or, for an agent pending here, recorded only).
                if state {
                    lock(&self.blocked).insert(agent.to_string());
                } else {
                    lock(&self.blocked).remove(agent);
                }
            }
            _ => {
                applied.1.insert(agent.to_string(), (generation, blocked));
                if blocked {
                    lock(&self.blocked).insert(agent.to_string());
                } else {
                    lock(&self.blocked).remove(agent);
                }
            }
        }
    }

    /// Re-reads the blocked set and revoked leases; first re-asserts the blocks this replica
    /// knows when the store lost data (no `epoch`, another `epoch` than this replica saw, or a
    /// lower block generation), and writes the blocks pressed here during an outage.
    async fn resync(&self) -> Result<()> {
        let mut conn = self.conn();
        let found: Option<String> = self
            .run("reading the epoch", conn.get(self.key("epoch")))
            .await?;
        let found_gen: Option<u64> = self
            .run("reading the block generation", conn.get(self.key("gen")))
            .await?;
        // The store lost data when it has no epoch, another one than this replica saw (in this
        // process or its durable record: another replica found it empty first), or a lower
        // block generation (a failover lost writes): write back and announce the blocks this
        // replica knows, and raise the generation to at least the one it saw. An unblock
        // lost with the data comes back as a block: failing closed.
        let last = lock(&self.epoch).clone();
        let seen = *lock(&self.generation);
        let lost =
            found.is_none() || (last.is_some() && last != found) || found_gen.unwrap_or(0) < seen;
        if lost {
            let known: Vec<String> = lock(&self.blocked).iter().cloned().collect();
            tracing::warn!(
                blocks = known.len(),
                "the shared store is new or lost data: re-asserting the blocks this replica knows"
            );
            let reassert = redis::Script::new(REASSERT);
            let mut script = reassert.prepare_invoke();
            script
                .key(self.key("blocked"))
                .key(self.key("gen"))
                .arg(seen)
                .arg(&self.channel);
            for agent in &known {
                script.arg(agent);
            }
            let _: u64 = self
                .run("re-asserting blocks", script.invoke_async(&mut conn))
                .await?;
        }
        let epoch = match found {
            Some(e) => e,
            None => {
                let id = broker_core::provider::random_id();
                let _: bool = self
                    .run("writing the epoch", conn.set_nx(self.key("epoch"), &id))
                    .await?;
                let now: Option<String> = self
                    .run("reading the epoch", conn.get(self.key("epoch")))
                    .await?;
                now.unwrap_or(id)
            }
        };
        *lock(&self.epoch) = Some(epoch);
        self.save_record();
        // Blocks pressed here while the store was away go in first.
        let pending: Vec<String> = lock(&self.pending).iter().cloned().collect();
        for agent in &pending {
            let (_, generation) = self.change(agent, true).await?;
            self.landed(agent, true, generation);
        }
        // The blocked set and the generation it is at, together.
        let (generation, blocked): (u64, BTreeSet<String>) = self
            .run(
                "reading blocks",
                redis::Script::new(SNAPSHOT)
                    .key(self.key("blocked"))
                    .key(self.key("gen"))
                    .invoke_async(&mut conn),
            )
            .await?;
        let leases: HashMap<String, String> = self
            .run("reading leases", conn.hgetall(self.key("leases")))
            .await?;
        let revoked: Vec<String> = leases
            .into_iter()
            .filter(|(_, json)| serde_json::from_str::<LeaseRecord>(json).is_ok_and(|l| l.revoked))
            .map(|(id, _)| id)
            .collect();
        {
            // Events up to `generation` are in the snapshot; a block still pending here stays.
            let mut applied = lock(&self.applied);
            *applied = (generation, HashMap::new());
            let mut seen = lock(&self.generation);
            *seen = (*seen).max(generation);
            let mut mirror = lock(&self.blocked);
            *mirror = blocked;
            mirror.extend(lock(&self.pending).iter().cloned());
        }
        // Revocations are kept: a store that lost `leases` must not serve a revoked lease again.
        lock(&self.revoked).extend(revoked);
        self.save_record();
        Ok(())
    }

    /// Writes this replica's durable record (best effort: the store is the truth).
    fn save_record(&self) {
        let record = Record {
            epoch: lock(&self.epoch).clone(),
            generation: *lock(&self.generation),
            blocked: lock(&self.blocked).clone(),
            pending: lock(&self.pending).clone(),
        };
        let write = || -> Result<()> {
            if let Some(dir) = self.record.parent().filter(|d| !d.as_os_str().is_empty()) {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
            }
            let bytes = serde_json::to_vec(&record)
                .map_err(|e| Error::internal(format!("encoding blocks: {e}")))?;
            broker_core::localfile::write_atomically(&self.record, &bytes)
        };
        if let Err(e) = write() {
            tracing::warn!("cannot write the local record of blocks: {e}");
        }
    }

    async fn publish(&self, what: &str, arg: &str) -> Result<()> {
        let mut conn = self.conn();
        let _: i64 = self
            .run(
                "publishing",
                conn.publish(&self.channel, format!("{what}\n{arg}")),
            )
            .await?;
        Ok(())
    }

    fn stop_renewing(&self, h: &str, token: u64) {
        if let Some(task) = lock(&self.renewing).remove(&(h.to_string(), token)) {
            task.abort();
        }
    }

    fn hash(key: &CacheKey) -> String {
        let mut h = Sha256::new();
        for part in [
            key.credential.as_str(),
            key.scope.as_str(),
            key.agent.as_deref().unwrap_or(""),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.update(key.ttl.map_or(u64::MAX, |t| t.as_secs()).to_be_bytes());
        hex::encode(h.finalize())
    }

    fn aad(name: &str, token: u64) -> Vec<u8> {
        let mut aad = name.as_bytes().to_vec();
        aad.extend_from_slice(b"\n");
        aad.extend_from_slice(token.to_string().as_bytes());
        aad
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// A credential as bytes (length-prefixed fields), in a buffer allocated once at its final
/// size so no unwiped copy is left behind.
fn encode(entry: &SharedEntry) -> Zeroizing<Vec<u8>> {
    let c = &entry.credential;
    let field = |b: &[u8]| 4 + b.len();
    let mut size = 1 + 16 + field(c.value().expose()) + 4 + 1 + 4 + 4;
    for (k, v) in c.companions() {
        size += field(k.as_bytes()) + field(v.expose());
    }
    if let Some(l) = c.lease() {
        size += field(l.id.as_bytes()) + 8 + 1;
    }
    size += c
        .path_vars()
        .iter()
        .map(|p| field(p.as_bytes()))
        .sum::<usize>();
    size += c
        .plain_env()
        .iter()
        .map(|(k, v)| field(k.as_bytes()) + field(v.as_bytes()))
        .sum::<usize>();
    size += 1;
    let mut out = Zeroizing::new(Vec::with_capacity(size));
    let put = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    out.push(1);
    out.extend_from_slice(&millis(entry.expires_at).to_be_bytes());
    out.extend_from_slice(&millis(entry.refresh_at).to_be_bytes());
    put(&mut out, c.value().expose());
    out.extend_from_slice(&(c.companions().len() as u32).to_be_bytes());
    for (k, v) in c.companions() {
        put(&mut out, k.as_bytes());
        put(&mut out, v.expose());
    }
    match c.lease() {
        Some(l) => {
            out.push(1);
            put(&mut out, l.id.as_bytes());
            out.extend_from_slice(&l.expires_at.map_or(0, millis).to_be_bytes());
            out.push(u8::from(l.renewable));
        }
        None => out.push(0),
    }
    out.push(u8::from(c.delivers_primary_env()));
    out.extend_from_slice(&(c.path_vars().len() as u32).to_be_bytes());
    for p in c.path_vars() {
        put(&mut out, p.as_bytes());
    }
    out.extend_from_slice(&(c.plain_env().len() as u32).to_be_bytes());
    for (k, v) in c.plain_env() {
        put(&mut out, k.as_bytes());
        put(&mut out, v.as_bytes());
    }
    debug_assert!(out.len() <= size);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_string)
    }
}

fn decode(plain: &[u8]) -> Option<SharedEntry> {
    let mut r = Reader(plain);
    if r.u8()? != 1 {
        return None;
    }
    let expires_at = from_millis(r.u64()?);
    let refresh_at = from_millis(r.u64()?);
    let mut c = Credential::new(SecretValue::copy_from(r.bytes()?));
    for _ in 0..r.u32()? {
        let k = r.text()?;
        c = c.with_companion(k, SecretValue::copy_from(r.bytes()?));
    }
    if r.u8()? == 1 {
        let id = r.text()?;
        let exp = r.u64()?;
        c = c.with_lease(Lease {
            id,
            expires_at: (exp != 0).then(|| from_millis(exp)),
            renewable: r.u8()? == 1,
        });
    }
    if r.u8()? == 0 {
        c = c.companions_only();
    }
    for _ in 0..r.u32()? {
        c = c.with_path_var(r.text()?);
    }
    for _ in 0..r.u32()? {
        let k = r.text()?;
        c = c.with_plain_env(k, r.text()?);
    }
    Some(SharedEntry {
        credential: c,
        expires_at,
        refresh_at,
    })
}

const RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + interval
if new - now > burst * interval then
  return new - now - burst * interval
end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
return 0
";

/// [`RATE`], then (admitted, `ARGV[3]` > 0) [`TAKE_SLOT`]: `{wait µs, slot taken}`.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local new = tat + interval
  if new - now > burst * interval then
    return {new - now - burst * interval, 0}
  end
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
end
local cap = tonumber(ARGV[3])
if cap == 0 then return {0, 0} end
local ms = math.floor(now / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms)
if redis.call('ZCARD', KEYS[2]) >= cap then return {0, 0} end
redis.call('ZADD', KEYS[2], ms + tonumber(ARGV[4]), ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {0, 1}
";

const TAKE_SLOT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// How long an in-flight slot outlives a replica that died holding it.
const SLOT_TTL: Duration = Duration::from_secs(300);

const TRY_LOCK: &str = r"
local token = redis.call('INCR', KEYS[2])
if redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[1]) then return token end
return 0
";

const PUT: &str = r"
local cur = redis.call('HGET', KEYS[1], 'tok')
local ok = 1
if cur and tonumber(cur) > tonumber(ARGV[1]) then
  ok = 0
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'tok', ARGV[1], 'ct', ARGV[2])
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return ok
";

/// Block (`ARGV[1]` = `block`) or unblock `ARGV[2]`, raise the generation, announce
/// `{what}\n{generation}\n{agent}` on `ARGV[3]`: `{changed, generation}`.
const CHANGE: &str = r"
local changed
if ARGV[1] == 'block' then
  changed = redis.call('SADD', KEYS[1], ARGV[2])
else
  changed = redis.call('SREM', KEYS[1], ARGV[2])
end
local g = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\n' .. g .. '\n' .. ARGV[2])
return {changed, g}
";

/// Re-assert blocks `ARGV[3..]` after a data loss: the generation becomes one above both the
/// store's and `ARGV[1]` (the highest this replica saw); each block is announced on `ARGV[2]`.
const REASSERT: &str = r"
local g = tonumber(redis.call('GET', KEYS[2]) or '0')
local seen = tonumber(ARGV[1])
if seen > g then g = seen end
g = g + 1
redis.call('SET', KEYS[2], g)
for i = 3, #ARGV do
  redis.call('SADD', KEYS[1], ARGV[i])
  redis.call('PUBLISH', ARGV[2], 'block\n' .. g .. '\n' .. ARGV[i])
end
return g
";

/// `{generation, blocked agents}`, read together.
const SNAPSHOT: &str = r"
return {tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('SMEMBERS', KEYS[1])}
";

/// Extends the lock `KEYS[1]` by `ARGV[2]` ms if it is still held with token `ARGV[1]`.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
";

#[async_trait]
impl SharedLeases for Inner {
    async fn get(&self, key: &CacheKey) -> Result<Option<SharedEntry>> {
        self.require_healthy()?;
        let name = self.key(&format!("cache:{}", Self::hash(key)));
        let mut conn = self.conn();
        let (tok, ct): (Option<u64>, Option<Vec<u8>>) = self
            .run(
                "reading a cached credential",
                redis::cmd("HMGET")
                    .arg(&name)
                    .arg("tok")
                    .arg("ct")
                    .query_async(&mut conn),
            )
            .await?;
        let (Some(tok), Some(ct)) = (tok, ct) else {
            return Ok(None);
        };
        if ct.len() < 24 {
            return Ok(None);
        }
        let (nonce, body) = ct.split_at(24);
        let aad = Self::aad(&name, tok);
        let Ok(plain) = self.cipher.decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: &aad,
            },
        ) else {
            // Another key, or an entry moved: not ours to serve.
            tracing::warn!("a shared cache entry does not decrypt with this replica's key");
            return Ok(None);
        };
        let plain = Zeroizing::new(plain);
        Ok(decode(&plain).filter(|e| e.expires_at > SystemTime::now()))
    }

    async fn try_lock(&self, key: &CacheKey) -> Result<Option<u64>> {
        self.require_healthy()?;
        let h = Self::hash(key);
        let mut conn = self.conn();
        let token: u64 = self
            .run(
                "taking a fetch lock",
                redis::Script::new(TRY_LOCK)
                    .key(self.key(&format!("lock:{h}")))
                    .key(self.key("fence"))
                    .arg(LOCK_TTL.as_millis() as u64)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok((token != 0).then_some(token))
    }

    async fn put(&self, key: &CacheKey, token: u64, entry: &SharedEntry) -> Result<bool> {
        let h = Self::hash(key);
        self.stop_renewing(&h, token);
        let name = self.key(&format!("cache:{h}"));
        let plain = encode(entry);
        let nonce: [u8; 24] = rand::random();
        let aad = Self::aad(&name, token);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::internal("encryption failed"))?;
        drop(plain);
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        let mut conn = self.conn();
        let ok: i64 = self
            .run(
                "storing a cached credential",
                redis::Script::new(PUT)
                    .key(&name)
                    .key(self.key(&format!("lock:{h}")))
                    .arg(token)
                    .arg(blob)
                    .arg(millis(entry.expires_at))
                    .arg(&self.channel)
                    .arg(format!("lease\n{h}"))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(ok == 1)
    }

    async fn unlock(&self, key: &CacheKey, token: u64) -> Result<()> {
        let h = Self::hash(key);
        self.stop_renewing(&h, token);
        let mut conn = self.conn();
        let _: i64 = self
            .run(
                "releasing a fetch lock",
                redis::Script::new(UNLOCK)
                    .key(self.key(&format!("lock:{h}")))
                    .arg(token)
                    .arg(&self.channel)
                    .arg(format!("lease\n{h}"))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    async fn wait(&self, key: &CacheKey, round: u32) {
        let h = Self::hash(key);
        let notify = lock(&self.waiters).entry(h.clone()).or_default().clone();
        let bound = Duration::from_millis(25u64 << round.min(5)).min(Duration::from_millis(500));
        let _ = tokio::time::timeout(bound, notify.notified()).await;
        let mut waiters = lock(&self.waiters);
        if waiters.get(&h).is_some_and(|n| Arc::strong_count(n) == 1) {
            waiters.remove(&h);
        }
    }

    fn max_wait(&self) -> Duration {
        LOCK_TTL + Duration::from_secs(5)
    }

    fn revoked(&self, lease_id: &str) -> bool {
        lock(&self.revoked).contains(lease_id)
    }
}

/// The [`SharedLeases`] face of a [`RedisState`].
struct Leases(Arc<Inner>);

#[async_trait]
impl SharedLeases for Leases {
    async fn get(&self, key: &CacheKey) -> Result<Option<SharedEntry>> {
        self.0.get(key).await
    }
    async fn try_lock(&self, key: &CacheKey) -> Result<Option<u64>> {
        let token = self.0.try_lock(key).await?;
        if let Some(token) = token {
            // Renewed while the fetch runs (a slow mint must not let another replica mint).
            let h = Inner::hash(key);
            let inner = Arc::downgrade(&self.0);
            let name = self.0.key(&format!("lock:{h}"));
            let task = tokio::spawn(async move {
                let until = tokio::time::Instant::now() + LOCK_HOLD;
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep(LOCK_TTL / 3).await;
                    let Some(inner) = inner.upgrade() else {
                        return;
                    };
                    let mut conn = inner.conn();
                    let renewed: Result<i64> = inner
                        .run(
                            "renewing a fetch lock",
                            redis::Script::new(RENEW)
                                .key(&name)
                                .arg(token)
                                .arg(LOCK_TTL.as_millis() as u64)
                                .invoke_async(&mut conn),
                        )
                        .await;
                    if !matches!(renewed, Ok(1)) {
                        return;
                    }
                }
            });
            lock(&self.0.renewing).insert((h, token), task.abort_handle());
        }
        Ok(token)
    }
    async fn put(&self, key: &CacheKey, token: u64, entry: &SharedEntry) -> Result<bool> {
        self.0.put(key, token, entry).await
    }
    async fn unlock(&self, key: &CacheKey, token: u64) -> Result<()> {
        self.0.unlock(key, token).await
    }
    async fn wait(&self, key: &CacheKey, round: u32) {
        self.0.wait(key, round).await;
    }
    fn max_wait(&self) -> Duration {
        self.0.max_wait()
    }
    fn revoked(&self, lease_id: &str) -> bool {
        self.0.revoked(lease_id)
    }
    fn abandon(&self, key: &CacheKey, token: u64) {
        let h = Inner::hash(key);
        self.0.stop_renewing(&h, token);
        let inner = self.0.clone();
        let key = key.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = inner.unlock(&key, token).await {
                    tracing::warn!("cannot release an abandoned fetch lock: {e}");
                }
            });
        }
    }
}

#[async_trait]
impl State for RedisState {
    async fn block(&self, agent: &str) -> Result<bool> {
        // The kill switch holds here at once, whatever the store says.
        // Until the store has it, it is pending: written first when the store is back.
        // The pending block is in the durable record before the store is asked, and leaves
        // it only once the store has it (set, generation and announcement in one script).
        let new_here = lock(&self.inner.blocked).insert(agent.to_string());
        lock(&self.inner.pending).insert(agent.to_string());
        self.inner.save_record();
        let (added, generation) = self.inner.change(agent, true).await?;
        self.inner.landed(agent, true, generation);
        self.inner.save_record();
        Ok(added || new_here)
    }
    async fn unblock(&self, agent: &str) -> Result<bool> {
        self.inner.require_healthy()?;
        let (removed, generation) = self.inner.change(agent, false).await?;
        self.inner.landed(agent, false, generation);
        self.inner.save_record();
        Ok(removed)
    }
    async fn is_blocked(&self, agent: &str) -> Result<bool> {
        // A block pressed here counts even while the store is away.
        if lock(&self.inner.blocked).contains(agent) {
            return Ok(true);
        }
        self.inner.require_healthy()?;
        Ok(false)
    }
    async fn record_lease(&self, lease: LeaseRecord) -> Result<()> {
        let json = serde_json::to_string(&lease)
            .map_err(|e| Error::internal(format!("encoding a lease record: {e}")))?;
        let mut conn = self.inner.conn();
        let _: bool = self
            .inner
            .run(
                "recording a lease",
                conn.hset_nx(self.inner.key("leases"), &lease.lease_id, json),
            )
            .await?;
        Ok(())
    }
    async fn lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>> {
        let mut conn = self.inner.conn();
        let json: Option<String> = self
            .inner
            .run(
                "reading a lease",
                conn.hget(self.inner.key("leases"), lease_id),
            )
            .await?;
        Ok(json.and_then(|j| parse_lease(&j)).filter(live))
    }
    async fn leases(&self, agent: Option<&str>) -> Result<Vec<LeaseRecord>> {
        let mut conn = self.inner.conn();
        let all: HashMap<String, String> = self
            .inner
            .run("reading leases", conn.hgetall(self.inner.key("leases")))
            .await?;
        let mut out: Vec<LeaseRecord> = all
            .values()
            .filter_map(|j| parse_lease(j))
            .filter(live)
            .filter(|l| agent.is_none_or(|a| l.agent == a))
            .collect();
        out.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
        Ok(out)
    }
    async fn mark_revoked(&self, lease_id: &str) -> Result<bool> {
        let Some(mut lease) = self.lease(lease_id).await? else {
            return Ok(false);
        };
        lock(&self.inner.revoked).insert(lease_id.to_string());
        if lease.revoked {
            return Ok(false);
        }
        lease.revoked = true;
        let json = serde_json::to_string(&lease)
            .map_err(|e| Error::internal(format!("encoding a lease record: {e}")))?;
        let mut conn = self.inner.conn();
        let _: i64 = self
            .inner
            .run(
                "marking a lease revoked",
                conn.hset(self.inner.key("leases"), lease_id, json),
            )
            .await?;
        self.inner.publish("revoke", lease_id).await?;
        Ok(true)
    }
    async fn check_rate(&self, agent: &str) -> Result<Option<Duration>> {
        let rate = self.inner.limits.rate;
        if rate.requests == 0 {
            return Ok(None);
        }
        let interval = (rate.per.as_micros() / u128::from(rate.requests)).max(1) as u64;
        let burst = self.inner.limits.burst.max(1);
        let mut conn = self.inner.conn();
        let wait: u64 = self
            .inner
            .run(
                "counting a request",
                redis::Script::new(RATE)
                    .key(self.inner.key(&format!("rate:{agent}")))
                    .arg(interval)
                    .arg(burst)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok((wait > 0).then(|| Duration::from_micros(wait)))
    }
    async fn sweep(&self) -> Result<()> {
        let mut conn = self.inner.conn();
        let all: HashMap<String, String> = self
            .inner
            .run("reading leases", conn.hgetall(self.inner.key("leases")))
            .await?;
        let dead: Vec<&String> = all
            .iter()
            .filter(|(_, j)| parse_lease(j).is_none_or(|l| !live(&l)))
            .map(|(id, _)| id)
            .collect();
        if !dead.is_empty() {
            let _: i64 = self
                .inner
                .run(
                    "forgetting expired leases",
                    conn.hdel(self.inner.key("leases"), &dead),
                )
                .await?;
            let mut revoked = lock(&self.inner.revoked);
            for id in dead {
                revoked.remove(id);
            }
        }
        Ok(())
    }
    async fn take_slot(&self, agent: &str, cap: u32) -> Result<Option<Option<String>>> {
        let id = broker_core::provider::random_id();
        let mut conn = self.inner.conn();
        let taken: i64 = self
            .inner
            .run(
                "taking an in-flight slot",
                redis::Script::new(TAKE_SLOT)
                    .key(self.inner.key(&format!("inflight:{agent}")))
                    .arg(cap)
                    .arg(SLOT_TTL.as_millis() as u64)
                    .arg(&id)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(Some((taken == 1).then_some(id)))
    }
    async fn admit(
        &self,
        agent: &str,
        cap: u32,
    ) -> Result<(Option<Duration>, Option<Option<String>>)> {
        let rate = self.inner.limits.rate;
        let interval = if rate.requests == 0 {
            0
        } else {
            (rate.per.as_micros() / u128::from(rate.requests)).max(1) as u64
        };
        if interval == 0 && cap == 0 {
            return Ok((None, None));
        }
        let id = broker_core::provider::random_id();
        let mut conn = self.inner.conn();
        let (wait, taken): (u64, i64) = self
            .inner
            .run(
                "admitting a request",
                redis::Script::new(ADMIT)
                    .key(self.inner.key(&format!("rate:{agent}")))
                    .key(self.inner.key(&format!("inflight:{agent}")))
                    .arg(interval)
                    .arg(self.inner.limits.burst.max(1))
                    .arg(cap)
                    .arg(SLOT_TTL.as_millis() as u64)
                    .arg(&id)
                    .invoke_async(&mut conn),
            )
            .await?;
        if wait > 0 {
            return Ok((Some(Duration::from_micros(wait)), None));
        }
        if cap == 0 {
            return Ok((None, None));
        }
        Ok((None, Some((taken == 1).then_some(id))))
    }
    async fn give_slot(&self, agent: &str, id: &str) {
        let mut conn = self.inner.conn();
        let given: Result<i64> = self
            .inner
            .run(
                "giving back an in-flight slot",
                conn.zrem(self.inner.key(&format!("inflight:{agent}")), id),
            )
            .await;
        if given.is_err() {
            tracing::warn!(
                "an in-flight slot lapses by itself in {}s",
                SLOT_TTL.as_secs()
            );
        }
    }
    fn shared_leases(&self) -> Option<Arc<dyn SharedLeases>> {
        Some(Arc::new(Leases(self.inner.clone())))
    }
}

fn parse_lease(json: &str) -> Option<LeaseRecord> {
    let mut l: LeaseRecord = serde_json::from_str(json).ok()?;
    l.expires = l.expires_at.as_deref().and_then(crate::state::parse_time);
    Some(l)
}

fn live(l: &LeaseRecord) -> bool {
    l.expires.is_none_or(|e| e > SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-store-7c1e55";

    /// An `Inner` that never connects (the connection is lazy), recording to `record`.
    fn offline(record: PathBuf) -> Inner {
        let client = redis::Client::open("redis://127.0.0.1:1").expect("url");
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(
            client.clone(),
            redis::aio::ConnectionManagerConfig::new(),
        )
        .expect("lazy");
        let (health, _) = tokio::sync::mpsc::unbounded_channel();
        Inner {
            client,
            conn,
            cipher: cipher_from(&SecretValue::from("k".repeat(40))).expect("key"),
            prefix: "broker:".into(),
            channel: "broker:events".into(),
            limits: Limits::default(),
            blocked: Mutex::default(),
            revoked: Mutex::default(),
            healthy: AtomicBool::new(true),
            pending: Mutex::default(),
            epoch: Mutex::default(),
            generation: Mutex::default(),
            applied: Mutex::default(),
            on_revoke: Mutex::default(),
            renewing: Mutex::default(),
            waiters: Mutex::default(),
            record,
            health,
        }
    }

    fn is_blocked(inner: &Inner, agent: &str) -> bool {
        lock(&inner.blocked).contains(agent)
    }

    #[tokio::test]
    async fn the_mirror_follows_the_stores_order_of_blocks_and_unblocks() {
        let dir = tempfile::tempdir().expect("dir");
        let inner = offline(dir.path().join("record.json"));
        // Admin B's unblock (generation 1) then admin A's block (2), as the store ordered them;
        // B's own unblock returns last: the agent stays blocked.
        inner.apply("unblock\n1\nagent-a");
        inner.apply("block\n2\nagent-a");
        inner.landed("agent-a", false, 1);
        assert!(is_blocked(&inner, "agent-a"));
        // An event older than the last full re-read is in it already.
        *lock(&inner.applied) = (10, HashMap::new());
        inner.apply("unblock\n9\nagent-a");
        assert!(is_blocked(&inner, "agent-a"));
        inner.apply("unblock\n11\nagent-a");
        assert!(!is_blocked(&inner, "agent-a"));
        // A block pressed here and not yet in the store is not undone by an earlier unblock...
        lock(&inner.blocked).insert("agent-b".into());
        lock(&inner.pending).insert("agent-b".into());
        inner.apply("unblock\n12\nagent-b");
        assert!(is_blocked(&inner, "agent-b"));
        inner.landed("agent-b", true, 13);
        assert!(is_blocked(&inner, "agent-b"));
        // ...but a later one (the store took the block at 14, then an unblock at 15) is.
        lock(&inner.pending).insert("agent-b".into());
        inner.apply("unblock\n15\nagent-b");
        inner.landed("agent-b", true, 14);
        assert!(!is_blocked(&inner, "agent-b"));
        assert_eq!(*lock(&inner.generation), 15);
    }

    #[tokio::test]
    async fn the_record_keeps_epoch_generation_and_pending_blocks() {
        let dir = tempfile::tempdir().expect("dir");
        let inner = offline(dir.path().join("d/record.json"));
        *lock(&inner.epoch) = Some("e1".into());
        *lock(&inner.generation) = 7;
        lock(&inner.blocked).insert("agent-a".into());
        lock(&inner.pending).insert("agent-z".into());
        inner.save_record();
        let bytes = std::fs::read(dir.path().join("d/record.json")).expect("written");
        let r = Record::parse(&bytes).expect("parses");
        assert_eq!(r.epoch.as_deref(), Some("e1"));
        assert_eq!(r.generation, 7);
        assert_eq!(r.blocked, BTreeSet::from(["agent-a".to_string()]));
        assert_eq!(r.pending, BTreeSet::from(["agent-z".to_string()]));
        // An earlier version's record: blocks of an unknown epoch.
        let old = Record::parse(br#"["agent-a"]"#).expect("parses");
        assert_eq!(old.epoch, None);
        assert!(old.blocked.contains("agent-a"));
    }

    #[tokio::test]
    async fn a_revocation_anywhere_reaches_the_hook() {
        let dir = tempfile::tempdir().expect("dir");
        let inner = offline(dir.path().join("record.json"));
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let to = seen.clone();
        *lock(&inner.on_revoke) = Some(Arc::new(move |id: &str| lock(&to).push(id.into())));
        inner.apply("revoke\ntoken-accessor:abc");
        assert!(inner.revoked("token-accessor:abc"));
        assert_eq!(*lock(&seen), ["token-accessor:abc".to_string()]);
    }

    #[test]
    fn entries_round_trip_and_seal() {
        let c = Credential::new(SecretValue::from(CANARY.to_string()))
            .with_companion("AWS_SECRET", SecretValue::from(format!("{CANARY}-2")))
            .with_lease(Lease {
                id: "token-accessor:abc".into(),
                expires_at: Some(from_millis(1_900_000_000_000)),
                renewable: false,
            })
            .with_path_var("P")
            .with_plain_env("AWS_REGION", "eu-west-1")
            .companions_only();
        let entry = SharedEntry {
            credential: c,
            expires_at: from_millis(1_900_000_000_000),
            refresh_at: from_millis(1_899_000_000_000),
        };
        let plain = encode(&entry);
        let back = decode(&plain).expect("decodes");
        assert_eq!(back.credential.value().expose(), CANARY.as_bytes());
        assert_eq!(back.credential.companions()[0].0, "AWS_SECRET");
        assert_eq!(
            back.credential.lease().map(|l| l.id.as_str()),
            Some("token-accessor:abc")
        );
        assert!(!back.credential.delivers_primary_env());
        assert_eq!(back.credential.path_vars(), ["P".to_string()]);
        assert_eq!(back.refresh_at, entry.refresh_at);
        assert!(decode(&plain[..plain.len() - 1]).is_none());

        let cipher = cipher_from(&SecretValue::from("k".repeat(40))).expect("key");
        let nonce = [7u8; 24];
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: b"broker:cache:a\n1",
                },
            )
            .expect("seals");
        assert!(!sealed.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()));
        // Another key name (or token) does not open it.
        assert!(
            cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &sealed,
                        aad: b"broker:cache:b\n1"
                    }
                )
                .is_err()
        );
        assert!(cipher_from(&SecretValue::from("short".to_string())).is_err());
    }
}
