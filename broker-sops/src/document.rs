//! Decrypting and verifying a whole sops document, and re-encrypting it (rotate).

use broker_core::{Error, ErrorKind};
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::cipher::{self, CipherError};
use crate::keys::{KeyRing, encrypt_age};
use crate::metadata::{MasterKey, Metadata, set};
use crate::shamir;
use crate::store::{self, Format, Loaded};
use crate::tree::{Item, Node, leaf_bytes};

/// `MACOnlyEncryptedInitialization` upstream: sha256("sops").
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// A decrypted document: the plaintext tree (zeroized on drop) and what rotation needs.
pub(crate) struct Decrypted {
    pub data: Zeroizing<Node>,
    pub meta_tree: Node,
    pub meta: Metadata,
}

/// Parses `text` as `format` and reads its metadata.
pub(crate) fn load(format: Format, text: &str) -> Result<(Loaded, Metadata), Error> {
    let loaded = store::load(format, text).map_err(|m| {
        Error::new(
            ErrorKind::Integrity,
            format!("not a sops {} file: {m}", format.name()),
        )
    })?;
    let meta = Metadata::parse(&loaded.meta)
        .map_err(|m| Error::new(ErrorKind::Integrity, format!("bad sops metadata: {m}")))?;
    Ok((loaded, meta))
}

/// Recovers the data key from the key groups with the local keys in `ring`.
pub(crate) fn data_key(meta: &Metadata, ring: &KeyRing) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut parts = Vec::new();
    let mut remote: Vec<&MasterKey> = Vec::new();
    let mut tried: Vec<String> = Vec::new();
    for group in &meta.key_groups {
        let mut part = None;
        for key in group {
            match key {
                MasterKey::Age { enc, recipient } => {
                    match ring.decrypt_age(enc).map_err(|m| {
                        Error::new(ErrorKind::Integrity, format!("age key {recipient}: {m}"))
                    })? {
                        Some(p) => {
                            part = Some(p);
                            break;
                        }
                        None => tried.push(key.describe()),
                    }
                }
                MasterKey::Pgp { fingerprint, enc } => {
                    match ring.decrypt_pgp(enc).map_err(|m| {
                        Error::new(ErrorKind::Integrity, format!("pgp key {fingerprint}: {m}"))
                    })? {
                        Some(p) => {
                            part = Some(p);
                            break;
                        }
                        None => tried.push(key.describe()),
                    }
                }
                other => remote.push(other),
            }
        }
        if let Some(p) = part {
            parts.push(p);
        }
    }
    let enough = if meta.key_groups.len() > 1 {
        parts.len() >= meta.shamir_threshold.max(1)
    } else {
        parts.len() == 1
    };
    if enough {
        if meta.key_groups.len() > 1 {
            return shamir::combine(&parts).map_err(|m| {
                Error::new(
                    ErrorKind::Integrity,
                    format!("cannot recombine the data key: {m}"),
                )
            });
        }
        return Ok(parts.remove(0));
    }
    let has_age = meta.all_keys().any(|k| matches!(k, MasterKey::Age { .. }));
    let has_pgp = meta.all_keys().any(|k| matches!(k, MasterKey::Pgp { .. }));
    let has_local = has_age || has_pgp;
    // A key of a type the file uses was loaded (and did not match), as opposed to none.
    let had_usable = (has_age && !ring.age.is_empty()) || (has_pgp && !ring.pgp.is_empty());
    let mut msg = String::from("no local key decrypts the sops data key");
    if meta.key_groups.len() > 1 {
        msg.push_str(&format!(
            " ({} of {} key groups needed, {} recovered)",
            meta.shamir_threshold,
            meta.key_groups.len(),
            parts.len()
        ));
    }
    if !tried.is_empty() {
        msg.push_str(&format!("; file keys: {}", tried.join(", ")));
    }
    let mut notes = ring.sources.clone();
    notes.extend(ring.notes.iter().cloned());
    if !notes.is_empty() {
        msg.push_str(&format!("; keys tried from: {}", notes.join(", ")));
    }
    let unsupported: Vec<String> = remote
        .iter()
        .map(|k| {
            format!(
                "{} ({}; comes with the {} backend)",
                k.kind(),
                k.describe(),
                k.comes_with().unwrap_or("matching")
            )
        })
        .collect();
    if !unsupported.is_empty() {
        msg.push_str(&format!(
            "; master keys not usable here: {}",
            unsupported.join(", ")
        ));
    }
    if has_local && !had_usable {
        return Err(Error::not_configured(msg).with_hint(
            "set SOPS_AGE_KEY_FILE or SOPS_AGE_KEY, put keys in ~/.config/sops/age/keys.txt, \
             or set backends.sops.age_key_file (age) or backends.sops.pgp_key_file (PGP)",
        ));
    }
    if has_local {
        return Err(Error::new(ErrorKind::PermissionDenied, msg));
    }
    Err(Error::new(ErrorKind::Unsupported, msg))
}

