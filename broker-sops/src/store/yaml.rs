//! YAML store: parsed from `granit-parser` events (comments included) into the ordered tree,
//! and emitted in sops's style (4-space indent, literal blocks for multi-line strings).

use granit_parser::{Event, Parser, ScalarStyle};

use crate::tree::{Item, Node, format_float};

enum Open {
    Map {
        items: Vec<Item>,
        key: Option<String>,
        indent: Option<usize>,
    },
    /// A sequence's items, and the column it starts at (its first `-`): a comment after
    /// its last item at a smaller column belongs to the enclosing mapping.
    List { items: Vec<Node>, indent: usize },
}

fn resolve_plain(s: &str) -> Node {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Node::Null,
        "true" | "True" | "TRUE" => return Node::Bool(true),
        "false" | "False" | "FALSE" => return Node::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Node::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Node::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Node::Float(f64::NAN),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = s.parse::<i64>()
    {
        return Node::Int(i);
    }
    if let Some(hex) = s.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Node::Int(i);
    }
    if let Some(oct) = s.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Node::Int(i);
    }
    if is_float_text(digits)
        && let Ok(f) = s.parse::<f64>()
    {
        return Node::Float(f);
    }
    Node::Str(s.to_string())
}

fn is_float_text(s: &str) -> bool {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let ok_mantissa = {
        let (a, b) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        (mantissa.contains('.') || exp.is_some())
            && (!a.is_empty() || !b.is_empty())
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    };
    let ok_exp = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit())
    });
    ok_mantissa && ok_exp
}

/// Parses one YAML document into a tree. Errors carry line and column, never content.
pub(crate) fn parse(text: &str) -> Result<Node, String> {
    let mut stack: Vec<Open> = Vec::new();
    let mut pending: Vec<(String, usize)> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;

    fn attach(stack: &mut [Open], root: &mut Option<Node>, node: Node) -> Result<(), String> {
        match stack.last_mut() {
            None => *root = Some(node),
            Some(Open::List { items, .. }) => items.push(node),
            Some(Open::Map { items, key, .. }) => match key.take() {
                // As Go sops (yaml.v3) does: a key given twice is an error, not a second entry
                // whose comments and encryption context (the key path) would be ambiguous.
                Some(k)
                    if items
                        .iter()
                        .any(|i| matches!(i, Item::Pair(o, _) if *o == k)) =>
                {
                    return Err(format!("mapping key `{k}` is given twice"));
                }
                Some(k) => items.push(Item::Pair(k, node)),
                None => match node {
                    Node::Str(s) => *key = Some(s),
                    Node::Int(i) => *key = Some(i.to_string()),
                    Node::Float(f) => *key = Some(format_float(f)),
                    Node::Bool(b) => *key = Some(b.to_string()),
                    Node::Null => *key = Some(String::new()),
                    _ => return Err("only scalar map keys are supported".into()),
                },
            },
        }
        Ok(())
    }
    fn flush(stack: &mut [Open], pending: &mut Vec<(String, usize)>, min_col: Option<usize>) {
        let Some(top) = stack.last_mut() else {
            pending.clear();
            return;
        };
        let keep_from = match min_col {
            Some(col) => pending
                .iter()
                .position(|(_, c)| *c < col)
                .unwrap_or(pending.len()),
            None => pending.len(),
        };
        let rest = pending.split_off(keep_from);
        for (c, _) in pending.drain(..) {
            match top {
                Open::List { items, .. } => items.push(Node::Comment(c)),
                Open::Map { items, .. } => items.push(Item::Comment(c)),
            }
        }
        *pending = rest;
    }

    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| {
            format!(
                "not valid YAML (line {}, column {}): {}",
                e.marker().line(),
                e.marker().col() + 1,
                e.info()
            )
        })?;
        let col = span.start.col();
        match event {
            Event::Comment(c, _) => pending.push((c.into_owned(), col)),
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err("multi-document YAML files are not supported".into());
                }
            }
            Event::MappingStart(..) => {
                stack.push(Open::Map {
                    items: Vec::new(),
                    key: None,
                    indent: None,
                });
                flush(&mut stack, &mut pending, None);
            }
            Event::SequenceStart(..) => {
                stack.push(Open::List {
                    items: Vec::new(),
                    indent: col,
                });
                flush(&mut stack, &mut pending, None);
            }
            Event::MappingEnd => {
                let indent = match stack.last() {
                    Some(Open::Map { indent, .. }) => *indent,
                    _ => None,
                };
                flush(&mut stack, &mut pending, indent);
                if let Some(Open::Map { items, .. }) = stack.pop() {
                    attach(&mut stack, &mut root, Node::Map(items))?;
                }
            }
            Event::SequenceEnd => {
                let indent = match stack.last() {
                    Some(Open::List { indent, .. }) => Some(*indent),
                    _ => None,
                };
                flush(&mut stack, &mut pending, indent);
                if let Some(Open::List { items, .. }) = stack.pop() {
                    attach(&mut stack, &mut root, Node::List(items))?;
                }
            }
            Event::Scalar(value, style, _, tag) => {
                let expecting_key = matches!(stack.last(), Some(Open::Map { key: None, .. }));
                if expecting_key && let Some(Open::Map { indent, .. }) = stack.last_mut() {
                    indent.get_or_insert(col);
                }
                if expecting_key || matches!(stack.last(), Some(Open::List { .. })) {
                    flush(&mut stack, &mut pending, None);
                }
                let tag_suffix = tag.as_ref().map(|t| t.suffix().to_string());
                let node = match (style, tag_suffix.as_deref()) {
                    (_, Some("str")) => Node::Str(value.into_owned()),
                    (ScalarStyle::Plain, _) => resolve_plain(&value),
                    _ => Node::Str(value.into_owned()),
                };
                attach(&mut stack, &mut root, node)?;
            }
            Event::Alias(..) => {
                return Err(format!(
                    "line {}: YAML aliases are not supported in sops files",
                    span.start.line()
                ));
            }
            _ => {}
        }
    }
    Ok(root.unwrap_or(Node::Map(Vec::new())))
}

