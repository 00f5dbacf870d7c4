//! Finding placeholders in a request and putting values in for them: in the configured
//! headers (`Basic` credentials decoded and re-encoded), the path and the query (the value
//! percent-encoded), and JSON and form bodies (the value escaped for the body's type).
//!
//! Only placeholders of credentials that allow the target host (and plain HTTP, for a
//! plain-HTTP request) are ever replaced; the caller has refused the request before when any
//! other placeholder is in it.

use std::collections::BTreeSet;

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use zeroize::{Zeroize, Zeroizing};

use crate::server::ProxiedCredential;

/// The placeholders of a run and the credentials behind them: pattern `i` of the matcher is
/// credential `i`'s placeholder.
pub(crate) struct Placeholders {
    pub(crate) credentials: Vec<ProxiedCredential>,
    pub(crate) matcher: Option<AhoCorasick>,
}

/// Bytes with values put in, and the credentials whose values they hold; `None` when nothing
/// was replaced.
type Replaced = (Zeroizing<Vec<u8>>, BTreeSet<usize>);

/// Where in a request a placeholder is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Path,
    Query,
}

/// How a body is encoded, as far as substitution goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyType {
    Json,
    Form,
}

impl BodyType {
    /// The body type `headers` declare, when it is one values can be put into: JSON
    /// (`application/json`, `*/*+json`) or a form (`application/x-www-form-urlencoded`),
    /// not content-encoded.
    pub(crate) fn of(headers: &HeaderMap) -> Option<BodyType> {
        if headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return None;
        }
        let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let media = ct.split(';').next()?.trim().to_ascii_lowercase();
        if media == "application/json" || media.ends_with("+json") {
            Some(BodyType::Json)
        } else if media == "application/x-www-form-urlencoded" {
            Some(BodyType::Form)
        } else {
            None
        }
    }
}

impl Placeholders {
    /// The credentials whose placeholder appears in `bytes`, as they are and percent-decoded.
    pub(crate) fn scan(&self, bytes: &[u8], found: &mut BTreeSet<usize>) {
        let Some(matcher) = &self.matcher else {
            return;
        };
        for m in matcher.find_iter(bytes) {
            found.insert(m.pattern().as_usize());
        }
        let mut decoded = percent_decoded(bytes);
        for m in matcher.find_iter(&decoded) {
            found.insert(m.pattern().as_usize());
        }
        decoded.zeroize();
    }

    /// The credentials whose placeholder appears in `headers` (`Basic` credentials decoded).
    pub(crate) fn scan_headers(&self, headers: &HeaderMap, found: &mut BTreeSet<usize>) {
        let Some(matcher) = &self.matcher else {
            return;
        };
        for value in headers.values() {
            for m in matcher.find_iter(value.as_bytes()) {
                found.insert(m.pattern().as_usize());
            }
            if let Some(decoded) = basic_decoded(value.as_bytes()) {
                for m in matcher.find_iter(decoded.as_slice()) {
                    found.insert(m.pattern().as_usize());
                }
            }
        }
    }

    /// Replaces the placeholders of `creds` in `bytes`, each value passed through `encode`.
    /// `None` when nothing was replaced; else the new bytes and the credentials used.
    fn replace(
        &self,
        bytes: &[u8],
        creds: &[usize],
        encode: impl Fn(&[u8], &mut Vec<u8>) -> Result<(), String>,
    ) -> Result<Option<Replaced>, String> {
        let Some(matcher) = &self.matcher else {
            return Ok(None);
        };
        let mut out = Zeroizing::new(Vec::with_capacity(bytes.len() + 64));
        let mut last = 0;
        let mut used = BTreeSet::new();
        for m in matcher.find_iter(bytes) {
            let i = m.pattern().as_usize();
            if !creds.contains(&i) {
                continue;
            }
            out.extend_from_slice(&bytes[last..m.start()]);
            encode(self.credentials[i].value.expose(), &mut out)?;
            last = m.end();
            used.insert(i);
        }
        if used.is_empty() {
            return Ok(None);
        }
        out.extend_from_slice(&bytes[last..]);
        Ok(Some((out, used)))
    }

