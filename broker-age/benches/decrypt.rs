//! age-decrypt 1 MiB (binary and armored) with an X25519 identity, through the provider; and
//! 20 small files (32-byte values, as `broker run` with 20 age secrets), through the provider
//! and, to compare the X25519 identities, through the age crate's `Decryptor` with the age
//! crate's identity and with this crate's (`src/x25519.rs`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Read;

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
    let (provider, rt) = provider_and_runtime();

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

/// A provider reading the identity `key.txt` (relative to each request's base dir), and a
/// runtime to drive it.
fn provider_and_runtime() -> (AgeProvider, tokio::runtime::Runtime) {
    let provider = AgeProvider::new(Settings {
        identity: IdentityList(vec![IdentitySpec::Path("key.txt".into())]),
        ..Settings::default()
    })
    .unwrap()
    .with_environment(None, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    (provider, rt)
}

fn decrypt_small(c: &mut Criterion) {
    const FILES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    std::fs::write(
        dir.path().join("key.txt"),
        identity.to_string().expose_secret(),
    )
    .unwrap();
    let recipient = identity.to_public();
    let files: Vec<Vec<u8>> = (0..FILES)
        .map(|i| {
            let value = format!("{i:02}-secret-value-of-32-bytes-xxxx");
            assert_eq!(value.len(), 32);
            let file = age::encrypt_and_armor(&recipient, value.as_bytes()).unwrap();
            std::fs::write(dir.path().join(format!("s{i}.age")), &file).unwrap();
            file.into_bytes()
        })
        .collect();
    let (provider, rt) = provider_and_runtime();
    let references: Vec<Reference> = (0..FILES)
        .map(|i| format!("age:s{i}.age").parse().unwrap())
        .collect();
    let ours = broker_age::fuzzing::x25519_identity(&identity).unwrap();

    let mut group = c.benchmark_group("age");
    group.throughput(Throughput::Elements(FILES as u64));
    group.sample_size(30);
    // One request context for the 20, as a run resolves them.
    group.bench_function("decrypt_20x32B_provider", |b| {
        b.iter(|| {
            let ctx = RequestContext::new();
            for reference in &references {
                let req = Request::new(reference, dir.path(), &ctx);
                let got = rt.block_on(provider.resolve(&req)).unwrap();
                assert_eq!(got.value().len(), 32);
            }
        })
    });
    let open = |file: &[u8], identity: &dyn age::Identity| {
        let reader = age::armor::ArmoredReader::new(file);
        let decryptor = age::Decryptor::new_buffered(reader).unwrap();
        let mut stream = decryptor.decrypt(std::iter::once(identity)).unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 32);
    };
    group.bench_function("decrypt_20x32B_age_x25519_identity", |b| {
        b.iter(|| files.iter().for_each(|f| open(f, &identity)))
    });
    group.bench_function("decrypt_20x32B_broker_x25519_identity", |b| {
        b.iter(|| files.iter().for_each(|f| open(f, &ours)))
    });
    group.finish();
}

criterion_group!(benches, decrypt, decrypt_small);
criterion_main!(benches);
