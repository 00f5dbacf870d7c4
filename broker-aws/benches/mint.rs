//! Cold mint through the broker (new provider: SDK config, client, AssumeRole with a session
//! policy) against a bare SDK AssumeRole call on a ready client, both against a local moto.
//! `cargo bench -p broker-aws` (skips when moto is not installed).
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use broker_aws::{AwsProvider, Settings};
use broker_core::testkit::Moto;
use broker_core::{CredentialProvider, Request, RequestContext};
use criterion::{Criterion, criterion_group, criterion_main};

const ROLE: &str = "arn:aws:iam::123456789012:role/bench";

fn bench(c: &mut Criterion) {
    let Some(moto) = Moto::start("moto-bench") else {
        return;
    };
    let url = moto.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = broker_core::Registry::new();
    broker_aws::register(&mut registry).unwrap();
    let config = format!(
        "credentials:\n  bench: {{ mint: \"aws-sts://{ROLE}\", ttl: 15m, scope: {{ actions: [\"s3:GetObject\"], resources: [\"arn:aws:s3:::bucket-a/*\"] }} }}\n"
    );
    let config =
        broker_core::Config::from_str(&config, &dir.path().join(".broker.yml"), &registry).unwrap();
    let spec = config.credentials[0].clone();
    let settings = Settings {
        region: Some("us-east-1".into()),
        endpoint_url: Some(url.clone()),
        // moto without IAM enforcement takes any keys; these are fake.
        access_key_id_ref: Some("env:UNUSED".into()),
        secret_access_key_ref: Some("env:UNUSED".into()),
        ..Settings::default()
    };
    struct Fake;
    #[broker_core::async_trait]
    impl broker_core::ResolveRef for Fake {
        async fn resolve_ref(
            &self,
            _: &broker_core::Reference,
            _: &str,
        ) -> broker_core::Result<broker_core::SecretValue> {
            Ok(broker_core::SecretValue::copy_from(b"fake-bench-key"))
        }
    }

    let mut group = c.benchmark_group("aws-sts");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("broker cold mint", |b| {
        b.to_async(&rt).iter(|| async {
            let provider = AwsProvider::new(settings.clone(), dir.path()).unwrap();
            let ctx = RequestContext::new();
            let request = Request::new(&spec.reference, dir.path(), &ctx)
                .with_terms(spec.terms())
                .with_nested(&Fake);
            provider.mint(&request).await.unwrap()
        })
    });
    let sdk = rt.block_on(
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&url)
            .credentials_provider(aws_sdk_sts::config::Credentials::new(
                "AKIAFAKEBENCH",
                "fake",
                None,
                None,
                "bench",
            ))
            .load(),
    );
    let client = aws_sdk_sts::Client::new(&sdk);
    group.bench_function("bare SDK AssumeRole", |b| {
        b.to_async(&rt).iter(|| async {
            client
                .assume_role()
                .role_arn(ROLE)
                .role_session_name("bench")
                .duration_seconds(900)
                .send()
                .await
                .unwrap()
        })
    });
    group.finish();
    drop(moto);
}

criterion_group!(benches, bench);
criterion_main!(benches);
