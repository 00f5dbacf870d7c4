//! `broker init`: a commented `.broker.yml` for the working directory, proposing credentials
//! from the sops-encrypted files and `*.age` files found in it; and `broker init --from-env
//! .env`, which moves a dotenv file's values into a sops-encrypted `secrets.enc.yaml` and
//! writes references to it. Never overwrites a config or a secrets file; ends by printing the
//! egress manifest (`broker audit`) of what it wrote.
//!
//! The proposal reads only what sops leaves in the clear (key names, recipients), never a
//! value. `--from-env` encrypts natively (a fresh data key wrapped to the user's sops age key,
//! values sealed by `broker-sops`), so Go `sops` decrypts the file it writes.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use broker_core::Error;
use zeroize::Zeroizing;

use crate::cli::InitArgs;

/// The secrets file `--from-env` writes.
const SECRETS_FILE: &str = "secrets.enc.yaml";
/// Directories the scan does not enter.
const SKIP_DIRS: &[&str] = &["target", "node_modules", "vendor", "__pycache__"];
/// How deep the scan goes below the working directory.
const MAX_DEPTH: usize = 3;
/// Files larger than this are not looked at.
const MAX_FILE: u64 = 1024 * 1024;

/// `broker init [--from-env FILE [--remove-env]]` in `dir`.
pub fn init(dir: &Path, args: &InitArgs) -> Result<u8, Error> {
    for name in broker_core::config::CONFIG_FILE_NAMES {
        let existing = dir.join(name);
        if existing.exists() {
            return Err(Error::invalid_config(format!(
                "{} already exists; `broker init` does not overwrite a config",
                existing.display()
            ))
            .with_hint("edit it, or move it away to start over"));
        }
    }
    let quiet = crate::style::get().quiet;
    let mut notes: Vec<String> = Vec::new();
    let mut config = Proposal::default();
    match &args.from_env {
        Some(env_file) => from_env(dir, env_file, args.remove_env, &mut config, &mut notes)?,
        None => scan(dir, &mut config)?,
    }
    let path = dir.join(".broker.yml");
    write_new(&path, config.render().as_bytes(), 0o644)?;
    notes.insert(
        0,
        format!(
            "wrote {}: {} credential(s) proposed",
            path.display(),
            config.count
        ),
    );
    if !quiet {
        for note in &notes {
            println!("{note}");
        }
        println!("\n$ broker audit");
    }
    let broker = broker_core::Broker::discover(dir, Some(&path))?;
    let manifest = broker.manifest()?;
    crate::output::print_manifest(&manifest, false);
    Ok(0)
}

/// The config being written: its credential lines (with their comments), the names and
/// variables used so far.
#[derive(Default)]
struct Proposal {
    lines: Vec<String>,
    footer: Vec<String>,
    names: BTreeSet<String>,
    vars: BTreeSet<String>,
    count: usize,
}

