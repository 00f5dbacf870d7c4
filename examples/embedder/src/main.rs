//! An embedder of `broker-core`: a program with a backend of its own for a scheme of its own.
//!
//! - `DemoProvider` serves `demo:NAME` from an in-memory map; its [`ProviderDescriptor`]
//!   brings the scheme's grammar (`demo:NAME`, no query, no `#field`, upper-case names).
//! - It is registered with an explicit [`Registry::register`] (no `inventory`), so only this
//!   program's registry knows `demo:` and references are parsed with [`Registry::parse`].
//! - A [`Broker`] is built from a config text with that registry; the delivery engine
//!   ([`broker_core::session`], what `broker run` uses) hands the credential to
//!   `sh -c 'echo "$DEMO_TOKEN"'`, redacts its output and wipes what it delivered.
//!
//! Run it with `cargo run -p broker-embedder-example`; `cargo test` checks the output.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};

use broker_core::grammar::{Operation, QueryKeys, SchemeGrammar, Shape, TargetError};
use broker_core::session::OutputBuffer;
use broker_core::{
    BackendContext, Badge, Broker, Capabilities, Config, Credential, CredentialProvider,
    Destination, Error, ProviderDescriptor, Reference, Registry, RequestContext, Result,
    SecretValue, async_trait,
};

/// The scheme this program's backend serves.
const SCHEME: &str = "demo";

/// The values the backend serves. A factory is a plain `fn`, so state it needs at build time
/// comes from a static like this one (or from the backend's `backends.demo` settings).
static STORE: OnceLock<BTreeMap<&'static str, &'static str>> = OnceLock::new();

/// Serves `demo:NAME` from [`STORE`].
struct DemoProvider {
    values: BTreeMap<&'static str, &'static str>,
}

#[async_trait]
impl CredentialProvider for DemoProvider {
    fn egress(&self, _reference: &Reference, _base_dir: &Path) -> Result<Vec<Destination>> {
        // Nothing leaves the process: the values are in its memory.
        Ok(vec![Destination::process_env()])
    }

    async fn resolve(&self, request: &broker_core::Request<'_>) -> Result<Credential> {
        let name = request.reference.target();
        match self.values.get(name) {
            Some(value) => Ok(Credential::new(SecretValue::copy_from(value.as_bytes()))),
            None => Err(Error::not_found(format!("no demo value named `{name}`"))
                .with_reference(request.reference)),
        }
    }
}

fn build(_: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    Ok(Arc::new(DemoProvider {
        values: STORE.get().cloned().unwrap_or_default(),
    }))
}

/// `demo:` targets: upper-case letters, digits and `_`.
fn demo_name(target: &str) -> std::result::Result<(), TargetError> {
    match target
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_'))
    {
        Some((at, c)) => Err((
            at,
            format!("`{c}` is not allowed in a demo name (A-Z, 0-9, `_`)"),
        )),
        None => Ok(()),
    }
}

/// The backend's registration, with the grammar of its scheme.
static DEMO: ProviderDescriptor = ProviderDescriptor {
    name: "demo",
    schemes: &[SCHEME],
    capabilities: Capabilities {
        resolve: true,
        mint: false,
        revoke: false,
        rotate: false,
    },
    default_badge: Badge::Local,
    credential_options: &[],
    grammar: &[SchemeGrammar {
        scheme: SCHEME,
        form: "demo:NAME",
        shape: Shape::Opaque,
        operation: Operation::Resolve,
        field: false,
        query: QueryKeys::None,
        validate: demo_name,
    }],
    factory: build,
};

/// The config: one credential from the demo backend, delivered as `DEMO_TOKEN`.
const CONFIG: &str = r#"
credentials:
  token: { ref: "demo:TOKEN", as: DEMO_TOKEN }
"#;

/// This program's registry: the demo backend only, registered explicitly.
fn registry() -> Result<Registry> {
    let mut registry = Registry::new();
    registry.register(&DEMO)?;
    Ok(registry)
}

/// Delivers the demo credential to `sh -c 'echo "$DEMO_TOKEN"'` and returns what the child
/// printed, redacted.
fn demo() -> Result<String> {
    STORE.get_or_init(|| BTreeMap::from([("TOKEN", "demo-token-3f9a1c7e52b8")]));
    let registry = registry()?;

    // References to `demo:` parse against this registry, with the backend's grammar.
    let reference = registry.parse("demo:TOKEN")?;
    assert_eq!(reference.target(), "TOKEN");

    // The config lives in a scratch directory of ours (the audit log goes next to it).
    let dir = tempfile::tempdir().map_err(|e| Error::internal(format!("temp dir: {e}")))?;
    let config = Config::from_str(CONFIG, &dir.path().join(".broker.yml"), &registry)?;
    let broker = Broker::new(config, registry)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("runtime: {e}")))?;
    let output = runtime.block_on(run_child(&broker))?;
    Ok(String::from_utf8_lossy(&output).into_owned())
}

/// Runs the child through the delivery engine; returns its output, redacted.
async fn run_child(broker: &Broker) -> Result<Vec<u8>> {
    let io = |what: &str, e: std::io::Error| Error::internal(format!("{what}: {e}"));
    // Policy, egress gate and audit, then the values (and any `kind: file` files).
    let mut session = broker.session(&[], &RequestContext::new()).await?;
    // Everything the child prints is read, redacted and only then written here.
    let output = OutputBuffer::with_cap(1 << 20);
    let mut pumps = session.pumps();

    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", r#"echo "$DEMO_TOKEN""#]);
    session.delivery().apply_to_tokio(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(
            pumps
                .pipe("stdout", output.clone())
                .map_err(|e| io("pipe", e))?,
        )
        .stderr(
            pumps
                .pipe("stderr", output.clone())
                .map_err(|e| io("pipe", e))?,
        )
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| io("cannot run sh", e))?;
    drop(cmd); // closes our copies of the pipes' write ends
    if let Some(pid) = child.id() {
        session.record_child(pid)?;
    }
    let status = session.wait(&mut child).await.map_err(|e| io("wait", e))?;
    pumps.finish();
    session.wipe().map_err(|e| io("wipe", e))?;
    if !status.success() {
        return Err(Error::internal(format!("the child failed: {status}")));
    }
    Ok(output.contents())
}

fn main() -> std::process::ExitCode {
    match demo() {
        Ok(shown) => {
            #[allow(clippy::print_stdout)]
            {
                print!("{shown}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_child_output_is_redacted() {
        let shown = demo().unwrap();
        assert_eq!(shown, "[REDACTED:token]\n");
        assert!(!shown.contains("demo-token-3f9a1c7e52b8"));
    }

    #[test]
    fn the_scheme_parses_only_against_this_registry() {
        let registry = registry().unwrap();
        assert_eq!(
            registry.parse("demo:API_KEY").unwrap().to_string(),
            "demo:API_KEY"
        );
        assert_eq!(
            registry.parse("demo:api").unwrap_err().to_string(),
            "invalid reference `demo:api` at column 6: `a` is not allowed in a demo name (A-Z, 0-9, `_`)"
        );
        assert_eq!(
            registry.parse("demo:TOKEN#f").unwrap_err().to_string(),
            "invalid reference `demo:TOKEN#f` at column 11: `demo` references take no `#field`"
        );
        // No inventory registration: the compiled-in registry does not know `demo:`.
        assert!("demo:TOKEN".parse::<Reference>().is_err());
    }
}
