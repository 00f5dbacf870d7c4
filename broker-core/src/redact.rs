//! Streaming redaction of secret values and their common encodings.
//!
//! A [`Redactor`] is built from `(credential name, value)` pairs. For every value of at least
//! [`MIN_LEN`] bytes it matches the raw bytes and the encodings a program is likely to print:
//!
//! - base64, standard and URL-safe alphabets, with and without padding, plus the stretch of
//!   characters that stays the same when the value sits inside a longer base64 text (at any of
//!   the three byte alignments; only when that stretch is at least [`EMBEDDED_BASE64_MIN`]
//!   characters long, so short values do not turn ordinary base64 into false positives);
//! - hex, lower and upper case;
//! - percent-encoding (RFC 3986 unreserved characters kept, upper- and lower-case hex; and the
//!   common variant that also keeps `/`);
//! - JSON-string escaping, whole-value forms only, lower-case hex: as `serde_json` writes it,
//!   with `\/`, ASCII-only as Python's `json.dumps` writes it, HTML-safe as Go's
//!   `encoding/json` writes it (`<>&` and U+2028/2029 as `\u003c`...; or only U+2028/2029),
//!   HTML-safe with `'` too, and each HTML-safe form also ASCII-only;
//! - for multi-line values, the value with `\n` turned into `\r\n` (what a terminal's line
//!   discipline does to output).
//!
//! Each match is replaced by `[REDACTED:<name>]`. When patterns overlap or share a prefix, the
//! leftmost match wins and, among matches starting at the same byte, the longest. Everything
//! else, binary included, passes through byte for byte.
//!
//! [`RedactStream`] applies a redactor to a stream of writes: it holds back only the shortest
//! tail of the data seen so far that could still be the beginning of a pattern (never more
//! than the longest pattern minus one byte), so a value split across writes, even one byte at
//! a time, is still caught, while ordinary output, and in particular every line that does not
//! end in the beginning of a secret, goes out at once. [`RedactStream::flush`] releases the
//! held tail; callers flush on a short timeout so a prompt that happens to end like a secret
//! does not stall.
//!
//! The process-wide [`live`] redactor covers the broker's own logs: `broker run` installs one
//! built from the values it holds with [`set_live`] and removes it with [`clear_live`].
//!
//! ```
//! use broker_core::SecretValue;
//! use broker_core::redact::Redactor;
//!
//! let token = SecretValue::copy_from(b"s3cr3t-t0ken-value");
//! let redactor = Redactor::new([("api", &token)]);
//! let out = redactor.redact(b"token=s3cr3t-t0ken-value hex=73336372337"); // hex is partial
//! assert_eq!(&*out, b"token=[REDACTED:api] hex=73336372337");
//! ```

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, PoisonError, RwLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

use crate::SecretValue;

/// Values shorter than this many bytes are not used as patterns: they would redact ordinary
/// output, and hiding them does not protect much. [`Redactor::skipped`] names them.
pub const MIN_LEN: usize = 4;

/// Minimum length, in characters, of the part of a base64 encoding used to find a value
/// embedded in a longer base64 text.
pub const EMBEDDED_BASE64_MIN: usize = 16;

/// Matches secret values and their encodings; immutable once built. Holds derived copies of
/// the values (zeroized on drop where this crate owns the memory), so keep it no longer than
/// the values themselves.
///
/// Every pattern is built in an exact-size [`Zeroizing`] buffer (no growing buffer frees a
/// partial copy) and is zeroized when the redactor is dropped. The automaton is
/// `aho-corasick`'s: its transition tables encode the patterns and are freed unwiped. It is
/// built without a prefilter, because the prefilter keeps a plain copy of each pattern that
/// is freed unwiped (and for the hundreds of patterns a task usually has, `aho-corasick` uses
/// none anyway).
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    /// Pattern id to index into `names`.
    owner: Vec<usize>,
    /// `[REDACTED:<name>]` for each credential name.
    replacements: Vec<Box<[u8]>>,
    names: Vec<String>,
    /// Every pattern, sorted, for the "could this tail still become a match" test.
    sorted: Vec<Zeroizing<Vec<u8>>>,
    max_len: usize,
    skipped: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("credentials", &self.names)
            .field("patterns", &self.sorted.len())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::empty()
    }
}

