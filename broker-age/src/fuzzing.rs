//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden, unstable, may change).

use zeroize::Zeroizing;

use crate::{crypto, keys};

/// The crate's own X25519 identity (`src/x25519.rs`), for the differential tests.
pub use crate::x25519::Identity as X25519Identity;

/// The crate's own X25519 identity for the same key as `identity` (the `age` crate's), built
/// the way an identity file's line is.
pub fn x25519_identity(identity: &age::x25519::Identity) -> Option<X25519Identity> {
    keys::x25519_secret(identity).and_then(|secret| X25519Identity::from_secret_bytes(&secret))
}

/// Identities parsed as the provider parses an identity file or key.
pub struct Identities {
    parsed: Vec<keys::Identity>,
    /// The same identities with the `age` crate's own X25519 identity in place of ours, to
    /// check that both give the same outcome.
    reference: Vec<keys::Identity>,
}

impl Identities {
    /// Parses identity file text (X25519 lines or an OpenSSH key); `None` if it is refused.
    pub fn parse(content: &[u8]) -> Option<Identities> {
        let parsed = keys::parse_identities(content, "fuzz").ok()?;
        // An identity file's X25519 lines, in order, are the identities parsed from it; an
        // SSH key (one identity) stays as it is.
        let mut reference = keys::parse_identities(content, "fuzz").ok()?;
        if !reference.iter().any(|i| i.recipient.starts_with("ssh-")) {
            let text = std::str::from_utf8(content).ok()?;
            let lines = text.lines().map(str::trim);
            let ages = lines.filter_map(|l| l.parse::<age::x25519::Identity>().ok());
            for (slot, age) in reference.iter_mut().zip(ages) {
                slot.inner = Box::new(age);
            }
        }
        Some(Identities { parsed, reference })
    }

    /// The recipients (public keys), as text.
    pub fn recipients(&self) -> Vec<String> {
        self.parsed.iter().map(|i| i.recipient.clone()).collect()
    }

    /// Decrypts the age file `bytes` (armored or binary) as the provider does; the error is
    /// the provider's message for the failure.
    ///
    /// # Panics
    /// If the `age` crate's own X25519 identity gives another outcome for `bytes` than the
    /// crate's (a fuzzing finding).
    pub fn decrypt(&self, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        let ours = crypto::decrypt(bytes, &self.parsed)
            .map_err(|f| crypto::failure_error(f, "fuzz", &[]).to_string());
        let theirs = crypto::decrypt(bytes, &self.reference)
            .map_err(|f| crypto::failure_error(f, "fuzz", &[]).to_string());
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert!(a[..] == b[..], "the X25519 identities disagree"),
            (Err(a), Err(b)) => assert_eq!(a, b, "the X25519 identities disagree"),
            _ => panic!(
                "the X25519 identities disagree: {:?} / {:?}",
                ours.is_ok(),
                theirs.is_ok()
            ),
        }
        ours
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