const INDENT: usize = 4;

fn needs_quotes(s: &str) -> bool {
    if s.is_empty() || s != s.trim() {
        return true;
    }
    if !matches!(resolve_plain(s), Node::Str(_)) {
        return true;
    }
    let first = s.chars().next().unwrap_or(' ');
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) || first.is_ascii_digit() {
        return true;
    }
    s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.chars().any(|c| c.is_control() || c == '\u{feff}')
}

fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn key_text(k: &str) -> String {
    if needs_quotes(k) {
        quoted(k)
    } else {
        k.to_string()
    }
}

fn scalar(out: &mut String, node: &Node, child_indent: usize) {
    match node {
        Node::Str(s) => string(out, s, child_indent),
        Node::Bytes(b) => string(out, &String::from_utf8_lossy(b), child_indent),
        Node::Comment(c) => string(out, c, child_indent),
        Node::Int(i) => out.push_str(&i.to_string()),
        Node::Float(f) if f.is_nan() => out.push_str(".nan"),
        Node::Float(f) if f.is_infinite() => out.push_str(if *f > 0.0 { ".inf" } else { "-.inf" }),
        Node::Float(f) => {
            let t = format_float(*f);
            out.push_str(&t);
            if !t.contains(['.', 'e', 'E']) {
                out.push_str(".0");
            }
        }
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Null => out.push_str("null"),
        Node::Map(_) | Node::List(_) => {}
    }
}

fn string(out: &mut String, s: &str, child_indent: usize) {
    let block_ok = s.contains('\n')
        && !s.starts_with([' ', '\n'])
        && !s.chars().any(|c| c.is_control() && c != '\n')
        && !s.lines().any(|l| l != l.trim_end());
    if block_ok {
        let trailing = s.len() - s.trim_end_matches('\n').len();
        out.push_str(match trailing {
            0 => "|-",
            1 => "|",
            _ => "|+",
        });
        let body = if trailing == 1 { &s[..s.len() - 1] } else { s };
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.extend(std::iter::repeat_n(' ', child_indent));
                out.push_str(line);
            }
        }
        if trailing > 1 {
            // `|+` keeps the final empty lines; the split above emitted them.
        }
    } else if needs_quotes(s) {
        out.push_str(&quoted(s));
    } else {
        out.push_str(s);
    }
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn map(out: &mut String, items: &[Item], indent: usize, first_inline: bool) {
    let mut first = first_inline;
    for item in items {
        if !first {
            pad(out, indent);
        }
        first = false;
        match item {
            Item::Comment(c) => {
                out.push('#');
                out.push_str(c);
                out.push('\n');
            }
            Item::Pair(k, v) => {
                out.push_str(&key_text(k));
                out.push(':');
                value_after_key(out, v, indent);
            }
        }
    }
}

