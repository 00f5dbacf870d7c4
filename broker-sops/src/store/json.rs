//! JSON store: order kept, numbers as floats (as Go's `encoding/json` reads them), tab-indented
//! output like sops.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::tree::{Item, Node, format_float};

struct NodeSeed;

impl<'de> Visitor<'de> for NodeSeed {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Float(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Float(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut list = Vec::new();
        while let Some(NodeDe(n)) = seq.next_element()? {
            list.push(n);
        }
        Ok(Node::List(list))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some((k, NodeDe(v))) = map.next_entry::<String, NodeDe>()? {
            items.push(Item::Pair(k, v));
        }
        Ok(Node::Map(items))
    }
}

struct NodeDe(Node);

impl<'de> Deserialize<'de> for NodeDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeSeed).map(NodeDe)
    }
}

/// Parses a JSON document. Errors name the line and column only.
pub(crate) fn parse(text: &str) -> Result<Node, String> {
    serde_json::from_str::<NodeDe>(text)
        .map(|n| n.0)
        .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))
}

fn string(out: &mut String, s: &str) {
    // serde_json escapes exactly what JSON requires; Go additionally escapes <, >, & and
    // U+2028/9, which sops's JSON store turns off again for <, >, &.
    out.push_str(&serde_json::Value::from(s).to_string());
}

fn value(out: &mut String, node: &Node, depth: usize) {
    let pad = |out: &mut String, d: usize| out.extend(std::iter::repeat_n('\t', d));
    match node {
        Node::Map(items) => {
            let pairs: Vec<(&String, &Node)> = items
                .iter()
                .filter_map(|i| match i {
                    Item::Pair(k, v) => Some((k, v)),
                    Item::Comment(_) => None,
                })
                .collect();
            if pairs.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push_str("{\n");
            for (i, (k, v)) in pairs.iter().enumerate() {
                pad(out, depth + 1);
                string(out, k);
                out.push_str(": ");
                value(out, v, depth + 1);
                if i + 1 < pairs.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            pad(out, depth);
            out.push('}');
        }
        Node::List(list) => {
            let list: Vec<&Node> = list
                .iter()
                .filter(|n| !matches!(n, Node::Comment(_)))
                .collect();
            if list.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[\n");
            for (i, v) in list.iter().enumerate() {
                pad(out, depth + 1);
                value(out, v, depth + 1);
                if i + 1 < list.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            pad(out, depth);
            out.push(']');
        }
        Node::Str(s) | Node::Comment(s) => string(out, s),
        Node::Bytes(b) => string(out, &String::from_utf8_lossy(b)),
        Node::Int(i) => out.push_str(&i.to_string()),
        Node::Float(f) if f.is_finite() => out.push_str(&format_float(*f)),
        Node::Float(_) | Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
    }
}

/// Emits `node` as tab-indented JSON with a trailing newline.
pub(crate) fn emit(node: &Node) -> String {
    let mut out = String::new();
    value(&mut out, node, 0);
    out.push('\n');
    out
}
