//! `broker run` in placeholder mode: [`RunProxy::start`] swaps each `proxy:` credential's
//! value for a placeholder in what the child gets, starts the proxy with the values, and
//! gives the child the proxy and the run's CA through its environment (never the broker's).
//!
//! The child's variables: `HTTPS_PROXY`, `HTTP_PROXY` (and lower-case; the URL carries the
//! run's token), `NO_PROXY` empty (loopback goes through the proxy too),
//! `NODE_USE_ENV_PROXY=1`, and a CA bundle — the system's roots plus the run's CA, 0600 in a
//! scratch dir of its own — in `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`,
//! `CURL_CA_BUNDLE` and `GIT_SSL_CAINFO`.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use broker_core::audit::{EventKind, Severity};
use broker_core::retry::AlertCommand;
use broker_core::scratch::ScratchDir;
use broker_core::{
    Broker, Delivery, DeliveryKind, Error, RequestContext, Result, SecretValue, Source,
};

use crate::audit::LogAudit;
use crate::net::{SystemResolver, TcpDialer};
use crate::server::{ProxiedCredential, Proxy, ProxyOptions};
use crate::settings::{EgressPolicy, Rules};

/// How long the run's CA certificate is valid. Its key lives only in the broker's memory and
/// dies with the run; the bundle naming it is wiped when the run ends.
pub const CA_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The variables that point a child at the CA bundle.
pub const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

/// The proxy of one `broker run`. Dropping it stops the proxy and wipes the CA bundle.
pub struct RunProxy {
    proxy: Proxy,
    env: Vec<(String, OsString)>,
    /// Source variables of `env:` references in placeholder mode, removed from the child.
    remove: Vec<String>,
    credentials: Vec<String>,
    /// The proxy's unix socket, for `broker run --isolate` ([`RunProxy::start_isolated`]).
    unix_socket: Option<std::path::PathBuf>,
    /// The CA bundle's scratch dir (and the unix socket's), wiped on drop.
    _proxy_env: ProxyEnv,
}

impl std::fmt::Debug for RunProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunProxy")
            .field("addr", &self.proxy.addr())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl RunProxy {
    /// Starts the proxy for `delivery` when any delivered credential has `proxy:` (else
    /// `None`): env credentials get their placeholder through [`RunProxy::apply_to_tokio`]
    /// (call it after [`Delivery::apply_to_tokio`]), file credentials have their file rewritten
    /// with it now. The source variable of an `env:NAME` credential in placeholder mode is
    /// removed from the child's environment.
    ///
    /// Refused: a `proxy:` credential that brings companion values (they would reach the child
    /// as they are), and a minted `kind: file` one (its re-mint would write the value to the
    /// file).
    pub async fn start(
        broker: &Broker,
        delivery: &Delivery,
        context: &RequestContext,
    ) -> Result<Option<RunProxy>> {
        Self::start_with(broker, delivery, context, false).await
    }

    /// [`RunProxy::start`] for `broker run --isolate`: the proxy starts even when no
    /// credential has `proxy:` (the child's only way out is the proxy, whose egress policy
    /// applies), and it is also served on a unix socket in the proxy's own 0700 scratch dir
    /// ([`RunProxy::unix_socket`]), which the isolated child's relay connects to.
    pub async fn start_isolated(
        broker: &Broker,
        delivery: &Delivery,
        context: &RequestContext,
    ) -> Result<RunProxy> {
        Self::start_with(broker, delivery, context, true)
            .await?
            .ok_or_else(|| Error::internal("the isolated run's proxy did not start"))
    }

    async fn start_with(
        broker: &Broker,
        delivery: &Delivery,
        context: &RequestContext,
        isolated: bool,
    ) -> Result<Option<RunProxy>> {
        let config = broker.config();
        let mut credentials = Vec::new();
        let mut env: Vec<(String, OsString)> = Vec::new();
        let mut remove = Vec::new();
        for spec in &config.credentials {
            let Some(rules) = Rules::of(spec)? else {
                continue;
            };
            let values: Vec<&SecretValue> = delivery
                .secrets()
                .iter()
                .filter(|(n, _)| *n == spec.name)
                .map(|(_, v)| v)
                .collect();
            let Some(value) = values.first() else {
                continue; // not part of this run
            };
            // The proxy hosts are destinations like any other: with egress off, or their badge
            // not allowed, the run is refused before anything starts.
            for dest in broker_core::egress::proxy_destinations(
                spec.proxy.as_ref(),
                &config.egress.self_hosted,
            ) {
                broker
                    .gate_destination(&dest)
                    .map_err(|e| e.with_credential(&spec.name))?;
            }
            let refuse = |msg: &str| {
                Error::invalid_config(format!("`proxy`: {msg}")).with_credential(&spec.name)
            };
            if values.len() > 1 {
                return Err(refuse(
                    "this credential brings companion values, which placeholder mode cannot hide yet",
                ));
            }
            if spec.source == Source::Mint && spec.kind == DeliveryKind::File {
                return Err(refuse(
                    "a minted `kind: file` credential cannot use placeholder mode yet (its re-mint rewrites the file)",
                ));
            }
            let placeholder = crate::placeholder::generate(&rules.placeholder);
            // An `env:NAME` value is in the broker's own environment, which the child
            // inherits: take NAME out, or the child would hold the value after all.
            if spec.reference.scheme() == "env" {
                remove.push(spec.reference.target().to_string());
            }
            match spec.kind {
                DeliveryKind::Env => {
                    env.push((spec.env_var.clone(), OsString::from(&placeholder)));
                }
                DeliveryKind::File => {
                    let scratch = delivery.scratch().ok_or_else(|| {
                        Error::internal("a file credential without a scratch dir")
                    })?;
                    scratch
                        .replace_secret(&spec.name, &SecretValue::from(placeholder.clone()))
                        .map_err(|e| e.with_credential(&spec.name))?;
                }
            }
            credentials.push(ProxiedCredential {
                name: spec.name.clone(),
                rules,
                placeholder,
                value: (*value).clone(),
            });
        }
        if credentials.is_empty() && !isolated {
            return Ok(None);
        }
        let names: Vec<String> = credentials.iter().map(|c| c.name.clone()).collect();
        let policy = EgressPolicy::parse(config.egress.proxy.as_ref(), config.base_dir())?;
        let template = broker.context_event(EventKind::Decision, Severity::Info, context);
        let alert = config
            .alert
            .as_ref()
            .map(|a| AlertCommand::new(a.command.clone()));
        let audit = Arc::new(LogAudit::new(broker.shared_audit_log(), alert, template));
        let proxy = Proxy::start(ProxyOptions {
            credentials,
            policy,
            resolver: Arc::new(SystemResolver),
            dialer: Arc::new(TcpDialer),
            audit,
            also_redact: delivery.secrets().to_vec(),
            validity: CA_VALIDITY,
            admit: None,
        })
        .await?;
        let proxy_env = ProxyEnv::new(&proxy.url(), proxy.ca_pem())?;
        let unix_socket = if isolated {
            let path = proxy_env.scratch.path().join("proxy.sock");
            proxy.listen_unix(&path)?;
            Some(path)
        } else {
            None
        };
        env.extend(proxy_env.env.iter().cloned());
        let run = RunProxy {
            proxy,
            env,
            remove,
            credentials: names,
            unix_socket,
            _proxy_env: proxy_env,
        };
        tracing::debug!(credentials = ?run.credentials, addr = %run.proxy.addr(), "proxy started for the run");
        Ok(Some(run))
    }

    /// The credentials in placeholder mode.
    pub fn credentials(&self) -> &[String] {
        &self.credentials
    }

    /// The unix socket the proxy also listens on (only for [`RunProxy::start_isolated`]):
    /// in a 0700 directory of the broker's user, removed with the run.
    pub fn unix_socket(&self) -> Option<&std::path::Path> {
        self.unix_socket.as_deref()
    }

    /// The proxy.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Sets the placeholders and the proxy variables in `cmd` (after
    /// [`Delivery::apply_to_tokio`], whose values for these variables it overrides).
    pub fn apply_to_tokio(&self, cmd: &mut tokio::process::Command) {
        for k in &self.remove {
            cmd.env_remove(k);
        }
        for (k, v) in self.vars() {
            cmd.env(k, v);
        }
    }

    /// [`RunProxy::apply_to_tokio`] for a [`std::process::Command`].
    pub fn apply_to(&self, cmd: &mut std::process::Command) {
        for k in &self.remove {
            cmd.env_remove(k);
        }
        for (k, v) in self.vars() {
            cmd.env(k, v);
        }
    }

    fn vars(&self) -> impl Iterator<Item = (&str, &std::ffi::OsStr)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_os_str()))
    }
}