impl Redactor {
    /// A redactor that matches nothing.
    pub fn empty() -> Redactor {
        Redactor {
            matcher: None,
            owner: Vec::new(),
            replacements: Vec::new(),
            names: Vec::new(),
            sorted: Vec::new(),
            max_len: 0,
            skipped: Vec::new(),
        }
    }

    /// Builds a redactor for `(credential name, value)` pairs with the default minimum length.
    pub fn new<'a, N: AsRef<str> + 'a>(
        values: impl IntoIterator<Item = (N, &'a SecretValue)>,
    ) -> Redactor {
        Self::with_min_len(values, MIN_LEN)
    }

    /// Builds a redactor, ignoring values shorter than `min_len` bytes (at least 1).
    pub fn with_min_len<'a, N: AsRef<str> + 'a>(
        values: impl IntoIterator<Item = (N, &'a SecretValue)>,
        min_len: usize,
    ) -> Redactor {
        let min_len = min_len.max(1);
        let mut names: Vec<String> = Vec::new();
        let mut skipped: Vec<String> = Vec::new();
        let mut candidates: Vec<(Zeroizing<Vec<u8>>, usize)> = Vec::new();
        for (name, value) in values {
            let name = name.as_ref();
            if value.len() < min_len {
                if !value.is_empty() && !skipped.iter().any(|s| s == name) {
                    skipped.push(name.to_string());
                }
                continue;
            }
            let index = match names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    names.push(name.to_string());
                    names.len() - 1
                }
            };
            for pattern in encodings(value.expose()) {
                if pattern.len() >= min_len {
                    candidates.push((pattern, index));
                }
            }
        }
        // One pattern per byte string; the first credential that produced it names it.
        candidates.sort_by(|a, b| a.0.as_slice().cmp(b.0.as_slice()).then(a.1.cmp(&b.1)));
        candidates.dedup_by(|a, b| a.0.as_slice() == b.0.as_slice());
        if candidates.is_empty() {
            return Redactor {
                names,
                skipped,
                ..Redactor::empty()
            };
        }
        let max_len = candidates.iter().map(|c| c.0.len()).max().unwrap_or(0);
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(choose_kind(&candidates)))
            // The packed prefilter copies every pattern into buffers freed unwiped.
            .prefilter(false)
            .build(candidates.iter().map(|c| c.0.as_slice()))
            .ok();
        let owner = candidates.iter().map(|c| c.1).collect();
        let replacements = names
            .iter()
            .map(|n| format!("[REDACTED:{n}]").into_bytes().into_boxed_slice())
            .collect();
        let sorted = candidates.into_iter().map(|c| c.0).collect();
        Redactor {
            matcher,
            owner,
            replacements,
            names,
            sorted,
            max_len,
            skipped,
        }
    }

    /// Whether this redactor matches nothing.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// Names of the credentials whose values are matched.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Names of credentials with a (non-empty) value shorter than the minimum length, which
    /// are therefore not redacted.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Number of distinct byte patterns (values and encodings).
    pub fn pattern_count(&self) -> usize {
        self.sorted.len()
    }

    /// Length of the longest pattern; a stream holds back at most this minus one byte.
    pub fn max_pattern_len(&self) -> usize {
        self.max_len
    }

    /// Redacts a complete buffer (no state carried between calls).
    pub fn redact<'h>(&self, data: &'h [u8]) -> Cow<'h, [u8]> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(data);
        };
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        for m in matcher.find_iter(data) {
            let buf = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
            buf.extend_from_slice(&data[pos..m.start()]);
            buf.extend_from_slice(self.replacement(m.pattern().as_usize()));
            pos = m.end();
        }
        match out {
            None => Cow::Borrowed(data),
            Some(mut buf) => {
                buf.extend_from_slice(&data[pos..]);
                Cow::Owned(buf)
            }
        }
    }

    /// Redacts a UTF-8 string (a replacement never splits a character that was not part of
    /// a match, so the result stays valid UTF-8 when the patterns are).
    pub fn redact_str<'h>(&self, text: &'h str) -> Cow<'h, str> {
        match self.redact(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// A stream that redacts across write boundaries.
    pub fn stream(self: &Arc<Self>) -> RedactStream {
        RedactStream {
            redactor: Arc::clone(self),
            held: Zeroizing::new(Vec::new()),
        }
    }

    fn replacement(&self, pattern: usize) -> &[u8] {
        self.owner
            .get(pattern)
            .and_then(|&i| self.replacements.get(i))
            .map_or(b"[REDACTED]".as_slice(), |r| r)
    }

    /// Whether `tail` is the beginning (or all) of some pattern.
    fn is_pattern_prefix(&self, tail: &[u8]) -> bool {
        let i = self.sorted.partition_point(|p| p.as_slice() < tail);
        self.sorted.get(i).is_some_and(|p| p.starts_with(tail))
    }

    /// The first position at or after `from` from which the rest of `data` could still grow
    /// into a match; `data.len()` when none.
    fn hold_from(&self, data: &[u8], from: usize) -> usize {
        let window = self.max_len.saturating_sub(1);
        let start = from.max(data.len().saturating_sub(window));
        (start..data.len())
            .find(|&p| self.is_pattern_prefix(&data[p..]))
            .unwrap_or(data.len())
    }

    /// Redacts `data`, appending to `out` everything that is final, and returns the index
    /// from which `data` must be held back.
    fn process(&self, data: &[u8], out: &mut Vec<u8>) -> usize {
        let Some(matcher) = &self.matcher else {
            out.extend_from_slice(data);
            return data.len();
        };
        let mut pos = 0;
        let mut hold = self.hold_from(data, 0);
        for m in matcher.find_iter(data) {
            if m.start() >= hold {
                break;
            }
            out.extend_from_slice(&data[pos..m.start()]);
            out.extend_from_slice(self.replacement(m.pattern().as_usize()));
            pos = m.end();
            if hold < pos {
                hold = self.hold_from(data, pos);
            }
        }
        let hold = hold.max(pos);
        out.extend_from_slice(&data[pos..hold]);
        hold
    }
}

