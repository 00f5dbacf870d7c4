//! Decrypting one value of a 1,000-key sops YAML (MAC verified over all 1,000 values). The
//! file is written at bench time by the real sops 3.11.0 binary; no ciphertext is hand-written.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};

use broker_core::{CredentialProvider, Reference, Request, RequestContext};
use broker_sops::{Settings, SopsProvider};
use criterion::{Criterion, criterion_group, criterion_main};

const RECIPIENT: &str = "age1lzd99uklcjnc0e7d860axevet2cz99ce9pq6tzuzd05l5nr28ams36nvun";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn thousand_key_file(sops: &Path, dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&format!("key_{i:04}: value-{i:04}-0123456789abcdef\n"));
    }
    let plain = dir.join("plain.yaml");
    std::fs::write(&plain, text).unwrap();
    let out = std::process::Command::new(sops)
        .args(["--disable-version-check", "encrypt", "--age", RECIPIENT])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("bench.yaml");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

fn bench(c: &mut Criterion) {
    let Some(sops) = broker_core::testkit::require_peer("sops") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = thousand_key_file(&sops, dir.path());
    let keys = fixtures().join("keys/age-keys.txt");
    let provider = SopsProvider::new(Settings::default(), dir.path()).with_env(
        [("SOPS_AGE_KEY_FILE".to_string(), keys.display().to_string())]
            .into_iter()
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let reference: Reference = format!("sops:{}#key_0500", path.display()).parse().unwrap();
    c.bench_function("sops decrypt 1000-key yaml", |b| {
        b.iter(|| {
            let ctx = RequestContext::new();
            let req = Request::new(&reference, dir.path(), &ctx);
            rt.block_on(provider.resolve(&req)).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
