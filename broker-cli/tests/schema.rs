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

/// `schema`, or its non-null branch when it is `anyOf: [schema, {type: null}]` (an `Option`).
fn unwrap_option(schema: &Value) -> &Value {
    match schema["anyOf"].as_array() {
        Some(branches)
            if branches.len() == 2 && branches[1] == serde_json::json!({"type": "null"}) =>
        {
            &branches[0]
        }
        _ => schema,
    }
}

/// The string constants of a `oneOf` of `const`s (a unit-variant enum), if it is one.
fn consts(schema: &Value) -> Option<Vec<String>> {
    schema["oneOf"]
        .as_array()?
        .iter()
        .map(|b| b["const"].as_str().map(str::to_string))
        .collect()
}

/// `backends: { a: { b: { <body> } } }` for the path `[a, b]`.
fn nested(path: &[String], body: &str) -> String {
    let mut yaml = body.to_string();
    for key in path.iter().rev() {
        yaml = format!("{{ {key}: {yaml} }}");
    }
    format!("backends: {yaml}\n")
}

/// Configs with one unknown key or enum value somewhere in a backend's section, each with the
/// list the schema gives for that place: every strict object (a struct, an internally tagged
/// variant, an untagged alternative), every enumeration and every tag.
fn probes(schema: &Value, path: &[String], out: &mut Vec<(String, Vec<String>)>) {
    let schema = unwrap_option(schema);
    if let Some(values) = consts(schema) {
        out.push((nested(path, "bogus"), values));
        return;
    }
    if let Some(branches) = schema["oneOf"].as_array() {
        // An internally tagged enum: every branch has the same property with a `const`.
        let tag = branches[0]["properties"].as_object().and_then(|p| {
            p.iter()
                .find(|(_, v)| v["const"].is_string())
                .map(|(k, _)| k.clone())
        });
        let tagged = tag.as_ref().filter(|t| {
            branches
                .iter()
                .all(|b| b["properties"][t.as_str()]["const"].is_string())
        });
        match tagged {
            Some(tag) => {
                let values: Vec<String> = branches
                    .iter()
                    .map(|b| {
                        b["properties"][tag.as_str()]["const"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
                    .collect();
                out.push((nested(path, &format!("{{ {tag}: bogus }}")), values));
                for b in branches {
                    let value = b["properties"][tag.as_str()]["const"].as_str().unwrap();
                    let keys: Vec<String> = keys(b).into_iter().filter(|k| k != tag).collect();
                    // serde ignores unknown keys in a unit variant (`{ method: none, x: 1 }`
                    // loads): nothing to compare there.
                    if !keys.is_empty() {
                        out.push((
                            nested(path, &format!("{{ {tag}: {value}, bogus: 1 }}")),
                            keys,
                        ));
                    }
                }
            }
            None => {
                for b in branches {
                    if b["type"] == "object" {
                        probes(b, path, out);
                    }
                }
            }
        }
        return;
    }
    if schema["additionalProperties"] == false
        && let Some(props) = schema["properties"].as_object()
    {
        out.push((nested(path, "{ bogus: 1 }"), keys(schema)));
        for (key, sub) in props {
            let mut deeper = path.to_vec();
            deeper.push(key.clone());
            probes(sub, &deeper, out);
        }
    }
}

#[test]
fn every_backend_section_equals_its_loader() {
    let s = schema();
    let backends = s["properties"]["backends"]["properties"]
        .as_object()
        .unwrap();
    assert!(!backends.is_empty());
    for (name, section) in backends {
        if section.get("properties").is_none() {
            // A backend without settings: any object, and the loader takes any object.
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join(".broker.yml"),
                format!("backends: {{ {name}: {{ bogus: 1 }} }}\n"),
            )
            .unwrap();
            let out = broker(dir.path(), &["audit", "--quiet"]);
            assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
            assert_eq!(section["type"], "object", "{name}");
            continue;
        }
        let mut cases = Vec::new();
        probes(section, std::slice::from_ref(name), &mut cases);
        for (config, from_schema) in cases {
            assert_eq!(
                sorted(loader_list(&config)),
                sorted(from_schema),
                "{config}"
            );
        }
    }
}

/// The `yaml` blocks of `docs/backends/*.md` (each a whole config naming its backend).
fn backend_doc_examples(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root().join("docs/backends")).unwrap() {
        let page = entry.unwrap().path();
        let text = std::fs::read_to_string(&page).unwrap();
        let stem = page.file_stem().unwrap().to_string_lossy().to_string();
        for (i, block) in text.split("```yaml\n").skip(1).enumerate() {
            let path = dir.join(format!("{stem}-md-{i}.yml"));
            std::fs::write(&path, block.split("```").next().unwrap()).unwrap();
            files.push(path);
        }
    }
    files
}

#[test]
fn backend_sections_validate_and_wrong_types_do_not() {
    let Some(tool) = check_jsonschema() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let shipped = root().join("docs/broker.schema.json");
    // Each backend page's config validates.
    let pages = backend_doc_examples(tmp.path());
    assert!(!pages.is_empty());
    let out = validate(&tool, &shipped, &pages);
    assert!(
        out.status.success(),
        "{pages:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Durations are seconds or `30s`-style text, as the loader reads them.
    let good_dir = tempfile::tempdir().unwrap();
    let good = good_dir.path().join(".broker.yml");
    std::fs::write(
        &good,
        "backends:\n  vault: { timeout: 30, auth: { method: approle, role_id_ref: \"env:R\" } }\n  gcp: { max_token_lifetime: 12h, auth: { method: none } }\n  age: { identity: [keys.txt, { ref: \"env:AGE_KEY\" }], recipients: [] }\n",
    )
    .unwrap();
    let out = validate(&tool, &shipped, std::slice::from_ref(&good));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    if DEFAULT_FEATURES {
        let out = broker(good_dir.path(), &["audit", "--quiet"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }
    // A wrong type, a missing required key or a bad enum value under a backend: the schema
    // refuses it, and so does the loader.
    for (i, bad) in [
        "backends: { vault: { timeout: [30] } }",
        "backends: { vault: { auth: { method: approle } } }",
        "backends: { vault: { auth: token } }",
        "backends: { aws: { region: [us-east-1] } }",
        "backends: { age: { identity: 3 } }",
        "backends: { age: { identity: { path: keys.txt } } }",
        "backends: { sops: { age_key_file: { path: keys.txt } } }",
        "backends: { gcp: { auth: { method: credentials } } }",
        "backends: { gcp: { max_token_lifetime: 1 day } }",
        "backends: { azure: { auth: { method: password } } }",
        "backends: { azure: [] }",
    ]
    .into_iter()
    .enumerate()
    {
        let file = tmp.path().join(format!("bad-{i}.yml"));
        std::fs::write(&file, format!("{bad}\n")).unwrap();
        let out = validate(&tool, &shipped, &[file]);
        assert!(!out.status.success(), "the schema accepts {bad}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".broker.yml"), format!("{bad}\n")).unwrap();
        let out = broker(dir.path(), &["audit", "--quiet"]);
        assert_eq!(out.status.code(), Some(78), "the loader accepts {bad}");
    }
}
