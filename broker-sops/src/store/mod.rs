//! File formats: each parses an encrypted file into its data tree and its `sops` metadata
//! tree, and emits plain or encrypted documents. Errors say where (line) and why, never what.

use crate::tree::{Item, Node, format_float};

pub(crate) mod dotenv;
pub(crate) mod ini;
pub(crate) mod json;
pub(crate) mod yaml;

/// A sops store format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// JSON (`.json`).
    Json,
    /// dotenv (`.env`).
    Dotenv,
    /// INI (`.ini`).
    Ini,
    /// Binary: a JSON envelope whose `data` key holds the whole file (any other extension).
    Binary,
}

impl Format {
    /// The format sops picks for `path` from its extension.
    pub fn from_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            Some("json") => Format::Json,
            Some("env") => Format::Dotenv,
            Some("ini") => Format::Ini,
            _ => Format::Binary,
        }
    }

    /// Parses a `?format=` value.
    pub fn parse(name: &str) -> Option<Format> {
        Some(match name {
            "yaml" | "yml" => Format::Yaml,
            "json" => Format::Json,
            "dotenv" | "env" => Format::Dotenv,
            "ini" => Format::Ini,
            "binary" => Format::Binary,
            _ => return None,
        })
    }

    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Yaml => "yaml",
            Format::Json => "json",
            Format::Dotenv => "dotenv",
            Format::Ini => "ini",
            Format::Binary => "binary",
        }
    }
}

/// A loaded encrypted file: the data tree and the metadata tree (unflattened).
pub(crate) struct Loaded {
    pub data: Node,
    pub meta: Node,
}

/// Splits `sops` off a top-level map.
fn split_meta(doc: Node) -> Result<Loaded, String> {
    let Node::Map(items) = doc else {
        return Err("the document is not a map".into());
    };
    let mut data = Vec::with_capacity(items.len());
    let mut meta = None;
    for item in items {
        match item {
            Item::Pair(k, v) if k == "sops" => meta = Some(v),
            other => data.push(other),
        }
    }
    let meta = meta.ok_or("sops metadata not found (no top-level `sops` key)")?;
    Ok(Loaded {
        data: Node::Map(data),
        meta,
    })
}

/// Parses an encrypted file.
pub(crate) fn load(format: Format, text: &str) -> Result<Loaded, String> {
    match format {
        Format::Yaml => split_meta(yaml::parse(text)?),
        Format::Json | Format::Binary => split_meta(json::parse(text)?),
        Format::Dotenv => dotenv::load(text),
        Format::Ini => ini::load(text),
    }
}

/// Emits a decrypted document.
pub(crate) fn emit_plain(format: Format, data: &Node) -> Result<Vec<u8>, String> {
    match format {
        Format::Yaml => Ok(yaml::emit(data).into_bytes()),
        Format::Json => Ok(json::emit(data).into_bytes()),
        Format::Dotenv => dotenv::emit(data, None),
        Format::Ini => ini::emit(data, None),
        Format::Binary => match data.get("data") {
            Some(Node::Str(s)) => Ok(s.as_bytes().to_vec()),
            Some(Node::Bytes(b)) => Ok(b.clone()),
            _ => Err("a binary sops file must have a single `data` string".into()),
        },
    }
}

/// Emits an encrypted document: `data` holds `ENC[...]` strings, `meta` the metadata.
pub(crate) fn emit_encrypted(format: Format, data: &Node, meta: &Node) -> Result<Vec<u8>, String> {
    let with_meta = || {
        let mut items: Vec<Item> = match data {
            Node::Map(items) => items
                .iter()
                .map(|i| match i {
                    Item::Pair(k, v) => Item::Pair(k.clone(), v.deep_clone()),
                    Item::Comment(c) => Item::Comment(c.clone()),
                })
                .collect(),
            _ => Vec::new(),
        };
        items.push(Item::Pair("sops".into(), meta.deep_clone()));
        Node::Map(items)
    };
    match format {
        Format::Yaml => Ok(yaml::emit(&with_meta()).into_bytes()),
        Format::Json | Format::Binary => Ok(json::emit(&with_meta()).into_bytes()),
        Format::Dotenv => dotenv::emit(data, Some(meta)),
        Format::Ini => ini::emit(data, Some(meta)),
    }
}

/// sops's `ValueToString` for flat formats.
pub(crate) fn value_to_string(node: &Node) -> Option<String> {
    match node {
        Node::Str(s) | Node::Comment(s) => Some(s.clone()),
        Node::Int(i) => Some(i.to_string()),
        Node::Float(f) => Some(format_float(*f)),
        Node::Bool(b) => Some(b.to_string()),
        Node::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Node::Null => Some(String::new()),
        _ => None,
    }
}

