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
//! | `events` | channel | `block`, `unblock`, `revoke` and `lease` notifications |
//!
//! Cached credentials are encrypted with a key derived (HKDF-SHA256) from `serve.store.key_ref`'s
//! value; the Redis key name and the fencing token are the associated data, so an entry moved
//! to another key or token does not decrypt. Plaintext buffers are zeroized.
//!
//! Each replica mirrors the blocked set and the revoked leases in memory, refreshed by the
//! `events` subscription. The mirror is trusted only while that subscription is up (after a
//! full re-read on every (re)connect); otherwise every request that depends on the store is
//! refused (`store_unavailable`). A store found without its `epoch` (restarted empty) gets the
//! blocks this replica knew (its mirror and its durable local record) written back first.

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

/// How long a fetch lock lives: a replica that dies mid-fetch blocks the key this long.
const LOCK_TTL: Duration = Duration::from_secs(30);
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
    /// The store's `epoch` as last seen.
    epoch: Mutex<Option<String>>,
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
            pending: Mutex::default(),
            waiters: Mutex::default(),
            record,
            health,
        });
        // The blocks this replica recorded before: re-asserted if the store lost its data.
        if let Ok(bytes) = broker_core::localfile::read(&inner.record, 16 << 20)
            && let Ok(list) = serde_json::from_slice::<Vec<String>>(&bytes)
        {
            lock(&inner.blocked).extend(list);
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
            "block" => {
                lock(&self.blocked).insert(arg.to_string());
                self.save_record();
            }
            "unblock" => {
                lock(&self.blocked).remove(arg);
                self.save_record();
            }
            "revoke" => {
                lock(&self.revoked).insert(arg.to_string());
            }
            "lease" => {
                if let Some(n) = lock(&self.waiters).get(arg) {
                    n.notify_waiters();
                }
            }
            _ => {}
        }
    }

    /// Re-reads the blocked set and revoked leases; re-asserts the blocks this replica knows
    /// when the store lost its data (no `epoch`).
    async fn resync(&self) -> Result<()> {
        let mut conn = self.conn();
        let found: Option<String> = self
            .run("reading the epoch", conn.get(self.key("epoch")))
            .await?;
        // The store lost its data when it has no epoch, or another one than this replica saw
        // (another replica found it empty first): write back the blocks this replica knows
        // (its mirror and, after a restart, its durable record). An unblock cannot have
        // happened meanwhile: it needs the store.
        let last = lock(&self.epoch).clone();
        let lost = found.is_none() || (last.is_some() && last != found);
        if lost {
            let known: Vec<String> = lock(&self.blocked).iter().cloned().collect();
            if !known.is_empty() {
                tracing::warn!(
                    blocks = known.len(),
                    "the shared store is new or lost its data: re-asserting the blocks this \
                     replica knows"
                );
                let _: () = self
                    .run(
                        "re-asserting blocks",
                        conn.sadd(self.key("blocked"), &known),
                    )
                    .await?;
            }
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
        // Blocks pressed here while the store was away go in first.
        let pending: Vec<String> = lock(&self.pending).iter().cloned().collect();
        if !pending.is_empty() {
            let _: () = self
                .run(
                    "writing pending blocks",
                    conn.sadd(self.key("blocked"), &pending),
                )
                .await?;
            for agent in &pending {
                self.publish("block", agent).await?;
            }
            let mut still = lock(&self.pending);
            for agent in &pending {
                still.remove(agent);
            }
        }
        let blocked: BTreeSet<String> = self
            .run("reading blocks", conn.smembers(self.key("blocked")))
            .await?;
        let leases: HashMap<String, String> = self
            .run("reading leases", conn.hgetall(self.key("leases")))
            .await?;
        let revoked = leases
            .into_iter()
            .filter(|(_, json)| serde_json::from_str::<LeaseRecord>(json).is_ok_and(|l| l.revoked))
            .map(|(id, _)| id)
            .collect();
        *lock(&self.blocked) = blocked;
        *lock(&self.revoked) = revoked;
        self.save_record();
        Ok(())
    }

    /// Writes this replica's durable record of blocks (best effort: the store is the truth).
    fn save_record(&self) {
        let list: Vec<String> = lock(&self.blocked).iter().cloned().collect();
        let write = || -> Result<()> {
            if let Some(dir) = self.record.parent().filter(|d| !d.as_os_str().is_empty()) {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
            }
            let bytes = serde_json::to_vec(&list)
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
        self.0.try_lock(key).await
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
}

#[async_trait]
impl State for RedisState {
    async fn block(&self, agent: &str) -> Result<bool> {
        // The kill switch holds here at once, whatever the store says.
        // Until the store has it, it is pending: written first when the store is back.
        let new_here = lock(&self.inner.blocked).insert(agent.to_string());
        lock(&self.inner.pending).insert(agent.to_string());
        self.inner.save_record();
        let mut conn = self.inner.conn();
        let added: i64 = self
            .inner
            .run("blocking", conn.sadd(self.inner.key("blocked"), agent))
            .await?;
        lock(&self.inner.pending).remove(agent);
        self.inner.publish("block", agent).await?;
        Ok(added == 1 || new_here)
    }
    async fn unblock(&self, agent: &str) -> Result<bool> {
        self.inner.require_healthy()?;
        let mut conn = self.inner.conn();
        let removed: i64 = self
            .inner
            .run("unblocking", conn.srem(self.inner.key("blocked"), agent))
            .await?;
        lock(&self.inner.blocked).remove(agent);
        lock(&self.inner.pending).remove(agent);
        self.inner.save_record();
        self.inner.publish("unblock", agent).await?;
        Ok(removed == 1)
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
