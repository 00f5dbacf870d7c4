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
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use zeroize::{Zeroize, Zeroizing};

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
    /// The fast path: candidate windows by a skip table, then a direct comparison.
    scanner: Option<Scanner>,
    /// The Aho-Corasick automaton over the same patterns, built only when the scanner meets
    /// output that keeps it verifying candidates (output made of near-copies of the values),
    /// so the worst case stays linear in the output.
    automaton: OnceLock<Option<AhoCorasick>>,
    /// Pattern id (index into `sorted`) to index into `names`.
    owner: Vec<usize>,
    /// `[REDACTED:<name>]` for each credential name.
    replacements: Vec<Box<[u8]>>,
    names: Vec<String>,
    /// Every pattern, sorted (also for the "could this tail still become a match" test).
    sorted: Patterns,
    /// Bit set of the first two bytes of every pattern (65,536 bits): a quick "no" for most
    /// positions of that test.
    pairs: Zeroizing<Vec<u64>>,
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
            scanner: None,
            automaton: OnceLock::new(),
            owner: Vec::new(),
            replacements: Vec::new(),
            names: Vec::new(),
            sorted: Patterns::default(),
            pairs: Zeroizing::new(Vec::new()),
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
        let owner = candidates.iter().map(|c| c.1).collect();
        let replacements = names
            .iter()
            .map(|n| format!("[REDACTED:{n}]").into_bytes().into_boxed_slice())
            .collect();
        let sorted = Patterns::new(candidates.iter().map(|c| c.0.as_slice()));
        drop(candidates);
        let mut pairs = Zeroizing::new(vec![0u64; 1024]);
        for p in sorted.iter().filter(|p| p.len() >= 2) {
            let i = (usize::from(p[0]) << 8) | usize::from(p[1]);
            pairs[i >> 6] |= 1 << (i & 63);
        }
        Redactor {
            scanner: Some(Scanner::new(&sorted)),
            automaton: OnceLock::new(),
            pairs,
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
        self.scanner.is_none()
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
        if self.is_empty() {
            return Cow::Borrowed(data);
        }
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        let mut search = Search::default();
        while let Some(m) = self.find(data, pos, &mut search) {
            let buf = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
            buf.extend_from_slice(&data[pos..m.start]);
            buf.extend_from_slice(self.replacement(m.pattern));
            pos = m.end;
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
            held: Held::default(),
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
        let i = self.sorted.partition_point(|p| p < tail);
        i < self.sorted.len() && self.sorted.get(i).starts_with(tail)
    }

    /// The first position at or after `from` from which the rest of `data` could still grow
    /// into a match; `data.len()` when none.
    fn hold_from(&self, data: &[u8], from: usize) -> usize {
        let window = self.max_len.saturating_sub(1);
        let start = from.max(data.len().saturating_sub(window));
        (start..data.len())
            .find(|&p| self.may_begin_pattern(&data[p..]) && self.is_pattern_prefix(&data[p..]))
            .unwrap_or(data.len())
    }

    /// `false` when `tail` (two bytes or more) cannot be the beginning of a pattern because no
    /// pattern starts with its first two bytes.
    fn may_begin_pattern(&self, tail: &[u8]) -> bool {
        if tail.len() < 2 || self.pairs.is_empty() {
            return true;
        }
        let i = (usize::from(tail[0]) << 8) | usize::from(tail[1]);
        self.pairs[i >> 6] & (1 << (i & 63)) != 0
    }

    /// Redacts `data`, appending to `out` everything that is final, and returns the index
    /// from which `data` must be held back.
    fn process(&self, data: &[u8], out: &mut Vec<u8>) -> usize {
        if self.is_empty() {
            out.extend_from_slice(data);
            return data.len();
        }
        let mut pos = 0;
        let mut hold = self.hold_from(data, 0);
        let mut search = Search::default();
        while let Some(m) = self.find(data, pos, &mut search) {
            if m.start >= hold {
                break;
            }
            out.extend_from_slice(&data[pos..m.start]);
            out.extend_from_slice(self.replacement(m.pattern));
            pos = m.end;
            if hold < pos {
                hold = self.hold_from(data, pos);
            }
        }
        let hold = hold.max(pos);
        out.extend_from_slice(&data[pos..hold]);
        hold
    }
}

impl Redactor {
    /// The leftmost match starting at or after `from` (the longest among those starting
    /// there), entirely inside `data`. `search` carries the work done so far over one
    /// haystack: when the scanner keeps stopping at candidates that do not match, the rest
    /// of the haystack goes to the automaton.
    fn find(&self, data: &[u8], from: usize, search: &mut Search) -> Option<Found> {
        let scanner = self.scanner.as_ref()?;
        if !search.automaton {
            match scanner.find(&self.sorted, data, from, search) {
                Step::Done(found) => return found,
                Step::Expensive(at) => {
                    search.automaton = true;
                    return self.find_automaton(data, at);
                }
            }
        }
        self.find_automaton(data, from)
    }

