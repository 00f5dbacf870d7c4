//! The admin/metrics listener (`serve.admin.listen`): `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (serving, and the state store answers).
//! Nothing here names an agent, a credential or a value; it takes no identity, so bind it
//! to loopback or a network only the monitoring system reaches.

use std::time::Duration;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::api::App;

/// Serves the admin routes on `listener` until aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    app: App,
    http: hyper::server::conn::http1::Builder,
) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .with_state(app);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut router = router.clone();
            async move { tower::Service::call(&mut router, req.map(axum::body::Body::new)).await }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

async fn metrics(AxState(app): AxState<App>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn readyz(AxState(app): AxState<App>) -> Response {
    if !app.metrics.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not serving\n").into_response();
    }
    match app.state.is_blocked("").await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!("readyz: the state store does not answer: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "state store unavailable\n").into_response()
        }
    }
}
