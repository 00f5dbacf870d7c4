//! `broker`: the command-line front of the credential broker.
//!
//! Thin by design: parsing, output and process handling live here; everything else is
//! `broker-core` and the backend crates linked through cargo features (see `backends.rs`).
// `unsafe` only in `sys` (pre-exec setup of the child, `--isolate`'s namespace), nowhere else.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod backends;
mod cli;
mod completions;
#[cfg(feature = "aws")]
mod credential_process;
mod exit;
mod hygiene;
#[cfg(feature = "sops")]
mod init;
#[cfg(feature = "proxy")]
mod isolate;
mod output;
mod progress;
mod run;
mod schema;
mod style;
#[allow(unsafe_code)]
mod sys;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use broker_core::{Broker, Error, Reference, RequestContext};
use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    // `broker run --isolate`'s helper: before anything else, while single-threaded.
    #[cfg(feature = "proxy")]
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == isolate::HELPER)
    {
        return isolate::main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    let json = wants_json(&cli.command);
    style::init(cli.color, cli.quiet, json);
    init_tracing(cli.quiet);
    hygiene::install_panic_hook();
    // A run killed by SIGKILL leaves its scratch dir behind; any invocation cleans it up.
    let swept = broker_core::scratch::sweep_stale();
    for dir in &swept {
        tracing::info!(dir = %dir.display(), "removed a scratch dir left by a process that is gone");
    }
    // The daemon serves many agents at once: one worker per core. Everything else is one
    // task at a time and starts faster on one thread.
    let mut builder = if is_daemon(&cli.command) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {e}"
            );
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    match runtime.block_on(dispatch(cli, swept)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(&e, json);
            ExitCode::from(exit::for_kind(e.kind()))
        }
    }
}

/// Whether `command` runs `broker serve`.
fn is_daemon(command: &Command) -> bool {
    #[cfg(feature = "serve")]
    if matches!(command, Command::Serve) {
        return true;
    }
    let _ = command;
    false
}

fn init_tracing(quiet: bool) {
    // `--quiet` drops warnings; BROKER_LOG, when set, still decides.
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BROKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The MCP SDK logs session ids (and, at trace level, messages): never shown.
    #[cfg(feature = "mcp")]
    let filter = match "rmcp=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Every log line goes through the redactor of the values this process holds.
        .with_writer(hygiene::RedactedStderr)
        .with_target(false)
        .without_time()
        .try_init();
}

fn wants_json(command: &Command) -> bool {
    match command {
        Command::Audit(a) => match &a.command {
            Some(cli::AuditCommand::Verify(v)) => v.json,
            None => a.json,
        },
        Command::Doctor(a) => a.json,
        Command::Check(a) => a.json,
        Command::Rotate(a) => a.json,
        Command::Get(a) => a.json,
        _ => false,
    }
}

/// Prints an error: one line, then a hint line if there is one (or one JSON object).
///
/// Control characters and bidi overrides are escaped here too, whatever the error echoes, so
/// nothing in it can drive the terminal or forge a line. Write errors are ignored: with
/// stderr closed the exit code still tells what happened (`eprintln!` would panic).
fn report(e: &Error, json: bool) {
    let mut err = std::io::stderr().lock();
    if json {
        let value = serde_json::json!({ "error": output::error_json(e) });
        let _ = writeln!(err, "{value}");
        return;
    }
    let _ = writeln!(
        err,
        "{} {}",
        style::err("error:", style::Paint::Red),
        human(&e.to_string())
    );
    if let Some(hint) = e.hint() {
        let _ = writeln!(
            err,
            "{} {}",
            style::err("hint:", style::Paint::Cyan),
            human(hint)
        );
    }
}

/// A line of an error for a terminal: control characters escaped, then [`bounded`].
fn human(line: &str) -> String {
    bounded(&broker_core::grammar::escape_controls(line)).into_owned()
}

/// The longest error or hint line printed whole; the pieces of input an error echoes are cut
/// at [`broker_core::grammar::ECHO_LIMIT`] characters already, this catches anything else.
const LINE_LIMIT: usize = 2000;

/// `line` cut after [`LINE_LIMIT`] characters, with an ellipsis and its total length.
fn bounded(line: &str) -> std::borrow::Cow<'_, str> {
    match line.char_indices().nth(LINE_LIMIT) {
        None => std::borrow::Cow::Borrowed(line),
        Some((cut, _)) => std::borrow::Cow::Owned(format!(
            "{}… ({} chars)",
            &line[..cut],
            line.chars().count()
        )),
    }
}

fn load(config: Option<&Path>, dir: Option<&Path>) -> Result<Broker, Error> {
    let cwd = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_dir()
            .map_err(|e| Error::io("cannot read the working directory", &e))?,
    };
    Broker::discover(&cwd, config)
}

fn context(agent: Option<String>) -> RequestContext {
    RequestContext {
        // Already normalised by the parser; empty (or blank) means anonymous.
        agent_id: agent.filter(|a| !a.is_empty()),
        ..RequestContext::new()
    }
}

