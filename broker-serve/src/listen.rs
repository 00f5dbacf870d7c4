//! The unix socket listener and the accept loop.

use std::collections::HashMap;
use std::future::Future;
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_core::{Broker, Error, Result};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::api::{App, Live, revoke_lease, router};
use crate::config::ServeConfig;
use crate::identity::{ClientCert, Peer};
use crate::state::{MemoryState, State};

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

/// How often the state forgets full token buckets and expired leases.
const SWEEP: Duration = Duration::from_secs(60);

/// Binds the unix socket at `path` with `mode`: the parent directory is created (0700) if
/// missing; a stale socket (nothing accepts on it) is replaced; a live one, or a file that is
/// not a socket, is refused. The socket is created under umask 0177, then set to `mode`.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener> {
    bind_socket_with_group(path, mode, None)
}

/// [`bind_socket`], then the socket file's group set to `group` (`serve.group`).
pub fn bind_socket_with_group(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::invalid_config(format!(
                "{} exists and is not a socket",
                path.display()
            ))
            .with_hint("point `serve.listen` somewhere else or remove the file"));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::invalid_config(format!(
                    "another daemon is listening on {}",
                    path.display()
                ))
                .with_hint("stop it first, or give this one another `serve.listen`"));
            }
            Err(e) if e.kind() == IoKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "replacing a stale socket");
                std::fs::remove_file(path)
                    .map_err(|e| Error::io(format!("removing {}", path.display()), &e))?;
            }
            Err(e) => {
                return Err(Error::io(format!("probing {}", path.display()), &e));
            }
        },
        Err(e) if e.kind() == IoKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("inspecting {}", path.display()), &e)),
    }
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(|e| Error::io(format!("binding {}", path.display()), &e))?;
    if let Some(gid) = group {
        std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|e| {
            Error::io(
                format!("setting the group of {} to {gid}", path.display()),
                &e,
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), &e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("socket", &e))?;
    UnixListener::from_std(listener).map_err(|e| Error::io("socket", &e))
}

/// Builds a new broker and settings from the config files: what SIGHUP runs.
pub type Reload = Box<dyn Fn() -> Result<(Broker, ServeConfig)> + Send + Sync>;

/// The daemon: a broker, its `serve:` settings and its [`State`].
pub struct Daemon {
    app: App,
    config: Arc<ServeConfig>,
    reload: Option<Arc<Reload>>,
    /// The shared store is connected when serving starts.
    pending_store: bool,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("listen", &self.config.listen)
            .field("tls", &self.config.tls.as_ref().map(|t| t.listen))
            .finish_non_exhaustive()
    }
}

/// Open connections, overall and per peer; a guard gives its slot back on drop.
struct ConnectionCaps {
    overall: Arc<tokio::sync::Semaphore>,
    per_peer: Mutex<HashMap<String, u32>>,
    per_peer_cap: u32,
}

struct ConnectionSlot {
    caps: Arc<ConnectionCaps>,
    key: String,
    _overall: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut per_peer = self.caps.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_peer.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&self.key);
            }
        }
    }
}

impl ConnectionCaps {
    fn new(config: &ServeConfig) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps {
            overall: Arc::new(tokio::sync::Semaphore::new(
                config.limits.connections as usize,
            )),
            per_peer: Mutex::default(),
            per_peer_cap: config.limits.connections_per_peer,
        })
    }

    /// A slot for a connection from `key`, or which cap it hit.
    fn admit(self: &Arc<Self>, key: String) -> std::result::Result<ConnectionSlot, &'static str> {
        let mut per_peer = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        if per_peer.get(&key).is_some_and(|n| *n >= self.per_peer_cap) {
            return Err("per_peer");
        }
        let permit = self
            .overall
            .clone()
            .try_acquire_owned()
            .map_err(|_| "overall")?;
        *per_peer.entry(key.clone()).or_insert(0) += 1;
        Ok(ConnectionSlot {
            caps: self.clone(),
            key,
            _overall: permit,
        })
    }
}

