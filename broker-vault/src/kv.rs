//! KV v1 and v2: mount discovery, reads (with `?version=N`) and rotation by writing a new
//! version.

use broker_core::{
    Credential, DeliveryKind, Error, ErrorKind, FieldSegment, Reference, Request, ResolveRef,
    Result, Rotation, SecretValue,
};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::client::Method;
use crate::errors::CallError;
use crate::provider::{VaultProvider, json_body, to_secret};
use broker_core::json::SecretJson;

#[derive(Clone, Debug)]
pub(crate) struct Mount {
    /// With a trailing `/`, e.g. `secret/`.
    pub(crate) path: String,
    /// `Some(1|2)` for KV mounts.
    pub(crate) kv: Option<u8>,
}

impl VaultProvider {
    async fn mount_for(&self, nested: &dyn ResolveRef, target: &str) -> Result<Mount> {
        if let Ok(cache) = self.inner.mounts.lock()
            && let Some(m) = cache.iter().find(|m| target.starts_with(&m.path))
        {
            return Ok(m.clone());
        }
        let client = self.client()?;
        let path = format!("sys/internal/ui/mounts/{target}");
        match self.call(nested, Method::Get, &path, None).await {
            Ok(reply) => {
                let v = reply.json()?;
                let data = &v["data"];
                let mount_path = data["path"].as_str().unwrap_or("").to_string();
                if mount_path.is_empty() || !target.starts_with(&mount_path) {
                    return Ok(fallback_mount(target));
                }
                let kind = data["type"].as_str().unwrap_or("");
                let kv = match kind {
                    "kv" | "generic" => Some(match data["options"]["version"].as_str() {
                        Some("2") => 2,
                        _ => 1,
                    }),
                    _ => None,
                };
                let mount = Mount {
                    path: mount_path,
                    kv,
                };
                if let Ok(mut cache) = self.inner.mounts.lock() {
                    cache.push(mount.clone());
                }
                Ok(mount)
            }
            Err(CallError::Http(f)) if matches!(f.status(), Some(400 | 403 | 404)) => {
                // As the vault CLI does: without preflight information, treat it as KV v1 (a
                // read of an explicit `data/` path works on v2 as well).
                Ok(fallback_mount(target))
            }
            Err(e) => Err(e.into_error("looking up the mount", client.address())),
        }
    }

