//! Shared helpers for the sops tests.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use broker_core::{CredentialProvider, Reference, Request, RequestContext};
use broker_sops::{Settings, SopsProvider};

/// The committed fixtures dir.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// An environment with only the given variables (no HOME, so no default key locations).
pub fn env(vars: &[(&str, &Path)]) -> BTreeMap<String, String> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect()
}

/// A provider whose only key is the upstream test age identity (via SOPS_AGE_KEY_FILE).
pub fn age_provider() -> SopsProvider {
    SopsProvider::new(Settings::default(), fixtures()).with_env(env(&[(
        "SOPS_AGE_KEY_FILE",
        &fixtures().join("keys/age-keys.txt"),
    )]))
}

/// The upstream sops functional-tests PGP key file (both secret keys, no passphrase).
pub const PGP_KEY_FILE: &str = "upstream/pgp/sops_functional_tests_key.asc";

/// A provider whose only key is `key_file` (relative to the fixtures dir) as
/// `backends.sops.pgp_key_file`, with an empty environment.
pub fn pgp_provider_with(key_file: &str) -> SopsProvider {
    let settings = Settings {
        pgp_key_file: Some(key_file.into()),
        ..Settings::default()
    };
    SopsProvider::new(settings, fixtures()).with_env(BTreeMap::new())
}

/// A provider whose only key is the upstream PGP test key file.
pub fn pgp_provider() -> SopsProvider {
    pgp_provider_with(PGP_KEY_FILE)
}

/// A provider with no keys at all.
pub fn keyless_provider() -> SopsProvider {
    SopsProvider::new(Settings::default(), fixtures()).with_env(BTreeMap::new())
}

/// Resolves `reference` relative to the fixtures dir.
pub async fn resolve(
    provider: &SopsProvider,
    reference: &str,
    base: &Path,
) -> broker_core::Result<Vec<u8>> {
    let reference: Reference = reference.parse().unwrap();
    let ctx = RequestContext::new();
    let req = Request::new(&reference, base, &ctx);
    provider
        .resolve(&req)
        .await
        .map(|c| c.value().expose().to_vec())
}

/// Resolves or panics with the error.
pub async fn resolve_ok(provider: &SopsProvider, reference: &str) -> Vec<u8> {
    resolve(provider, reference, &fixtures())
        .await
        .unwrap_or_else(|e| panic!("{reference}: {e}"))
}

fn yaml_value(text: &[u8]) -> serde_json::Value {
    serde_saphyr::from_slice(text).unwrap()
}

fn normalize(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        // sops's YAML emitter prints floats with %g-style precision; compare numbers as f64
        // rounded to 7 significant digits.
        Value::Number(n) => {
            let f = n.as_f64().unwrap();
            let s = format!("{f:.6e}");
            Value::String(s)
        }
        other => other,
    }
}

/// What "the same document" means (docs/backends/sops.md): JSON, dotenv, INI and binary are
/// byte-equal to sops's output; YAML is equal as data (every key, order of lists, every value
/// and type; numbers to sops's printed precision) and keeps every comment line.
pub fn assert_same_document(file: &Path, got: &[u8], want: &[u8]) {
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "yaml" || ext == "yml" {
        assert_eq!(
            normalize(yaml_value(got)),
            normalize(yaml_value(want)),
            "{}: data differs\n--- got\n{}\n--- want\n{}",
            file.display(),
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want)
        );
        let comments = |t: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(t)
                .lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .map(|l| l.trim().to_string())
                .collect()
        };
        assert_eq!(
            comments(got),
            comments(want),
            "{}: comments differ",
            file.display()
        );
    } else {
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want),
            "{}: output differs",
            file.display()
        );
    }
}
