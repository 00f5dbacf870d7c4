//! `azure-token://`: Entra access tokens minted with the broker's identity for a client, one
//! scope, cached and re-minted by the broker's lease cache before `expires_on`.

use std::time::SystemTime;

use broker_core::{Credential, Error, Lease, Request, Result, SecretValue};

use crate::errors::from_credential;
use crate::identity::Principal;
use crate::provider::AzureProvider;
use crate::settings::Method;
use crate::target::TokenTarget;

/// The variable the token is conventionally delivered as (`as: AZURE_ACCESS_TOKEN`).
pub const ACCESS_TOKEN_VAR: &str = "AZURE_ACCESS_TOKEN";

impl AzureProvider {
    /// `mint` of an `azure-token://` access token.
    pub(crate) async fn mint_token(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        if reference.scheme() != crate::TOKEN_SCHEME {
            return Err(Error::unsupported("mint")
                .with_reference(reference)
                .with_hint("azurekv:// secrets are read: write `ref:` in the config"));
        }
        let target = TokenTarget::parse(reference)?;
        self.mint_for(request, &target)
            .await
            .map_err(|e| e.with_reference(reference))
    }

    async fn mint_for(&self, request: &Request<'_>, target: &TokenTarget) -> Result<Credential> {
        let method = self.settings.auth.as_ref().map(|a| a.method);
        if method == Some(Method::ClientSecret) {
            let own = self
                .settings
                .auth
                .as_ref()
                .and_then(|a| a.client_id.as_deref())
                .map(str::to_ascii_lowercase);
            if own.as_deref() != Some(target.client.as_str()) {
                return Err(Error::invalid_config(format!(
                    "the client secret in `backends.azure.auth` belongs to client {}, not {}",
                    own.as_deref().unwrap_or("(none)"),
                    target.client
                ))
                .with_hint("with `method: client_secret` the reference's CLIENT must be `auth.client_id`; workload identity can mint for any application that trusts its federated token"));
            }
        }
        let principal = Principal {
            tenant: Some(target.tenant.clone()),
            client: Some(target.client.clone()),
        };
        // A fresh credential: the SDK's own token cache must not hand back a token the
        // broker's lease cache has decided to replace.
        let credential = self.credential(&principal, request.nested).await?;
        let subject = format!(
            "client {} in tenant {} (scope {})",
            target.client, target.tenant, target.scope
        );
        let token = credential
            .get_token(&[target.scope.as_str()], None)
            .await
            .map_err(|e| from_credential(&e, &subject))?;
        let expires_at = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(
                u64::try_from(token.expires_on.unix_timestamp()).unwrap_or(0),
            );
        let lease = Lease {
            id: format!(
                "azure-token:{}/{}?scope={}#{}",
                target.tenant, target.client, target.scope, request.context.request_id
            ),
            expires_at: Some(expires_at),
            renewable: false,
        };
        let value = SecretValue::from(zeroize::Zeroizing::new(token.token.secret().to_string()));
        Ok(Credential::new(value).with_lease(lease))
    }
}
