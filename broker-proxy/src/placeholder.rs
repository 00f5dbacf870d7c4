//! Placeholders: what the child holds instead of a value.
//!
//! - `random` (the default): `prefix` followed by `length` characters drawn uniformly from
//!   `A-Z a-z 0-9` by the operating system's CSPRNG (through `rand`): at least 22 characters,
//!   so at least 130 bits, whatever the prefix.
//! - `jwt`: `header.claims.signature` in base64url, so a client that parses its token before
//!   sending it accepts it: the header names HS256, the claims
//!   carry a random `jti` (130 bits) and a far `exp`, the signature is 32 random bytes
//!   (256 bits).
//!
//! A placeholder is not a secret — it is worthless away from this run's proxy — but it is
//! unguessable, so it cannot collide with text the child sends for other reasons. Every
//! shape uses only characters that read the same in a header, a query, a form and a JSON
//! string.

use base64::Engine as _;
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::settings::PlaceholderShape;

/// A fresh placeholder of `shape`.
pub fn generate(shape: &PlaceholderShape) -> String {
    match shape {
        PlaceholderShape::Random { prefix, length } => {
            let mut out = String::with_capacity(prefix.len() + length);
            out.push_str(prefix);
            out.extend(random_alphanumeric(*length));
            out
        }
        PlaceholderShape::Jwt => jwt(),
    }
}

fn random_alphanumeric(n: usize) -> impl Iterator<Item = char> {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
}

fn jwt() -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let jti: String = random_alphanumeric(22).collect();
    // Far enough that no client refuses it as expired during a run; the token is worthless.
    let claims = serde_json::json!({
        "sub": "broker-placeholder",
        "jti": jti,
        "iat": 1_700_000_000u64,
        "exp": 4_102_444_800u64,
    });
    let claims = b64.encode(claims.to_string());
    let signature: [u8; 32] = rand::random();
    format!("{header}.{claims}.{}", b64.encode(signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_uniqueness() {
        let shape = PlaceholderShape::Random {
            prefix: "sk-".into(),
            length: 32,
        };
        let a = generate(&shape);
        let b = generate(&shape);
        assert!(a.starts_with("sk-") && a.len() == 35);
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_jwt_placeholder_parses_as_a_jwt_and_is_unique() {
        let a = generate(&PlaceholderShape::Jwt);
        let b = generate(&PlaceholderShape::Jwt);
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["typ"], "JWT");
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "broker-placeholder");
        assert_eq!(b64.decode(parts[2]).unwrap().len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        );
    }
}
