//! The X25519 identity that unwraps age's `X25519` recipient stanzas with aws-lc-rs.
//!
//! The `age` crate's own [`age::x25519::Identity`] derives its public key again for every
//! stanza and runs a portable Montgomery ladder; this one imports the secret scalar into
//! aws-lc once and computes the public key once, at parse time. The stanza checks mirror
//! `age` 0.12.1 (`src/native/x25519.rs`) exactly, so both identities give the same outcome for
//! every stanza (the differential tests in `tests/x25519.rs` hold them to that):
//! <https://c2sp.org/age#x25519-recipient-stanza>.

use std::fmt;

use age::DecryptError;
use age_core::format::{FILE_KEY_BYTES, FileKey, Stanza};
use age_core::primitives::{aead_decrypt, hkdf};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey};
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD_NO_PAD;
use zeroize::{Zeroize, Zeroizing};

/// The stanza tag (`-> X25519 <base64 ephemeral share>`).
const TAG: &str = "X25519";
/// The HKDF `info` of the wrapping key.
const LABEL: &[u8] = b"age-encryption.org/v1/X25519";
/// An X25519 point or scalar.
const KEY_BYTES: usize = 32;
/// The stanza body: the file key sealed with ChaCha20-Poly1305 (16-byte tag).
const BODY_BYTES: usize = FILE_KEY_BYTES + 16;

/// An X25519 age identity: the secret scalar held by aws-lc, and its public key.
///
/// `Debug` shows neither (only the type name); there is no `Display`.
pub struct Identity {
    secret: PrivateKey,
    public: [u8; KEY_BYTES],
}

impl Identity {
    /// Imports the 32-byte secret scalar (as age stores it, before clamping) and computes its
    /// public key. `None` only if aws-lc refuses the key, which it does for no 32-byte value.
    pub fn from_secret_bytes(secret: &[u8; KEY_BYTES]) -> Option<Identity> {
        let secret = PrivateKey::from_private_key(&agreement::X25519, &secret[..]).ok()?;
        let public = secret.compute_public_key().ok()?;
        let public = public.as_ref().try_into().ok()?;
        Some(Identity { secret, public })
    }

    /// The public key (the recipient's 32 bytes, `age1...` once bech32-encoded).
    pub fn public_key(&self) -> &[u8; KEY_BYTES] {
        &self.public
    }

    /// The recipient, `age1...`: the public key computed at import, bech32-encoded (the age
    /// crate's `to_public` would compute it a second time).
    pub fn recipient(&self) -> String {
        age_core::primitives::bech32_encode(RECIPIENT_HRP, &self.public)
    }
}

/// The human-readable part of an `age1...` recipient.
const RECIPIENT_HRP: bech32::Hrp = bech32::Hrp::parse_unchecked("age");

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X25519Identity").finish_non_exhaustive()
    }
}

/// The stanza's single argument as the 32-byte ephemeral share: canonical unpadded standard
/// base64 (trailing bits set are refused), exactly 32 bytes. Decoding into a 33-byte buffer
/// is how `age` tells "too long" from "exactly 32" (`base64_arg::<_, 32, 33>`).
fn ephemeral_share(args: &[String]) -> Option<[u8; KEY_BYTES]> {
    let [arg] = args else {
        return None;
    };
    let mut buf = [0u8; KEY_BYTES + 1];
    match BASE64_STANDARD_NO_PAD.decode_slice(arg, &mut buf) {
        Ok(KEY_BYTES) => buf[..KEY_BYTES].try_into().ok(),
        _ => None,
    }
}

impl age::Identity for Identity {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, DecryptError>> {
        if stanza.tag != TAG {
            return None;
        }
        let Some(epk) = ephemeral_share(&stanza.args) else {
            return Some(Err(DecryptError::InvalidHeader));
        };
        if stanza.body.len() != BODY_BYTES {
            return Some(Err(DecryptError::InvalidHeader));
        }
        // aws-lc refuses an all-zero shared secret (a small-order ephemeral share), which
        // `age` checks for itself: both are a malformed header.
        let wrap_key = agreement::agree(
            &self.secret,
            UnparsedPublicKey::new(&agreement::X25519, &epk),
            (),
            |shared| {
                let mut salt = [0u8; 2 * KEY_BYTES];
                salt[..KEY_BYTES].copy_from_slice(&epk);
                salt[KEY_BYTES..].copy_from_slice(&self.public);
                Ok(Zeroizing::new(hkdf(&salt, LABEL, shared)))
            },
        );
        let Ok(wrap_key) = wrap_key else {
            return Some(Err(DecryptError::InvalidHeader));
        };
        // Failing to open the body means the stanza is someone else's (X25519 stanzas are
        // anonymous): not an error, the next identity may match.
        let mut file_key = aead_decrypt(&wrap_key, FILE_KEY_BYTES, &stanza.body).ok()?;
        Some(Ok(FileKey::init_with_mut(|key| {
            key.copy_from_slice(&file_key);
            file_key.zeroize();
        })))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use age::Identity as _;
    use age::secrecy::ExposeSecret;

    use super::*;

    /// The age crate's own test key pair (`src/native/x25519.rs`).
    const TEST_SK: &str =
        "AGE-SECRET-KEY-1GQ9778VQXMMJVE8SK7J6VT8UJ4HDQAJUVSFCWCM02D8GEWQ72PVQ2Y5J33";
    const TEST_PK: &str = "age1t7rxyev2z3rw82stdlrrepyc39nvn86l5078zqkf5uasdy86jp6svpy7pa";

    fn ours(theirs: &age::x25519::Identity) -> Identity {
        let secret = crate::keys::x25519_secret(theirs).unwrap();
        Identity::from_secret_bytes(&secret).unwrap()
    }

    #[test]
    fn public_key_matches_the_age_crate() {
        let theirs: age::x25519::Identity = TEST_SK.parse().unwrap();
        assert_eq!(ours(&theirs).recipient(), TEST_PK);
        for _ in 0..64 {
            let theirs = age::x25519::Identity::generate();
            assert_eq!(ours(&theirs).recipient(), theirs.to_public().to_string());
        }
    }

    /// What `parse_identities` builds for an identity file: the recipient text it reports is
    /// the bech32 encoding of the public key aws-lc computed from the imported secret.
    #[test]
    fn parsed_recipient_is_the_aws_lc_public_key() {
        let theirs = age::x25519::Identity::generate();
        let file = format!("# created: now\n{}\n", theirs.to_string().expose_secret());
        let parsed = crate::keys::parse_identities(file.as_bytes(), "test").unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].recipient, ours(&theirs).recipient());
    }

    #[test]
    fn unwraps_what_age_wraps() {
        let theirs: age::x25519::Identity = TEST_SK.parse().unwrap();
        let ours = ours(&theirs);
        let file_key = FileKey::new(Box::new([7; 16]));
        let (stanzas, _) = age::Recipient::wrap_file_key(&theirs.to_public(), &file_key).unwrap();
        let got = ours.unwrap_stanzas(&stanzas).unwrap().unwrap();
        assert_eq!(got.expose_secret(), file_key.expose_secret());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let ours = Identity::from_secret_bytes(&[0x41; 32]).unwrap();
        let shown = format!("{ours:?} {ours:#?}");
        assert_eq!(format!("{ours:?}"), "X25519Identity { .. }");
        assert!(!shown.contains("41"), "{shown}");
        assert!(!shown.contains("AAAA"), "{shown}");
    }
}
