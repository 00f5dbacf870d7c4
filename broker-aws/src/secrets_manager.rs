//! Secrets Manager: reads (string, JSON field, binary; version stages and ids) and rotation.

use broker_core::{Credential, Error, Request, Result, Rotation, SecretValue};

use crate::errors::{Call, from_sdk};
use crate::provider::AwsProvider;
use crate::target::SecretTarget;
use aws_sdk_secretsmanager::Client as SmClient;

impl AwsProvider {
    /// `resolve` of an `aws-sm://` secret.
    pub(crate) async fn read_secret(&self, request: &Request<'_>) -> Result<Credential> {
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
    pub(crate) async fn rotate_secret(&self, request: &Request<'_>) -> Result<Rotation> {
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
                broker_core::json::replace_string(document.expose(), &path, &password)?
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
