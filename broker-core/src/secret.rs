//! Types that hold secret values.
//!
//! A value lives in a [`SecretValue`] (a zeroize-on-drop heap buffer behind `secrecy`) from the
//! moment a backend produces it until it is written into a child's environment or a 0600 file.
//! None of these types implement `Serialize` or `Display`, and their `Debug` prints
//! `[REDACTED]`. Reading the bytes takes an explicit [`SecretValue::expose`].
//!
//! Every constructor leaves no unwiped copy behind: a value always sits in an allocation of
//! exactly its length (so turning it into a boxed slice never reallocates), and a source
//! buffer with spare capacity is copied into such an allocation and then zeroized, spare
//! capacity included. Code that reads a value from a stream should read into a pre-sized
//! [`zeroize::Zeroizing`] buffer: a `Vec` that grows while reading frees its old blocks
//! unwiped.

use std::fmt;
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroize;

use crate::{Error, Result};

/// One secret value: bytes, zeroized on drop, never printed.
pub struct SecretValue(SecretBox<[u8]>);

impl SecretValue {
    /// Takes ownership of `bytes`. A buffer whose capacity equals its length is moved, not
    /// copied; one with spare capacity is copied into an exact-size allocation and zeroized
    /// (shrinking it in place could leave the value in a block freed unwiped).
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretValue(SecretBox::new(exact(bytes)))
    }

    /// Copies `bytes` into a new secret. Prefer [`SecretValue::new`] when you own the buffer.
    pub fn copy_from(bytes: &[u8]) -> Self {
        SecretValue(SecretBox::new(Box::from(bytes)))
    }

    /// The value's bytes. Every call site is a place a value can escape: keep them few.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
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

/// `bytes` as a boxed slice without an unwiped copy left behind: moved when it has no spare
/// capacity (`into_boxed_slice` then does not reallocate), else copied into an exact-size
/// allocation while the source, spare capacity included, is zeroized before it is freed.
fn exact(mut bytes: Vec<u8>) -> Box<[u8]> {
    if bytes.capacity() == bytes.len() {
        return bytes.into_boxed_slice();
    }
    let out = Box::from(bytes.as_slice());
    bytes.zeroize();
    out
}

impl Clone for SecretValue {
    fn clone(&self) -> Self {
        Self::copy_from(self.expose())
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

    #[test]
    fn non_utf8_error_does_not_echo_bytes() {
        let v = SecretValue::copy_from(&[0xff, 0xfe, b's', b'e', b'c']);
        let err = v.expose_str().unwrap_err().to_string();
        assert!(!err.contains("sec"));
    }
}