/// What a child needs to use a proxy: `HTTPS_PROXY` and friends (the URL carries the run's
/// token), `NO_PROXY` empty, `NODE_USE_ENV_PROXY=1`, and a CA bundle — the system's roots plus
/// the run's CA, 0600 in a scratch dir of its own, wiped on drop — in [`CA_VARS`]. Part of
/// every [`RunProxy`]; on its own for `broker run --from` with placeholder-mode credentials,
/// whose proxy runs in the daemon (the values never reach this machine's broker).
pub struct ProxyEnv {
    env: Vec<(String, OsString)>,
    scratch: ScratchDir,
}

impl std::fmt::Debug for ProxyEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyEnv").finish_non_exhaustive()
    }
}

impl ProxyEnv {
    /// The variables for the proxy at `url` (`http://broker:TOKEN@HOST:PORT`) whose run CA
    /// is `ca_pem`.
    pub fn new(url: &str, ca_pem: &str) -> Result<ProxyEnv> {
        let scratch = ScratchDir::create()?;
        let bundle =
            scratch.write_secret("ca-bundle.pem", &SecretValue::from(ca_bundle(ca_pem)))?;
        let mut env = Vec::new();
        for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            env.push((var.to_string(), OsString::from(url)));
        }
        env.push(("NO_PROXY".into(), OsString::new()));
        env.push(("no_proxy".into(), OsString::new()));
        env.push(("NODE_USE_ENV_PROXY".into(), OsString::from("1")));
        for var in CA_VARS {
            env.push((var.to_string(), bundle.clone().into_os_string()));
        }
        Ok(ProxyEnv { env, scratch })
    }

    /// Sets the proxy variables in `cmd` (after [`Delivery::apply_to_tokio`]).
    pub fn apply_to_tokio(&self, cmd: &mut tokio::process::Command) {
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }
}

/// The system's roots (as rustls finds them) and the run's CA, PEM.
fn ca_bundle(run_ca: &str) -> String {
    let mut out = String::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.push_str(run_ca);
    out
}
