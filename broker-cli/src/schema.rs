//! `broker schema`: the JSON Schema (draft 2020-12) of `.broker.yml` for this binary's
//! backends, shipped as `docs/broker.schema.json` for the default features.
//!
//! The core keys are written out here; `tests/schema.rs` holds them to the loader: every key
//! list below must equal the one the loader prints when it refuses an unknown key, so the two
//! cannot drift. Each backend contributes its `backends.<name>` section through
//! [`broker_core::registry::SettingsSchema`] (any object when it submits none) and its
//! per-credential keys through its descriptor's `credential_options`.

use broker_core::{Error, Registry};
use serde_json::{Map, Value, json};

/// The schema of `.broker.yml` as JSON text (pretty, with a final newline).
pub fn text(registry: &Registry) -> String {
    let mut text = serde_json::to_string_pretty(&schema(registry)).unwrap_or_default();
    text.push('\n');
    text
}

/// Prints the schema.
pub fn print() -> Result<u8, Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text(Registry::global()).as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("cannot write to standard output", &e))?;
    Ok(0)
}

/// A strict object: these properties, nothing else.
fn object(description: &str, properties: Value) -> Value {
    json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": false,
    })
}

/// `ttl:` as the loader reads it: `90s`, `15m`, `1h30m`, `2d`, or seconds.
fn ttl() -> Value {
    json!({
        "description": "Requested lifetime: `90s`, `15m`, `1h30m`, `2d`, or a number of seconds.",
        "oneOf": [
            { "type": "integer", "minimum": 0 },
            { "type": "string", "pattern": "^\\s*([0-9]+\\s*[smhd]?\\s*)+$" }
        ]
    })
}

fn strings(description: &str) -> Value {
    json!({ "type": "array", "items": { "type": "string" }, "description": description })
}

