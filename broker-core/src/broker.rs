//! The facade library users call: load config, show the manifest, resolve, deliver.
//!
//! ```no_run
//! # async fn demo() -> broker_core::Result<()> {
//! use broker_core::{Broker, RequestContext};
//! let broker = Broker::discover(&std::env::current_dir().unwrap(), None)?;
//! for entry in broker.manifest()?.entries {
//!     println!("{} -> {} ({})", entry.credential, entry.destinations[0].target, entry.badge);
//! }
//! let delivery = broker.deliver(&["api".to_string()], &RequestContext::new()).await?;
//! // delivery.apply_to(&mut command) sets its (VAR, value) pairs in a child's environment;
//! // files live in delivery.scratch(). broker.session(..) adds redaction and re-mints.
//! # Ok(()) }
//! ```
//!
//! Every `resolve`, `deliver`, `rotate` and `revoke` passes the runtime layers in this order:
//! policy → egress gate → lease cache → retry(timeout(provider)) → audit record (fsynced before
//! the credential is returned). See the `layers` module source and `docs/runtime.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::config::{Config, CredentialSpec, DeliveryKind, EgressConfig, Source, format_duration};
use crate::egress::{self, Badge, Destination};
use crate::provider::{Check, Request, RequestContext, ResolveRef, Rotation};
use crate::registry::{BackendContext, ProviderDescriptor, Registry};
use crate::scratch::ScratchDir;
use crate::{Credential, CredentialProvider, Error, ErrorKind, Reference, Result, SecretValue};

/// A loaded broker: config plus the providers it needs.
pub struct Broker {
    config: Config,
    registry: Registry,
    providers: BTreeMap<&'static str, Arc<dyn CredentialProvider>>,
    pub(crate) runtime: crate::layers::Runtime,
}

/// One row of the egress manifest. Secret-free by construction: built from config only.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestEntry {
    /// The credential's name.
    pub credential: String,
    /// Its reference.
    pub reference: Reference,
    /// The backend serving it.
    pub backend: &'static str,
    /// `resolve` or `mint`.
    pub source: Source,
    /// Where a request goes.
    pub destinations: Vec<Destination>,
    /// The widest badge among the destinations.
    pub badge: Badge,
    /// The variable the task sees.
    pub delivered_as: String,
    /// Env or file.
    pub kind: DeliveryKind,
    /// Requested lifetime, for minted credentials.
    pub ttl: Option<String>,
    /// Whether the egress gate lets it through (its destinations and its proxy hosts).
    pub allowed: bool,
    /// Placeholder mode: the hosts the run's proxy sends the value to (`proxy.hosts`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxy_destinations: Vec<Destination>,
}

/// The egress manifest: what would leave the machine, and to where.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The config file.
    pub config: PathBuf,
    /// The egress settings.
    pub egress: EgressConfig,
    /// One entry per credential, in file order.
    pub entries: Vec<ManifestEntry>,
}

/// Health of one backend, for `broker doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    /// The backend.
    pub backend: &'static str,
    /// Its schemes.
    pub schemes: Vec<&'static str>,
    /// Whether the config has a `backends.<name>` section.
    pub configured: bool,
    /// Whether any credential uses it.
    pub used: bool,
    /// The health check, when it was run (only for used backends the gate allows).
    pub ok: Option<bool>,
    /// What was found. Never a value.
    pub detail: String,
}

/// Values ready for a child process: environment pairs and the scratch dir holding files.
/// [`Delivery::apply_to`] puts them in a child's environment; a [`Session`](crate::Session)
/// runs a whole task with them (redacted output, re-mints, wipe).
pub struct Delivery {
    env: Vec<(String, SecretValue)>,
    secrets: Vec<(String, SecretValue)>,
    scratch: Option<ScratchDir>,
}

