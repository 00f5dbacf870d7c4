//! The crate's X25519 identity (aws-lc) against the `age` crate's own: for generated files and
//! for every malformed stanza we can think of, both give the same outcome — the same plaintext
//! or file key, the same `DecryptError` variant, or `None` (not ours).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{Read, Write};

use age::secrecy::ExposeSecret;
use age::{DecryptError, Recipient as _};
use age_core::format::{FileKey, Stanza};
use age_core::primitives::{aead_encrypt, hkdf};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey};
use base64::Engine as _;
use base64::prelude::{BASE64_STANDARD, BASE64_STANDARD_NO_PAD, BASE64_URL_SAFE_NO_PAD};
use broker_age::fuzzing::{X25519Identity, x25519_identity};

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.next() as u8)
    }
}

/// An identity pair: the `age` crate's and ours, for the same key.
struct Pair {
    theirs: age::x25519::Identity,
    ours: X25519Identity,
}

impl Pair {
    fn generate() -> Pair {
        Pair::from(age::x25519::Identity::generate())
    }
    fn from(theirs: age::x25519::Identity) -> Pair {
        let ours = x25519_identity(&theirs).unwrap();
        Pair { theirs, ours }
    }
    fn recipient(&self) -> age::x25519::Recipient {
        self.theirs.to_public()
    }
    /// The 32 secret bytes, to compute shared secrets the test needs.
    fn secret(&self) -> [u8; 32] {
        let text = self.theirs.to_string();
        age_core::primitives::bech32_decode(
            text.expose_secret(),
            |_| (),
            |_| Ok(()),
            |_, bytes| Ok(bytes.collect::<Vec<u8>>().try_into().unwrap()),
        )
        .unwrap()
    }
}

/// What an identity made of a stanza, comparable.
#[derive(Debug, PartialEq)]
enum Outcome {
    NotOurs,
    FileKey([u8; 16]),
    Error(String),
}

fn error_name(e: &DecryptError) -> String {
    // The variant, without any payload.
    let text = format!("{e:?}");
    text.split(['(', ' ', '{']).next().unwrap().to_string()
}

fn outcome(identity: &dyn age::Identity, stanza: &Stanza) -> Outcome {
    match identity.unwrap_stanza(stanza) {
        None => Outcome::NotOurs,
        Some(Ok(key)) => Outcome::FileKey(*key.expose_secret()),
        Some(Err(e)) => Outcome::Error(error_name(&e)),
    }
}

/// Both identities give the same outcome for `stanza`; returns it.
fn same(pair: &Pair, stanza: &Stanza) -> Outcome {
    let theirs = outcome(&pair.theirs, stanza);
    let ours = outcome(&pair.ours, stanza);
    assert_eq!(
        ours,
        theirs,
        "stanza {} {:?} body {} bytes",
        stanza.tag,
        stanza.args,
        stanza.body.len()
    );
    ours
}

fn invalid_header() -> Outcome {
    Outcome::Error("InvalidHeader".to_string())
}

fn wrap(recipient: &age::x25519::Recipient, key: [u8; 16]) -> Stanza {
    let (mut stanzas, labels) = recipient
        .wrap_file_key(&FileKey::new(Box::new(key)))
        .unwrap();
    assert!(labels.is_empty());
    assert_eq!(stanzas.len(), 1);
    stanzas.remove(0)
}

fn stanza(tag: &str, args: &[&str], body: &[u8]) -> Stanza {
    Stanza {
        tag: tag.to_string(),
        args: args.iter().map(|a| a.to_string()).collect(),
        body: body.to_vec(),
    }
}

/// A stanza to `pair` with the ephemeral share `epk` (any 32 bytes), built with the shared
/// secret aws-lc computes. The `age` crate's identity opening it shows that its DH gives the
/// same shared secret for that encoding (high bit, non-canonical values, twist points).
/// `None` if aws-lc refuses the share (an all-zero shared secret).
fn stanza_with_share(pair: &Pair, epk: [u8; 32], key: [u8; 16]) -> Option<Stanza> {
    let secret = PrivateKey::from_private_key(&agreement::X25519, &pair.secret()).unwrap();
    let public = pair.ours.public_key();
    let wrap_key = agreement::agree(
        &secret,
        UnparsedPublicKey::new(&agreement::X25519, &epk),
        (),
        |shared| {
            let mut salt = [0u8; 64];
            salt[..32].copy_from_slice(&epk);
            salt[32..].copy_from_slice(public);
            Ok(hkdf(&salt, b"age-encryption.org/v1/X25519", shared))
        },
    )
    .ok()?;
    Some(Stanza {
        tag: "X25519".to_string(),
        args: vec![BASE64_STANDARD_NO_PAD.encode(epk)],
        body: aead_encrypt(&wrap_key, &key),
    })
}