    fn find_automaton(&self, data: &[u8], from: usize) -> Option<Found> {
        let automaton = self
            .automaton
            .get_or_init(|| build_automaton(&self.sorted))
            .as_ref()?;
        let m = automaton.find(aho_corasick::Input::new(data).span(from..data.len()))?;
        Some(Found {
            start: m.start(),
            end: m.end(),
            pattern: m.pattern().as_usize(),
        })
    }
}

/// A match: `data[start..end]` is pattern `pattern` (an index into the sorted patterns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    start: usize,
    end: usize,
    pattern: usize,
}

/// Work done by the scanner over one haystack (see [`Redactor::find`]).
#[derive(Debug, Default)]
struct Search {
    /// Bytes the scanner has moved past.
    scanned: usize,
    /// Pattern comparisons that did not match.
    misses: usize,
    /// Switched to the automaton for the rest of the haystack.
    automaton: bool,
}

enum Step {
    Done(Option<Found>),
    /// Hand over to the automaton from this position (no match starts before it).
    Expensive(usize),
}

/// The automaton over the sorted patterns: a DFA for the sizes a task has (a few hundred
/// values), the compact NFA for very large pattern sets. Built without a prefilter, because
/// the prefilter keeps a plain copy of each pattern that is freed unwiped.
fn build_automaton(patterns: &Patterns) -> Option<AhoCorasick> {
    let bytes = patterns.bytes.len();
    let kind = if bytes <= 512 * 1024 {
        AhoCorasickKind::DFA
    } else {
        AhoCorasickKind::ContiguousNFA
    };
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .kind(Some(kind))
        .prefilter(false)
        .build(patterns.iter())
        .ok()
}

/// A multi-pattern scanner in the Wu–Manber style. Every pattern is at least `m` bytes long;
/// a window of `m` bytes slides over the output and the hash of its last `block` bytes picks
/// how far it may jump: `shift[h]` is, over every pattern's first `m` bytes, the smallest
/// distance from a block with hash `h` to the end of those `m` bytes, so a jump never passes
/// over the start of a match. Where the shift is 0 the patterns whose `m`-byte prefix ends in
/// a block with that hash are compared with the output directly, longest first. Ordinary
/// output (log lines, text) shares few blocks with random-looking secret values and their
/// encodings, so most windows jump by close to `m` bytes.
///
/// The tables hold hashes and pattern lengths, not pattern bytes, and are zeroized on drop.
struct Scanner {
    /// The shortest pattern's length, at most 255.
    m: usize,
    /// Block length: 4, or less when `m` is shorter.
    block: usize,
    /// Bits of a block hash.
    bits: u32,
    /// Jump for each block hash.
    shift: Zeroizing<Vec<u8>>,
    /// `(hash of the block ending the m-prefix, pattern id)`, sorted by hash and, within one
    /// hash, longest pattern first.
    ends: Zeroizing<Vec<(u32, u32)>>,
}

impl Scanner {
    fn new(sorted: &Patterns) -> Scanner {
        let m = sorted
            .iter()
            .map(|p| p.len())
            .min()
            .unwrap_or(1)
            .clamp(1, 255);
        let block = m.min(4);
        let max_shift = m - block + 1;
        // Room for 2× (a task's few hundred patterns: quick to build and wipe) to 4× (larger
        // sets, where the output volume pays for it) the blocks the prefixes hold, between
        // 1 KiB and 256 KiB, so most slots keep the full jump.
        let blocks = sorted.len().saturating_mul(max_shift).max(1);
        let room = if sorted.len() <= 512 { 2 } else { 4 };
        let bits = (usize::BITS - (blocks * room).leading_zeros()).clamp(10, 18);
        let mut shift = Zeroizing::new(vec![u8::try_from(max_shift).unwrap_or(u8::MAX); 1 << bits]);
        let mut ends = Zeroizing::new(Vec::with_capacity(sorted.len()));
        for (id, p) in sorted.iter().enumerate() {
            for j in 0..max_shift {
                let h = hash(&p[j..j + block], bits);
                let distance = u8::try_from(max_shift - 1 - j).unwrap_or(u8::MAX);
                let slot = &mut shift[h];
                if *slot > distance {
                    *slot = distance;
                }
            }
            let end = hash(&p[m - block..m], bits) as u32;
            ends.push((end, u32::try_from(id).unwrap_or(u32::MAX)));
        }
        ends.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                let len = |id: u32| sorted.get(id as usize).len();
                len(b.1).cmp(&len(a.1))
            })
        });
        Scanner {
            m,
            block,
            bits,
            shift,
            ends,
        }
    }

    fn find(&self, sorted: &Patterns, data: &[u8], from: usize, search: &mut Search) -> Step {
        let (m, block) = (self.m, self.block);
        let mut i = from;
        while i + m <= data.len() {
            let h = hash(&data[i + m - block..i + m], self.bits);
            let jump = usize::from(self.shift[h]);
            if jump > 0 {
                i += jump;
                continue;
            }
            let first = self.ends.partition_point(|e| (e.0 as usize) < h);
            for &(eh, id) in &self.ends[first..] {
                if eh as usize != h {
                    break;
                }
                let pattern = sorted.get(id as usize);
                if data[i..].starts_with(pattern) {
                    search.scanned += i - from;
                    return Step::Done(Some(Found {
                        start: i,
                        end: i + pattern.len(),
                        pattern: id as usize,
                    }));
                }
                search.misses += 1;
            }
            i += 1;
            if search.expensive_at(i - from) {
                return Step::Expensive(i);
            }
        }
        Step::Done(None)
    }
}

