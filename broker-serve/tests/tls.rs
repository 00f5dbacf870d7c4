//! The TLS listener: client certificates chained to `serve.tls.client_ca` identify agents by
//! their SPIFFE ID; expired ones, ones from another CA and none at all are refused in the
//! handshake, and every refusal is audited.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use broker_core::testkit::assert_no_canary;
use broker_env as _;
use broker_serve::client::{self, ClientOptions, Endpoint};
use common::{Daemon, free_port, wait_for_audit, wait_for_port};

const CANARY: &str = "canary-serve-tls-0c9d2e4f6a";

#[test]
#[ignore = "run by the other tests as the daemon process"]
fn daemon_child() {
    common::daemon_main();
}

fn new_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// Writes a leaf certificate and key under `dir` as `name.pem` / `name-key.pem`.
fn leaf(
    dir: &Path,
    name: &str,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    sans: Vec<rcgen::SanType>,
    usage: rcgen::ExtendedKeyUsagePurpose,
    expired: bool,
) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn spiffe(id: &str) -> Vec<rcgen::SanType> {
    vec![rcgen::SanType::URI(id.try_into().unwrap())]
}

fn client_for(port: u16, ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> Endpoint {
    let options = ClientOptions {
        ca: Some(ca.to_path_buf()),
        cert: cert.map(|c| c.0.clone()),
        key: cert.map(|c| c.1.clone()),
        token_file: None,
    };
    Endpoint::parse(&format!("https://127.0.0.1:{port}"), &options).unwrap()
}

fn ask(to: &Endpoint) -> broker_core::Result<client::Answer> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(client::call(
            to.clone(),
            "POST",
            "/v1/credentials/api",
            b"{}".to_vec(),
        ))
}

#[test]
fn client_certificates_identify_agents_and_bad_ones_are_refused_in_the_handshake() {
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    let ca = new_ca("broker serve test CA");
    let ca_pem = p.join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let server = leaf(
        p,
        "server",
        &ca,
        vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        false,
    );
    let client_usage = rcgen::ExtendedKeyUsagePurpose::ClientAuth;
    let mapped = leaf(
        p,
        "mapped",
        &ca,
        spiffe("spiffe://example.org/ci/agent-a"),
        client_usage.clone(),
        false,
    );
    let unmapped = leaf(
        p,
        "unmapped",
        &ca,
        spiffe("spiffe://example.org/ci/other"),
        client_usage.clone(),
        false,
    );
    let expired = leaf(
        p,
        "expired",
        &ca,
        spiffe("spiffe://example.org/ci/agent-a"),
        client_usage.clone(),
        true,
    );
    let rogue_ca = new_ca("rogue CA");
    let rogue = leaf(
        p,
        "rogue",
        &rogue_ca,
        spiffe("spiffe://example.org/ci/agent-a"),
        client_usage,
        false,
    );

    // A client CA makes every SPIFFE ID it certifies an agent: the daemon wants a policy.
    let policy = p.join("policy.cedar");
    std::fs::write(
        &policy,
        "permit (principal, action, resource) when { principal.identity == \"mtls\" };\n",
    )
    .unwrap();
    let port = free_port();
    let config = format!(
        "credentials:\n  api: {{ ref: \"env:BROKER_SERVE_TEST_CANARY\", as: API_TOKEN }}\n\
         audit: {{ path: audit.jsonl }}\n\
         policy: '{}'\n\
         serve:\n  listen: run/broker.sock\n\
         \x20 tls: {{ listen: \"127.0.0.1:{port}\", cert: '{}', key: '{}', client_ca: '{}' }}\n\
         \x20 agents:\n    - {{ id: agent-tls, spiffe: \"spiffe://example.org/ci/agent-a\" }}\n",
        policy.display(),
        server.0.display(),
        server.1.display(),
        ca_pem.display()
    );
    let d = Daemon::start(&config, &[("BROKER_SERVE_TEST_CANARY", CANARY)]);
    wait_for_port(port);

    let a = ask(&client_for(port, &ca_pem, Some(&mapped))).unwrap();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(String::from_utf8_lossy(&a.body).contains(CANARY));
    let a = ask(&client_for(port, &ca_pem, Some(&unmapped))).unwrap();
    assert_eq!(a.status, 200, "an unmapped SPIFFE ID is its own agent id");

    for (what, cert) in [
        ("expired", Some(&expired)),
        ("other CA", Some(&rogue)),
        ("none", None),
    ] {
        let got = ask(&client_for(port, &ca_pem, cert));
        assert!(got.is_err(), "{what}: refused in the handshake");
        let e = got.err().unwrap().to_string();
        assert_no_canary("client error", &e, &[CANARY]);
    }
    let audit = wait_for_audit(&d, "peer sent no certificates");
    let (logs, audit_after) = d.stop();
    for text in [&logs, &audit, &audit_after] {
        assert_no_canary("daemon output", text, &[CANARY]);
    }
    assert!(
        audit_after.contains("\"agent_id\":\"agent-tls\""),
        "{audit_after}"
    );
    assert!(
        audit_after.contains("\"agent_id\":\"spiffe://example.org/ci/other\""),
        "{audit_after}"
    );
    assert!(
        audit_after.contains("\"identity\":\"mtls 127.0.0.1:"),
        "{audit_after}"
    );
    assert!(audit_after.contains("sha256:"), "{audit_after}");
    assert!(audit_after.contains("certificate expired"), "{audit_after}");
    assert!(audit_after.contains("UnknownIssuer"), "{audit_after}");
    assert_eq!(
        audit_after
            .matches("\"outcome\":\"tls_handshake_refused\"")
            .count(),
        3,
        "{audit_after}"
    );
}
