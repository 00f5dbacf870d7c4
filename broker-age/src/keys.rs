//! Parsing identities (X25519 key files, OpenSSH ed25519/RSA keys) and recipients.
//!
//! Key material is only ever held in `Zeroizing` buffers and the `age` crate's own secret
//! types. Errors name the source (a path or a reference) and a line number, never content.

use std::fmt;

use age::secrecy::ExposeSecret;
use age::{ssh, x25519};
use broker_core::{Error, ErrorKind, Result};
use zeroize::Zeroizing;

/// The armor line of an age file; an identity that starts with it is passphrase-protected.
const AGE_ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
const AGE_BINARY_MAGIC: &str = "age-encryption.org/";

/// One usable identity and the recipient it corresponds to.
pub(crate) struct Identity {
    /// Where it came from (a path or `reference `env:X``), for "tried:" lists.
    pub source: String,
    pub(crate) inner: Box<dyn age::Identity + Send + Sync>,
    /// The matching public key, as text (`age1...` / `ssh-ed25519 AAAA...`).
    pub recipient: String,
}

impl Identity {
    /// The identity as the `age` crate takes it.
    pub fn as_age(&self) -> &dyn age::Identity {
        self.inner.as_ref()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("source", &self.source)
            .field("recipient", &self.recipient)
            .finish_non_exhaustive()
    }
}

/// Parses key material read from `source` (the text of an age identity file, or an OpenSSH /
/// PEM private key). `source` is only used in messages.
pub(crate) fn parse_identities(content: &[u8], source: &str) -> Result<Vec<Identity>> {
    let Ok(text) = std::str::from_utf8(content) else {
        return Err(Error::invalid_config(format!(
            "identity {source} is not text: expected an age identity file or an OpenSSH private key"
        )));
    };
    let head = text.trim_start();
    if head.starts_with(AGE_ARMOR_BEGIN) || head.starts_with(AGE_BINARY_MAGIC) {
        return Err(passphrase_protected(source).with_hint(
            "decrypt it once into a file only you can read (`age -d -o keys.txt keys.txt.age`), or pass the key through a reference (`identity: { ref: ... }`)",
        ));
    }
    if head.starts_with("-----BEGIN ") {
        return parse_ssh(text, source).map(|i| vec![i]);
    }
    parse_x25519_file(text, source)
}

fn passphrase_protected(source: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "identity {source} is passphrase-protected; the broker runs non-interactively and cannot ask for a passphrase"
        ),
    )
}

fn parse_ssh(text: &str, source: &str) -> Result<Identity> {
    let identity =
        ssh::Identity::from_buffer(text.as_bytes(), Some(source.to_string())).map_err(|_| {
            Error::invalid_config(format!(
                "identity {source} is not a valid OpenSSH or PEM private key"
            ))
            .with_hint("age accepts unencrypted ssh-ed25519 and ssh-rsa keys")
        })?;
    match &identity {
        ssh::Identity::Unencrypted(_) => {}
        ssh::Identity::Encrypted(_)
        | ssh::Identity::Unsupported(ssh::UnsupportedKey::EncryptedPem) => {
            return Err(passphrase_protected(source).with_hint(
                "use an unencrypted key for the broker (e.g. a dedicated deploy or host key), or convert it: `ssh-keygen -p -N \"\" -f KEY` on a copy",
            ));
        }
        ssh::Identity::Unsupported(ssh::UnsupportedKey::EncryptedSsh(cipher)) => {
            return Err(passphrase_protected(source).with_hint(format!(
                "it is also encrypted with an unsupported cipher ({cipher})"
            )));
        }
        ssh::Identity::Unsupported(
            ssh::UnsupportedKey::Hardware(key_type) | ssh::UnsupportedKey::Type(key_type),
        ) => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("identity {source} is a `{key_type}` key, which age cannot use"),
            )
            .with_hint("age decrypts with ssh-ed25519 and ssh-rsa keys only"));
        }
    }
    let recipient = ssh::Recipient::try_from(identity.clone())
        .map(|r| r.to_string())
        .map_err(|_| {
            Error::new(
                ErrorKind::Unsupported,
                format!("identity {source}: cannot derive its public key"),
            )
        })?;
    Ok(Identity {
        source: source.to_string(),
        inner: Box::new(identity),
        recipient,
    })
}

