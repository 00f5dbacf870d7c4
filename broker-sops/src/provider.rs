//! The provider: key ring, decryption, field selection and rotation of sops files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker_core::{
    Check, Credential, CredentialProvider, DeliveryKind, Destination, Error, ErrorKind, Reference,
    Request, ResolveRef, Result, Rotation, SecretValue, async_trait,
};
use zeroize::Zeroizing;

use crate::document;
use crate::keys::{EnvLookup, Explicit, KeyRing};
use crate::settings::Settings;
use crate::store::{self, Format};
use crate::tree::{self, Node};

/// Decrypts sops files.
#[derive(Clone)]
pub struct SopsProvider {
    settings: Settings,
    base_dir: PathBuf,
    env: Arc<EnvLookup>,
}

impl std::fmt::Debug for SopsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SopsProvider")
            .field("settings", &self.settings)
            .field("base_dir", &self.base_dir)
            .finish_non_exhaustive()
    }
}

impl SopsProvider {
    /// A provider with `settings`, resolving relative setting paths against `base_dir`, and
    /// reading `SOPS_AGE_*`, `HOME` and `XDG_CONFIG_HOME` from the process environment.
    pub fn new(settings: Settings, base_dir: impl Into<PathBuf>) -> Self {
        SopsProvider {
            settings,
            base_dir: base_dir.into(),
            env: Arc::new(|name: &str| std::env::var(name).ok()),
        }
    }

    /// Replaces the environment the key sources are read from (for embedders and tests).
    #[must_use]
    pub fn with_env(mut self, vars: BTreeMap<String, String>) -> Self {
        self.env = Arc::new(move |name: &str| vars.get(name).cloned());
        self
    }

    async fn key_ring(&self, nested: &dyn ResolveRef) -> Result<KeyRing> {
        let path = |p: &Option<String>| {
            p.as_deref()
                .map(|p| broker_core::provider::resolve_path(&self.base_dir, p))
        };
        let age_key = match &self.settings.age_key_ref {
            Some(r) => {
                let reference: Reference = r.parse().map_err(|e: Error| {
                    Error::invalid_config(format!("backends.sops.age_key_ref: {e}"))
                })?;
                Some(nested.resolve_ref(&reference, "sops age key").await?)
            }
            None => None,
        };
        KeyRing::load(
            &Explicit {
                age_key_file: path(&self.settings.age_key_file),
                age_ssh_key_file: path(&self.settings.age_ssh_key_file),
                age_key: age_key.as_ref().map(SecretValue::expose),
                pgp_key_file: path(&self.settings.pgp_key_file),
            },
            &*self.env,
        )
    }
}

fn format_of(reference: &Reference, path: &Path) -> Result<Format> {
    match reference.query_param("format") {
        Some(f) => Format::parse(f).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidReference,
                format!("unknown sops format `{f}` (yaml, json, dotenv, ini, binary)"),
            )
        }),
        None => Ok(Format::from_path(path)),
    }
}

/// Reads a sops file through [`broker_core::localfile`]: never blocks on a FIFO or device,
/// bounded in size.
fn read_file(path: &Path) -> Result<String> {
    let bytes = broker_core::localfile::read(path, broker_core::localfile::MAX_SECRET_FILE)
        .map_err(|e| {
            if e.is_not_found() {
                Error::not_found(format!("sops file {} does not exist", path.display()))
            } else {
                e.to_error(
                    format_args!("cannot read sops file {}", path.display()),
                    ErrorKind::Unsupported,
                )
            }
        })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Error::new(
            ErrorKind::Integrity,
            format!("sops file {} is not UTF-8 text", path.display()),
        )
    })
}

/// Decrypts `path` (as `format`) with `ring` and returns the plaintext tree. Crate-internal
/// entry point for the provider and its tests.
fn open(path: &Path, format: Format, ring: &KeyRing) -> Result<document::Decrypted> {
    let text = read_file(path)?;
    document::decrypt(format, &text, ring).map_err(|e| e.with_location(path.display().to_string()))
}

fn subtree(format: Format, node: &Node) -> Result<Vec<u8>> {
    Ok(match format {
        Format::Yaml => store::yaml::emit(node).into_bytes(),
        _ => store::json::emit(node).into_bytes(),
    })
}

