//! Types that hold secret values.
//!
//! A value lives in a [`SecretValue`] (a heap buffer wiped on drop, shared by its clones) from
//! the moment a backend produces it until it is written into a child's environment or a 0600
//! file.
//! None of these types implement `Serialize` or `Display`, and their `Debug` prints
//! `[REDACTED]`. Reading the bytes takes an explicit [`SecretValue::expose`].
//!
//! Every constructor leaves no unwiped copy behind: a value keeps the buffer it was given
//! (never shrunk or reallocated, so never copied) and is wiped on drop, spare capacity
//! included. Clones share the buffer, so serving a value again (from the lease cache, say)
//! copies nothing. The wipe is a plain `memset` followed by a compiler barrier (the pattern of
//! `explicit_bzero`): `zeroize`'s byte-at-a-time volatile stores took 165 µs per MiB. Code that reads a value from a stream should read into a pre-sized
//! [`zeroize::Zeroizing`] buffer: a `Vec` that grows while reading frees its old blocks
//! unwiped.
//!
//! Memory locking: once [`SecretValue::lock_memory`] has turned it on (the `broker` CLI does,
//! while it holds values), the pages under every value's buffer (and under the redactor's
//! derived patterns and held bytes) are `mlock`ed, so they are not written to swap, and
//! unlocked when the last locked buffer on a page is dropped (after it is zeroized). Locks do
//! not nest in the kernel, so a process-wide count per page decides when a page is unlocked.
//! Locking is best effort: a refusal (`RLIMIT_MEMLOCK` reached) leaves the value unlocked and
//! is logged once at debug level; it never makes an allocation fail.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use std::sync::Arc;

use crate::{Error, Result};

/// Whether values are locked in memory (see the module docs).
static LOCKING: AtomicBool = AtomicBool::new(false);
/// Whether a refused lock has been logged.
static REFUSAL_LOGGED: AtomicBool = AtomicBool::new(false);
/// Locked buffers per page (page number: address / page size).
static LOCKED_PAGES: Mutex<BTreeMap<usize, u32>> = Mutex::new(BTreeMap::new());

/// The pages `bytes` lies on, as page numbers `first..=last`.
fn pages_of(bytes: &[u8]) -> (usize, usize, usize) {
    let page = rustix::param::page_size();
    let start = bytes.as_ptr() as usize;
    (page, start / page, (start + bytes.len() - 1) / page)
}

/// The part of `bytes` on page `number`.
fn on_page(bytes: &[u8], page: usize, number: usize) -> &[u8] {
    let start = bytes.as_ptr() as usize;
    let from = (number * page).max(start) - start;
    let to = ((number + 1) * page).min(start + bytes.len()) - start;
    &bytes[from..to]
}

/// Locks the pages under `bytes` when locking is on; returns whether it counted them (the
/// caller passes the same answer to [`unlock_region`]).
pub(crate) fn lock_region(bytes: &[u8]) -> bool {
    if bytes.is_empty() || !LOCKING.load(Ordering::Relaxed) {
        return false;
    }
    let (page, first, last) = pages_of(bytes);
    let mut pages = LOCKED_PAGES.lock().unwrap_or_else(|p| p.into_inner());
    // Pages not locked yet, locked one run of consecutive pages per call (each call may
    // split the mapping, so fewer calls cost less).
    let mut run: Option<(usize, usize)> = None;
    for number in first..=last {
        let count = pages.entry(number).or_insert(0);
        if *count == 0 {
            run = match run {
                Some((start, end)) if end + 1 == number => Some((start, number)),
                Some((start, end)) => {
                    mlock_pages(bytes, page, start, end);
                    Some((number, number))
                }
                None => Some((number, number)),
            };
        }
        *count += 1;
    }
    if let Some((start, end)) = run {
        mlock_pages(bytes, page, start, end);
    }
    true
}

