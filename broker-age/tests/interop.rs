//! Interop with the real `age` 1.1.1 binary, both ways: the broker decrypts what `age`
//! encrypted (X25519, ssh-ed25519, ssh-rsa, armored, several recipients) and `age -d` decrypts
//! what `rotate` wrote.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use broker_age::{IdentityList, IdentitySpec, RecipientList, Settings};
use broker_core::ErrorKind;
use broker_core::testkit::assert_no_canary;
use common::*;

#[tokio::test]
async fn decrypts_what_age_encrypted() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = t.x25519(&d.join("x25519.txt"));
    let ed = t.ssh("ed25519", &d.join("id_ed25519"), "");
    let rsa = t.ssh("rsa", &d.join("id_rsa"), "");

    for (name, recipients) in [
        ("x25519", vec![x.as_str()]),
        ("ed25519", vec![ed.as_str()]),
        ("rsa", vec![rsa.as_str()]),
        ("all", vec![x.as_str(), ed.as_str(), rsa.as_str()]),
    ] {
        for armor in [false, true] {
            let secret = canary(name);
            let file = d.join(format!("{name}-{armor}.age"));
            t.encrypt(secret.as_bytes(), &recipients, armor, &file);
            assert_eq!(
                broker_age::is_armored(&std::fs::read(&file).unwrap()),
                armor
            );
            for key in ["x25519.txt", "id_ed25519", "id_rsa"] {
                let can = match key {
                    "x25519.txt" => recipients.contains(&x.as_str()),
                    "id_ed25519" => recipients.contains(&ed.as_str()),
                    _ => recipients.contains(&rsa.as_str()),
                };
                let p = with_identities(&[&d.join(key)]);
                for scheme in ["age", "agenix"] {
                    let r = format!("{scheme}:{name}-{armor}.age");
                    match resolve(&p, &r, d).await {
                        Ok(c) => {
                            assert!(can, "{key} should not open {r}");
                            assert_eq!(c.value().expose(), secret.as_bytes(), "{r} with {key}");
                        }
                        Err(e) => {
                            assert!(!can, "{r} with {key}: {e}");
                            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
                            assert!(e.to_string().contains("no identity matches"), "{e}");
                            assert_no_canary("error", &format!("{e} {e:?}"), &[&secret]);
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn identity_file_with_several_keys_and_comments() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _ = t.x25519(&d.join("a.txt"));
    let b = t.x25519(&d.join("b.txt"));
    let combined = format!(
        "# first key\n\n{}\n   # indented comment\n{}",
        std::fs::read_to_string(d.join("a.txt")).unwrap(),
        std::fs::read_to_string(d.join("b.txt")).unwrap()
    );
    std::fs::write(d.join("keys.txt"), combined).unwrap();
    let secret = canary("multi");
    t.encrypt(secret.as_bytes(), &[&b], true, &d.join("s.age"));
    let p = with_identities(&[&d.join("keys.txt")]);
    let got = resolve(&p, "age:s.age", d).await.unwrap();
    assert_eq!(got.value().expose(), secret.as_bytes());
}

#[tokio::test]
async fn agenix_default_identities_and_env_var() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    // Only id_rsa exists: the missing id_ed25519 default is skipped, not an error.
    let rsa = t.ssh("rsa", &home.join(".ssh/id_rsa"), "");
    let secret = canary("agenix");
    let file = dir.path().join("host.age");
    t.encrypt(secret.as_bytes(), &[&rsa], false, &file);
    let p = provider(Settings::default(), Some(&home));
    let got = resolve(&p, "agenix:host.age", dir.path()).await.unwrap();
    assert_eq!(got.value().expose(), secret.as_bytes());

    // AGE_IDENTITY_FILE wins over the defaults (and fails closed if it does not match).
    let x = t.x25519(&dir.path().join("env-key.txt"));
    let env_value = format!(
        "{}:{}",
        dir.path().join("nope-not-here.txt").display(),
        dir.path().join("env-key.txt").display()
    );
    let p = broker_age::AgeProvider::new(Settings::default())
        .unwrap()
        .with_environment(Some(env_value.into()), Some(home.clone()));
    let err = resolve(&p, "agenix:host.age", dir.path())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotConfigured, "{err}");
    assert!(err.to_string().contains("nope-not-here.txt"), "{err}");
    let p = broker_age::AgeProvider::new(Settings::default())
        .unwrap()
        .with_environment(
            Some(dir.path().join("env-key.txt").into_os_string()),
            Some(home.clone()),
        );
    let err = resolve(&p, "agenix:host.age", dir.path())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("env-key.txt"), "{err}");
    assert!(!err.to_string().contains("id_rsa"), "no fallback: {err}");
    t.encrypt(secret.as_bytes(), &[&x], false, &dir.path().join("env.age"));
    let got = resolve(&p, "age:env.age", dir.path()).await.unwrap();
    assert_eq!(got.value().expose(), secret.as_bytes());

    // `~/` in an identity path expands to the provider's home.
    let p = provider(
        Settings {
            identity: IdentityList(vec![IdentitySpec::Path("~/.ssh/id_rsa".into())]),
            ..Settings::default()
        },
        Some(&home),
    );
    let got = resolve(&p, "agenix:host.age", dir.path()).await.unwrap();
    assert_eq!(got.value().expose(), secret.as_bytes());
}

#[tokio::test]
async fn age_decrypts_what_rotate_wrote() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = t.x25519(&d.join("x.txt"));
    let ed = t.ssh("ed25519", &d.join("id_ed25519"), "");
    let rsa = t.ssh("rsa", &d.join("id_rsa"), "");
    let secret = canary("rotate");
    let recipients = [x.as_str(), ed.as_str(), rsa.as_str()];

    for armor in [true, false] {
        let file = d.join(format!("multi-{armor}.age"));
        t.encrypt(secret.as_bytes(), &recipients, armor, &file);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let before = std::fs::read(&file).unwrap();
        let reference = format!("age:multi-{armor}.age");

        // Derived from one identity: the file has 3 recipients, so rotate refuses.
        let p = with_identities(&[&d.join("x.txt")]);
        let err = rotate(&p, &reference, d).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotConfigured, "{err}");
        assert!(err.to_string().contains("3 recipients"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), before, "nothing written");

        // With every identity, the recipients are derived.
        let p = with_identities(&[&d.join("x.txt"), &d.join("id_ed25519"), &d.join("id_rsa")]);
        let rotation = rotate(&p, &reference, d).await.unwrap();
        assert!(
            rotation.summary.contains("3 recipients"),
            "{}",
            rotation.summary
        );
        assert_no_canary("rotation", &format!("{rotation:?}"), &[&secret]);
        let after = std::fs::read(&file).unwrap();
        assert_ne!(after, before, "fresh file key, new ciphertext");
        assert_eq!(broker_age::is_armored(&after), armor, "format kept");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "mode kept");
        for key in ["x.txt", "id_ed25519", "id_rsa"] {
            assert_eq!(
                t.decrypt(&d.join(key), &file),
                secret.as_bytes(),
                "age -d -i {key}"
            );
        }
        // No temporary file left behind.
        let leftovers: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    // Configured recipients: re-encrypt to a different set (adds a new key).
    let y = t.x25519(&d.join("y.txt"));
    let file = d.join("one.age");
    t.encrypt(secret.as_bytes(), &[&x], false, &file);
    let settings = Settings {
        identity: IdentityList(vec![IdentitySpec::Path("x.txt".into())]),
        recipients: RecipientList(vec![x.clone(), y.clone(), ed.clone()]),
    };
    let p = provider(settings, None);
    let rotation = rotate(&p, "age:one.age", d).await.unwrap();
    assert!(
        rotation.summary.contains("3 recipients"),
        "{}",
        rotation.summary
    );
    for key in ["x.txt", "y.txt", "id_ed25519"] {
        assert_eq!(
            t.decrypt(&d.join(key), &file),
            secret.as_bytes(),
            "age -d -i {key}"
        );
    }
    // And the broker still reads it.
    let got = resolve(&p, "age:one.age", d).await.unwrap();
    assert_eq!(got.value().expose(), secret.as_bytes());
}

