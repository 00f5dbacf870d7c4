//! References: where a secret lives, never the secret.
//!
//! ```text
//! reference := scheme ":" target [ "?" query ] [ "#" field ]        (env, sops, age, agenix, vault)
//!            | scheme "://" target [ "?" query ] [ "#" field ]      (aws-sm, aws-sts, gcp-*, azure*)
//! query     := key "=" value *( "&" key "=" value )                  (values percent-decoded)
//! field     := dotted path `a.b[0]["c.d"]` | JSON pointer `/a/b/0`
//! ```
//!
//! Parsing checks the scheme's grammar, which the scheme's backend supplies (see
//! [`crate::grammar`]); `Display` prints the canonical form, and `parse(display(r)) == r` for
//! every reference.
//!
//! `text.parse::<Reference>()` knows the backends compiled in through `inventory`
//! ([`Registry::global`]); a program that registers its own backends parses with
//! [`Registry::parse`] (or [`Reference::parse_with`]).

use std::fmt;
use std::str::FromStr;

use crate::grammar::{self, QueryKeys, SchemeGrammar, Shape};
use crate::registry::Registry;
use crate::{Error, ErrorKind, Result};

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    scheme: String,
    hierarchical: bool,
    target: String,
    query: Vec<(String, String)>,
    field: Option<String>,
}

impl Reference {
    /// Parses `input` against the compiled-in backends; same as `input.parse()`.
    pub fn parse(input: &str) -> Result<Self> {
        input.parse()
    }

    /// Parses `input` against `registry`: its schemes, and the grammar each backend supplies.
    /// An unknown scheme's error lists `registry`'s schemes.
    pub fn parse_with(registry: &Registry, input: &str) -> Result<Self> {
        parse(registry, input)
    }

