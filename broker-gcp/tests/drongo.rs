//! `gcp-sm://` against drongo (a Secret Manager REST emulator): versions, JSON fields, binary
//! payloads, disabled and destroyed versions, missing secrets, the conformance suite, and
//! rotation read back by Google's official Python client.
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

mod support;

use std::path::Path;
use std::sync::OnceLock;

use broker_core::provider::NoNestedRefs;
use broker_core::testkit::{Conformance, Drongo, assert_no_canary};
use broker_core::{CredentialProvider, ErrorKind, Reference, Request, RequestContext, Terms};
use broker_gcp::{Auth, GcpProvider, Settings};
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::{Secret, SecretPayload, replication::Automatic};

const PROJECT: &str = "broker-test";
const CANARY: &str = "gcp-canary-7f3a9c1e5b2d4068";
const JSON_CANARY: &str = "gcp-json-canary-19ae55c0d2b7";

fn drongo() -> Option<&'static Drongo> {
    static PEER: OnceLock<Option<Drongo>> = OnceLock::new();
    PEER.get_or_init(|| {
        let peer = Drongo::start("broker-gcp-drongo")?;
        peer.reset();
        Some(peer)
    })
    .as_ref()
}

fn provider(url: &str) -> GcpProvider {
    GcpProvider::new(Settings {
        endpoint: Some(url.to_string()),
        auth: Some(Auth::None),
        ..Settings::default()
    })
    .unwrap()
}

/// A client of drongo for seeding, through Google's Rust client.
async fn seeder(url: &str) -> SecretManagerService {
    SecretManagerService::builder()
        .with_endpoint(url)
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await
        .unwrap()
}

async fn seed(url: &str, secret: &str, versions: &[&[u8]]) {
    let client = seeder(url).await;
    client
        .create_secret()
        .set_parent(format!("projects/{PROJECT}"))
        .set_secret_id(secret)
        .set_secret(
            Secret::new().set_replication(
                google_cloud_secretmanager_v1::model::Replication::new()
                    .set_automatic(Automatic::new()),
            ),
        )
        .send()
        .await
        .unwrap();
    for data in versions {
        client
            .add_secret_version()
            .set_parent(format!("projects/{PROJECT}/secrets/{secret}"))
            .set_payload(SecretPayload::new().set_data(data.to_vec()))
            .send()
            .await
            .unwrap();
    }
}

async fn resolve(p: &GcpProvider, text: &str) -> broker_core::Result<broker_core::Credential> {
    let reference: Reference = text.parse().unwrap();
    let ctx = RequestContext::new();
    let base = std::env::temp_dir();
    p.resolve(&Request::new(&reference, &base, &ctx).with_credential("test"))
        .await
}

