//! The unix socket listener and the accept loop.

use std::future::Future;
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker_core::{Broker, Error, Result};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;

use crate::api::{App, Peer, router};
use crate::config::ServeConfig;
use crate::state::{MemoryState, State};

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

/// How often the state forgets full token buckets and expired leases.
const SWEEP: Duration = Duration::from_secs(60);

/// Binds the unix socket at `path` with `mode`: the parent directory is created (0700) if
/// missing; a stale socket (nothing accepts on it) is replaced; a live one, or a file that is
/// not a socket, is refused. The socket is created under umask 0177, then set to `mode`.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener> {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), &e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("socket", &e))?;
    UnixListener::from_std(listener).map_err(|e| Error::io("socket", &e))
}

/// The daemon: a broker, its `serve:` settings and its [`State`].
pub struct Daemon {
    app: App,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("listen", &self.app.config.listen)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// A daemon for `broker` with `config` and in-memory state.
    pub fn new(broker: Broker, config: ServeConfig) -> Daemon {
        Daemon {
            app: App {
                broker: Arc::new(broker),
                state: Arc::new(MemoryState::new(config.limits)),
                config: Arc::new(config),
                inflight: Arc::default(),
            },
        }
    }

    /// Replaces the state store.
    #[must_use]
    pub fn with_state(mut self, state: Arc<dyn State>) -> Daemon {
        self.app.state = state;
        self
    }

    /// The socket path from the config.
    pub fn socket_path(&self) -> &Path {
        &self.app.config.listen
    }

    /// Binds the configured socket and serves until `shutdown` completes; then stops
    /// accepting, lets in-flight requests finish (up to 30 s) and removes the socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.require_audit_log()?;
        let path: PathBuf = self.app.config.listen.clone();
        let listener = bind_socket(&path, self.app.config.mode)?;
        tracing::info!(socket = %path.display(), "serving");
        let result = self.serve(listener, shutdown).await;
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != IoKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
        result
    }

    /// Refuses to serve without an audit log unless the config turns it off in so many words
    /// (`audit: { enabled: false }`).
    pub fn require_audit_log(&self) -> Result<()> {
        let broker = &self.app.broker;
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

    /// Serves connections from `listener` until `shutdown` completes, then drains. Refuses
    /// to start without an audit log (see [`Daemon::require_audit_log`]).
    pub async fn serve(
        self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        self.require_audit_log()?;
        let router = router(self.app.clone());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.app.config.header_timeout)
            .keep_alive(true);
        tokio::pin!(shutdown);
        let state = self.app.state.clone();
        let sweeper = tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = state.sweep().await {
                    tracing::warn!("sweeping the daemon's state failed: {e}");
                }
            }
        });
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let peer = match stream.peer_cred() {
                Ok(c) => Peer {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                },
                Err(e) => {
                    tracing::warn!("no peer credentials on a connection, dropped: {e}");
                    continue;
                }
            };
            tracing::debug!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "connection");
            let router = router.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(peer);
                let mut router = router.clone();
                async move { tower::Service::call(&mut router, req.map(axum::body::Body::new)).await }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("connection ended: {e}");
                }
            });
        }
        drop(listener);
        sweeper.abort();
        tracing::info!("shutting down: finishing in-flight requests");
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("in-flight requests still running after {DRAIN:?}; stopping anyway");
        }
        Ok(())
    }
}
