//! `gcp-sm://` resolve through the provider (warm: its client is built on the first call)
//! against a bare `AccessSecretVersion` call on a ready Google client, both against a local
//! drongo. `cargo bench -p broker-gcp` (skips when drongo is not installed).
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::time::Duration;

use broker_core::testkit::Drongo;
use broker_core::{CredentialProvider, Reference, Request, RequestContext};
use broker_gcp::{Auth, GcpProvider, Settings};
use criterion::{Criterion, criterion_group, criterion_main};
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::{
    Replication, Secret, SecretPayload, replication::Automatic,
};

fn bench(c: &mut Criterion) {
    let Some(drongo) = Drongo::start("drongo-bench") else {
        return;
    };
    drongo.reset();
    let url = drongo.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let client = SecretManagerService::builder()
            .with_endpoint(&url)
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
            .build()
            .await
            .unwrap();
        client
            .create_secret()
            .set_parent("projects/bench-project")
            .set_secret_id("bench")
            .set_secret(
                Secret::new().set_replication(Replication::new().set_automatic(Automatic::new())),
            )
            .send()
            .await
            .unwrap();
        client
            .add_secret_version()
            .set_parent("projects/bench-project/secrets/bench")
            .set_payload(SecretPayload::new().set_data(br#"{"token":"bench-value"}"#.to_vec()))
            .send()
            .await
            .unwrap();
        client
    });
    let provider = GcpProvider::new(Settings {
        endpoint: Some(url.clone()),
        auth: Some(Auth::None),
        ..Settings::default()
    })
    .unwrap();
    let reference: Reference = "gcp-sm://bench-project/bench#token".parse().unwrap();
    let dir = std::env::temp_dir();

    let mut group = c.benchmark_group("gcp-sm");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("broker resolve (#field)", |b| {
        b.to_async(&rt).iter(|| async {
            let ctx = RequestContext::new();
            provider
                .resolve(&Request::new(&reference, &dir, &ctx))
                .await
                .unwrap()
        })
    });
    group.bench_function("bare AccessSecretVersion", |b| {
        b.to_async(&rt).iter(|| async {
            client
                .access_secret_version()
                .set_name("projects/bench-project/secrets/bench/versions/latest")
                .send()
                .await
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