/// Picks the automaton: a DFA is fastest and affordable for the sizes a task has (a few
/// hundred values); very large pattern sets fall back to the compact NFA.
fn choose_kind(candidates: &[(Zeroizing<Vec<u8>>, usize)]) -> AhoCorasickKind {
    let bytes: usize = candidates.iter().map(|c| c.0.len()).sum();
    if bytes <= 512 * 1024 {
        AhoCorasickKind::DFA
    } else {
        AhoCorasickKind::ContiguousNFA
    }
}

/// The byte patterns for one value: the raw bytes and every encoding this module matches.
fn encodings(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    let mut push = |p: Vec<u8>| out.push(Zeroizing::new(p));
    push(value.to_vec());
    let bare_newline = |i: usize| value[i] == b'\n' && (i == 0 || value[i - 1] != b'\r');
    let bare = (0..value.len()).filter(|&i| bare_newline(i)).count();
    if value.contains(&b'\n') {
        let mut crlf = Vec::with_capacity(value.len() + bare);
        for (i, &b) in value.iter().enumerate() {
            if bare_newline(i) {
                crlf.push(b'\r');
            }
            crlf.push(b);
        }
        push(crlf);
    }
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        push(engine.encode(value).into_bytes());
    }
    for alphabet in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3 {
            if let Some(core) = embedded_base64(alphabet, value, offset) {
                push(core);
            }
        }
    }
    push(hex(value, b"0123456789abcdef"));
    push(hex(value, b"0123456789ABCDEF"));
    push(percent(value, b"0123456789ABCDEF", b""));
    push(percent(value, b"0123456789abcdef", b""));
    push(percent(value, b"0123456789ABCDEF", b"/"));
    if let Ok(text) = std::str::from_utf8(value) {
        // Whole-value forms real encoders write (lower-case hex, as they all emit it):
        // serde_json / Python (ensure_ascii=False); Python's default (ASCII only); PHP's
        // json_encode (ASCII only, `\/`); Go's encoding/json (`<>&` and U+2028/2029 as
        // `\u003c`...), with SetEscapeHTML(false) (U+2028/2029 only); HTML-safe JS encoders
        // (also `'`); and each HTML-safe form with everything non-ASCII escaped as well.
        for ascii_only in [false, true] {
            push(json_escape(text, ascii_only, JSON_SLASH));
            push(json_escape(text, ascii_only, JSON_NO_EXTRA));
            for extra in [JSON_LINE_SEPARATORS, JSON_HTML_GO, JSON_HTML_APOS] {
                push(json_escape(text, ascii_only, extra));
            }
        }
    }
    out
}

