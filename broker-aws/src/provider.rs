//! The provider: Secrets Manager reads and rotation, STS minting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_secretsmanager::Client as SmClient;
use aws_sdk_sts::Client as StsClient;
use aws_sdk_sts::primitives::{DateTime, DateTimeFormat};
use broker_core::{
    Badge, Check, Credential, CredentialProvider, DeliveryKind, Destination, Error, ErrorKind,
    FieldPath, FieldSegment, Lease, Reference, Request, ResolveRef, Result, Rotation, SecretValue,
    async_trait,
};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::errors::{Call, from_sdk};
use crate::policy::{duration_seconds, session_name, session_policy};
use crate::settings::{KeyRefs, Settings};
use crate::target::{RoleTarget, SecretTarget};

/// At most 3 retries (4 attempts), only for what the SDK classifies transient (throttling,
/// 5xx, timeouts, connection errors).
const MAX_ATTEMPTS: u32 = crate::errors::ATTEMPTS;
/// Under the broker's own per-attempt timeout, so the SDK finishes its retries first.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(25);
/// The variable `kind: file` credentials also set to the credentials file's path.
pub const SHARED_CREDENTIALS_FILE_VAR: &str = "AWS_SHARED_CREDENTIALS_FILE";

/// The `aws` backend: `aws-sm://` (Secrets Manager) and `aws-sts://` (STS).
///
/// Build it from [`Settings`] with [`AwsProvider::new`]; nothing touches the network or the
/// AWS config files until the first request.
pub struct AwsProvider {
    settings: Settings,
    keys: Option<KeyRefs>,
    base_dir: PathBuf,
    signed: OnceCell<SdkConfig>,
    unsigned: OnceCell<SdkConfig>,
    clients: Mutex<HashMap<String, (SmClient, StsClient)>>,
}