    /// The scheme, e.g. `vault`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }
    /// Whether the reference uses the `scheme://` form.
    pub fn is_hierarchical(&self) -> bool {
        self.hierarchical
    }
    /// The part between the scheme and `?`/`#`: a variable name, a file path, `MOUNT/PATH`,
    /// a secret id, an ARN, `PROJECT/SECRET/VERSION`...
    pub fn target(&self) -> &str {
        &self.target
    }
    /// The query parameters, decoded, in order.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }
    /// The value of query parameter `key`.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// The raw field selector after `#`.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
    /// The field selector, parsed.
    pub fn field_path(&self) -> Option<FieldPath> {
        // Validated at parse time, so this cannot fail.
        self.field.as_deref().and_then(|f| FieldPath::parse(f).ok())
    }
    /// The grammar of this reference's scheme among the compiled-in backends (or the
    /// product's, for a known scheme whose backend is absent); [`Registry::grammar`] asks
    /// another registry.
    pub fn grammar(&self) -> Option<&'static SchemeGrammar> {
        Registry::global().grammar(&self.scheme)
    }
    /// The same reference without its `#field`.
    pub fn without_field(&self) -> Reference {
        Reference {
            field: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scheme)?;
        f.write_str(if self.hierarchical { "://" } else { ":" })?;
        f.write_str(&self.target)?;
        for (i, (k, v)) in self.query.iter().enumerate() {
            f.write_str(if i == 0 { "?" } else { "&" })?;
            write!(f, "{}={}", encode(k), encode(v))?;
        }
        if let Some(field) = &self.field {
            write!(f, "#{field}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Query characters printed as-is; everything else is percent-encoded.
fn is_plain_query_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~,:/@*+!$'()".contains(c)
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_plain_query_char(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// A parse failure: the input, the 1-based column, and why.
fn invalid(input: &str, byte_at: usize, why: impl fmt::Display) -> Error {
    let column = input
        .char_indices()
        .take_while(|(i, _)| *i < byte_at)
        .count()
        + 1;
    Error::new(
        ErrorKind::InvalidReference,
        format!("at column {column}: {why}"),
    )
    .with_reference(grammar::elide(input))
}

fn decode(input: &str, part: &str, offset: usize) -> Result<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = part
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(invalid(
                    input,
                    offset + i,
                    "`%` must be followed by two hex digits",
                ));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| invalid(input, offset, "percent-encoding is not valid UTF-8"))
}

/// Refuses whitespace and control characters in `part` (which starts at byte `offset` of
/// `input`).
fn reject_blanks(input: &str, part: &str, offset: usize, what: &str) -> Result<()> {
    match part
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        Some((i, c)) => {
            let kind = if c.is_whitespace() {
                "whitespace"
            } else {
                "a control character"
            };
            Err(invalid(
                input,
                offset + i,
                format!("{kind} is not allowed in {what}"),
            ))
        }
        None => Ok(()),
    }
}

/// The byte offset of a `?` in a field selector outside brackets and quotes.
fn top_level_question_mark(field: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in field.char_indices() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') if depth > 0 => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => depth = depth.saturating_sub(1),
            (None, '?') if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn compiled_in_hint(registry: &Registry, scheme: &str) -> (Option<String>, String) {
    let compiled = registry.schemes();
    let all = grammar::KNOWN
        .iter()
        .map(|k| k.grammar.scheme)
        .chain(compiled.iter().map(String::as_str));
    let suggestion = grammar::did_you_mean(scheme, all).map(str::to_string);
    let list = if compiled.is_empty() {
        "none".to_string()
    } else {
        compiled.join(", ")
    };
    (suggestion, list)
}

impl FromStr for Reference {
    type Err = Error;

    /// Parses against the compiled-in backends ([`Registry::global`]).
    fn from_str(input: &str) -> Result<Self> {
        parse(Registry::global(), input)
    }
}

fn parse(registry: &Registry, input: &str) -> Result<Reference> {
    if input.is_empty() {
        return Err(invalid(input, 0, "empty reference"));
    }
    let (head, field) = match input.find('#') {
        Some(i) => (&input[..i], Some((i + 1, &input[i + 1..]))),
        None => (input, None),
    };
    reject_blanks(input, head, 0, "a reference")?;
    let (head, mut query) = match head.find('?') {
        Some(i) => (&head[..i], Some((i + 1, &head[i + 1..]))),
        None => (head, None),
    };
    // `#field?query` is accepted too (the order some docs use); canonical output puts the
    // query first.
    let field = match field {
        Some((at, f)) => match top_level_question_mark(f) {
            Some(q) if query.is_some() => {
                return Err(invalid(
                    input,
                    at + q,
                    "query given twice (before and after `#`)",
                ));
            }
            Some(q) => {
                query = Some((at + q + 1, &f[q + 1..]));
                Some((at, &f[..q]))
            }
            None => Some((at, f)),
        },
        None => None,
    };
    if let Some((at, q)) = query {
        reject_blanks(input, q, at, "a query")?;
    }
    let Some(colon) = head.find(':') else {
        return Err(invalid(
            input,
            0,
            "missing scheme: expected SCHEME:TARGET such as env:NAME or vault:secret/app#key",
        ));
    };
    let scheme = &head[..colon];
    if scheme.is_empty() {
        return Err(invalid(input, 0, "empty scheme before `:`"));
    }
    if let Some((i, c)) = scheme
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_lowercase() || (*i > 0 && (c.is_ascii_digit() || *c == '-'))))
    {
        return Err(invalid(
            input,
            i,
            format!("`{c}` is not allowed in a scheme (lowercase letters, digits, `-`)"),
        ));
    }
    let rest = &head[colon + 1..];
    let hierarchical = rest.starts_with("//");
    let target_at = colon + 1 + if hierarchical { 2 } else { 0 };
    let target = &head[target_at..];

    let grammar = registry.grammar(scheme);
    match grammar {
        Some(g) if g.shape == Shape::Hierarchical && !hierarchical => {
            return Err(invalid(
                input,
                colon + 1,
                format!("`{scheme}` references use `//`: write {}", g.form),
            ));
        }
        Some(g) if g.shape == Shape::Opaque && hierarchical => {
            return Err(invalid(
                input,
                colon + 1,
                format!("`{scheme}` references take no `//`: write {}", g.form),
            ));
        }
        Some(_) => {}
        None if registry.for_scheme(scheme).is_some() => {}
        None => {
            let (suggestion, list) = compiled_in_hint(registry, scheme);
            let mut why = format!("unknown scheme `{}`", grammar::elide(scheme));
            if let Some(s) = suggestion {
                why.push_str(&format!("; did you mean `{s}`?"));
            }
            return Err(invalid(input, 0, why).with_hint(format!("schemes compiled in: {list}")));
        }
    }
    if target.is_empty() {
        let form = grammar.map_or("SCHEME:TARGET", |g| g.form);
        return Err(invalid(
            input,
            target_at,
            format!(
                "missing target after `{scheme}{}`: write {form}",
                if hierarchical { "://" } else { ":" }
            ),
        ));
    }
    if let Some(g) = grammar {
        (g.validate)(target).map_err(|(at, why)| invalid(input, target_at + at, why))?;
    }

    let mut params: Vec<(String, String)> = Vec::new();
    if let Some((at, q)) = query {
        if q.is_empty() {
            return Err(invalid(input, at - 1, "empty query after `?`"));
        }
        let mut offset = at;
        for pair in q.split('&') {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(invalid(
                    input,
                    offset,
                    format!(
                        "query parameter `{}` needs a value: KEY=VALUE",
                        grammar::elide(pair)
                    ),
                ));
            };
            if k.is_empty() {
                return Err(invalid(input, offset, "empty query key"));
            }
            let key = decode(input, k, offset)?;
            let value = decode(input, v, offset + k.len() + 1)?;
            if params.iter().any(|(existing, _)| *existing == key) {
                return Err(invalid(
                    input,
                    offset,
                    format!("query parameter `{}` given twice", grammar::elide(&key)),
                ));
            }
            if let Some(g) = grammar {
                match g.query {
                    QueryKeys::Any => {}
                    QueryKeys::None => {
                        return Err(invalid(
                            input,
                            at - 1,
                            format!("`{scheme}` references take no query parameters"),
                        ));
                    }
                    QueryKeys::Only(keys) if !keys.contains(&key.as_str()) => {
                        return Err(invalid(
                            input,
                            offset,
                            format!(
                                "unknown query parameter `{}` for `{scheme}` (accepted: {})",
                                grammar::elide(&key),
                                keys.join(", ")
                            ),
                        ));
                    }
                    QueryKeys::Only(_) => {}
                }
            }
            params.push((key, value));
            offset += pair.len() + 1;
        }
    }

    let field = match field {
        None => None,
        Some((at, f)) => {
            if grammar.is_some_and(|g| !g.field) {
                return Err(invalid(
                    input,
                    at - 1,
                    format!("`{scheme}` references take no `#field`"),
                ));
            }
            if f.is_empty() {
                return Err(invalid(input, at - 1, "empty field after `#`"));
            }
            if let Some((i, _)) = f.char_indices().find(|(_, c)| c.is_control()) {
                return Err(invalid(
                    input,
                    at + i,
                    "a control character is not allowed in a field",
                ));
            }
            FieldPath::parse(f).map_err(|(i, why)| invalid(input, at + i, why))?;
            Some(f.to_string())
        }
    };

    Ok(Reference {
        scheme: scheme.to_string(),
        hierarchical,
        target: target.to_string(),
        query: params,
        field,
    })
}

