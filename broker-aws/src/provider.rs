//! The provider: SDK configuration, clients, regions and endpoints, and the
//! `CredentialProvider` impl, which hands `aws-sm://` to `secrets_manager` and `aws-sts://`
//! to `sts`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_secretsmanager::Client as SmClient;
use aws_sdk_sts::Client as StsClient;
use broker_core::{
    Badge, Check, Credential, CredentialProvider, Destination, Error, ErrorKind, Reference,
    Request, ResolveRef, Result, Rotation, SecretValue, async_trait,
};
use tokio::sync::OnceCell;

use crate::errors::{Call, from_sdk};
use crate::settings::{KeyRefs, Settings};
use crate::target::SecretTarget;

/// At most 3 retries (4 attempts), only for what the SDK classifies transient (throttling,
/// 5xx, timeouts, connection errors).
const MAX_ATTEMPTS: u32 = crate::errors::ATTEMPTS;
/// Under the broker's own per-attempt timeout, so the SDK finishes its retries first.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(25);

/// The `aws` backend: `aws-sm://` (Secrets Manager) and `aws-sts://` (STS).
///
/// Build it from [`Settings`] with [`AwsProvider::new`]; nothing touches the network or the
/// AWS config files until the first request.
pub struct AwsProvider {
    pub(crate) settings: Settings,
    keys: Option<KeyRefs>,
    pub(crate) base_dir: PathBuf,
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
    pub(crate) async fn sdk(&self, nested: &dyn ResolveRef) -> Result<&SdkConfig> {
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
    pub(crate) async fn unsigned_sdk(&self) -> &SdkConfig {
        self.unsigned
            .get_or_init(|| async { self.loader().no_credentials().load().await })
            .await
    }

    pub(crate) fn clients(
        &self,
        sdk: &SdkConfig,
        region: &str,
        signed: bool,
    ) -> (SmClient, StsClient) {
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
    pub(crate) fn region(&self, explicit: Option<&str>, sdk: &SdkConfig) -> Option<String> {
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
        self.read_secret(request).await
    }

    async fn mint(&self, request: &Request<'_>) -> Result<Credential> {
        self.mint_session(request).await
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
