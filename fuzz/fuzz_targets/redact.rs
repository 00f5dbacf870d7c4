//! The redactor, differentially: for the same `Redactor`, a `RedactStream` fed the output in
//! random write splits (then flushed) must produce exactly what whole-buffer `redact` does; and
//! no lower-case alphanumeric value (which no replacement text can spell) survives in it. The
//! output is built from raw bytes and values, prefixes of values and hex/base64 forms of them.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use base64::Engine as _;
use broker_core::SecretValue;
use broker_core::redact::{MIN_LEN, Redactor};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Piece {
    Raw(Vec<u8>),
    Value(u8),
    Prefix(u8, u8),
    Suffix(u8, u8),
    Hex(u8),
    Base64(u8),
    Repeat(u8, u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    values: Vec<Vec<u8>>,
    pieces: Vec<Piece>,
    splits: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let values: Vec<SecretValue> = input
        .values
        .iter()
        .take(8)
        .map(|v| SecretValue::copy_from(v))
        .collect();
    let names: Vec<String> = (0..values.len()).map(|i| format!("k{i}")).collect();
    let redactor = Arc::new(Redactor::new(names.iter().zip(values.iter())));
    let value = |i: u8| -> &[u8] {
        if values.is_empty() {
            return b"";
        }
        values[usize::from(i) % values.len()].expose()
    };
    let mut output = Vec::new();
    for piece in input.pieces.iter().take(64) {
        match piece {
            Piece::Raw(b) => output.extend_from_slice(b),
            Piece::Value(i) => output.extend_from_slice(value(*i)),
            Piece::Prefix(i, n) => {
                let v = value(*i);
                output.extend_from_slice(&v[..usize::from(*n).min(v.len())]);
            }
            Piece::Suffix(i, n) => {
                let v = value(*i);
                output.extend_from_slice(&v[v.len() - usize::from(*n).min(v.len())..]);
            }
            Piece::Hex(i) => output.extend_from_slice(hex::encode(value(*i)).as_bytes()),
            Piece::Base64(i) => output.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(value(*i))
                    .as_bytes(),
            ),
            Piece::Repeat(i, n) => {
                for _ in 0..(n % 4) {
                    output.extend_from_slice(value(*i));
                }
            }
        }
    }

    let whole = redactor.redact(&output).into_owned();

    let mut stream = redactor.stream();
    let mut streamed = Vec::new();
    let mut rest = &output[..];
    let mut splits = input.splits.iter().cycle();
    while !rest.is_empty() {
        let n = if input.splits.is_empty() {
            rest.len()
        } else {
            (usize::from(*splits.next().unwrap_or(&0)) % 17 + 1).min(rest.len())
        };
        stream.push(&rest[..n], &mut streamed);
        assert!(stream.held() < redactor.max_pattern_len().max(1));
        rest = &rest[n..];
    }
    stream.flush(&mut streamed);
    assert!(
        streamed == whole,
        "streaming and whole-buffer redaction differ:\n{:?}\n{:?}",
        String::from_utf8_lossy(&streamed),
        String::from_utf8_lossy(&whole)
    );

    // Naive search: a value of lower-case letters and digits cannot be spelled by
    // `[REDACTED:kN]` or straddle one, so it must not appear in the redacted output at all.
    for v in &values {
        let v = v.expose();
        if v.len() >= MIN_LEN
            && v.iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            assert!(
                !whole.windows(v.len()).any(|w| w == v),
                "value {:?} survives redaction",
                String::from_utf8_lossy(v)
            );
        }
    }
});
