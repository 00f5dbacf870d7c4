//! Shared support for the runtime-layer tests: a scripted backend (`scripted:` local,
//! `scripted-cloud:` managed-cloud) whose behaviour each test sets by the reference target, a
//! test clock, and a sleeper that records delays instead of waiting.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use broker_core::lease::{Clock, ManualClock};
use broker_core::retry::{BoxFuture, RetryPolicy, Sleeper};
use broker_core::{
    BackendContext, Badge, Broker, Capabilities, Config, Credential, CredentialProvider,
    Destination, Error, Lease, ProviderDescriptor, Reference, Registry, Request, Result,
    SecretValue, async_trait,
};

/// A value no record, message or debug output may ever contain.
pub const CANARY: &str = "canary-3d1f-runtime-secret";

/// What the scripted backend does for one reference target.
#[derive(Default)]
pub struct Script {
    pub calls: AtomicU32,
    /// Errors returned by the next calls, in order; then success.
    pub failures: Mutex<VecDeque<Error>>,
    /// Lifetime of minted values (a lease with an expiry).
    pub ttl: Option<Duration>,
    pub clock: Option<Arc<ManualClock>>,
    /// Holds every call until released.
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Never returns (for timeouts).
    pub hang: bool,
}

impl Script {
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn fail_next(&self, errors: impl IntoIterator<Item = Error>) {
        self.failures.lock().unwrap().extend(errors);
    }
}

fn scripts() -> &'static Mutex<HashMap<String, Arc<Script>>> {
    static S: OnceLock<Mutex<HashMap<String, Arc<Script>>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// Registers `script` under `target`.
pub fn script(target: &str, script: Script) -> Arc<Script> {
    let s = Arc::new(script);
    scripts()
        .lock()
        .unwrap()
        .insert(target.to_string(), s.clone());
    s
}

struct Scripted {
    badge: Badge,
}

impl Scripted {
    async fn call(&self, request: &Request<'_>, mint: bool) -> Result<Credential> {
        let target = request.reference.to_string();
        let target = target.split_once(':').map(|(_, t)| t).unwrap_or("");
        let target = target.trim_start_matches("//");
        let script = scripts()
            .lock()
            .unwrap()
            .get(target)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no script for `{target}`")))?;
        let n = script.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(gate) = &script.gate {
            let _permit = gate.acquire().await.unwrap();
        }
        if script.hang {
            std::future::pending::<()>().await;
        }
        if let Some(e) = script.failures.lock().unwrap().pop_front() {
            return Err(e);
        }
        let value = SecretValue::from(format!("{CANARY}-{n}"));
        let mut credential = Credential::new(value);
        if mint {
            let now = script
                .clock
                .as_ref()
                .map(|c| c.now())
                .unwrap_or_else(SystemTime::now);
            credential = credential.with_lease(Lease {
                id: format!("lease-{target}-{n}"),
                expires_at: script.ttl.map(|t| now + t),
                renewable: false,
            });
        }
        Ok(credential)
    }
}

#[async_trait]
impl CredentialProvider for Scripted {
    fn egress(&self, _reference: &Reference, _base_dir: &Path) -> Result<Vec<Destination>> {
        Ok(vec![match self.badge {
            Badge::Local => Destination::process_env(),
            b => Destination::host("https://api.scripted.example", b),
        }])
    }
    async fn resolve(&self, request: &Request<'_>) -> Result<Credential> {
        self.call(request, false).await
    }
    async fn mint(&self, request: &Request<'_>) -> Result<Credential> {
        self.call(request, true).await
    }
    async fn revoke(&self, lease_id: &str, _nested: &dyn broker_core::ResolveRef) -> Result<()> {
        if lease_id.contains("missing") {
            Err(Error::not_found(format!("no lease `{lease_id}`")))
        } else {
            Ok(())
        }
    }
}

fn local(_: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    Ok(Arc::new(Scripted {
        badge: Badge::Local,
    }))
}
fn cloud(_: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    Ok(Arc::new(Scripted {
        badge: Badge::ManagedCloud,
    }))
}

const CAPS: Capabilities = Capabilities {
    resolve: true,
    mint: true,
    revoke: true,
    rotate: false,
};

broker_core::inventory::submit! {
    ProviderDescriptor {
        name: "scripted",
        schemes: &["scripted"],
        capabilities: CAPS,
        default_badge: Badge::Local,
        credential_options: &[],
        grammar: &[],
        factory: local,
    }
}

broker_core::inventory::submit! {
    ProviderDescriptor {
        name: "scripted-cloud",
        schemes: &["scripted-cloud"],
        capabilities: CAPS,
        default_badge: Badge::ManagedCloud,
        credential_options: &[],
        grammar: &[],
        factory: cloud,
    }
}

/// Records the delays it was asked to sleep; never sleeps.
#[derive(Default)]
pub struct CountingSleeper(pub Mutex<Vec<Duration>>);

impl Sleeper for CountingSleeper {
    fn sleep(&self, duration: Duration) -> BoxFuture<'_, ()> {
        self.0.lock().unwrap().push(duration);
        Box::pin(async {})
    }
}

/// A temp dir with `config` written as `.broker.yml` (and any extra files).
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(config: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".broker.yml"), config).unwrap();
        Fixture { dir }
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn config(&self) -> Result<Config> {
        Config::load(&self.dir.path().join(".broker.yml"), Registry::global())
    }
    pub fn broker(&self) -> Result<Broker> {
        Broker::load(&self.dir.path().join(".broker.yml"))
    }
}

/// Retry settings for tests: no real waiting happens with [`CountingSleeper`].
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        timeout: Duration::from_secs(5),
        ..RetryPolicy::default()
    }
}

/// A fixed start time for test clocks.
pub fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Every line of the audit log at `path`.
pub fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
