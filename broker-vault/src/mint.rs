//! Minting: child tokens, dynamic secrets (PKI, database, ...) with their leases, and
//! revocation of what was minted.

use std::time::{Duration, SystemTime};

use broker_core::{Credential, Error, ErrorKind, Lease, Request, ResolveRef, Result, SecretValue};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::auth::{AuthReply, Session};
use crate::client::Method;
use crate::provider::{VaultProvider, json_body, to_secret};
use broker_core::json::SecretJson;

/// The default TTL of a minted child token when the credential gives no `ttl`.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

impl VaultProvider {
    /// `mint`: a child token or a dynamic secret, by the reference's path.
    pub(crate) async fn mint_credential(&self, request: &Request<'_>) -> Result<Credential> {
        let target = request.reference.target();
        let result = if target == "auth/token/create"
            || target == "auth/token/create-orphan"
            || target.starts_with("auth/token/create/")
        {
            self.mint_token(request).await
        } else {
            self.mint_dynamic(request).await
        };
        result.map_err(|e| e.with_reference(request.reference))
    }

    /// `revoke`: a child token (by accessor), a certificate (by serial) or a lease.
    pub(crate) async fn revoke_lease(&self, lease_id: &str, nested: &dyn ResolveRef) -> Result<()> {
        if lease_id.is_empty()
            || lease_id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid_config(format!(
                "`{lease_id}` is not a lease id"
            )));
        }
        let client = self.client()?;
        let (path, body) = if let Some(accessor) = lease_id.strip_prefix("token-accessor:") {
            (
                "auth/token/revoke-accessor".to_string(),
                serde_json::json!({ "accessor": accessor }),
            )
        } else if let Some(rest) = lease_id.strip_prefix("pki-serial:") {
            let (mount, serial) = rest.rsplit_once('/').ok_or_else(|| {
                Error::invalid_config(format!("`{lease_id}` is not pki-serial:MOUNT/SERIAL"))
            })?;
            (
                format!("{mount}/revoke"),
                serde_json::json!({ "serial_number": serial }),
            )
        } else {
            (
                "sys/leases/revoke".to_string(),
                serde_json::json!({ "lease_id": lease_id }),
            )
        };
        let body = json_body(&body)?;
        let method = if path == "sys/leases/revoke" {
            Method::Put
        } else {
            Method::Post
        };
        self.call(nested, method, &path, Some(&body))
            .await
            .map(|_| ())
            .map_err(|e| e.into_error(&format!("revoking lease `{lease_id}`"), client.address()))
    }

    async fn mint_token(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        let target = reference.target();
        let mut body = serde_json::Map::new();
        for (k, v) in reference.query() {
            match k.as_str() {
                "policies" => {
                    let list: Vec<Value> = v
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(|p| Value::String(p.to_string()))
                        .collect();
                    body.insert("policies".into(), Value::Array(list));
                }
                "num_uses" => {
                    let n: u64 = v.parse().map_err(|_| {
                        Error::new(
                            ErrorKind::InvalidReference,
                            format!("`num_uses={v}` is not a number"),
                        )
                    })?;
                    body.insert("num_uses".into(), n.into());
                }
                "renewable" => {
                    let b: bool = v.parse().map_err(|_| {
                        Error::new(
                            ErrorKind::InvalidReference,
                            format!("`renewable={v}` is not true or false"),
                        )
                    })?;
                    body.insert("renewable".into(), b.into());
                }
                "display_name" | "type" => {
                    body.insert(k.clone(), Value::String(v.clone()));
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::InvalidReference,
                        format!("unknown parameter `{other}` for a child token"),
                    )
                    .with_hint("accepted: policies, num_uses, renewable, display_name, type"));
                }
            }
        }
        let mut ttl = request.ttl().unwrap_or(DEFAULT_TOKEN_TTL);
        self.token(request.nested).await?;
        if let Some(remaining) = self
            .inner
            .session
            .lock()
            .await
            .as_ref()
            .and_then(Session::remaining)
            && ttl > remaining
        {
            tracing::warn!(
                requested = ttl.as_secs(),
                capped = remaining.as_secs(),
                "child token TTL capped to the broker's own token"
            );
            ttl = remaining;
        }
        body.insert("ttl".into(), secs(ttl).into());
        body.insert("explicit_max_ttl".into(), secs(ttl).into());
        body.entry("display_name")
            .or_insert_with(|| Value::String(format!("broker-{}", request.credential)));
        body.insert(
            "meta".into(),
            serde_json::json!({ "broker_request_id": request.context.request_id }),
        );
        let body = json_body(&Value::Object(body))?;
        let client = self.client()?;
        let reply = self
            .call(request.nested, Method::Post, target, Some(&body))
            .await
            .map_err(|e| e.into_error("creating a child token", client.address()))?;
        let parsed: AuthReply = serde_json::from_slice(&reply.body).map_err(|_| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                "unexpected answer to token creation",
            )
        })?;
        let auth = parsed.auth.ok_or_else(|| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                "token creation returned no token",
            )
        })?;
        let lease = (!auth.accessor.is_empty()).then(|| Lease {
            id: format!("token-accessor:{}", auth.accessor),
            expires_at: Some(SystemTime::now() + Duration::from_secs(auth.lease_duration)),
            renewable: auth.renewable,
        });
        let mut credential = Credential::new(SecretValue::from(auth.client_token));
        if let Some(lease) = lease {
            credential = credential.with_lease(lease);
        }
        Ok(credential)
    }

    async fn mint_dynamic(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        let target = reference.target();
        let is_read = target.split('/').any(|s| s == "creds");
        let client = self.client()?;
        let reply = if is_read {
            self.call(request.nested, Method::Get, target, None).await
        } else {
            let mut body = serde_json::Map::new();
            for (k, v) in reference.query() {
                body.insert(k.clone(), Value::String(v.clone()));
            }
            if let Some(ttl) = request.ttl() {
                body.insert("ttl".into(), secs(ttl).into());
            }
            let body = json_body(&Value::Object(body))?;
            self.call(request.nested, Method::Post, target, Some(&body))
                .await
        }
        .map_err(|e| e.into_error(&format!("minting from `{target}`"), client.address()))?;
        // Wiped when dropped.
        let v = SecretJson::from_value(reply.json()?);
        let v = v.value();
        let data = &v["data"];
        let value = match reference.field_path() {
            Some(path) => to_secret(path.select(data).ok_or_else(|| {
                Error::not_found(format!("field `{path}` is not in the minted credential"))
            })?)?,
            None => match (data["private_key"].as_str(), data["certificate"].as_str()) {
                (Some(key), Some(cert)) => {
                    // Sized up front: a growing buffer would free partial copies unwiped.
                    let chain = data["ca_chain"].as_array().into_iter().flatten();
                    let len = key.len() + cert.len() + 2;
                    let len = len
                        + chain
                            .filter_map(Value::as_str)
                            .map(|c| c.len() + 1)
                            .sum::<usize>();
                    let mut pem = Zeroizing::new(String::with_capacity(len));
                    pem.push_str(key.trim_end());
                    pem.push('\n');
                    pem.push_str(cert.trim_end());
                    pem.push('\n');
                    for ca in data["ca_chain"].as_array().into_iter().flatten() {
                        if let Some(ca) = ca.as_str() {
                            pem.push_str(ca.trim_end());
                            pem.push('\n');
                        }
                    }
                    SecretValue::copy_from(pem.as_bytes())
                }
                _ => to_secret(data)?,
            },
        };
        let lease_id = v["lease_id"].as_str().unwrap_or("");
        let duration = v["lease_duration"].as_u64().unwrap_or(0);
        let lease = if !lease_id.is_empty() {
            Some(Lease {
                id: lease_id.to_string(),
                expires_at: (duration > 0)
                    .then(|| SystemTime::now() + Duration::from_secs(duration)),
                renewable: v["renewable"].as_bool().unwrap_or(false),
            })
        } else if let (Some(serial), Some((mount, _))) = (
            data["serial_number"].as_str(),
            target
                .rsplit_once("/issue/")
                .or_else(|| target.rsplit_once("/sign/")),
        ) {
            Some(Lease {
                id: format!("pki-serial:{mount}/{serial}"),
                expires_at: data["expiration"]
                    .as_u64()
                    .map(|e| SystemTime::UNIX_EPOCH + Duration::from_secs(e)),
                renewable: false,
            })
        } else {
            None
        };
        let mut credential = Credential::new(value);
        if let Some(lease) = lease {
            credential = credential.with_lease(lease);
        }
        Ok(credential)
    }
}
