//! The web identity token file is read without blocking: a FIFO or a device fails at once
//! instead of hanging the broker (and its signal handling) or filling its memory. Each case
//! runs under a deadline so a regression fails instead of hanging the test run.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use broker_aws::{AwsProvider, Settings};
use broker_core::{CredentialProvider, ErrorKind, Request, RequestContext};

/// Mints `aws-sts://...` with the token file `token_file` (nothing listens at the endpoint:
/// every failure here must come from the file) on a thread of its own, failing after 10 s.
fn mint_within_deadline(base: &Path, token_file: &str) -> broker_core::Error {
    let base = base.to_path_buf();
    let settings = Settings {
        region: Some("us-east-1".into()),
        endpoint_url: Some("http://127.0.0.1:9".into()),
        web_identity_token_file: Some(token_file.into()),
        ..Settings::default()
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut registry = broker_core::Registry::new();
        broker_aws::register(&mut registry).unwrap();
        let text = "credentials:\n  deploy: { mint: \"aws-sts://arn:aws:iam::123456789012:role/deploy\", as: DEPLOY }\n";
        let mut config =
            broker_core::Config::from_str(text, &base.join(".broker.yml"), &registry).unwrap();
        let spec = config.credentials.remove(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = rt.block_on(async {
            let provider = AwsProvider::new(settings, &base).unwrap();
            let ctx = RequestContext::new();
            let req = Request::new(&spec.reference, &base, &ctx)
                .with_credential(&spec.name)
                .with_terms(spec.terms());
            provider.mint(&req).await.map(|_| ())
        });
        let _ = tx.send(result);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(result) => result.unwrap_err(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("reading the token file blocked for 10 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the minting thread panicked"),
    }
}

#[test]
fn a_fifo_web_identity_token_file_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let err = mint_within_deadline(dir.path(), "token.fifo");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(
        err.message(),
        format!(
            "cannot read the web identity token file {}: a FIFO, not a regular file",
            fifo.display()
        )
    );
}

#[test]
fn a_device_as_web_identity_token_file_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let err = mint_within_deadline(dir.path(), "/dev/zero");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(
        err.message(),
        "cannot read the web identity token file /dev/zero: a character device, not a regular file"
    );
}