#[tokio::test]
async fn rotate_follows_symlinks() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = t.x25519(&d.join("x.txt"));
    std::fs::create_dir(d.join("store")).unwrap();
    let secret = canary("link");
    t.encrypt(secret.as_bytes(), &[&x], false, &d.join("store/real.age"));
    std::os::unix::fs::symlink("store/real.age", d.join("link.age")).unwrap();
    let p = with_identities(&[&d.join("x.txt")]);
    rotate(&p, "age:link.age", d).await.unwrap();
    assert!(
        std::fs::symlink_metadata(d.join("link.age"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        t.decrypt(&d.join("x.txt"), &d.join("store/real.age")),
        secret.as_bytes()
    );
}

#[tokio::test]
async fn unusable_default_key_is_skipped_when_another_default_works() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    t.ssh("ed25519", &home.join(".ssh/id_ed25519"), "a passphrase");
    let p = provider(Settings::default(), Some(&home));
    let secret = canary("skip");
    let other = t.x25519(&dir.path().join("unrelated.txt"));
    t.encrypt(
        secret.as_bytes(),
        &[&other],
        false,
        &dir.path().join("s.age"),
    );

    // Only the protected key: its own error, not "no identity".
    let err = resolve(&p, "agenix:s.age", dir.path()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("passphrase-protected"), "{err}");

    // With a usable id_rsa next to it, the protected key is skipped (and listed as such).
    let rsa = t.ssh("rsa", &home.join(".ssh/id_rsa"), "");
    t.encrypt(secret.as_bytes(), &[&rsa], false, &dir.path().join("r.age"));
    let got = resolve(&p, "agenix:r.age", dir.path()).await.unwrap();
    assert_eq!(got.value().expose(), secret.as_bytes());
    let err = resolve(&p, "agenix:s.age", dir.path()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string()
            .contains("id_ed25519 (skipped: unsupported)"),
        "{err}"
    );
    assert!(err.to_string().contains("id_rsa"), "{err}");
}
