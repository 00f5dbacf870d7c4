//! The provider: finding identities, resolving and rotating age files.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use broker_core::localfile;
use broker_core::provider::resolve_path;
use broker_core::{
    Check, Credential, CredentialProvider, Destination, Error, ErrorKind, Reference, Request,
    ResolveRef, Result, Rotation, SecretValue, async_trait,
};
use zeroize::Zeroizing;

use crate::crypto::{self, Failure};
use crate::keys::{self, Identity, Recipient};
use crate::settings::{IdentityList, IdentitySpec, RecipientList, Settings};

/// The environment variable naming identity files when none is configured (several paths
/// separated by `:`, like `PATH`).
pub const IDENTITY_ENV: &str = "AGE_IDENTITY_FILE";

/// The agenix default identities, relative to `$HOME`, tried in this order.
pub const DEFAULT_IDENTITIES: &[&str] = &[".ssh/id_ed25519", ".ssh/id_rsa"];

/// Identity files larger than this are refused (age itself caps identity files at 16 MiB).
const MAX_IDENTITY_BYTES: u64 = 1 << 20;

/// Where the environment comes from: the process, or fixed values (tests and embedders).
#[derive(Debug, Clone, Default)]
enum Environment {
    #[default]
    Process,
    Fixed {
        identity_file: Option<OsString>,
        home: Option<PathBuf>,
    },
}

/// The age/agenix provider. Holds settings only (paths, references and public keys), never
/// key material or values: keys are read for a request and dropped (zeroized) after it. The
/// credentials of one request (one `deliver`, which resolves them concurrently) share one
/// reading of the identity files: a weak reference lets the identities live exactly as long
/// as some decryption of that request still uses them.
#[derive(Debug, Clone, Default)]
pub struct AgeProvider {
    settings: Settings,
    recipients: Vec<String>,
    env: Environment,
    base_dir: Option<PathBuf>,
    shared: Arc<Mutex<Option<SharedIdentities>>>,
}

/// Identities loaded for one request, with the labels of the sources tried.
struct Loaded {
    identities: Vec<Identity>,
    tried: Vec<String>,
}

/// The identities in use by a request's decryptions (gone when none is running).
struct SharedIdentities {
    request_id: String,
    /// The identity sources, as their `Debug` text (paths and references only).
    sources: String,
    loaded: Weak<Loaded>,
}

impl std::fmt::Debug for SharedIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIdentities")
            .field("request_id", &self.request_id)
            .field("sources", &self.sources)
            .field("in_use", &(self.loaded.strong_count() > 0))
            .finish()
    }
}

/// What a decryption gives back: the ciphertext (empty when it was streamed from the file),
/// and the plaintext or why not.
type Decrypted = (Vec<u8>, std::result::Result<Zeroizing<Vec<u8>>, Failure>);

/// An age file to decrypt: read whole (kept for a rotation's checks), or an open file read as
/// it is decrypted (a value that is only resolved: no second buffer the size of the file).
enum Ciphertext {
    Bytes(Vec<u8>),
    File(std::fs::File, u64),
}

impl Ciphertext {
    fn decrypt(self, identities: &[Identity]) -> Decrypted {
        match self {
            Ciphertext::Bytes(bytes) => {
                let result = crypto::decrypt(&bytes, identities);
                (bytes, result)
            }
            Ciphertext::File(file, len) => {
                // At most the length seen when it was opened: the plaintext buffer is sized
                // from it (a file that grows meanwhile reads as truncated).
                let Ok(size) = usize::try_from(len) else {
                    return (Vec::new(), Err(Failure::Integrity("the file is too large")));
                };
                let capacity = size.clamp(1, STREAM_BUFFER);
                let input =
                    std::io::BufReader::with_capacity(capacity, std::io::Read::take(file, len));
                (Vec::new(), crypto::decrypt_from(input, size, identities))
            }
        }
    }
}

/// The read buffer of a streamed decryption (age encrypts in 64 KiB chunks).
const STREAM_BUFFER: usize = 64 << 10;

/// One decryption waiting for a worker.
struct Job {
    ciphertext: Ciphertext,
    loaded: Arc<Loaded>,
    reply: tokio::sync::oneshot::Sender<Decrypted>,
}

/// Decryptions waiting, and how many workers are draining them (at most one per core).
///
/// A worker is a task on tokio's blocking pool that decrypts jobs until none is left. Handing
/// each decryption to `spawn_blocking` on its own made a new thread for almost every one (the
/// thread that had just finished was not yet idle when the next was handed over): ten threads
/// for twenty files instead of two.
struct Workers {
    queue: std::collections::VecDeque<Job>,
    running: usize,
}

