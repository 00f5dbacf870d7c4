//! sops value encryption: `ENC[AES256_GCM,data:...,iv:...,tag:...,type:...]`.

use aes_gcm::aead::consts::{U12, U32};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, AesGcm, aes::Aes256};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::tree::{Node, leaf_bytes};

/// Why a value could not be decrypted. Never holds plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CipherError {
    /// Not an `ENC[AES256_GCM,...]` value.
    Format(&'static str),
    /// The authentication tag did not verify (wrong key, tampered value, or wrong path).
    Authentication,
    /// The plaintext does not parse as its declared type.
    Type(String),
}

/// A parsed `ENC[...]` value.
struct Encrypted {
    data: Vec<u8>,
    iv: Vec<u8>,
    tag: Vec<u8>,
    kind: String,
}

fn field<'a>(rest: &'a str, name: &str) -> Result<(&'a str, &'a str), CipherError> {
    let rest = rest.strip_prefix(name).ok_or(CipherError::Format(
        "unexpected field order in ENC[...] value",
    ))?;
    match rest.find(',') {
        Some(i) => Ok((&rest[..i], &rest[i + 1..])),
        None => Ok((rest, "")),
    }
}

fn parse(value: &str) -> Result<Encrypted, CipherError> {
    let inner = value
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|v| v.strip_suffix(']'))
        .ok_or(CipherError::Format("not an ENC[AES256_GCM,...] value"))?;
    let (data, rest) = field(inner, "data:")?;
    let (iv, rest) = field(rest, "iv:")?;
    let (tag, rest) = field(rest, "tag:")?;
    let (kind, _) = field(rest, "type:")?;
    let b64 = |s: &str| {
        B64.decode(s)
            .map_err(|_| CipherError::Format("bad base64 in ENC[...] value"))
    };
    Ok(Encrypted {
        data: b64(data)?,
        iv: b64(iv)?,
        tag: b64(tag)?,
        kind: kind.to_string(),
    })
}

fn open(key: &[u8], enc: &Encrypted, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CipherError> {
    if enc.tag.len() != 16 {
        return Err(CipherError::Format("GCM tag must be 16 bytes"));
    }
    let mut ct = Vec::with_capacity(enc.data.len() + 16);
    ct.extend_from_slice(&enc.data);
    ct.extend_from_slice(&enc.tag);
    let payload = Payload { msg: &ct, aad };
    let out = match enc.iv.len() {
        32 => AesGcm::<Aes256, U32>::new_from_slice(key)
            .map_err(|_| CipherError::Format("data key is not 32 bytes"))?
            .decrypt(aes_gcm::Nonce::<U32>::from_slice(&enc.iv), payload),
        12 => Aes256Gcm::new_from_slice(key)
            .map_err(|_| CipherError::Format("data key is not 32 bytes"))?
            .decrypt(aes_gcm::Nonce::<U12>::from_slice(&enc.iv), payload),
        _ => return Err(CipherError::Format("unsupported GCM nonce size")),
    };
    out.map(Zeroizing::new)
        .map_err(|_| CipherError::Authentication)
}

/// Decrypts one `ENC[...]` value with `key` and `aad` into its typed node. An empty string is
/// returned as is (sops never encrypts empty values).
pub(crate) fn decrypt(value: &str, key: &[u8], aad: &str) -> Result<Node, CipherError> {
    if value.is_empty() {
        return Ok(Node::Str(String::new()));
    }
    let enc = parse(value)?;
    let plain = open(key, &enc, aad.as_bytes())?;
    let text = || {
        std::str::from_utf8(&plain)
            .map(str::to_string)
            .map_err(|_| CipherError::Type(format!("a {} value is not UTF-8", enc.kind)))
    };
    Ok(match enc.kind.as_str() {
        // Go strings may hold any bytes (binary files): keep non-UTF-8 text as bytes.
        "str" => match std::str::from_utf8(&plain) {
            Ok(s) => Node::Str(s.to_string()),
            Err(_) => Node::Bytes(plain.to_vec()),
        },
        "comment" => Node::Comment(text()?),
        "bytes" => Node::Bytes(plain.to_vec()),
        "int" | "int64" => Node::Int(
            text()?
                .parse()
                .map_err(|_| CipherError::Type("an int value does not parse".into()))?,
        ),
        "float" => Node::Float(
            parse_go_float(&text()?)
                .ok_or_else(|| CipherError::Type("a float value does not parse".into()))?,
        ),
        "bool" => Node::Bool(match text()?.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            _ => return Err(CipherError::Type("a bool value does not parse".into())),
        }),
        other => return Err(CipherError::Type(format!("unknown value type `{other}`"))),
    })
}

fn parse_go_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.replace('_', "").parse().ok(),
    }
}

/// Decrypts the MAC value (AAD = lastmodified as stored) into its hex text.
pub(crate) fn decrypt_mac(
    value: &str,
    key: &[u8],
    lastmodified: &str,
) -> Result<String, CipherError> {
    match decrypt(value, key, lastmodified)? {
        Node::Str(s) => Ok(s),
        _ => Err(CipherError::Format("the MAC is not a string")),
    }
}

/// Encrypts a leaf node with a fresh 32-byte nonce. Empty strings stay empty, like sops.
pub(crate) fn encrypt(node: &Node, key: &[u8], aad: &str) -> Result<String, CipherError> {
    let kind = match node {
        Node::Str(s) if s.is_empty() => return Ok(String::new()),
        Node::Comment(s) if s.is_empty() => return Ok(String::new()),
        Node::Bytes(b) if b.is_empty() => return Ok(String::new()),
        Node::Str(_) => "str",
        Node::Comment(_) => "comment",
        Node::Int(_) => "int",
        Node::Float(_) => "float",
        Node::Bool(_) => "bool",
        Node::Bytes(_) => "bytes",
        _ => return Err(CipherError::Format("only leaves can be encrypted")),
    };
    let plain = Zeroizing::new(leaf_bytes(node).unwrap_or_default());
    let mut iv = [0u8; 32];
    rand::fill(&mut iv);
    let cipher = AesGcm::<Aes256, U32>::new_from_slice(key)
        .map_err(|_| CipherError::Format("data key is not 32 bytes"))?;
    let out = cipher
        .encrypt(
            aes_gcm::Nonce::<U32>::from_slice(&iv),
            Payload {
                msg: &plain,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| CipherError::Format("AES-GCM encryption failed"))?;
    let (data, tag) = out.split_at(out.len() - 16);
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
        B64.encode(data),
        B64.encode(iv),
        B64.encode(tag)
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_every_type() {
        let key = [7u8; 32];
        for node in [
            Node::Str("héllo".into()),
            Node::Int(-42),
            Node::Float(0.75),
            Node::Bool(true),
            Node::Bytes(vec![0, 1, 2]),
            Node::Comment(" a comment".into()),
        ] {
            let enc = encrypt(&node, &key, "a:b:").unwrap();
            let back = decrypt(&enc, &key, "a:b:").unwrap();
            assert_eq!(leaf_bytes(&back), leaf_bytes(&node));
            assert_eq!(
                decrypt(&enc, &key, "a:c:").err(),
                Some(CipherError::Authentication)
            );
        }
        assert_eq!(encrypt(&Node::Str(String::new()), &key, "x:").unwrap(), "");
    }
}