/// No characters escaped beyond what JSON requires.
const JSON_NO_EXTRA: &[char] = &[];
/// `/` as `\/` (PHP's `json_encode`); written as two characters, not `\u002f`.
const JSON_SLASH: &[char] = &['/'];
/// Go with `SetEscapeHTML(false)`: only the JavaScript line terminators.
const JSON_LINE_SEPARATORS: &[char] = &['\u{2028}', '\u{2029}'];
/// Go's default HTML-safe escaping.
const JSON_HTML_GO: &[char] = &['<', '>', '&', '\u{2028}', '\u{2029}'];
/// HTML-safe escaping that also covers the apostrophe (several JavaScript encoders).
const JSON_HTML_APOS: &[char] = &['<', '>', '&', '\'', '\u{2028}', '\u{2029}'];

/// The characters of the base64 encoding of `value` that do not depend on its neighbours
/// when it starts `offset` bytes into a 3-byte group of a longer text.
fn embedded_base64(
    engine: &base64::engine::GeneralPurpose,
    value: &[u8],
    offset: usize,
) -> Option<Vec<u8>> {
    let mut shifted = Zeroizing::new(Vec::with_capacity(offset + value.len()));
    shifted.resize(offset, 0);
    shifted.extend_from_slice(value);
    let encoded = Zeroizing::new(engine.encode(&*shifted).into_bytes());
    // Leading characters that mix in the unknown preceding bytes: 4/3 per byte, rounded up.
    let skip = (offset * 8).div_ceil(6);
    // Only characters whose six bits all come from `value`.
    let full_bits = shifted.len() * 8;
    let keep_end = full_bits / 6;
    if keep_end <= skip || keep_end - skip < EMBEDDED_BASE64_MIN {
        return None;
    }
    Some(encoded[skip..keep_end].to_vec())
}

fn hex(value: &[u8], digits: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() * 2);
    for &b in value {
        out.push(digits[usize::from(b >> 4)]);
        out.push(digits[usize::from(b & 15)]);
    }
    out
}

fn percent(value: &[u8], digits: &[u8; 16], also_keep: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || also_keep.contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 15)],
            ]);
        }
    }
    out
}

/// The inside of a JSON string literal holding `text`: non-ASCII characters as `\uXXXX`
/// (surrogate pairs beyond the BMP) when `ascii_only`, and each character of `extra` as
/// `\uXXXX` (except `/`, as `\/`), all in lower-case hex. The result sits in a buffer of
/// exactly its length (measured first), so no growing buffer frees a partial copy.
fn json_escape(text: &str, ascii_only: bool, extra: &[char]) -> Vec<u8> {
    let mut len = 0;
    escape_into(text, ascii_only, extra, |piece| len += piece.len());
    let mut out = Vec::with_capacity(len);
    escape_into(text, ascii_only, extra, |piece| {
        out.extend_from_slice(piece)
    });
    out
}

/// Feeds the pieces of [`json_escape`]'s output to `emit`.
fn escape_into(text: &str, ascii_only: bool, extra: &[char], mut emit: impl FnMut(&[u8])) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut utf8 = [0u8; 4];
    for c in text.chars() {
        match c {
            '"' => emit(b"\\\""),
            '\\' => emit(b"\\\\"),
            '\n' => emit(b"\\n"),
            '\r' => emit(b"\\r"),
            '\t' => emit(b"\\t"),
            '\u{8}' => emit(b"\\b"),
            '\u{c}' => emit(b"\\f"),
            '/' if extra.contains(&'/') => emit(b"\\/"),
            c if (c as u32) < 0x20 || (ascii_only && !c.is_ascii()) || extra.contains(&c) => {
                let mut units = [0u16; 2];
                for &mut unit in c.encode_utf16(&mut units) {
                    let digit = |shift: u16| HEX[usize::from((unit >> shift) & 15)];
                    emit(&[b'\\', b'u', digit(12), digit(8), digit(4), digit(0)]);
                }
            }
            c => emit(c.encode_utf8(&mut utf8).as_bytes()),
        }
    }
}