impl Proposal {
    /// Adds a credential for `reference` named after `key` (a unique, valid name and `as`).
    fn credential(&mut self, key: &str, prefix: &str, reference: &str) {
        let base: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let base = if base.is_empty() {
            "secret".into()
        } else {
            base
        };
        let mut name = base.clone();
        if self.names.contains(&name) {
            name = format!("{prefix}_{base}");
        }
        let mut n = 2;
        while self.names.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        let valid_var = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        let mut var: String = if valid_var { key } else { &name }
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    if valid_var { c } else { c.to_ascii_uppercase() }
                } else {
                    '_'
                }
            })
            .collect();
        if var.starts_with(|c: char| c.is_ascii_digit()) {
            var.insert(0, '_');
        }
        let original = var.clone();
        let mut n = 2;
        while self.vars.contains(&var) {
            var = format!("{original}_{n}");
            n += 1;
        }
        self.lines.push(format!(
            "  {name}: {{ ref: {}, as: {var} }}",
            serde_json::Value::String(reference.to_string())
        ));
        self.names.insert(name);
        self.vars.insert(var);
        self.count += 1;
    }

    fn comment(&mut self, text: &str) {
        self.lines.push(format!("  # {text}"));
    }

    fn render(&self) -> String {
        let mut out = String::from(
            "# .broker.yml, written by `broker init`: what a task may be given, and from where.\n\
             # The credentials below are local (sops and age files decrypted on this machine):\n\
             # nothing leaves it, and egress stays off until you turn it on. Review them with\n\
             # `broker audit`, then run a command with `broker run -- CMD ARGS`.\n\
             # Reference: docs/config.md. Editor completion: `broker schema > .broker.schema.json`\n\
             # and `# yaml-language-server: $schema=.broker.schema.json` as the first line.\n",
        );
        if self.count == 0 {
            out.push_str(
                "#\n# Nothing to propose was found here (no sops-encrypted files, no *.age files).\n\
                 # Examples:\n\
                 #   api: { ref: \"env:STAGING_API_TOKEN\", as: API_TOKEN }\n\
                 #   db:  { ref: \"sops:secrets.enc.yaml#db.url\", as: DATABASE_URL }\n\
                 #   key: { ref: \"age:deploy-key.age\", kind: file }\n",
            );
        }
        out.push_str(
            if self.lines.iter().any(|l| !l.trim_start().starts_with('#')) {
                "credentials:\n"
            } else {
                "credentials: {}\n"
            },
        );
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        for line in &self.footer {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(
            "# Record every credential handed out (hash-chained; `broker audit verify`):\n\
             # audit: { path: .broker/audit.jsonl }\n",
        );
        out
    }
}

/// Creates `path` with `bytes`; refuses an existing file.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::invalid_config(format!(
                    "{} already exists; `broker init` does not overwrite it",
                    path.display()
                ))
                .with_hint("move it away to start over")
            } else {
                Error::io(format!("cannot create {}", path.display()), &e)
            }
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), &e))
}

/// `path` relative to `dir`, as a config would name it.
fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Files under `dir` the scan looks at, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if depth < MAX_DEPTH && !name.starts_with('.') && !SKIP_DIRS.contains(&&*name) {
                    stack.push((path, depth + 1));
                }
            } else if kind.is_file() && out.len() < 10_000 {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// What sops leaves in the clear of an encrypted file: its format, top-level keys (with
/// whether each holds a map) and age recipients. `None` when it is not a sops file.
struct SopsFile {
    keys: Vec<(String, bool)>,
    recipients: Vec<String>,
}

fn read_sops(path: &Path) -> Option<SopsFile> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_FILE {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let name = path.file_name()?.to_string_lossy();
    if ext == "json" {
        let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
        let obj = doc.as_object()?;
        let sops = obj.get("sops")?.as_object()?;
        let recipients = sops
            .get("age")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["recipient"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let keys = obj
            .iter()
            .filter(|(k, _)| *k != "sops")
            .map(|(k, v)| (k.clone(), v.is_object()))
            .collect();
        return Some(SopsFile { keys, recipients });
    }
    if ext == "yaml" || ext == "yml" {
        if !text.lines().any(|l| l == "sops:") || !text.contains("ENC[AES256_GCM,") {
            return None;
        }
        let mut keys = Vec::new();
        let mut recipients = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            if let Some(r) = trimmed
                .strip_prefix("- recipient: ")
                .or_else(|| trimmed.strip_prefix("recipient: "))
            {
                recipients.push(r.trim().trim_matches('"').to_string());
            }
            if line.starts_with(|c: char| c.is_whitespace() || c == '#' || c == '-') {
                continue;
            }
            if let Some((key, rest)) = line.split_once(':') {
                let key = key.trim().trim_matches('"').trim_matches('\'');
                if key != "sops" && !key.is_empty() {
                    keys.push((key.to_string(), rest.trim().is_empty()));
                }
            }
        }
        return Some(SopsFile { keys, recipients });
    }
    if ext == "env" || name.ends_with(".env") || name.starts_with(".env") {
        if !text.lines().any(|l| l.starts_with("sops_mac=")) {
            return None;
        }
        let mut keys = Vec::new();
        let mut recipients = Vec::new();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if key.starts_with("sops_age__list_") && key.ends_with("__map_recipient") {
                recipients.push(value.trim().to_string());
            } else if !key.starts_with("sops_") && !key.starts_with('#') && !key.is_empty() {
                keys.push((key.trim().to_string(), false));
            }
        }
        return Some(SopsFile { keys, recipients });
    }
    None
}

