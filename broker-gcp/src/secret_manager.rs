//! Secret Manager: reads (bytes, JSON fields; numbered versions, `latest`, aliases; regional
//! secrets; the payload's CRC32C checked) and rotation (a new version, the previous one
//! optionally disabled).

use broker_core::{Credential, Error, Request, Result, Rotation, SecretValue};
use google_cloud_secretmanager_v1::model::SecretPayload;
use zeroize::Zeroize;

use crate::errors::{Call, crc32c, from_gax};
use crate::provider::GcpProvider;
use crate::target::SecretTarget;

/// The length of a generated value (letters and digits: about 238 bits).
const GENERATED_LEN: usize = 40;

/// A version read: its full name and its payload.
struct Read {
    name: String,
    value: SecretValue,
}

impl GcpProvider {
    /// `resolve` of a `gcp-sm://` secret.
    pub(crate) async fn read_secret(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        if reference.scheme() != crate::SM_SCHEME {
            return Err(Error::unsupported("resolve")
                .with_reference(reference)
                .with_hint("gcp-iam:// tokens are minted: write `mint:` in the config"));
        }
        let target = SecretTarget::parse(reference)?;
        let read = self
            .access(request, &target)
            .await
            .map_err(|e| e.with_reference(reference))?;
        let value = match reference.field_path() {
            None => read.value,
            Some(path) => broker_core::select_json(&read.value, &path).map_err(|e| {
                e.with_reference(reference)
                    .with_hint("check the field name against the secret's JSON keys")
            })?,
        };
        Ok(Credential::new(value))
    }

    /// `AccessSecretVersion` of `target`, with the payload's checksum verified.
    async fn access(&self, request: &Request<'_>, target: &SecretTarget) -> Result<Read> {
        let client = self.sm_client(request.nested, target).await?;
        let name = target.version_name();
        let subject = format!("secret version {name}");
        let mut response = client
            .access_secret_version()
            .set_name(&name)
            .send()
            .await
            .map_err(|e| {
                from_gax(
                    &e,
                    Call {
                        operation: "AccessSecretVersion",
                        subject: &subject,
                        quote_message: true,
                    },
                )
            })?;
        let payload = response.payload.take().ok_or_else(|| {
            Error::new(
                broker_core::ErrorKind::UnexpectedAnswer,
                format!("{subject}: the answer has no payload"),
            )
        })?;
        let value = take_payload(payload.data);
        if let Some(expected) = payload.data_crc32c
            && i64::from(crc32c(value.expose())) != expected
        {
            return Err(Error::integrity(format!(
                "{subject}: the payload does not match its CRC32C checksum (corrupted in transit or at rest)"
            ))
            .with_hint("retry later; if it persists, the stored version is damaged: add a new version"));
        }
        let name = if response.name.is_empty() {
            name
        } else {
            std::mem::take(&mut response.name)
        };
        Ok(Read { name, value })
    }

    /// The full name of the version `latest` stands for now (metadata only, no payload);
    /// `None` when the secret has no version yet.
    async fn latest_version(
        &self,
        request: &Request<'_>,
        target: &SecretTarget,
    ) -> Result<Option<String>> {
        let client = self.sm_client(request.nested, target).await?;
        let name = target.version_name();
        let subject = format!("secret version {name}");
        match client.get_secret_version().set_name(&name).send().await {
            Ok(version) => Ok(Some(version.name)),
            Err(e) => {
                let error = from_gax(
                    &e,
                    Call {
                        operation: "GetSecretVersion",
                        subject: &subject,
                        quote_message: true,
                    },
                );
                let no_version = e
                    .status()
                    .is_some_and(|s| s.message.starts_with("Secret Version"));
                if no_version { Ok(None) } else { Err(error) }
            }
        }
    }

    pub(crate) async fn rotate_secret(&self, request: &Request<'_>) -> Result<Rotation> {
        let mut target = SecretTarget::parse(request.reference)?;
        if target.version != "latest" {
            return Err(Error::invalid_config(
                "rotate adds a new version; drop the `/VERSION` from the reference",
            ));
        }
        let disable_previous = match request.option("disable_previous") {
            None => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => return Err(Error::invalid_config("`disable_previous` is true or false")),
        };
        let generated = generate();
        let (new_value, previous) = match request.reference.field_path() {
            None if !disable_previous => (generated, None),
            None => (generated, self.latest_version(request, &target).await?),

            Some(path) => {
                let read = self.access(request, &target).await?;
                (
                    broker_core::json::replace_string(read.value.expose(), &path, &generated)?,
                    Some(read.name),
                )
            }
        };
        let client = self.sm_client(request.nested, &target).await?;
        let parent = target.secret_name();
        let subject = format!("secret {parent}");
        let checksum = i64::from(crc32c(new_value.expose()));
        let added = client
            .add_secret_version()
            .set_parent(&parent)
            .set_payload(
                SecretPayload::new()
                    .set_data(new_value.expose().to_vec())
                    .set_data_crc32c(checksum),
            )
            .send()
            .await
            .map_err(|e| {
                from_gax(
                    &e,
                    Call {
                        operation: "AddSecretVersion",
                        subject: &subject,
                        quote_message: false,
                    },
                )
            })?;
        let new_version = added
            .name
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let what = match request.reference.field() {
            Some(f) => format!("field `{f}` of {subject}"),
            None => subject.clone(),
        };
        let mut summary = format!("added version {new_version} with a new random value for {what}");
        if disable_previous && let Some(previous) = previous {
            target.version = previous.rsplit('/').next().unwrap_or_default().to_string();
            client
                .disable_secret_version()
                .set_name(&previous)
                .send()
                .await
                .map_err(|e| {
                    from_gax(
                        &e,
                        Call {
                            operation: "DisableSecretVersion",
                            subject: &format!("secret version {previous}"),
                            quote_message: true,
                        },
                    )
                })?;
            summary.push_str(&format!(" and disabled version {}", target.version));
        }
        Ok(Rotation {
            summary,
            version: Some(new_version),
        })
    }
}

/// The payload as a value; the client's buffer is wiped when nothing else holds it.
fn take_payload(data: bytes::Bytes) -> SecretValue {
    let value = SecretValue::new(data.to_vec());
    if let Ok(mut buffer) = data.try_into_mut() {
        buffer.zeroize();
    }
    value
}

/// A new random value: [`GENERATED_LEN`] letters and digits.
fn generate() -> SecretValue {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    let bytes: Vec<u8> = rand::rng()
        .sample_iter(Alphanumeric)
        .take(GENERATED_LEN)
        .collect();
    SecretValue::new(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_are_fresh_text() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), GENERATED_LEN);
        assert!(a.expose().iter().all(u8::is_ascii_alphanumeric));
        assert_ne!(a.expose(), b.expose());
    }
}
