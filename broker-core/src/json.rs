//! JSON documents that hold secret values, wiped when dropped.
//!
//! A backend that selects a `#field` from a JSON secret (or edits one, for rotation) parses
//! it into a [`SecretJson`]: a `serde_json::Value` that, when dropped, overwrites every string,
//! every map key, every number and every boolean in place before the memory is freed. Values
//! leave it through [`to_secret`], which writes into an exact-size buffer (serialising twice:
//! once to count the bytes, once into the buffer), so no growing `Vec` frees a copy.
//!
//! What is *not* wiped, because `serde_json` owns it: the parser's scratch buffer (used for a
//! string that contains escapes), the spare blocks an array or a map frees while it grows
//! during parsing (those hold numbers and booleans inline, and string headers but not string
//! contents), and the nodes of a map (which hold key and value headers, and numbers inline,
//! until [`SecretJson`] overwrites the numbers on drop). The threat model lists this.
//!
//! ```
//! use broker_core::{FieldPath, SecretValue, json};
//!
//! let doc = SecretValue::copy_from(br#"{"db": {"password": "s3cr3t", "port": 5432}}"#);
//! let password = json::select(&doc, &FieldPath::parse("db.password").unwrap()).unwrap();
//! assert_eq!(password.expose(), b"s3cr3t");
//! let port = json::select(&doc, &FieldPath::parse("db.port").unwrap()).unwrap();
//! assert_eq!(port.expose(), b"5432");
//! ```

use std::io;

use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

use crate::{Error, FieldPath, Result, SecretValue};

/// A parsed JSON document holding secret values; every string, key, number and boolean is
/// overwritten when it is dropped. No `Debug`, no `Serialize`.
pub struct SecretJson(Value);

impl SecretJson {
    /// Parses `bytes`. The error gives only the line and column, never the text.
    pub fn parse(bytes: &[u8]) -> std::result::Result<SecretJson, SyntaxError> {
        serde_json::from_slice(bytes)
            .map(SecretJson)
            .map_err(|e| SyntaxError {
                line: e.line(),
                column: e.column(),
            })
    }

    /// Takes ownership of a document parsed elsewhere (an HTTP body, say), to wipe it on drop.
    pub fn from_value(value: Value) -> SecretJson {
        SecretJson(value)
    }

    /// The document.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// The document, to edit in place (a rotated field, say). A string replaced through this
    /// reference is freed unwiped: overwrite it with [`wipe`] first.
    pub fn value_mut(&mut self) -> &mut Value {
        &mut self.0
    }

    /// The node at `path`, as a secret (see [`to_secret`]); `None` when it is not there.
    pub fn select(&self, path: &FieldPath) -> Option<Result<SecretValue>> {
        path.select(&self.0).map(to_secret)
    }
}

impl Drop for SecretJson {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Where a document that is not JSON went wrong (no part of the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Selects `path` from a JSON document held in a secret; the result is a new secret (strings
/// as their text, other values as compact JSON). Errors never contain the document. The
/// parsed document is wiped before this returns.
pub fn select(document: &SecretValue, path: &FieldPath) -> Result<SecretValue> {
    let parsed = SecretJson::parse(document.expose()).map_err(|e| {
        Error::not_found(format!(
            "the secret is not a JSON document (line {}, column {}), so no field can be selected",
            e.line, e.column
        ))
    })?;
    parsed
        .select(path)
        .ok_or_else(|| Error::not_found(format!("field `{path}` is not in the secret")))?
}

/// `document` with the string at `path` replaced by `value` (rotation of a `#field`): the field
/// must exist and hold a string. The parsed document is wiped; errors never contain a value.
pub fn replace_string(
    document: &[u8],
    path: &FieldPath,
    value: &SecretValue,
) -> Result<SecretValue> {
    use crate::FieldSegment;
    let mut parsed = SecretJson::parse(document).map_err(|_| {
        Error::invalid_config("the secret is not a JSON document, so a field cannot be rotated")
    })?;
    let mut node = parsed.value_mut();
    for seg in &path.0 {
        node = match (seg, node) {
            (FieldSegment::Key(k), Value::Object(map)) => map.get_mut(k),
            (FieldSegment::Index(i), Value::Array(list)) => list.get_mut(*i),
            _ => None,
        }
        .ok_or_else(|| Error::not_found(format!("field `{path}` is not in the secret")))?;
    }
    if !node.is_string() {
        return Err(Error::invalid_config(format!(
            "field `{path}` is not a string, so it cannot be rotated"
        )));
    }
    wipe(node);
    *node = Value::String(value.expose_str()?.to_string());
    to_vec_exact(parsed.value()).map(SecretValue::from)
}

/// `node` as a secret: a string as its text, anything else as compact JSON, written into an
/// exact-size buffer.
pub fn to_secret(node: &Value) -> Result<SecretValue> {
    match node {
        Value::String(s) => Ok(SecretValue::copy_from(s.as_bytes())),
        other => to_vec_exact(other).map(SecretValue::from),
    }
}

/// `value` as compact JSON in a buffer of exactly its length (counted first, so the buffer
/// never grows and frees a partial copy).
pub fn to_vec_exact<T: serde::Serialize + ?Sized>(value: &T) -> Result<Zeroizing<Vec<u8>>> {
    let failed = |_| Error::internal("JSON encoding failed");
    let mut count = Counter(0);
    serde_json::to_writer(&mut count, value).map_err(failed)?;
    let mut out = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut Bounded(&mut out), value).map_err(failed)?;
    Ok(out)
}

/// Overwrites, in place, every string (its whole allocation), map key, number and boolean in
/// `value`, and leaves `null`. Array and map storage is freed afterwards by `serde_json`.
pub fn wipe(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Number(n) => *n = serde_json::Number::from(0u8),
        Value::Bool(b) => *b = false,
        Value::Array(items) => items.iter_mut().for_each(wipe),
        Value::Object(map) => {
            map.values_mut().for_each(wipe);
            for (mut key, _) in std::mem::take(map) {
                key.zeroize();
            }
        }
        Value::Null => {}
    }
    *value = Value::Null;
}

/// Counts bytes written.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends to a vector but refuses to grow it (the second pass must fit the first's count).
struct Bounded<'a>(&'a mut Vec<u8>);