/// What every accept loop shares.
#[derive(Clone)]
struct Serving {
    app: App,
    http: hyper::server::conn::http1::Builder,
    /// Taken out when draining starts: connections after that are closed at once.
    graceful: Arc<Mutex<Option<GracefulShutdown>>>,
    caps: Arc<ConnectionCaps>,
    handshake_timeout: Duration,
}

impl Serving {
    /// Serves HTTP/1.1 on `io` for `peer` until it closes (or the daemon drains).
    fn spawn<IO>(&self, io: IO, peer: Peer, slot: ConnectionSlot)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = router(self.app.clone());
        let metrics = self.app.metrics.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(peer.clone());
            let mut router = router.clone();
            let metrics = metrics.clone();
            let path = req.uri().path().to_string();
            let started = Instant::now();
            async move {
                let answer =
                    tower::Service::call(&mut router, req.map(axum::body::Body::new)).await;
                if let Ok(a) = &answer {
                    metrics.answered(&path, a.status().as_u16(), started.elapsed());
                }
                answer
            }
        });
        let watcher = self
            .graceful
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(GracefulShutdown::watcher);
        let Some(watcher) = watcher else {
            return; // draining
        };
        let conn = watcher.watch(self.http.serve_connection(TokioIo::new(io), service));
        let metrics = self.app.metrics.clone();
        metrics.connection(1);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            metrics.connection(-1);
            drop(slot);
        });
    }

    fn admit(&self, peer: &Peer) -> Option<ConnectionSlot> {
        match self.caps.admit(peer.cap_key()) {
            Ok(slot) => Some(slot),
            Err(cap) => {
                self.app.metrics.connection_refused(cap);
                tracing::debug!(peer = %peer.describe(), cap, "connection refused: at its cap");
                None
            }
        }
    }

    async fn accept_unix(self, listener: UnixListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = match stream.peer_cred() {
                Ok(c) => Peer::Unix {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                },
                Err(e) => {
                    tracing::warn!("no peer credentials on a connection, dropped: {e}");
                    continue;
                }
            };
            tracing::trace!(peer = %peer.describe(), "connection");
            if let Some(slot) = self.admit(&peer) {
                self.spawn(stream, peer, slot);
            }
        }
    }

    async fn accept_tls(self, listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let bare = Peer::Tls { addr, cert: None };
            let Some(slot) = self.admit(&bare) else {
                continue;
            };
            let serving = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(serving.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            // A port probe or a client that gave up: nothing to refuse.
                            tracing::debug!(peer = %addr, "closed before the TLS handshake");
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(peer = %addr, "TLS handshake refused: {e}");
                            let live = serving.app.live();
                            let mut ctx = broker_core::RequestContext::new();
                            ctx.identity = Some(format!("tls {addr}"));
                            let err = crate::ApiError::new(
                                axum::http::StatusCode::UNAUTHORIZED,
                                "tls_handshake_refused",
                                format!("the TLS handshake was refused: {e}"),
                            );
                            let who = Peer::Tls { addr, cert: None }.cap_key();
                            serving.app.refuse(&live, &ctx, &who, &err, |_| {}).await;
                            return;
                        }
                        Err(_) => {
                            tracing::info!(peer = %addr, "TLS handshake timed out");
                            return;
                        }
                    };
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|der| Arc::new(ClientCert::from_der(der)));
                let peer = Peer::Tls { addr, cert };
                tracing::trace!(peer = %peer.describe(), "connection");
                serving.spawn(tls, peer, slot);
            });
        }
    }
}

impl Daemon {
    /// A daemon for `broker` with `config`; blocks and issued leases are kept in
    /// `serve.store.path` (read now), so they survive a restart.
    ///
    /// With `serve.store.kind: redis` the state is the shared store, connected when the
    /// daemon starts serving ([`Daemon::serve`]), and the audit log's file name gets the
    /// replica id (`audit.jsonl` → `audit.REPLICA.jsonl`): each replica keeps its own chain.
    pub fn new(broker: Broker, config: ServeConfig) -> Result<Daemon> {
        if config.shared_store.is_some() {
            #[cfg(not(feature = "redis"))]
            return Err(Error::invalid_config(
                "`serve.store.kind: redis` needs a broker built with the `redis` feature",
            ));
            #[cfg(feature = "redis")]
            {
                let broker = with_replica_audit(broker, &config);
                let state = MemoryState::new(config.limits);
                let mut daemon = Daemon::with_state_of(broker, config, Arc::new(state));
                daemon.pending_store = true;
                return Ok(daemon);
            }
        }
        let state = MemoryState::open(config.limits, &config.store_path)?;
        Ok(Daemon::with_state_of(broker, config, Arc::new(state)))
    }

