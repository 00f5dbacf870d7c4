//! dotenv store, as sops 3.x reads and writes it: `KEY=VALUE` lines split at the first `=`,
//! `#` comment lines, `\n` escapes for newlines, metadata as `sops_*` keys.

use super::{Loaded, flatten_meta, unflatten_meta, value_to_string};
use crate::tree::{Item, Node};

/// Parses an encrypted dotenv file.
pub(crate) fn load(text: &str) -> Result<Loaded, String> {
    let mut data = Vec::new();
    let mut flat = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            data.push(Item::Comment(c.to_string()));
            continue;
        }
        let Some(eq) = line.find('=') else {
            return Err(format!("line {} is not KEY=VALUE", n + 1));
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        match key.strip_prefix("sops_") {
            Some(meta_key) => flat.push((meta_key.to_string(), value.to_string())),
            None => data.push(Item::Pair(
                key.to_string(),
                Node::Str(value.replace("\\n", "\n")),
            )),
        }
    }
    if flat.is_empty() {
        return Err("sops metadata not found (no sops_* keys)".into());
    }
    Ok(Loaded {
        data: Node::Map(data),
        meta: unflatten_meta(flat),
    })
}

/// Emits a dotenv document (with metadata when `meta` is given).
pub(crate) fn emit(data: &Node, meta: Option<&Node>) -> Result<Vec<u8>, String> {
    let mut out = String::new();
    for item in data.as_map().unwrap_or_default() {
        match item {
            Item::Comment(c) => {
                out.push('#');
                out.push_str(c);
                out.push('\n');
            }
            Item::Pair(k, v) => {
                let v = value_to_string(v)
                    .ok_or_else(|| format!("`{k}` holds a nested value, which dotenv cannot"))?;
                out.push_str(k);
                out.push('=');
                out.push_str(&v.replace('\n', "\\n"));
                out.push('\n');
            }
        }
    }
    if let Some(meta) = meta {
        for (k, v) in flatten_meta(meta) {
            out.push_str("sops_");
            out.push_str(&k);
            out.push('=');
            out.push_str(&v);
            out.push('\n');
        }
    }
    Ok(out.into_bytes())
}