fn python(args: &[&str]) -> serde_json::Value {
    let python = support::python().expect("python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/faithful.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "faithful.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn conformance() {
    let Some(peer) = drongo() else { return };
    let url = peer.url();
    seed(&url, "conf-string", &[CANARY.as_bytes()]).await;
    let json = format!(r#"{{"user":"app","token":"{JSON_CANARY}"}}"#);
    seed(&url, "conf-json", &[json.as_bytes()]).await;
    let p = provider(&url);
    let string = format!("gcp-sm://{PROJECT}/conf-string");
    let field = format!("gcp-sm://{PROJECT}/conf-json#token");
    let missing = format!("gcp-sm://{PROJECT}/conf-missing");
    Conformance {
        provider: &p,
        base_dir: Path::new("/"),
        nested: &NoNestedRefs,
        string: (&string, CANARY.as_bytes()),
        field: Some((&field, JSON_CANARY.as_bytes())),
        missing: &missing,
        // drongo checks no credentials; the fake's tests cover denied access.
        wrong_credential: None,
        malformed: &[
            "gcp-sm://broker-test",
            "gcp-sm://Bad_Project/secret",
            "gcp-sm://broker-test/secret/0",
            "gcp-sm://broker-test/secret?region=us",
        ],
        canaries: &[CANARY, JSON_CANARY],
    }
    .run()
    .await;
}

#[tokio::test]
async fn versions_fields_and_binary_payloads() {
    let Some(peer) = drongo() else { return };
    let url = peer.url();
    let binary: Vec<u8> = (0u8..=255).rev().collect();
    seed(
        &url,
        "versions",
        &[b"first", br#"{"db":{"password":"second"}}"#, &binary],
    )
    .await;
    let p = provider(&url);
    let base = format!("gcp-sm://{PROJECT}/versions");
    let got = resolve(&p, &format!("{base}/1")).await.unwrap();
    assert_eq!(got.value().expose(), b"first");
    let got = resolve(&p, &format!("{base}/2#db.password")).await.unwrap();
    assert_eq!(got.value().expose(), b"second");
    // latest, explicit or by default, is the binary third version, byte for byte.
    for text in [base.clone(), format!("{base}/latest")] {
        let got = resolve(&p, &text).await.unwrap();
        assert_eq!(got.value().expose(), &binary[..], "{text}");
    }
    // A field of a payload that is not JSON.
    let err = resolve(&p, &format!("{base}/1#x")).await.unwrap_err();
    assert!(err.to_string().contains(&format!("{base}/1#x")), "{err}");
}

#[tokio::test]
async fn disabled_destroyed_and_missing_are_distinct_errors() {
    let Some(peer) = drongo() else { return };
    let url = peer.url();
    seed(
        &url,
        "states",
        &[CANARY.as_bytes(), CANARY.as_bytes(), b"3"],
    )
    .await;
    let client = seeder(&url).await;
    let name = |v: u32| format!("projects/{PROJECT}/secrets/states/versions/{v}");
    client
        .disable_secret_version()
        .set_name(name(1))
        .send()
        .await
        .unwrap();
    client
        .destroy_secret_version()
        .set_name(name(2))
        .send()
        .await
        .unwrap();
    let p = provider(&url);
    let cases = [
        ("states/1", "is disabled"),
        ("states/2", "is destroyed"),
        ("states/9", "no such version"),
        ("nothing-here", "no such secret"),
    ];
    for (target, says) in cases {
        let text = format!("gcp-sm://{PROJECT}/{target}");
        let err = resolve(&p, &text).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{text}: {err}");
        assert!(!err.is_retryable(), "{text}: {err}");
        let shown = err.to_string();
        assert!(shown.contains(&text), "names the reference: {shown}");
        assert!(shown.contains(says), "{text}: {shown}");
        assert_no_canary("error", &format!("{err} {err:?}"), &[CANARY]);
    }
    // The enabled version still reads.
    let got = resolve(&p, &format!("gcp-sm://{PROJECT}/states/3"))
        .await
        .unwrap();
    assert_eq!(got.value().expose(), b"3");
}

async fn rotate(
    p: &GcpProvider,
    text: &str,
    options: &[(&str, serde_json::Value)],
) -> broker_core::Rotation {
    let reference: Reference = text.parse().unwrap();
    let ctx = RequestContext::new();
    let base = std::env::temp_dir();
    let options: std::collections::BTreeMap<String, serde_json::Value> = options
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    p.rotate(
        &Request::new(&reference, &base, &ctx)
            .with_credential("rotated")
            .with_terms(Terms::new(None).with_options(&options)),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn rotation_adds_a_version_the_official_client_reads() {
    let Some(peer) = drongo() else { return };
    let url = peer.url();
    seed(&url, "rotated", &[CANARY.as_bytes()]).await;
    let p = provider(&url);
    let text = format!("gcp-sm://{PROJECT}/rotated");
    let rotation = rotate(&p, &text, &[]).await;
    assert_eq!(rotation.version.as_deref(), Some("2"));
    assert!(
        rotation.summary.contains("added version 2"),
        "{}",
        rotation.summary
    );
    assert_no_canary("rotation", &format!("{rotation:?}"), &[CANARY]);
    let fresh = resolve(&p, &text).await.unwrap();
    assert_eq!(fresh.value().len(), 40);
    assert_ne!(fresh.value().expose(), CANARY.as_bytes());
    // Google's Python client reads the same new version.
    let read = python(&[
        "sm-read",
        &url,
        &format!("projects/{PROJECT}/secrets/rotated/versions/latest"),
    ]);
    assert_eq!(
        read["name"],
        format!("projects/{PROJECT}/secrets/rotated/versions/2")
    );
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .decode(read["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, fresh.value().expose());

    // With disable_previous, version 2 is disabled once version 3 exists.
    let rotation = rotate(
        &p,
        &text,
        &[("disable_previous", serde_json::Value::Bool(true))],
    )
    .await;
    assert_eq!(rotation.version.as_deref(), Some("3"));
    assert!(
        rotation.summary.contains("disabled version 2"),
        "{}",
        rotation.summary
    );
    let state = python(&[
        "sm-state",
        &url,
        &format!("projects/{PROJECT}/secrets/rotated/versions/2"),
    ]);
    assert_eq!(state["state"], "DISABLED");
    let state = python(&[
        "sm-state",
        &url,
        &format!("projects/{PROJECT}/secrets/rotated/versions/3"),
    ]);
    assert_eq!(state["state"], "ENABLED");
}

#[tokio::test]
async fn rotating_a_field_keeps_the_rest_of_the_document() {
    let Some(peer) = drongo() else { return };
    let url = peer.url();
    let json = format!(r#"{{"user":"app","password":"{CANARY}"}}"#);
    seed(&url, "rotated-field", &[json.as_bytes()]).await;
    let p = provider(&url);
    let rotation = rotate(
        &p,
        &format!("gcp-sm://{PROJECT}/rotated-field#password"),
        &[],
    )
    .await;
    assert!(
        rotation.summary.contains("field `password`"),
        "{}",
        rotation.summary
    );
    let user = resolve(&p, &format!("gcp-sm://{PROJECT}/rotated-field#user"))
        .await
        .unwrap();
    assert_eq!(user.value().expose(), b"app");
    let password = resolve(&p, &format!("gcp-sm://{PROJECT}/rotated-field#password"))
        .await
        .unwrap();
    assert_eq!(password.value().len(), 40);
    assert_ne!(password.value().expose(), CANARY.as_bytes());
    // The old version still has the old value.
    let old = resolve(&p, &format!("gcp-sm://{PROJECT}/rotated-field/1#password"))
        .await
        .unwrap();
    assert_eq!(old.value().expose(), CANARY.as_bytes());
}

#[tokio::test]
async fn egress_follows_the_endpoint() {
    let here = Path::new("/");
    let local = provider("http://127.0.0.1:9");
    let r: Reference = "gcp-sm://my-project/db?location=europe-west1"
        .parse()
        .unwrap();
    let d = local.egress(&r, here).unwrap();
    assert_eq!(d.len(), 1);
    assert!(format!("{d:?}").contains("http://127.0.0.1:9"), "{d:?}");
    let public = GcpProvider::new(Settings::default()).unwrap();
    let d = public.egress(&r, here).unwrap();
    assert!(
        format!("{d:?}").contains("https://secretmanager.europe-west1.rep.googleapis.com"),
        "{d:?}"
    );
    let r: Reference = "gcp-sm://my-project/db".parse().unwrap();
    let d = public.egress(&r, here).unwrap();
    assert!(
        format!("{d:?}").contains("https://secretmanager.googleapis.com"),
        "{d:?}"
    );
    let r: Reference = "gcp-iam://a@my-project.iam.gserviceaccount.com"
        .parse()
        .unwrap();
    let d = public.egress(&r, here).unwrap();
    assert!(
        format!("{d:?}").contains("https://iamcredentials.googleapis.com"),
        "{d:?}"
    );
}
