//! STS: `AssumeRole` / `AssumeRoleWithWebIdentity` minting and how the temporary
//! credentials are delivered (variables or a shared-credentials file).

use std::time::SystemTime;

use aws_sdk_sts::primitives::{DateTime, DateTimeFormat};
use broker_core::{
    Credential, DeliveryKind, Error, ErrorKind, Lease, Request, Result, SecretValue,
};
use zeroize::Zeroizing;

use crate::errors::{Call, from_sdk};
use crate::policy::{duration_seconds, session_name, session_policy};
use crate::provider::AwsProvider;
use crate::target::RoleTarget;

/// The largest web identity token file read. It goes through [`broker_core::localfile`], so a
/// FIFO, device or directory fails at once instead of blocking the broker or exhausting its
/// memory.
const MAX_TOKEN_FILE: u64 = 1 << 20;

/// The variable `kind: file` credentials also set to the credentials file's path.
pub const SHARED_CREDENTIALS_FILE_VAR: &str = "AWS_SHARED_CREDENTIALS_FILE";

/// Temporary credentials from STS. Never printed.
struct Minted {
    access_key_id: SecretValue,
    secret_access_key: SecretValue,
    session_token: SecretValue,
    expiration: DateTime,
    assumed_role_arn: String,
    region: String,
}
impl AwsProvider {
    /// `mint` of an `aws-sts://` role's credentials.
    pub(crate) async fn mint_session(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        if reference.scheme() != crate::STS_SCHEME {
            return Err(Error::unsupported("mint")
                .with_reference(reference)
                .with_hint("aws-sm:// secrets are read: write `ref:` in the config"));
        }
        let role = RoleTarget::parse(request).map_err(|e| e.with_reference(reference))?;
        let minted = self
            .assume(request, &role)
            .await
            .map_err(|e| e.with_reference(reference))?;
        let kind = request.kind().unwrap_or_default();
        let lease = Lease {
            id: minted.assumed_role_arn.clone(),
            expires_at: SystemTime::try_from(minted.expiration).ok(),
            renewable: false,
        };
        let credential = match kind {
            DeliveryKind::Env => Credential::new(process_json(&minted)?)
                .companions_only()
                .with_companion("AWS_ACCESS_KEY_ID", minted.access_key_id)
                .with_companion("AWS_SECRET_ACCESS_KEY", minted.secret_access_key)
                .with_companion("AWS_SESSION_TOKEN", minted.session_token)
                .with_plain_env("AWS_DEFAULT_REGION", &minted.region)
                .with_plain_env("AWS_REGION", &minted.region),
            DeliveryKind::File => Credential::new(credentials_file(&minted))
                .with_path_var(SHARED_CREDENTIALS_FILE_VAR)
                .with_plain_env("AWS_DEFAULT_REGION", &minted.region)
                .with_plain_env("AWS_REGION", &minted.region),
        };
        Ok(credential.with_lease(lease))
    }

