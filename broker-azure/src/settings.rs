//! `backends.azure` settings.

use broker_core::{Error, Reference, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// The public cloud's Entra authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The public cloud's Key Vault DNS suffix.
pub const DEFAULT_VAULT_SUFFIX: &str = "vault.azure.net";

/// The `backends.azure` section of `.broker.yml`.
///
/// ```yaml
/// backends:
///   azure:
///     auth:
///       method: workload_identity          # client_secret | workload_identity | managed_identity | azure_cli
///       tenant_id: contoso.onmicrosoft.com
///       client_id: 11111111-1111-1111-1111-111111111111
///       token_file: /var/run/secrets/azure/tokens/azure-identity-token
///     authority_host: https://login.microsoftonline.us   # sovereign clouds
///     vault_suffix: vault.usgovcloudapi.net
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The broker's own identity. Required: there is no implicit credential chain.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// The Entra authority (`https://login.microsoftonline.com`; sovereign clouds differ).
    #[serde(default)]
    pub authority_host: Option<String>,
    /// The Key Vault DNS suffix: `VAULT` is `https://VAULT.<vault_suffix>` (default
    /// `vault.azure.net`; `vault.azure.cn`, `vault.usgovcloudapi.net`, a private DNS zone; a
    /// `:PORT` may follow).
    #[serde(default)]
    pub vault_suffix: Option<String>,
    /// A PEM file of CA certificates to trust instead of the system store (TLS-inspecting
    /// proxies, private endpoints with a private CA, tests).
    #[serde(default)]
    pub ca_cert: Option<String>,
}

/// How the broker authenticates to Entra ID.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// The token source.
    pub method: Method,
    /// The broker's tenant (a GUID or a domain), for Key Vault reads.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// The broker's application (client) id, for Key Vault reads; with `managed_identity`,
    /// a user-assigned identity's client id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `client_secret`: a reference to the application's client secret.
    #[serde(default)]
    pub client_secret_ref: Option<String>,
    /// `workload_identity`: the federated token file (default `$AZURE_FEDERATED_TOKEN_FILE`,
    /// which the AKS workload identity webhook sets).
    #[serde(default)]
    pub token_file: Option<String>,
}

/// The token source of [`Auth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// An application's client secret (given by reference).
    ClientSecret,
    /// Workload identity federation: a federated token file exchanged as a client assertion.
    WorkloadIdentity,
    /// The platform's managed identity (App Service / Functions endpoint, else the VM's).
    ManagedIdentity,
    /// The signed-in Azure CLI account (`az account get-access-token`).
    AzureCli,
}

impl Method {
    /// The name used in config and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::ClientSecret => "client_secret",
            Method::WorkloadIdentity => "workload_identity",
            Method::ManagedIdentity => "managed_identity",
            Method::AzureCli => "azure_cli",
        }
    }
}