impl Search {
    /// Whether the comparisons have stopped paying, counting `extra` bytes scanned in the
    /// current call: more than one failed comparison per eight bytes scanned (after a grace
    /// of 512), which ordinary output never comes near.
    fn expensive_at(&self, extra: usize) -> bool {
        self.misses > 512 && self.misses * 8 > self.scanned + extra
    }
}

/// Hash of a block of 1–4 bytes into `bits` bits.
#[inline]
fn hash(block: &[u8], bits: u32) -> usize {
    let mut v: u32 = 0;
    for &b in block {
        v = (v << 8) | u32::from(b);
    }
    (v.wrapping_mul(0x9E37_79B1) >> (32 - bits)) as usize
}

/// The distinct patterns, sorted, in one buffer: zeroized on drop and, when memory locking is
/// on ([`SecretValue::lock_memory`]), `mlock`ed while they exist. (The per-value encodings
/// they are copied from exist only while the redactor is built, in exact-size buffers that are
/// zeroized on drop, and are not locked.)
#[derive(Default)]
struct Patterns {
    bytes: Zeroizing<Vec<u8>>,
    /// `(start, end)` of each pattern in `bytes`.
    spans: Vec<(usize, usize)>,
    locked: bool,
}

impl Patterns {
    fn new<'a>(patterns: impl Iterator<Item = &'a [u8]> + Clone) -> Patterns {
        let total = patterns.clone().map(<[u8]>::len).sum();
        let mut bytes = Zeroizing::new(Vec::with_capacity(total));
        let mut spans = Vec::new();
        for p in patterns {
            spans.push((bytes.len(), bytes.len() + p.len()));
            bytes.extend_from_slice(p);
        }
        let locked = crate::secret::lock_region(&bytes);
        Patterns {
            bytes,
            spans,
            locked,
        }
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn get(&self, id: usize) -> &[u8] {
        let (a, b) = self.spans[id];
        &self.bytes[a..b]
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&(a, b)| &self.bytes[a..b])
    }

    fn partition_point(&self, pred: impl Fn(&[u8]) -> bool) -> usize {
        self.spans
            .partition_point(|&(a, b)| pred(&self.bytes[a..b]))
    }
}

impl Drop for Patterns {
    fn drop(&mut self) {
        self.bytes.as_mut_slice().zeroize();
        crate::secret::unlock_region(self.bytes.as_slice(), self.locked);
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
        // A form is only built when it can differ from one already there (the raw value, or
        // the form without extra escapes): the set of distinct patterns is the same, and a
        // plain token (the common case) costs no JSON work at all.
        let has = |set: &[char]| text.chars().any(|c| set.contains(&c));
        let escaped = text
            .chars()
            .any(|c| c == '"' || c == '\\' || (c as u32) < 0x20);
        for ascii_only in [false, true] {
            if ascii_only && text.is_ascii() {
                break;
            }
            if escaped || ascii_only {
                push(json_escape(text, ascii_only, JSON_NO_EXTRA));
            }
            for extra in [
                JSON_SLASH,
                JSON_LINE_SEPARATORS,
                JSON_HTML_GO,
                JSON_HTML_APOS,
            ] {
                if has(extra) {
                    push(json_escape(text, ascii_only, extra));
                }
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
    held: Held,
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
            self.held.set(&data[keep..], self.redactor.max_len);
        } else {
            // An exact-size buffer (never grown, so never freed with a partial copy), wiped
            // on drop.
            let mut all = Zeroizing::new(Vec::with_capacity(self.held.len() + data.len()));
            all.extend_from_slice(self.held.bytes());
            all.extend_from_slice(data);
            self.held.clear();
            let keep = self.redactor.process(&all, out);
            self.held.set(&all[keep..], self.redactor.max_len);
        }
    }

    /// Releases everything held back (end of stream, or a pause in the output): matches are
    /// still replaced, and a partial value is written as it is.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.held.is_empty() {
            return;
        }
        out.extend_from_slice(&self.redactor.redact(self.held.bytes()));
        self.held.clear();
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

/// The bytes a stream holds back (at most the longest pattern minus one: often most of a
/// value). One buffer, sized for the longest pattern when first needed and never grown in
/// place (a new one replaces it when a rebase brings longer patterns), zeroized when cleared
/// and dropped, and locked like the patterns when memory locking is on.
#[derive(Default)]
struct Held {
    buf: Zeroizing<Vec<u8>>,
    locked: bool,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Wipes the held bytes (the buffer is kept).
    fn clear(&mut self) {
        self.buf.zeroize();
    }