#[test]
fn well_formed_stanzas_unwrap_the_same() {
    let mut rng = Rng(0x5eed_0001);
    let other = Pair::generate();
    for _ in 0..32 {
        let pair = Pair::generate();
        let key: [u8; 16] = rng.bytes();
        let mine = wrap(&pair.recipient(), key);
        assert_eq!(same(&pair, &mine), Outcome::FileKey(key));
        // Somebody else's stanza, and ours seen by somebody else: not theirs.
        assert_eq!(
            same(&pair, &wrap(&other.recipient(), key)),
            Outcome::NotOurs
        );
        assert_eq!(same(&other, &mine), Outcome::NotOurs);
        // Other stanza types are never ours, whatever they hold.
        for tag in ["x25519", "X25519 ", "scrypt", "ssh-ed25519", "grease-x", ""] {
            let other_type = Stanza {
                tag: tag.to_string(),
                ..wrap(&pair.recipient(), key)
            };
            assert_eq!(same(&pair, &other_type), Outcome::NotOurs, "{tag:?}");
        }
    }
}

#[test]
fn malformed_shares_are_header_errors() {
    let pair = Pair::generate();
    let mine = wrap(&pair.recipient(), [7; 16]);
    let share = mine.args[0].clone();
    let bytes = BASE64_STANDARD_NO_PAD.decode(&share).unwrap();
    assert_eq!(share.len(), 43);

    // The last character carries 2 unused bits: setting either is a non-canonical encoding.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let last = alphabet
        .iter()
        .position(|c| *c == share.as_bytes()[42])
        .unwrap();
    let mut non_canonical = Vec::new();
    for bits in 1..4 {
        let mut s = share.clone().into_bytes();
        s[42] = alphabet[last ^ bits];
        non_canonical.push(String::from_utf8(s).unwrap());
    }
    let mut short = bytes.clone();
    short.pop();
    let mut long = bytes.clone();
    long.push(0);
    let malformed: Vec<Vec<String>> = [
        vec![],
        vec![share.clone(), share.clone()],
        vec![share.clone(), "1234".to_string()],
        vec![String::new()],
        vec![format!("{share}=")],
        vec![BASE64_STANDARD.encode(&bytes)],
        vec![BASE64_STANDARD_NO_PAD.encode(&short)],
        vec![BASE64_STANDARD_NO_PAD.encode(&long)],
        vec![BASE64_STANDARD_NO_PAD.encode([0u8; 64])],
        vec![share[..42].to_string()],
        vec![format!("{share}A")],
        vec![format!(" {share}")],
        vec![share.replace(|c: char| c.is_ascii_uppercase(), "*")],
    ]
    .into_iter()
    .chain(non_canonical.into_iter().map(|s| vec![s]))
    // The URL-safe alphabet differs from the standard one in `-` and `_` only.
    .chain(
        Some(BASE64_URL_SAFE_NO_PAD.encode(&bytes))
            .filter(|s| *s != share)
            .map(|s| vec![s]),
    )
    .collect();
    for args in malformed {
        let bad = Stanza {
            args: args.clone(),
            ..wrap(&pair.recipient(), [7; 16])
        };
        assert_eq!(same(&pair, &bad), invalid_header(), "{args:?}");
    }
    assert_eq!(same(&pair, &mine), Outcome::FileKey([7; 16]));
}

