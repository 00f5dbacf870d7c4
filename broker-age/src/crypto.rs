//! Decrypting and encrypting age files in memory, with errors that never hold plaintext.

use std::io::{Read, Write};

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use broker_core::{Error, ErrorKind, Result};
use zeroize::Zeroizing;

use crate::keys::{Identity, Recipient};

/// The first line of an armored age file.
pub(crate) const ARMOR_BEGIN: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

/// Whether `bytes` is an ASCII-armored age file (leading whitespace allowed, as `age` does).
pub fn is_armored(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    bytes[start..].starts_with(ARMOR_BEGIN)
}

/// Why a decryption failed. Holds no plaintext and no key material.
#[derive(Debug)]
pub(crate) enum Failure {
    /// None of the identities matches a recipient stanza.
    NoMatch,
    /// The file is encrypted to a passphrase (scrypt).
    Passphrase,
    /// Corrupted, truncated or tampered with; the text says how.
    Integrity(&'static str),
}

/// Decrypts the age file in `bytes` with `identities`.
pub(crate) fn decrypt(
    bytes: &[u8],
    identities: &[Identity],
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    decrypt_from(bytes, bytes.len(), identities)
}

/// Decrypts the age file of `len` bytes that `input` reads (read as it is decrypted, never
/// held whole), with `identities`. `input` must stop after `len` bytes: the plaintext buffer
/// is sized from it and must never grow.
pub(crate) fn decrypt_from(
    input: impl std::io::BufRead,
    len: usize,
    identities: &[Identity],
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    if len == 0 {
        return Err(Failure::Integrity("the file is empty (truncated)"));
    }
    let reader = ArmoredReader::new(input);
    let decryptor = age::Decryptor::new_buffered(reader).map_err(header_failure)?;
    if decryptor.is_scrypt() {
        return Err(Failure::Passphrase);
    }
    let mut stream = decryptor
        .decrypt(identities.iter().map(Identity::as_age))
        .map_err(header_failure)?;
    // Plaintext is shorter than the ciphertext, so this never reallocates (a reallocation
    // would leave an unzeroized copy behind).
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    match stream.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(Failure::Integrity("the file is truncated"))
        }
        Err(_) => Err(Failure::Integrity(
            "the payload fails authentication: the file is corrupted, truncated or was tampered with",
        )),
    }
}

fn header_failure(e: age::DecryptError) -> Failure {
    use age::DecryptError as D;
    match e {
        D::NoMatchingKeys => Failure::NoMatch,
        D::InvalidMac => {
            Failure::Integrity("the header MAC does not verify: the file was modified or corrupted")
        }
        D::InvalidHeader => Failure::Integrity("the age header is malformed (corrupted file)"),
        D::UnknownFormat => {
            Failure::Integrity("not an age file (or a newer age format this version cannot read)")
        }
        D::DecryptionFailed | D::KeyDecryptionFailed => Failure::Integrity(
            "a recipient stanza matched an identity but could not be unwrapped: the header is corrupted",
        ),
        D::ExcessiveWork { .. } => Failure::Passphrase,
        D::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Failure::Integrity("the file is truncated (incomplete header)")
        }
        D::Io(_) => Failure::Integrity(
            "the file is not a readable age file (bad armor or corrupted header)",
        ),
        _ => Failure::Integrity("the file could not be decrypted (corrupted)"),
    }
}

/// Turns a [`Failure`] into the broker's error for the age file at `file`.
pub(crate) fn failure_error(failure: Failure, file: &str, tried: &[String]) -> Error {
    match failure {
        Failure::NoMatch => Error::permission_denied(format!(
            "no identity matches {file}; tried: {}",
            tried.join(", ")
        ))
        .with_hint("the file is not encrypted to any of these keys (or its recipient lines were damaged); set `identity:` (credential or backends.age) or AGE_IDENTITY_FILE"),
        Failure::Passphrase => Error::new(
            ErrorKind::Unsupported,
            format!(
                "{file} is encrypted with a passphrase; the broker runs non-interactively and cannot ask for it"
            ),
        )
        .with_hint("re-encrypt it to a recipient key: `age -d FILE | age -r age1... -o FILE.new`"),
        Failure::Integrity(why) => Error::integrity(format!("cannot decrypt {file}: {why}")),
    }
}

/// Encrypts `plaintext` to `recipients` with a fresh file key, armored or binary.
pub(crate) fn encrypt(
    plaintext: &[u8],
    recipients: &[Recipient],
    armored: bool,
) -> Result<Vec<u8>> {
    let encryptor = age::Encryptor::with_recipients(
        recipients
            .iter()
            .map(|r| r.inner.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| Error::internal(format!("age cannot encrypt to these recipients: {e}")))?;
    let format = if armored {
        Format::AsciiArmor
    } else {
        Format::Binary
    };
    let fail = |e: std::io::Error| Error::internal(format!("age encryption failed: {}", e.kind()));
    let mut out = Vec::with_capacity(plaintext.len() + plaintext.len() / 2 + 1024);
    let armor = ArmoredWriter::wrap_output(&mut out, format).map_err(fail)?;
    let mut writer = encryptor.wrap_output(armor).map_err(fail)?;
    writer.write_all(plaintext).map_err(fail)?;
    writer.finish().and_then(|a| a.finish()).map_err(fail)?;
    Ok(out)
}

/// How many recipient stanzas the header of the age file in `bytes` has (grease stanzas,
/// which `age` may add and which name nobody, are not counted). `None` if it cannot be read.
pub(crate) fn recipient_stanzas(bytes: &[u8]) -> Option<usize> {
    let mut reader = ArmoredReader::new(bytes);
    // Headers are small; 64 KiB is plenty for hundreds of recipients.
    let mut head = Vec::new();
    (&mut reader).take(64 * 1024).read_to_end(&mut head).ok()?;
    let mut lines = head.split(|b| *b == b'\n');
    if !lines.next()?.starts_with(b"age-encryption.org/v1") {
        return None;
    }
    let mut count = 0;
    for line in lines {
        if line.starts_with(b"---") {
            return Some(count);
        }
        if let Some(rest) = line.strip_prefix(b"-> ") {
            let tag = rest.split(|b| *b == b' ').next().unwrap_or_default();
            if !tag.ends_with(b"-grease") {
                count += 1;
            }
        }
    }
    None
}