    /// A daemon whose state lives in this process only (tests, embedders).
    pub fn in_memory(broker: Broker, config: ServeConfig) -> Daemon {
        let state = MemoryState::new(config.limits);
        Daemon::with_state_of(broker, config, Arc::new(state))
    }

    fn with_state_of(broker: Broker, config: ServeConfig, state: Arc<dyn State>) -> Daemon {
        let config = Arc::new(config);
        Daemon {
            app: App::new(broker, (*config).clone(), state),
            config,
            reload: None,
            pending_store: false,
        }
    }

    /// Replaces the state store.
    #[must_use]
    pub fn with_state(mut self, state: Arc<dyn State>) -> Daemon {
        self.app
            .live()
            .broker
            .cache()
            .set_shared(state.shared_leases());
        self.app.state = state;
        self.pending_store = false;
        self
    }

    /// Connects the shared store (`serve.store.kind: redis`), makes it the state and the
    /// lease cache's shared store, and audits (and alerts on) its health changes.
    #[cfg(feature = "redis")]
    async fn connect_store(&mut self) -> Result<()> {
        let Some(settings) = self.config.shared_store.clone() else {
            return Ok(());
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let live = self.app.live();
        let state = crate::store::RedisState::connect(
            &settings,
            self.config.limits,
            self.config.store_path.clone(),
            &live.broker,
            tx,
        )
        .await?;
        // A lease revoked on any replica leaves this replica's cache too.
        state.on_revoke(Arc::new(self.app.evictor()));
        let app = self.app.clone();
        tokio::spawn(async move {
            while let Some(health) = rx.recv().await {
                let live = app.live();
                let ctx = broker_core::RequestContext::new();
                if health.up {
                    tracing::info!("{}", health.detail);
                    if let Err(e) =
                        live.broker
                            .record_notice(&ctx, "store_available", &health.detail)
                    {
                        tracing::error!("cannot record the store's return: {e}");
                    }
                } else {
                    tracing::error!("{}", health.detail);
                    app.metrics.alert();
                    let mut e = live.broker.context_event(
                        broker_core::audit::EventKind::Failure,
                        broker_core::audit::Severity::Alert,
                        &ctx,
                    );
                    e.outcome = Some("store_unavailable".into());
                    e.error_kind = Some("store_unavailable".into());
                    e.reason = Some(health.detail);
                    live.broker.alert(&e).await;
                }
            }
        });
        let state: Arc<dyn State> = Arc::new(state);
        live.broker.cache().set_shared(state.shared_leases());
        self.app.state = state;
        self.pending_store = false;
        Ok(())
    }

    /// What SIGHUP runs: a new broker and settings are put in force atomically when `reload`
    /// succeeds; when it fails the old ones stay and the failure is logged and audited.
    /// Listener settings (`listen`, `tls`, `admin`) only change on a restart.
    #[must_use]
    pub fn with_reload(mut self, reload: Reload) -> Daemon {
        self.reload = Some(Arc::new(reload));
        self
    }

    /// The socket path from the config.
    pub fn socket_path(&self) -> Option<&Path> {
        self.config.listen.as_deref()
    }

    /// Refuses to serve without an audit log unless the config turns it off in so many words
    /// (`audit: { enabled: false }`).
    pub fn require_audit_log(&self) -> Result<()> {
        let live = self.app.live();
        let broker = &live.broker;
        if broker.audit_log().is_some() || broker.config().audit_disabled {
            return Ok(());
        }
        Err(Error::invalid_config(format!(
            "the daemon needs an audit log and {} has none",
            broker.config().path().display()
        ))
        .with_hint(
            "add `audit: { path: .broker/audit.jsonl }`, or say `audit: { enabled: false }` \
             to serve without one",
        ))
    }

    /// Binds every configured listener and serves until `shutdown` completes; then stops
    /// accepting, lets in-flight requests finish (up to 30 s), revokes this daemon's leases
    /// when `serve.revoke_on_shutdown` says so, and removes the socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.require_audit_log()?;
        let unix = match &self.config.listen {
            Some(path) => Some(bind_socket_with_group(
                path,
                self.config.mode,
                self.config.group,
            )?),
            None => None,
        };
        let config = self.config.clone();
        let result = self.serve(unix, shutdown).await;
        if let Some(path) = &config.listen
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != IoKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
        result
    }

