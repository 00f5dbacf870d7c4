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

    /// The credentials whose placeholder appears in a request's head: its headers (`Basic`
    /// credentials decoded), path and query (as they are and percent-decoded).
    pub(crate) fn scan_head<B>(&self, req: &hyper::Request<B>) -> BTreeSet<usize> {
        let mut found = BTreeSet::new();
        self.scan_headers(req.headers(), &mut found);
        if let Some(pq) = req.uri().path_and_query() {
            self.scan(pq.as_str().as_bytes(), &mut found);
        }
        found
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

    /// The credential of `creds` whose placeholder is exactly `text`.
    fn exactly(&self, text: &[u8], creds: &[usize]) -> Option<usize> {
        creds
            .iter()
            .copied()
            .find(|i| self.credentials[*i].placeholder.as_bytes() == text)
    }

    /// Puts the percent-encoded value in for each path segment of `path` that is exactly
    /// the placeholder of one of `creds`; `None` when nothing was replaced.
    pub(crate) fn substitute_path(&self, path: &str, creds: &[usize]) -> Option<Replaced> {
        let mut used = BTreeSet::new();
        let mut out = Zeroizing::new(Vec::with_capacity(path.len() + 64));
        for (n, segment) in path.split('/').enumerate() {
            if n > 0 {
                out.push(b'/');
            }
            match self.exactly(segment.as_bytes(), creds) {
                Some(i) => {
                    percent_encode(self.credentials[i].value.expose(), &mut out);
                    used.insert(i);
                }
                None => out.extend_from_slice(segment.as_bytes()),
            }
        }
        (!used.is_empty()).then_some((out, used))
    }

    /// Puts the percent-encoded value in for each `name=PLACEHOLDER` pair of a query or form
    /// (`a=1&b=2`) whose name is one of that credential's `fields`; a placeholder in any
    /// other pair stays as it is. `None` when nothing was replaced.
    pub(crate) fn substitute_pairs<'f>(
        &self,
        text: &[u8],
        creds: &[usize],
        fields: impl Fn(usize) -> &'f [String],
    ) -> Option<Replaced> {
        let mut used = BTreeSet::new();
        let mut out = Zeroizing::new(Vec::with_capacity(text.len() + 64));
        for (n, pair) in text.split(|b| *b == b'&').enumerate() {
            if n > 0 {
                out.push(b'&');
            }
            let taken = pair.iter().position(|b| *b == b'=').and_then(|eq| {
                let name = percent_decoded(&pair[..eq]);
                let i = self.exactly(&pair[eq + 1..], creds)?;
                fields(i)
                    .iter()
                    .any(|f| f.as_bytes() == name.as_slice())
                    .then_some((eq, i))
            });
            match taken {
                Some((eq, i)) => {
                    out.extend_from_slice(&pair[..=eq]);
                    percent_encode(self.credentials[i].value.expose(), &mut out);
                    used.insert(i);
                }
                None => out.extend_from_slice(pair),
            }
        }
        (!used.is_empty()).then_some((out, used))
    }

    /// Puts values in for the placeholders of `creds` in a whole body of `kind`, only in the
    /// fields each credential's `body` names: a form's `name=PLACEHOLDER` pairs, or a JSON
    /// document's strings at those paths from the root that are exactly the placeholder.
    pub(crate) fn substitute_body(
        &self,
        body: &[u8],
        kind: BodyType,
        creds: &[usize],
    ) -> Result<Option<Replaced>, String> {
        let fields = |i: usize| self.credentials[i].rules.body.as_slice();
        match kind {
            BodyType::Form => Ok(self.substitute_pairs(body, creds, fields)),
            BodyType::Json => {
                let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(body) else {
                    return Ok(None);
                };
                let mut used = BTreeSet::new();
                for &i in creds {
                    for field in fields(i) {
                        let Some(slot) =
                            field.split('.').try_fold(&mut doc, |v, key| v.get_mut(key))
                        else {
                            continue;
                        };
                        if slot
                            .as_str()
                            .is_some_and(|s| self.exactly(s.as_bytes(), &[i]).is_some())
                        {
                            let text = self.credentials[i].value.expose_str().map_err(|_| {
                                "a credential's value is not text and cannot go into JSON"
                                    .to_string()
                            })?;
                            *slot = serde_json::Value::String(text.to_string());
                            used.insert(i);
                        }
                    }
                }
                if used.is_empty() {
                    return Ok(None);
                }
                let out = Zeroizing::new(
                    serde_json::to_vec(&doc).map_err(|_| "cannot encode the body".to_string())?,
                );
                zeroize_strings(&mut doc);
                Ok(Some((out, used)))
            }
        }
    }
}