impl std::fmt::Debug for AwsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsProvider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

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
    /// A provider with `settings`; relative paths resolve against `base_dir`. No I/O.
    pub fn new(settings: Settings, base_dir: &Path) -> Result<AwsProvider> {
        let keys = settings.validate()?;
        Ok(AwsProvider {
            settings,
            keys,
            base_dir: base_dir.to_path_buf(),
            signed: OnceCell::new(),
            unsigned: OnceCell::new(),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn loader(&self) -> aws_config::ConfigLoader {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(4)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(6))
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            );
        if let Some(profile) = &self.settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &self.settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &self.settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        loader
    }

    /// The SDK config for the broker's own identity, loaded on first use.
    async fn sdk(&self, nested: &dyn ResolveRef) -> Result<&SdkConfig> {
        self.signed
            .get_or_try_init(|| async {
                let mut loader = self.loader();
                if let Some(keys) = &self.keys {
                    let id = nested
                        .resolve_ref(&keys.access_key_id, "the AWS access key id")
                        .await?;
                    let secret = nested
                        .resolve_ref(&keys.secret_access_key, "the AWS secret access key")
                        .await?;
                    let token = match &keys.session_token {
                        Some(t) => Some(nested.resolve_ref(t, "the AWS session token").await?),
                        None => None,
                    };
                    let text = |v: &SecretValue, what: &str| {
                        v.expose_str()
                            .map(|s| s.trim().to_string())
                            .map_err(|_| Error::invalid_config(format!("{what} is not UTF-8 text")))
                    };
                    let credentials = aws_sdk_sts::config::Credentials::new(
                        text(&id, "the AWS access key id")?,
                        text(&secret, "the AWS secret access key")?,
                        token
                            .as_ref()
                            .map(|t| text(t, "the AWS session token"))
                            .transpose()?,
                        None,
                        "broker-config",
                    );
                    loader = loader.credentials_provider(credentials);
                }
                Ok::<_, Error>(loader.load().await)
            })
            .await
    }

    /// An SDK config that signs nothing (AssumeRoleWithWebIdentity).
    async fn unsigned_sdk(&self) -> &SdkConfig {
        self.unsigned
            .get_or_init(|| async { self.loader().no_credentials().load().await })
            .await
    }

    fn clients(&self, sdk: &SdkConfig, region: &str, signed: bool) -> (SmClient, StsClient) {
        let mut map = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = format!("{}{region}", if signed { "" } else { "unsigned:" });
        map.entry(key)
            .or_insert_with(|| {
                let sm = aws_sdk_secretsmanager::config::Builder::from(sdk)
                    .region(Region::new(region.to_string()))
                    .build();
                let sts = aws_sdk_sts::config::Builder::from(sdk)
                    .region(Region::new(region.to_string()))
                    .build();
                (SmClient::from_conf(sm), StsClient::from_conf(sts))
            })
            .clone()
    }

    /// The region: the reference's, then the settings', then the SDK chain's.
    fn region(&self, explicit: Option<&str>, sdk: &SdkConfig) -> Option<String> {
        explicit
            .map(str::to_string)
            .or_else(|| self.settings.region.clone())
            .or_else(|| sdk.region().map(|r| r.as_ref().to_string()))
    }

    /// The region without loading anything (for egress): reference, settings, environment.
    fn static_region(&self, explicit: Option<&str>) -> Option<String> {
        explicit
            .map(str::to_string)
            .or_else(|| self.settings.region.clone())
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .or_else(|| {
                std::env::var("AWS_DEFAULT_REGION")
                    .ok()
                    .filter(|r| !r.is_empty())
            })
    }

    /// Where requests for `service` go: `endpoint_url`, `AWS_ENDPOINT_URL_<SERVICE>`,
    /// `AWS_ENDPOINT_URL`, else the public regional endpoint.
    fn endpoint(&self, service: &str, env_suffix: &str, region: Option<&str>) -> String {
        if let Some(url) = &self.settings.endpoint_url {
            return url.clone();
        }
        for var in [
            format!("AWS_ENDPOINT_URL_{env_suffix}"),
            "AWS_ENDPOINT_URL".into(),
        ] {
            if let Ok(url) = std::env::var(&var)
                && !url.is_empty()
            {
                return url;
            }
        }
        match region {
            Some(r) if r.starts_with("cn-") => format!("https://{service}.{r}.amazonaws.com.cn"),
            Some(r) => format!("https://{service}.{r}.amazonaws.com"),
            None => format!("https://{service}.<region from the AWS profile>.amazonaws.com"),
        }
    }

    async fn sm_client(&self, request: &Request<'_>, target: &SecretTarget) -> Result<SmClient> {
        let sdk = self.sdk(request.nested).await?;
        let region = self.region(target.region.as_deref(), sdk).ok_or_else(|| {
            Error::not_configured(format!("no AWS region for secret `{}`", target.id))
                .with_hint("use the secret's full ARN, add `?region=`, set `backends.aws.region`, or AWS_REGION")
        })?;
        Ok(self.clients(sdk, &region, true).0)
    }

    async fn get_secret(
        &self,
        request: &Request<'_>,
        target: &SecretTarget,
    ) -> Result<SecretValue> {
        let client = self.sm_client(request, target).await?;
        let subject = format!("secret `{}`", target.id);
        let mut out = client
            .get_secret_value()
            .secret_id(&target.id)
            // AWSCURRENT is the default anyway; naming it keeps servers that track a separate
            // default version (moto) right after a stage move.
            .set_version_stage(match (&target.stage, &target.version_id) {
                (None, None) => Some("AWSCURRENT".to_string()),
                (stage, _) => stage.clone(),
            })
            .set_version_id(target.version_id.clone())
            .send()
            .await
            .map_err(|e| {
                from_sdk(
                    e,
                    Call {
                        operation: "GetSecretValue",
                        subject: &subject,
                        quote_message: true,
                    },
                )
            })?;
        if let Some(text) = out.secret_string.take() {
            Ok(SecretValue::from(text))
        } else if let Some(blob) = out.secret_binary.take() {
            Ok(SecretValue::new(blob.into_inner()))
        } else {
            Err(Error::not_found(format!(
                "{subject} has no value in the requested version"
            )))
        }
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
                let token = std::fs::read(&path).map(Zeroizing::new).map_err(|e| {
                    Error::io(
                        format_args!("cannot read the web identity token file {}", path.display()),
                        &e,
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

    async fn rotate_secret(&self, request: &Request<'_>) -> Result<Rotation> {
        let target = SecretTarget::parse(request.reference)?;
        if target.stage.is_some() || target.version_id.is_some() {
            return Err(Error::invalid_config(
                "rotate writes a new AWSCURRENT version; drop `?version-stage=` / `?version-id=`",
            ));
        }
        let client = self.sm_client(request, &target).await?;
        let subject = format!("secret `{}`", target.id);
        let call = |operation, quote_message| Call {
            operation,
            subject: &subject,
            quote_message,
        };
        let described = client
            .describe_secret()
            .secret_id(&target.id)
            .send()
            .await
            .map_err(|e| from_sdk(e, call("DescribeSecret", true)))?;
        if described.rotation_enabled == Some(true) || described.rotation_lambda_arn.is_some() {
            let out = client
                .rotate_secret()
                .secret_id(&target.id)
                .send()
                .await
                .map_err(|e| from_sdk(e, call("RotateSecret", true)))?;
            return Ok(Rotation {
                summary: format!("started rotation of {subject} with its rotation function"),
                version: out.version_id,
            });
        }
        let current = described
            .version_ids_to_stages
            .unwrap_or_default()
            .into_iter()
            .find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT"))
            .map(|(id, _)| id);
        let mut generated = client
            .get_random_password()
            .password_length(40)
            .exclude_punctuation(true)
            .send()
            .await
            .map_err(|e| from_sdk(e, call("GetRandomPassword", false)))?;
        let password = SecretValue::from(
            generated
                .random_password
                .take()
                .ok_or_else(|| Error::internal("GetRandomPassword returned nothing"))?,
        );
        let new_value = match request.reference.field_path() {
            None => password,
            Some(path) => {
                let document = self.get_secret(request, &target).await?;
                replace_field(&document, &path, &password)?
            }
        };
        let token = broker_core::provider::random_id();
        let text = new_value
            .expose_str()
            .map_err(|_| Error::internal("generated value is not text"))?;
        let put = client
            .put_secret_value()
            .secret_id(&target.id)
            .client_request_token(&token)
            .secret_string(text)
            .version_stages("AWSPENDING")
            .send()
            .await
            .map_err(|e| from_sdk(e, call("PutSecretValue", false)))?;
        let new_version = put.version_id.unwrap_or(token);
        client
            .update_secret_version_stage()
            .secret_id(&target.id)
            .version_stage("AWSCURRENT")
            .move_to_version_id(&new_version)
            .set_remove_from_version_id(current)
            .send()
            .await
            .map_err(|e| from_sdk(e, call("UpdateSecretVersionStage", true)))?;
        client
            .update_secret_version_stage()
            .secret_id(&target.id)
            .version_stage("AWSPENDING")
            .remove_from_version_id(&new_version)
            .send()
            .await
            .map_err(|e| from_sdk(e, call("UpdateSecretVersionStage", true)))?;
        let what = match request.reference.field() {
            Some(f) => format!("field `{f}` of {subject}"),
            None => subject.clone(),
        };
        Ok(Rotation {
            summary: format!(
                "put a new random value for {what} as AWSPENDING and promoted it to AWSCURRENT"
            ),
            version: Some(new_version),
        })
    }
}

/// `document` with the string at `path` replaced by `value`; the field must exist.
fn replace_field(
    document: &SecretValue,
    path: &FieldPath,
    value: &SecretValue,
) -> Result<SecretValue> {
    let mut parsed: serde_json::Value =
        serde_json::from_slice(document.expose()).map_err(|_| {
            Error::invalid_config("the secret is not a JSON document, so a field cannot be rotated")
        })?;
    let mut node = &mut parsed;
    for seg in &path.0 {
        node = match (seg, node) {
            (FieldSegment::Key(k), serde_json::Value::Object(map)) => map.get_mut(k),
            (FieldSegment::Index(i), serde_json::Value::Array(list)) => list.get_mut(*i),
            _ => None,
        }
        .ok_or_else(|| Error::not_found(format!("field `{path}` is not in the secret")))?;
    }
    if !node.is_string() {
        return Err(Error::invalid_config(format!(
            "field `{path}` is not a string, so it cannot be rotated"
        )));
    }
    *node = serde_json::Value::String(value.expose_str()?.to_string());
    let out = SecretValue::new(
        serde_json::to_vec(&parsed).map_err(|_| Error::internal("JSON re-encoding failed"))?,
    );
    zeroize_json(parsed);
    Ok(out)
}

/// Best-effort wipe of the strings in a parsed document.
fn zeroize_json(value: serde_json::Value) {
    use zeroize::Zeroize;
    match value {
        serde_json::Value::String(mut s) => s.zeroize(),
        serde_json::Value::Array(items) => items.into_iter().for_each(zeroize_json),
        serde_json::Value::Object(map) => map.into_iter().for_each(|(_, v)| zeroize_json(v)),
        _ => {}
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

#[async_trait]
impl CredentialProvider for AwsProvider {
    fn egress(&self, reference: &Reference, _base_dir: &Path) -> Result<Vec<Destination>> {
        match reference.scheme() {
            crate::SM_SCHEME => {
                let target = SecretTarget::parse(reference)?;
                let region = self.static_region(target.region.as_deref());
                Ok(vec![Destination::host(
                    self.endpoint("secretsmanager", "SECRETS_MANAGER", region.as_deref()),
                    Badge::ManagedCloud,
                )])
            }
            crate::STS_SCHEME => {
                let region = self.static_region(reference.query_param("region"));
                let mut out = vec![Destination::host(
                    self.endpoint("sts", "STS", region.as_deref()),
                    Badge::ManagedCloud,
                )];
                if let Some(file) = &self.settings.web_identity_token_file {
                    out.push(Destination::file(crate::resolve(&self.base_dir, file)));
                }
                Ok(out)
            }
            other => Err(Error::internal(format!(
                "aws backend asked for scheme `{other}`"
            ))),
        }
    }

    async fn resolve(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        if reference.scheme() != crate::SM_SCHEME {
            return Err(Error::unsupported("resolve")
                .with_reference(reference)
                .with_hint("aws-sts:// credentials are minted: write `mint:` in the config"));
        }
        let target = SecretTarget::parse(reference)?;
        let value = self
            .get_secret(request, &target)
            .await
            .map_err(|e| e.with_reference(reference))?;
        let value = match reference.field_path() {
            None => value,
            Some(path) => broker_core::select_json(&value, &path).map_err(|e| {
                e.with_reference(reference)
                    .with_hint("check the field name against the secret's JSON keys")
            })?,
        };
        Ok(Credential::new(value))
    }

    async fn mint(&self, request: &Request<'_>) -> Result<Credential> {
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
        let kind = request.spec.map(|s| s.kind).unwrap_or_default();
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

    async fn revoke(&self, lease_id: &str, _nested: &dyn ResolveRef) -> Result<()> {
        let _ = lease_id;
        Err(Error::new(
            ErrorKind::Unsupported,
            "STS sessions cannot be revoked one by one; they end at their expiry (the credential's ttl)",
        )
        .with_hint(
            "keep `ttl:` short; to cut off every session of a role now, attach a deny policy on `aws:TokenIssueTime` to the role (IAM console: Roles > Revoke active sessions)",
        ))
    }

    async fn rotate(&self, request: &Request<'_>) -> Result<Rotation> {
        if request.reference.scheme() != crate::SM_SCHEME {
            return Err(Error::unsupported("rotate")
                .with_reference(request.reference)
                .with_hint(
                    "minted STS credentials expire on their own; rotate aws-sm:// secrets",
                ));
        }
        self.rotate_secret(request)
            .await
            .map_err(|e| e.with_reference(request.reference))
    }

    async fn check(&self, nested: &dyn ResolveRef) -> Check {
        let sdk = match self.sdk(nested).await {
            Ok(sdk) => sdk,
            Err(e) => return Check::failed(e.to_string()),
        };
        let region = self.region(None, sdk).unwrap_or_else(|| "us-east-1".into());
        let client = self.clients(sdk, &region, true).1;
        match client.get_caller_identity().send().await {
            Ok(out) => Check::ok(format!(
                "authenticated as {} (region {region})",
                out.arn.as_deref().unwrap_or("an unnamed principal")
            )),
            Err(e) => Check::failed(
                from_sdk(
                    e,
                    Call {
                        operation: "GetCallerIdentity",
                        subject: "the broker's identity",
                        quote_message: true,
                    },
                )
                .to_string(),
            ),
        }
    }
}