impl Delivery {
    /// `(VARIABLE, value)` pairs to set in the child (file credentials hold their path).
    pub fn env(&self) -> &[(String, SecretValue)] {
        &self.env
    }
    /// `(credential name, value)` for every secret value delivered, for redaction.
    pub fn secrets(&self) -> &[(String, SecretValue)] {
        &self.secrets
    }
    /// The scratch dir, if any credential was delivered as a file.
    pub fn scratch(&self) -> Option<&ScratchDir> {
        self.scratch.as_ref()
    }
    /// Records the child's pid in the scratch dir's marker (no-op without one), so a sweep by
    /// another invocation leaves the files alone while the child runs, even if this process
    /// dies first. See [`ScratchDir::record_child`].
    pub fn record_child(&self, pid: u32) -> Result<()> {
        match &self.scratch {
            Some(s) => s.record_child(pid),
            None => Ok(()),
        }
    }
    /// Wipes the scratch dir now (it is also wiped on drop).
    pub fn wipe(&mut self) -> std::io::Result<()> {
        match &mut self.scratch {
            Some(s) => s.wipe(),
            None => Ok(()),
        }
    }

    /// A delivery of credentials obtained elsewhere (from a `broker serve` daemon, say), each
    /// as `(name, variable, kind, credential)`: delivered exactly as [`Broker::deliver`] does
    /// (env values; `kind: file` values in 0600 files of a fresh scratch dir). No policy, gate
    /// or audit here: whoever obtained the values applied them. On failure the scratch dir is
    /// already wiped.
    pub fn from_credentials<'a>(
        items: impl IntoIterator<Item = (&'a str, &'a str, DeliveryKind, &'a Credential)>,
    ) -> Result<Delivery> {
        let mut delivery = Delivery {
            env: Vec::new(),
            secrets: Vec::new(),
            scratch: None,
        };
        for (name, env_var, kind, credential) in items {
            delivery.add(name, env_var, kind, credential)?;
        }
        Ok(delivery)
    }