async fn dispatch(cli: Cli, swept: Vec<PathBuf>) -> Result<u8, Error> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Audit(cli::AuditArgs {
            command: Some(cli::AuditCommand::Verify(v)),
            ..
        }) => {
            if v.paths.len() > 1 {
                let mut verifications = Vec::new();
                for path in &v.paths {
                    verifications.push(broker_core::audit::verify(path)?);
                }
                return output::print_verifications(&verifications, v.json);
            }
            let path = match v.paths.into_iter().next() {
                Some(p) => p,
                None => {
                    let broker = load(config, None)?;
                    broker.config().audit_path.clone().ok_or_else(|| {
                        Error::invalid_config(format!(
                            "no audit log configured in {}",
                            broker.config().path().display()
                        ))
                        .with_hint(
                            "pass the log's PATH, or set `audit: { path: ... }` in the config",
                        )
                    })?
                }
            };
            let verification = broker_core::audit::verify(&path)?;
            output::print_verification(&verification, v.json)
        }
        Command::Audit(args) => {
            let broker = load(config, args.dir.as_deref())?;
            output::warn_if_audit_off(broker.config());
            let manifest = broker.manifest()?;
            output::print_manifest(&manifest, args.json);
            Ok(0)
        }
        Command::Doctor(args) => {
            let broker = load(config, None);
            output::print_doctor(broker.as_ref(), &swept, args.json).await
        }
        Command::Check(args) => check(&args.references, args.json),
        #[cfg(feature = "sops")]
        Command::Init(args) => {
            let dir = std::env::current_dir()
                .map_err(|e| Error::io("cannot read the working directory", &e))?;
            init::init(&dir, &args)
        }
        #[cfg(not(feature = "sops"))]
        Command::Init(_) => Err(Error::not_configured(
            "`broker init` needs the `sops` backend, which is not compiled in",
        )),
        Command::Schema => schema::print(),
        Command::Completions(args) => completions::completions(args.shell),
        Command::Man(args) => completions::man_pages(&args.out),
        #[cfg(feature = "serve")]
        Command::Run(args) if args.daemon.from.is_some() => {
            // The daemon holds the config; locally there is nothing to read.
            if args.no_redact {
                return Err(Error::invalid_config(
                    "--no-redact cannot be used with --from: there is no local audit log to record it in",
                ));
            }
            #[cfg(feature = "proxy")]
            if args.isolate {
                return Err(Error::invalid_config(
                    "--isolate cannot be used with --from yet: the daemon's proxy is not reachable from the command's network namespace",
                ));
            }
            let registry = broker_core::Registry::global().clone();
            let empty = broker_core::Config::from_str("", Path::new(".broker.yml"), &registry)?;
            let broker = Broker::new(empty, registry)?;
            run::run(&broker, &args, RequestContext::new()).await
        }
        Command::Run(args) => {
            let broker = load(config, None)?;
            run::run(&broker, &args, context(args.agent.clone())).await
        }
        Command::Get(args) => {
            let stdout = std::io::stdout();
            if !args.reveal && !stdout.is_terminal() {
                return Err(Error::new(
                    broker_core::ErrorKind::PolicyDenied,
                    format!("refusing to print credential `{}` to a pipe or file", args.name),
                )
                .with_hint("pass --reveal if you really mean to, or use `broker run` to hand it to a program"));
            }
            let broker = load(config, None)?;
            let credential = progress::waiting(
                &progress::label(&broker, &args.name),
                broker.resolve(&args.name, &context(args.agent)),
            )
            .await?;
            if args.json {
                return output::print_credential_json(&args.name, &credential);
            }
            let mut out = stdout.lock();
            out.write_all(credential.value().expose())
                .and_then(|()| {
                    if out.is_terminal() {
                        out.write_all(b"\n")
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("cannot write to standard output", &e))?;
            Ok(0)
        }
        Command::Rotate(args) => {
            let broker = load(config, None)?;
            let rotation = broker.rotate(&args.name, &context(None)).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "credential": args.name, "summary": rotation.summary, "version": rotation.version })
                );
            } else {
                println!("rotated `{}`: {}", args.name, rotation.summary);
            }
            Ok(0)
        }
        #[cfg(feature = "serve")]
        Command::Serve => {
            let broker = load(config, None)?;
            let serve = broker_serve::ServeConfig::from_config(broker.config())?;
            // SIGHUP reads the same file again (the one found now, not a new search).
            let config_path = broker.config().path().to_path_buf();
            let reload: broker_serve::Reload = Box::new(move || {
                let broker = load(Some(&config_path), None)?;
                let serve = broker_serve::ServeConfig::from_config(broker.config())?;
                Ok((broker, serve))
            });
            let shutdown = async {
                let term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
                match term {
                    Ok(mut term) => tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    },
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            };
            broker_serve::Daemon::new(broker, serve)?
                .with_reload(reload)
                .run(shutdown)
                .await?;
            Ok(0)
        }
        #[cfg(feature = "serve")]
        Command::Request(args) => {
            let stdout = std::io::stdout();
            if !args.reveal && !stdout.is_terminal() {
                return Err(Error::new(
                    broker_core::ErrorKind::PolicyDenied,
                    format!("refusing to print credential `{}` to a pipe or file", args.name),
                )
                .with_hint("pass --reveal if you really mean to, or use `broker run` to hand it to a program"));
            }
            let daemon = args.daemon.endpoint()?.ok_or_else(|| {
                Error::invalid_config("`broker request` needs --from (or BROKER_FROM)")
            })?;
            let scope = args
                .scope
                .as_deref()
                .map(|s| {
                    serde_json::from_str::<broker_serve::ScopeRequest>(s).map_err(|e| {
                        Error::invalid_config(format!("--scope is not a scope: {e}")).with_hint(
                            r#"e.g. --scope '{"resources": ["arn:aws:s3:::bucket/reports/*"]}'"#,
                        )
                    })
                })
                .transpose()?;
            let request = broker_serve::CredentialRequest {
                ttl: args.ttl.map(broker_serve::TtlValue::Text),
                scope,
                reason: args.reason,
                ..Default::default()
            };
            let answer =
                broker_serve::client::request_credential(&daemon, &args.name, &request).await?;
            let mut out = stdout.lock();
            let written = if args.json {
                let companions: std::collections::BTreeMap<&str, &str> = answer
                    .companions
                    .iter()
                    .filter_map(|(k, v)| v.expose_str().ok().map(|v| (k.as_str(), v)))
                    .collect();
                let body = serde_json::json!({
                    "value": answer.value.expose_str()?,
                    "companions": companions,
                    "expires_at": answer.expires_at,
                    "lease_id": answer.lease_id,
                    "request_id": answer.request_id,
                });
                let text = zeroize::Zeroizing::new(body.to_string());
                out.write_all(text.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
            } else {
                out.write_all(answer.value.expose()).and_then(|()| {
                    if out.is_terminal() {
                        out.write_all(b"\n")
                    } else {
                        Ok(())
                    }
                })
            };
            written
                .and_then(|()| out.flush())
                .map_err(|e| Error::io("cannot write to standard output", &e))?;
            Ok(0)
        }
        #[cfg(feature = "mcp")]
        Command::Mcp(args) => {
            let _hygiene = hygiene::Hygiene::enter();
            let broker = std::sync::Arc::new(load(config, None)?);
            match args.listen {
                None => broker_mcp::serve_stdio(broker, args.agent).await?,
                Some(listen) => {
                    let ready = |addr: std::net::SocketAddr| {
                        let _ = writeln!(
                            std::io::stderr(),
                            "broker mcp: listening on http://{addr}{}",
                            broker_mcp::MCP_PATH
                        );
                    };
                    let shutdown = async {
                        let term = tokio::signal::unix::signal(
                            tokio::signal::unix::SignalKind::terminate(),
                        );
                        match term {
                            Ok(mut term) => tokio::select! {
                                _ = term.recv() => {}
                                _ = tokio::signal::ctrl_c() => {}
                            },
                            Err(_) => {
                                let _ = tokio::signal::ctrl_c().await;
                            }
                        }
                    };
                    let options = broker_mcp::HttpOptions { listen };
                    broker_mcp::serve_http(broker, options, ready, shutdown).await?;
                }
            }
            Ok(0)
        }
        #[cfg(feature = "aws")]
        Command::CredentialProcess(args) => {
            let broker = load(config, None)?;
            progress::waiting(
                &progress::label(&broker, &args.name),
                credential_process::credential_process(&broker, &args.name, context(args.agent)),
            )
            .await
        }
        #[cfg(not(feature = "aws"))]
        Command::CredentialProcess(_) => Err(Error::not_configured(
            "credential-process needs the `aws` backend, which is not compiled in",
        )),
        Command::Revoke(args) => {
            let broker = load(config, None)?;
            broker.revoke(&args.lease, args.backend.as_deref()).await?;
            println!("revoked {}", args.lease);
            Ok(0)
        }
    }
}

/// `broker check`: parse each reference and confirm its backend is compiled in.
fn check(references: &[String], json: bool) -> Result<u8, Error> {
    let registry = broker_core::Registry::global();
    let mut rows = Vec::new();
    for text in references {
        let reference: Reference = registry.parse(text)?;
        let backend = registry
            .require_scheme(reference.scheme())
            .map_err(|e| e.with_reference(broker_core::grammar::elide(&reference.to_string())))?;
        rows.push((reference, backend.name));
    }
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(r, b)| serde_json::json!({ "reference": r, "scheme": r.scheme(), "backend": b, "valid": true }))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for (r, b) in rows {
            println!("ok  {r}  ({b})");
        }
    }
    Ok(0)
}