    /// Serves connections from `unix` (and the configured TCP listeners) until `shutdown`
    /// completes, then drains. Refuses to start without an audit log (see
    /// [`Daemon::require_audit_log`]).
    pub async fn serve(
        self,
        unix: Option<UnixListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        // Mutable only to connect a shared store (feature `redis`).
        #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
        let mut this = self;
        this.require_audit_log()?;
        #[cfg(feature = "redis")]
        if this.pending_store {
            this.connect_store().await?;
        }
        let this = this;
        // Held for the daemon's lifetime: one writer, group-committed fsyncs; a CLI pointed at
        // the same file waits briefly, then is refused with a clear message.
        if let Some(log) = this.app.live().broker.audit_log() {
            log.hold()?;
        }
        let config = this.config.clone();
        let tls = match &config.tls {
            Some(t) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(t)?);
                let listener = TcpListener::bind(t.listen)
                    .await
                    .map_err(|e| Error::io(format!("binding {}", t.listen), &e))?;
                Some((listener, acceptor))
            }
            None => None,
        };
        let admin = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| Error::io(format!("binding {addr}"), &e))?,
            ),
            None => None,
        };
        if unix.is_none() && tls.is_none() {
            return Err(Error::invalid_config(
                "the daemon has nothing to listen on: set `serve.listen` or `serve.tls`",
            ));
        }
        let graceful = Arc::new(Mutex::new(Some(GracefulShutdown::new())));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .keep_alive(true);
        let serving = Serving {
            app: this.app.clone(),
            http,
            graceful: graceful.clone(),
            caps: ConnectionCaps::new(&config),
            handshake_timeout: config.header_timeout,
        };
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(listener) = unix {
            if let Some(path) = &config.listen {
                tracing::info!(socket = %path.display(), "serving");
            }
            tasks.spawn(serving.clone().accept_unix(listener));
        }
        if let Some((listener, acceptor)) = tls {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving TLS");
            }
            tasks.spawn(serving.clone().accept_tls(listener, acceptor));
        }
        if let Some(listener) = admin {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving admin and metrics");
            }
            tasks.spawn(crate::admin::serve(
                listener,
                this.app.clone(),
                serving.http.clone(),
            ));
        }
        let state = this.app.state.clone();
        let proxies = this.app.proxies.clone();
        tasks.spawn(async move {
            let mut every = tokio::time::interval(SWEEP);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = state.sweep().await {
                    tracing::warn!("sweeping the daemon's state failed: {e}");
                }
                proxies.sweep(&*state).await;
            }
        });
        if let Some(reload) = this.reload.clone() {
            tasks.spawn(reload_on_hangup(this.app.clone(), reload));
        }
        this.app.metrics.set_ready(true);
        shutdown.await;
        this.app.metrics.set_ready(false);
        // Stop accepting (the admin listener too), then drain.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        drop(serving);
        tracing::info!("shutting down: finishing in-flight requests");
        let graceful = graceful.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(graceful) = graceful
            && tokio::time::timeout(DRAIN, graceful.shutdown())
                .await
                .is_err()
        {
            tracing::warn!("in-flight requests still running after {DRAIN:?}; stopping anyway");
        }
        if config.revoke_on_shutdown {
            this.revoke_all().await;
        }
        Ok(())
    }

    /// Revokes (or marks) every live lease the state holds (`serve.revoke_on_shutdown`).
    async fn revoke_all(&self) {
        let live: Arc<Live> = self.app.live();
        let leases = match self.app.state.leases(None).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot list leases to revoke on shutdown: {e}");
                return;
            }
        };
        let mut ctx = broker_core::RequestContext::new();
        ctx.identity = Some("broker serve shutting down (`serve.revoke_on_shutdown`)".into());
        for lease in leases.iter().filter(|l| !l.revoked) {
            match revoke_lease(&self.app, &live, lease, &ctx).await {
                Ok(true) => tracing::info!(lease = %lease.lease_id, "revoked on shutdown"),
                Ok(false) => tracing::info!(lease = %lease.lease_id, "marked revoked on shutdown"),
                Err(e) => {
                    tracing::warn!(lease = %lease.lease_id, "revoking on shutdown failed: {}", e.message)
                }
            }
        }
    }
}