fn workers() -> &'static Mutex<Workers> {
    static WORKERS: Mutex<Workers> = Mutex::new(Workers {
        queue: std::collections::VecDeque::new(),
        running: 0,
    });
    &WORKERS
}

fn max_workers() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One running worker's place in [`Workers::running`]. A worker gives it back itself when it
/// finds the queue empty (under the lock, so a job queued meanwhile starts a new worker); the
/// `Drop` covers a worker that never ran (its task dropped by a runtime shutting down) or
/// ended otherwise: the place is given back and jobs whose requester is gone are dropped (with
/// them their keys and open files), so nothing lingers in the queue for want of a worker.
struct WorkerSlot {
    held: bool,
}

impl Drop for WorkerSlot {
    fn drop(&mut self) {
        if self.held {
            let mut w = workers().lock().unwrap_or_else(|p| p.into_inner());
            w.running -= 1;
            w.queue.retain(|job| !job.reply.is_closed());
        }
    }
}

/// Decrypts jobs from the queue until it is empty. A job whose requester is gone is skipped;
/// a decryption that panics (a bug) fails its own job only.
fn drain(mut slot: WorkerSlot) {
    loop {
        let job = {
            let mut w = workers().lock().unwrap_or_else(|p| p.into_inner());
            match w.queue.pop_front() {
                Some(job) => job,
                None => {
                    w.running -= 1;
                    slot.held = false;
                    return;
                }
            }
        };
        if job.reply.is_closed() {
            continue;
        }
        let Job {
            ciphertext,
            loaded,
            reply,
        } = job;
        let decrypted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ciphertext.decrypt(&loaded.identities)
        }))
        .unwrap_or_else(|_| {
            (
                Vec::new(),
                Err(Failure::Integrity("decryption failed unexpectedly")),
            )
        });
        // The requester may be gone (its future dropped): the plaintext is dropped here.
        let _ = reply.send(decrypted);
    }
}

/// Decrypts on tokio's blocking pool when there is a runtime (so concurrent requests, as
/// `deliver` makes them, use every core), else here. Gives the ciphertext back.
async fn decrypt_offloaded(ciphertext: Ciphertext, loaded: Arc<Loaded>) -> Decrypted {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return ciphertext.decrypt(&loaded.identities);
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let start_worker = {
        let mut w = workers().lock().unwrap_or_else(|p| p.into_inner());
        w.queue.push_back(Job {
            ciphertext,
            loaded,
            reply,
        });
        let start = w.running < max_workers();
        if start {
            w.running += 1;
        }
        start
    };
    if start_worker {
        // A task dropped unrun (the runtime is shutting down) gives its place back.
        let slot = WorkerSlot { held: true };
        drop(runtime.spawn_blocking(move || drain(slot)));
    }
    match answer.await {
        Ok(done) => done,
        // The worker panicked (a bug) or never ran: no plaintext, no ciphertext to give back.
        Err(_) => (
            Vec::new(),
            Err(Failure::Integrity("decryption failed unexpectedly")),
        ),
    }
}

impl AgeProvider {
    /// A provider with `settings`. Validates the recipients (public keys) without any I/O.
    pub fn new(settings: Settings) -> Result<Self> {
        for (i, r) in settings.recipients.0.iter().enumerate() {
            keys::parse_recipient(r, &format!("backends.age.recipients[{i}]"))?;
        }
        Ok(AgeProvider {
            recipients: settings.recipients.0.clone(),
            settings,
            env: Environment::Process,
            base_dir: None,
            shared: Arc::default(),
        })
    }

    /// Sets the directory relative identity paths are resolved against when there is no
    /// request (for `check`); the factory sets it to the config file's directory.
    #[must_use]
    pub fn with_base_dir(mut self, base_dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(base_dir.into());
        self
    }

    /// Uses fixed values instead of the process environment: `identity_file` stands for
    /// `$AGE_IDENTITY_FILE` and `home` for `$HOME` (where the agenix defaults are looked up).
    /// For embedders that sandbox the broker, and for tests.
    #[must_use]
    pub fn with_environment(
        mut self,
        identity_file: Option<OsString>,
        home: Option<PathBuf>,
    ) -> Self {
        self.env = Environment::Fixed {
            identity_file,
            home,
        };
        self
    }

    fn env_identity_file(&self) -> Option<OsString> {
        match &self.env {
            Environment::Process => std::env::var_os(IDENTITY_ENV),
            Environment::Fixed { identity_file, .. } => identity_file.clone(),
        }
        .filter(|v| !v.is_empty())
    }

