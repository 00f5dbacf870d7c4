//! Where age identities come from, as sops users expect, plus the backend's settings.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use broker_core::{Error, ErrorKind};
use zeroize::Zeroizing;

/// Looks up an environment variable (the process environment, or a fixed map in tests).
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Loaded age identities and where they came from. Holds key material: no `Debug`.
pub(crate) struct KeyRing {
    pub age: Vec<Box<dyn age::Identity + Send + Sync>>,
    /// Value-free descriptions of the sources that gave identities.
    pub sources: Vec<String>,
    /// Value-free notes about sources that were skipped (passphrase-protected keys...).
    pub notes: Vec<String>,
}

/// Explicit sources from settings.
pub(crate) struct Explicit<'a> {
    pub age_key_file: Option<PathBuf>,
    pub age_ssh_key_file: Option<PathBuf>,
    pub age_key: Option<&'a [u8]>,
}

fn read(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut buf = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::NotFound
            } else {
                ErrorKind::Io
            };
            Error::new(kind, format!("cannot read {what} {}: {e}", path.display()))
        })?;
    Ok(buf)
}

impl KeyRing {
    fn empty() -> KeyRing {
        KeyRing {
            age: Vec::new(),
            sources: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn add_age_text(&mut self, text: &[u8], source: String) -> Result<(), Error> {
        let file = age::IdentityFile::from_buffer(BufReader::new(text))
            .map_err(|_| Error::invalid_config(format!("{source} is not an age identity file")))?;
        let ids = file.into_identities().map_err(|_| {
            Error::invalid_config(format!(
                "{source} holds an identity this broker cannot use (plugin?)"
            ))
        })?;
        if ids.is_empty() {
            self.notes.push(format!("{source} holds no age identity"));
        } else {
            self.age.extend(ids);
            self.sources.push(source);
        }
        Ok(())
    }

    fn add_ssh(&mut self, text: &[u8], path: &Path, source: String) {
        match age::ssh::Identity::from_buffer(
            BufReader::new(text),
            Some(path.display().to_string()),
        ) {
            Ok(age::ssh::Identity::Unencrypted(key)) => {
                self.age
                    .push(Box::new(age::ssh::Identity::Unencrypted(key)));
                self.sources.push(source);
            }
            Ok(age::ssh::Identity::Encrypted(_)) => self.notes.push(format!(
                "{source} is passphrase-protected, which is not supported non-interactively"
            )),
            Ok(_) | Err(_) => self
                .notes
                .push(format!("{source} is not an SSH key age can use")),
        }
    }

    /// Loads identities from settings, `SOPS_AGE_KEY`, `SOPS_AGE_KEY_FILE`,
    /// `SOPS_AGE_SSH_PRIVATE_KEY_FILE` (else `~/.ssh/id_ed25519`, `~/.ssh/id_rsa`), and the
    /// default `$XDG_CONFIG_HOME/sops/age/keys.txt` (else `~/.config/sops/age/keys.txt`).
    /// Explicitly named files must exist; default locations are skipped when absent.
    pub(crate) fn load(explicit: &Explicit<'_>, env: &EnvLookup) -> Result<KeyRing, Error> {
        let mut ring = KeyRing::empty();
        if let Some(path) = &explicit.age_key_file {
            let text = read(path, "age key file (backends.sops.age_key_file)")?;
            ring.add_age_text(&text, format!("age_key_file {}", path.display()))?;
        }
        if let Some(path) = &explicit.age_ssh_key_file {
            let text = read(path, "SSH key (backends.sops.age_ssh_key_file)")?;
            ring.add_ssh(&text, path, format!("age_ssh_key_file {}", path.display()));
        }
        if let Some(text) = explicit.age_key {
            ring.add_age_text(text, "age_key_ref".into())?;
        }
        if let Some(key) = env("SOPS_AGE_KEY").filter(|k| !k.is_empty()) {
            let key = Zeroizing::new(key);
            ring.add_age_text(key.as_bytes(), "SOPS_AGE_KEY".into())?;
        }
        if let Some(path) = env("SOPS_AGE_KEY_FILE").filter(|k| !k.is_empty()) {
            let path = PathBuf::from(path);
            let text = read(&path, "SOPS_AGE_KEY_FILE")?;
            ring.add_age_text(&text, format!("SOPS_AGE_KEY_FILE {}", path.display()))?;
        }
        let home = env("HOME").map(PathBuf::from);
        match env("SOPS_AGE_SSH_PRIVATE_KEY_FILE").filter(|k| !k.is_empty()) {
            Some(path) => {
                let path = PathBuf::from(path);
                let text = read(&path, "SOPS_AGE_SSH_PRIVATE_KEY_FILE")?;
                ring.add_ssh(
                    &text,
                    &path,
                    format!("SOPS_AGE_SSH_PRIVATE_KEY_FILE {}", path.display()),
                );
            }
            None => {
                for name in ["id_ed25519", "id_rsa"] {
                    let Some(path) = home.as_ref().map(|h| h.join(".ssh").join(name)) else {
                        continue;
                    };
                    if let Ok(text) = read(&path, "SSH key") {
                        ring.add_ssh(&text, &path, path.display().to_string());
                    }
                }
            }
        }
        let config_dir = env("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.map(|h| h.join(".config")));
        if let Some(path) = config_dir.map(|d| d.join("sops/age/keys.txt"))
            && let Ok(text) = read(&path, "age key file") {
                ring.add_age_text(&text, path.display().to_string())?;
            }
        Ok(ring)
    }

    /// Decrypts an armored (or binary) age `enc` with the loaded identities. `Ok(None)` when
    /// no identity matches.
    pub(crate) fn decrypt_age(&self, enc: &str) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
        if self.age.is_empty() {
            return Ok(None);
        }
        let reader = age::armor::ArmoredReader::new(enc.trim_start().as_bytes());
        let decryptor = age::Decryptor::new(reader)
            .map_err(|_| "the age-wrapped data key is corrupt".to_string())?;
        match decryptor.decrypt(self.age.iter().map(|i| i.as_ref() as &dyn age::Identity)) {
            Ok(mut r) => {
                let mut out = Zeroizing::new(Vec::new());
                r.read_to_end(&mut out)
                    .map_err(|_| "the age-wrapped data key is corrupt".to_string())?;
                Ok(Some(out))
            }
            Err(age::DecryptError::NoMatchingKeys) => Ok(None),
            Err(_) => Err("the age-wrapped data key is corrupt or tampered".into()),
        }
    }
}

/// Encrypts `plain` to an age recipient (`age1...` or an SSH public key), armored like sops.
pub(crate) fn encrypt_age(recipient: &str, plain: &[u8]) -> Result<String, String> {
    use std::io::Write;
    let boxed: Box<dyn age::Recipient + Send> = if recipient.starts_with("age1") {
        Box::new(
            recipient
                .parse::<age::x25519::Recipient>()
                .map_err(|_| format!("`{recipient}` is not an age recipient"))?,
        )
    } else {
        Box::new(
            recipient
                .parse::<age::ssh::Recipient>()
                .map_err(|_| format!("`{recipient}` is not an SSH recipient"))?,
        )
    };
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(boxed.as_ref() as &dyn age::Recipient))
            .map_err(|_| "age encryption failed".to_string())?;
    let mut out = Vec::new();
    let armored = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|_| "age encryption failed".to_string())?;
    let mut w = encryptor
        .wrap_output(armored)
        .map_err(|_| "age encryption failed".to_string())?;
    w.write_all(plain)
        .and_then(|_| w.finish())
        .and_then(|a| a.finish())
        .map_err(|_| "age encryption failed".to_string())?;
    let mut text = String::from_utf8(out).map_err(|_| "age armor is not text".to_string())?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}