/// Locks the part of `bytes` on pages `start..=end`; a refusal is logged once.
fn mlock_pages(bytes: &[u8], page: usize, start: usize, end: usize) {
    let base = bytes.as_ptr() as usize;
    let from = (start * page).max(base) - base;
    let to = ((end + 1) * page).min(base + bytes.len()) - base;
    if let Err(e) = crate::sys::mlock(&bytes[from..to])
        && !REFUSAL_LOGGED.swap(true, Ordering::Relaxed)
    {
        tracing::debug!(error = %e, "mlock refused; some values may be swapped out");
    }
}

/// Undoes [`lock_region`] for `bytes` (zeroize it first): pages no other locked buffer lies
/// on are unlocked.
pub(crate) fn unlock_region(bytes: &[u8], locked: bool) {
    if !locked || bytes.is_empty() {
        return;
    }
    let (page, first, last) = pages_of(bytes);
    let mut pages = LOCKED_PAGES.lock().unwrap_or_else(|p| p.into_inner());
    for number in first..=last {
        if let Some(count) = pages.get_mut(&number) {
            *count -= 1;
            if *count == 0 {
                pages.remove(&number);
                let _ = crate::sys::munlock(on_page(bytes, page, number));
            }
        }
    }
}

/// One secret value: bytes, wiped on drop, never printed.
///
/// Clones share one buffer (an `Arc`): a value served from the lease cache, or handed to
/// several holders, is never copied, and is wiped once, when its last holder drops it.
pub struct SecretValue {
    buffer: Arc<Buffer>,
}

/// The bytes behind a [`SecretValue`] and its clones.
struct Buffer {
    /// Never resized after construction (a reallocation would free the old block unwiped).
    bytes: Vec<u8>,
    /// Whether [`lock_region`] counted this buffer's pages.
    locked: bool,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // The spare capacity is wiped too: a value may have been read into a larger buffer.
        let len = self.bytes.len();
        self.bytes.resize(self.bytes.capacity(), 0);
        crate::sys::wipe(&mut self.bytes);
        // Unlocked after the wipe (the same pages as were locked: the value's length).
        unlock_region(&self.bytes[..len], self.locked);
    }
}

impl SecretValue {
    /// Takes ownership of `bytes`, spare capacity included, without copying (the whole
    /// buffer is wiped on drop; shrinking it could leave the value in a block freed
    /// unwiped).
    pub fn new(bytes: Vec<u8>) -> Self {
        let locked = lock_region(&bytes);
        SecretValue {
            buffer: Arc::new(Buffer { bytes, locked }),
        }
    }

    /// Copies `bytes` into a new secret. Prefer [`SecretValue::new`] when you own the buffer.
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// Turns memory locking of values on or off for the whole process (default: off). While
    /// on, every value created afterwards has the pages under its buffer `mlock`ed until it is
    /// dropped (see the module docs); best effort, never an error. The `broker` CLI turns it
    /// on while it holds values, instead of locking all of its memory.
    pub fn lock_memory(on: bool) {
        LOCKING.store(on, Ordering::Relaxed);
    }

    /// Whether [`SecretValue::lock_memory`] is on.
    pub fn memory_locking() -> bool {
        LOCKING.load(Ordering::Relaxed)
    }

    /// The value's bytes. Every call site is a place a value can escape: keep them few.
    pub fn expose(&self) -> &[u8] {
        &self.buffer.bytes
    }

