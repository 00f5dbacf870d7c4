//! Google client errors to broker errors, and the payload checksum.
//!
//! The Google clients make one attempt per call (their retry policy is `NeverRetry`); the
//! broker's retry layer retries what is marked retryable here (429, 5xx, `UNAVAILABLE`,
//! timeouts, connection failures), at most 3 times: at most 4 attempts in all. Only status
//! codes and Google's own messages (which name resources and principals, never values) are
//! quoted, and not even those for calls that send a value.

use broker_core::{Error, ErrorKind};
use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::Code;

/// What was being done, for messages and hints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// `AccessSecretVersion`, `GenerateAccessToken`, ...
    pub operation: &'a str,
    /// `secret version projects/p/secrets/s/versions/3`, `service account x@...`.
    pub subject: &'a str,
    /// Whether Google's message may be quoted (false for calls that send a value).
    pub quote_message: bool,
}

/// The broker error for `err`, raised by `call`.
pub(crate) fn from_gax(err: &GaxError, call: Call<'_>) -> Error {
    let Call {
        operation,
        subject,
        quote_message,
    } = call;
    if let Some(status) = err.status() {
        let code = status.code;
        let text = match (quote_message, status.message.is_empty()) {
            (true, false) => format!("{}: {}", code.name(), one_line(&status.message)),
            _ => code.name().to_string(),
        };
        let http = err.http_status_code();
        return service_error(code, http, &status.message, &text, call);
    }
    if let Some(http) = err.http_status_code() {
        let kind = by_status(http);
        let text = format!("HTTP {http}");
        return finish(
            Error::new(kind, format!("{operation} on {subject} failed ({text})")),
            kind,
            operation,
        );
    }
    if err.is_timeout() || err.is_io() || err.is_connect() || err.is_transport() {
        return Error::transient(format!(
            "{operation} on {subject}: cannot reach Google: {}",
            one_line(&chain(err))
        ))
        .retryable(true)
        .with_hint("check the network and `backends.gcp.endpoint` / `iam_endpoint`");
    }
    if err.is_authentication() {
        let detail = one_line(&chain(err));
        let transient = std::error::Error::source(err)
            .and_then(|s| s.downcast_ref::<google_cloud_gax::error::CredentialsError>())
            .is_some_and(|c| c.is_transient());
        if transient {
            return Error::transient(format!(
                "{operation} on {subject}: the broker could not get a Google token: {detail}"
            ))
            .retryable(true);
        }
        return Error::authentication_failed(format!(
            "{operation} on {subject}: the broker has no usable Google credentials: {detail}"
        ))
        .with_hint("check `backends.gcp.auth` (see docs/backends/gcp.md)");
    }
    if err.is_deserialization() {
        return Error::new(
            ErrorKind::UnexpectedAnswer,
            format!("{operation} on {subject}: Google's answer could not be read"),
        );
    }
    Error::internal(format!(
        "{operation} on {subject} failed: {}",
        one_line(&chain(err))
    ))
}