impl io::Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.capacity() - self.0.len() < buf.len() {
            return Err(io::Error::other("longer than counted"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn replace_string_rotates_one_string_field() {
        let doc = br#"{"user":"app","db":{"password":"old","port":5432}}"#;
        let path = crate::FieldPath::parse("db.password").unwrap();
        let out = replace_string(doc, &path, &SecretValue::from("new".to_string())).unwrap();
        assert_eq!(
            out.expose(),
            br#"{"user":"app","db":{"password":"new","port":5432}}"#
        );
        let new = SecretValue::from("x".to_string());
        let missing = replace_string(doc, &crate::FieldPath::parse("nope").unwrap(), &new);
        assert_eq!(missing.unwrap_err().kind(), crate::ErrorKind::NotFound);
        let number = replace_string(doc, &crate::FieldPath::parse("db.port").unwrap(), &new);
        assert_eq!(number.unwrap_err().kind(), crate::ErrorKind::InvalidConfig);
        let e = replace_string(b"old", &path, &new).unwrap_err();
        assert!(!e.to_string().contains("old"), "{e}");
    }
    use super::*;

    const CANARY: &str = "canary-json-5e1d";

    fn path(p: &str) -> FieldPath {
        FieldPath::parse(p).unwrap()
    }

    #[test]
    fn selects_strings_as_text_and_the_rest_as_compact_json() {
        let doc = SecretValue::copy_from(
            format!(
                r#"{{"a": {{"s": "{CANARY}", "n": [1, 2.5, true, null], "o": {{"k": "v"}}}}}}"#
            )
            .as_bytes(),
        );
        assert_eq!(
            select(&doc, &path("a.s")).unwrap().expose(),
            CANARY.as_bytes()
        );
        assert_eq!(
            select(&doc, &path("a.n")).unwrap().expose(),
            b"[1,2.5,true,null]"
        );
        assert_eq!(
            select(&doc, &path("/a/o")).unwrap().expose(),
            br#"{"k":"v"}"#
        );
    }

    #[test]
    fn errors_never_quote_the_document() {
        let doc = SecretValue::copy_from(format!(r#"{{"a": "{CANARY}""#).as_bytes());
        let e = select(&doc, &path("a")).unwrap_err().to_string();
        assert!(
            e.contains("not a JSON document") && !e.contains(CANARY),
            "{e}"
        );
        let doc = SecretValue::copy_from(format!(r#"{{"{CANARY}": 1}}"#).as_bytes());
        let e = select(&doc, &path("b")).unwrap_err().to_string();
        assert!(e.contains("`b`") && !e.contains(CANARY), "{e}");
    }

    #[test]
    fn wipe_leaves_null_and_exact_encoding_fits() {
        let mut v = serde_json::json!({"k": ["x", 1, {"y": false}], "z": "w"});
        let encoded = to_vec_exact(&v).unwrap();
        assert_eq!(encoded.len(), encoded.capacity());
        assert_eq!(
            encoded.as_slice(),
            serde_json::to_vec(&v).unwrap().as_slice()
        );
        wipe(&mut v);
        assert!(v.is_null());
    }
}
