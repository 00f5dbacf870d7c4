//! Resolve through the provider vs a bare HTTP GET of the same KV v2 secret on the same
//! OpenBao dev server. Skips (prints why) when `bao` is not installed.
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use broker_core::testkit::OpenBao;
use broker_core::{
    CredentialProvider, Reference, Request, RequestContext, ResolveRef, Result, SecretValue,
    async_trait,
};
use broker_vault::{Auth, Settings, VaultProvider};
use criterion::{Criterion, criterion_group, criterion_main};

struct Root;

#[async_trait]
impl ResolveRef for Root {
    async fn resolve_ref(&self, _: &Reference, _: &str) -> Result<SecretValue> {
        Ok(SecretValue::copy_from(b"root"))
    }
}

fn bench(c: &mut Criterion) {
    let Some(bao) = OpenBao::start("root", "bao-bench") else {
        return;
    };
    bao.bao(&["kv", "put", "secret/bench", "token=bench-value"]);
    let url = bao.url();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let provider = VaultProvider::new(
        Settings {
            address: Some(url.clone()),
            auth: Auth::Token {
                token_ref: Some("env:UNUSED".into()),
            },
            ..Settings::default()
        },
        bao.home.path(),
    )
    .unwrap();
    let reference: Reference = "vault:secret/bench#token".parse().unwrap();
    let base = bao.home.path().to_path_buf();
    let provider = Arc::new(provider);

    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let bare_url = format!("{url}/v1/secret/data/bench");

    let mut group = c.benchmark_group("vault");
    group.bench_function("resolve_via_provider", |b| {
        b.to_async(&rt).iter(|| async {
            let ctx = RequestContext::new();
            let req = Request::new(&reference, &base, &ctx).with_nested(&Root);
            let c = provider.resolve(&req).await.unwrap();
            assert_eq!(c.value().expose(), b"bench-value");
        })
    });
    group.bench_function("bare_http_get", |b| {
        b.to_async(&rt).iter(|| async {
            let body = http
                .get(&bare_url)
                .header("X-Vault-Token", "root")
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["data"]["data"]["token"], "bench-value");
        })
    });
    group.finish();
    drop(bao);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
