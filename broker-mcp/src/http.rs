//! `broker mcp --listen ADDR`: MCP over streamable HTTP, on loopback, every request with a
//! bearer token verified by [`JwtVerifier`] (`serve.jwt`, as for `broker serve`).
//!
//! - Only loopback addresses are accepted: the listener is for agents on this machine.
//! - `Host` must be a loopback name (DNS rebinding) and a request carrying `Origin` is refused
//!   (a browser page); both checks are the SDK's.
//! - A request without a valid `Authorization: Bearer <JWT>` gets 401 (503 when the key set
//!   cannot be fetched) and an audit record; the token's agent id, tenant and attributes are
//!   the caller's identity for policy and the audit log.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use broker_core::audit::{EventKind, Severity};
use broker_core::{Broker, Error, RequestContext, Result};
use broker_serve::jwt::{JwtSettings, JwtVerifier};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;

use crate::server::{BrokerMcp, Identity};

/// The path the MCP endpoint is served on.
pub const MCP_PATH: &str = "/mcp";

/// Options for [`serve_http`].
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The address to listen on; must be loopback.
    pub listen: SocketAddr,
}

/// `serve:` read only for its `jwt` key (the rest is the daemon's business).
#[derive(Debug, Default, Deserialize)]
struct ServeJwt {
    #[serde(default)]
    jwt: Option<JwtSettings>,
}

/// The token verifier of `serve.jwt`, which must be set, with a policy beside it.
fn verifier(broker: &Broker) -> Result<JwtVerifier> {
    let settings = match &broker.config().serve {
        Some(section) => section.parse::<Option<ServeJwt>>()?.unwrap_or_default().jwt,
        None => None,
    };
    let settings = settings.ok_or_else(|| {
        Error::invalid_config("`broker mcp --listen` needs bearer-token identity: `serve.jwt` is not set")
            .with_hint("configure `serve.jwt` (issuer, audience, jwks_file or jwks_url; see docs/serve.md), or use `broker mcp` over stdio")
    })?;
    // The issuer vouches for callers nobody listed one by one: without a policy each of them
    // would get every declared credential (as `broker serve` refuses too).
    if broker.config().policy.is_none() {
        return Err(Error::invalid_config(
            "`broker mcp --listen` accepts any token `serve.jwt`'s issuer signs for the audience, and without a policy file each caller would get every credential",
        )
        .with_hint("add `policy: FILE.cedar` that says which principals may have what (docs/serve.md, Identity)"));
    }
    JwtVerifier::new(settings, broker.config().base_dir())
}

struct Gate {
    broker: Arc<Broker>,
    verifier: JwtVerifier,
}

/// Serves MCP on `options.listen` until `shutdown` completes. Calls `ready` with the bound
/// address once listening (port 0 picks a free port).
pub async fn serve_http(
    broker: Arc<Broker>,
    options: HttpOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if !options.listen.ip().is_loopback() {
        return Err(Error::invalid_config(format!(
            "`broker mcp --listen {}`: only loopback addresses are accepted",
            options.listen
        ))
        .with_hint("listen on 127.0.0.1:PORT or [::1]:PORT"));
    }
    let verifier = verifier(&broker)?;
    // Validate the config once now, so a bad `mcp:` section fails at start, not per session.
    BrokerMcp::per_request(Arc::clone(&broker))?;
    let factory_broker = Arc::clone(&broker);
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(["localhost", "127.0.0.1", "::1", "[::1]"])
        .enforce_origin_validation();
    let service = StreamableHttpService::new(
        move || {
            BrokerMcp::per_request(Arc::clone(&factory_broker))
                .map_err(|e| std::io::Error::other(e.to_string()))
        },
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let gate = Arc::new(Gate {
        broker: Arc::clone(&broker),
        verifier,
    });
    let app = axum::Router::new()
        .nest_service(MCP_PATH, service)
        .layer(axum::middleware::from_fn_with_state(gate, authenticate));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", options.listen), &e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("cannot read the bound address", &e))?;
    tracing::info!(address = %bound, "MCP over streamable HTTP at http://{bound}{MCP_PATH}");
    ready(bound);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("the MCP HTTP server failed", &e))
}

/// Verifies the bearer token and puts the caller's [`Identity`] in the request's extensions.
async fn authenticate(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return refuse(
            &gate.broker,
            StatusCode::UNAUTHORIZED,
            "token_missing",
            "send `Authorization: Bearer <JWT>`",
        )
        .await;
    };
    match gate.verifier.verify(token).await {
        Ok(verified) => {
            let identity = Identity {
                described: format!("{} via mcp http", verified.describe()),
                agent: Some(verified.agent),
                tenant: verified.tenant,
                method: Some("jwt".into()),
                attributes: verified.attributes,
            };
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(refusal) => {
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            refuse(&gate.broker, status, refusal.kind, &refusal.message).await
        }
    }
}

async fn refuse(broker: &Broker, status: StatusCode, kind: &str, message: &str) -> Response {
    let context = RequestContext {
        identity: Some("mcp http (no verified identity)".into()),
        ..RequestContext::new()
    };
    let mut event = broker.context_event(EventKind::Notice, Severity::Warning, &context);
    event.outcome = Some("mcp_token_refused".into());
    event.decision = Some("denied".into());
    event.reason = Some(format!("{kind}: {message}"));
    if let Err(e) = broker.record_async(&event).await {
        tracing::error!("cannot record a refused MCP request in the audit log: {e}");
    }
    let body = serde_json::json!({ "error": kind, "message": message }).to_string();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
