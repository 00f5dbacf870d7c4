//! Every error path: distinct kinds and messages, and no plaintext or key material in any of
//! them (canaries).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;

use age::secrecy::{ExposeSecret, SecretString};
use broker_age::{AgeProvider, IdentityList, IdentitySpec, RecipientList, Settings};
use broker_core::testkit::{assert_no_canary, require_peer};
use broker_core::{Error, ErrorKind};
use common::*;

struct Fixture {
    dir: tempfile::TempDir,
    secret: String,
    key_text: String,
}

/// A temp dir with `key.txt` (X25519), `s.age` (binary) and `a.age` (armored) holding a canary.
fn setup() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    let key_text = identity.to_string().expose_secret().to_string();
    std::fs::write(
        dir.path().join("key.txt"),
        format!("# test key\n{key_text}\n"),
    )
    .unwrap();
    let secret = canary("err");
    let recipient = identity.to_public();
    let bin = age::encrypt(&recipient, secret.as_bytes()).unwrap();
    std::fs::write(dir.path().join("s.age"), bin).unwrap();
    let armored = age::encrypt_and_armor(&recipient, secret.as_bytes()).unwrap();
    std::fs::write(dir.path().join("a.age"), armored).unwrap();
    Fixture {
        dir,
        secret,
        key_text,
    }
}

impl Fixture {
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn provider(&self) -> AgeProvider {
        with_identities(&[&self.path().join("key.txt")])
    }
    fn canaries(&self) -> Vec<&str> {
        vec![self.secret.as_str(), self.key_text.as_str()]
    }
    fn assert_clean(&self, err: &Error) {
        assert_no_canary("error", &format!("{err} | {err:?}"), &self.canaries());
        assert!(!err.is_retryable(), "{err}");
    }
}

#[tokio::test]
async fn both_formats_resolve() {
    let f = setup();
    for r in ["age:s.age", "age:a.age", "agenix:a.age"] {
        let got = resolve(&f.provider(), r, f.path()).await.unwrap();
        assert_eq!(got.value().expose(), f.secret.as_bytes());
        assert_no_canary("credential Debug", &format!("{got:?}"), &f.canaries());
    }
    assert_no_canary(
        "provider Debug",
        &format!("{:?}", f.provider()),
        &f.canaries(),
    );
}

#[tokio::test]
async fn missing_file_is_not_found() {
    let f = setup();
    let err = resolve(&f.provider(), "age:nope.age", f.path())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("nope.age") && err.to_string().contains("does not exist"));
    f.assert_clean(&err);
}

