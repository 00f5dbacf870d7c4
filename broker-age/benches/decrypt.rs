//! age-decrypt 1 MiB (binary and armored) with an X25519 identity, through the provider.
#![allow(clippy::unwrap_used, missing_docs)]

use age::secrecy::ExposeSecret;
use broker_age::{AgeProvider, IdentityList, IdentitySpec, Settings};
use broker_core::{CredentialProvider, Reference, Request, RequestContext};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn decrypt(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    std::fs::write(
        dir.path().join("key.txt"),
        identity.to_string().expose_secret(),
    )
    .unwrap();
    let plaintext: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let recipient = identity.to_public();
    std::fs::write(
        dir.path().join("bin.age"),
        age::encrypt(&recipient, &plaintext).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("armored.age"),
        age::encrypt_and_armor(&recipient, &plaintext).unwrap(),
    )
    .unwrap();
    let provider = AgeProvider::new(Settings {
        identity: IdentityList(vec![IdentitySpec::Path("key.txt".into())]),
        ..Settings::default()
    })
    .unwrap()
    .with_environment(None, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("age");
    group.throughput(Throughput::Bytes(plaintext.len() as u64));
    group.sample_size(20);
    for name in ["bin", "armored"] {
        let reference: Reference = format!("age:{name}.age").parse().unwrap();
        group.bench_function(format!("decrypt_1MiB_{name}"), |b| {
            b.iter(|| {
                let ctx = RequestContext::new();
                let req = Request::new(&reference, dir.path(), &ctx);
                let got = rt.block_on(provider.resolve(&req)).unwrap();
                assert_eq!(got.value().len(), plaintext.len());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decrypt);
criterion_main!(benches);
