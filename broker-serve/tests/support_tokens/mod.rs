//! Test tokens: keys made at test time with aws-lc-rs (EC P-256, RSA 2048, Ed25519), their
//! public JWKs built by hand, and compact JWS tokens signed here by hand (also the forgeries a
//! verifier must refuse: `alg: none`, HS256 with the public key as the secret, a flipped
//! signature byte). Shared by `tests/jwt.rs` (the verifier) and `tests/jwt_daemon.rs` (the
//! daemon).
#![allow(dead_code, clippy::unwrap_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RSA_PSS_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// Base64url without padding, as JWS uses it.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A private key of one of the supported types.
pub enum KeyMaterial {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A signing key and its `kid`.
pub struct Signer {
    pub kid: String,
    pub key: KeyMaterial,
}

impl Signer {
    pub fn ec(kid: &str) -> Signer {
        Signer {
            kid: kid.into(),
            key: KeyMaterial::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap()),
        }
    }

    pub fn rsa(kid: &str) -> Signer {
        Signer {
            kid: kid.into(),
            key: KeyMaterial::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap()),
        }
    }

    pub fn ed(kid: &str) -> Signer {
        Signer {
            kid: kid.into(),
            key: KeyMaterial::Ed(Ed25519KeyPair::generate().unwrap()),
        }
    }

    /// The public key bytes (what an attacker would use as an HMAC secret).
    pub fn public_bytes(&self) -> Vec<u8> {
        match &self.key {
            KeyMaterial::Ec(k) => k.public_key().as_ref().to_vec(),
            KeyMaterial::Rsa(k) => k.public_key().as_ref().to_vec(),
            KeyMaterial::Ed(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// The public JWK, built by hand.
    pub fn jwk(&self) -> Value {
        match &self.key {
            KeyMaterial::Ec(k) => {
                let point = k.public_key().as_ref();
                assert_eq!(point.len(), 65);
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                       "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            KeyMaterial::Rsa(k) => {
                let public = k.public_key();
                json!({"kty": "RSA", "kid": self.kid, "use": "sig",
                       "n": b64(public.modulus().big_endian_without_leading_zero()),
                       "e": b64(public.exponent().big_endian_without_leading_zero())})
            }
            KeyMaterial::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid,
                       "x": b64(k.public_key().as_ref())})
            }
        }
    }

    pub fn default_alg(&self) -> &'static str {
        match self.key {
            KeyMaterial::Ec(_) => "ES256",
            KeyMaterial::Rsa(_) => "RS256",
            KeyMaterial::Ed(_) => "EdDSA",
        }
    }

    /// A compact JWS of `claims` with header `{alg, kid, typ}`.
    pub fn token(&self, claims: &Value) -> String {
        self.token_with(
            json!({"alg": self.default_alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    /// A compact JWS with this header, signed with the algorithm the header names (RS256,
    /// PS256, ES256, EdDSA; HS256 with the public key bytes as the secret).
    pub fn token_with(&self, header: Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let signature = match (header["alg"].as_str().unwrap(), &self.key) {
            ("HS256", _) => {
                let key =
                    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.public_bytes());
                aws_lc_rs::hmac::sign(&key, input.as_bytes())
                    .as_ref()
                    .to_vec()
            }
            ("ES256", KeyMaterial::Ec(k)) => {
                k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
            }
            ("EdDSA", KeyMaterial::Ed(k)) => k.sign(input.as_bytes()).as_ref().to_vec(),
            (alg @ ("RS256" | "PS256"), KeyMaterial::Rsa(k)) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                let padding: &'static dyn aws_lc_rs::signature::RsaEncoding = if alg == "RS256" {
                    &RSA_PKCS1_SHA256
                } else {
                    &RSA_PSS_SHA256
                };
                k.sign(padding, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
            (alg, _) => panic!("cannot sign {alg} with this key"),
        };
        format!("{input}.{}", b64(&signature))
    }

    /// HS256 with this key's public key bytes as the HMAC secret: the classic algorithm
    /// confusion forgery.
    pub fn hs256_with_public_key(&self, claims: &Value) -> String {
        self.token_with(
            json!({"alg": "HS256", "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }
}

/// An unsigned token (`alg: none`, empty signature part) naming `kid`.
pub fn unsigned(kid: &str, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": kid, "typ": "JWT"})
            .to_string()
            .as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// `token` with one bit of its signature flipped.
pub fn tampered(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[10] ^= 0x01;
    format!("{input}.{}", b64(&raw))
}

/// A JWKS document holding the signers' public keys.
pub fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()}).to_string()
}
