//! The broker's own Google identity (`backends.gcp.auth`): a service-account key or an
//! external-account (workload identity federation) document by reference, the metadata
//! server, an access token by reference, or nothing (emulators).
//!
//! Nothing here reads `GOOGLE_APPLICATION_CREDENTIALS` or walks the ADC search path: the
//! source is the one the settings name.

use broker_core::json::SecretJson;
use broker_core::{Error, ErrorKind, ResolveRef, Result, SecretValue};
use google_cloud_auth::credentials::{
    CacheableResource, Credentials, CredentialsProvider, EntityTag, anonymous, external_account,
    mds, service_account,
};
use google_cloud_gax::error::CredentialsError;
use google_cloud_gax::retry_policy::NeverRetry;
use http::{Extensions, HeaderMap, HeaderValue};

use crate::settings::CheckedAuth;
use crate::target::DEFAULT_SCOPE;

/// The credentials `auth` describes; nested references are resolved through `nested`.
pub(crate) async fn credentials(
    auth: Option<&CheckedAuth>,
    nested: &dyn ResolveRef,
) -> Result<Credentials> {
    let Some(auth) = auth else {
        return Err(Error::not_configured(
            "the broker has no Google identity: `backends.gcp.auth` is not set",
        )
        .with_hint(
            "set `backends.gcp.auth` to `{ method: credentials, credentials_ref: ... }` (a service-account key or workload identity federation JSON), `{ method: metadata }` or `{ method: access_token, token_ref: ... }` (docs/backends/gcp.md)",
        ));
    };
    match auth {
        CheckedAuth::None => Ok(anonymous::Builder::new().build()),
        CheckedAuth::Metadata(endpoint) => {
            let mut builder = mds::Builder::default()
                .with_scopes([DEFAULT_SCOPE])
                .with_retry_policy(NeverRetry);
            if let Some(e) = endpoint {
                builder = builder.with_endpoint(e.clone());
            }
            builder.build().map_err(|_| {
                Error::invalid_config("the metadata-server credentials could not be set up")
            })
        }
        CheckedAuth::AccessToken(reference) => {
            let token = nested
                .resolve_ref(reference, "the Google access token")
                .await?;
            StaticToken::new(&token).map(Credentials::from)
        }
        CheckedAuth::Credentials(reference) => {
            let document = nested
                .resolve_ref(reference, "the Google credentials JSON")
                .await?;
            from_json(&document)
        }
    }
}

/// Credentials from a service-account key or an external-account document.
fn from_json(document: &SecretValue) -> Result<Credentials> {
    let parsed = SecretJson::parse(document.expose()).map_err(|_| {
        Error::invalid_config("the Google credentials document is not JSON")
            .with_hint("`credentials_ref` names a service-account key or an external-account (workload identity federation) JSON file")
    })?;
    let kind = parsed
        .value()
        .get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    match kind.as_str() {
        "service_account" => service_account::Builder::new(parsed.value().clone())
            .with_access_specifier(service_account::AccessSpecifier::from_scopes([
                DEFAULT_SCOPE,
            ]))
            .build()
            .map_err(|_| {
                Error::invalid_config(
                    "the service-account key is incomplete (it needs client_email, private_key, ...)",
                )
            }),
        "external_account" => external_account::Builder::new(parsed.value().clone())
            .with_scopes([DEFAULT_SCOPE])
            .with_retry_policy(NeverRetry)
            .build()
            .map_err(|e| {
                Error::invalid_config(format!(
                    "the external-account document is not usable ({})",
                    // Builder errors name fields and sources, not values.
                    crate::errors::one_line(&e.to_string())
                ))
            }),
        other => Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "the Google credentials document has type `{}`; the broker takes `service_account` or `external_account`",
                broker_core::grammar::elide(other)
            ),
        )),
    }
}

/// An access token the settings give by reference, sent as it is.
struct StaticToken {
    header: HeaderValue,
    tag: EntityTag,
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken([REDACTED])")
    }
}

impl StaticToken {
    fn new(token: &SecretValue) -> Result<StaticToken> {
        let text = token
            .expose_str()
            .map_err(|_| Error::invalid_config("the Google access token is not text"))?;
        let bearer = zeroize::Zeroizing::new(format!("Bearer {}", text.trim()));
        let mut header = HeaderValue::from_str(&bearer).map_err(|_| {
            Error::invalid_config("the Google access token has characters a header cannot carry")
        })?;
        header.set_sensitive(true);
        Ok(StaticToken {
            header,
            tag: EntityTag::new(),
        })
    }
}

impl CredentialsProvider for StaticToken {
    async fn headers(
        &self,
        extensions: Extensions,
    ) -> std::result::Result<CacheableResource<HeaderMap>, CredentialsError> {
        if extensions.get::<EntityTag>() == Some(&self.tag) {
            return Ok(CacheableResource::NotModified);
        }
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, self.header.clone());
        Ok(CacheableResource::New {
            entity_tag: self.tag.clone(),
            data: headers,
        })
    }

    async fn universe_domain(&self) -> Option<String> {
        None
    }
}