/// One step of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldSegment {
    /// A map key.
    Key(String),
    /// A list index.
    Index(usize),
}

/// A parsed `#field`: `a.b[0]`, `["a.b"]["c"]`, or the JSON pointer `/a/b/0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub Vec<FieldSegment>);

impl FieldPath {
    /// Parses a field selector. Errors carry a byte offset within `s` and a reason.
    pub fn parse(s: &str) -> std::result::Result<FieldPath, (usize, String)> {
        if let Some(pointer) = s.strip_prefix('/') {
            let segs = pointer
                .split('/')
                .map(|seg| FieldSegment::Key(seg.replace("~1", "/").replace("~0", "~")))
                .collect();
            return Ok(FieldPath(segs));
        }
        let bytes = s.as_bytes();
        let mut segs = Vec::new();
        let mut i = 0;
        let mut expect_key = true;
        while i < bytes.len() {
            match bytes[i] {
                b'[' => {
                    let (seg, next) = parse_bracket(s, i)?;
                    segs.push(seg);
                    i = next;
                    expect_key = false;
                }
                b'.' => {
                    if expect_key || i + 1 == bytes.len() {
                        return Err((i, "empty key in field path".into()));
                    }
                    i += 1;
                    expect_key = true;
                }
                b']' => return Err((i, "unmatched `]` in field path".into())),
                _ => {
                    if !expect_key {
                        return Err((i, "expected `.` or `[` between field path steps".into()));
                    }
                    let end = s[i..].find(['.', '[', ']']).map_or(s.len(), |e| i + e);
                    segs.push(FieldSegment::Key(s[i..end].to_string()));
                    i = end;
                    expect_key = false;
                }
            }
        }
        Ok(FieldPath(segs))
    }

