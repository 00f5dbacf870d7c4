//! Key Vault secrets: reads (latest or a version, `#field` of JSON, PEM / PKCS#12 as files,
//! the `enabled` / `nbf` / `exp` attributes enforced) and rotation (a new version).
//!
//! Calls go through the SDK's `SecretClient` (transport, the 401 bearer challenge, retries);
//! the secret bundle is parsed here from the body into zeroizing buffers, not into the SDK's
//! model (whose value is a plain `String`), and the body's buffer is wiped when it can be.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::http::RequestContent;
use azure_security_keyvault_secrets::models::{
    SecretClientGetSecretOptions, SecretClientListSecretPropertiesVersionsOptions,
};
use broker_core::{
    Credential, DeliveryKind, Error, ErrorKind, Request, Result, Rotation, SecretValue,
};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::errors::{Call, from_vault};
use crate::provider::AzureProvider;
use crate::target::SecretTarget;

/// The PEM content type Key Vault certificates use.
pub const PEM_CONTENT_TYPE: &str = "application/x-pem-file";
/// The PKCS#12 content type Key Vault certificates use (the value is base64).
pub const PKCS12_CONTENT_TYPE: &str = "application/x-pkcs12";
/// Bytes of randomness in a generated value (rotation without `#field` or with one).
const GENERATED_BYTES: usize = 30;

/// A secret bundle as Key Vault returns it; only what the broker uses.
#[derive(Deserialize)]
struct Bundle {
    #[serde(default, deserialize_with = "zeroizing")]
    value: Option<Zeroizing<String>>,
    #[serde(rename = "contentType")]
    content_type: Option<String>,
    id: Option<String>,
    #[serde(default)]
    attributes: Attributes,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

/// A string moved into a zeroizing buffer as soon as it is parsed.
fn zeroizing<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Zeroizing<String>>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(Zeroizing::new))
}

#[derive(Deserialize, Default)]
struct Attributes {
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

/// What rotation sends (`PUT /secrets/NAME`).
#[derive(Serialize)]
struct SetBody<'a> {
    value: &'a str,
    #[serde(rename = "contentType", skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a BTreeMap<String, String>>,
}

