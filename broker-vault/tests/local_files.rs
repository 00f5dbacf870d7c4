//! The Vault backend's local files (JWT file, Kubernetes token file, CA certificate, client
//! key) are read without blocking: a FIFO or a device fails at once instead of hanging the
//! broker (and its signal handling) or filling its memory. Each case runs under a deadline so a
//! regression fails instead of hanging the test run.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use broker_core::{
    CredentialProvider, ErrorKind, Reference, Request, RequestContext, provider::NoNestedRefs,
};
use broker_vault::{Auth, Settings, VaultProvider};

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Resolves a KV reference with `settings` (nothing listens at the address: every failure
/// here must come from a local file) on a thread of its own, failing after 10 s.
fn resolve_within_deadline(settings: Settings, base: &Path) -> broker_core::Error {
    let base = base.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = rt.block_on(async {
            let provider = VaultProvider::new(settings, &base).unwrap();
            let reference: Reference = "vault:secret/app#password".parse().unwrap();
            let ctx = RequestContext::new();
            let req = Request::new(&reference, &base, &ctx)
                .with_credential("t")
                .with_nested(&NoNestedRefs);
            provider.resolve(&req).await.map(|_| ())
        });
        let _ = tx.send(result);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(result) => result.unwrap_err(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("reading a local file blocked for 10 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the resolving thread panicked"),
    }
}

fn settings(auth: Auth) -> Settings {
    Settings {
        address: Some("http://127.0.0.1:9".into()),
        auth,
        ..Settings::default()
    }
}

#[test]
fn a_fifo_jwt_file_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("jwt.fifo"));
    let err = resolve_within_deadline(
        settings(Auth::Jwt {
            mount: None,
            role: "app".into(),
            jwt_file: Some("jwt.fifo".into()),
            jwt_ref: None,
        }),
        dir.path(),
    );
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(
        err.message(),
        format!(
            "cannot read the JWT file {}: a FIFO, not a regular file",
            dir.path().join("jwt.fifo").display()
        )
    );
}

#[test]
fn a_device_as_kubernetes_token_file_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let err = resolve_within_deadline(
        settings(Auth::Kubernetes {
            mount: None,
            role: "app".into(),
            token_file: Some("/dev/zero".into()),
        }),
        dir.path(),
    );
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(
        err.message(),
        "cannot read the Kubernetes service-account token /dev/zero: a character device, not a regular file"
    );
}

#[test]
fn an_oversized_jwt_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(dir.path().join("jwt")).unwrap();
    f.set_len((1 << 20) + 1).unwrap();
    let err = resolve_within_deadline(
        settings(Auth::Jwt {
            mount: None,
            role: "app".into(),
            jwt_file: Some("jwt".into()),
            jwt_ref: None,
        }),
        dir.path(),
    );
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().ends_with(": larger than 1 MiB"), "{err}");
}

#[test]
fn a_fifo_ca_cert_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.fifo");
    mkfifo(&ca);
    let err = resolve_within_deadline(
        Settings {
            address: Some("https://127.0.0.1:9".into()),
            ca_cert: Some("ca.fifo".into()),
            auth: Auth::Token {
                token_ref: Some("env:BROKER_VAULT_UNUSED".into()),
            },
            ..Settings::default()
        },
        dir.path(),
    );
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(
        err.message(),
        format!(
            "cannot read the Vault CA certificate file {}: a FIFO, not a regular file",
            ca.display()
        )
    );
}

#[test]
fn a_fifo_client_key_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client.pem"), "not used").unwrap();
    mkfifo(&dir.path().join("key.fifo"));
    let err = resolve_within_deadline(
        Settings {
            address: Some("https://127.0.0.1:9".into()),
            client_cert: Some("client.pem".into()),
            client_key: Some("key.fifo".into()),
            auth: Auth::Token {
                token_ref: Some("env:BROKER_VAULT_UNUSED".into()),
            },
            ..Settings::default()
        },
        dir.path(),
    );
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(
        err.message(),
        format!(
            "cannot read the Vault client key {}: a FIFO, not a regular file",
            dir.path().join("key.fifo").display()
        )
    );
}