    /// Selects a node of a JSON document.
    pub fn select<'a>(&self, mut node: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        for seg in &self.0 {
            node = match (seg, node) {
                (FieldSegment::Key(k), serde_json::Value::Object(map)) => map.get(k)?,
                (FieldSegment::Key(k), serde_json::Value::Array(list)) => {
                    list.get(k.parse::<usize>().ok()?)?
                }
                (FieldSegment::Index(i), serde_json::Value::Array(list)) => list.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                FieldSegment::Index(n) => write!(f, "[{n}]")?,
                FieldSegment::Key(k) if !k.is_empty() && !k.contains(['.', '[', ']', '"']) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                FieldSegment::Key(k) => write!(f, "[{}]", serde_json::Value::from(k.as_str()))?,
            }
        }
        Ok(())
    }
}

fn parse_bracket(
    s: &str,
    open: usize,
) -> std::result::Result<(FieldSegment, usize), (usize, String)> {
    let inner_at = open + 1;
    let rest = &s[inner_at..];
    if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let mut key = String::new();
        let mut chars = rest.char_indices().skip(1);
        while let Some((j, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => key.push(e),
                    None => break,
                },
                c if c == quote => {
                    let close = inner_at + j + 1;
                    if s.as_bytes().get(close) != Some(&b']') {
                        return Err((close, "expected `]` after the quoted key".into()));
                    }
                    return Ok((FieldSegment::Key(key), close + 1));
                }
                c => key.push(c),
            }
        }
        return Err((open, "unterminated quoted key in field path".into()));
    }
    let Some(close) = rest.find(']') else {
        return Err((open, "unmatched `[` in field path".into()));
    };
    let index = &rest[..close];
    match index.parse::<usize>() {
        Ok(n) if !index.starts_with('+') => Ok((FieldSegment::Index(n), inner_at + close + 1)),
        _ => Err((inner_at, {
            let index = grammar::elide(index);
            format!("`[{index}]` is not a list index; quote map keys: [\"{index}\"]")
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parts() {
        let r = ok("vault:secret/data/staging#token");
        assert_eq!(
            (r.scheme(), r.target(), r.field()),
            ("vault", "secret/data/staging", Some("token"))
        );
        let r = ok("aws-sm://staging/api#db.password?version-stage=AWSPREVIOUS");
        assert_eq!(r.field(), Some("db.password"));
        assert_eq!(r.query_param("version-stage"), Some("AWSPREVIOUS"));
        assert_eq!(
            r.to_string(),
            "aws-sm://staging/api?version-stage=AWSPREVIOUS#db.password"
        );
        let r = ok("aws-sm://staging/api?version-stage=AWSPREVIOUS&region=eu-west-1#db.password");
        assert_eq!(r.query_param("region"), Some("eu-west-1"));
        assert_eq!(r.field(), Some("db.password"));
        assert!(r.is_hierarchical());
    }

    #[test]
    fn query_round_trips_with_encoding() {
        let r = ok("vault:pki/issue/web?common_name=a.example&alt_names=b%20c%26d");
        assert_eq!(r.query_param("alt_names"), Some("b c&d"));
        assert_eq!(
            r.to_string(),
            "vault:pki/issue/web?common_name=a.example&alt_names=b%20c%26d"
        );
        assert_eq!(ok(&r.to_string()), r);
    }

    #[test]
    fn field_paths() {
        use FieldSegment::*;
        let k = |s: &str| Key(s.to_string());
        assert_eq!(
            FieldPath::parse("a.b.c").unwrap().0,
            vec![k("a"), k("b"), k("c")]
        );
        assert_eq!(
            FieldPath::parse("a.list[0]").unwrap().0,
            vec![k("a"), k("list"), Index(0)]
        );
        assert_eq!(
            FieldPath::parse(r#"["a.b"]["c"]"#).unwrap().0,
            vec![k("a.b"), k("c")]
        );
        assert_eq!(
            FieldPath::parse("/a~1b/0").unwrap().0,
            vec![k("a/b"), k("0")]
        );
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("a[x]").is_err());
        assert!(FieldPath::parse("a[0]b").is_err());
        let doc: serde_json::Value = serde_json::json!({"a": {"list": ["x", "y"]}});
        assert_eq!(
            FieldPath::parse("a.list[1]").unwrap().select(&doc),
            Some(&serde_json::json!("y"))
        );
        assert_eq!(
            FieldPath::parse("/a/list/0").unwrap().select(&doc),
            Some(&serde_json::json!("x"))
        );
        assert_eq!(FieldPath::parse("a.nope").unwrap().select(&doc), None);
    }
}
