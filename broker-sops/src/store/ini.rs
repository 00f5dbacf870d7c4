//! INI store, following what sops does with go-ini: sections are maps, every value a string,
//! a comment before a section belongs to the section, a comment before a key is kept after it
//! in the tree; metadata lives in `[sops]`, flattened.

use super::{Loaded, flatten_meta, unflatten_meta, value_to_string};
use crate::tree::{Item, Node};

struct Section {
    name: String,
    comment: Option<String>,
    keys: Vec<(String, String, Option<String>)>,
}

fn strip_comment_char(c: &str) -> String {
    if c.starts_with(';') {
        c.trim_start_matches([';', ' ']).to_string()
    } else if c.starts_with('#') {
        c.trim_start_matches(['#', ' ']).to_string()
    } else {
        c.to_string()
    }
}

fn parse_sections(text: &str) -> Result<Vec<Section>, String> {
    let mut sections = vec![Section {
        name: "DEFAULT".into(),
        comment: None,
        keys: Vec::new(),
    }];
    let mut pending: Vec<String> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let n = i + 1;
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() {
            continue;
        }
        if line.starts_with(';') || line.starts_with('#') {
            pending.push(line.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| format!("line {n}: unclosed section header"))?
                .trim()
                .to_string();
            let comment = (!pending.is_empty()).then(|| pending.join("\n"));
            pending.clear();
            if let Some(s) = sections.iter_mut().find(|s| s.name == name) {
                if s.comment.is_none() {
                    s.comment = comment;
                }
            } else {
                sections.push(Section {
                    name,
                    comment,
                    keys: Vec::new(),
                });
            }
            continue;
        }
        let Some(eq) = line.find(['=', ':']) else {
            return Err(format!(
                "line {n} is neither a section, a comment nor KEY = VALUE"
            ));
        };
        let key = line[..eq].trim().to_string();
        let raw = line[eq + 1..].trim();
        let value = if let Some(rest) = raw.strip_prefix("\"\"\"") {
            if let Some(end) = rest.find("\"\"\"") {
                rest[..end].to_string()
            } else {
                let mut acc = rest.to_string();
                loop {
                    let Some(next) = lines.get(i) else {
                        return Err(format!("line {n}: unterminated \"\"\" value"));
                    };
                    i += 1;
                    acc.push('\n');
                    if let Some(end) = next.find("\"\"\"") {
                        acc.push_str(&next[..end]);
                        break;
                    }
                    acc.push_str(next);
                }
                acc
            }
        } else if raw.len() >= 2
            && ((raw.starts_with('"') && raw.ends_with('"'))
                || (raw.starts_with('`') && raw.ends_with('`')))
        {
            raw[1..raw.len() - 1].to_string()
        } else {
            // go-ini drops an inline comment that follows whitespace.
            let cut = raw
                .char_indices()
                .find(|(j, c)| {
                    (*c == '#' || *c == ';') && raw[..*j].ends_with(|p: char| p.is_whitespace())
                })
                .map(|(j, _)| j);
            match cut {
                Some(j) => raw[..j].trim_end().to_string(),
                None => raw.to_string(),
            }
        };
        let comment = (!pending.is_empty()).then(|| pending.join("\n"));
        pending.clear();
        if let Some(section) = sections.last_mut() {
            section.keys.push((key, value, comment));
        }
    }
    Ok(sections)
}

/// Parses an encrypted INI file.
pub(crate) fn load(text: &str) -> Result<Loaded, String> {
    let sections = parse_sections(text)?;
    let mut data = Vec::new();
    let mut meta = None;
    for s in sections {
        if s.name == "sops" {
            meta = Some(unflatten_meta(
                s.keys.into_iter().map(|(k, v, _)| (k, v)).collect(),
            ));
            continue;
        }
        let mut items = Vec::new();
        if let Some(c) = &s.comment {
            items.push(Item::Comment(strip_comment_char(c)));
        }
        for (k, v, c) in s.keys {
            items.push(Item::Pair(k, Node::Str(v)));
            if let Some(c) = c {
                items.push(Item::Comment(strip_comment_char(&c)));
            }
        }
        data.push(Item::Pair(s.name, Node::Map(items)));
    }
    let meta = meta.ok_or("sops metadata not found (no [sops] section)")?;
    Ok(Loaded {
        data: Node::Map(data),
        meta,
    })
}

