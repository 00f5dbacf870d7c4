//! Azure SDK errors to broker errors.
//!
//! Only HTTP statuses, Azure error codes and Azure's own error messages from JSON error bodies
//! (which name vaults, secrets and principals, never values) are quoted; a body that is not an
//! Azure error document is never quoted. The SDK has already retried transient failures
//! (at most [`ATTEMPTS`] attempts in all), so a transient error that reaches here is not
//! retryable again and is marked exhausted: the broker records it as an alert.

use azure_core::error::ErrorKind as AzKind;
use broker_core::{Error, ErrorKind};
use serde::Deserialize;

use crate::http::ATTEMPTS;

/// What was being done, for messages and hints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// `get`, `set`, `list versions`, `token`.
    pub operation: &'a str,
    /// `secret `NAME` in vault `VAULT``, `a token for CLIENT in TENANT`.
    pub subject: &'a str,
}

#[derive(Deserialize)]
struct Body {
    error: Option<Detail>,
}

#[derive(Deserialize)]
struct Detail {
    code: Option<String>,
    message: Option<String>,
    #[serde(rename = "innererror", alias = "innerError")]
    inner: Option<Inner>,
}

#[derive(Deserialize)]
struct Inner {
    code: Option<String>,
}

/// Entra's OAuth error document.
#[derive(Deserialize)]
struct OAuthBody {
    error: Option<String>,
    error_description: Option<String>,
}

