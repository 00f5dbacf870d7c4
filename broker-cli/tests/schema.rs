//! `broker schema`: `docs/broker.schema.json` is its output for the default features; every
//! key list in it equals the one the loader gives when it refuses an unknown key (so schema and
//! loader cannot drift); every example config validates against it with `check-jsonschema`
//! (PyPI), and a config the loader refuses for a misspelled key is refused by it too.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn broker(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .current_dir(dir)
        .env_remove("BROKER_CONFIG")
        .env_remove("BROKER_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn schema() -> Value {
    let out = broker(&root(), &["schema"]);
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn keys(v: &Value) -> Vec<String> {
    v["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

const DEFAULT_FEATURES: bool = cfg!(all(
    feature = "env",
    feature = "age",
    feature = "aws",
    feature = "azure",
    feature = "gcp",
    feature = "sops",
    feature = "vault",
    feature = "serve",
));

#[test]
fn docs_schema_is_the_output_of_broker_schema() {
    if !DEFAULT_FEATURES {
        return;
    }
    let out = broker(&root(), &["schema"]);
    let shipped = root().join("docs/broker.schema.json");
    if std::env::var_os("BROKER_UPDATE_SCHEMA").is_some() {
        std::fs::write(&shipped, &out.stdout).unwrap();
    }
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(&shipped).unwrap(),
        "docs/broker.schema.json is stale: run `BROKER_UPDATE_SCHEMA=1 cargo test -p broker-cli --test schema`"
    );
}

/// What the loader says when `config` has an unknown key: the list after `expected one of`
/// (or the single `expected `x``), or after `accepted keys:` / `backends compiled in:`.
fn loader_list(config: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".broker.yml"), config).unwrap();
    let out = broker(dir.path(), &["audit"]);
    assert_eq!(out.status.code(), Some(78), "{config}");
    let err = String::from_utf8(out.stderr).unwrap();
    let list = if let Some((_, rest)) = err.split_once("expected one of ") {
        rest.split_once(')').unwrap().0.to_string()
    } else if let Some((_, rest)) = err.split_once("(expected `") {
        rest.split_once('`').unwrap().0.to_string()
    } else if let Some((_, rest)) = err.split_once("accepted keys: ") {
        rest.lines().next().unwrap().to_string()
    } else if let Some((_, rest)) = err.split_once("backends compiled in: ") {
        rest.lines().next().unwrap().to_string()
    } else {
        panic!("no key list in {err:?}");
    };
    list.split(", ").map(str::to_string).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn every_key_list_equals_the_loaders() {
    let s = schema();
    let p = &s["properties"];
    let credential = &p["credentials"]["additionalProperties"];
    let cases: [(&str, Vec<String>); 7] = [
        ("bogus: 1\n", keys(&s)),
        ("egress: { bogus: 1 }\n", keys(&p["egress"])),
        ("audit: { bogus: 1 }\n", keys(&p["audit"])),
        ("alert: { bogus: 1 }\n", keys(&p["alert"])),
        (
            "credentials: { a: { ref: \"env:X\", scope: { bogus: 1 } } }\n",
            keys(&credential["properties"]["scope"]),
        ),
        (
            "credentials: { a: { ref: \"env:X\", mcp: { bogus: 1 } } }\n",
            keys(&credential["properties"]["mcp"]),
        ),
        ("backends: { bogus: {} }\n", keys(&p["backends"])),
    ];
    for (config, from_schema) in cases {
        assert_eq!(sorted(loader_list(config)), sorted(from_schema), "{config}");
    }
    // A credential's core keys: the schema's, less the backends' own options.
    let options: Vec<String> = credential["properties"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| {
            v["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("Option of the"))
        })
        .map(|(k, _)| k.clone())
        .collect();
    let core: Vec<String> = keys(credential)
        .into_iter()
        .filter(|k| !options.contains(k))
        .collect();
    assert_eq!(
        sorted(loader_list(
            "credentials: { a: { ref: \"env:X\", bogus: 1 } }\n"
        )),
        sorted(core)
    );
    // Enumerations.
    assert_eq!(
        loader_list("credentials: { a: { ref: \"env:X\", kind: bogus } }\n"),
        credential["properties"]["kind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        loader_list("egress: { allow: [bogus] }\n"),
        p["egress"]["properties"]["allow"]["items"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    );
}

fn check_jsonschema() -> Option<PathBuf> {
    broker_core::testkit::require_peer("check-jsonschema")
}

/// `check-jsonschema --schemafile SCHEMA FILES...`.
fn validate(tool: &Path, schema: &Path, files: &[PathBuf]) -> Output {
    Command::new(tool)
        .arg("--schemafile")
        .arg(schema)
        .args(files)
        .output()
        .unwrap()
}

/// The `yaml` blocks of `docs/config.md` that are whole configs (they start at a top-level key).
fn doc_examples(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(root().join("docs/config.md")).unwrap();
    let mut files = Vec::new();
    for (i, block) in text.split("```yaml\n").skip(1).enumerate() {
        let body = block.split("```").next().unwrap();
        let path = dir.join(format!("config-md-{i}.yml"));
        std::fs::write(&path, body).unwrap();
        files.push(path);
    }
    files
}

#[test]
fn example_configs_validate_and_a_misspelling_does_not() {
    let Some(tool) = check_jsonschema() else {
        return;
    };
    let shipped = root().join("docs/broker.schema.json");
    let out = Command::new(&tool)
        .arg("--check-metaschema")
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut examples: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let dir = entry.unwrap().path();
        for name in [".broker.yml", ".broker.yaml"] {
            if dir.join(name).is_file() {
                examples.push(dir.join(name));
            }
        }
    }
    assert!(!examples.is_empty());
    let tmp = tempfile::tempdir().unwrap();
    examples.extend(doc_examples(tmp.path()));
    let out = validate(&tool, &shipped, &examples);
    assert!(
        out.status.success(),
        "{examples:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The loader accepts each of them too.
    for example in examples.iter().filter(|e| e.starts_with(root())) {
        let out = broker(example.parent().unwrap(), &["audit", "--quiet"]);
        assert_eq!(out.status.code(), Some(0), "{}", example.display());
    }

    let bad = tmp.path().join("bad.yml");
    std::fs::write(
        &bad,
        "credentials:\n  api: { ref: \"env:X\", colour: red }\n",
    )
    .unwrap();
    let out = validate(&tool, &shipped, &[bad]);
    assert!(!out.status.success());
    let both = tmp.path().join("both.yml");
    std::fs::write(
        &both,
        "credentials:\n  api: { ref: \"env:X\", mint: \"aws-sts://arn:aws:iam::1:role/r\" }\n",
    )
    .unwrap();
    let out = validate(&tool, &shipped, &[both]);
    assert!(!out.status.success());
}
