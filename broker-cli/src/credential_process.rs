//! `broker credential-process NAME`: the AWS `credential_process` protocol.
//!
//! An AWS config profile with `credential_process = broker credential-process deploy` makes
//! any AWS SDK or CLI in a task mint `deploy` through the broker, and mint again on its own when
//! the printed `Expiration` comes near. The output is the documented Version 1 document:
//! `{"Version":1,"AccessKeyId":..,"SecretAccessKey":..,"SessionToken":..,"Expiration":..}`.
//! It is written to standard output only (the SDK reads it from a pipe), never logged.

use std::io::Write;

use broker_core::{Broker, DeliveryKind, Error, RequestContext};
use zeroize::Zeroizing;

/// The scheme whose credentials this serves.
const STS_SCHEME: &str = "aws-sts";

/// Mints credential `name` and prints its `credential_process` JSON.
pub async fn credential_process(
    broker: &Broker,
    name: &str,
    context: RequestContext,
) -> Result<u8, Error> {
    let spec = broker.config().require_credential(name)?;
    if spec.reference.scheme() != STS_SCHEME {
        return Err(Error::invalid_config(format!(
            "credential `{name}` is a `{}:` reference; credential-process serves `aws-sts://` credentials",
            spec.reference.scheme()
        ))
        .with_hint("declare it as `mint: \"aws-sts://ROLE_ARN\"`"));
    }
    let kind = spec.kind;
    let credential = broker.resolve(name, &context).await?;
    let document = match kind {
        DeliveryKind::Env => Zeroizing::new(credential.value().expose().to_vec()),
        DeliveryKind::File => {
            from_credentials_file(credential.value().expose()).ok_or_else(|| {
                Error::internal("the minted credentials file has an unexpected layout")
            })?
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&document)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("cannot write to standard output", &e))?;
    Ok(0)
}

/// The Version 1 document from a `[default]` shared-credentials file written by broker-aws
/// (`aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`, `# expires TIME`).
fn from_credentials_file(file: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let text = std::str::from_utf8(file).ok()?;
    let mut fields: [Option<&str>; 4] = [None; 4];
    for line in text.lines() {
        if let Some(expiry) = line.strip_prefix("# expires ") {
            fields[3] = Some(expiry.trim());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let slot = match key.trim() {
            "aws_access_key_id" => 0,
            "aws_secret_access_key" => 1,
            "aws_session_token" => 2,
            _ => continue,
        };
        fields[slot] = Some(value.trim());
    }
    let [Some(id), Some(secret), Some(token), Some(expiry)] = fields else {
        return None;
    };
    let mut out = Zeroizing::new(Vec::with_capacity(file.len() + 256));
    out.extend_from_slice(br#"{"Version":1"#);
    for (key, value) in [
        ("AccessKeyId", id),
        ("SecretAccessKey", secret),
        ("SessionToken", token),
        ("Expiration", expiry),
    ] {
        out.extend_from_slice(format!(",\"{key}\":").as_bytes());
        serde_json::to_writer(&mut *out, value).ok()?;
    }
    out.push(b'}');
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_to_document() {
        let file = b"[default]\naws_access_key_id = AKIDFAKE\naws_secret_access_key = s3cr\"t\naws_session_token = tok\n# expires 2030-01-01T00:00:00Z\n";
        let doc = from_credentials_file(file).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(v["Version"], 1);
        assert_eq!(v["SecretAccessKey"], "s3cr\"t");
        assert_eq!(v["Expiration"], "2030-01-01T00:00:00Z");
        assert!(from_credentials_file(b"[default]\n").is_none());
    }
}
