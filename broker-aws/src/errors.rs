//! AWS SDK errors to broker errors.
//!
//! Only error codes, AWS's own messages (which name principals, actions and resources, never
//! secret values) and connection errors are quoted. The SDK has already retried transient
//! failures (at most 3 retries), so a transient error that reaches here is marked not
//! retryable (retrying again would exceed the broker's retry budget) and exhausted after
//! [`ATTEMPTS`] attempts: the broker records it as an alert and runs `alert.command`.

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use broker_core::{Error, ErrorKind};

/// The attempts the SDK makes before it gives up on a transient failure (its retry config).
pub(crate) const ATTEMPTS: u32 = 4;

/// What was being done, for messages and hints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// `GetSecretValue`, `AssumeRole`, ...
    pub operation: &'a str,
    /// `secret `staging/api``, `role arn:aws:iam::...`.
    pub subject: &'a str,
    /// Whether AWS's message may be quoted (false for calls that send a value).
    pub quote_message: bool,
}

/// The broker error for `err`, raised by `call`.
pub(crate) fn from_sdk<E>(err: SdkError<E, HttpResponse>, call: Call<'_>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let Call {
        operation,
        subject,
        quote_message,
    } = call;
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let raw = service.raw();
            // Some servers (moto) answer JSON-protocol calls with an XML error body.
            let body = raw.body().bytes().unwrap_or_default();
            let body = std::str::from_utf8(body).unwrap_or_default();
            let status = raw.status().as_u16();
            let (code, message) = match e.code() {
                Some(code) => (code.to_string(), e.message().map(str::to_string)),
                None => match xml_tag(body, "Code") {
                    Some(code) => (
                        code.to_string(),
                        xml_tag(body, "Message").map(str::to_string),
                    ),
                    None => (format!("HTTP {status}"), None),
                },
            };
            let text = match (quote_message, message) {
                (true, Some(m)) if !m.is_empty() => format!("{code}: {}", one_line(&m)),
                _ => code.clone(),
            };
            let kind = match classify(&code) {
                ErrorKind::Internal => by_status(status),
                kind => kind,
            };
            service_error(kind, &text, call)
        }
        SdkError::TimeoutError(_) => Error::transient(format!(
            "{operation} for {subject} timed out (after 3 retries)"
        ))
        .retryable(false)
        .exhausted_after(ATTEMPTS),
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => Error::transient(format!(
            "{operation} for {subject}: cannot reach AWS (after 3 retries): {}",
            one_line(&DisplayErrorContext(&err).to_string())
        ))
        .retryable(false)
        .exhausted_after(ATTEMPTS)
        .with_hint("check the network, `backends.aws.endpoint_url` and AWS_ENDPOINT_URL"),
        _ => {
            let detail = one_line(&DisplayErrorContext(&err).to_string());
            if detail.contains("credentials") || detail.contains("identity") {
                Error::authentication_failed(format!(
                    "{operation} for {subject}: the broker has no usable AWS credentials: {detail}"
                ))
                .with_hint(
                    "configure the broker's identity: AWS_PROFILE / `backends.aws.profile`, the AWS_ACCESS_KEY_ID pair, web identity or instance metadata",
                )
            } else {
                Error::transient(format!("{operation} for {subject} failed: {detail}"))
                    .retryable(false)
            }
        }
    }
}

/// The text of the first `<tag>...</tag>` in `body`, if it is short and plain.
fn xml_tag<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = body[start..].find(&format!("</{tag}>"))?;
    let text = &body[start..start + len];
    (!text.is_empty() && text.len() <= 512 && !text.contains('<')).then_some(text)
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

fn service_error(kind: ErrorKind, text: &str, call: Call<'_>) -> Error {
    let Call {
        operation, subject, ..
    } = call;
    let message = match kind {
        ErrorKind::NotFound => format!("{subject} not found ({text})"),
        ErrorKind::PermissionDenied => format!("AWS denied {operation} on {subject} ({text})"),
        ErrorKind::AuthenticationFailed => {
            format!("AWS rejected the broker's credentials for {operation} on {subject} ({text})")
        }
        ErrorKind::Transient => {
            format!("{operation} on {subject} failed after 3 retries ({text})")
        }
        _ => format!("{operation} on {subject} failed ({text})"),
    };
    let error = Error::new(kind, message).retryable(false);
    let error = if kind == ErrorKind::Transient {
        error.exhausted_after(ATTEMPTS)
    } else {
        error
    };
    match kind {
        ErrorKind::NotFound => error.with_hint(
            "check the secret id and its region (`?region=`, `backends.aws.region`, or the full ARN); version stages and ids must exist",
        ),
        ErrorKind::PermissionDenied if operation.starts_with("AssumeRole") => error.with_hint(
            "the role's trust policy must allow the broker's identity to call sts:AssumeRole (and sts:TagSession / sts:SetSourceIdentity when used)",
        ),
        ErrorKind::PermissionDenied => error.with_hint(format!(
            "grant the broker's identity secretsmanager:{operation} on this secret (and kms:Decrypt on its key)"
        )),
        ErrorKind::AuthenticationFailed => error.with_hint(
            "the broker's own AWS credentials are invalid or expired; refresh them (aws sso login, new keys, ...)",
        ),
        _ => error,
    }
}

/// The broker error kind for an AWS error code.
pub(crate) fn classify(code: &str) -> ErrorKind {
    match code {
        "ResourceNotFoundException" | "NoSuchEntity" | "NoSuchEntityException" => {
            ErrorKind::NotFound
        }
        "AccessDenied"
        | "AccessDeniedException"
        | "DecryptionFailure"
        | "RegionDisabledException"
        | "IDPRejectedClaim"
        | "UnauthorizedOperation" => ErrorKind::PermissionDenied,
        "ExpiredToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "InvalidIdentityToken"
        | "MissingAuthenticationToken" => ErrorKind::AuthenticationFailed,
        "Throttling"
        | "ThrottlingException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "InternalServiceError"
        | "InternalServiceErrorException"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "IDPCommunicationError" => ErrorKind::Transient,
        "MalformedPolicyDocument"
        | "PackedPolicyTooLarge"
        | "ValidationError"
        | "InvalidParameterException"
        | "InvalidParameterValue" => ErrorKind::InvalidConfig,
        "InvalidRequestException" => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    }
}

/// `text` on one line, at most 300 characters.
fn one_line(text: &str) -> String {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(classify("ResourceNotFoundException"), ErrorKind::NotFound);
        assert_eq!(classify("AccessDenied"), ErrorKind::PermissionDenied);
        assert_eq!(classify("ExpiredToken"), ErrorKind::AuthenticationFailed);
        assert_eq!(
            classify("InvalidClientTokenId"),
            ErrorKind::AuthenticationFailed
        );
        assert_eq!(classify("ThrottlingException"), ErrorKind::Transient);
        assert_eq!(
            classify("MalformedPolicyDocument"),
            ErrorKind::InvalidConfig
        );
        assert_eq!(classify("Whatever"), ErrorKind::Internal);
        assert_eq!(by_status(403), ErrorKind::PermissionDenied);
        let body = "<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>";
        assert_eq!(xml_tag(body, "Code"), Some("AccessDenied"));
        assert_eq!(xml_tag(body, "Message"), Some("no"));
        assert_eq!(xml_tag(body, "Nope"), None);
    }
}
