//! IAM Credentials: short-lived OAuth access tokens (`generateAccessToken`) and ID tokens
//! (`generateIdToken`) of a service account, by impersonation, and how they are delivered.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker_core::{Credential, DeliveryKind, Error, Lease, Request, Result, SecretValue};

use crate::errors::{Call, from_gax};
use crate::provider::GcpProvider;
use crate::target::{AccountTarget, TokenKind};

/// The variable a `kind: env` access token is delivered as (Terraform's google provider and
/// several other tools read it).
pub const ACCESS_TOKEN_VAR: &str = "GOOGLE_OAUTH_ACCESS_TOKEN";
/// The variable that also holds the path of a `kind: file` access token (gcloud reads it).
pub const ACCESS_TOKEN_FILE_VAR: &str = "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE";
/// How long Google's ID tokens last.
const ID_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

impl GcpProvider {
    /// `mint` of a `gcp-iam://` token.
    pub(crate) async fn mint_token(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        if reference.scheme() != crate::IAM_SCHEME {
            return Err(Error::unsupported("mint")
                .with_reference(reference)
                .with_hint("gcp-sm:// secrets are read: write `ref:` in the config"));
        }
        let account = AccountTarget::parse(request, self.checked.max_lifetime)
            .map_err(|e| e.with_reference(reference))?;
        self.generate(request, &account)
            .await
            .map_err(|e| e.with_reference(reference))
    }

    async fn generate(&self, request: &Request<'_>, account: &AccountTarget) -> Result<Credential> {
        let client = self.iam_client(request.nested).await?;
        let name = resource(&account.email);
        let delegates: Vec<String> = account.delegates.iter().map(|d| resource(d)).collect();
        let subject = format!("service account {}", account.email);
        let lease_id = format!("{name}@{}", request.context.request_id);
        match &account.token {
            TokenKind::Access { scopes, lifetime } => {
                let lifetime = google_cloud_wkt::Duration::try_from(*lifetime)
                    .map_err(|_| Error::internal("token lifetime"))?;
                let mut out = client
                    .generate_access_token()
                    .set_name(&name)
                    .set_delegates(delegates)
                    .set_scope(scopes.clone())
                    .set_lifetime(lifetime)
                    .send()
                    .await
                    .map_err(|e| from_gax(&e, call("GenerateAccessToken", &subject)))?;
                let token = SecretValue::from(std::mem::take(&mut out.access_token));
                let expires_at = out
                    .expire_time
                    .as_ref()
                    .and_then(|t| u64::try_from(t.seconds()).ok())
                    .map(|s| UNIX_EPOCH + Duration::from_secs(s));
                let lease = Lease {
                    id: lease_id,
                    expires_at,
                    renewable: false,
                };
                let credential = match request.kind().unwrap_or_default() {
                    DeliveryKind::Env => Credential::new(token.clone())
                        .companions_only()
                        .with_companion(token_var(request)?, token),
                    DeliveryKind::File => {
                        Credential::new(token).with_path_var(ACCESS_TOKEN_FILE_VAR)
                    }
                };
                Ok(credential.with_lease(lease))
            }
            TokenKind::Id {
                audience,
                include_email,
            } => {
                let mut out = client
                    .generate_id_token()
                    .set_name(&name)
                    .set_delegates(delegates)
                    .set_audience(audience.clone())
                    .set_include_email(*include_email)
                    .send()
                    .await
                    .map_err(|e| from_gax(&e, call("GenerateIdToken", &subject)))?;
                let token = SecretValue::from(std::mem::take(&mut out.token));
                let lease = Lease {
                    id: lease_id,
                    expires_at: Some(SystemTime::now() + ID_TOKEN_LIFETIME),
                    renewable: false,
                };
                Ok(Credential::new(token).with_lease(lease))
            }
        }
    }
}

/// `projects/-/serviceAccounts/EMAIL` (the `-` wildcard: the project comes from the email).
fn resource(email: &str) -> String {
    format!("projects/-/serviceAccounts/{email}")
}

fn call<'a>(operation: &'a str, subject: &'a str) -> Call<'a> {
    Call {
        operation,
        subject,
        quote_message: true,
    }
}

/// The variable a `kind: env` access token goes to: the `token_env:` option, else
/// [`ACCESS_TOKEN_VAR`].
fn token_var(request: &Request<'_>) -> Result<String> {
    match request.option("token_env") {
        None => Ok(ACCESS_TOKEN_VAR.to_string()),
        Some(serde_json::Value::String(s))
            if !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !s.starts_with(|c: char| c.is_ascii_digit()) =>
        {
            Ok(s.clone())
        }
        Some(_) => Err(Error::invalid_config(
            "`token_env` is an environment variable name (letters, digits, `_`)",
        )),
    }
}
