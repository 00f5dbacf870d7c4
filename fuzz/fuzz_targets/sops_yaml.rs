//! The sops yaml store and the metadata parser on arbitrary text: parse, read the metadata,
//! emit plain and encrypted documents, and parse the emission again (which must succeed).
#![no_main]

use broker_sops::fuzzing::{Format, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = load(Format::Yaml, text);
    }
});