/// How `v` is written after `KEY = `: the usual form for its characters, or else the first
/// other form that reads back as exactly `v` (a value such as `` `" `` would close a `"""`
/// block early). `None` when no form does (no value this parser read is like that).
fn quote(v: &str) -> Option<String> {
    let usual = if v.contains('\n') || v.contains('`') {
        format!("\"\"\"{v}\"\"\"")
    } else if v.contains(['#', ';']) || v != v.trim() {
        format!("`{v}`")
    } else {
        v.to_string()
    };
    let reads_back = |form: &String| {
        parse_sections(&format!("k = {form}\n"))
            .ok()
            .and_then(|s| s.into_iter().next())
            .and_then(|s| s.keys.into_iter().next())
            .is_some_and(|(_, value, _)| value == v)
    };
    [
        usual,
        v.to_string(),
        format!("`{v}`"),
        format!("\"{v}\""),
        format!("\"\"\"{v}\"\"\""),
    ]
    .into_iter()
    .find(reads_back)
}

fn comment_lines(out: &mut String, c: &str) {
    for line in c.split('\n') {
        if line.starts_with(';') || line.starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str("; ");
            out.push_str(line);
        }
        out.push('\n');
    }
}

fn section(
    out: &mut String,
    name: &str,
    comment: Option<&str>,
    keys: &[(String, String, Option<String>)],
) -> Result<(), String> {
    if name == "DEFAULT" && keys.is_empty() && comment.is_none() {
        return Ok(());
    }
    if !out.is_empty() {
        out.push('\n');
    }
    if let Some(c) = comment {
        comment_lines(out, c);
    }
    if name != "DEFAULT" {
        out.push('[');
        out.push_str(name);
        out.push_str("]\n");
    }
    let width = keys
        .iter()
        .map(|(k, _, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    for (k, v, c) in keys {
        if let Some(c) = c {
            comment_lines(out, c);
        }
        out.push_str(k);
        out.extend(std::iter::repeat_n(' ', width - k.chars().count()));
        out.push_str(" = ");
        let value = quote(v)
            .ok_or_else(|| format!("INI cannot hold the value of `{name}.{k}` as it is"))?;
        out.push_str(&value);
        out.push('\n');
    }
    Ok(())
}

/// Emits an INI document (with a `[sops]` section when `meta` is given).
pub(crate) fn emit(data: &Node, meta: Option<&Node>) -> Result<Vec<u8>, String> {
    let mut out = String::new();
    for item in data.as_map().unwrap_or_default() {
        let Item::Pair(name, body) = item else {
            continue;
        };
        let Node::Map(entries) = body else {
            return Err(format!("INI section `{name}` must be a map"));
        };
        let mut comment = None;
        let mut keys: Vec<(String, String, Option<String>)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match e {
                Item::Comment(c) if i == 0 => comment = Some(c.as_str()),
                Item::Comment(c) => {
                    if let Some(last) = keys.last_mut() {
                        last.2 = Some(c.clone());
                    }
                }
                Item::Pair(k, v) => {
                    let v = value_to_string(v)
                        .ok_or_else(|| format!("`{name}.{k}` is nested, which INI cannot hold"))?;
                    keys.push((k.clone(), v, None));
                }
            }
        }
        section(&mut out, name, comment, &keys)?;
    }
    if let Some(meta) = meta {
        let keys: Vec<(String, String, Option<String>)> = flatten_meta(meta)
            .into_iter()
            .map(|(k, v)| (k, v, None))
            .collect();
        section(&mut out, "sops", None, &keys)?;
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_read_is_written_so_that_it_reads_back() {
        // `` `" `` once closed a `"""` block early (a fuzz finding: the MAC then mismatched).
        for v in [
            "`\"",
            "a\"\"\"b",
            " x #y ",
            "`a`",
            "\"q\"",
            "multi\nline `x`",
            "",
            "plain",
        ] {
            let form = quote(v).unwrap_or_else(|| panic!("no form for {v:?}"));
            let text = format!("[s]\nk = {form}\n");
            let sections = parse_sections(&text).unwrap();
            let (_, back, _) = &sections[1].keys[0];
            assert_eq!(back, v, "{form}");
        }
    }
}
