//! The `sops` metadata section: key groups, master keys, encryption rules, MAC.

use broker_core::{Badge, Destination};

use crate::tree::{Item, Node};

/// One master key that wraps the data key (or a Shamir share of it).
pub(crate) enum MasterKey {
    Age { recipient: String, enc: String },
    Pgp { fingerprint: String, enc: String },
    AwsKms { arn: String },
    GcpKms { resource_id: String },
    AzureKv { vault_url: String, name: String },
    HcVault { address: String, key: String },
}

impl MasterKey {
    /// Which backend will decrypt this key type once it exists, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            MasterKey::Age { .. } => "age",
            MasterKey::Pgp { .. } => "pgp",
            MasterKey::AwsKms { .. } => "AWS KMS",
            MasterKey::GcpKms { .. } => "GCP KMS",
            MasterKey::AzureKv { .. } => "Azure Key Vault",
            MasterKey::HcVault { .. } => "HashiCorp Vault transit",
        }
    }

    /// The backend that will bring decryption for network keys.
    pub(crate) fn comes_with(&self) -> Option<&'static str> {
        match self {
            MasterKey::AwsKms { .. } => Some("aws"),
            MasterKey::GcpKms { .. } => Some("gcp"),
            MasterKey::AzureKv { .. } => Some("azure"),
            MasterKey::HcVault { .. } => Some("vault"),
            _ => None,
        }
    }

    /// Where using this key would send data; `None` for local keys.
    pub(crate) fn destination(&self) -> Option<Destination> {
        Some(match self {
            MasterKey::Age { .. } | MasterKey::Pgp { .. } => return None,
            MasterKey::AwsKms { arn } => {
                let region = arn
                    .split(':')
                    .nth(3)
                    .filter(|r| !r.is_empty())
                    .unwrap_or("us-east-1");
                Destination::host(
                    format!("https://kms.{region}.amazonaws.com"),
                    Badge::ManagedCloud,
                )
            }
            MasterKey::GcpKms { .. } => {
                Destination::host("https://cloudkms.googleapis.com", Badge::ManagedCloud)
            }
            MasterKey::AzureKv { vault_url, .. } => {
                Destination::host(vault_url.clone(), Badge::ManagedCloud)
            }
            MasterKey::HcVault { address, .. } => {
                Destination::host(address.clone(), Badge::SelfHosted)
            }
        })
    }

    /// A value-free description for errors.
    pub(crate) fn describe(&self) -> String {
        match self {
            MasterKey::Age { recipient, .. } => format!("age {recipient}"),
            MasterKey::Pgp { fingerprint, .. } => format!("pgp {fingerprint}"),
            MasterKey::AwsKms { arn } => format!("AWS KMS {arn}"),
            MasterKey::GcpKms { resource_id } => format!("GCP KMS {resource_id}"),
            MasterKey::AzureKv { vault_url, name } => {
                format!("Azure Key Vault {vault_url} key {name}")
            }
            MasterKey::HcVault { address, key } => format!("Vault transit {address} key {key}"),
        }
    }
}

/// Parsed metadata.
pub(crate) struct Metadata {
    pub lastmodified: String,
    pub mac: Option<String>,
    pub unencrypted_suffix: Option<String>,
    pub encrypted_suffix: Option<String>,
    pub unencrypted_regex: Option<regex::Regex>,
    pub encrypted_regex: Option<regex::Regex>,
    pub unencrypted_comment_regex: Option<regex::Regex>,
    pub encrypted_comment_regex: Option<regex::Regex>,
    pub mac_only_encrypted: bool,
    pub shamir_threshold: usize,
    pub key_groups: Vec<Vec<MasterKey>>,
}

fn text(meta: &Node, key: &str) -> Option<String> {
    meta.get(key)
        .and_then(Node::as_text)
        .filter(|s| !s.is_empty())
}

fn entries<'a>(group: &'a Node, key: &str) -> impl Iterator<Item = &'a Node> {
    let list: &[Node] = match group.get(key) {
        Some(Node::List(l)) => l,
        _ => &[],
    };
    list.iter()
}

fn parse_group(group: &Node) -> Vec<MasterKey> {
    let mut keys = Vec::new();
    let t = |n: &Node, k: &str| text(n, k).unwrap_or_default();
    for e in entries(group, "age") {
        keys.push(MasterKey::Age {
            recipient: t(e, "recipient"),
            enc: t(e, "enc"),
        });
    }
    for e in entries(group, "pgp") {
        keys.push(MasterKey::Pgp {
            fingerprint: t(e, "fp"),
            enc: t(e, "enc"),
        });
    }
    for e in entries(group, "kms") {
        keys.push(MasterKey::AwsKms { arn: t(e, "arn") });
    }
    for e in entries(group, "gcp_kms") {
        keys.push(MasterKey::GcpKms {
            resource_id: t(e, "resource_id"),
        });
    }
    for e in entries(group, "azure_kv") {
        keys.push(MasterKey::AzureKv {
            vault_url: t(e, "vault_url"),
            name: t(e, "name"),
        });
    }
    for e in entries(group, "hc_vault") {
        keys.push(MasterKey::HcVault {
            address: t(e, "vault_address"),
            key: t(e, "key_name"),
        });
    }
    keys
}

