//! The age file wrapper: decrypting arbitrary bytes (armored or binary) with a fixed identity
//! never panics, the header stanza count never panics, and what we encrypt to the identity
//! decrypts to the same bytes. Seeds (`fuzz/corpus/age_decrypt`) are encrypted to the identity.
#![no_main]

use std::sync::OnceLock;

use broker_age::fuzzing::{Identities, recipient_stanzas};
use libfuzzer_sys::fuzz_target;

/// The X25519 identity of the seed files, built from fixed test bytes (not a secret).
fn identity() -> &'static Identities {
    static ID: OnceLock<Identities> = OnceLock::new();
    ID.get_or_init(|| {
        let hrp = bech32::Hrp::parse("age-secret-key-").expect("valid hrp");
        let text = bech32::encode::<bech32::Bech32>(hrp, b"broker-fuzz-age-identity-0000000")
            .expect("encodes")
            .to_uppercase();
        Identities::parse(text.as_bytes()).expect("the fixed identity parses")
    })
}

fuzz_target!(|data: &[u8]| {
    let id = identity();
    let _ = recipient_stanzas(data);
    let _ = id.decrypt(data);
    if data.len() <= 256 {
        let armored = data.first().is_some_and(|b| b & 1 == 1);
        let sealed = id.encrypt(data, armored).expect("encrypts");
        let opened = id.decrypt(&sealed).expect("decrypts what it encrypted");
        assert_eq!(&opened[..], data);
        assert_eq!(recipient_stanzas(&sealed), Some(1));
    }
});