#[tokio::test]
async fn wrong_key_names_what_was_tried() {
    let f = setup();
    let other = age::x25519::Identity::generate();
    let other_text = other.to_string().expose_secret().to_string();
    std::fs::write(f.path().join("other.txt"), &other_text).unwrap();
    let p = with_identities(&[&f.path().join("other.txt")]);
    let err = resolve(&p, "age:s.age", f.path()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let want = format!(
        "no identity matches {}; tried: {}",
        f.path().join("s.age").display(),
        f.path().join("other.txt").display()
    );
    assert!(err.to_string().contains(&want), "{err}");
    f.assert_clean(&err);
    assert_no_canary("error", &err.to_string(), &[&other_text]);
}

#[tokio::test]
async fn truncated_and_corrupted_files_are_integrity_errors() {
    let f = setup();
    let p = f.provider();
    for name in ["s.age", "a.age"] {
        let good = std::fs::read(f.path().join(name)).unwrap();
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for cut in [1, 10, 40, good.len() / 2, good.len() - 20, good.len() - 2] {
            cases.push((format!("{name} cut at {cut}"), good[..cut].to_vec()));
        }
        cases.push((format!("{name} empty"), Vec::new()));
        if name == "s.age" {
            // The header MAC (a damaged recipient line looks like a wrong key: age cannot tell)
            // and the payload.
            let mac = good.windows(5).position(|w| w == b"\n--- ").unwrap() + 8;
            for at in [mac, good.len() - 5] {
                let mut bad = good.clone();
                bad[at] ^= 0x01;
                cases.push((format!("{name} flipped at {at}"), bad));
            }
            let mut extended = good.clone();
            extended.extend_from_slice(b"trailing");
            cases.push((format!("{name} extended"), extended));
        } else {
            // Change one base64 character of the payload line.
            let text = String::from_utf8(good.clone()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let mut bad_lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            let i = lines.len() - 2;
            let mut chars: Vec<char> = bad_lines[i].chars().collect();
            chars[3] = if chars[3] == 'A' { 'B' } else { 'A' };
            bad_lines[i] = chars.into_iter().collect();
            cases.push((
                format!("{name} payload edited"),
                (bad_lines.join("\n") + "\n").into_bytes(),
            ));
        }
        for (what, bytes) in cases {
            std::fs::write(f.path().join("bad.age"), &bytes).unwrap();
            let Err(err) = resolve(&p, "age:bad.age", f.path()).await else {
                panic!("{what} decrypted");
            };
            assert_eq!(err.kind(), ErrorKind::Integrity, "{what}: {err}");
            assert!(err.to_string().contains("cannot decrypt"), "{what}: {err}");
            f.assert_clean(&err);
        }
    }
    // A plain text file is not an age file.
    std::fs::write(f.path().join("plain.age"), &f.secret).unwrap();
    let err = resolve(&p, "age:plain.age", f.path()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    f.assert_clean(&err);
}

#[tokio::test]
async fn passphrase_encrypted_file_is_unsupported() {
    let f = setup();
    let enc = age::Encryptor::with_user_passphrase(SecretString::from("pw".to_string()));
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).unwrap();
    w.write_all(f.secret.as_bytes()).unwrap();
    w.finish().unwrap();
    std::fs::write(f.path().join("pw.age"), out).unwrap();
    let err = resolve(&f.provider(), "age:pw.age", f.path())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(
        err.to_string().contains("encrypted with a passphrase"),
        "{err}"
    );
    f.assert_clean(&err);
}

#[tokio::test]
async fn passphrase_protected_ssh_keys_are_refused_clearly() {
    let Some(ssh_keygen) = require_peer("ssh-keygen") else {
        return;
    };
    let f = setup();
    for (kind, extra) in [
        ("ed25519", &[][..]),
        ("rsa", &["-b", "2048", "-m", "PEM"][..]),
    ] {
        let key = f.path().join(format!("id_{kind}_pw"));
        run(std::process::Command::new(&ssh_keygen)
            .args(["-q", "-t", kind, "-N", "correct horse", "-C", "", "-f"])
            .arg(&key)
            .args(extra));
        let p = with_identities(&[&key]);
        let err = resolve(&p, "age:s.age", f.path()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{kind}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("passphrase-protected") && text.contains("non-interactively"),
            "{text}"
        );
        f.assert_clean(&err);
    }
}

#[tokio::test]
async fn unsupported_ssh_key_type() {
    let Some(ssh_keygen) = require_peer("ssh-keygen") else {
        return;
    };
    let f = setup();
    let key = f.path().join("id_ecdsa");
    run(std::process::Command::new(&ssh_keygen)
        .args(["-q", "-t", "ecdsa", "-N", "", "-C", "", "-f"])
        .arg(&key));
    let err = resolve(&with_identities(&[&key]), "age:s.age", f.path())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("ecdsa"), "{err}");
}

#[tokio::test]
async fn identity_problems() {
    let f = setup();
    // A configured identity file that does not exist; a reference-looking path gets a hint.
    for written in ["missing.txt", "env:AGE_KEY"] {
        let settings = Settings {
            identity: IdentityList(vec![IdentitySpec::Path(written.into())]),
            ..Settings::default()
        };
        let err = resolve(&provider(settings, None), "age:s.age", f.path())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotConfigured, "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert_eq!(
            err.hint().is_some_and(|h| h.contains("{ ref:")),
            written.starts_with("env:"),
            "{err:?}"
        );
    }
    // No identity anywhere: HOME without ~/.ssh keys.
    let home = f.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let err = resolve(
        &provider(Settings::default(), Some(&home)),
        "age:s.age",
        f.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConfigured, "{err}");
    assert!(err.to_string().contains("id_ed25519"), "{err}");

    // Garbage in an identity file: the line number, never the line.
    let garbage = canary("garbage-line");
    std::fs::write(
        f.path().join("bad.txt"),
        format!("{}\n{garbage}\n", f.key_text),
    )
    .unwrap();
    let err = resolve(
        &with_identities(&[&f.path().join("bad.txt")]),
        "age:s.age",
        f.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("line 2"), "{err}");
    f.assert_clean(&err);
    assert_no_canary("error", &format!("{err:?}"), &[&garbage]);

    // A public key where the identity should be.
    let public = age::x25519::Identity::generate().to_public().to_string();
    std::fs::write(f.path().join("pub.txt"), &public).unwrap();
    let err = resolve(
        &with_identities(&[&f.path().join("pub.txt")]),
        "age:s.age",
        f.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("public key"), "{err}");

    // An empty identity file, and a binary one.
    std::fs::write(f.path().join("empty.txt"), "# nothing\n").unwrap();
    std::fs::write(f.path().join("bin.txt"), [0xff, 0xfe, 0x00]).unwrap();
    for name in ["empty.txt", "bin.txt"] {
        let err = resolve(
            &with_identities(&[&f.path().join(name)]),
            "age:s.age",
            f.path(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{name}: {err}");
    }
}

#[test]
fn a_secret_key_as_recipient_is_called_out_never_echoed() {
    let key = age::x25519::Identity::generate()
        .to_string()
        .expose_secret()
        .to_string();
    let settings = Settings {
        recipients: RecipientList(vec![key.clone()]),
        ..Settings::default()
    };
    let err = AgeProvider::new(settings).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("is a secret key"), "{err}");
    assert_no_canary("error", &format!("{err} {err:?}"), &[&key]);
    let err = AgeProvider::new(Settings {
        recipients: RecipientList(vec!["ssh-dss AAAA".into()]),
        ..Settings::default()
    })
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("recipients[0]"), "{err}");
}