    /// The secret at `reference` (KV v1/v2) as a JSON value, plus the KV version it came from.
    async fn read_kv(
        &self,
        nested: &dyn ResolveRef,
        reference: &Reference,
        mount: &Mount,
        for_rotate: bool,
    ) -> Result<(Value, Option<u64>)> {
        let target = reference.target();
        let client = self.client()?;
        let version = reference.query_param("version");
        if let Some(v) = version {
            if for_rotate {
                return Err(Error::new(
                    ErrorKind::InvalidReference,
                    "`?version=` cannot be rotated; rotate writes a new latest version",
                ));
            }
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::new(
                    ErrorKind::InvalidReference,
                    format!("`version={v}` is not a version number"),
                ));
            }
        }
        let api = match mount.kv {
            Some(2) => {
                let mut p = data_path(mount, target);
                if let Some(v) = version {
                    p.push_str(&format!("?version={v}"));
                }
                p
            }
            _ => {
                if version.is_some() {
                    return Err(Error::new(
                        ErrorKind::InvalidReference,
                        format!("`{}` is a KV v1 mount, which has no versions", mount.path),
                    ));
                }
                target.to_string()
            }
        };
        let what = format!("reading `{api}`");
        let reply =
            match self.call(nested, Method::Get, &api, None).await {
                Ok(r) => r,
                Err(CallError::Http(f)) if f.status() == Some(404) && mount.kv == Some(2) => {
                    if let Some(e) = deleted_version_error(&f.body_json()) {
                        return Err(e);
                    }
                    if for_rotate {
                        return Ok((Value::Object(Default::default()), Some(0)));
                    }
                    return Err(Error::not_found(format!("no secret at `{api}`")).with_hint(
                        format!("list what exists with `bao kv list {}`", mount.path),
                    ));
                }
                Err(CallError::Http(f)) if f.status() == Some(404) => {
                    if for_rotate {
                        return Ok((Value::Object(Default::default()), None));
                    }
                    return Err(Error::not_found(format!("no secret at `{api}`")));
                }
                Err(e) => return Err(e.into_error(&what, client.address())),
            };
        let mut v = reply.json()?;
        let data = v.get_mut("data").map(Value::take).unwrap_or(Value::Null);
        if mount.kv == Some(2) {
            let mut data = data;
            let meta_version = data["metadata"]["version"].as_u64();
            if data["data"].is_null() {
                if let Some(e) = deleted_version_error(&Some(serde_json::json!({ "data": data }))) {
                    return Err(e);
                }
                return Err(Error::not_found(format!("no data at `{api}`")));
            }
            Ok((data["data"].take(), meta_version))
        } else {
            Ok((data, None))
        }
    }

    fn deliver_whole(request: &Request<'_>, secret: &Value) -> Result<SecretValue> {
        if request.kind() == Some(DeliveryKind::Env) {
            let fields: Vec<&str> = secret
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            return Err(Error::invalid_config(
                    "a Vault secret is a map of fields; an environment variable needs one field",
                )
                .with_hint(format!(
                    "add `#FIELD` to the reference (fields: {}), or set `kind: file` to get the whole secret as JSON",
                    fields.join(", ")
                )));
        }
        to_secret(secret)
    }

    /// `resolve`: a KV read, the whole secret or one `#field`.
    pub(crate) async fn read_secret(&self, request: &Request<'_>) -> Result<Credential> {
        let reference = request.reference;
        let attach = |e: Error| e.with_reference(reference);
        for (k, _) in reference.query() {
            if k != "version" {
                return Err(attach(
                    Error::new(
                        ErrorKind::InvalidReference,
                        format!("unknown parameter `{k}` for a Vault read"),
                    )
                    .with_hint(
                        "reads accept `?version=N` (KV v2); parameters of `mint:` go with mint",
                    ),
                ));
            }
        }
        let mount = self
            .mount_for(request.nested, reference.target())
            .await
            .map_err(attach)?;
        let (secret, _) = self
            .read_kv(request.nested, reference, &mount, false)
            .await
            .map_err(attach)?;
        // Wiped when dropped.
        let secret = SecretJson::from_value(secret);
        let secret = secret.value();
        let value = match reference.field_path() {
            Some(path) => {
                let node = path.select(secret).ok_or_else(|| {
                    let fields: Vec<&str> = secret
                        .as_object()
                        .map(|o| o.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    attach(
                        Error::not_found(format!("field `{path}` is not in the secret"))
                            .with_hint(format!("fields: {}", fields.join(", "))),
                    )
                })?;
                to_secret(node).map_err(attach)?
            }
            None => Self::deliver_whole(request, secret).map_err(attach)?,
        };
        Ok(Credential::new(value))
    }

    /// `rotate`: writes a new KV version with a freshly generated value for `#field`.
    pub(crate) async fn rotate_field(&self, request: &Request<'_>) -> Result<Rotation> {
        let reference = request.reference;
        let attach = |e: Error| e.with_reference(reference);
        let field = match reference.field_path().as_ref().map(|p| p.0.as_slice()) {
            Some([FieldSegment::Key(k)]) => k.clone(),
            _ => {
                return Err(attach(
                    Error::new(
                        ErrorKind::InvalidReference,
                        "rotate needs one top-level `#field`: the field to regenerate",
                    )
                    .with_hint("e.g. `vault:secret/app#token`"),
                ));
            }
        };
        let mount = self
            .mount_for(request.nested, reference.target())
            .await
            .map_err(attach)?;
        if mount.kv.is_none() {
            return Err(attach(Error::unsupported("rotate").with_hint(
                "rotate writes KV secrets; dynamic secrets are minted, not rotated",
            )));
        }
        let (secret, version) = self
            .read_kv(request.nested, reference, &mount, true)
            .await
            .map_err(attach)?;
        // Wiped when dropped, as is every body built from it.
        let mut secret = SecretJson::from_value(secret);
        let obj = secret
            .value_mut()
            .as_object_mut()
            .ok_or_else(|| attach(Error::internal("the stored secret is not a map")))?;
        let value = generate_value();
        obj.insert(
            field.clone(),
            Value::String(value.expose_str()?.to_string()),
        );
        let client = self.client()?;
        let target = reference.target();
        if mount.kv == Some(2) {
            let path = data_path(&mount, target);
            let body = SecretJson::from_value(serde_json::json!({
                "options": { "cas": version.unwrap_or(0) },
                "data": secret.value(),
            }));
            let body = json_body(body.value())?;
            let reply = self
                .call(request.nested, Method::Post, &path, Some(&body))
                .await
                .map_err(|e| {
                    attach(e.into_error(&format!("writing `{path}`"), client.address()))
                })?;
            let new_version = reply.json()?["data"]["version"].as_u64();
            Ok(Rotation {
                summary: format!(
                    "wrote a new version of `{path}` with a generated `{field}` (other fields and metadata kept)"
                ),
                version: new_version.map(|v| v.to_string()),
            })
        } else {
            let body = json_body(secret.value())?;
            self.call(request.nested, Method::Post, target, Some(&body))
                .await
                .map_err(|e| {
                    attach(e.into_error(&format!("writing `{target}`"), client.address()))
                })?;
            Ok(Rotation {
                summary: format!(
                    "overwrote `{target}` with a generated `{field}`; KV v1 keeps no history, the previous value is gone"
                ),
                version: None,
            })
        }
    }
}

fn fallback_mount(target: &str) -> Mount {
    let first = target.split('/').next().unwrap_or(target);
    Mount {
        path: format!("{first}/"),
        kv: Some(1),
    }
}

/// The KV v2 read path: `MOUNT/data/PATH`, keeping an explicit `data/`.
fn data_path(mount: &Mount, target: &str) -> String {
    let rest = &target[mount.path.len().min(target.len())..];
    if rest.starts_with("data/") {
        target.to_string()
    } else {
        format!("{}data/{rest}", mount.path)
    }
}

/// The KV v2 write path for rotation.
fn deleted_version_error(body: &Option<Value>) -> Option<Error> {
    let meta = &body.as_ref()?["data"]["metadata"];
    let version = meta["version"].as_u64().unwrap_or(0);
    if meta["destroyed"].as_bool() == Some(true) {
        return Some(
            Error::not_found(format!("version {version} of the secret was destroyed"))
                .with_hint("a destroyed version cannot be recovered; read another `?version=`"),
        );
    }
    if meta["deletion_time"]
        .as_str()
        .is_some_and(|t| !t.is_empty())
    {
        return Some(
            Error::not_found(format!("version {version} of the secret is deleted")).with_hint(
                "undelete it (`bao kv undelete -versions=N`) or read another `?version=`",
            ),
        );
    }
    None
}

fn generate_value() -> SecretValue {
    use base64::Engine as _;
    let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
    SecretValue::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_slice()))
}
