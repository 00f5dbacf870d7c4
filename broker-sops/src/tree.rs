//! The document model shared by every format: an ordered tree like sops's own.
//!
//! Nodes hold decrypted values, so nothing here implements `Debug`, and every tree is
//! zeroized when dropped through [`Zeroize`].

use broker_core::{FieldPath, FieldSegment};
use zeroize::Zeroize;

/// One node of a sops document.
pub(crate) enum Node {
    /// An ordered map (sops `TreeBranch`), possibly with comments between entries.
    Map(Vec<Item>),
    /// A list; elements may be comments.
    List(Vec<Node>),
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Raw bytes (`type:bytes`).
    Bytes(Vec<u8>),
    /// A comment (in a list, or as decrypted comment text).
    Comment(String),
    /// A null value (never encrypted, not part of the MAC).
    Null,
}

/// One entry of a map.
pub(crate) enum Item {
    /// `key: value`.
    Pair(String, Node),
    /// A comment line between entries.
    Comment(String),
}

impl Zeroize for Node {
    fn zeroize(&mut self) {
        match self {
            Node::Map(items) => {
                for item in items.iter_mut() {
                    match item {
                        Item::Pair(k, v) => {
                            k.zeroize();
                            v.zeroize();
                        }
                        Item::Comment(c) => c.zeroize(),
                    }
                }
            }
            Node::List(list) => list.iter_mut().for_each(Zeroize::zeroize),
            Node::Str(s) | Node::Comment(s) => s.zeroize(),
            Node::Bytes(b) => b.zeroize(),
            Node::Int(i) => *i = 0,
            Node::Float(f) => *f = 0.0,
            Node::Bool(b) => *b = false,
            Node::Null => {}
        }
    }
}

impl Node {
    /// The entries of a map node, or `None`.
    pub(crate) fn as_map(&self) -> Option<&[Item]> {
        match self {
            Node::Map(items) => Some(items),
            _ => None,
        }
    }

    /// The value under `key` of a map node.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find_map(|i| match i {
            Item::Pair(k, v) if k == key => Some(v),
            _ => None,
        })
    }

    /// The value under `key` of a map node, mutably.
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map(items) => items.iter_mut().find_map(|i| match i {
                Item::Pair(k, v) if k == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The string value of a scalar node, as sops would stringify metadata.
    pub(crate) fn as_text(&self) -> Option<String> {
        match self {
            Node::Str(s) => Some(s.clone()),
            Node::Int(i) => Some(i.to_string()),
            Node::Float(f) => Some(format_float(*f)),
            Node::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Selects the node at `path` (list indices skip comments, like sops).
    pub(crate) fn select(&self, path: &FieldPath) -> Option<&Node> {
        let mut node = self;
        for seg in &path.0 {
            node = match (seg, node) {
                (FieldSegment::Key(k), Node::Map(_)) => node.get(k)?,
                (FieldSegment::Index(i), Node::List(list)) => list_element(list, *i)?,
                (FieldSegment::Key(k), Node::List(list)) => {
                    list_element(list, k.parse::<usize>().ok()?)?
                }
                _ => return None,
            };
        }
        Some(node)
    }

    /// Whether this is a map or a list.
    pub(crate) fn is_branch(&self) -> bool {
        matches!(self, Node::Map(_) | Node::List(_))
    }

    /// A deep copy (values included; the copy zeroizes like the original when wrapped).
    pub(crate) fn deep_clone(&self) -> Node {
        match self {
            Node::Map(items) => Node::Map(
                items
                    .iter()
                    .map(|i| match i {
                        Item::Pair(k, v) => Item::Pair(k.clone(), v.deep_clone()),
                        Item::Comment(c) => Item::Comment(c.clone()),
                    })
                    .collect(),
            ),
            Node::List(l) => Node::List(l.iter().map(Node::deep_clone).collect()),
            Node::Str(s) => Node::Str(s.clone()),
            Node::Int(i) => Node::Int(*i),
            Node::Float(f) => Node::Float(*f),
            Node::Bool(b) => Node::Bool(*b),
            Node::Bytes(b) => Node::Bytes(b.clone()),
            Node::Comment(c) => Node::Comment(c.clone()),
            Node::Null => Node::Null,
        }
    }
}

fn list_element(list: &[Node], index: usize) -> Option<&Node> {
    list.iter()
        .filter(|n| !matches!(n, Node::Comment(_)))
        .nth(index)
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest decimal that round-trips, never
/// an exponent.
pub(crate) fn format_float(f: f64) -> String {
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    format!("{f}")
}

/// The bytes sops hashes into the MAC for a leaf (`ToBytes` upstream), and the plaintext it
/// encrypts. `None` for nodes that are not leaves.
pub(crate) fn leaf_bytes(node: &Node) -> Option<Vec<u8>> {
    Some(match node {
        Node::Str(s) | Node::Comment(s) => s.as_bytes().to_vec(),
        Node::Int(i) => i.to_string().into_bytes(),
        Node::Float(f) => format_float(*f).into_bytes(),
        Node::Bool(true) => b"True".to_vec(),
        Node::Bool(false) => b"False".to_vec(),
        Node::Bytes(b) => b.clone(),
        _ => return None,
    })
}

/// The bytes handed out when one scalar is selected: strings as their text, numbers in their
/// shortest form, booleans as `true`/`false`.
pub(crate) fn scalar_output(node: &Node) -> Option<Vec<u8>> {
    Some(match node {
        Node::Bool(b) => b.to_string().into_bytes(),
        Node::Null => Vec::new(),
        other => leaf_bytes(other)?,
    })
}