fn service_error(
    code: Code,
    http: Option<u16>,
    message: &str,
    text: &str,
    call: Call<'_>,
) -> Error {
    let Call {
        operation, subject, ..
    } = call;
    let kind = match code {
        Code::NotFound => ErrorKind::NotFound,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::Unauthenticated => ErrorKind::AuthenticationFailed,
        Code::ResourceExhausted
        | Code::Unavailable
        | Code::Internal
        | Code::DeadlineExceeded
        | Code::Aborted => ErrorKind::Transient,
        Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidConfig,
        Code::FailedPrecondition => ErrorKind::NotFound,
        _ => http.map_or(ErrorKind::Internal, by_status),
    };
    let kind = match (kind, http) {
        (ErrorKind::Internal, Some(s)) => by_status(s),
        (k, _) => k,
    };
    let upper = message.to_ascii_uppercase();
    let msg = match (code, kind) {
        (Code::FailedPrecondition, _) if upper.contains("DISABLED") => {
            format!("{subject} is disabled ({text})")
        }
        (Code::FailedPrecondition, _) if upper.contains("DESTROYED") => {
            format!("{subject} is destroyed ({text})")
        }
        (Code::FailedPrecondition, _) => format!("{operation} on {subject} refused ({text})"),
        (_, ErrorKind::NotFound) if message.starts_with("Secret Version") => {
            format!("{subject}: no such version ({text})")
        }
        (_, ErrorKind::NotFound) if message.starts_with("Secret [") => {
            format!("{subject}: no such secret ({text})")
        }
        (_, ErrorKind::NotFound) if upper.contains("PROJECT") => {
            format!("{subject}: no such project ({text})")
        }
        (_, ErrorKind::NotFound) => format!("{subject} not found ({text})"),
        (_, ErrorKind::PermissionDenied) => {
            format!("Google denied {operation} on {subject} ({text})")
        }
        (_, ErrorKind::AuthenticationFailed) => {
            format!(
                "Google rejected the broker's credentials for {operation} on {subject} ({text})"
            )
        }
        (_, ErrorKind::Transient) => format!("{operation} on {subject} failed ({text})"),
        _ => format!("{operation} on {subject} failed ({text})"),
    };
    let kind = if code == Code::FailedPrecondition
        && !upper.contains("DISABLED")
        && !upper.contains("DESTROYED")
    {
        ErrorKind::InvalidConfig
    } else {
        kind
    };
    finish(Error::new(kind, msg), kind, operation)
}

fn finish(error: Error, kind: ErrorKind, operation: &str) -> Error {
    let error = error.retryable(kind == ErrorKind::Transient);
    match kind {
        ErrorKind::NotFound if operation.contains("Secret") => error.with_hint(
            "check the project, secret, version (a number, `latest` or an alias) and `?location=`; disabled versions can be enabled again, destroyed ones cannot",
        ),
        ErrorKind::NotFound => error.with_hint("check the service account email and its project"),
        ErrorKind::PermissionDenied if operation.starts_with("Generate") => error.with_hint(
            "grant the broker's identity roles/iam.serviceAccountTokenCreator on the service account (and on each delegate)",
        ),
        ErrorKind::PermissionDenied => error.with_hint(
            "grant the broker's identity roles/secretmanager.secretAccessor on the secret (secretVersionAdder / secretVersionManager to rotate)",
        ),
        ErrorKind::AuthenticationFailed => error.with_hint(
            "the broker's own Google credentials are invalid or expired; check `backends.gcp.auth`",
        ),
        _ => error,
    }
}

fn by_status(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::AuthenticationFailed,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        429 | 500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Internal,
    }
}

/// The error and its sources, joined.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `text` on one line, at most 300 characters.
pub(crate) fn one_line(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// CRC32C (Castagnoli), as Secret Manager's `dataCrc32c`.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78;
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;

    fn status(code: Code, message: &str) -> GaxError {
        GaxError::service(Status::default().set_code(code).set_message(message))
    }

    fn call() -> Call<'static> {
        Call {
            operation: "AccessSecretVersion",
            subject: "secret version projects/p/secrets/s/versions/1",
            quote_message: true,
        }
    }

    #[test]
    fn classification() {
        let e = from_gax(
            &status(Code::NotFound, "Secret [projects/p/secrets/s] not found."),
            call(),
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("no such secret"), "{e}");
        let e = from_gax(
            &status(
                Code::FailedPrecondition,
                "Secret Version [x] is in DISABLED state.",
            ),
            call(),
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("is disabled"), "{e}");
        assert!(!e.is_retryable());
        let e = from_gax(&status(Code::Unavailable, "try later"), call());
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(e.is_retryable());
        let e = from_gax(&status(Code::PermissionDenied, "denied"), call());
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(!e.is_retryable());
    }

    #[test]
    fn checksum() {
        // The RFC 3720 test vector.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }
}