    /// Puts values in for the placeholders of `creds` in the headers each names; returns the
    /// credentials used.
    pub(crate) fn substitute_headers(
        &self,
        headers: &mut HeaderMap,
        creds: &[usize],
    ) -> Result<BTreeSet<usize>, String> {
        let mut used = BTreeSet::new();
        let names: Vec<HeaderName> = headers.keys().cloned().collect();
        for name in names {
            let here: Vec<usize> = creds
                .iter()
                .copied()
                .filter(|i| self.credentials[*i].rules.headers.contains(&name))
                .collect();
            if here.is_empty() {
                continue;
            }
            let old: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            let mut new = Vec::with_capacity(old.len());
            let mut changed = false;
            for v in &old {
                match self.substitute_header_value(v.as_bytes(), &here)? {
                    Some((bytes, u)) => {
                        let mut hv = HeaderValue::from_bytes(&bytes).map_err(|_| {
                            "a credential's value cannot be carried in an HTTP header".to_string()
                        })?;
                        hv.set_sensitive(true);
                        new.push(hv);
                        used.extend(u);
                        changed = true;
                    }
                    None => new.push(v.clone()),
                }
            }
            if changed {
                headers.remove(&name);
                for v in new {
                    headers.append(name.clone(), v);
                }
            }
        }
        Ok(used)
    }

    /// One header value, `Basic` credentials decoded and re-encoded.
    fn substitute_header_value(
        &self,
        value: &[u8],
        creds: &[usize],
    ) -> Result<Option<Replaced>, String> {
        let raw = |v: &[u8], out: &mut Vec<u8>| {
            out.extend_from_slice(v);
            Ok(())
        };
        if let Some(decoded) = basic_decoded(value) {
            let Some((inner, used)) = self.replace(&decoded, creds, raw)? else {
                return Ok(None);
            };
            let mut out = Zeroizing::new(b"Basic ".to_vec());
            let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*inner));
            out.extend_from_slice(encoded.as_bytes());
            return Ok(Some((out, used)));
        }
        self.replace(value, creds, raw)
    }

    /// Puts percent-encoded values in for the placeholders of `creds` in the path or the
    /// query of `path_and_query`; `None` when nothing was replaced.
    pub(crate) fn substitute_uri(
        &self,
        path_and_query: &str,
        place: Place,
        creds: &[usize],
    ) -> Result<Option<(String, BTreeSet<usize>)>, String> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let part = match place {
            Place::Path => path,
            Place::Query => match query {
                Some(q) => q,
                None => return Ok(None),
            },
        };
        let Some((new, used)) = self.replace(part.as_bytes(), creds, percent_encode)? else {
            return Ok(None);
        };
        // Percent-encoding leaves ASCII only.
        let new = String::from_utf8_lossy(&new).into_owned();
        let out = match (place, query) {
            (Place::Path, Some(q)) => format!("{new}?{q}"),
            (Place::Path, None) => new,
            (Place::Query, _) => format!("{path}?{new}"),
        };
        Ok(Some((out, used)))
    }

    /// Puts values in for the placeholders of `creds` in a whole body of `kind`.
    pub(crate) fn substitute_body(
        &self,
        body: &[u8],
        kind: BodyType,
        creds: &[usize],
    ) -> Result<Option<Replaced>, String> {
        match kind {
            BodyType::Form => self.replace(body, creds, percent_encode),
            BodyType::Json => self.replace(body, creds, json_string_content),
        }
    }
}

/// Every byte but the unreserved ones (`A-Z a-z 0-9 - _ . ~`) as `%XX`: safe in a path
/// segment, a query and a form.
fn percent_encode(value: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    Ok(())
}