/// Redaction state for one output stream (see the module docs).
pub struct RedactStream {
    redactor: Arc<Redactor>,
    held: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for RedactStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactStream")
            .field("held_bytes", &self.held.len())
            .finish()
    }
}

impl RedactStream {
    /// Feeds `data`; appends to `out` everything that can no longer be part of a match.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.held.is_empty() {
            let keep = self.redactor.process(data, out);
            self.held.extend_from_slice(&data[keep..]);
        } else {
            append(&mut self.held, data);
            let all = std::mem::take(&mut *self.held);
            let all = Zeroizing::new(all);
            let keep = self.redactor.process(&all, out);
            self.held.extend_from_slice(&all[keep..]);
        }
    }

    /// Releases everything held back (end of stream, or a pause in the output): matches are
    /// still replaced, and a partial value is written as it is.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut *self.held);
        let held = Zeroizing::new(held);
        out.extend_from_slice(&self.redactor.redact(&held));
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The redactor this stream uses.
    pub fn redactor(&self) -> &Arc<Redactor> {
        &self.redactor
    }

    /// Switches to `redactor` (one that matches more values, after a credential was
    /// re-minted). Held bytes are kept and matched against the new redactor on the next push,
    /// so a value split across the switch is still caught.
    pub fn rebase(&mut self, redactor: Arc<Redactor>) {
        self.redactor = redactor;
    }
}

/// Appends `data` to `held` without a reallocation that would free the held bytes unwiped:
/// when `held` is full, its bytes move to a new buffer and the old one is zeroized.
fn append(held: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    let needed = held.len() + data.len();
    if needed > held.capacity() {
        let mut bigger = Zeroizing::new(Vec::with_capacity(needed.max(2 * held.capacity())));
        bigger.extend_from_slice(held);
        *held = bigger;
    }
    held.extend_from_slice(data);
}

/// A [`Write`] adapter that redacts everything written through it. Dropping it flushes what
/// it holds; call [`Write::flush`] to release held bytes earlier.
pub struct RedactingWriter<W: Write> {
    stream: RedactStream,
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> fmt::Debug for RedactingWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactingWriter")
            .field("stream", &self.stream)
            .finish()
    }
}