fn path_text(path: &[String]) -> String {
    path.join(".")
}

fn cipher_error(e: CipherError, path: &[String]) -> Error {
    let at = path_text(path);
    match e {
        CipherError::Authentication => Error::new(
            ErrorKind::Integrity,
            format!(
                "value at `{at}` failed AES-GCM authentication: the file was tampered with or the data key is wrong"
            ),
        ),
        CipherError::Format(m) => Error::new(ErrorKind::Integrity, format!("value at `{at}`: {m}")),
        CipherError::Type(m) => Error::new(ErrorKind::Integrity, format!("value at `{at}`: {m}")),
    }
}

pub(crate) enum Mode {
    Decrypt,
    Encrypt,
}

/// Decrypts or encrypts every value of `data` in place and returns the MAC over the plaintext
/// values (upper-case hex SHA-512, as sops computes it).
pub(crate) fn walk(
    meta: &Metadata,
    key: &[u8],
    data: &mut Node,
    mut mode: Mode,
) -> Result<String, Error> {
    let mut walker = Walker {
        meta,
        key,
        hash: Sha512::new(),
    };
    if meta.mac_only_encrypted {
        walker.hash.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    walker.value(data, &mut Vec::new(), &mut Vec::new(), &mut mode)?;
    Ok(hex_upper(&walker.hash.finalize()))
}

struct Walker<'a> {
    meta: &'a Metadata,
    key: &'a [u8],
    hash: Sha512,
}

