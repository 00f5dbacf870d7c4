//! The egress proxy's websocket relay (`broker_proxy::websocket::FrameRedactor`), fed an
//! upstream's frame stream: frames built from arbitrary headers and payloads (values among
//! them) plus raw bytes, pushed in arbitrary splits. Never a panic; the same output whatever
//! the splits; what comes out parses back into whole frames; and no frame's payload holds a
//! value (lower-case alphanumeric values, which no replacement text can spell).
#![no_main]

use arbitrary::Arbitrary;
use broker_core::SecretValue;
use broker_core::redact::{MIN_LEN, Redactor};
use broker_proxy::websocket::FrameRedactor;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Piece {
    /// A frame: first byte (FIN, RSV, opcode) and its payload of raw bytes and values.
    Frame(u8, Vec<u8>, Vec<u8>),
    /// Bytes as they are (broken headers, masks, huge lengths).
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    values: Vec<Vec<u8>>,
    pieces: Vec<Piece>,
    splits: Vec<u8>,
}

fn frame(first: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// The payloads of the whole frames at the start of `bytes`, or `None` if they do not parse.
fn payloads(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(*bytes.get(1)? & 0x7f);
        let (len, head) = match len {
            126 => (usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])), 4),
            127 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(bytes.get(2..10)?);
                (usize::try_from(u64::from_be_bytes(a)).ok()?, 10)
            }
            n => (n, 2),
        };
        out.push(bytes.get(head..head + len)?);
        bytes = &bytes[head + len..];
    }
    Some(out)
}

fuzz_target!(|input: Input| {
    // Lower-case alphanumeric values of redactable length: `[REDACTED:kN]` cannot spell one.
    let values: Vec<SecretValue> = input
        .values
        .iter()
        .take(4)
        .map(|v| {
            let text: Vec<u8> = v.iter().map(|b| b"abcdefghijklmnopqrstuvwxyz0123456789"[usize::from(*b) % 36]).collect();
            let mut text = text;
            while text.len() < MIN_LEN {
                text.push(b'q');
            }
            SecretValue::copy_from(&text)
        })
        .collect();
    let names: Vec<String> = (0..values.len()).map(|i| format!("k{i}")).collect();
    let redactor = Redactor::new(names.iter().zip(values.iter()));
    let mut stream = Vec::new();
    for piece in input.pieces.iter().take(32) {
        match piece {
            Piece::Frame(first, raw, which) => {
                let mut payload = raw.clone();
                for i in which.iter().take(4) {
                    if let Some(v) = values.get(usize::from(*i) % values.len().max(1)) {
                        payload.extend_from_slice(v.expose());
                    }
                }
                frame(*first, &payload, &mut stream);
            }
            Piece::Raw(b) => stream.extend_from_slice(b),
        }
    }

    let mut whole = Vec::new();
    let whole_result = FrameRedactor::new(&redactor).push(&stream, &mut whole);

    let mut relay = FrameRedactor::new(&redactor);
    let mut split_out = Vec::new();
    let mut split_result = Ok(());
    let mut rest = &stream[..];
    let mut splits = input.splits.iter().cycle();
    while !rest.is_empty() && split_result.is_ok() {
        let n = if input.splits.is_empty() {
            rest.len()
        } else {
            (usize::from(*splits.next().unwrap_or(&0)) % 23 + 1).min(rest.len())
        };
        split_result = relay.push(&rest[..n], &mut split_out);
        rest = &rest[n..];
    }
    assert_eq!(whole_result.is_ok(), split_result.is_ok());
    // An error ends the relay; up to it, both saw the same whole frames.
    if whole_result.is_ok() {
        assert_eq!(whole, split_out);
    }
    let frames = payloads(&whole).expect("the relay's output is whole frames");
    for p in frames {
        for v in &values {
            assert!(
                !p.windows(v.expose().len()).any(|w| w == v.expose()),
                "a value passed the relay"
            );
        }
    }
});
