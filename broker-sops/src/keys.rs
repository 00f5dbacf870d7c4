//! Where age identities and PGP secret keys come from, as sops users expect, plus the
//! backend's settings.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use broker_core::{Error, ErrorKind};
use zeroize::Zeroizing;

/// Looks up an environment variable (the process environment, or a fixed map in tests).
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Loaded age identities and PGP secret keys and where they came from. Holds key material:
/// no `Debug`.
pub(crate) struct KeyRing {
    pub age: Vec<Box<dyn age::Identity + Send + Sync>>,
    pub pgp: Vec<pgp::composed::SignedSecretKey>,
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
    pub pgp_key_file: Option<PathBuf>,
}

/// Reads a key file through [`broker_core::localfile`]: never blocks on a FIFO or device,
/// bounded in size.
fn read(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    broker_core::localfile::read(path, broker_core::localfile::MAX_SECRET_FILE).map_err(|e| {
        let kind = match e.io_kind() {
            Some(std::io::ErrorKind::NotFound) => ErrorKind::NotFound,
            Some(_) => ErrorKind::Io,
            None => ErrorKind::Unsupported,
        };
        Error::new(kind, format!("cannot read {what} {}: {e}", path.display()))
    })
}

impl KeyRing {
    fn empty() -> KeyRing {
        KeyRing {
            age: Vec::new(),
            pgp: Vec::new(),
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

    /// Adds the unencrypted OpenPGP secret keys (armored or binary, one or more) in `bytes`.
    /// A passphrase-protected key is an error: there is no one to ask for the passphrase.
    fn add_pgp(&mut self, bytes: &[u8], source: &str) -> Result<(), Error> {
        use pgp::composed::{Deserializable, PublicOrSecret, SignedSecretKey};
        use pgp::types::KeyDetails;
        const BEGIN: &str = "-----BEGIN PGP PRIVATE KEY BLOCK-----";
        const END: &str = "-----END PGP PRIVATE KEY BLOCK-----";
        let not_keys = || {
            Error::invalid_config(format!(
                "{source} is not an OpenPGP secret key file (export it with `gpg --export-secret-keys`)"
            ))
        };
        let mut keys: Vec<SignedSecretKey> = Vec::new();
        match std::str::from_utf8(bytes) {
            // Armored: `gpg --export-secret-keys --armor` output, possibly several blocks (and
            // public key blocks, which are skipped) in one file.
            Ok(text) if text.contains(BEGIN) => {
                let mut rest = text;
                while let Some(start) = rest.find(BEGIN) {
                    let block = &rest[start..];
                    let end = block.find(END).ok_or_else(not_keys)? + END.len();
                    let (parsed, _) = SignedSecretKey::from_armor_many(&block.as_bytes()[..end])
                        .map_err(|_| not_keys())?;
                    for key in parsed {
                        keys.push(key.map_err(|_| not_keys())?);
                    }
                    rest = &block[end..];
                }
            }
            _ => {
                let (parsed, _) =
                    PublicOrSecret::from_reader_many(bytes).map_err(|_| not_keys())?;
                for key in parsed {
                    if let PublicOrSecret::Secret(k) = key.map_err(|_| not_keys())? {
                        keys.push(k);
                    }
                }
            }
        }
        let mut fingerprints = Vec::new();
        for key in keys {
            let fp = format!("{:X}", key.fingerprint());
            let protected = key.primary_key.secret_params().is_encrypted()
                || key
                    .secret_subkeys
                    .iter()
                    .any(|s| s.key.secret_params().is_encrypted());
            if protected {
                return Err(Error::invalid_config(format!(
                    "{source}: PGP key {fp} is passphrase-protected, which is not supported \
                     non-interactively"
                ))
                .with_hint(
                    "export an unprotected copy for this machine (gpg --export-secret-keys after \
                     removing the passphrase in a throwaway GNUPGHOME), or use an age key",
                ));
            }
            fingerprints.push(fp);
            self.pgp.push(key);
        }
        if fingerprints.is_empty() {
            return Err(not_keys());
        }
        self.sources
            .push(format!("{source} (pgp {})", fingerprints.join(", ")));
        Ok(())
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
        if let Some(path) = &explicit.pgp_key_file {
            let bytes = read(path, "PGP key file (backends.sops.pgp_key_file)")?;
            ring.add_pgp(&bytes, &format!("pgp_key_file {}", path.display()))?;
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
            && let Ok(text) = read(&path, "age key file")
        {
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

impl KeyRing {
    /// Decrypts an armored (or binary) OpenPGP message `enc` (a PKESK to one of our keys) with
    /// the loaded PGP keys. `Ok(None)` when none of them is a recipient.
    pub(crate) fn decrypt_pgp(&self, enc: &str) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
        use pgp::composed::Message;
        use pgp::types::Password;
        if self.pgp.is_empty() {
            return Ok(None);
        }
        let corrupt = || "the PGP-wrapped data key is corrupt or tampered".to_string();
        let trimmed = enc.trim();
        let msg = if trimmed.starts_with("-----BEGIN PGP MESSAGE-----") {
            Message::from_armor(std::io::Cursor::new(trimmed.as_bytes()))
                .map(|(m, _)| m)
                .map_err(|_| corrupt())?
        } else {
            Message::from_bytes(std::io::Cursor::new(enc.as_bytes())).map_err(|_| corrupt())?
        };
        let password = Password::empty();
        let passwords = vec![&password; self.pgp.len()];
        let msg = match msg.decrypt_with_keys(passwords, self.pgp.iter().collect()) {
            Ok(m) => m,
            Err(pgp::errors::Error::MissingKey) => return Ok(None),
            Err(_) => return Err(corrupt()),
        };
        let mut msg = if msg.is_compressed() {
            msg.decompress().map_err(|_| corrupt())?
        } else {
            msg
        };
        let data = msg.as_data_vec().map_err(|_| corrupt())?;
        Ok(Some(Zeroizing::new(data)))
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