    /// Replaces the held bytes with `tail`; `max_len` sizes a new buffer.
    fn set(&mut self, tail: &[u8], max_len: usize) {
        self.clear();
        if tail.is_empty() {
            return;
        }
        if tail.len() > self.buf.capacity() {
            self.release();
            let mut buf = Zeroizing::new(Vec::with_capacity(tail.len().max(max_len)));
            let capacity = buf.capacity();
            buf.resize(capacity, 0);
            self.locked = crate::secret::lock_region(&buf);
            buf.clear();
            self.buf = buf;
        }
        self.buf.extend_from_slice(tail);
    }

    /// Wipes and unlocks the buffer.
    fn release(&mut self) {
        let capacity = self.buf.capacity();
        self.buf.zeroize();
        if self.locked && capacity > 0 {
            self.buf.resize(capacity, 0);
            crate::secret::unlock_region(&self.buf, true);
            self.buf.clear();
        }
        self.locked = false;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
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

    /// Every match the redactor finds, in order, as the scanner (with its fallback) finds them.
    fn matches(r: &Redactor, data: &[u8]) -> (Vec<Found>, bool) {
        let mut search = Search::default();
        let mut found = Vec::new();
        let mut pos = 0;
        while let Some(m) = r.find(data, pos, &mut search) {
            found.push(m);
            pos = m.end;
        }
        (found, search.automaton)
    }

    /// The same, from the Aho-Corasick automaton alone (leftmost-longest): the oracle.
    fn oracle(r: &Redactor, data: &[u8]) -> Vec<Found> {
        let mut found = Vec::new();
        let mut pos = 0;
        while let Some(m) = r.find_automaton(data, pos) {
            found.push(m);
            pos = m.end;
        }
        found
    }

    #[test]
    fn near_copies_of_a_value_hand_over_to_the_automaton() {
        let v = secret(&format!("zz{}", "ab".repeat(11)));
        let r = Redactor::new([("a", &v)]);
        // Every other window ends the way the value does, and its comparison fails.
        let mut text = b"ab".repeat(10_000);
        text.extend_from_slice(v.expose());
        text.extend_from_slice(&b"a".repeat(100));
        let (found, switched) = matches(&r, &text);
        assert!(switched, "the scanner kept comparing");
        assert_eq!(found, oracle(&r, &text));
        assert_eq!(found.len(), 1);
        let (found, switched) = matches(&r, b"plain log line, nothing to see\n");
        assert!(found.is_empty() && !switched);
    }

    proptest::proptest! {
        /// The scanner finds exactly the matches of a leftmost-longest Aho-Corasick search,
        /// with values that share prefixes and blocks, and text made of their pieces.
        #[test]
        fn scanner_equals_the_automaton(
            values in proptest::collection::vec("[abc=\n]{1,12}", 1..6),
            pieces in proptest::collection::vec((0usize..6, 0usize..13, "[abcx=]{0,5}"), 0..40),
            min_len in 1usize..6,
        ) {
            let secrets: Vec<SecretValue> = values.iter().map(|v| secret(v)).collect();
            let r = Redactor::with_min_len(
                secrets.iter().enumerate().map(|(i, v)| (format!("v{i}"), v)),
                min_len,
            );
            let mut text = Vec::new();
            for (i, n, filler) in &pieces {
                let v = values[i % values.len()].as_bytes();
                text.extend_from_slice(&v[..(*n).min(v.len())]);
                text.extend_from_slice(filler.as_bytes());
            }
            let (found, _) = matches(&r, &text);
            proptest::prop_assert_eq!(found, oracle(&r, &text));
        }

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