impl Walker<'_> {
    fn leaf(
        &mut self,
        node: &mut Node,
        path: &[String],
        stack: &[Vec<String>],
        mode: &mut Mode,
    ) -> Result<(), Error> {
        let is_comment = matches!(node, Node::Comment(_));
        let encrypted = self.meta.should_be_encrypted(path, stack, is_comment);
        let aad = format!("{}:", path.join(":"));
        match mode {
            Mode::Decrypt => {
                if encrypted {
                    *node = match &*node {
                        Node::Comment(c) => match cipher::decrypt(c, self.key, &aad) {
                            Ok(Node::Comment(plain)) => Node::Comment(plain),
                            // Older sops left comments in clear: keep them as they are.
                            _ => Node::Comment(c.clone()),
                        },
                        Node::Str(s) => {
                            cipher::decrypt(s, self.key, &aad).map_err(|e| cipher_error(e, path))?
                        }
                        _ => {
                            return Err(Error::new(
                                ErrorKind::Integrity,
                                format!(
                                    "value at `{}` should be encrypted but is not",
                                    path_text(path)
                                ),
                            ));
                        }
                    };
                }
                self.mac(node, encrypted);
            }
            Mode::Encrypt => {
                self.mac(node, encrypted);
                if encrypted {
                    let enc =
                        cipher::encrypt(node, self.key, &aad).map_err(|e| cipher_error(e, path))?;
                    *node = if is_comment {
                        Node::Comment(enc)
                    } else {
                        Node::Str(enc)
                    };
                }
            }
        }
        Ok(())
    }

    fn mac(&mut self, node: &Node, encrypted: bool) {
        if matches!(node, Node::Comment(_)) || (self.meta.mac_only_encrypted && !encrypted) {
            return;
        }
        if let Some(bytes) = leaf_bytes(node) {
            let bytes = Zeroizing::new(bytes);
            self.hash.update(&bytes[..]);
        }
    }

    fn value(
        &mut self,
        node: &mut Node,
        path: &mut Vec<String>,
        stack: &mut Vec<Vec<String>>,
        mode: &mut Mode,
    ) -> Result<(), Error> {
        match node {
            Node::Map(items) => {
                stack.push(Vec::new());
                for item in items.iter_mut() {
                    match item {
                        Item::Comment(c) => {
                            if let Some(top) = stack.last_mut() {
                                top.push(c.clone());
                            }
                            let mut n = Node::Comment(std::mem::take(c));
                            self.leaf(&mut n, path, stack, mode)?;
                            if let Node::Comment(text) = n {
                                *c = text;
                            }
                        }
                        Item::Pair(k, v) => {
                            path.push(k.clone());
                            self.value(v, path, stack, mode)?;
                            path.pop();
                            if let Some(top) = stack.last_mut() {
                                top.clear();
                            }
                        }
                    }
                }
                stack.pop();
            }
            Node::List(list) => {
                stack.push(Vec::new());
                for v in list.iter_mut() {
                    let is_comment = matches!(v, Node::Comment(_));
                    if let (Node::Comment(c), Some(top)) = (&*v, stack.last_mut()) {
                        top.push(c.clone());
                    }
                    self.value(v, path, stack, mode)?;
                    if !is_comment && let Some(top) = stack.last_mut() {
                        top.clear();
                    }
                }
                stack.pop();
            }
            Node::Null => {}
            _ => self.leaf(node, path, stack, mode)?,
        }
        Ok(())
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Decrypts every value and verifies the MAC. Nothing is returned unless the MAC matches.
pub(crate) fn decrypt(format: Format, text: &str, ring: &KeyRing) -> Result<Decrypted, Error> {
    let (loaded, meta) = load(format, text)?;
    let key = data_key(&meta, ring)?;
    let mut data = Zeroizing::new(loaded.data);
    let computed = walk(&meta, &key, &mut data, Mode::Decrypt)?;
    let Some(mac) = &meta.mac else {
        return Err(Error::new(
            ErrorKind::Integrity,
            "MAC mismatch: the file has no MAC",
        ));
    };
    let stored = cipher::decrypt_mac(mac, &key, &meta.lastmodified).map_err(|e| match e {
        CipherError::Authentication => Error::new(
            ErrorKind::Integrity,
            "MAC mismatch: the stored MAC failed authentication (tampered MAC or lastmodified)",
        ),
        _ => Error::new(
            ErrorKind::Integrity,
            "MAC mismatch: the stored MAC is malformed",
        ),
    })?;
    let equal = stored.len() == computed.len()
        && stored
            .bytes()
            .zip(computed.bytes())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0;
    if !equal {
        return Err(Error::new(
            ErrorKind::Integrity,
            "MAC mismatch: a value was changed, reordered, removed or added",
        ));
    }
    Ok(Decrypted {
        data,
        meta_tree: loaded.meta,
        meta,
    })
}

/// The current time as sops writes `lastmodified`.
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    now.format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Re-encrypts `doc` with a fresh data key wrapped to the same master keys; returns the new
/// file bytes.
pub(crate) fn rotate(format: Format, doc: &Decrypted) -> Result<Vec<u8>, Error> {
    let meta = &doc.meta;
    if let Some(k) = meta
        .all_keys()
        .find(|k| !matches!(k, MasterKey::Age { .. }))
    {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "rotate cannot re-wrap the data key for {} master keys ({}) yet",
                k.kind(),
                k.describe()
            ),
        ));
    }
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rand::fill(&mut key[..]);
    let parts: Vec<Zeroizing<Vec<u8>>> = if meta.key_groups.len() > 1 {
        shamir::split(&key, meta.key_groups.len(), meta.shamir_threshold)
            .map_err(|m| Error::internal(format!("Shamir split: {m}")))?
    } else {
        vec![key.clone()]
    };
    // New wrapped keys, group by group, in metadata order.
    let mut new_encs: Vec<Vec<String>> = Vec::new();
    for (group, part) in meta.key_groups.iter().zip(&parts) {
        let mut encs = Vec::new();
        for k in group {
            if let MasterKey::Age { recipient, .. } = k {
                encs.push(encrypt_age(recipient, part).map_err(Error::invalid_config)?);
            }
        }
        new_encs.push(encs);
    }
    let mut meta_tree = doc.meta_tree.deep_clone();
    let set_group = |group: &mut Node, encs: &[String]| {
        if let Some(Node::List(entries)) = group.get_mut("age") {
            for (entry, enc) in entries.iter_mut().zip(encs) {
                set(entry, "enc", Node::Str(enc.clone()));
            }
        }
    };
    let has_groups = matches!(meta_tree.get("key_groups"), Some(Node::List(l)) if !l.is_empty());
    if has_groups {
        if let Some(Node::List(groups)) = meta_tree.get_mut("key_groups") {
            for (g, encs) in groups.iter_mut().zip(&new_encs) {
                set_group(g, encs);
            }
        }
    } else if let Some(encs) = new_encs.first() {
        set_group(&mut meta_tree, encs);
    }
    let lastmodified = now_rfc3339();
    let mut data = Zeroizing::new(doc.data.deep_clone());
    let mac_hex = walk(meta, &key, &mut data, Mode::Encrypt)?;
    let mac = cipher::encrypt(&Node::Str(mac_hex), &key, &lastmodified)
        .map_err(|_| Error::internal("MAC encryption failed"))?;
    set(&mut meta_tree, "lastmodified", Node::Str(lastmodified));
    set(&mut meta_tree, "mac", Node::Str(mac));
    store::emit_encrypted(format, &data, &meta_tree).map_err(Error::internal)
}