    /// Adds credential `name`, delivered under `env_var` as `kind`.
    fn add(
        &mut self,
        name: &str,
        env_var: &str,
        kind: DeliveryKind,
        credential: &Credential,
    ) -> Result<()> {
        for value in credential.values() {
            self.secrets.push((name.to_string(), value.clone()));
        }
        match kind {
            DeliveryKind::Env if !credential.delivers_primary_env() => {}
            DeliveryKind::Env => self
                .env
                .push((env_var.to_string(), credential.value().clone())),
            DeliveryKind::File => {
                let scratch = match &mut self.scratch {
                    Some(scratch) => scratch,
                    None => self.scratch.insert(ScratchDir::create()?),
                };
                let path = scratch
                    .write_secret(name, credential.value())
                    .map_err(|e| e.with_credential(name))?;
                let path = path
                    .into_os_string()
                    .into_string()
                    .map_err(|_| Error::internal("scratch path is not UTF-8"))?;
                for var in credential.path_vars() {
                    if var != env_var {
                        self.env
                            .push((var.clone(), SecretValue::from(path.clone())));
                    }
                }
                self.env
                    .push((env_var.to_string(), SecretValue::from(path)));
            }
        }
        for (var, value) in credential.companions() {
            self.env.push((var.clone(), value.clone()));
        }
        for (var, value) in credential.plain_env() {
            self.env
                .push((var.clone(), SecretValue::from(value.clone())));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("scratch", &self.scratch)
            .finish()
    }
}

impl Broker {
    /// Finds the config (`explicit`, or `.broker.yml` walking up from `cwd`) and loads it with
    /// the backends compiled into this binary.
    pub fn discover(cwd: &Path, explicit: Option<&Path>) -> Result<Broker> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => Config::discover(cwd).ok_or_else(|| {
                Error::invalid_config(format!(
                    "no .broker.yml in {} or any parent directory",
                    cwd.display()
                ))
                .with_hint("create one (see examples/quickstart/.broker.yml) or pass --config PATH")
            })?,
        };
        Self::load(&path)
    }

    /// Loads the config at `path` with the backends compiled into this binary.
    pub fn load(path: &Path) -> Result<Broker> {
        let registry = Registry::global().clone();
        let config = Config::load(path, &registry)?;
        Self::new(config, registry)
    }

    /// Builds providers for every backend the config uses or configures. Factories do no I/O,
    /// so this validates backend settings without touching a network.
    pub fn new(config: Config, registry: Registry) -> Result<Broker> {
        let mut providers = BTreeMap::new();
        let mut needed: Vec<&'static ProviderDescriptor> = Vec::new();
        for spec in &config.credentials {
            needed.push(registry.require_scheme(spec.reference.scheme())?);
        }
        for name in config.backends.keys() {
            needed.extend(registry.by_name(name));
        }
        for d in needed {
            if providers.contains_key(d.name) {
                continue;
            }
            let ctx = BackendContext {
                name: d.name,
                settings: config.backends.get(d.name),
                base_dir: config.base_dir(),
            };
            providers.insert(d.name, (d.factory)(&ctx)?);
        }
        let runtime = crate::layers::Runtime::from_config(&config)?;
        Ok(Broker {
            config,
            registry,
            providers,
            runtime,
        })
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn provider_for(
        &self,
        reference: &Reference,
    ) -> Result<(&'static ProviderDescriptor, Arc<dyn CredentialProvider>)> {
        let d = self
            .registry
            .require_scheme(reference.scheme())
            .map_err(|e| e.with_reference(reference))?;
        match self.providers.get(d.name) {
            Some(p) => Ok((d, p.clone())),
            None => {
                let ctx = BackendContext {
                    name: d.name,
                    settings: None,
                    base_dir: self.config.base_dir(),
                };
                Ok((d, (d.factory)(&ctx)?))
            }
        }
    }

    /// Where `reference` would send data, with the broker's badge rules applied. No I/O.
    pub fn destinations(&self, reference: &Reference) -> Result<Vec<Destination>> {
        let (_, provider) = self.provider_for(reference)?;
        let dests = provider
            .egress(reference, self.config.base_dir())
            .map_err(|e| e.with_reference(reference))?;
        Ok(dests
            .into_iter()
            .map(|d| egress::classify(d, &self.config.egress.self_hosted))
            .collect())
    }

    /// The egress manifest. Resolves nothing.
    pub fn manifest(&self) -> Result<Manifest> {
        let mut entries = Vec::new();
        for spec in &self.config.credentials {
            let (d, _) = self.provider_for(&spec.reference)?;
            let destinations = self
                .destinations(&spec.reference)
                .map_err(|e| e.with_credential(&spec.name))?;
            let proxy_destinations =
                egress::proxy_destinations(spec.proxy.as_ref(), &self.config.egress.self_hosted);
            let every = || destinations.iter().chain(&proxy_destinations);
            let badge = every().map(|d| d.badge).max().unwrap_or(Badge::Local);
            let allowed = every().all(|d| self.config.egress.permits(d.badge));
            entries.push(ManifestEntry {
                credential: spec.name.clone(),
                reference: spec.reference.clone(),
                backend: d.name,
                source: spec.source,
                allowed,
                proxy_destinations,
                destinations,
                badge,
                delivered_as: spec.env_var.clone(),
                kind: spec.kind,
                ttl: spec.ttl.map(format_duration),
            });
        }
        Ok(Manifest {
            config: self.config.path().to_path_buf(),
            egress: self.config.egress.clone(),
            entries,
        })
    }

    /// Refuses `reference` before any I/O if a destination's badge is not allowed.
    pub fn gate(&self, reference: &Reference) -> Result<()> {
        for dest in self.destinations(reference)? {
            self.gate_destination(&dest)
                .map_err(|e| e.with_reference(reference))?;
        }
        Ok(())
    }

    /// Refuses `dest` if its badge is not allowed (an error naming it, with a hint).
    pub fn gate_destination(&self, dest: &Destination) -> Result<()> {
        if self.config.egress.permits(dest.badge) {
            return Ok(());
        }
        let path = self.config.path().display();
        let (why, hint) = if self.config.egress.enabled {
            (
                format!("egress to {} destinations is not allowed", dest.badge),
                format!(
                    "add `{}` to `egress.allow` in {path} after reviewing `broker audit`",
                    dest.badge
                ),
            )
        } else {
            (
                "egress is disabled".to_string(),
                format!("set `egress.enabled: true` in {path} after reviewing `broker audit`"),
            )
        };
        Err(Error::new(
            ErrorKind::EgressDenied,
            format!("{why}; this would reach {dest}"),
        )
        .with_hint(hint))
    }

    /// Resolves (or mints) the credential `name` for one request, through policy, the egress
    /// gate, the lease cache, retry and the audit log (in that order).
    pub async fn resolve(&self, name: &str, context: &RequestContext) -> Result<Credential> {
        let (spec, decision) = self.authorize_deferred(name, None, context).await?;
        let issued = self.issue(spec, context).await;
        // Nothing is handed out before its decision is recorded (already, by now, in all but
        // a failure: the issuance's flush came after the decision's).
        let recorded = decision.wait().await;
        let credential = issued?;
        recorded?;
        Ok(credential)
    }

    /// Resolves `names` (every credential when empty) and prepares them for a child process:
    /// env values, and 0600 files in a fresh scratch dir for `kind: file`.
    /// On any failure nothing is returned and the scratch dir is already wiped.
    pub async fn deliver(&self, names: &[String], context: &RequestContext) -> Result<Delivery> {
        let names: Vec<&str> = if names.is_empty() {
            self.config
                .credentials
                .iter()
                .map(|c| c.name.as_str())
                .collect()
        } else {
            names.iter().map(String::as_str).collect()
        };
        // Policy and gate for everything before resolving anything: a refusal does no I/O.
        let mut specs: Vec<&CredentialSpec> = Vec::with_capacity(names.len());
        let mut decisions = Vec::with_capacity(names.len());
        for n in &names {
            let (spec, decision) = self.authorize_deferred(n, None, context).await?;
            specs.push(spec);
            decisions.push(decision);
        }
        let mut delivery = Delivery {
            env: Vec::new(),
            secrets: Vec::new(),
            scratch: None,
        };
        // Stored values (`resolve`) are fetched concurrently and all to the end first (a
        // backend can then do their work in parallel: age decrypts on the blocking pool);
        // minted ones after them, one at a time, in order, since minting has effects outside.
        // Not interleaved: a stored fetch paused mid-way while a mint runs could hold a lock
        // the mint needs (a backend's login session). Either way the audit records are
        // written in config order, each before the next credential is used, and the first
        // failure stops the delivery with the same records a sequential run writes (values
        // fetched after it are dropped unrecorded, never used).
        let mut reads = futures::future::join_all(
            specs
                .iter()
                .filter(|spec| spec.source == Source::Resolve)
                .map(|spec| self.fetch_unrecorded(spec, context)),
        )
        .await
        .into_iter();
        for spec in specs {
            let fetched = match spec.source {
                Source::Resolve => match reads.next() {
                    Some(fetched) => fetched,
                    None => return Err(Error::internal("a concurrent fetch went missing")),
                },
                Source::Mint => self.fetch_unrecorded(spec, context).await,
            };
            let credential = self.record_lookup(spec, context, fetched).await?.credential;
            delivery.add(&spec.name, &spec.env_var, spec.kind, &credential)?;
        }
        for decision in decisions {
            decision.wait().await?;
        }
        Ok(delivery)
    }

    /// Rotates the stored key material behind credential `name`.
    pub async fn rotate(&self, name: &str, context: &RequestContext) -> Result<Rotation> {
        use crate::{audit::EventKind, policy::Action};
        let spec = self.authorize(name, Some(Action::Rotate), context).await?;
        let attach = |e: Error| e.with_credential(name).with_reference(&spec.reference);
        let (_, provider) = self.provider_for(&spec.reference).map_err(attach)?;
        let request = Request::new(&spec.reference, self.config.base_dir(), context)
            .with_credential(&spec.name)
            .with_terms(spec.terms())
            .with_nested(self);
        let event = self.action_event(EventKind::Rotation, Action::Rotate, Some(spec), context);
        // Not retried: a rotation that timed out may have happened.
        let rotation = self
            .guarded(false, event, |_| provider.rotate(&request))
            .await
            .map_err(attach)?;
        Ok(rotation)
    }

    /// Revokes `lease_id` through `backend`, or through the one configured backend that can
    /// revoke when `backend` is `None`. Same as [`Broker::revoke_as`] with a fresh context.
    pub async fn revoke(&self, lease_id: &str, backend: Option<&str>) -> Result<()> {
        self.revoke_as(lease_id, backend, &RequestContext::new())
            .await
    }

    /// Revokes `lease_id` on behalf of `context`'s agent: policy (`revoke`), retry, audit.
    pub async fn revoke_as(
        &self,
        lease_id: &str,
        backend: Option<&str>,
        context: &RequestContext,
    ) -> Result<()> {
        use crate::{audit::EventKind, policy::Action};
        let name = match backend {
            Some(b) => {
                self.registry
                    .by_name(b)
                    .ok_or_else(|| Error::invalid_config(format!("unknown backend `{b}`")))?;
                b.to_string()
            }
            None => {
                let revokers: Vec<&str> = self
                    .providers
                    .keys()
                    .filter(|n| {
                        self.registry
                            .by_name(n)
                            .is_some_and(|d| d.capabilities.revoke)
                    })
                    .copied()
                    .collect();
                match revokers.as_slice() {
                    [one] => one.to_string(),
                    [] => {
                        let used: Vec<&str> = self.providers.keys().copied().collect();
                        return Err(Error::unsupported("revoke").with_hint(format!(
                            "none of the configured backends ({}) issues revocable leases",
                            if used.is_empty() {
                                "none".to_string()
                            } else {
                                used.join(", ")
                            }
                        )));
                    }
                    many => {
                        return Err(Error::invalid_config(
                            "more than one backend can revoke leases",
                        )
                        .with_hint(format!("pass --backend with one of: {}", many.join(", "))));
                    }
                }
            }
        };
        let provider = match self.providers.get(name.as_str()) {
            Some(p) => p.clone(),
            None => {
                let d = self
                    .registry
                    .by_name(&name)
                    .ok_or_else(|| Error::internal("backend vanished"))?;
                (d.factory)(&BackendContext {
                    name: d.name,
                    settings: None,
                    base_dir: self.config.base_dir(),
                })?
            }
        };
        self.decide_revoke(lease_id, &name, context).await?;
        let mut event = self.action_event(EventKind::Revocation, Action::Revoke, None, context);
        event.backend = Some(name.clone());
        event.lease_id = Some(lease_id.to_string());
        event.outcome = Some("revoked".into());
        self.guarded(true, event, |_| provider.revoke(lease_id, self))
            .await?;
        // A revoked credential is never served from the cache again.
        self.runtime.cache.evict_lease(lease_id);
        Ok(())
    }

    /// Health of every compiled-in backend. Checks run only for backends a credential uses and
    /// the egress gate allows; nothing is resolved, no value is returned.
    pub async fn doctor(&self) -> Vec<BackendReport> {
        let mut reports = Vec::new();
        for d in self.registry.descriptors() {
            let used_by: Vec<&CredentialSpec> = self
                .config
                .credentials
                .iter()
                .filter(|c| d.schemes.contains(&c.reference.scheme()))
                .collect();
            let configured = self.config.backends.contains_key(d.name);
            let mut report = BackendReport {
                backend: d.name,
                schemes: d.schemes.to_vec(),
                configured,
                used: !used_by.is_empty(),
                ok: None,
                detail: String::new(),
            };
            let gated = used_by.iter().find_map(|c| self.gate(&c.reference).err());
            match (self.providers.get(d.name), gated) {
                (_, Some(e)) => report.detail = format!("not checked: {}", e.message()),
                (None, None) => report.detail = "compiled in; not used by this config".into(),
                (Some(p), None) => {
                    let Check { ok, detail } = p.check(self).await;
                    report.ok = Some(ok);
                    report.detail = detail;
                }
            }
            reports.push(report);
        }
        reports
    }
}

#[async_trait]
impl ResolveRef for Broker {
    async fn resolve_ref(&self, reference: &Reference, purpose: &str) -> Result<SecretValue> {
        let attach = |e: Error| {
            let msg = format!("{} (resolving {purpose})", e.message());
            let mut out = Error::new(e.kind(), msg)
                .with_reference(reference)
                .retryable(e.is_retryable());
            if let Some(h) = e.hint() {
                out = out.with_hint(h.to_string());
            }
            out
        };
        self.gate(reference).map_err(attach)?;
        let (_, provider) = self.provider_for(reference).map_err(attach)?;
        let context = RequestContext::new();
        let request = Request::new(reference, self.config.base_dir(), &context)
            .with_credential(purpose)
            .with_nested(self);
        let credential = provider.resolve(&request).await.map_err(attach)?;
        Ok(credential.value().clone())
    }
}