/// With a shared store, `broker`'s audit log renamed for this replica (`audit.jsonl` →
/// `audit.REPLICA.jsonl`), so replicas sharing a directory never share a chain.
fn with_replica_audit(broker: Broker, config: &ServeConfig) -> Broker {
    let (Some(store), Some(path)) = (&config.shared_store, broker.config().audit_path.clone())
    else {
        return broker;
    };
    let stem = path
        .file_stem()
        .map_or_else(|| "audit".into(), |s| s.to_string_lossy().into_owned());
    let named = match path.extension() {
        Some(ext) => format!("{stem}.{}.{}", store.replica_id, ext.to_string_lossy()),
        None => format!("{stem}.{}", store.replica_id),
    };
    let options = broker_core::audit::AuditOptions {
        fsync: broker.config().audit_fsync,
    };
    let alert = broker
        .config()
        .alert
        .as_ref()
        .map(|a| broker_core::retry::AlertCommand::new(a.command.clone()));
    let log = broker_core::audit::AuditLog::new(path.with_file_name(named), options)
        .with_alert(alert.clone());
    broker.with_audit_log(Some(log)).with_alert_command(alert)
}

/// Reloads on every SIGHUP until aborted.
async fn reload_on_hangup(app: App, reload: Arc<Reload>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("cannot watch SIGHUP, reloads are off: {e}");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        let old = app.live();
        let ctx = broker_core::RequestContext::new();
        let reload = reload.clone();
        let loaded = tokio::task::spawn_blocking(move || reload())
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("the reload panicked: {e}"))));
        let loaded = loaded.and_then(|(broker, config)| {
            let broker = with_replica_audit(broker, &config);
            // The held audit log (its lock, writer and chain) carries over when its path does;
            // a new path is held now, or the reload fails.
            let path = |b: &Broker| b.audit_log().map(|l| l.path().to_path_buf());
            if path(&broker) == path(&old.broker) {
                Ok((
                    broker.with_shared_audit_log(old.broker.shared_audit_log()),
                    config,
                ))
            } else {
                if let Some(log) = broker.audit_log() {
                    log.hold()?;
                }
                Ok((broker, config))
            }
        });
        match loaded {
            Ok((broker, config)) => {
                if config.listen != old.config.listen
                    || config.tls != old.config.tls
                    || config.admin_listen != old.config.admin_listen
                {
                    tracing::warn!("listener settings changed: they take effect on a restart");
                }
                let broker = Arc::new(broker);
                app.replace(Live {
                    broker: broker.clone(),
                    config: Arc::new(config),
                });
                // Recorded once in force: a request that sees the record gets the new config.
                if let Err(e) = broker.record_notice(&ctx, "config_reloaded", "on SIGHUP") {
                    tracing::error!("cannot record the reload in the audit log: {e}");
                }
                app.metrics.reloaded(true);
                tracing::info!("config and policy reloaded");
            }
            Err(e) => {
                app.metrics.reloaded(false);
                tracing::error!("reload failed, the old config stays in force: {e}");
                let detail = format!("the old config stays in force: {e}");
                if let Err(e) = old
                    .broker
                    .record_notice(&ctx, "config_reload_failed", &detail)
                {
                    tracing::error!("cannot record the failed reload in the audit log: {e}");
                }
            }
        }
    }
}
