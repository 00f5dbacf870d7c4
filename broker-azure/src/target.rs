//! What an `azurekv://` or `azure-token://` reference asks for, checked without I/O (the
//! grammar in `broker_core::grammar` has already checked the shapes).

use broker_core::{Error, ErrorKind, Reference, Result};

/// The scope minted when the reference names none.
pub const DEFAULT_SCOPE: &str = "https://management.azure.com/.default";

/// An `azurekv://VAULT/NAME[/VERSION][#field]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretTarget {
    pub vault: String,
    pub name: String,
    pub version: Option<String>,
}

impl SecretTarget {
    pub(crate) fn parse(reference: &Reference) -> Result<SecretTarget> {
        let mut parts = reference.target().split('/');
        let (Some(vault), Some(name)) = (parts.next(), parts.next()) else {
            return Err(Error::new(
                ErrorKind::InvalidReference,
                "expected azurekv://VAULT/NAME[/VERSION]",
            )
            .with_reference(reference));
        };
        Ok(SecretTarget {
            vault: vault.to_ascii_lowercase(),
            name: name.to_string(),
            version: parts.next().map(str::to_string),
        })
    }

    /// `secret `NAME` (version V) in vault `VAULT``, for messages.
    pub(crate) fn subject(&self) -> String {
        match &self.version {
            Some(v) => format!(
                "secret `{}` version {v} in vault `{}`",
                self.name, self.vault
            ),
            None => format!("secret `{}` in vault `{}`", self.name, self.vault),
        }
    }
}

/// An `azure-token://TENANT/CLIENT[?scope=S]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenTarget {
    pub tenant: String,
    pub client: String,
    pub scope: String,
}

impl TokenTarget {
    pub(crate) fn parse(reference: &Reference) -> Result<TokenTarget> {
        let invalid = |msg: String| {
            Error::new(ErrorKind::InvalidReference, msg)
                .with_reference(reference)
                .with_hint("azure-token://TENANT/CLIENT accepts ?scope=SCOPE (one scope, e.g. https://vault.azure.net/.default)")
        };
        let (tenant, client) = reference
            .target()
            .split_once('/')
            .ok_or_else(|| invalid("expected azure-token://TENANT/CLIENT".into()))?;
        for (key, _) in reference.query() {
            if key != "scope" {
                return Err(invalid(format!("unknown query key `{key}`")));
            }
        }
        let scope = reference.query_param("scope").unwrap_or(DEFAULT_SCOPE);
        let scope_ok = !scope.is_empty()
            && scope.len() <= 512
            && scope
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/'));
        if !scope_ok {
            return Err(invalid(format!(
                "`{scope}` is not one scope (letters, digits and . - _ : /)"
            )));
        }
        Ok(TokenTarget {
            tenant: tenant.to_string(),
            client: client.to_ascii_lowercase(),
            scope: scope.to_string(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let r: Reference = "azurekv://My-Vault/db/0123456789abcdef0123456789abcdef#password"
            .parse()
            .unwrap();
        let t = SecretTarget::parse(&r).unwrap();
        assert_eq!(t.vault, "my-vault");
        assert_eq!(
            t.version.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        let r: Reference =
            "azure-token://contoso.onmicrosoft.com/11111111-1111-1111-1111-111111111111"
                .parse()
                .unwrap();
        assert_eq!(TokenTarget::parse(&r).unwrap().scope, DEFAULT_SCOPE);
        let r: Reference = "azure-token://contoso.onmicrosoft.com/11111111-1111-1111-1111-111111111111?scope=a%20b"
            .parse()
            .unwrap();
        assert!(TokenTarget::parse(&r).is_err());
    }
}