/// Flattens metadata for dotenv/INI: `age__list_0__map_enc`, newlines as `\n`, sorted.
pub(crate) fn flatten_meta(meta: &Node) -> Vec<(String, String)> {
    fn walk(node: &Node, prefix: &str, out: &mut Vec<(String, String)>) {
        match node {
            Node::Map(items) => {
                for item in items {
                    if let Item::Pair(k, v) = item {
                        let p = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}__map_{k}")
                        };
                        walk(v, &p, out);
                    }
                }
            }
            Node::List(list) => {
                for (i, v) in list.iter().enumerate() {
                    walk(v, &format!("{prefix}__list_{i}"), out);
                }
            }
            Node::Null => {}
            leaf => {
                if let Some(s) = value_to_string(leaf) {
                    out.push((prefix.to_string(), s.replace('\n', "\\n")));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(meta, "", &mut out);
    out.sort();
    out
}

/// How far past the end of a metadata list a flattened index may point (entries come sorted
/// as text, so `__list_10` arrives before `__list_2`).
const MAX_INDEX_GAP: usize = 1024;

/// Rebuilds the metadata tree from flattened `key = value` pairs (newlines decoded).
pub(crate) fn unflatten_meta(flat: Vec<(String, String)>) -> Node {
    enum Seg {
        Key(String),
        Index(usize),
    }
    fn segments(key: &str) -> Vec<Seg> {
        let mut segs = Vec::new();
        let mut rest = key;
        let mut kind_is_index = false;
        loop {
            let next_map = rest.find("__map_");
            let next_list = rest.find("__list_");
            let (cut, skip, next_is_index) = match (next_map, next_list) {
                (Some(m), Some(l)) if l < m => (l, 7, true),
                (Some(m), _) => (m, 6, false),
                (None, Some(l)) => (l, 7, true),
                (None, None) => (rest.len(), 0, false),
            };
            let part = &rest[..cut];
            match part.parse::<usize>() {
                Ok(i) if kind_is_index => segs.push(Seg::Index(i)),
                _ => segs.push(Seg::Key(part.to_string())),
            }
            if cut == rest.len() {
                break;
            }
            rest = &rest[cut + skip..];
            kind_is_index = next_is_index;
        }
        segs
    }
    fn insert(node: &mut Node, segs: &[Seg], value: String) {
        let Some((first, rest)) = segs.split_first() else {
            return;
        };
        let child: &mut Node = match (first, &mut *node) {
            (Seg::Key(k), Node::Map(items)) => {
                let pos = items
                    .iter()
                    .position(|i| matches!(i, Item::Pair(key, _) if key == k));
                let pos = match pos {
                    Some(p) => p,
                    None => {
                        items.push(Item::Pair(k.clone(), Node::Null));
                        items.len() - 1
                    }
                };
                match &mut items[pos] {
                    Item::Pair(_, v) => v,
                    Item::Comment(_) => return,
                }
            }
            // An index far past the end would allocate a list that long (an out-of-memory
            // from one line of a dotenv or INI file): sops writes indices in order, so an
            // entry that does not extend the list by at most a few elements is ignored.
            (Seg::Index(i), Node::List(list)) if *i > list.len() + MAX_INDEX_GAP => return,
            (Seg::Index(i), Node::List(list)) => {
                while list.len() <= *i {
                    list.push(Node::Null);
                }
                &mut list[*i]
            }
            _ => return,
        };
        if rest.is_empty() {
            *child = Node::Str(value.replace("\\n", "\n"));
            return;
        }
        if matches!(child, Node::Null) {
            *child = match rest[0] {
                Seg::Key(_) => Node::Map(Vec::new()),
                Seg::Index(_) => Node::List(Vec::new()),
            };
        }
        insert(child, rest, value);
    }
    let mut root = Node::Map(Vec::new());
    for (k, v) in flat {
        insert(&mut root, &segments(&k), v);
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_round_trip() {
        let flat = vec![
            ("age__list_0__map_enc".to_string(), "a\\nb".to_string()),
            (
                "age__list_0__map_recipient".to_string(),
                "age1x".to_string(),
            ),
            ("lastmodified".to_string(), "t".to_string()),
            (
                "key_groups__list_1__map_pgp__list_0__map_fp".to_string(),
                "F".to_string(),
            ),
        ];
        let tree = unflatten_meta(flat.clone());
        let enc = tree
            .get("age")
            .and_then(|a| match a {
                Node::List(l) => l.first(),
                _ => None,
            })
            .and_then(|m| m.get("enc"))
            .and_then(Node::as_text);
        assert_eq!(enc.as_deref(), Some("a\nb"));
        let again = flatten_meta(&tree);
        assert!(again.contains(&flat[0]));
        assert!(again.contains(&flat[3]));
    }

    /// Found by the `sops_dotenv` fuzz target: a huge list index allocated a list that long.
    #[test]
    fn huge_list_index_is_ignored() {
        let flat = vec![
            ("pgp__list_0__map_fp".to_string(), "F".to_string()),
            (
                "pgp__list_7777777777777777770__map_enc".to_string(),
                "x".to_string(),
            ),
        ];
        let tree = unflatten_meta(flat);
        match tree.get("pgp") {
            Some(Node::List(l)) => assert_eq!(l.len(), 1),
            _ => panic!("pgp is not a list"),
        }
        let text = "a=ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]\nsops_lastmodified=t\nsops_pgp__list_7777777777777777770__map_enc=x\n";
        assert!(dotenv::load(text).is_ok());
    }
}