/// Where sops looks for the user's age key file: `$SOPS_AGE_KEY_FILE`, else
/// `$XDG_CONFIG_HOME/sops/age/keys.txt`, else `~/.config/sops/age/keys.txt`.
fn sops_key_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SOPS_AGE_KEY_FILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("sops/age/keys.txt"))
}

/// The age identities in the key file at `path` (none if it cannot be read).
fn identities(path: &Path) -> Vec<age::x25519::Identity> {
    let Ok(text) = std::fs::read_to_string(path).map(Zeroizing::new) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `broker init`: proposes credentials from the sops and age files under `dir`.
fn scan(dir: &Path, config: &mut Proposal) -> Result<(), Error> {
    let key_file = sops_key_file();
    let mine: Vec<String> = key_file
        .as_deref()
        .map(identities)
        .unwrap_or_default()
        .iter()
        .map(|i| i.to_public().to_string())
        .collect();
    let mut age_files = Vec::new();
    for path in files(dir) {
        let rel = relative(dir, &path);
        if rel.ends_with(".age") {
            age_files.push(rel);
            continue;
        }
        let Some(sops) = read_sops(&path) else {
            continue;
        };
        let readable = sops.recipients.iter().any(|r| mine.contains(r));
        let whose = match (&key_file, readable, sops.recipients.is_empty()) {
            (Some(k), true, _) => format!("your age key in {} decrypts it", k.display()),
            (_, _, true) => "no age recipient: it needs a pgp or cloud KMS key".into(),
            (_, _, false) => format!(
                "age recipient {}; no matching key where sops looks (set SOPS_AGE_KEY_FILE or backends.sops.age_key_file)",
                sops.recipients.join(", ")
            ),
        };
        config.comment(&format!("From {rel} (sops; {whose}):"));
        let stem = path
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .split('.')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        for (key, is_map) in &sops.keys {
            if *is_map {
                config.comment(&format!(
                    "{key} holds a map: the whole map is \"sops:{rel}#{key}\", one field \"sops:{rel}#{key}.FIELD\""
                ));
                config.credential(key, &stem, &format!("sops:{rel}#{key}"));
            } else {
                config.credential(key, &stem, &format!("sops:{rel}#{key}"));
            }
        }
    }
    if !age_files.is_empty() {
        config.comment(
            "age-encrypted files: each needs an identity (`backends.age.identity`, below)",
        );
        for rel in &age_files {
            let file = Path::new(rel)
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".age").to_string())
                .unwrap_or_default();
            let stem = file.split('.').next().unwrap_or("").to_string();
            config.credential(&file, &stem, &format!("age:{rel}"));
        }
        config
            .footer
            .push("# The age identity the *.age files are encrypted to:".into());
        config
            .footer
            .push(match key_file.as_ref().filter(|k| k.is_file()) {
                Some(k) => format!(
                    "backends:\n  age: {{ identity: {} }}",
                    serde_json::Value::String(k.display().to_string())
                ),
                None => "# backends:\n#   age: { identity: ~/.config/age/keys.txt }".into(),
            });
    }
    Ok(())
}

/// One `KEY=VALUE` of a dotenv file.
struct EnvEntry {
    key: String,
    value: Zeroizing<String>,
}

