//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden, unstable, may change).
//!
//! They run the same parsing, metadata, encryption and MAC code as the provider, on text
//! instead of files, and with a data key given directly instead of one unwrapped by a master
//! key, so a fuzzer can reach the value decryption and MAC check.

use zeroize::Zeroizing;

use crate::cipher;
use crate::document::{Mode, walk};
use crate::metadata::{Metadata, set};
use crate::store::{self, Loaded};
use crate::tree::Node;

pub use crate::store::Format;

/// Every format, for targets that pick one from a byte.
pub const FORMATS: [Format; 5] = [
    Format::Yaml,
    Format::Json,
    Format::Dotenv,
    Format::Ini,
    Format::Binary,
];

/// Parses `text` as an encrypted `format` file and reads its metadata; then emits the data as
/// a plain document, emits the whole file again (data and metadata) and parses that emission,
/// which must succeed. Returns the number of metadata key groups.
///
/// # Panics
///
/// When a document this crate parsed and emitted does not parse again.
pub fn load(format: Format, text: &str) -> Result<usize, String> {
    let loaded = store::load(format, text)?;
    let flat = store::flatten_meta(&loaded.meta);
    drop(store::unflatten_meta(flat));
    let meta = Metadata::parse(&loaded.meta)?;
    let _ = store::emit_plain(format, &loaded.data);
    if let Ok(again) = store::emit_encrypted(format, &loaded.data, &loaded.meta) {
        let again = String::from_utf8(again).map_err(|_| "emitted non-UTF-8".to_string());
        if let Err(e) = again.and_then(|t| store::load(format, &t).map(drop)) {
            panic!(
                "a {} document we emitted does not parse: {e}",
                format.name()
            );
        }
    }
    Ok(meta.key_groups.len())
}

/// Decrypts every value of the `format` file in `text` with the data key `key` and checks its
/// MAC, as the provider does after unwrapping the data key; returns the plain document.
pub fn decrypt_with_key(
    format: Format,
    text: &str,
    key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, String> {
    let Loaded { data, meta } = store::load(format, text)?;
    let metadata = Metadata::parse(&meta)?;
    let mut data = Zeroizing::new(data);
    let computed = walk(&metadata, key, &mut data, Mode::Decrypt).map_err(|e| e.to_string())?;
    let mac = metadata.mac.as_deref().ok_or("no MAC")?;
    let stored = cipher::decrypt_mac(mac, key, &metadata.lastmodified)
        .map_err(|_| "the MAC does not decrypt".to_string())?;
    if stored != computed {
        return Err("MAC mismatch".into());
    }
    store::emit_plain(format, &data).map(Zeroizing::new)
}

/// Encrypts every value of the `format` file in `text` (its values taken as plaintext, its
/// `sops` metadata as it is) with the data key `key`, and sets a fresh MAC; returns the
/// encrypted file. Used to make seed files and for round trips.
pub fn encrypt_with_key(format: Format, text: &str, key: &[u8]) -> Result<Vec<u8>, String> {
    let Loaded { data, mut meta } = store::load(format, text)?;
    let metadata = Metadata::parse(&meta)?;
    let mut data = Zeroizing::new(data);
    let mac_hex = walk(&metadata, key, &mut data, Mode::Encrypt).map_err(|e| e.to_string())?;
    let mac = cipher::encrypt(&Node::Str(mac_hex), key, &metadata.lastmodified)
        .map_err(|_| "MAC encryption failed".to_string())?;
    set(&mut meta, "mac", Node::Str(mac));
    store::emit_encrypted(format, &data, &meta)
}

/// Parses the `format` file in `text` and emits its data as a plain document (values as they
/// are in the file), as the provider emits a decrypted one.
pub fn plain(format: Format, text: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let loaded = store::load(format, text)?;
    Metadata::parse(&loaded.meta)?;
    store::emit_plain(format, &loaded.data).map(Zeroizing::new)
}

/// Decrypts the `format` file in `text` with the age identities in `age_keys` (identity file
/// text) and re-encrypts its values with the data key `key` (the master keys' wrapped keys are
/// left as they were); makes seed files for a target that knows `key`.
pub fn reencrypt_with_key(
    format: Format,
    text: &str,
    age_keys: &[u8],
    key: &[u8],
) -> Result<Vec<u8>, String> {
    let explicit = crate::keys::Explicit {
        age_key_file: None,
        age_ssh_key_file: None,
        age_key: Some(age_keys),
        pgp_key_file: None,
    };
    let ring = crate::keys::KeyRing::load(&explicit, &|_: &str| None).map_err(|e| e.to_string())?;
    let doc = crate::document::decrypt(format, text, &ring).map_err(|e| e.to_string())?;
    let mut data = Zeroizing::new(doc.data.deep_clone());
    let mac_hex = walk(&doc.meta, key, &mut data, Mode::Encrypt).map_err(|e| e.to_string())?;
    let mac = cipher::encrypt(&Node::Str(mac_hex), key, &doc.meta.lastmodified)
        .map_err(|_| "MAC encryption failed".to_string())?;
    let mut meta = doc.meta_tree.deep_clone();
    set(&mut meta, "mac", Node::Str(mac));
    store::emit_encrypted(format, &data, &meta)
}
