//! `backends.age` settings and the per-credential `identity:` / `recipients:` options.

use std::borrow::Cow;
use std::fmt;

use broker_core::{Error, Reference, Result};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// `backends: age: { identity: ..., recipients: [...] }`.
///
/// ```yaml
/// backends:
///   age:
///     identity: ~/.config/age/keys.txt          # a path (relative to the config dir)
///     # identity: { ref: "env:AGE_SECRET_KEY" } # or a reference to the key material
///     # identity: [keys.txt, { ref: "vault:secret/data/age#key" }]
///     recipients: ["age1...", "ssh-ed25519 AAAA... host"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Identity sources; empty means "use `AGE_IDENTITY_FILE`, then the agenix defaults".
    #[serde(default)]
    pub identity: IdentityList,
    /// Recipients `rotate` re-encrypts to (age `age1...` or SSH public keys); empty means
    /// "derived from the identities that decrypt the file".
    #[serde(default)]
    pub recipients: RecipientList,
}

/// One identity source.
///
/// The rule is syntactic and unambiguous: a YAML **string** is always a file path; a map
/// `{ ref: "<reference>" }` is always a reference whose *value* is the key material (the text
/// of an age identity file or an OpenSSH private key), resolved through the broker so the
/// egress gate applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySpec {
    /// A file holding one or more age identities, or an OpenSSH/PEM private key.
    Path(String),
    /// A reference whose value is the key material.
    Ref(Reference),
}

/// One or more identity sources (`identity: path`, `identity: {ref: ...}`, or a list of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityList(pub Vec<IdentitySpec>);

/// One or more recipients (`recipients: "age1..."` or a list). Public keys only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientList(pub Vec<String>);

impl IdentityList {
    /// Parses a credential's `identity:` option.
    pub fn from_option(value: &serde_json::Value) -> Result<Self> {
        IdentityList::deserialize(value).map_err(|e| {
            Error::invalid_config(format!("option `identity`: {e}")).with_hint(
                "write a path (`identity: keys.txt`), a reference (`identity: { ref: \"env:AGE_KEY\" }`), or a list of them",
            )
        })
    }
}

impl RecipientList {
    /// Parses a credential's `recipients:` option.
    pub fn from_option(value: &serde_json::Value) -> Result<Self> {
        RecipientList::deserialize(value).map_err(|e| {
            Error::invalid_config(format!("option `recipients`: {e}"))
                .with_hint("write a list of public keys: [\"age1...\", \"ssh-ed25519 AAAA...\"]")
        })
    }
}

/// What [`IdentityList`]'s deserializer accepts: a path (a non-blank string), `{ ref: ... }`,
/// a list of those, or nothing.
impl JsonSchema for IdentityList {
    fn schema_name() -> Cow<'static, str> {
        "IdentityList".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let path = serde_json::json!({
            "type": "string",
            "pattern": "\\S",
            "description": "A file of age identities or an OpenSSH/PEM private key, relative to the config file."
        });
        let reference = serde_json::json!({
            "type": "object",
            "properties": {
                "ref": { "type": "string", "description": "A reference whose value is the key material." }
            },
            "required": ["ref"],
            "additionalProperties": false
        });
        json_schema!({
            "oneOf": [
                path,
                reference,
                { "type": "array", "items": { "oneOf": [path, reference] } },
                { "type": "null" }
            ]
        })
    }
}

/// What [`RecipientList`]'s deserializer accepts: a public key, a list of them, or nothing.
impl JsonSchema for RecipientList {
    fn schema_name() -> Cow<'static, str> {
        "RecipientList".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } },
                { "type": "null" }
            ]
        })
    }
}

struct SpecVisitor;

impl<'de> Visitor<'de> for SpecVisitor {
    type Value = IdentitySpec;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a path or { ref: REFERENCE }")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<IdentitySpec, E> {
        if v.trim().is_empty() {
            return Err(E::custom("an identity path must not be empty"));
        }
        Ok(IdentitySpec::Path(v.to_string()))
    }
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<IdentitySpec, A::Error> {
        let mut found: Option<Reference> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "ref" {
                return Err(de::Error::unknown_field(&key, &["ref"]));
            }
            if found.is_some() {
                return Err(de::Error::duplicate_field("ref"));
            }
            let text: String = map.next_value()?;
            let reference: Reference = text
                .parse()
                .map_err(|e: Error| de::Error::custom(format!("identity reference: {e}")))?;
            found = Some(reference);
        }
        found
            .map(IdentitySpec::Ref)
            .ok_or_else(|| de::Error::missing_field("ref"))
    }
}

impl<'de> Deserialize<'de> for IdentitySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(SpecVisitor)
    }
}

impl<'de> Deserialize<'de> for IdentityList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdentityList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path, { ref: REFERENCE }, or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<IdentityList, E> {
                Ok(IdentityList(vec![SpecVisitor.visit_str(v)?]))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<IdentityList, A::Error> {
                Ok(IdentityList(vec![SpecVisitor.visit_map(map)?]))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<IdentityList, A::Error> {
                let mut out = Vec::new();
                while let Some(spec) = seq.next_element::<IdentitySpec>()? {
                    out.push(spec);
                }
                Ok(IdentityList(out))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<IdentityList, E> {
                Ok(IdentityList::default())
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RecipientList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RecipientList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a public key or a list of public keys")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<RecipientList, E> {
                Ok(RecipientList(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<RecipientList, A::Error> {
                let mut out = Vec::new();
                while let Some(r) = seq.next_element::<String>()? {
                    out.push(r);
                }
                Ok(RecipientList(out))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<RecipientList, E> {
                Ok(RecipientList::default())
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn identity_forms() {
        let one = IdentityList::from_option(&serde_json::json!("keys.txt")).unwrap();
        assert_eq!(one.0, vec![IdentitySpec::Path("keys.txt".into())]);
        let r = IdentityList::from_option(&serde_json::json!({"ref": "env:AGE_KEY"})).unwrap();
        assert!(matches!(&r.0[..], [IdentitySpec::Ref(r)] if r.to_string() == "env:AGE_KEY"));
        let many = IdentityList::from_option(&serde_json::json!(["a", {"ref": "env:B"}])).unwrap();
        assert_eq!(many.0.len(), 2);
        let bad = IdentityList::from_option(&serde_json::json!({"path": "x"})).unwrap_err();
        assert!(bad.to_string().contains("unknown field `path`"), "{bad}");
        let bad = IdentityList::from_option(&serde_json::json!({"ref": "env:"})).unwrap_err();
        assert_eq!(bad.kind(), broker_core::ErrorKind::InvalidConfig);
        let bad = IdentityList::from_option(&serde_json::json!(3)).unwrap_err();
        assert!(bad.to_string().contains("a path"), "{bad}");
    }

    #[test]
    fn recipient_forms() {
        let one = RecipientList::from_option(&serde_json::json!("age1x")).unwrap();
        assert_eq!(one.0, vec!["age1x".to_string()]);
        let two = RecipientList::from_option(&serde_json::json!(["a", "b"])).unwrap();
        assert_eq!(two.0.len(), 2);
        assert!(RecipientList::from_option(&serde_json::json!({"a": 1})).is_err());
    }
}
