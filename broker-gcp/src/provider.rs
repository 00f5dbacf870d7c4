//! The provider: the broker's credentials, the Google clients (one attempt per call, attempt
//! timeouts), endpoints, and the `CredentialProvider` impl, which hands `gcp-sm://` to
//! `secret_manager` and `gcp-iam://` to `iam`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use broker_core::{
    Badge, Check, Credential, CredentialProvider, Destination, Error, ErrorKind, Reference,
    Request, ResolveRef, Result, Rotation, async_trait,
};
use google_cloud_auth::credentials::Credentials;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_iam_credentials_v1::client::IAMCredentials;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use tokio::sync::{Mutex, OnceCell};

use crate::settings::{Checked, CheckedAuth, Settings};
use crate::target::SecretTarget;

/// The public Secret Manager endpoint.
pub const SECRET_MANAGER_ENDPOINT: &str = "https://secretmanager.googleapis.com";
/// The public IAM Credentials endpoint.
pub const IAM_CREDENTIALS_ENDPOINT: &str = "https://iamcredentials.googleapis.com";
/// The time one attempt may take (under the broker's own per-attempt timeout of 30 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `gcp` backend: `gcp-sm://` (Secret Manager) and `gcp-iam://` (IAM Credentials).
///
/// Build it from [`Settings`] with [`GcpProvider::new`]; nothing touches the network or
/// resolves the broker's own credentials until the first request.
pub struct GcpProvider {
    pub(crate) settings: Settings,
    pub(crate) checked: Checked,
    credentials: OnceCell<Credentials>,
    secret_manager: Mutex<HashMap<String, SecretManagerService>>,
    iam: OnceCell<IAMCredentials>,
}