/// The value as the inside of a JSON string (without the quotes).
fn json_string_content(value: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let text = std::str::from_utf8(value)
        .map_err(|_| "a credential's value is not text and cannot go into JSON".to_string())?;
    let mut quoted = Zeroizing::new(
        serde_json::to_string(text).map_err(|_| "cannot encode a value as JSON".to_string())?,
    );
    let inner = &quoted.as_bytes()[1..quoted.len() - 1];
    out.extend_from_slice(inner);
    quoted.zeroize();
    Ok(())
}

/// The decoded user-pass of a `Basic` credential.
pub(crate) fn basic_decoded(value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let rest = value
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case(b"basic "))
        .map(|_| &value[6..])?;
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()
        .map(Zeroizing::new)
}

/// `bytes` with `%XX` decoded and `+` read as a space.
pub(crate) fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = bytes.get(i + 1..i + 3)
            && let Ok(s) = std::str::from_utf8(h)
            && let Ok(b) = u8::from_str_radix(s, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Rules;
    use aho_corasick::MatchKind;
    use broker_core::SecretValue;

    fn placeholders(value: &str) -> Placeholders {
        let rules = Rules::from_json(
            "api",
            &serde_json::json!({ "hosts": ["api.test"], "query": true, "path": true, "body": true }),
        )
        .unwrap();
        let credentials = vec![ProxiedCredential {
            name: "api".into(),
            rules,
            placeholder: "ph-AAAAAAAAAAAAAAAAAAAAAAAA".into(),
            value: SecretValue::from(value.to_string()),
        }];
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(credentials.iter().map(|c| c.placeholder.as_bytes()))
            .unwrap();
        Placeholders {
            credentials,
            matcher: Some(matcher),
        }
    }

    #[test]
    fn values_are_encoded_for_where_they_go() {
        let p = placeholders("a b/\"c\\d+é");
        let (q, used) = p
            .substitute_uri(
                "/v1/ph-AAAAAAAAAAAAAAAAAAAAAAAA?key=ph-AAAAAAAAAAAAAAAAAAAAAAAA",
                Place::Query,
                &[0],
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            q,
            "/v1/ph-AAAAAAAAAAAAAAAAAAAAAAAA?key=a%20b%2F%22c%5Cd%2B%C3%A9"
        );
        assert_eq!(used.into_iter().collect::<Vec<_>>(), vec![0]);
        let (path, _) = p
            .substitute_uri("/v1/ph-AAAAAAAAAAAAAAAAAAAAAAAA", Place::Path, &[0])
            .unwrap()
            .unwrap();
        assert_eq!(path, "/v1/a%20b%2F%22c%5Cd%2B%C3%A9");
        assert!(
            p.substitute_uri("/v1/x", Place::Query, &[0])
                .unwrap()
                .is_none()
        );
        let (json, _) = p
            .substitute_body(
                br#"{"key":"ph-AAAAAAAAAAAAAAAAAAAAAAAA"}"#,
                BodyType::Json,
                &[0],
            )
            .unwrap()
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed["key"], "a b/\"c\\d+é");
        let (form, _) = p
            .substitute_body(b"key=ph-AAAAAAAAAAAAAAAAAAAAAAAA&x=1", BodyType::Form, &[0])
            .unwrap()
            .unwrap();
        assert_eq!(&form[..], b"key=a%20b%2F%22c%5Cd%2B%C3%A9&x=1");
        // Another credential's placeholders are left alone.
        assert!(
            p.substitute_body(b"ph-AAAAAAAAAAAAAAAAAAAAAAAA", BodyType::Form, &[])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn only_json_and_form_bodies_take_values() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(BodyType::of(&h), Some(BodyType::Json));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.api+json"),
        );
        assert_eq!(BodyType::of(&h), Some(BodyType::Json));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(BodyType::of(&h), Some(BodyType::Form));
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(BodyType::of(&h), None);
        h.remove(header::CONTENT_ENCODING);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(BodyType::of(&h), None);
    }
}
