//! The one error type of the broker.
//!
//! An [`Error`] has a [`ErrorKind`], a one-line message, optionally the credential name and the
//! reference it concerns, an optional hint, and whether retrying could help. It never carries a
//! secret value: messages are built by the broker and its backends from names, references,
//! paths and server status lines only (the canary tests check this).

use std::fmt;

/// What went wrong, coarsely: callers branch on this, people read the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A reference did not parse or does not fit its scheme's grammar.
    InvalidReference,
    /// The config file is malformed, or names something that does not exist.
    InvalidConfig,
    /// A backend is needed but has no usable configuration (or is not compiled in).
    NotConfigured,
    /// The secret, version, field or file does not exist.
    NotFound,
    /// The backend refused the broker's identity for this secret.
    PermissionDenied,
    /// The broker could not authenticate to the backend (bad, expired or missing credentials).
    AuthenticationFailed,
    /// The egress gate refused a credential whose backend is not local.
    EgressDenied,
    /// The policy refused the request.
    PolicyDenied,
    /// The backend does not implement the operation.
    Unsupported,
    /// A temporary failure: unreachable, timed out, throttled, 5xx. Retryable.
    Transient,
    /// Stored data is corrupt or was tampered with (MAC mismatch, truncated file, bad key).
    Integrity,
    /// Local I/O failed (scratch dir, audit log, reading a file).
    Io,
    /// A backend answered something the broker cannot use: a redirect (never followed), a
    /// body that is not JSON, a reply without the expected fields.
    UnexpectedAnswer,
    /// A bug.
    Internal,
}

impl ErrorKind {
    /// A short lower-case label, used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidReference => "invalid_reference",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::NotConfigured => "not_configured",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::AuthenticationFailed => "authentication_failed",
            ErrorKind::EgressDenied => "egress_denied",
            ErrorKind::PolicyDenied => "policy_denied",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Transient => "transient",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Io => "io",
            ErrorKind::UnexpectedAnswer => "unexpected_answer",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The broker's error. Never holds a secret value.
///
/// Boxed, so `Result<T, Error>` stays one pointer wide on the happy path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct Error(Box<Inner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Inner {
    kind: ErrorKind,
    message: String,
    credential: Option<String>,
    reference: Option<String>,
    hint: Option<String>,
    location: Option<String>,
    retryable: bool,
    exhausted: Option<u32>,
}

/// `Result` with the broker's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind`. `message` must not contain a secret value.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            credential: None,
            reference: None,
            hint: None,
            location: None,
            retryable: kind == ErrorKind::Transient,
            exhausted: None,
        }))
    }

    /// [`ErrorKind::InvalidConfig`].
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }
    /// [`ErrorKind::NotConfigured`].
    pub fn not_configured(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotConfigured, message)
    }
    /// [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// [`ErrorKind::PermissionDenied`].
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }
    /// [`ErrorKind::AuthenticationFailed`].
    pub fn authentication_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AuthenticationFailed, message)
    }
    /// [`ErrorKind::Unsupported`] for `operation` (`"mint"`, `"revoke"`, `"rotate"`, ...).
    pub fn unsupported(operation: &str) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            format!("{operation} is not supported by this backend"),
        )
    }
    /// [`ErrorKind::Transient`]; retryable.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    /// [`ErrorKind::Integrity`].
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, message)
    }
    /// [`ErrorKind::Io`] from a description of what was being done and the OS error.
    pub fn io(what: impl fmt::Display, err: &std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        Self::new(kind, format!("{what}: {err}"))
    }
    /// [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Names the credential this error concerns (kept if already set).
    #[must_use]
    pub fn with_credential(mut self, name: impl Into<String>) -> Self {
        if self.0.credential.is_none() {
            self.0.credential = Some(name.into());
        }
        self
    }
    /// Names the reference this error concerns (kept if already set).
    #[must_use]
    pub fn with_reference(mut self, reference: impl fmt::Display) -> Self {
        if self.0.reference.is_none() {
            self.0.reference = Some(reference.to_string());
        }
        self
    }
    /// Adds a hint: what the user can do about it.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.0.hint = Some(hint.into());
        self
    }
    /// Sets where in a file the problem is (`path:line:col`).
    #[must_use]
    pub fn with_location(mut self, location: impl Into<String>) -> Self {
        self.0.location = Some(location.into());
        self
    }
    /// Sets whether retrying could help.
    #[must_use]
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.0.retryable = retryable;
        self
    }

    /// Marks this error as the last of `attempts` attempts whose retries ran out: an alert
    /// condition (audit severity `alert`, `alert.command`), whether the retries were made by
    /// the broker's retry layer or inside a backend. The broker's retry layer never retries an
    /// exhausted error again.
    #[must_use]
    pub fn exhausted_after(mut self, attempts: u32) -> Self {
        self.0.exhausted = Some(attempts);
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }
    /// The bare message, without credential or reference.
    pub fn message(&self) -> &str {
        &self.0.message
    }
    /// The credential name, if known.
    pub fn credential(&self) -> Option<&str> {
        self.0.credential.as_deref()
    }
    /// The reference, if known.
    pub fn reference(&self) -> Option<&str> {
        self.0.reference.as_deref()
    }
    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.0.hint.as_deref()
    }
    /// Where in a file the problem is, if known.
    pub fn location(&self) -> Option<&str> {
        self.0.location.as_deref()
    }
    /// Whether retrying could help.
    pub fn is_retryable(&self) -> bool {
        self.0.retryable
    }
    /// If the retries ran out: after how many attempts ([`Error::exhausted_after`]).
    pub fn exhausted_attempts(&self) -> Option<u32> {
        self.0.exhausted
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if let Some(location) = &self.0.location {
            out.push_str(location);
            out.push_str(": ");
        }
        let invalid_reference = self.0.kind == ErrorKind::InvalidReference;
        match (&self.0.credential, &self.0.reference) {
            (Some(c), Some(r)) if invalid_reference => {
                out.push_str(&format!("credential `{c}`: invalid reference `{r}`"))
            }
            (Some(c), Some(r)) => out.push_str(&format!("credential `{c}` ({r})")),
            (Some(c), None) => out.push_str(&format!("credential `{c}`")),
            (None, Some(r)) if invalid_reference => {
                out.push_str(&format!("invalid reference `{r}`"))
            }
            (None, Some(r)) => out.push_str(&format!("`{r}`")),
            (None, None) => {}
        }
        if !out.is_empty() && !out.ends_with(": ") {
            out.push_str(if self.0.message.starts_with("at column") {
                " "
            } else {
                ": "
            });
        }
        out.push_str(&self.0.message);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_credential_and_reference() {
        let e = Error::not_found("environment variable `X` is not set")
            .with_reference("env:X")
            .with_credential("x");
        assert_eq!(
            e.to_string(),
            "credential `x` (env:X): environment variable `X` is not set"
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!e.is_retryable());
        assert!(Error::transient("timed out").is_retryable());
    }

    #[test]
    fn first_context_wins() {
        let e = Error::not_found("m")
            .with_credential("inner")
            .with_credential("outer");
        assert_eq!(e.credential(), Some("inner"));
    }
}