fn parse_x25519_file(text: &str, source: &str) -> Result<Vec<Identity>> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        let n = index + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Ok(identity) = line.parse::<x25519::Identity>() {
            // Unwrapped by our own identity (aws-lc, key imported once): see `crate::x25519`.
            let inner = x25519_secret(&identity)
                .and_then(|secret| crate::x25519::Identity::from_secret_bytes(&secret))
                .ok_or_else(|| {
                    Error::internal(format!("identity {source} line {n}: cannot import the key"))
                })?;
            out.push(Identity {
                source: source.to_string(),
                recipient: inner.recipient(),
                inner: Box::new(inner),
            });
            continue;
        }
        let upper = line.to_ascii_uppercase();
        let err = if upper.starts_with("AGE-SECRET-KEY-PQ-") {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "identity {source} line {n}: post-quantum (ML-KEM hybrid) identities are not supported"
                ),
            )
            .with_hint("use an X25519 identity (`age-keygen`) or an SSH key")
        } else if upper.starts_with("AGE-PLUGIN-") {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "identity {source} line {n}: plugin identities (hardware keys) are not supported"
                ),
            )
        } else if line.starts_with("age1") || line.starts_with("ssh-") {
            Error::invalid_config(format!(
                "identity {source} line {n} is a public key (a recipient), not an identity"
            ))
            .with_hint("point `identity` at the private key file")
        } else {
            Error::invalid_config(format!(
                "identity {source} contains non-identity data on line {n}"
            ))
            .with_hint("an identity file holds age secret keys, one per line, and # comments")
        };
        return Err(err);
    }
    if out.is_empty() {
        return Err(Error::invalid_config(format!(
            "identity {source} contains no identities"
        )));
    }
    Ok(out)
}

/// The 32 secret bytes of a parsed X25519 identity (from its `AGE-SECRET-KEY-1...` text,
/// which the parse has already checked). On the heap, filled in place: moving the result
/// moves a pointer, not a copy of the key that would stay on the stack unwiped.
pub(crate) fn x25519_secret(identity: &x25519::Identity) -> Option<Box<Zeroizing<[u8; 32]>>> {
    let text = identity.to_string();
    age_core::primitives::bech32_decode(
        text.expose_secret(),
        |_| (),
        |_| Ok(()),
        |_, mut bytes| {
            let mut out = Box::new(Zeroizing::new([0u8; 32]));
            for slot in out.iter_mut() {
                *slot = bytes.next().ok_or(())?;
            }
            bytes.next().is_none().then_some(out).ok_or(())
        },
    )
    .ok()
}

/// A parsed recipient.
pub(crate) struct Recipient {
    pub text: String,
    pub inner: Box<dyn age::Recipient + Send + Sync>,
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses recipient `text` (`age1...`, `ssh-ed25519 ...`, `ssh-rsa ...`). `what` names it in
/// errors (`backends.age.recipients[1]`). The text is never echoed: a secret key pasted by
/// mistake must not end up in an error.
pub(crate) fn parse_recipient(text: &str, what: &str) -> Result<Recipient> {
    let trimmed = text.trim();
    if let Ok(r) = trimmed.parse::<x25519::Recipient>() {
        return Ok(Recipient {
            text: r.to_string(),
            inner: Box::new(r),
        });
    }
    match trimmed.parse::<ssh::Recipient>() {
        Ok(r) => Ok(Recipient {
            text: r.to_string(),
            inner: Box::new(r),
        }),
        Err(e) => {
            let why = if trimmed.to_ascii_uppercase().starts_with("AGE-SECRET-KEY") {
                "is a secret key, not a public key: remove it from the config now".to_string()
            } else {
                match e {
                    ssh::ParseRecipientKeyError::RsaModulusTooSmall => {
                        "is an ssh-rsa key shorter than 2048 bits".to_string()
                    }
                    ssh::ParseRecipientKeyError::RsaModulusTooLarge => {
                        "is an ssh-rsa key larger than age supports".to_string()
                    }
                    ssh::ParseRecipientKeyError::Unsupported(key_type) => {
                        format!("is a `{key_type}` key, which age cannot encrypt to")
                    }
                    _ => "is not an age (age1...) or SSH (ssh-ed25519/ssh-rsa) public key"
                        .to_string(),
                }
            };
            Err(Error::invalid_config(format!("{what} {why}")))
        }
    }
}

/// Whether `identity` unwraps a stanza of the age file whose header is in `bytes`.
pub(crate) fn matches(bytes: &[u8], identity: &Identity) -> bool {
    let reader = age::armor::ArmoredReader::new(bytes);
    match age::Decryptor::new_buffered(reader) {
        Ok(d) => d.decrypt(std::iter::once(identity.as_age())).is_ok(),
        Err(_) => false,
    }
}