/// Wipes every string of a JSON document (it held a value).
fn zeroize_strings(doc: &mut serde_json::Value) {
    match doc {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(zeroize_strings),
        serde_json::Value::Object(o) => o.values_mut().for_each(zeroize_strings),
        _ => {}
    }
}

/// Every byte but the unreserved ones (`A-Z a-z 0-9 - _ . ~`) as `%XX`: safe in a path
/// segment, a query and a form.
fn percent_encode(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
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

    const PH: &str = "ph-AAAAAAAAAAAAAAAAAAAAAAAA";

    fn placeholders(value: &str) -> Placeholders {
        let rules = Rules::from_json(
            "api",
            &serde_json::json!({
                "hosts": ["api.test"], "query": ["key"], "path": true, "body": ["key", "auth.token"]
            }),
        )
        .unwrap();
        let credentials = vec![ProxiedCredential {
            name: "api".into(),
            rules,
            placeholder: PH.into(),
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

    fn text(r: Option<Replaced>) -> String {
        String::from_utf8(r.unwrap().0.to_vec()).unwrap()
    }

    #[test]
    fn values_go_only_into_the_named_fields_encoded_for_where_they_go() {
        let p = placeholders("a b/\"c\\d+é");
        let enc = "a%20b%2F%22c%5Cd%2B%C3%A9";
        let fields = |_| p.credentials[0].rules.query.as_slice();
        // Query: only `key=`, and only when the whole value is the placeholder.
        let q = format!("key={PH}&text={PH}&key=x{PH}");
        assert_eq!(
            text(p.substitute_pairs(q.as_bytes(), &[0], fields)),
            format!("key={enc}&text={PH}&key=x{PH}")
        );
        assert!(p.substitute_pairs(b"text=x", &[0], fields).is_none());
        // Path: a whole segment only.
        assert_eq!(
            text(p.substitute_path(&format!("/v1/{PH}/x{PH}"), &[0])),
            format!("/v1/{enc}/x{PH}")
        );
        // JSON: the named paths from the root, exactly the placeholder.
        let body = format!(
            r#"{{"key":"{PH}","text":"say {PH}","auth":{{"token":"{PH}"}},"deep":{{"key":"{PH}"}}}}"#
        );
        let out = text(
            p.substitute_body(body.as_bytes(), BodyType::Json, &[0])
                .unwrap(),
        );
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["key"], "a b/\"c\\d+é");
        assert_eq!(doc["auth"]["token"], "a b/\"c\\d+é");
        assert_eq!(
            doc["text"],
            format!("say {PH}"),
            "other fields keep the placeholder"
        );
        assert_eq!(doc["deep"]["key"], PH, "a path is from the root");
        assert!(out.starts_with(r#"{"key""#), "field order is kept: {out}");
        // Form: like the query.
        assert_eq!(
            text(
                p.substitute_body(
                    format!("key={PH}&text={PH}").as_bytes(),
                    BodyType::Form,
                    &[0]
                )
                .unwrap()
            ),
            format!("key={enc}&text={PH}")
        );
        // Another credential's placeholders are left alone.
        assert!(
            p.substitute_body(format!("key={PH}").as_bytes(), BodyType::Form, &[])
                .unwrap()
                .is_none()
        );
        assert!(
            p.substitute_body(b"not json", BodyType::Json, &[0])
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
