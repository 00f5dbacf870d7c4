//! The reference parser: no panic on any text, and a parsed reference prints as text that
//! parses back to the same reference (and prints the same again).
#![no_main]

use broker_core::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(reference) = text.parse::<Reference>() else {
        return;
    };
    let _ = reference.field_path();
    let _ = reference.grammar();
    let shown = reference.to_string();
    let again: Reference = match shown.parse() {
        Ok(r) => r,
        Err(e) => panic!("{text:?} parsed, but its display {shown:?} does not: {e}"),
    };
    assert_eq!(again, reference, "{text:?} -> {shown:?} parses differently");
    assert_eq!(again.to_string(), shown);
    assert_eq!(reference.without_field().field(), None);
});