impl<W: Write> RedactingWriter<W> {
    /// Wraps `inner`.
    pub fn new(redactor: &Arc<Redactor>, inner: W) -> Self {
        RedactingWriter {
            stream: redactor.stream(),
            inner,
            buf: Vec::new(),
        }
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.clear();
        self.stream.push(data, &mut self.buf);
        self.inner.write_all(&self.buf)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.stream.flush(&mut self.buf);
        self.inner.write_all(&self.buf)?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

static LIVE: RwLock<Option<Arc<Redactor>>> = RwLock::new(None);

/// Installs `redactor` as the process-wide redactor for the broker's own output (logs,
/// panic messages, error lines).
pub fn set_live(redactor: Arc<Redactor>) {
    *LIVE.write().unwrap_or_else(PoisonError::into_inner) = Some(redactor);
}

/// Removes the process-wide redactor (once the values it matches are gone).
pub fn clear_live() {
    *LIVE.write().unwrap_or_else(PoisonError::into_inner) = None;
}

/// The process-wide redactor, if one is installed.
pub fn live() -> Option<Arc<Redactor>> {
    LIVE.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Redacts `data` with the process-wide redactor (unchanged when none is installed).
pub fn redact_live(data: &[u8]) -> Cow<'_, [u8]> {
    match live() {
        Some(r) => Cow::Owned(r.redact(data).into_owned()),
        None => Cow::Borrowed(data),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretValue {
        SecretValue::copy_from(s.as_bytes())
    }

    fn stream_all(r: &Arc<Redactor>, chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = r.stream();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.flush(&mut out);
        out
    }

    const CANARY: &str = "canary-7f3a9c/secret+value\"é";

    #[test]
    fn every_encoding_is_replaced() {
        let v = secret(CANARY);
        let r = Redactor::new([("db", &v)]);
        let raw = CANARY.as_bytes();
        let mut shifted = b"x".to_vec();
        shifted.extend_from_slice(raw);
        shifted.extend_from_slice(b"yz");
        let embedded = format!("prefix{}suffix", STANDARD.encode(&shifted));
        let cases = [
            raw.to_vec(),
            STANDARD.encode(raw).into_bytes(),
            STANDARD_NO_PAD.encode(raw).into_bytes(),
            URL_SAFE.encode(raw).into_bytes(),
            URL_SAFE_NO_PAD.encode(raw).into_bytes(),
            hex(raw, b"0123456789abcdef"),
            hex(raw, b"0123456789ABCDEF"),
            percent(raw, b"0123456789ABCDEF", b""),
            serde_json::to_string(CANARY).unwrap().into_bytes(),
            b"{\"k\": \"canary-7f3a9c\\/secret+value\\\"\\u00e9\"}".to_vec(),
        ];
        for case in cases {
            let mut text = b"before ".to_vec();
            text.extend_from_slice(&case);
            text.extend_from_slice(b" after");
            let out = r.redact(&text);
            let shown = String::from_utf8_lossy(&out);
            assert!(shown.contains("[REDACTED:db]"), "not redacted: {shown}");
            assert!(!shown.contains("canary"), "leaked: {shown}");
        }
        let out = r.redact(embedded.as_bytes());
        assert!(String::from_utf8_lossy(&out).contains("[REDACTED:db]"));
    }

    /// Issue 10: Go's encoding/json writes `&`, `<`, `>` as `\u0026`, `\u003c`, `\u003e`, so a
    /// URL with a query string got through. Expected strings are what the encoders emit
    /// (Python's from `json.dumps`; Go's and the JS HTML-safe form written out by hand).
    #[test]
    fn whole_value_json_forms_of_real_encoders_are_replaced() {
        let url = secret("https://hooks.example/cb?a=1&sig=c4n4ry-5ec");
        let mixed = secret("https://h.example/cb?a=1&b=<x>'é😀\u{2028}");
        let r = Redactor::new([("url", &url), ("mixed", &mixed)]);
        let cases = [
            // Go json.Marshal (HTML-safe by default).
            ("url", r"https://hooks.example/cb?a=1\u0026sig=c4n4ry-5ec"),
            (
                "mixed",
                r"https://h.example/cb?a=1\u0026b=\u003cx\u003e'é😀\u2028",
            ),
            // Go with SetEscapeHTML(false): only U+2028/2029.
            ("mixed", r"https://h.example/cb?a=1&b=<x>'é😀\u2028"),
            // Python json.dumps (ensure_ascii=True, the default).
            (
                "mixed",
                r"https://h.example/cb?a=1&b=<x>'\u00e9\ud83d\ude00\u2028",
            ),
            // HTML-safe JS encoders (also `'`).
            (
                "mixed",
                r"https://h.example/cb?a=1\u0026b=\u003cx\u003e\u0027é😀\u2028",
            ),
            // HTML-safe and ASCII-only together, with and without `'`.
            (
                "mixed",
                r"https://h.example/cb?a=1\u0026b=\u003cx\u003e\u0027\u00e9\ud83d\ude00\u2028",
            ),
            (
                "mixed",
                r"https://h.example/cb?a=1\u0026b=\u003cx\u003e'\u00e9\ud83d\ude00\u2028",
            ),
        ];
        for (name, encoded) in cases {
            let text = format!("{{\"v\":\"{encoded}\"}}");
            assert_eq!(
                r.redact_str(&text),
                format!("{{\"v\":\"[REDACTED:{name}]\"}}"),
                "not redacted: {encoded}"
            );
        }
    }

    #[test]
    fn longest_match_wins_and_names_follow_values() {
        let short = secret("abcd-1234");
        let long = secret("abcd-1234-extended");
        let other = secret("zzzz-1234-abcd");
        let r = Redactor::new([("short", &short), ("long", &long), ("other", &other)]);
        let out = r.redact(b"a abcd-1234-extended b abcd-1234 c zzzz-1234-abcd-1234");
        assert_eq!(
            &*out,
            b"a [REDACTED:long] b [REDACTED:short] c [REDACTED:other]-1234".as_slice()
        );
    }

    #[test]
    fn short_values_are_not_patterns() {
        let tiny = secret("abc");
        let ok = secret("abcd");
        let r = Redactor::new([("tiny", &tiny), ("ok", &ok)]);
        assert_eq!(r.skipped(), ["tiny".to_string()]);
        assert_eq!(&*r.redact(b"abc abcd"), b"abc [REDACTED:ok]".as_slice());
        assert!(Redactor::new([("t", &tiny)]).is_empty());
    }

    #[test]
    fn split_writes_are_caught_even_one_byte_at_a_time() {
        let v = secret("multi\nline\nsecret");
        let w = secret("plain-secret-42");
        let r = Arc::new(Redactor::new([("m", &v), ("p", &w)]));
        let text = b"x plain-secret-42 y multi\nline\nsecret z multi\r\nline\r\nsecret\n";
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        let out = stream_all(&r, &bytes);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x [REDACTED:p] y [REDACTED:m] z [REDACTED:m]\n"
        );
    }

    #[test]
    fn ordinary_output_is_not_held() {
        let v = secret("hunter2-hunter2");
        let r = Arc::new(Redactor::new([("pw", &v)]));
        let mut s = r.stream();
        let mut out = Vec::new();
        s.push(b"hello world\n", &mut out);
        assert_eq!(out, b"hello world\n");
        s.push(b"prompt> hunt", &mut out);
        assert_eq!(s.held(), 4, "only a possible beginning is held");
        assert_eq!(out, b"hello world\nprompt> ");
        s.flush(&mut out);
        assert_eq!(out, b"hello world\nprompt> hunt");
        assert!(s.held() < r.max_pattern_len());
    }

    #[test]
    fn binary_passes_through() {
        let v = secret("s3cret-bytes");
        let r = Arc::new(Redactor::new([("b", &v)]));
        let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        assert_eq!(&*r.redact(&data), data.as_slice());
        let chunks: Vec<&[u8]> = data.chunks(7).collect();
        assert_eq!(stream_all(&r, &chunks), data);
    }

    #[test]
    fn debug_shows_names_only() {
        let v = secret(CANARY);
        let r = Arc::new(Redactor::new([("db", &v)]));
        let text = format!("{r:?} {:?}", r.stream());
        assert!(text.contains("db") && !text.contains("canary"), "{text}");
    }

    #[test]
    fn writer_redacts_and_flushes_on_drop() {
        let v = secret("writer-secret");
        let r = Arc::new(Redactor::new([("w", &v)]));
        let mut sink = Vec::new();
        {
            let mut w = RedactingWriter::new(&r, &mut sink);
            w.write_all(b"a writer-").unwrap();
            w.write_all(b"secret b writer").unwrap();
        }
        assert_eq!(sink, b"a [REDACTED:w] b writer");
    }

    #[test]
    fn live_registry() {
        let v = secret("live-registry-value");
        set_live(Arc::new(Redactor::new([("l", &v)])));
        assert_eq!(
            &*redact_live(b"x live-registry-value"),
            b"x [REDACTED:l]".as_slice()
        );
        clear_live();
        assert!(live().is_none());
    }

    proptest::proptest! {
        #[test]
        fn streaming_equals_whole_buffer(
            values in proptest::collection::vec("[ab\n]{4,9}", 1..4),
            text in "[ab\nxAY=]{0,200}",
            cuts in proptest::collection::vec(0usize..200, 0..20),
        ) {
            let secrets: Vec<SecretValue> = values.iter().map(|v| secret(v)).collect();
            let r = Arc::new(Redactor::new(
                secrets.iter().enumerate().map(|(i, v)| (format!("v{i}"), v)),
            ));
            let text = text.into_bytes();
            let whole = r.redact(&text).into_owned();
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= text.len()).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(&text[last..c]);
                last = c;
            }
            chunks.push(&text[last..]);
            proptest::prop_assert_eq!(stream_all(&r, &chunks), whole);
        }
    }
}
