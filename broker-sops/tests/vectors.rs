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