/// The version id at the end of a secret id (`https://v.vault.azure.net/secrets/NAME/VERSION`).
fn version_of(id: &str) -> Option<String> {
    id.rsplit('/')
        .next()
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn unix(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

impl AzureProvider {
    /// `resolve` of an `azurekv://` secret.
    pub(crate) async fn read_secret(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        if reference.scheme() != crate::KV_SCHEME {
            return Err(Error::unsupported("resolve")
                .with_reference(reference)
                .with_hint("azure-token:// credentials are minted: write `mint:` in the config"));
        }
        let target = SecretTarget::parse(reference)?;
        let bundle = self
            .get_bundle(request, &target)
            .await
            .map_err(|e| e.with_reference(reference))?;
        self.deliver(request, &target, bundle)
            .map_err(|e| e.with_reference(reference))
    }

    async fn get_bundle(&self, request: &Request<'_>, target: &SecretTarget) -> Result<Bundle> {
        let client = self.vault(&target.vault, request.nested).await?;
        let subject = target.subject();
        let rsp = client
            .get_secret(
                &target.name,
                Some(SecretClientGetSecretOptions {
                    secret_version: target.version.clone(),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| {
                from_vault(
                    &e,
                    Call {
                        operation: "get",
                        subject: &subject,
                    },
                )
            })?;
        let body: azure_core::Bytes = rsp.into_body().into();
        let parsed: std::result::Result<Bundle, _> = serde_json::from_slice(&body);
        if let Ok(mut owned) = body.try_into_mut() {
            owned.as_mut().zeroize();
        }
        let bundle = parsed.map_err(|_| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                format!(
                    "Key Vault answered get on {subject} with something that is not a secret bundle"
                ),
            )
        })?;
        check_window(&bundle.attributes, &subject, SystemTime::now())?;
        Ok(bundle)
    }

    fn deliver(
        &self,
        request: &Request<'_>,
        target: &SecretTarget,
        bundle: Bundle,
    ) -> Result<Credential> {
        let subject = target.subject();
        let value = bundle
            .value
            .ok_or_else(|| Error::not_found(format!("{subject} has no value")))?;
        let content_type = bundle.content_type.as_deref().unwrap_or("");
        let kind = request.kind();
        let bytes = match content_type {
            PEM_CONTENT_TYPE | PKCS12_CONTENT_TYPE if request.reference.field().is_some() => {
                return Err(Error::invalid_config(format!(
                    "{subject} has content type {content_type}: it takes no `#field`"
                )));
            }
            PEM_CONTENT_TYPE | PKCS12_CONTENT_TYPE if kind == Some(DeliveryKind::Env) => {
                return Err(Error::invalid_config(format!(
                    "{subject} has content type {content_type}: it is delivered as a file"
                ))
                .with_hint("add `kind: file` to the credential"));
            }
            PKCS12_CONTENT_TYPE => {
                use base64::Engine as _;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(value.trim().as_bytes())
                    .map_err(|_| {
                        Error::integrity(format!(
                            "{subject} has content type {content_type} but is not base64"
                        ))
                    })?;
                SecretValue::new(der)
            }
            _ => SecretValue::from(value),
        };
        let bytes = match request.reference.field_path() {
            None => bytes,
            Some(path) => broker_core::select_json(&bytes, &path).map_err(|e| {
                e.with_hint(format!(
                    "`#field` needs a JSON secret (content type {}); check the field name",
                    if content_type.is_empty() {
                        "not set"
                    } else {
                        content_type
                    }
                ))
            })?,
        };
        Ok(Credential::new(bytes))
    }

    /// `rotate` of an `azurekv://` secret: a new version with a generated value (or the JSON
    /// field replaced), the content type and tags kept.
    pub(crate) async fn rotate_secret(&self, request: &Request<'_>) -> Result<Rotation> {
        let target = SecretTarget::parse(request.reference)?;
        if target.version.is_some() {
            return Err(Error::invalid_config(
                "rotate writes a new version; drop the version from the reference",
            ));
        }
        let current = self.get_bundle(request, &target).await?;
        let subject = target.subject();
        let password = generate()?;
        let new_value = match request.reference.field_path() {
            None => password,
            Some(path) => {
                let document = current
                    .value
                    .as_ref()
                    .ok_or_else(|| Error::not_found(format!("{subject} has no value")))?;
                broker_core::json::replace_string(document.as_bytes(), &path, &password)?
            }
        };
        let text = new_value
            .expose_str()
            .map_err(|_| Error::internal("generated value is not text"))?;
        let body = Zeroizing::new(
            serde_json::to_vec(&SetBody {
                value: text,
                content_type: current.content_type.as_deref(),
                tags: current.tags.as_ref(),
            })
            .map_err(|_| Error::internal("JSON encoding failed"))?,
        );
        let client = self.vault(&target.vault, request.nested).await?;
        let rsp = client
            .set_secret(&target.name, RequestContent::from(body.to_vec()), None)
            .await
            .map_err(|e| {
                from_vault(
                    &e,
                    Call {
                        operation: "set",
                        subject: &subject,
                    },
                )
            })?;
        let answer: azure_core::Bytes = rsp.into_body().into();
        let parsed: std::result::Result<Bundle, _> = serde_json::from_slice(&answer);
        if let Ok(mut owned) = answer.try_into_mut() {
            owned.as_mut().zeroize();
        }
        let version = parsed
            .ok()
            .and_then(|b| b.id)
            .as_deref()
            .and_then(version_of);
        let what = match request.reference.field() {
            Some(f) => format!("field `{f}` of {subject}"),
            None => subject.clone(),
        };
        Ok(Rotation {
            summary: format!(
                "set a new version of {what} with a generated value (content type and tags kept){}",
                version
                    .as_deref()
                    .map(|v| format!(": version {v}"))
                    .unwrap_or_default()
            ),
            version,
        })
    }

    /// The versions of a secret, newest first by creation (for `check` and tests of rotation).
    pub async fn list_versions(
        &self,
        vault: &str,
        name: &str,
        nested: &dyn broker_core::ResolveRef,
    ) -> Result<Vec<String>> {
        use futures::TryStreamExt as _;
        let client = self.vault(vault, nested).await?;
        let subject = format!("secret `{name}` in vault `{vault}`");
        let call = Call {
            operation: "list",
            subject: &subject,
        };
        let pager = client
            .list_secret_properties_versions(
                name,
                Some(SecretClientListSecretPropertiesVersionsOptions::default()),
            )
            .map_err(|e| from_vault(&e, call))?;
        let items: Vec<_> = pager
            .try_collect()
            .await
            .map_err(|e| from_vault(&e, call))?;
        Ok(items
            .into_iter()
            .filter_map(|p| p.id.as_deref().and_then(version_of))
            .collect())
    }
}

/// Refuses a secret outside its `nbf` / `exp` window (the service does not).
fn check_window(attributes: &Attributes, subject: &str, now: SystemTime) -> Result<()> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    if attributes.enabled == Some(false) {
        return Err(
            Error::permission_denied(format!("{subject} is disabled")).with_hint(
                "enable the secret (or that version) in Key Vault, or name an enabled version",
            ),
        );
    }
    if let Some(nbf) = attributes.nbf
        && now < nbf
    {
        return Err(Error::permission_denied(format!(
            "{subject} is not valid yet (not before {})",
            unix(nbf)
        ))
        .with_hint("wait for its activation date, or name an older version"));
    }
    if let Some(exp) = attributes.exp
        && now >= exp
    {
        return Err(
            Error::permission_denied(format!("{subject} expired at {}", unix(exp)))
                .with_hint("set a new version (`broker rotate`) or extend its expiry in Key Vault"),
        );
    }
    Ok(())
}

/// A random value: 30 bytes as 40 base64url characters.
fn generate() -> Result<SecretValue> {
    use base64::Engine as _;
    let mut raw = Zeroizing::new([0u8; GENERATED_BYTES]);
    rand::fill(&mut raw[..]);
    Ok(SecretValue::from(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..]),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn window() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        let a = |enabled, nbf, exp| Attributes { enabled, nbf, exp };
        assert!(check_window(&a(Some(true), Some(900), Some(1100)), "s", at).is_ok());
        let errs: Vec<String> = [
            a(Some(false), None, None),
            a(None, Some(1001), None),
            a(None, None, Some(1000)),
        ]
        .iter()
        .map(|x| check_window(x, "s", at).unwrap_err().to_string())
        .collect();
        assert!(errs[0].contains("disabled"));
        assert!(errs[1].contains("not valid yet"));
        assert!(errs[2].contains("expired"));
        assert_eq!(
            version_of("https://v.vault.azure.net/secrets/n/abc"),
            Some("abc".into())
        );
        assert_eq!(generate().unwrap().len(), 40);
    }
}