/// Parses a dotenv file: `KEY=VALUE`, `export KEY=VALUE`, `#` comments, single quotes
/// (literal), double quotes (`\n`, `\"`, `\\` escapes), unquoted values cut at ` #`. Errors
/// name the file and line, never the value.
fn parse_dotenv(path: &Path, text: &str) -> Result<Vec<EnvEntry>, Error> {
    let mut out: Vec<EnvEntry> = Vec::new();
    let bad = |line: usize, what: &str| {
        Error::invalid_config(format!("{}:{line}: {what}", path.display()))
            .with_hint("lines are KEY=VALUE (optionally `export KEY=VALUE`), `#` comments")
    };
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let n = i + 1;
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, rest)) = line.split_once('=') else {
            return Err(bad(n, "not a KEY=VALUE line"));
        };
        let key = key.trim();
        if key.is_empty()
            || key.starts_with(|c: char| c.is_ascii_digit())
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(bad(n, "a key must be letters, digits and `_`"));
        }
        if out.iter().any(|e| e.key == key) {
            return Err(bad(n, &format!("`{key}` is set twice")));
        }
        let rest = rest.trim_start();
        let mut value = Zeroizing::new(String::new());
        if let Some(body) = rest.strip_prefix('\'') {
            let mut body = Zeroizing::new(body.to_string());
            loop {
                if let Some(end) = body.find('\'') {
                    value.push_str(&body[..end]);
                    break;
                }
                value.push_str(&body);
                value.push('\n');
                match lines.next() {
                    Some((_, next)) => body = Zeroizing::new(next.to_string()),
                    None => return Err(bad(n, "a single quote is not closed")),
                }
            }
        } else if let Some(body) = rest.strip_prefix('"') {
            let mut body = Zeroizing::new(body.to_string());
            'outer: loop {
                let mut chars = body.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break 'outer,
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some('t') => value.push('\t'),
                            Some(other) => value.push(other),
                            None => value.push('\\'),
                        },
                        c => value.push(c),
                    }
                }
                value.push('\n');
                match lines.next() {
                    Some((_, next)) => body = Zeroizing::new(next.to_string()),
                    None => return Err(bad(n, "a double quote is not closed")),
                }
            }
        } else {
            let cut = rest.find(" #").unwrap_or(rest.len());
            value.push_str(rest[..cut].trim_end());
        }
        out.push(EnvEntry {
            key: key.to_string(),
            value,
        });
    }
    Ok(out)
}

/// The user's sops age identity, or a new one written where sops looks (with a note).
fn sops_identity(notes: &mut Vec<String>) -> Result<age::x25519::Identity, Error> {
    use age::secrecy::ExposeSecret;
    let path = sops_key_file().ok_or_else(|| {
        Error::not_configured("cannot tell where sops keeps its age key")
            .with_hint("set SOPS_AGE_KEY_FILE (or HOME)")
    })?;
    if path.exists() {
        let found = identities(&path);
        let identity = found.into_iter().next().ok_or_else(|| {
            Error::invalid_config(format!("{} holds no age key", path.display())).with_hint(
                "add one with `age-keygen >> FILE`, or point SOPS_AGE_KEY_FILE at another file",
            )
        })?;
        notes.push(format!(
            "encrypted for your sops age key {} ({})",
            identity.to_public(),
            path.display()
        ));
        return Ok(identity);
    }
    let identity = age::x25519::Identity::generate();
    if let Some(parent) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| Error::io(format!("cannot create {}", parent.display()), &e))?;
    }
    let created = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let text = Zeroizing::new(format!(
        "# created: {created}\n# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    ));
    write_new(&path, text.as_bytes(), 0o600)?;
    notes.push(format!(
        "created a new age key {} in {}, where sops looks for it: back it up, without it {SECRETS_FILE} cannot be decrypted",
        identity.to_public(),
        path.display()
    ));
    Ok(identity)
}

/// The sops-encrypted YAML of `entries` for `recipient`.
fn encrypt(entries: &[EnvEntry], recipient: &age::x25519::Recipient) -> Result<Vec<u8>, Error> {
    let fail = |what: &str| Error::internal(format!("cannot encrypt {SECRETS_FILE}: {what}"));
    let data_key = Zeroizing::new(rand::random::<[u8; 32]>());
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|_| fail("age refuses the recipient"))?;
    let mut wrapped = Vec::new();
    {
        use age::armor::{ArmoredWriter, Format};
        let armor = ArmoredWriter::wrap_output(&mut wrapped, Format::AsciiArmor)
            .map_err(|_| fail("age armor"))?;
        let mut writer = encryptor
            .wrap_output(armor)
            .map_err(|_| fail("age header"))?;
        writer
            .write_all(&data_key[..])
            .and_then(|()| writer.finish())
            .and_then(|a| a.finish())
            .map_err(|_| fail("age wrap"))?;
    }
    let wrapped = String::from_utf8(wrapped).map_err(|_| fail("age armor is not text"))?;
    let now = time::OffsetDateTime::now_utc();
    let lastmodified = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let mut plain = Zeroizing::new(String::new());
    for e in entries {
        let quoted = Zeroizing::new(serde_json::Value::String(e.value.to_string()).to_string());
        plain.push_str(&format!("{}: {}\n", e.key, quoted.as_str()));
    }
    plain.push_str("sops:\n    age:\n        - recipient: ");
    plain.push_str(&recipient.to_string());
    plain.push_str("\n          enc: |\n");
    for line in wrapped.lines() {
        plain.push_str("            ");
        plain.push_str(line);
        plain.push('\n');
    }
    plain.push_str(&format!(
        "    lastmodified: \"{lastmodified}\"\n    unencrypted_suffix: _unencrypted\n    version: 3.11.0\n"
    ));
    broker_sops::fuzzing::encrypt_with_key(broker_sops::Format::Yaml, &plain, &data_key[..])
        .map_err(|_| fail("sops refused the document"))
}