#[async_trait]
impl CredentialProvider for SopsProvider {
    fn egress(&self, reference: &Reference, base_dir: &Path) -> Result<Vec<Destination>> {
        let path = broker_core::provider::resolve_path(base_dir, reference.target());
        let mut out = vec![Destination::file(&path)];
        // Reading the local file's metadata is local I/O only; an unreadable file is reported
        // when resolving.
        let Ok(format) = format_of(reference, &path) else {
            return Ok(out);
        };
        let Ok(text) = read_file(&path) else {
            return Ok(out);
        };
        let Ok((_, meta)) = document::load(format, &text) else {
            return Ok(out);
        };
        for group in &meta.key_groups {
            if group.iter().any(|k| k.destination().is_none()) {
                continue;
            }
            for key in group {
                if let Some(d) = key.destination()
                    && !out.contains(&d)
                {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    async fn resolve(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        let attach = |e: Error| e.with_reference(reference);
        let path = request.path(reference.target());
        let format = format_of(reference, &path).map_err(attach)?;
        let field = reference.field_path();
        if field.is_none() && format != Format::Binary && request.kind() == Some(DeliveryKind::Env)
        {
            return Err(attach(
                Error::invalid_config(format!(
                    "the whole {} document cannot be delivered as one environment variable",
                    format.name()
                ))
                .with_hint(format!(
                    "select one key (`{}#some.key`) or use `kind: file`",
                    reference.without_field()
                )),
            ));
        }
        let ring = self.key_ring(request.nested).await.map_err(attach)?;
        let doc = open(&path, format, &ring).map_err(attach)?;
        let bytes: Vec<u8> = match &field {
            None => store::emit_plain(format, &doc.data)
                .map_err(|m| attach(Error::new(ErrorKind::Integrity, m)))?,
            Some(fp) => {
                let node = doc.data.select(fp).ok_or_else(|| {
                    attach(Error::not_found(format!(
                        "key `{fp}` is not in {}",
                        path.display()
                    )))
                })?;
                if node.is_branch() {
                    subtree(format, node)?
                } else {
                    tree::scalar_output(node).ok_or_else(|| {
                        attach(Error::not_found(format!(
                            "`{fp}` is a comment, not a value"
                        )))
                    })?
                }
            }
        };
        Ok(Credential::new(SecretValue::new(bytes)))
    }

    async fn rotate(&self, request: &Request<'_>) -> Result<Rotation> {
        let reference = request.reference;
        let attach = |e: Error| e.with_reference(reference);
        let path = request.path(reference.target());
        let format = format_of(reference, &path).map_err(attach)?;
        let ring = self.key_ring(request.nested).await.map_err(attach)?;
        let doc = open(&path, format, &ring).map_err(attach)?;
        let bytes = Zeroizing::new(document::rotate(format, &doc).map_err(attach)?);
        // Check our own output before replacing anything.
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| attach(Error::internal("rotated file is not UTF-8")))?;
        let check = document::decrypt(format, text, &ring).map_err(|e| {
            attach(Error::internal(format!(
                "rotated file does not verify: {}",
                e.message()
            )))
        })?;
        drop(check);
        broker_core::localfile::write_atomically(&path, &bytes).map_err(attach)?;
        let keys = doc.meta.all_keys().count();
        Ok(Rotation {
            summary: format!(
                "re-encrypted {} with a new data key for {keys} master key{}",
                path.display(),
                if keys == 1 { "" } else { "s" }
            ),
            version: None,
        })
    }

    async fn check(&self, nested: &dyn ResolveRef) -> Check {
        match self.key_ring(nested).await {
            Ok(ring) if !ring.age.is_empty() || !ring.pgp.is_empty() => Check::ok(format!(
                "{} age identit{}, {} PGP key{} from {}",
                ring.age.len(),
                if ring.age.len() == 1 { "y" } else { "ies" },
                ring.pgp.len(),
                if ring.pgp.len() == 1 { "" } else { "s" },
                ring.sources.join(", ")
            )),
            Ok(ring) => {
                let mut detail = String::from(
                    "no age identity or PGP key found (SOPS_AGE_KEY_FILE, SOPS_AGE_KEY, ~/.config/sops/age/keys.txt, backends.sops.age_key_file, backends.sops.pgp_key_file)",
                );
                if !ring.notes.is_empty() {
                    detail.push_str(&format!("; {}", ring.notes.join("; ")));
                }
                Check::failed(detail)
            }
            Err(e) => Check::failed(e.to_string()),
        }
    }
}