impl std::fmt::Debug for GcpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpProvider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl GcpProvider {
    /// A provider with `settings`. No I/O.
    pub fn new(settings: Settings) -> Result<GcpProvider> {
        let checked = settings.validate()?;
        Ok(GcpProvider {
            settings,
            checked,
            credentials: OnceCell::new(),
            secret_manager: Mutex::new(HashMap::new()),
            iam: OnceCell::new(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The broker's credentials, built on first use.
    async fn credentials(&self, nested: &dyn ResolveRef) -> Result<Credentials> {
        self.credentials
            .get_or_try_init(|| crate::identity::credentials(self.checked.auth.as_ref(), nested))
            .await
            .cloned()
    }

    /// Where Secret Manager requests for `target` go.
    pub(crate) fn sm_endpoint(&self, location: Option<&str>) -> String {
        match (&self.settings.endpoint, location) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, Some(l)) => format!("https://secretmanager.{l}.rep.googleapis.com"),
            (None, None) => SECRET_MANAGER_ENDPOINT.to_string(),
        }
    }

    /// Where IAM Credentials requests go.
    pub(crate) fn iam_endpoint(&self) -> String {
        self.settings
            .iam_endpoint
            .as_deref()
            .map_or(IAM_CREDENTIALS_ENDPOINT, |u| u.trim_end_matches('/'))
            .to_string()
    }

    /// A Secret Manager client for `target`'s endpoint.
    pub(crate) async fn sm_client(
        &self,
        nested: &dyn ResolveRef,
        target: &SecretTarget,
    ) -> Result<SecretManagerService> {
        let endpoint = self.sm_endpoint(target.location.as_deref());
        let mut clients = self.secret_manager.lock().await;
        if let Some(client) = clients.get(&endpoint) {
            return Ok(client.clone());
        }
        let client = SecretManagerService::builder()
            .with_endpoint(endpoint.clone())
            .with_credentials(self.credentials(nested).await?)
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout(ATTEMPT_TIMEOUT)
            .build()
            .await
            .map_err(|e| client_error("Secret Manager", &endpoint, &e))?;
        clients.insert(endpoint, client.clone());
        Ok(client)
    }

    /// The IAM Credentials client.
    pub(crate) async fn iam_client(&self, nested: &dyn ResolveRef) -> Result<IAMCredentials> {
        self.iam
            .get_or_try_init(|| async {
                let endpoint = self.iam_endpoint();
                IAMCredentials::builder()
                    .with_endpoint(endpoint.clone())
                    .with_credentials(self.credentials(nested).await?)
                    .with_retry_policy(NeverRetry)
                    .with_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build()
                    .await
                    .map_err(|e| client_error("IAM Credentials", &endpoint, &e))
            })
            .await
            .cloned()
    }
}

fn client_error(service: &str, endpoint: &str, err: &dyn std::fmt::Display) -> Error {
    Error::invalid_config(format!(
        "cannot set up the {service} client for {endpoint}: {}",
        crate::errors::one_line(&err.to_string())
    ))
}

#[async_trait]
impl CredentialProvider for GcpProvider {
    fn egress(&self, reference: &Reference, _base_dir: &Path) -> Result<Vec<Destination>> {
        let mut out = match reference.scheme() {
            crate::SM_SCHEME => {
                let target = SecretTarget::parse(reference)?;
                vec![Destination::host(
                    self.sm_endpoint(target.location.as_deref()),
                    Badge::ManagedCloud,
                )]
            }
            crate::IAM_SCHEME => vec![Destination::host(self.iam_endpoint(), Badge::ManagedCloud)],
            other => {
                return Err(Error::internal(format!(
                    "gcp backend asked for scheme `{other}`"
                )));
            }
        };
        if let Some(CheckedAuth::Metadata(endpoint)) = &self.checked.auth {
            out.push(Destination::host(
                endpoint
                    .clone()
                    .unwrap_or_else(|| "http://metadata.google.internal".into()),
                Badge::ManagedCloud,
            ));
        }
        Ok(out)
    }

    async fn resolve(&self, request: &Request<'_>) -> Result<Credential> {
        self.read_secret(request).await
    }

    async fn mint(&self, request: &Request<'_>) -> Result<Credential> {
        self.mint_token(request).await
    }

    async fn revoke(&self, lease_id: &str, _nested: &dyn ResolveRef) -> Result<()> {
        let _ = lease_id;
        Err(Error::new(
            ErrorKind::Unsupported,
            "Google access and ID tokens cannot be revoked; they end at their expiry (the credential's ttl, at most 1h by default)",
        )
        .with_hint(
            "keep `ttl:` short; to cut off a service account now, disable it or remove the broker's roles/iam.serviceAccountTokenCreator on it",
        ))
    }

    async fn rotate(&self, request: &Request<'_>) -> Result<Rotation> {
        if request.reference.scheme() != crate::SM_SCHEME {
            return Err(Error::unsupported("rotate")
                .with_reference(request.reference)
                .with_hint("minted Google tokens expire on their own; rotate gcp-sm:// secrets"));
        }
        self.rotate_secret(request)
            .await
            .map_err(|e| e.with_reference(request.reference))
    }

    async fn check(&self, nested: &dyn ResolveRef) -> Check {
        let method = match &self.checked.auth {
            None => {
                return Check::failed(
                    "no Google identity: set `backends.gcp.auth` (docs/backends/gcp.md)",
                );
            }
            Some(CheckedAuth::None) => {
                return Check::ok(format!(
                    "no credentials (emulator mode); Secret Manager at {}",
                    self.sm_endpoint(None)
                ));
            }
            Some(CheckedAuth::Credentials(_)) => "credentials document",
            Some(CheckedAuth::Metadata(_)) => "metadata server",
            Some(CheckedAuth::AccessToken(_)) => "access token",
        };
        let credentials = match self.credentials(nested).await {
            Ok(c) => c,
            Err(e) => return Check::failed(e.to_string()),
        };
        match credentials.headers(http::Extensions::new()).await {
            Ok(_) => Check::ok(format!("authenticated ({method})")),
            Err(e) => Check::failed(format!(
                "cannot get a Google token ({method}): {}",
                crate::errors::one_line(&e.to_string())
            )),
        }
    }
}