fn value_after_key(out: &mut String, v: &Node, indent: usize) {
    match v {
        Node::Map(items) if !items.is_empty() => {
            out.push('\n');
            map(out, items, indent + INDENT, false);
        }
        Node::Map(_) => out.push_str(" {}\n"),
        Node::List(list) if !list.is_empty() => {
            out.push('\n');
            seq(out, list, indent + INDENT);
        }
        Node::List(_) => out.push_str(" []\n"),
        leaf => {
            out.push(' ');
            scalar(out, leaf, indent + INDENT);
            out.push('\n');
        }
    }
}

fn seq(out: &mut String, list: &[Node], indent: usize) {
    for node in list {
        pad(out, indent);
        match node {
            Node::Comment(c) => {
                out.push('#');
                out.push_str(c);
                out.push('\n');
            }
            Node::Map(items) if !items.is_empty() => {
                out.push_str("- ");
                map(out, items, indent + 2, true);
            }
            Node::List(inner) if !inner.is_empty() => {
                out.push_str("-\n");
                seq(out, inner, indent + 2);
            }
            Node::Map(_) => out.push_str("- {}\n"),
            Node::List(_) => out.push_str("- []\n"),
            leaf => {
                out.push_str("- ");
                scalar(out, leaf, indent + 2);
                out.push('\n');
            }
        }
    }
}

/// Emits `node` as a YAML document.
pub(crate) fn emit(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Map(items) if !items.is_empty() => map(&mut out, items, 0, false),
        Node::Map(_) => out.push_str("{}\n"),
        Node::List(list) if !list.is_empty() => seq(&mut out, list, 0),
        Node::List(_) => out.push_str("[]\n"),
        leaf => {
            scalar(&mut out, leaf, 0);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tree::leaf_bytes;

    #[test]
    fn a_key_given_twice_is_refused() {
        let err = parse("a: 1\nb:\n    c: 2\na: 3\n").err();
        assert_eq!(err.as_deref(), Some("mapping key `a` is given twice"));
        let err = parse("b:\n    c: 2\n    c: 3\n").err();
        assert_eq!(err.as_deref(), Some("mapping key `c` is given twice"));
    }

    #[test]
    fn parse_and_emit_round_trip() {
        let text = "# head\na: 1\nb:\n    c: \"x: y\"\n    # inner\n    d:\n        - 1.5\n        - true\n        - |\n          two\n          lines\nplain: hello\nempty:\n";
        let tree = parse(text).unwrap();
        let out = emit(&tree);
        let again = parse(&out).unwrap();
        assert_eq!(emit(&again), out);
        let d = again.get("b").unwrap().get("d").unwrap();
        let Node::List(list) = d else { panic!() };
        assert_eq!(leaf_bytes(&list[2]).unwrap(), b"two\nlines\n");
        assert!(matches!(again.get("empty"), Some(Node::Null)));
        assert!(out.starts_with("# head\n"));
        assert!(out.contains("    # inner\n"));
    }

    #[test]
    fn a_comment_after_a_sequence_stays_with_the_mapping_it_is_indented_under() {
        // Fuzz finding (CI smoke): the comment was taken into the list, so a document
        // emitted again moved it under the sequence's items.
        let text = "a:
    b:
        - 1
        - 2
    # about b
    c: 3
    # last in a
# top
d: 4
";
        let tree = parse(text).unwrap();
        let out = emit(&tree);
        assert_eq!(out, text);
        let Some(Node::List(b)) = tree.get("a").and_then(|a| a.get("b")) else {
            panic!()
        };
        assert!(!b.iter().any(|n| matches!(n, Node::Comment(_))));
        let again = parse(&out).unwrap();
        assert_eq!(emit(&again), out);
    }
}