/// The innermost HTTP error in `err`'s chain (an SDK credential wraps Entra's answer).
fn http_error(err: &azure_core::Error) -> Option<&azure_core::Error> {
    let mut current: &(dyn std::error::Error + 'static) = err;
    let mut found = None;
    loop {
        if let Some(e) = current.downcast_ref::<azure_core::Error>()
            && matches!(e.kind(), AzKind::HttpResponse { .. })
        {
            found = Some(e);
        }
        match current.source() {
            Some(next) => current = next,
            None => return found,
        }
    }
}

/// The broker error for a Key Vault call's failure.
pub(crate) fn from_vault(err: &azure_core::Error, call: Call<'_>) -> Error {
    let Call { operation, subject } = call;
    if let AzKind::HttpResponse {
        status,
        raw_response,
        error_code,
    } = err.kind()
    {
        let status = u16::from(*status);
        let body: Option<Body> = raw_response
            .as_ref()
            .and_then(|r| serde_json::from_slice(r.body().as_ref()).ok());
        let detail = body.and_then(|b| b.error);
        let code = detail
            .as_ref()
            .and_then(|d| d.code.clone())
            .or_else(|| error_code.clone())
            .filter(|c| is_code(c))
            .unwrap_or_else(|| format!("HTTP {status}"));
        let inner = detail
            .as_ref()
            .and_then(|d| d.inner.as_ref())
            .and_then(|i| i.code.clone())
            .filter(|c| is_code(c));
        let message = detail
            .and_then(|d| d.message)
            .map(|m| one_line(&m))
            .filter(|m| !m.is_empty());
        let text = match (&inner, &message) {
            (Some(i), Some(m)) => format!("{code}/{i}: {m}"),
            (None, Some(m)) => format!("{code}: {m}"),
            (Some(i), None) => format!("{code}/{i}"),
            (None, None) => code.clone(),
        };
        return match (status, inner.as_deref()) {
            (403, Some("SecretDisabled")) => Error::permission_denied(format!(
                "{subject} is disabled ({text})"
            ))
            .with_hint("enable the secret (or that version) in Key Vault, or name an enabled version"),
            (404, _) => Error::not_found(format!("{subject} not found ({text})")).with_hint(
                "check the vault name, the secret name and the version; `backends.azure.vault_suffix` for other clouds",
            ),
            (403, _) => Error::permission_denied(format!(
                "Key Vault denied {operation} on {subject} ({text})"
            ))
            .with_hint(format!(
                "grant the broker's identity secrets/{operation} on the vault (RBAC role Key Vault Secrets User, or Key Vault Secrets Officer to rotate; or an access policy), and check the vault's network rules"
            )),
            (401, _) => Error::authentication_failed(format!(
                "Key Vault rejected the broker's token for {operation} on {subject} ({text})"
            ))
            .with_hint("the broker's identity must be in the vault's tenant; check `backends.azure.auth`"),
            (408 | 429 | 500..=599, _) => transient(format!(
                "{operation} on {subject} failed after {} attempts ({text})",
                ATTEMPTS
            )),
            _ => Error::new(
                ErrorKind::UnexpectedAnswer,
                format!("{operation} on {subject} failed ({text})"),
            ),
        };
    }
    if matches!(err.kind(), AzKind::Credential) {
        return from_credential(err, subject);
    }
    other(err, operation, subject)
}

/// The broker error for a failed token request (Entra, managed identity, Azure CLI).
pub(crate) fn from_credential(err: &azure_core::Error, subject: &str) -> Error {
    if let Some(http) = http_error(err)
        && let AzKind::HttpResponse {
            status,
            raw_response,
            error_code,
        } = http.kind()
    {
        let status = u16::from(*status);
        let body: Option<OAuthBody> = raw_response
            .as_ref()
            .and_then(|r| serde_json::from_slice(r.body().as_ref()).ok());
        let (error, description) = match body {
            Some(b) => (b.error, b.error_description),
            None => (None, None),
        };
        let code = error
            .filter(|c| is_code(c))
            .or_else(|| error_code.clone().filter(|c| is_code(c)))
            .unwrap_or_else(|| format!("HTTP {status}"));
        let text = match description.map(|d| one_line(&d)).filter(|d| !d.is_empty()) {
            Some(d) => format!("{code}: {d}"),
            None => code,
        };
        return match status {
            408 | 429 | 500..=599 => transient(format!(
                "the token request for {subject} failed after {ATTEMPTS} attempts ({text})"
            )),
            _ => Error::authentication_failed(format!(
                "Entra ID refused a token for {subject} ({text})"
            ))
            .with_hint(
                "check `backends.azure.auth`: tenant, client id, the client secret or the federated credential's issuer/subject/audience",
            ),
        };
    }
    if let Some(e) = io_error(err) {
        return transient(format!(
            "the token request for {subject} failed: cannot reach the token endpoint after {ATTEMPTS} attempts: {}",
            chain(e)
        ))
        .with_hint("check the network and `backends.azure.authority_host`");
    }
    Error::authentication_failed(format!(
        "no token for {subject}: {}",
        one_line(&err.to_string())
    ))
    .with_hint("check `backends.azure.auth` (see docs/backends/azure.md)")
}

fn io_error(err: &azure_core::Error) -> Option<&azure_core::Error> {
    let mut current: &(dyn std::error::Error + 'static) = err;
    loop {
        if let Some(e) = current.downcast_ref::<azure_core::Error>()
            && matches!(e.kind(), AzKind::Io | AzKind::Connection)
        {
            return Some(e);
        }
        current = current.source()?;
    }
}

fn other(err: &azure_core::Error, operation: &str, subject: &str) -> Error {
    if let Some(e) = io_error(err) {
        return transient(format!(
            "{operation} on {subject}: cannot reach Key Vault after {ATTEMPTS} attempts: {}",
            chain(e)
        ))
        .with_hint("check the network, the vault name and `backends.azure.vault_suffix`");
    }
    Error::new(
        ErrorKind::UnexpectedAnswer,
        format!(
            "{operation} on {subject} failed: {}",
            one_line(&err.to_string())
        ),
    )
}

/// A transient failure the SDK already retried: not retryable again, an alert.
fn transient(message: String) -> Error {
    Error::transient(message)
        .retryable(false)
        .exhausted_after(ATTEMPTS)
}

/// The error's chain of messages (reqwest's, rustls's), value-free.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    one_line(&parts.join(": "))
}

/// An Azure error code: short, letters, digits and a few separators.
fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
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
    out.trim().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use azure_core::http::headers::Headers;
    use azure_core::http::{RawResponse, StatusCode};

    fn http(status: StatusCode, body: &str) -> azure_core::Error {
        azure_core::Error::with_message(
            AzKind::HttpResponse {
                status,
                error_code: None,
                raw_response: Some(Box::new(RawResponse::from_bytes(
                    status,
                    Headers::new(),
                    body.as_bytes().to_vec(),
                ))),
            },
            "x",
        )
    }

    #[test]
    fn vault_errors() {
        let call = Call {
            operation: "get",
            subject: "secret `s` in vault `v`",
        };
        let e = from_vault(
            &http(
                StatusCode::Forbidden,
                r#"{"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.","innererror":{"code":"SecretDisabled"}}}"#,
            ),
            call,
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("is disabled"), "{e}");
        let e = from_vault(&http(StatusCode::NotFound, "{}"), call);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = from_vault(
            &http(StatusCode::TooManyRequests, "not json <b>x</b>"),
            call,
        );
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(!e.is_retryable());
        assert_eq!(e.exhausted_attempts(), Some(ATTEMPTS));
        assert!(!e.to_string().contains("not json"), "{e}");
    }
}
