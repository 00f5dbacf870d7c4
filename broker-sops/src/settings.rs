//! `backends.sops` settings.

/// `backends.sops` settings. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// An age identity file (`AGE-SECRET-KEY-1...` lines), relative to the config file.
    #[serde(default)]
    pub age_key_file: Option<String>,
    /// An unencrypted OpenSSH ed25519 or RSA private key used as an age identity.
    #[serde(default)]
    pub age_ssh_key_file: Option<String>,
    /// A reference whose value is age identity text (e.g. `env:MY_AGE_KEY`).
    #[serde(default)]
    pub age_key_ref: Option<String>,
    /// An OpenPGP secret key file (armored or binary, unencrypted secret keys, e.g. from
    /// `gpg --export-secret-keys`), relative to the config file. No gpg or agent is used.
    #[serde(default)]
    pub pgp_key_file: Option<String>,
}
