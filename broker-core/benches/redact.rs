//! Redaction throughput: 100 values × every encoding the redactor matches, over log-like
//! text with an occasional match, in 64 KiB writes through a [`RedactStream`]; and the cost of
//! building a redactor for 20 and 100 values (paid by every `broker run` before its child
//! starts).
//!
//! `cargo bench -p broker-core --bench redact`; the figure goes into `docs/performance.md`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use broker_core::SecretValue;
use broker_core::redact::Redactor;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Deterministic pseudo-random tokens (xorshift), 32 characters of a base64url-ish alphabet.
fn values(n: usize) -> Vec<(String, SecretValue)> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_/+";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            let token: Vec<u8> = (0..32)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ALPHABET[(state % ALPHABET.len() as u64) as usize]
                })
                .collect();
            (format!("cred{i}"), SecretValue::new(token))
        })
        .collect()
}

/// About 1 MiB of log lines, with one secret every ~64 KiB.
fn corpus(secrets: &[(String, SecretValue)]) -> Vec<u8> {
    let mut text = Vec::with_capacity(1 << 20);
    let mut i = 0usize;
    while text.len() < (1 << 20) {
        text.extend_from_slice(
            format!(
                "2026-11-02T10:{:02}:{:02}Z INFO request id={i:08x} path=/api/v1/items/{i} status=200 took={}ms\n",
                (i / 60) % 60,
                i % 60,
                i % 997
            )
            .as_bytes(),
        );
        if i.is_multiple_of(600) {
            let (_, v) = &secrets[i % secrets.len()];
            text.extend_from_slice(b"token=");
            text.extend_from_slice(v.expose());
            text.push(b'\n');
        }
        i += 1;
    }
    text
}

fn bench(c: &mut Criterion) {
    let secrets = values(100);
    let redactor = Arc::new(Redactor::new(secrets.iter().map(|(n, v)| (n.as_str(), v))));
    let text = corpus(&secrets);
    let mut group = c.benchmark_group("redact");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function(
        format!("stream_100_values_{}_patterns", redactor.pattern_count()),
        |b| {
            let mut out = Vec::with_capacity(text.len() + 4096);
            b.iter(|| {
                out.clear();
                let mut stream = redactor.stream();
                for chunk in text.chunks(64 * 1024) {
                    stream.push(black_box(chunk), &mut out);
                }
                stream.flush(&mut out);
                black_box(out.len())
            })
        },
    );
    group.bench_function("whole_buffer", |b| {
        b.iter(|| black_box(redactor.redact(black_box(&text)).len()))
    });
    group.finish();

    // What a `broker run` pays before the child starts: building the redactor for its values.
    let mut build = c.benchmark_group("redact_build");
    for n in [20, 100] {
        let secrets = values(n);
        build.bench_function(format!("build_{n}_values"), |b| {
            b.iter(|| {
                let r = Redactor::new(secrets.iter().map(|(n, v)| (n.as_str(), v)));
                black_box(r.pattern_count())
            })
        });
    }
    build.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
