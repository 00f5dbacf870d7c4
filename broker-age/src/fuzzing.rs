//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden, unstable, may change).

use zeroize::Zeroizing;

use crate::{crypto, keys};

/// Identities parsed as the provider parses an identity file or key.
pub struct Identities(Vec<keys::Identity>);

impl Identities {
    /// Parses identity file text (X25519 lines or an OpenSSH key); `None` if it is refused.
    pub fn parse(content: &[u8]) -> Option<Identities> {
        keys::parse_identities(content, "fuzz").ok().map(Identities)
    }

    /// The recipients (public keys), as text.
    pub fn recipients(&self) -> Vec<String> {
        self.0.iter().map(|i| i.recipient.clone()).collect()
    }

    /// Decrypts the age file `bytes` (armored or binary) as the provider does; the error is
    /// the provider's message for the failure.
    pub fn decrypt(&self, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        crypto::decrypt(bytes, &self.0)
            .map_err(|f| crypto::failure_error(f, "fuzz", &[]).to_string())
    }

    /// Encrypts `plaintext` to these identities' recipients (for seeds and round trips).
    pub fn encrypt(&self, plaintext: &[u8], armored: bool) -> Result<Vec<u8>, String> {
        let recipients = self
            .recipients()
            .iter()
            .map(|r| keys::parse_recipient(r, "fuzz"))
            .collect::<broker_core::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        crypto::encrypt(plaintext, &recipients, armored).map_err(|e| e.to_string())
    }
}

/// How many recipient stanzas the header of `bytes` names (see the provider's rotate).
pub fn recipient_stanzas(bytes: &[u8]) -> Option<usize> {
    crypto::recipient_stanzas(bytes)
}