    async fn assume(&self, request: &Request<'_>, role: &RoleTarget) -> Result<Minted> {
        let duration = duration_seconds(request.ttl())?;
        let policy = request.scope().map(session_policy).transpose()?;
        let session = session_name(
            request.context.agent_id.as_deref(),
            &request.context.request_id,
        );
        let subject = format!("role {}", role.role_arn);
        let call = |operation| Call {
            operation,
            subject: &subject,
            quote_message: true,
        };
        let (credentials, user, region) = match &self.settings.web_identity_token_file {
            Some(file) => {
                if role.external_id.is_some()
                    || role.source_identity.is_some()
                    || !role.tags.is_empty()
                {
                    return Err(Error::invalid_config(
                        "external id, source identity and session tags are not sent with web identity (they come from the token)",
                    )
                    .with_hint("remove them, or drop `backends.aws.web_identity_token_file` to use AssumeRole"));
                }
                let path = crate::resolve(&self.base_dir, file);
                let token = broker_core::localfile::read(&path, MAX_TOKEN_FILE).map_err(|e| {
                    e.to_error(
                        format_args!("cannot read the web identity token file {}", path.display()),
                        ErrorKind::Unsupported,
                    )
                })?;
                let token = std::str::from_utf8(&token)
                    .map_err(|_| {
                        Error::invalid_config(format!(
                            "the web identity token file {} is not text",
                            path.display()
                        ))
                    })?
                    .trim();
                let sdk = self.unsigned_sdk().await;
                let region = self
                    .region(role.region.as_deref(), sdk)
                    .unwrap_or_else(|| "us-east-1".into());
                let client = self.clients(sdk, &region, false).1;
                let out = client
                    .assume_role_with_web_identity()
                    .role_arn(&role.role_arn)
                    .role_session_name(&session)
                    .web_identity_token(token)
                    .duration_seconds(duration)
                    .set_policy(policy)
                    .send()
                    .await
                    .map_err(|e| from_sdk(e, call("AssumeRoleWithWebIdentity")))?;
                (out.credentials, out.assumed_role_user, region)
            }
            None => {
                let sdk = self.sdk(request.nested).await?;
                let region = self
                    .region(role.region.as_deref(), sdk)
                    .unwrap_or_else(|| "us-east-1".into());
                let client = self.clients(sdk, &region, true).1;
                let mut call_builder = client
                    .assume_role()
                    .role_arn(&role.role_arn)
                    .role_session_name(&session)
                    .duration_seconds(duration)
                    .set_policy(policy)
                    .set_external_id(role.external_id.clone())
                    .set_source_identity(role.source_identity.clone());
                for (key, value) in &role.tags {
                    call_builder = call_builder.tags(
                        aws_sdk_sts::types::Tag::builder()
                            .key(key)
                            .value(value)
                            .build()
                            .map_err(|_| Error::internal("session tag"))?,
                    );
                }
                let out = call_builder
                    .send()
                    .await
                    .map_err(|e| from_sdk(e, call("AssumeRole")))?;
                (out.credentials, out.assumed_role_user, region)
            }
        };
        let mut credentials = credentials
            .ok_or_else(|| Error::internal(format!("STS returned no credentials for {subject}")))?;
        let take = |s: &mut String| SecretValue::from(std::mem::take(s));
        Ok(Minted {
            access_key_id: take(&mut credentials.access_key_id),
            secret_access_key: take(&mut credentials.secret_access_key),
            session_token: take(&mut credentials.session_token),
            expiration: credentials.expiration,
            assumed_role_arn: user
                .map(|u| u.arn)
                .unwrap_or_else(|| format!("{}/{session}", role.role_arn)),
            region,
        })
    }
}

/// The `credential_process` document (Version 1, with Expiration).
fn process_json(m: &Minted) -> Result<SecretValue> {
    let fields = [
        ("AccessKeyId", &m.access_key_id),
        ("SecretAccessKey", &m.secret_access_key),
        ("SessionToken", &m.session_token),
    ];
    let capacity = 256 + fields.iter().map(|(_, v)| 2 * v.len()).sum::<usize>();
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    out.extend_from_slice(br#"{"Version":1"#);
    for (key, value) in fields {
        out.extend_from_slice(format!(",\"{key}\":").as_bytes());
        serde_json::to_writer(&mut *out, value.expose_str()?)
            .map_err(|_| Error::internal("JSON encoding failed"))?;
    }
    out.extend_from_slice(
        format!(",\"Expiration\":\"{}\"}}", expiration_text(&m.expiration)).as_bytes(),
    );
    Ok(SecretValue::from(out))
}

/// A shared-credentials file with a `[default]` profile.
fn credentials_file(m: &Minted) -> SecretValue {
    let capacity = 256 + m.access_key_id.len() + m.secret_access_key.len() + m.session_token.len();
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    out.extend_from_slice(b"[default]\naws_access_key_id = ");
    out.extend_from_slice(m.access_key_id.expose());
    out.extend_from_slice(b"\naws_secret_access_key = ");
    out.extend_from_slice(m.secret_access_key.expose());
    out.extend_from_slice(b"\naws_session_token = ");
    out.extend_from_slice(m.session_token.expose());
    out.extend_from_slice(format!("\n# expires {}\n", expiration_text(&m.expiration)).as_bytes());
    SecretValue::from(out)
}

fn expiration_text(t: &DateTime) -> String {
    t.fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
