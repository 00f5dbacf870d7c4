//! Reference parsing and manifest building: the work `broker audit` and config loading do.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use broker_core::{
    BackendContext, Badge, Broker, Capabilities, Config, Credential, CredentialProvider,
    Destination, ProviderDescriptor, Reference, Registry, Request, Result, async_trait,
};
use criterion::{Criterion, criterion_group, criterion_main};

const REFERENCES: &[&str] = &[
    "env:STAGING_API_TOKEN",
    "sops:secrets.enc.yaml#db.replicas[0].password",
    "vault:auth/token/create?policies=a,b&num_uses=2",
    "aws-sm://staging/api?version-stage=AWSPREVIOUS#token",
    "aws-sts://arn:aws:iam::123456789012:role/agent-deploy",
    "gcp-sm://my-project/sa-key/3",
];

struct Fake;

#[async_trait]
impl CredentialProvider for Fake {
    fn egress(&self, r: &Reference, _: &Path) -> Result<Vec<Destination>> {
        Ok(vec![Destination::host(
            format!("https://{}.example.com", r.scheme()),
            Badge::ManagedCloud,
        )])
    }
    async fn resolve(&self, _: &Request<'_>) -> Result<Credential> {
        unreachable!("the manifest never resolves")
    }
}

fn build(_: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    Ok(Arc::new(Fake))
}

static FAKE: ProviderDescriptor = ProviderDescriptor {
    name: "fake",
    schemes: &["env", "vault"],
    capabilities: Capabilities {
        resolve: true,
        mint: true,
        revoke: false,
        rotate: false,
    },
    default_badge: Badge::ManagedCloud,
    credential_options: &[],
    grammar: &[],
    factory: build,
};

fn parse(c: &mut Criterion) {
    c.bench_function("reference/parse (6 forms)", |b| {
        b.iter(|| {
            for r in REFERENCES {
                black_box(r.parse::<Reference>().unwrap());
            }
        })
    });
    let parsed: Vec<Reference> = REFERENCES.iter().map(|r| r.parse().unwrap()).collect();
    c.bench_function("reference/display (6 forms)", |b| {
        b.iter(|| {
            for r in &parsed {
                black_box(r.to_string());
            }
        })
    });
}

fn manifest(c: &mut Criterion) {
    let mut yaml = String::from(
        "egress: { enabled: true, self_hosted: [\"*.corp.example\"] }\ncredentials:\n",
    );
    for i in 0..100 {
        if i % 2 == 0 {
            yaml.push_str(&format!("  c{i}: {{ ref: \"env:TOKEN_{i}\" }}\n"));
        } else {
            yaml.push_str(&format!(
                "  c{i}: {{ ref: \"vault:secret/data/app{i}#url\", kind: file }}\n"
            ));
        }
    }
    let mut registry = Registry::new();
    registry.register(&FAKE).unwrap();
    c.bench_function("config/load (100 credentials)", |b| {
        b.iter(|| {
            black_box(Config::from_str(&yaml, Path::new("/bench/.broker.yml"), &registry).unwrap())
        })
    });
    let config = Config::from_str(&yaml, Path::new("/bench/.broker.yml"), &registry).unwrap();
    let broker = Broker::new(config, registry.clone()).unwrap();
    c.bench_function("manifest/build (100 credentials)", |b| {
        b.iter(|| black_box(broker.manifest().unwrap()))
    });
}

criterion_group!(benches, parse, manifest);
criterion_main!(benches);