#[tokio::test]
async fn rotate_errors_write_nothing() {
    let f = setup();
    let before = std::fs::read(f.path().join("s.age")).unwrap();
    let other = age::x25519::Identity::generate();
    std::fs::write(
        f.path().join("other.txt"),
        other.to_string().expose_secret(),
    )
    .unwrap();
    let err = rotate(
        &with_identities(&[&f.path().join("other.txt")]),
        "age:s.age",
        f.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    f.assert_clean(&err);
    let err = rotate(&f.provider(), "age:nope.age", f.path())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(std::fs::read(f.path().join("s.age")).unwrap(), before);

    // Rotate with the right key works and keeps the value.
    let rotation = rotate(&f.provider(), "age:s.age", f.path()).await.unwrap();
    assert!(
        rotation.summary.contains("1 recipient "),
        "{}",
        rotation.summary
    );
    assert_no_canary("rotation", &format!("{rotation:?}"), &f.canaries());
    assert_ne!(std::fs::read(f.path().join("s.age")).unwrap(), before);
    let got = resolve(&f.provider(), "age:s.age", f.path()).await.unwrap();
    assert_eq!(got.value().expose(), f.secret.as_bytes());
}

/// A FIFO (or device) as the age file or an identity file is refused at once: the read never
/// blocks waiting for a writer, never reads without bound. Before the fix `open` blocked.
#[tokio::test]
async fn fifo_and_device_files_are_refused_without_blocking() {
    let f = setup();
    let fifo = f.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let bounded = |fut| tokio::time::timeout(std::time::Duration::from_secs(30), fut);
    let with_key = f.provider();

    let err = bounded(resolve(&with_key, "age:fifo", f.path()))
        .await
        .expect("blocked on a FIFO")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(
        err.message(),
        format!(
            "cannot read age file {}: a FIFO, not a regular file",
            fifo.display()
        )
    );
    f.assert_clean(&err);

    let err = bounded(resolve(&with_key, "age:/dev/zero", f.path()))
        .await
        .expect("read /dev/zero")
        .unwrap_err();
    assert_eq!(
        err.message(),
        "cannot read age file /dev/zero: a character device, not a regular file"
    );

    let settings = Settings {
        identity: IdentityList(vec![IdentitySpec::Path("fifo".into())]),
        ..Settings::default()
    };
    let with_fifo = provider(settings, None);
    let err = bounded(resolve(&with_fifo, "age:s.age", f.path()))
        .await
        .expect("blocked on a FIFO identity")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(
        err.message().ends_with(": a FIFO, not a regular file"),
        "{err}"
    );
}