impl Metadata {
    /// Reads the metadata tree. Errors are value-free (metadata holds no plaintext anyway).
    pub(crate) fn parse(meta: &Node) -> Result<Metadata, String> {
        if meta.as_map().is_none() {
            return Err("the `sops` metadata is not a map".into());
        }
        let regex = |key: &str| -> Result<Option<regex::Regex>, String> {
            text(meta, key)
                .map(|r| regex::Regex::new(&r).map_err(|_| format!("`{key}` is not a valid regex")))
                .transpose()
        };
        let mut m = Metadata {
            lastmodified: text(meta, "lastmodified")
                .ok_or("sops metadata has no `lastmodified`")?,
            mac: text(meta, "mac"),
            unencrypted_suffix: text(meta, "unencrypted_suffix"),
            encrypted_suffix: text(meta, "encrypted_suffix"),
            unencrypted_regex: regex("unencrypted_regex")?,
            encrypted_regex: regex("encrypted_regex")?,
            unencrypted_comment_regex: regex("unencrypted_comment_regex")?,
            encrypted_comment_regex: regex("encrypted_comment_regex")?,
            mac_only_encrypted: matches!(meta.get("mac_only_encrypted"), Some(Node::Bool(true)))
                || text(meta, "mac_only_encrypted").is_some_and(|s| s == "true"),
            shamir_threshold: text(meta, "shamir_threshold")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            key_groups: Vec::new(),
        };
        let rules = [
            m.unencrypted_suffix.is_some(),
            m.encrypted_suffix.is_some(),
            m.unencrypted_regex.is_some(),
            m.encrypted_regex.is_some(),
            m.unencrypted_comment_regex.is_some(),
            m.encrypted_comment_regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if rules > 1 {
            return Err("sops metadata sets more than one of the *_suffix / *_regex rules".into());
        }
        if rules == 0 {
            m.unencrypted_suffix = Some("_unencrypted".into());
        }
        m.key_groups = match meta.get("key_groups") {
            Some(Node::List(groups)) if !groups.is_empty() => {
                groups.iter().map(parse_group).collect()
            }
            _ => vec![parse_group(meta)],
        };
        if m.key_groups.len() > 1 && m.shamir_threshold == 0 {
            m.shamir_threshold = m.key_groups.len();
        }
        Ok(m)
    }

    /// Whether the value at `path` is encrypted (upstream `shouldBeEncrypted`).
    pub(crate) fn should_be_encrypted(
        &self,
        path: &[String],
        comments: &[Vec<String>],
        is_comment: bool,
    ) -> bool {
        let mut encrypted = true;
        if let Some(sfx) = &self.unencrypted_suffix
            && path.iter().any(|p| p.ends_with(sfx.as_str()))
        {
            encrypted = false;
        }
        if let Some(sfx) = &self.encrypted_suffix {
            encrypted = path.iter().any(|p| p.ends_with(sfx.as_str()));
        }
        if let Some(re) = &self.unencrypted_regex
            && path.iter().any(|p| re.is_match(p))
        {
            encrypted = false;
        }
        if let Some(re) = &self.encrypted_regex {
            encrypted = path.iter().any(|p| re.is_match(p));
        }
        if let Some(re) = &self.unencrypted_comment_regex
            && comments.iter().flatten().any(|c| re.is_match(c))
        {
            encrypted = false;
        }
        if let Some(re) = &self.encrypted_comment_regex {
            let last_stack = comments.len().saturating_sub(1);
            let last_len = comments.last().map_or(0, Vec::len);
            encrypted = comments.iter().enumerate().any(|(i, cs)| {
                cs.iter().enumerate().any(|(j, c)| {
                    !(is_comment && i == last_stack && j + 1 == last_len) && re.is_match(c)
                })
            });
        }
        encrypted
    }

    /// Every master key, in every group.
    pub(crate) fn all_keys(&self) -> impl Iterator<Item = &MasterKey> {
        self.key_groups.iter().flatten()
    }
}

/// Sets `key` in a metadata map (replacing or appending).
pub(crate) fn set(meta: &mut Node, key: &str, value: Node) {
    if let Node::Map(items) = meta {
        for item in items.iter_mut() {
            if let Item::Pair(k, v) = item
                && k == key
            {
                *v = value;
                return;
            }
        }
        items.push(Item::Pair(key.to_string(), value));
    }
}