    /// The value as UTF-8, or an error that does not contain the value.
    pub fn expose_str(&self) -> Result<&str> {
        std::str::from_utf8(self.expose())
            .map_err(|_| Error::invalid_config("value is not valid UTF-8 text"))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.expose().len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl From<String> for SecretValue {
    fn from(value: String) -> Self {
        SecretValue::new(value.into_bytes())
    }
}

impl From<Vec<u8>> for SecretValue {
    fn from(value: Vec<u8>) -> Self {
        SecretValue::new(value)
    }
}

impl From<zeroize::Zeroizing<Vec<u8>>> for SecretValue {
    fn from(mut value: zeroize::Zeroizing<Vec<u8>>) -> Self {
        SecretValue::new(std::mem::take(&mut *value))
    }
}

impl From<zeroize::Zeroizing<String>> for SecretValue {
    fn from(mut value: zeroize::Zeroizing<String>) -> Self {
        SecretValue::from(std::mem::take(&mut *value))
    }
}

impl Clone for SecretValue {
    /// Another holder of the same buffer (no copy).
    fn clone(&self) -> Self {
        SecretValue {
            buffer: Arc::clone(&self.buffer),
        }
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([REDACTED])")
    }
}

impl PartialEq for SecretValue {
    /// Constant-time in the length of the shorter value.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.expose(), other.expose());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}
impl Eq for SecretValue {}

/// A lease on a minted credential: how to revoke it and when it expires.
///
/// A lease id is a handle, not a secret (Vault lease ids, STS session names); backends must
/// never use a secret as a lease id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The id `broker revoke` takes.
    pub id: String,
    /// When the credential stops working, if known.
    pub expires_at: Option<SystemTime>,
    /// Whether the lease can be renewed.
    pub renewable: bool,
}

/// What a backend hands back: the value, companion values, and an optional lease.
///
/// The primary value is delivered under the credential's `as` name (as the variable's value,
/// or as the content of a 0600 file whose path the variable holds). Companion values are
/// extra environment variables a backend delivers alongside (the AWS key triple, say).
/// A backend whose companions are the whole delivery can mark the credential
/// [`companions_only`](Credential::companions_only) (for `kind: env`), and can name extra
/// variables that receive the file's path (for `kind: file`) with
/// [`with_path_var`](Credential::with_path_var).
pub struct Credential {
    value: SecretValue,
    companions: Vec<(String, SecretValue)>,
    lease: Option<Lease>,
    env_primary: bool,
    path_vars: Vec<String>,
    plain_env: Vec<(String, String)>,
}

impl Credential {
    /// A credential with one value and no lease.
    pub fn new(value: SecretValue) -> Self {
        Credential {
            value,
            companions: Vec::new(),
            lease: None,
            env_primary: true,
            path_vars: Vec::new(),
            plain_env: Vec::new(),
        }
    }

    /// For `kind: env`: deliver only the companions, not the primary value under the
    /// credential's `as` variable (the primary value still feeds redaction and `broker get`).
    #[must_use]
    pub fn companions_only(mut self) -> Self {
        self.env_primary = false;
        self
    }

    /// For `kind: file`: `env_var` also holds the path of the file (e.g.
    /// `AWS_SHARED_CREDENTIALS_FILE`).
    #[must_use]
    pub fn with_path_var(mut self, env_var: impl Into<String>) -> Self {
        self.path_vars.push(env_var.into());
        self
    }

    /// Adds a non-secret environment variable delivered alongside (`AWS_REGION`, say): set in
    /// the child but, unlike companions, never redacted from its output.
    #[must_use]
    pub fn with_plain_env(mut self, env_var: impl Into<String>, value: impl Into<String>) -> Self {
        self.plain_env.push((env_var.into(), value.into()));
        self
    }

    /// Non-secret environment variables delivered alongside.
    pub fn plain_env(&self) -> &[(String, String)] {
        &self.plain_env
    }

    /// Whether `kind: env` delivers the primary value under the `as` variable.
    pub fn delivers_primary_env(&self) -> bool {
        self.env_primary
    }

    /// Extra variables that hold the file's path for `kind: file`.
    pub fn path_vars(&self) -> &[String] {
        &self.path_vars
    }

    /// Adds a companion environment variable.
    #[must_use]
    pub fn with_companion(mut self, env_var: impl Into<String>, value: SecretValue) -> Self {
        self.companions.push((env_var.into(), value));
        self
    }

    /// Attaches a lease.
    #[must_use]
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The primary value.
    pub fn value(&self) -> &SecretValue {
        &self.value
    }

    /// Companion environment variables.
    pub fn companions(&self) -> &[(String, SecretValue)] {
        &self.companions
    }

    /// The lease, for minted credentials.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Every value this credential holds (primary first), for building redactors.
    pub fn values(&self) -> impl Iterator<Item = &SecretValue> {
        std::iter::once(&self.value).chain(self.companions.iter().map(|(_, v)| v))
    }
}

impl Clone for Credential {
    fn clone(&self) -> Self {
        Credential {
            value: self.value.clone(),
            companions: self.companions.clone(),
            lease: self.lease.clone(),
            env_primary: self.env_primary,
            path_vars: self.path_vars.clone(),
            plain_env: self.plain_env.clone(),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("value", &self.value)
            .field(
                "companions",
                &self.companions.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("lease", &self.lease)
            .field("env_primary", &self.env_primary)
            .field("path_vars", &self.path_vars)
            .field("plain_env", &self.plain_env)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-7f3a9c-secret-value";

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::from(CANARY.to_string());
        let c = Credential::new(v.clone()).with_companion("EXTRA", v.clone());
        for text in [
            format!("{v:?}"),
            format!("{v:#?}"),
            format!("{c:?}"),
            format!("{c:#?}"),
        ] {
            assert!(!text.contains(CANARY), "leaked in {text}");
            assert!(!text.contains("canary"), "partial leak in {text}");
        }
        assert_eq!(v.expose(), CANARY.as_bytes());
    }

    #[test]
    fn equality_compares_contents() {
        assert_eq!(
            SecretValue::copy_from(b"abc"),
            SecretValue::copy_from(b"abc")
        );
        assert_ne!(
            SecretValue::copy_from(b"abc"),
            SecretValue::copy_from(b"abd")
        );
        assert_ne!(
            SecretValue::copy_from(b"abc"),
            SecretValue::copy_from(b"ab")
        );
    }

    #[test]
    fn constructors_keep_the_bytes_whatever_the_capacity() {
        let mut spare = Vec::with_capacity(64);
        spare.extend_from_slice(CANARY.as_bytes());
        let exact = CANARY.as_bytes().to_vec();
        let mut text = String::with_capacity(100);
        text.push_str(CANARY);
        for v in [
            SecretValue::new(spare.clone()),
            SecretValue::new(exact.clone()),
            SecretValue::from(text.clone()),
            SecretValue::from(zeroize::Zeroizing::new(spare)),
            SecretValue::from(zeroize::Zeroizing::new(text)),
            SecretValue::copy_from(&exact),
        ] {
            assert_eq!(v.expose(), CANARY.as_bytes());
        }
        assert!(SecretValue::new(Vec::with_capacity(8)).is_empty());
    }

    /// Locked pages are counted while a value lives on them and forgotten (unlocked) when
    /// the last value on them is dropped; the value itself is unchanged.
    #[test]
    fn locked_pages_follow_the_values_on_them() {
        let page = rustix::param::page_size();
        let interior = |v: &SecretValue| (v.expose().as_ptr() as usize) / page + 1;
        let count = |number: usize| {
            LOCKED_PAGES
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&number)
                .copied()
        };
        SecretValue::lock_memory(true);
        // Three pages and more: the page after the first is this value's alone.
        let big = SecretValue::new(vec![7u8; 3 * page]);
        let copy = SecretValue::copy_from(big.expose());
        // A clone shares the buffer: nothing copied, nothing locked again.
        let shared = big.clone();
        SecretValue::lock_memory(false);
        assert_eq!(shared.expose().as_ptr(), big.expose().as_ptr());
        assert_eq!(count(interior(&big)), Some(1));
        assert_eq!(count(interior(&copy)), Some(1));
        let (a, b) = (interior(&big), interior(&copy));
        assert!(big.expose().iter().all(|&x| x == 7) && big == copy);
        drop(big);
        // Still held by the clone: locked until the last holder drops it.
        assert_eq!(count(a), Some(1));
        drop(shared);
        assert_eq!(count(a), None);
        assert_eq!(count(b), Some(1));
        drop(copy);
        assert_eq!(count(b), None);
        // Values made while locking is off are not counted.
        let plain = SecretValue::new(vec![1u8; 3 * page]);
        assert_eq!(count(interior(&plain)), None);
    }

    #[test]
    fn non_utf8_error_does_not_echo_bytes() {
        let v = SecretValue::copy_from(&[0xff, 0xfe, b's', b'e', b'c']);
        let err = v.expose_str().unwrap_err().to_string();
        assert!(!err.contains("sec"));
    }
}