#[test]
fn bodies_of_the_wrong_length_are_header_errors_and_flipped_bits_are_not_ours() {
    let pair = Pair::generate();
    let mine = wrap(&pair.recipient(), [9; 16]);
    assert_eq!(mine.body.len(), 32);
    for len in [0, 1, 15, 16, 31, 33, 48, 64] {
        let mut body = mine.body.clone();
        body.resize(len, 0xA5);
        let bad = Stanza {
            body,
            ..wrap(&pair.recipient(), [9; 16])
        };
        assert_eq!(same(&pair, &bad), invalid_header(), "body of {len} bytes");
    }
    for i in 0..32 {
        for bit in [0x01, 0x80] {
            let mut flipped = wrap(&pair.recipient(), [9; 16]);
            flipped.body[i] ^= bit;
            assert_eq!(same(&pair, &flipped), Outcome::NotOurs, "byte {i}");
        }
    }
    // A different ephemeral share with the right body: the DH differs, not ours.
    let mut other_share = wrap(&pair.recipient(), [9; 16]);
    other_share.args = wrap(&pair.recipient(), [9; 16]).args;
    assert_eq!(same(&pair, &other_share), Outcome::NotOurs);
}

fn hex32(s: &str) -> [u8; 32] {
    std::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
}

/// The u-coordinates of small order (the curve's 8-torsion: 0, 1 and the two of order 8, and
/// -1 of the twist), also as the non-canonical p and p + 1, each with and without the high
/// bit set (which X25519 ignores): the DH with any of them is all zero.
fn small_order_shares() -> Vec<[u8; 32]> {
    let canonical = [
        hex32("0000000000000000000000000000000000000000000000000000000000000000"),
        hex32("0100000000000000000000000000000000000000000000000000000000000000"),
        hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        hex32("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ];
    let mut all = canonical.to_vec();
    for mut u in canonical {
        u[31] |= 0x80;
        all.push(u);
    }
    all
}

#[test]
fn small_order_shares_are_header_errors() {
    let pair = Pair::generate();
    let with_share = |epk: [u8; 32]| Stanza {
        args: vec![BASE64_STANDARD_NO_PAD.encode(epk)],
        ..wrap(&pair.recipient(), [3; 16])
    };
    for epk in small_order_shares() {
        assert_eq!(
            same(&pair, &with_share(epk)),
            invalid_header(),
            "{epk:02x?}"
        );
    }
    // libsodium's blocklist also has the order-8 points plus p, which need bit 255: with the
    // high bit ignored they are other points (u - 19), so not small order and not ours.
    for epk in [
        hex32("cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880"),
        hex32("4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7"),
    ] {
        assert_eq!(
            same(&pair, &with_share(epk)),
            Outcome::NotOurs,
            "{epk:02x?}"
        );
    }
}

#[test]
fn any_share_gives_the_same_shared_secret() {
    let mut rng = Rng(0x5eed_0002);
    let pair = Pair::generate();
    let mut shares: Vec<[u8; 32]> = (0..200).map(|_| rng.bytes()).collect();
    // Non-canonical encodings of small values (p + k) and of the top of the field.
    for k in 0..=18u8 {
        let mut u = [0xff; 32];
        u[31] = 0x7f;
        u[0] = 0xed + k;
        shares.push(u);
        u[31] = 0xff;
        shares.push(u);
        let mut small = [0u8; 32];
        small[0] = k;
        shares.push(small);
    }
    let mut refused = Vec::new();
    for (i, epk) in shares.into_iter().enumerate() {
        let key = [i as u8; 16];
        match stanza_with_share(&pair, epk, key) {
            Some(stanza) => assert_eq!(same(&pair, &stanza), Outcome::FileKey(key), "{epk:02x?}"),
            None => {
                refused.push(epk);
                let bad = Stanza {
                    args: vec![BASE64_STANDARD_NO_PAD.encode(epk)],
                    ..wrap(&pair.recipient(), key)
                };
                assert_eq!(same(&pair, &bad), invalid_header(), "{epk:02x?}");
            }
        }
    }
    // Only the small-order ones: 0, 1, and p, p + 1 with and without the high bit.
    assert_eq!(refused.len(), 6, "{refused:02x?}");
    assert!(refused.iter().all(|u| small_order_shares().contains(u)));
}

/// The C2SP age test vectors for X25519 stanzas (the `age` 0.12.1 testkit, `x25519*`), at the
/// stanza level: the files' identity, stanzas and expected outcome. (`x25519_not_canonical_body`
/// is left out: the header parser refuses it before any identity sees it.)
#[test]
fn c2sp_testkit_stanzas() {
    const ID: &str = "AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0";
    const KEY: &str = "59454c4c4f57205355424d4152494e45";
    const SHARE: &str = "TEiF0ypqr+bpvcqXNyCVJpL7OuwPdVwPL7KQEbFDOCc";
    const BODY: &str = "hjabGXwSLQ9c3S6Lw2i+S2Tu2fiwQHHslbBN6B41FLE";
    let key: [u8; 16] =
        std::array::from_fn(|i| u8::from_str_radix(&KEY[2 * i..2 * i + 2], 16).unwrap());
    let body = |b: &str| BASE64_STANDARD_NO_PAD.decode(b).unwrap();
    let pair = Pair::from(ID.parse().unwrap());
    let cases: [(&str, Stanza, Outcome); 10] = [
        (
            "x25519",
            stanza("X25519", &[SHARE], &body(BODY)),
            Outcome::FileKey(key),
        ),
        (
            "x25519_bad_tag",
            stanza(
                "X25519",
                &[SHARE],
                &body("hjabGXwSLQ9c3S6Lw2i+S2Tu2fiwQHHslbBN6B41FE4"),
            ),
            Outcome::NotOurs,
        ),
        (
            "x25519_extra_argument",
            stanza("X25519", &[SHARE, "1234"], &body(BODY)),
            invalid_header(),
        ),
        (
            "x25519_identity",
            stanza(
                "X25519",
                &["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
                &body("W3E/OCRme9TiTY97JoK31Z71arNur77WIIdB90XnN3M"),
            ),
            invalid_header(),
        ),
        (
            "x25519_long_file_key",
            stanza(
                "X25519",
                &[SHARE],
                &body("nlObGn0CSA4pxiaG3W6nLlaFFuHmqW+bFC6sJmbsJ9yFesgSok1K0AI"),
            ),
            invalid_header(),
        ),
        (
            "x25519_long_share",
            stanza(
                "X25519",
                &["TEiF0ypqr+bpvcqXNyCVJpL7OuwPdVwPL7KQEbFDOCcA"],
                &body(BODY),
            ),
            invalid_header(),
        ),
        (
            "x25519_low_order",
            stanza(
                "X25519",
                &["X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEdc"],
                &body("3E0NpFans/m0WLWF7+54ZBdNj3iqQqpraGDFiaRkvBA"),
            ),
            invalid_header(),
        ),
        (
            "x25519_lowercase",
            stanza("x25519", &[SHARE], &body(BODY)),
            Outcome::NotOurs,
        ),
        (
            "x25519_not_canonical_share",
            stanza(
                "X25519",
                &["TEiF0ypqr+bpvcqXNyCVJpL7OuwPdVwPL7KQEbFDOCd"],
                &body(BODY),
            ),
            invalid_header(),
        ),
        (
            "x25519_short_share",
            stanza(
                "X25519",
                &["l7o4oTX9X5E3/KODa/7CQ0CrA9fKMWsm9IJjYzSlJg"],
                &body("yUGP5aPob6YJ+vzRfBtDT9D1K/wmyheZE/Xl/mDSKA4"),
            ),
            invalid_header(),
        ),
    ];
    for (name, stanza, expected) in cases {
        assert_eq!(same(&pair, &stanza), expected, "{name}");
    }
    // x25519_multiple_recipients / x25519_no_match: the first stanza is not this identity's.
    let first = stanza(
        "X25519",
        &["ajtqAvDEkVNr2B7zUOtq2mAQXDSBlNrVAuM/dKb5sT4"],
        &body("0evrK/HQXVsQ4YaDe+659l5OQzvAzD2ytLGHQLQiqxg"),
    );
    let second = stanza(
        "X25519",
        &["0qC7u6AbLxuwnM8tPFOWVtWZn/ZZe7z7gcsP5kgA0FI"],
        &body("Y3OzevLm23Vx7PN9k33F9y+ercWe/bcZJLqhqA3h408"),
    );
    assert_eq!(same(&pair, &first), Outcome::NotOurs);
    assert_eq!(same(&pair, &second), Outcome::FileKey(key));
    let no_match = Pair::from(
        "AGE-SECRET-KEY-143WN7DCXU4G8R5AXQSSYD9AEPYDNT3HXSLWSPK36CDU6E8M59SSSAGZ3KG"
            .parse()
            .unwrap(),
    );
    let theirs = stanza(
        "X25519",
        &["ajtqAvDEkVNr2B7zUOtq2mAQXDSBlNrVAuM/dKb5sT4"],
        &body("HUKtz0R2j5Bl2ER7HhAZrURikCFpiIjNa0KjHcjbAGU"),
    );
    assert_eq!(same(&no_match, &theirs), Outcome::NotOurs);
}

/// A recipient that writes one stanza of an unknown type (as age's grease does).
struct Grease(u64);

impl age::Recipient for Grease {
    fn wrap_file_key(
        &self,
        _: &FileKey,
    ) -> Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        let mut rng = Rng(self.0);
        let args = (0..rng.below(3))
            .map(|_| BASE64_STANDARD_NO_PAD.encode(rng.bytes::<12>()))
            .collect();
        let body = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        Ok((
            vec![Stanza {
                tag: format!("grease-{}", rng.below(1000)),
                args,
                body,
            }],
            HashSet::new(),
        ))
    }
}

/// Decrypts `file` with `identity`: the plaintext, or the `DecryptError` variant.
fn open(file: &[u8], identity: &dyn age::Identity) -> Result<Vec<u8>, String> {
    let decryptor = age::Decryptor::new_buffered(file).map_err(|e| error_name(&e))?;
    let mut reader = decryptor
        .decrypt(std::iter::once(identity))
        .map_err(|e| error_name(&e))?;
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .map_err(|e| format!("io {:?}", e.kind()))?;
    Ok(out)
}

#[test]
fn generated_files_open_the_same() {
    let mut rng = Rng(0x5eed_0003);
    let pairs: Vec<Pair> = (0..4).map(|_| Pair::generate()).collect();
    let stranger = Pair::generate();
    for round in 0..48 {
        // 1..3 X25519 recipients among the pairs, sometimes with grease around them.
        let count = 1 + rng.below(3);
        let chosen: Vec<usize> = (0..count).map(|_| rng.below(pairs.len())).collect();
        let x25519: Vec<age::x25519::Recipient> =
            chosen.iter().map(|&i| pairs[i].recipient()).collect();
        let grease = [Grease(rng.next()), Grease(rng.next())];
        let mut recipients: Vec<&dyn age::Recipient> =
            x25519.iter().map(|r| r as &dyn age::Recipient).collect();
        match round % 3 {
            0 => {}
            1 => recipients.insert(0, &grease[0]),
            _ => {
                recipients.insert(0, &grease[0]);
                recipients.push(&grease[1]);
            }
        }
        let plaintext: Vec<u8> = (0..rng.below(100)).map(|_| rng.next() as u8).collect();
        let encryptor = age::Encryptor::with_recipients(recipients.into_iter()).unwrap();
        let mut file = Vec::new();
        let mut writer = encryptor.wrap_output(&mut file).unwrap();
        writer.write_all(&plaintext).unwrap();
        writer.finish().unwrap();

        for (i, pair) in pairs.iter().chain([&stranger]).enumerate() {
            let ours = open(&file, &pair.ours);
            let theirs = open(&file, &pair.theirs);
            assert_eq!(ours, theirs, "round {round}, identity {i}");
            if chosen.contains(&i) {
                assert_eq!(ours.as_deref(), Ok(&plaintext[..]));
            } else {
                assert_eq!(ours, Err("NoMatchingKeys".to_string()));
            }
        }
        // A flipped byte anywhere in the header: both refuse it the same way.
        let header_len = file.windows(4).position(|w| w == b"\n---").unwrap() + 48;
        let at = rng.below(header_len);
        let mut damaged = file.clone();
        damaged[at] ^= 1 << rng.below(8);
        let pair = &pairs[chosen[0]];
        assert_eq!(
            open(&damaged, &pair.ours),
            open(&damaged, &pair.theirs),
            "round {round}, byte {at}"
        );
    }
}

#[test]
fn debug_holds_no_key_material() {
    let pair = Pair::generate();
    let secret = pair.theirs.to_string();
    let secret = secret.expose_secret();
    let hex: String = pair.secret().iter().map(|b| format!("{b:02x}")).collect();
    let b64 = BASE64_STANDARD_NO_PAD.encode(pair.secret());
    let shown = format!("{:?} {:#?}", pair.ours, pair.ours);
    broker_core::testkit::assert_no_canary("debug", &shown, &[secret, &hex, &b64]);
    let public_hex: String = pair
        .ours
        .public_key()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!shown.contains(&public_hex), "{shown}");
}