impl Settings {
    /// Checks the settings without I/O; returns the parsed client secret reference.
    pub(crate) fn validate(&self) -> Result<Option<Reference>> {
        if let Some(host) = &self.authority_host {
            let rest = host.strip_prefix("https://").ok_or_else(|| {
                Error::invalid_config(format!(
                    "`backends.azure.authority_host` `{host}` must be an https:// URL"
                ))
            })?;
            if rest.is_empty() || rest.contains(char::is_whitespace) || rest.contains('?') {
                return Err(Error::invalid_config(format!(
                    "`backends.azure.authority_host` `{host}` is not a URL"
                )));
            }
        }
        if let Some(suffix) = &self.vault_suffix {
            let (host, port) = suffix.split_once(':').unwrap_or((suffix, ""));
            let host_ok = !host.is_empty()
                && !host.starts_with(['.', '-'])
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            let port_ok = port.is_empty() || port.parse::<u16>().is_ok_and(|p| p > 0);
            if !host_ok || !port_ok {
                return Err(Error::invalid_config(format!(
                    "`backends.azure.vault_suffix` `{suffix}` is not a DNS suffix (e.g. vault.azure.net)"
                )));
            }
        }
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let need = |key: &str, value: &Option<String>| match value {
            Some(v) if !v.trim().is_empty() => Ok(()),
            _ => Err(Error::invalid_config(format!(
                "`backends.azure.auth` with method `{}` needs `{key}`",
                auth.method.as_str()
            ))),
        };
        let refuse = |key: &str, value: &Option<String>| match value {
            None => Ok(()),
            Some(_) => Err(Error::invalid_config(format!(
                "`backends.azure.auth.{key}` does not apply to method `{}`",
                auth.method.as_str()
            ))),
        };
        match auth.method {
            Method::ClientSecret => {
                need("tenant_id", &auth.tenant_id)?;
                need("client_id", &auth.client_id)?;
                need("client_secret_ref", &auth.client_secret_ref)?;
                refuse("token_file", &auth.token_file)?;
            }
            Method::WorkloadIdentity => {
                need("tenant_id", &auth.tenant_id)?;
                need("client_id", &auth.client_id)?;
                refuse("client_secret_ref", &auth.client_secret_ref)?;
            }
            Method::ManagedIdentity | Method::AzureCli => {
                refuse("client_secret_ref", &auth.client_secret_ref)?;
                refuse("token_file", &auth.token_file)?;
            }
        }
        if let Some(tenant) = &auth.tenant_id {
            check_tenant(tenant)?;
        }
        if let Some(client) = &auth.client_id
            && !is_guid(client)
        {
            return Err(Error::invalid_config(format!(
                "`backends.azure.auth.client_id` `{client}` is not a GUID"
            )));
        }
        auth.client_secret_ref
            .as_deref()
            .map(|text| {
                Reference::parse(text).map_err(|e| {
                    Error::invalid_config(format!(
                        "`backends.azure.auth.client_secret_ref`: {}",
                        e.message()
                    ))
                })
            })
            .transpose()
    }

    /// The authority host without a trailing `/`.
    pub(crate) fn authority(&self) -> &str {
        self.authority_host
            .as_deref()
            .unwrap_or(DEFAULT_AUTHORITY_HOST)
            .trim_end_matches('/')
    }

    /// `https://VAULT.<suffix>`.
    pub(crate) fn vault_url(&self, vault: &str) -> String {
        let suffix = self.vault_suffix.as_deref().unwrap_or(DEFAULT_VAULT_SUFFIX);
        format!("https://{vault}.{suffix}")
    }
}

/// A tenant: a GUID or a domain.
pub(crate) fn check_tenant(tenant: &str) -> Result<()> {
    let ok = is_guid(tenant)
        || (tenant.contains('.')
            && tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_config(format!(
            "`{tenant}` is not a tenant (a GUID or a domain such as contoso.onmicrosoft.com)"
        )))
    }
}

pub(crate) fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CLIENT: &str = "11111111-1111-1111-1111-111111111111";

    fn auth(method: Method) -> Auth {
        Auth {
            method,
            tenant_id: Some("contoso.onmicrosoft.com".into()),
            client_id: Some(CLIENT.into()),
            client_secret_ref: None,
            token_file: None,
        }
    }

    #[test]
    fn validation() {
        assert!(Settings::default().validate().unwrap().is_none());
        let ok = Settings {
            auth: Some(Auth {
                client_secret_ref: Some("env:AZURE_CLIENT_SECRET".into()),
                ..auth(Method::ClientSecret)
            }),
            vault_suffix: Some("vault.localhost:8443".into()),
            authority_host: Some("https://login.localhost:8443".into()),
            ..Settings::default()
        };
        assert!(ok.validate().unwrap().is_some());
        assert_eq!(ok.vault_url("kv1"), "https://kv1.vault.localhost:8443");
        let bad = [
            Settings {
                auth: Some(auth(Method::ClientSecret)),
                ..Settings::default()
            },
            Settings {
                auth: Some(Auth {
                    client_secret_ref: Some("env:X".into()),
                    ..auth(Method::AzureCli)
                }),
                ..Settings::default()
            },
            Settings {
                auth: Some(Auth {
                    client_id: Some("not-a-guid".into()),
                    ..auth(Method::WorkloadIdentity)
                }),
                ..Settings::default()
            },
            Settings {
                authority_host: Some("http://login.example".into()),
                ..Settings::default()
            },
            Settings {
                vault_suffix: Some("vault azure".into()),
                ..Settings::default()
            },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
    }
}
