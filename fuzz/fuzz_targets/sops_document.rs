//! Whole sops documents with a known data key: the value decryption (AES-GCM, `ENC[...]`
//! parsing, types), the encryption rules of the metadata and the MAC check, on arbitrary
//! files; and the round trip: a document encrypted with the key decrypts with it to the same
//! plain document. The first byte picks the format. Seeds are fixture files re-encrypted with
//! the key (`fuzz/corpus/sops_document`).
#![no_main]

use broker_sops::fuzzing::{FORMATS, decrypt_with_key, encrypt_with_key, plain};
use libfuzzer_sys::fuzz_target;

/// The data key of the seed files: a fixed test value, not a secret.
const KEY: [u8; 32] = *b"broker-fuzz-sops-data-key-000000";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let format = FORMATS[usize::from(pick) % FORMATS.len()];
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let _ = decrypt_with_key(format, text, &KEY);
    // Values taken as plaintext, encrypted with the key, then decrypted: the same document.
    let Ok(plain) = plain(format, text) else {
        return;
    };
    let encrypted = match encrypt_with_key(format, text, &KEY) {
        Ok(e) => e,
        Err(e) => panic!(
            "a {} document that parses does not encrypt: {e}",
            format.name()
        ),
    };
    let encrypted = String::from_utf8(encrypted).expect("emitted documents are UTF-8");
    match decrypt_with_key(format, &encrypted, &KEY) {
        Ok(back) => assert!(
            back == plain,
            "{} round trip changed the document:\n{}\n---\n{}",
            format.name(),
            String::from_utf8_lossy(&plain),
            String::from_utf8_lossy(&back)
        ),
        Err(e) => panic!(
            "a {} document we encrypted does not decrypt: {e}",
            format.name()
        ),
    }
});
