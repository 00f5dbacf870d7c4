//! Every vector in tests/fixtures (copied from ../shared/testdata/sops) decrypts to what real
//! sops 3.11.0 printed for it.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::path::Path;

use common::*;

/// The age-keyed vectors and their `expected/` twins.
const AGE_VECTORS: &[(&str, &str)] = &[
    (
        "derived-age/example.age.yaml",
        "expected/derived-age/example.age.yaml.decrypted",
    ),
    (
        "derived-age/example.age.json",
        "expected/derived-age/example.age.json.decrypted",
    ),
    (
        "derived-age/example.age.ini",
        "expected/derived-age/example.age.ini.decrypted",
    ),
    (
        "derived-age/examples_all_in_one_config_secret.age.json",
        "expected/derived-age/examples_all_in_one_config_secret.age.json.decrypted",
    ),
    (
        "derived-age/functional-tests_res_format.age.yaml",
        "expected/derived-age/functional-tests_res_format.age.yaml.decrypted",
    ),
    (
        "derived-age/functional-tests_res_format.age.json",
        "expected/derived-age/functional-tests_res_format.age.json.decrypted",
    ),
    (
        "derived-age/functional-tests_res_format.age.env",
        "expected/derived-age/functional-tests_res_format.age.env.decrypted",
    ),
    (
        "derived-age/functional-tests_res_format.age.ini",
        "expected/derived-age/functional-tests_res_format.age.ini.decrypted",
    ),
];

#[tokio::test]
async fn derived_age_vectors_match_expected() {
    for (file, expected) in AGE_VECTORS {
        let got = resolve_ok(&age_provider(), &format!("sops:{file}")).await;
        let want = std::fs::read(fixtures().join(expected)).unwrap();
        assert_same_document(Path::new(file), &got, &want);
    }
}

/// The upstream (PGP-keyed) vectors and their `expected/` twins.
const PGP_VECTORS: &[&str] = &[
    "example.yaml",
    "example.json",
    "example.ini",
    "example.txt",
    "examples/all_in_one/config/secret.enc.json",
    "examples/per_file/config.enc/static_github.json",
    "functional-tests/res/format.enc.yaml",
    "functional-tests/res/format.enc.json",
    "functional-tests/res/format.enc.env",
    "functional-tests/res/format.enc.ini",
    "functional-tests/res/format-2.enc.ini",
    "functional-tests/res/comments.enc.yaml",
    "functional-tests/res/multiple_keys.yaml",
];

#[tokio::test]
async fn upstream_pgp_vectors_match_expected() {
    let provider = pgp_provider();
    for file in PGP_VECTORS {
        // example.txt is a binary-mode file in a JSON envelope.
        let query = if *file == "example.txt" {
            "?format=binary"
        } else {
            ""
        };
        let got = resolve_ok(&provider, &format!("sops:upstream/{file}{query}")).await;
        let want =
            std::fs::read(fixtures().join(format!("expected/upstream/{file}.decrypted"))).unwrap();
        assert_same_document(Path::new(file), &got, &want);
    }
}