/// The schema of one credential: the core keys plus every compiled-in backend's options.
fn credential(registry: &Registry) -> Value {
    let mut props = json!({
        "ref": { "type": "string", "description": "A reference to a stored secret (`vault:secret/data/app#token`, `env:NAME`, `sops:file.enc.yaml#key`)." },
        "mint": { "type": "string", "description": "A reference that mints a short-lived credential (`aws-sts://ROLE_ARN`, `gcp-iam://SA`, `azure-token://SCOPE`)." },
        "as": { "type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "description": "The environment variable the task sees (default: the name upper-cased, `-` to `_`)." },
        "kind": { "enum": ["env", "file"], "description": "`env` (default): the variable holds the value; `file`: a 0600 file in the task's scratch dir, the variable holds its path." },
        "ttl": ttl(),
        "scope": object("Mint only: a bound that narrows what the minted credential may do.", json!({
            "actions": strings("Actions allowed (`s3:GetObject`)."),
            "resources": strings("Resources allowed (`arn:aws:s3:::bucket/*`)."),
            "conditions": { "type": "object", "description": "Provider-specific conditions." }
        })),
        "tenant": { "type": "string", "description": "The tenant the credential belongs to (default: the config's `tenant`)." },
        "mcp": object("What `broker mcp` may do with it.", json!({
            "reveal": { "type": "boolean", "default": false, "description": "The MCP server may show the value to the agent (audited)." }
        })),
        "proxy": {
            "type": "object",
            "description": "Placeholder mode: the task gets a placeholder; the run's proxy puts the value in toward `hosts` (docs/proxy.md).",
            "properties": {
                "hosts": strings("Hosts the value may be sent to (exact, or `*.suffix`)."),
                "headers": strings("Request headers the placeholder is replaced in (default: Authorization, X-Api-Key)."),
                "query": strings("Query parameters whose value, when exactly the placeholder, becomes the value."),
                "path": { "type": "boolean", "default": false, "description": "A path segment that is exactly the placeholder becomes the value (percent-encoded)." },
                "body": strings("Form field names or JSON paths from the root (`auth.token`) whose value, when exactly the placeholder, becomes the value (bodies up to 1 MiB)."),
                "methods": strings("Methods a request carrying the placeholder may use (default: any)."),
                "paths": strings("Path prefixes a request carrying the placeholder may go to (default: any)."),
                "allow_http": { "type": "boolean", "default": false, "description": "Allow the value in plain-HTTP (cleartext) requests." },
                "placeholder": object("The placeholder's shape.", json!({
                    "shape": { "enum": ["random", "jwt"], "default": "random", "description": "`random`: prefix + random letters and digits; `jwt`: a JWT-shaped placeholder (no prefix or length)." },
                    "prefix": { "type": "string", "pattern": "^[A-Za-z0-9._~-]*$", "description": "Text before the random part." },
                    "length": { "type": "integer", "minimum": 22, "description": "Random letters and digits after the prefix (default 40)." }
                }))
            },
            "required": ["hosts"],
            "additionalProperties": false
        }
    });
    if let Some(map) = props.as_object_mut() {
        for d in registry.descriptors() {
            for option in d.credential_options {
                map.entry(option.to_string()).or_insert_with(|| {
                    json!({ "description": format!("Option of the `{}` backend (see its page).", d.name) })
                });
            }
        }
    }
    json!({
        "type": "object",
        "properties": props,
        "additionalProperties": false,
        "oneOf": [
            { "required": ["ref"], "not": { "required": ["mint"] } },
            { "required": ["mint"], "not": { "required": ["ref"] } }
        ]
    })
}

/// The schema of `.broker.yml` for the backends in `registry`.
pub fn schema(registry: &Registry) -> Value {
    let mut backends = Map::new();
    for d in registry.descriptors() {
        let mut section = registry.settings_schema(d.name);
        if let Some(obj) = section.as_object_mut() {
            obj.entry("description").or_insert_with(|| {
                json!(format!(
                    "Settings of the `{}` backend ({} references).",
                    d.name,
                    d.schemes.join(", ")
                ))
            });
        }
        backends.insert(d.name.to_string(), section);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": ".broker.yml",
        "description": "The credential broker's config (docs/config.md).",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "egress": object("Which destinations credentials may be fetched from.", json!({
                "enabled": { "type": "boolean", "default": false, "description": "Allow credentials whose destination is not local." },
                "allow": {
                    "type": "array",
                    "items": { "enum": ["local", "self-hosted", "managed-cloud"] },
                    "default": ["self-hosted", "managed-cloud"],
                    "description": "Which badges may be reached when enabled."
                },
                "self_hosted": strings("Hosts you run (exact, or `*.suffix`), badged `self-hosted`."),
                "proxy": object("The run's egress policy through the proxy (docs/proxy.md).", json!({
                    "default": { "enum": ["deny", "allow"], "default": "deny", "description": "`deny`: only hosts named by a credential's `proxy.hosts` or `allow_hosts`." },
                    "allow_hosts": strings("Hosts reachable without a credential (exact, or `*.suffix`)."),
                    "allow_private": { "type": "boolean", "default": false, "description": "Allow loopback and private addresses (metadata endpoints stay blocked)." },
                    "upstream_ca": { "type": "string", "description": "A PEM file of extra roots trusted for upstream TLS." }
                }))
            })),
            "credentials": {
                "type": "object",
                "description": "Credentials by name (letters, digits, `_`, `-`).",
                "propertyNames": { "pattern": "^[A-Za-z0-9_-]+$" },
                "additionalProperties": credential(registry)
            },
            "backends": {
                "type": "object",
                "description": "One section per compiled-in backend, parsed by that backend.",
                "properties": backends,
                "additionalProperties": false
            },
            "policy": { "type": "string", "description": "A Cedar policy file, relative to this file." },
            "audit": object("The hash-chained JSONL audit log.", json!({
                "path": { "type": "string", "description": "The log file, relative to this file; required unless `enabled: false`." },
                "enabled": { "type": "boolean", "default": true, "description": "`false` turns the log off in so many words." },
                "fsync": { "type": "boolean", "default": true, "description": "fsync each record before the credential is handed out." }
            })),
            "tenant": { "type": "string", "description": "The default tenant of every credential." },
            "alert": {
                "type": "object",
                "description": "What runs when a request fails closed.",
                "properties": {
                    "command": { "type": "string", "description": "A shell command (`sh -c`) run with the alert event's JSON on stdin." }
                },
                "required": ["command"],
                "additionalProperties": false
            },
            "serve": { "type": "object", "description": "`broker serve`'s settings (docs/serve.md)." },
            "mcp": { "type": "object", "description": "`broker mcp`'s settings." }
        }
    })
}