/// `broker init --from-env FILE`.
fn from_env(
    dir: &Path,
    env_file: &Path,
    remove: bool,
    config: &mut Proposal,
    notes: &mut Vec<String>,
) -> Result<(), Error> {
    let env_path = if env_file.is_absolute() {
        env_file.to_path_buf()
    } else {
        dir.join(env_file)
    };
    let text = std::fs::read_to_string(&env_path)
        .map(Zeroizing::new)
        .map_err(|e| Error::io(format!("cannot read {}", env_path.display()), &e))?;
    let entries = parse_dotenv(&env_path, &text)?;
    drop(text);
    if entries.is_empty() {
        return Err(Error::invalid_config(format!(
            "{} holds no KEY=VALUE line",
            env_path.display()
        )));
    }
    let secrets = dir.join(SECRETS_FILE);
    if secrets.exists() {
        return Err(Error::invalid_config(format!(
            "{} already exists; `broker init` does not overwrite it",
            secrets.display()
        ))
        .with_hint("move it away to start over"));
    }
    let identity = sops_identity(notes)?;
    let encrypted = encrypt(&entries, &identity.to_public())?;
    write_new(&secrets, &encrypted, 0o644)?;
    notes.insert(
        0,
        format!(
            "wrote {}: {} value(s) from {}, sops-encrypted",
            secrets.display(),
            entries.len(),
            env_path.display()
        ),
    );
    config.comment(&format!(
        "From {} (moved into {SECRETS_FILE}, sops-encrypted to your age key):",
        env_file.display()
    ));
    for e in &entries {
        config.credential(&e.key, "env", &format!("sops:{SECRETS_FILE}#{}", e.key));
    }
    // Keep the dotenv file out of git.
    let shown = relative(dir, &env_path);
    if env_path.parent() == Some(dir) {
        let gitignore = dir.join(".gitignore");
        let current = std::fs::read_to_string(&gitignore).unwrap_or_default();
        let entry = format!("/{shown}");
        if !current
            .lines()
            .any(|l| l.trim() == shown || l.trim() == entry)
        {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&gitignore)
                .map_err(|e| Error::io(format!("cannot open {}", gitignore.display()), &e))?;
            let sep = if current.is_empty() || current.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            writeln!(file, "{sep}{shown}")
                .map_err(|e| Error::io(format!("cannot write {}", gitignore.display()), &e))?;
            notes.push(format!("added {shown} to .gitignore"));
        }
    }
    if remove {
        wipe(&env_path)?;
        notes.push(format!("overwrote and removed {shown}"));
    } else {
        notes.push(format!(
            "left {shown} as it is: delete it once `broker run` works (or rerun with --remove-env)"
        ));
    }
    Ok(())
}

/// Overwrites `path` with zeros (synced) before removing it.
fn wipe(path: &Path) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::io(format!("cannot wipe {}", path.display()), &e);
    let len = std::fs::metadata(path).map_err(fail)?.len();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(fail)?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n]).map_err(fail)?;
        left -= n as u64;
    }
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::remove_file(path).map_err(fail)
}