    fn home(&self) -> Option<PathBuf> {
        match &self.env {
            Environment::Process => std::env::var_os("HOME").map(PathBuf::from),
            Environment::Fixed { home, .. } => home.clone(),
        }
        .filter(|h| !h.as_os_str().is_empty())
    }

    /// `path` against `base`, expanding `~/` with this provider's home.
    fn path(&self, base: &Path, path: &str) -> PathBuf {
        match (path.strip_prefix("~/"), &self.env) {
            (Some(rest), Environment::Fixed { .. }) => match self.home() {
                Some(home) => home.join(rest),
                None => base.join(path),
            },
            _ => resolve_path(base, path),
        }
    }

    /// The age file a reference names.
    fn file(&self, reference: &Reference, base: &Path) -> PathBuf {
        self.path(base, reference.target())
    }

    /// Where the identities for `request` come from, in the documented order.
    fn sources(&self, option: Option<&serde_json::Value>, base: &Path) -> Result<Vec<Source>> {
        let configured = match option {
            Some(v) => IdentityList::from_option(v)?,
            None => self.settings.identity.clone(),
        };
        if !configured.0.is_empty() {
            return Ok(configured
                .0
                .into_iter()
                .map(|spec| match spec {
                    IdentitySpec::Path(p) => Source::File {
                        path: self.path(base, &p),
                        written: Some(p),
                        required: true,
                    },
                    IdentitySpec::Ref(r) => Source::Reference(r),
                })
                .collect());
        }
        if let Some(value) = self.env_identity_file() {
            let files: Vec<Source> = std::env::split_paths(&value)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| Source::File {
                    path: std::path::absolute(&p).unwrap_or(p),
                    written: None,
                    required: true,
                })
                .collect();
            if !files.is_empty() {
                return Ok(files);
            }
        }
        let home = self.home().ok_or_else(|| {
            no_identity("no identity is configured, AGE_IDENTITY_FILE is unset and HOME is unset")
        })?;
        Ok(DEFAULT_IDENTITIES
            .iter()
            .map(|rel| Source::File {
                path: home.join(rel),
                written: None,
                required: false,
            })
            .collect())
    }

    /// Loads every identity from `sources`. Returns the identities and the labels tried.
    async fn load(
        &self,
        sources: &[Source],
        nested: &dyn ResolveRef,
    ) -> Result<(Vec<Identity>, Vec<String>)> {
        let mut identities = Vec::new();
        let mut tried = Vec::new();
        let mut skipped: Option<Error> = None;
        for source in sources {
            match source {
                Source::File {
                    path,
                    written,
                    required,
                } => {
                    let label = path.display().to_string();
                    let content = match localfile::read(path, MAX_IDENTITY_BYTES) {
                        Ok(c) => c,
                        Err(e) if e.is_not_found() && !required => {
                            continue;
                        }
                        Err(e) if e.is_not_found() => {
                            let mut err = Error::not_configured(format!(
                                "identity file {label} does not exist"
                            ));
                            if let Some(hint) = written.as_deref().and_then(reference_hint) {
                                err = err.with_hint(hint);
                            }
                            return Err(err);
                        }
                        Err(e) => {
                            return Err(e.to_error(
                                format_args!("cannot read identity file {label}"),
                                ErrorKind::Unsupported,
                            ));
                        }
                    };
                    match keys::parse_identities(&content, &label) {
                        Ok(found) => {
                            tried.push(label);
                            identities.extend(found);
                        }
                        // A default key the agenix way (not configured) that cannot be used,
                        // say a passphrase-protected ~/.ssh/id_ed25519, is skipped when
                        // another default works; its error is reported when none does.
                        Err(e) if !required => {
                            tried.push(format!("{label} (skipped: {})", e.kind()));
                            skipped.get_or_insert(e);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Source::Reference(reference) => {
                    let label = format!("reference `{reference}`");
                    let value = nested.resolve_ref(reference, "age identity").await?;
                    tried.push(label.clone());
                    identities.extend(keys::parse_identities(value.expose(), &label)?);
                }
            }
        }
        if identities.is_empty() {
            if let Some(e) = skipped {
                return Err(e);
            }
            let home_defaults: Vec<String> = sources
                .iter()
                .filter_map(|s| match s {
                    Source::File { path, .. } => Some(path.display().to_string()),
                    Source::Reference(_) => None,
                })
                .collect();
            return Err(no_identity(format!(
                "no age identity found (looked for {})",
                home_defaults.join(", ")
            )));
        }
        Ok((identities, tried))
    }

    /// The identities for `request`: those another decryption of the same request is still
    /// using, or read now.
    async fn identities_for(&self, request: &Request<'_>) -> Result<Arc<Loaded>> {
        let sources = self.sources(request.option("identity"), request.base_dir)?;
        let key = format!("{sources:?}");
        let request_id = &request.context.request_id;
        {
            let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = shared.as_ref()
                && &s.request_id == request_id
                && s.sources == key
                && let Some(loaded) = s.loaded.upgrade()
            {
                return Ok(loaded);
            }
        }
        let (identities, tried) = self.load(&sources, request.nested).await?;
        let loaded = Arc::new(Loaded { identities, tried });
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(SharedIdentities {
            request_id: request_id.clone(),
            sources: key,
            loaded: Arc::downgrade(&loaded),
        });
        Ok(loaded)
    }

    /// Reads and decrypts the file behind `request`; returns the plaintext, the identities,
    /// and the ciphertext when `keep_ciphertext` (a rotation checks it), else the file is
    /// decrypted as it is read and `ciphertext` is empty.
    async fn open(&self, request: &Request<'_>, keep_ciphertext: bool) -> Result<Opened> {
        if request.reference.field().is_some() {
            return Err(Error::new(
                ErrorKind::InvalidReference,
                "age references take no #field: an age file holds one value",
            ));
        }
        let path = self.file(request.reference, request.base_dir);
        let label = path.display().to_string();
        let unreadable = |e: localfile::ReadError| {
            if e.is_not_found() {
                Error::not_found(format!("age file {label} does not exist"))
            } else {
                e.to_error(
                    format_args!("cannot read age file {label}"),
                    ErrorKind::Unsupported,
                )
            }
        };
        // Never blocks (a FIFO is refused, not opened for reading) and is bounded in size.
        let input = if keep_ciphertext {
            let mut read =
                localfile::read(&path, localfile::MAX_SECRET_FILE).map_err(unreadable)?;
            // Ciphertext is not secret: taken out of the zeroizing buffer (no copy, no wipe).
            Ciphertext::Bytes(std::mem::take(&mut *read))
        } else {
            let (file, len) =
                localfile::open(&path, localfile::MAX_SECRET_FILE).map_err(unreadable)?;
            Ciphertext::File(file, len)
        };
        let loaded = self.identities_for(request).await?;
        let (ciphertext, plaintext) = decrypt_offloaded(input, Arc::clone(&loaded)).await;
        let plaintext = plaintext.map_err(|f| crypto::failure_error(f, &label, &loaded.tried))?;
        Ok(Opened {
            path,
            ciphertext,
            plaintext,
            identities: loaded,
        })
    }

    fn configured_recipients(&self, request: &Request<'_>) -> Result<Option<Vec<Recipient>>> {
        let (list, what) = match request.option("recipients") {
            Some(v) => (RecipientList::from_option(v)?.0, "option `recipients`"),
            None => (self.recipients.clone(), "backends.age.recipients"),
        };
        if list.is_empty() {
            return Ok(None);
        }
        list.iter()
            .enumerate()
            .map(|(i, r)| keys::parse_recipient(r, &format!("{what}[{i}]")))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// One place identities come from.
#[derive(Debug)]
enum Source {
    File {
        path: PathBuf,
        /// The path as written in the config, if it came from there.
        written: Option<String>,
        /// Whether a missing file is an error (configured) or skipped (agenix defaults).
        required: bool,
    },
    Reference(Reference),
}

struct Opened {
    path: PathBuf,
    ciphertext: Vec<u8>,
    plaintext: Zeroizing<Vec<u8>>,
    identities: Arc<Loaded>,
}

fn no_identity(message: impl Into<String>) -> Error {
    Error::not_configured(message).with_hint(format!(
        "set `identity:` on the credential or in backends.age, or {IDENTITY_ENV}; agenix users: ~/.ssh/id_ed25519 or ~/.ssh/id_rsa"
    ))
}

/// A hint when an identity path written in the config looks like a reference.
fn reference_hint(written: &str) -> Option<String> {
    let reference: Reference = written.parse().ok()?;
    Some(format!(
        "a string is always a path; to read the key from `{reference}`, write `identity: {{ ref: \"{reference}\" }}`"
    ))
}

#[async_trait]
impl CredentialProvider for AgeProvider {
    fn egress(&self, reference: &Reference, base_dir: &Path) -> Result<Vec<Destination>> {
        Ok(vec![Destination::file(self.file(reference, base_dir))])
    }

    async fn resolve(&self, request: &Request<'_>) -> Result<Credential> {
        let opened = self
            .open(request, false)
            .await
            .map_err(|e| e.with_reference(request.reference))?;
        Ok(Credential::new(SecretValue::from(opened.plaintext)))
    }

    async fn rotate(&self, request: &Request<'_>) -> Result<Rotation> {
        let attach = |e: Error| e.with_reference(request.reference);
        let configured = self.configured_recipients(request).map_err(attach)?;
        let opened = self.open(request, true).await.map_err(attach)?;
        // Rotate the real file, not a symlink pointing at it.
        let path = std::fs::canonicalize(&opened.path).unwrap_or(opened.path.clone());
        let label = path.display().to_string();
        let (recipients, derived) = match configured {
            Some(r) => (r, false),
            None => {
                let mut texts: Vec<String> = Vec::new();
                for identity in &opened.identities.identities {
                    if !texts.contains(&identity.recipient)
                        && keys::matches(&opened.ciphertext, identity)
                    {
                        texts.push(identity.recipient.clone());
                    }
                }
                let stanzas = crypto::recipient_stanzas(&opened.ciphertext).unwrap_or(0);
                if stanzas > texts.len() {
                    return Err(Error::not_configured(format!(
                        "{label} is encrypted to {stanzas} recipients but only {} can be derived from the identities here; rotating would lock the others out",
                        texts.len()
                    ))
                    .with_hint("list every recipient under `recipients:` (on the credential or in backends.age)")
                    .with_reference(request.reference));
                }
                let parsed = texts
                    .iter()
                    .map(|t| keys::parse_recipient(t, "derived recipient"))
                    .collect::<Result<Vec<_>>>()
                    .map_err(attach)?;
                (parsed, true)
            }
        };
        let armored = crypto::is_armored(&opened.ciphertext);
        let fresh = crypto::encrypt(&opened.plaintext, &recipients, armored).map_err(attach)?;
        if derived {
            // The new file must open with the same identities before it replaces the old one.
            let check =
                crypto::decrypt(&fresh, &opened.identities.identities).map_err(|_: Failure| {
                    Error::internal("the re-encrypted file does not decrypt; nothing was written")
                });
            if check.map_err(attach)?.as_slice() != opened.plaintext.as_slice() {
                return Err(attach(Error::internal(
                    "the re-encrypted file does not round-trip; nothing was written",
                )));
            }
        }
        localfile::write_atomically(&path, &fresh).map_err(attach)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(label);
        let n = recipients.len();
        Ok(Rotation {
            summary: format!(
                "re-encrypted {name} to {n} recipient{} with a fresh file key ({}{})",
                if n == 1 { "" } else { "s" },
                if armored { "armored" } else { "binary" },
                if derived {
                    ", recipients derived from the identities"
                } else {
                    ""
                }
            ),
            version: None,
        })
    }

    async fn check(&self, nested: &dyn ResolveRef) -> Check {
        let base = match &self.base_dir {
            Some(b) => b.clone(),
            None => std::env::current_dir().unwrap_or_default(),
        };
        let sources = match self.sources(None, &base) {
            Ok(s) => s,
            Err(e) => return Check::failed(e.to_string()),
        };
        match self.load(&sources, nested).await {
            Ok((identities, tried)) => Check::ok(format!(
                "{} identit{} from {}",
                identities.len(),
                if identities.len() == 1 { "y" } else { "ies" },
                tried.join(", ")
            )),
            Err(e) => Check::failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests dropped while queued or decrypting leave no worker place and no job behind.
    #[test]
    fn workers_give_their_places_back() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let loaded = Arc::new(Loaded {
            identities: Vec::new(),
            tried: Vec::new(),
        });
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..64u8 {
                let loaded = Arc::clone(&loaded);
                // Not an age file: each decryption fails at once.
                let bytes = vec![i; 64 + usize::from(i)];
                tasks.push(tokio::spawn(decrypt_offloaded(
                    Ciphertext::Bytes(bytes),
                    loaded,
                )));
            }
            for (i, task) in tasks.iter().enumerate() {
                if i % 3 == 0 {
                    task.abort();
                }
            }
            for task in tasks {
                if let Ok((_, result)) = task.await {
                    assert!(result.is_err());
                }
            }
        });
        drop(runtime);
        // Other tests may be decrypting too: wait for every worker to finish.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let idle = {
                let w = workers().lock().unwrap_or_else(|p| p.into_inner());
                w.running == 0 && w.queue.is_empty()
            };
            if idle {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a worker place leaked"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(Arc::strong_count(&loaded), 1, "a job kept the identities");
    }
}
