//! `azurekv://` resolve through the provider vs the bare SDK call it wraps
//! (`SecretClient::get_secret` with a `ClientSecretCredential`), both against the HTTPS fake
//! on 127.0.0.1 with tokens already cached: the provider's own cost (reference parsing, the
//! attribute checks, zeroizing parse, `Credential`) on top of one HTTPS round trip.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/support/fake.rs"]
mod fake;

use std::net::SocketAddr;
use std::sync::Arc;

use azure_core::credentials::Secret;
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use broker_azure::{Auth, AzureProvider, Method, Settings};
use broker_core::{
    CredentialProvider, Reference, Request, RequestContext, ResolveRef, SecretValue, async_trait,
};
use criterion::{Criterion, criterion_group, criterion_main};
use fake::{BROKER_APP, FakeAzure, TENANT};

const SECRET: &str = "bench-client-secret";

struct Keys;

#[async_trait]
impl ResolveRef for Keys {
    async fn resolve_ref(&self, _: &Reference, _: &str) -> broker_core::Result<SecretValue> {
        Ok(SecretValue::copy_from(SECRET.as_bytes()))
    }
}

fn bare_client(fake: &FakeAzure) -> SecretClient {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(&fake.ca_path).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let local = SocketAddr::from(([127, 0, 0, 1], fake.port));
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .resolve("login.localhost", local)
        .resolve("kv1.vault.localhost", local)
        .build()
        .unwrap();
    let options = || {
        let mut o = ClientOptions {
            transport: Some(Transport::new(Arc::new(http.clone()))),
            ..ClientOptions::default()
        };
        let mut custom = azure_core::cloud::CustomConfiguration::default();
        custom.authority_host = fake.authority();
        o.cloud = Some(Arc::new(custom.into()));
        o
    };
    let credential = ClientSecretCredential::new(
        TENANT,
        BROKER_APP.into(),
        Secret::new(SECRET),
        Some(ClientSecretCredentialOptions {
            client_options: options(),
        }),
    )
    .unwrap();
    SecretClient::new(
        &fake.vault_url("kv1"),
        credential,
        Some(SecretClientOptions {
            client_options: options(),
            ..SecretClientOptions::default()
        }),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = FakeAzure::start(&["kv1"]);
    fake.app(BROKER_APP, Some(SECRET), false, &["get"]);
    fake.put("kv1", "plain", "bench-value", None);
    let provider = AzureProvider::new(
        Settings {
            auth: Some(Auth {
                method: Method::ClientSecret,
                tenant_id: Some(TENANT.into()),
                client_id: Some(BROKER_APP.into()),
                client_secret_ref: Some("env:BENCH_SECRET".into()),
                token_file: None,
            }),
            authority_host: Some(fake.authority()),
            vault_suffix: Some(fake.vault_suffix()),
            ca_cert: Some(fake.ca_path.display().to_string()),
        },
        fake.dir.path(),
    )
    .unwrap();
    let reference: Reference = "azurekv://kv1/plain".parse().unwrap();
    let base = std::env::temp_dir();
    let ctx = RequestContext::new();
    let resolve = || async {
        provider
            .resolve(&Request::new(&reference, &base, &ctx).with_nested(&Keys))
            .await
            .unwrap()
    };
    let bare = bare_client(&fake);
    // Warm both: challenge answered, tokens cached, connections open.
    rt.block_on(resolve());
    rt.block_on(bare.get_secret("plain", None)).unwrap();

    let mut group = c.benchmark_group("azurekv");
    group.bench_function("provider resolve", |b| b.to_async(&rt).iter(resolve));
    group.bench_function("bare SDK get_secret", |b| {
        b.to_async(&rt).iter(|| async {
            bare.get_secret("plain", None)
                .await
                .unwrap()
                .into_model()
                .unwrap()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
