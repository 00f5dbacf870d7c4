//! Human tables and JSON for `audit` and `doctor`; nothing there ever sees a value. The one
//! exception is [`print_credential_json`], `broker get --json`, behind the same `--reveal`
//! rule as `broker get`.

use std::path::PathBuf;

use broker_core::{Broker, Error, Manifest};
use serde_json::json;

use crate::exit;

/// An error as JSON, for `--json` modes.
pub fn error_json(e: &Error) -> serde_json::Value {
    json!({
        "kind": e.kind().as_str(),
        "message": e.to_string(),
        "credential": e.credential(),
        "reference": e.reference(),
        "hint": e.hint(),
        "retryable": e.is_retryable(),
        "exit_code": exit::for_kind(e.kind()),
    })
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `broker audit`'s warning (on stderr, so `--json` output stays one document) when the config
/// turns the audit log off in so many words (`audit: { enabled: false }`): nothing the broker
/// hands out is recorded, and a daemon started from it serves without a log.
pub fn warn_if_audit_off(config: &broker_core::Config) {
    use std::io::Write;
    if !config.audit_disabled || crate::style::get().quiet {
        return;
    }
    let path = config.path().display().to_string();
    let path = broker_core::grammar::escape_controls(&path);
    let _ = writeln!(
        std::io::stderr().lock(),
        "{} the audit log is off (`audit: {{ enabled: false }}` in {path}): nothing the broker hands out is recorded",
        crate::style::err("warning:", crate::style::Paint::Yellow)
    );
}

/// `broker audit`.
pub fn print_manifest(manifest: &Manifest, as_json: bool) {
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(manifest).unwrap_or_else(|_| "{}".into())
        );
        return;
    }
    println!("config: {}", manifest.config.display());
    let egress = &manifest.egress;
    if egress.enabled {
        let allow: Vec<&str> = egress.allow.iter().map(|b| b.as_str()).collect();
        println!("egress: enabled (allowed: {})", allow.join(", "));
    } else {
        println!("egress: disabled (only local credentials resolve)");
    }
    if manifest.entries.is_empty() {
        println!("\nno credentials declared");
        return;
    }
    let rows: Vec<Vec<String>> = manifest
        .entries
        .iter()
        .map(|e| {
            let dests: Vec<String> = e
                .destinations
                .iter()
                .map(|d| d.target.to_string())
                .chain(
                    e.proxy_destinations
                        .iter()
                        .map(|d| format!("{} (via proxy)", d.target)),
                )
                .collect();
            let placeholder = if e.proxy_destinations.is_empty() {
                ""
            } else {
                ", placeholder"
            };
            let delivered = match e.kind {
                broker_core::DeliveryKind::Env => format!("${}{placeholder}", e.delivered_as),
                broker_core::DeliveryKind::File => {
                    format!("${} (file{placeholder})", e.delivered_as)
                }
            };
            let source = match (&e.source, &e.ttl) {
                (broker_core::Source::Mint, Some(ttl)) => format!("mint {ttl}"),
                (broker_core::Source::Mint, None) => "mint".into(),
                (broker_core::Source::Resolve, _) => "read".into(),
            };
            vec![
                e.credential.clone(),
                e.reference.to_string(),
                e.backend.to_string(),
                source,
                dests.join(", "),
                e.badge.to_string(),
                delivered,
                if e.allowed {
                    "allowed".into()
                } else {
                    "refused".into()
                },
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        table(
            &[
                "CREDENTIAL",
                "REFERENCE",
                "BACKEND",
                "SOURCE",
                "DESTINATION",
                "BADGE",
                "DELIVERED AS",
                "GATE"
            ],
            &rows
        )
    );
    let leaving = manifest
        .entries
        .iter()
        .filter(|e| e.badge != broker_core::Badge::Local)
        .count();
    println!(
        "\n{} credential(s); {} stay on this machine, {} would leave it",
        manifest.entries.len(),
        manifest.entries.len() - leaving,
        leaving
    );
}

/// `broker doctor`. Without a config it still lists what is compiled in.
pub async fn print_doctor(
    broker: Result<&Broker, &Error>,
    swept: &[PathBuf],
    as_json: bool,
) -> Result<u8, Error> {
    let (reports, config_status) = match broker {
        Ok(b) => (
            b.doctor().await,
            Ok(b.config().path().display().to_string()),
        ),
        Err(e) if e.message().starts_with("no .broker.yml") => (Vec::new(), Err(None)),
        Err(e) => (Vec::new(), Err(Some(e))),
    };
    let compiled: Vec<&str> = crate::backends::enabled();
    let failing = reports.iter().filter(|r| r.ok == Some(false)).count();
    if as_json {
        let value = json!({
            "compiled_in": compiled,
            "schemes": broker_core::Registry::global().schemes(),
            "config": config_status.as_ref().ok(),
            "config_error": config_status.as_ref().err().and_then(|e| e.map(error_json)),
            "backends": reports
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert(
                            "what_to_do".into(),
                            json!(what_to_do(r, config_status.as_ref().ok())),
                        );
                    }
                    v
                })
                .collect::<Vec<_>>(),
            "swept_scratch_dirs": swept,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        println!("compiled in: {}", compiled.join(", "));
        match &config_status {
            Ok(path) => println!("config: {path}"),
            Err(None) => println!(
                "config: none found (run in a directory with .broker.yml, or pass --config)"
            ),
            Err(Some(e)) => println!(
                "config: invalid: {}",
                broker_core::grammar::escape_controls(&e.to_string())
            ),
        }
        if !reports.is_empty() {
            let rows: Vec<Vec<String>> = reports
                .iter()
                .map(|r| {
                    let status = match r.ok {
                        Some(true) => "ok",
                        Some(false) => "FAILED",
                        None => "-",
                    };
                    vec![
                        r.backend.to_string(),
                        r.schemes.join(","),
                        if r.configured {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        if r.used { "yes".into() } else { "no".into() },
                        status.to_string(),
                        r.detail.clone(),
                    ]
                })
                .collect();
            println!();
            print!(
                "{}",
                table(
                    &[
                        "BACKEND",
                        "SCHEMES",
                        "CONFIGURED",
                        "USED",
                        "STATUS",
                        "DETAIL"
                    ],
                    &rows
                )
            );
        }
        let todo: Vec<(&str, String)> = reports
            .iter()
            .filter_map(|r| what_to_do(r, config_status.as_ref().ok()).map(|t| (r.backend, t)))
            .collect();
        if !todo.is_empty() {
            println!();
        }
        for (backend, todo) in &todo {
            println!(
                "{} {backend}: {todo}",
                crate::style::out("what to do:", crate::style::Paint::Yellow)
            );
        }
        if let Err(e) = &config_status {
            let todo = match e {
                None => "run `broker init` to write a .broker.yml here, or pass --config PATH"
                    .to_string(),
                Some(e) => e
                    .hint()
                    .map(|h| broker_core::grammar::escape_controls(h).into_owned())
                    .unwrap_or_else(|| "fix the config at the line the error names".into()),
            };
            println!(
                "{} {todo}",
                crate::style::out("what to do:", crate::style::Paint::Yellow)
            );
        }
        for dir in swept {
            if !crate::style::get().quiet {
                println!(
                    "swept a stale scratch dir left by a dead run: {}",
                    dir.display()
                );
            }
        }
    }
    match config_status {
        Err(Some(e)) => Ok(exit::for_kind(e.kind())),
        _ if failing > 0 => Ok(exit::UNAVAILABLE),
        _ => Ok(0),
    }
}

/// `broker audit verify`: a one-line verdict; a broken chain is an integrity error.
pub fn print_verification(
    v: &broker_core::audit::Verification,
    as_json: bool,
) -> Result<u8, Error> {
    use broker_core::audit::CheckpointStatus;
    if as_json {
        let value = json!({ "ok": v.is_ok(), "verification": v });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(if v.is_ok() {
            0
        } else {
            exit::for_kind(broker_core::ErrorKind::Integrity)
        });
    }
    if let Some(p) = &v.problem {
        return Err(Error::integrity(format!(
            "audit log {} is broken at seq {} (line {}): {}",
            v.path.display(),
            p.seq,
            p.line,
            p.reason
        ))
        .with_hint("records were edited, dropped, reordered or cut; keep this file as evidence and start a new log"));
    }
    let checkpoint = match v.checkpoint {
        CheckpointStatus::Matches => "checkpoint matches",
        CheckpointStatus::Behind => "checkpoint is behind (an append was interrupted)",
        CheckpointStatus::Missing => "no checkpoint file (tail truncation cannot be checked)",
        CheckpointStatus::Mismatch => "checkpoint does not match",
    };
    println!(
        "ok: {}: {} record(s), chain intact through seq {}; {checkpoint}",
        v.path.display(),
        v.records,
        v.last_seq
    );
    Ok(0)
}

/// `broker audit verify LOG LOG...`: each log is its own chain (one per `broker serve`
/// replica); an `ok:` line for each intact one, then the first broken one as the error. With
/// `--json`: `{"ok", "verifications": [...]}`.
pub fn print_verifications(
    all: &[broker_core::audit::Verification],
    as_json: bool,
) -> Result<u8, Error> {
    let ok = all.iter().all(broker_core::audit::Verification::is_ok);
    if as_json {
        let value = json!({ "ok": ok, "verifications": all });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(if ok {
            0
        } else {
            exit::for_kind(broker_core::ErrorKind::Integrity)
        });
    }
    for v in all.iter().filter(|v| v.is_ok()) {
        print_verification(v, false)?;
    }
    match all.iter().find(|v| !v.is_ok()) {
        Some(broken) => print_verification(broken, false),
        None => Ok(0),
    }
}

/// What the user can do about a failing (or gated, unchecked) backend check, for `broker
/// doctor`; `None` when there is nothing to do. Names the settings to look at and the
/// backend's page; the check's own detail says what was found.
fn what_to_do(r: &broker_core::BackendReport, config: Option<&String>) -> Option<String> {
    let config = config.map(String::as_str).unwrap_or(".broker.yml");
    if r.ok.is_none() && r.detail.starts_with("not checked:") {
        return Some(format!(
            "review `broker audit`, then allow it in `egress:` of {config} (`enabled: true`, `allow:`)"
        ));
    }
    if r.ok != Some(false) {
        return None;
    }
    let what = match r.backend {
        "vault" => {
            "check that `backends.vault.address` is reachable and its `auth:` (token_ref, approle) is valid"
        }
        "aws" => {
            "check the AWS identity the broker starts from (profile, environment, web identity) and `backends.aws.region`"
        }
        "azure" => {
            "check `backends.azure.auth` (workload identity, managed identity, Azure CLI login or client secret) and the vault URL"
        }
        "gcp" => {
            "check the Google credentials (`backends.gcp`, workload identity federation or GOOGLE_APPLICATION_CREDENTIALS)"
        }
        "sops" => {
            "check that the age key sops uses is readable (`backends.sops.age_key_file`, $SOPS_AGE_KEY_FILE or ~/.config/sops/age/keys.txt)"
        }
        "age" => "check that the identity files in `backends.age` exist and are readable",
        "env" => "check the environment the broker is started with",
        _ => "check its `backends.<name>` settings",
    };
    let page = match r.backend {
        "vault" | "aws" | "azure" | "gcp" | "sops" | "age" => {
            format!("; see docs/backends/{}.md", r.backend)
        }
        _ => String::new(),
    };
    Some(format!("{what} in {config}{page}"))
}

/// `broker get --json`: the value, its companions and its lease as one JSON object.
pub fn print_credential_json(
    name: &str,
    credential: &broker_core::Credential,
) -> Result<u8, Error> {
    use std::io::Write;
    let text = |v: &broker_core::SecretValue| v.expose_str().map(str::to_string);
    let mut companions = serde_json::Map::new();
    for (var, value) in credential.companions() {
        companions.insert(var.clone(), serde_json::Value::String(text(value)?));
    }
    let lease = credential.lease();
    let expires_at = lease.and_then(|l| l.expires_at).and_then(|t| {
        time::OffsetDateTime::from(t)
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    let body = json!({
        "credential": name,
        "value": text(credential.value())?,
        "companions": companions,
        "lease_id": lease.map(|l| l.id.as_str()),
        "expires_at": expires_at,
    });
    let shown = zeroize::Zeroizing::new(body.to_string());
    drop(body);
    let mut out = std::io::stdout().lock();
    out.write_all(shown.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("cannot write to standard output", &e))?;
    Ok(0)
}
