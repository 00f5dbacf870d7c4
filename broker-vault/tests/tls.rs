//! TLS, mTLS and a sealed server against a real OpenBao with raft storage, initialised and
//! unsealed over HTTPS (not `-dev`). The CA and the certificates are generated per test.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use broker_core::testkit::{PeerProcess, assert_no_canary, free_port, require_peer};
use broker_core::{Error, ErrorKind};
use broker_vault::{Auth, Settings, VaultProvider};
use common::{Refs, resolve, value};

/// The KV value the tests read; must never show up in an error.
const CANARY: &str = "canary-tls-4f1c9a7e2b6d8035";
/// Set in the re-executed child of `env_defaults_vault_cacert_and_client_cert`.
const CHILD_MARKER: &str = "BROKER_VAULT_TLS_CHILD";

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A client certificate from a CA the server does not trust.
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn new_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "broker-vault test");
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn generate(dir: &Path) -> Pki {
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca = new_ca("broker-vault test CA");
        let (server_cert, server_key) = leaf(
            &ca,
            &["127.0.0.1", "localhost"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            &ca,
            &["broker-client"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let rogue = new_ca("rogue CA");
        let (rogue_cert, rogue_key) = leaf(
            &rogue,
            &["broker-client"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            rogue_cert: write("rogue.pem", &rogue_cert),
            rogue_key: write("rogue-key.pem", &rogue_key),
        }
    }
}

/// `bao server` with raft storage and a TLS listener, initialised (1 share, threshold 1) and
/// unsealed, with a KV v2 mount at `secret/` holding `secret/app` `token=CANARY`.
struct TlsBao {
    peer: PeerProcess,
    bin: PathBuf,
    dir: tempfile::TempDir,
    pki: Pki,
    mtls: bool,
    root_token: String,
    unseal_key: String,
}

impl TlsBao {
    fn start(mtls: bool) -> Option<TlsBao> {
        let bao = TlsBao::start_sealed_with(mtls)?;
        bao.unseal();
        bao.retry(&["secrets", "enable", "-path=secret", "-version=2", "kv"]);
        bao.bao(&[
            "kv",
            "put",
            "secret/app",
            &format!("token={CANARY}"),
            "user=alice",
        ]);
        Some(bao)
    }

    /// Initialised, never unsealed.
    fn start_sealed() -> Option<TlsBao> {
        TlsBao::start_sealed_with(false)
    }

    fn start_sealed_with(mtls: bool) -> Option<TlsBao> {
        let bin = require_peer("bao")?;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path());
        let port = free_port();
        let cluster_port = free_port();
        let raft = dir.path().join("raft");
        std::fs::create_dir(&raft).unwrap();
        let client_auth = if mtls {
            format!(
                "  tls_require_and_verify_client_cert = true\n  tls_client_ca_file = \"{}\"\n",
                pki.ca.display()
            )
        } else {
            String::new()
        };
        let hcl = format!(
            r#"storage "raft" {{
  path    = "{raft}"
  node_id = "node1"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file   = "{cert}"
  tls_key_file    = "{key}"
{client_auth}}}
api_addr      = "https://127.0.0.1:{port}"
cluster_addr  = "https://127.0.0.1:{cluster_port}"
disable_mlock = true
ui            = false
"#,
            raft = raft.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        );
        let config = dir.path().join("bao.hcl");
        std::fs::write(&config, hcl).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("server")
            .arg(format!("-config={}", config.display()))
            .env("HOME", dir.path())
            .env_remove("VAULT_TOKEN")
            .env_remove("BAO_TOKEN");
        let peer = PeerProcess::start(cmd, port, if mtls { "bao-mtls" } else { "bao-tls" });
        let mut bao = TlsBao {
            peer,
            bin,
            dir,
            pki,
            mtls,
            root_token: String::new(),
            unseal_key: String::new(),
        };
        // sys/init and sys/unseal over HTTPS, verified against the CA (and with the client
        // certificate on the mTLS listener).
        let init = bao.bao_json(&["operator", "init", "-key-shares=1", "-key-threshold=1"]);
        bao.root_token = init["root_token"].as_str().unwrap().to_string();
        bao.unseal_key = init["unseal_keys_b64"][0].as_str().unwrap().to_string();
        Some(bao)
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer.port)
    }

    fn base(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("BAO_ADDR", self.url())
            .env("BAO_CACERT", &self.pki.ca)
            .env("BAO_TOKEN", &self.root_token)
            .env("HOME", self.dir.path())
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_CACERT")
            .stdin(Stdio::null());
        if self.mtls {
            c.env("BAO_CLIENT_CERT", &self.pki.client_cert)
                .env("BAO_CLIENT_KEY", &self.pki.client_key);
        }
        c
    }

    fn bao(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn bao_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.insert(a.len().min(2), "-format=json");
        serde_json::from_str(&self.bao(&a)).unwrap()
    }

    /// Runs `bao ARGS` until it succeeds: raft elects the node leader shortly after unseal.
    fn retry(&self, args: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.command(args).output().unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bao {args:?} kept failing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn unseal(&self) {
        let status = self.bao_json(&["operator", "unseal", &self.unseal_key]);
        assert_eq!(status["sealed"], false, "{status}");
    }

    fn seal(&self) {
        self.bao(&["operator", "seal"]);
        let out = self.command(&["status"]).output().unwrap();
        // `bao status` exits 2 when sealed.
        assert_eq!(out.status.code(), Some(2), "server not sealed");
    }

    /// The secrets an error must never contain.
    fn canaries(&self) -> Vec<String> {
        let mut c = vec![
            CANARY.to_string(),
            self.root_token.clone(),
            self.unseal_key.clone(),
        ];
        for key in [&self.pki.server_key, &self.pki.client_key] {
            let pem = std::fs::read_to_string(key).unwrap();
            // A line of the key's base64 body.
            c.extend(pem.lines().nth(1).map(str::to_string));
        }
        c
    }

    fn refs(&self) -> Refs {
        Refs::with(&[("env:BROKER_VAULT_TEST_TOKEN", &self.root_token)])
    }

    /// Settings with the root token (through a nested reference) and the given TLS files.
    fn settings(&self, ca_cert: Option<&str>, client: Option<(&Path, &Path)>) -> Settings {
        Settings {
            address: Some(self.url()),
            ca_cert: ca_cert.map(str::to_string),
            client_cert: client.map(|(c, _)| c.display().to_string()),
            client_key: client.map(|(_, k)| k.display().to_string()),
            auth: Auth::Token {
                token_ref: Some("env:BROKER_VAULT_TEST_TOKEN".into()),
            },
            ..Settings::default()
        }
    }

    fn provider(&self, settings: Settings) -> VaultProvider {
        VaultProvider::new(settings, self.base())
            .unwrap()
            .with_backoff(Duration::from_millis(5))
    }

    async fn read(&self, p: &VaultProvider, text: &str) -> broker_core::Result<String> {
        resolve(p, &self.refs(), self.base(), text)
            .await
            .map(|c| value(&c))
    }

    #[track_caller]
    fn assert_clean(&self, what: &str, e: &Error) {
        let canaries = self.canaries();
        let canaries: Vec<&str> = canaries.iter().map(String::as_str).collect();
        assert_no_canary(what, &format!("{e} {e:?}"), &canaries);
    }
}

#[track_caller]
fn assert_tls_error(e: &Error, address: &str, needle: &str) {
    let text = e.to_string();
    assert!(!e.is_retryable(), "a TLS failure is not retryable: {e}");
    assert_ne!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(text.contains(address), "the error must name {address}: {e}");
    assert!(text.contains("TLS"), "the error must say TLS: {e}");
    assert!(text.contains(needle), "the error must say `{needle}`: {e}");
    assert!(
        text.contains("1 attempt") || !text.contains("attempts"),
        "a TLS failure is not retried: {e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_over_tls_with_ca_cert_then_sealed() {
    let Some(bao) = TlsBao::start(false) else {
        return;
    };
    let addr = bao.url();
    // `ca_cert` relative to the config file's directory.
    let p = bao.provider(bao.settings(Some("ca.pem"), None));
    assert_eq!(
        bao.read(&p, "vault:secret/app#token").await.unwrap(),
        CANARY
    );
    assert_eq!(
        bao.read(&p, "vault:secret/data/app#user").await.unwrap(),
        "alice"
    );

    // Without the CA: the system roots do not know it.
    let p_no_ca = bao.provider(bao.settings(None, None));
    let e = bao
        .read(&p_no_ca, "vault:secret/app#token")
        .await
        .unwrap_err();
    eprintln!("no CA: {e} / hint {:?}", e.hint());
    assert_tls_error(&e, &addr, "certificate");
    assert!(e.hint().unwrap_or("").contains("ca_cert"), "{e:?}");
    bao.assert_clean("no-CA error", &e);

    // The wrong CA (a CA that did not sign the server's certificate).
    let rogue_ca = bao.dir.path().join("rogue-ca.pem");
    std::fs::write(&rogue_ca, new_ca("another CA").pem()).unwrap();
    let p_wrong = bao.provider(bao.settings(Some("rogue-ca.pem"), None));
    let e = bao
        .read(&p_wrong, "vault:secret/app#token")
        .await
        .unwrap_err();
    assert_tls_error(&e, &addr, "certificate");
    bao.assert_clean("wrong-CA error", &e);

    // Sealed after use: the warm provider (cached token and mount) and a fresh one both get
    // the distinct sealed error, not retried.
    bao.seal();
    let fresh = bao.provider(bao.settings(Some("ca.pem"), None));
    for (what, p) in [("warm", &p), ("fresh", &fresh)] {
        let e = bao.read(p, "vault:secret/app#token").await.unwrap_err();
        eprintln!("sealed ({what}): {e} / hint {:?}", e.hint());
        assert!(!e.is_retryable(), "{what}: {e}");
        assert_eq!(e.kind(), ErrorKind::Transient, "{what}: {e}");
        assert!(
            e.to_string()
                .contains(&format!("Vault at {addr} is sealed")),
            "{what}: {e}"
        );
        assert!(e.hint().unwrap_or("").contains("unseal"), "{what}: {e:?}");
        bao.assert_clean("sealed error", &e);
    }

    // Unsealed again, the same provider works (no poisoned cache).
    bao.unseal();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match bao.read(&p, "vault:secret/app#token").await {
            Ok(v) => {
                assert_eq!(v, CANARY);
                break;
            }
            Err(e) => {
                bao.assert_clean("error after unseal", &e);
                assert!(Instant::now() < deadline, "never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn initialised_but_never_unsealed_is_sealed() {
    let Some(bao) = TlsBao::start_sealed() else {
        return;
    };
    let addr = bao.url();
    let p = bao.provider(bao.settings(Some("ca.pem"), None));
    let e = bao.read(&p, "vault:secret/app#token").await.unwrap_err();
    eprintln!("never unsealed: {e} / hint {:?}", e.hint());
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("Vault at {addr} is sealed")),
        "{e}"
    );
    bao.assert_clean("sealed error", &e);
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_client_certificate() {
    let Some(bao) = TlsBao::start(true) else {
        return;
    };
    let addr = bao.url();
    let pki = &bao.pki;
    let p = bao.provider(bao.settings(Some("ca.pem"), Some((&pki.client_cert, &pki.client_key))));
    assert_eq!(
        bao.read(&p, "vault:secret/app#token").await.unwrap(),
        CANARY
    );

    // Without a client certificate: the server ends the handshake.
    let p = bao.provider(bao.settings(Some("ca.pem"), None));
    let e = bao.read(&p, "vault:secret/app#token").await.unwrap_err();
    eprintln!("no client cert: {e} / hint {:?}", e.hint());
    assert_tls_error(&e, &addr, "certificate");
    assert!(e.hint().unwrap_or("").contains("client_cert"), "{e:?}");
    bao.assert_clean("no-client-cert error", &e);

    // A client certificate from a CA the server does not trust.
    let p = bao.provider(bao.settings(Some("ca.pem"), Some((&pki.rogue_cert, &pki.rogue_key))));
    let e = bao.read(&p, "vault:secret/app#token").await.unwrap_err();
    eprintln!("rogue client cert: {e} / hint {:?}", e.hint());
    assert_tls_error(&e, &addr, "certificate");
    bao.assert_clean("rogue-client-cert error", &e);
}

/// `$VAULT_ADDR`, `$VAULT_CACERT`, `$VAULT_CLIENT_CERT`/`$VAULT_CLIENT_KEY` and `$VAULT_TOKEN`
/// as the defaults of empty settings. The environment is per process, so the check runs in a
/// re-executed copy of this test binary with those variables set.
#[tokio::test(flavor = "multi_thread")]
async fn env_defaults_vault_cacert_and_client_cert() {
    if std::env::var_os(CHILD_MARKER).is_some() {
        return env_defaults_child().await;
    }
    let Some(bao) = TlsBao::start(true) else {
        return;
    };
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "env_defaults_vault_cacert_and_client_cert",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MARKER, bao.base())
        .env("VAULT_ADDR", bao.url())
        .env("VAULT_CACERT", &bao.pki.ca)
        .env("VAULT_CLIENT_CERT", &bao.pki.client_cert)
        .env("VAULT_CLIENT_KEY", &bao.pki.client_key)
        .env("VAULT_TOKEN", &bao.root_token)
        .env_remove("VAULT_NAMESPACE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed") && stderr.contains("env defaults: ok"),
        "the child did not run the check:\n{stdout}\n{stderr}"
    );
}

async fn env_defaults_child() {
    let base = PathBuf::from(std::env::var_os(CHILD_MARKER).unwrap());
    let refs = Refs::default();
    // Empty settings: everything from the environment.
    let p = VaultProvider::new(Settings::default(), &base).unwrap();
    let got = resolve(&p, &refs, &base, "vault:secret/app#token")
        .await
        .unwrap();
    assert_eq!(value(&got), CANARY);
    // Settings win over the environment: a CA that did not sign the server's certificate.
    std::fs::write(base.join("other-ca.pem"), new_ca("other CA").pem()).unwrap();
    let settings = Settings {
        ca_cert: Some("other-ca.pem".into()),
        ..Settings::default()
    };
    let p = VaultProvider::new(settings, &base)
        .unwrap()
        .with_backoff(Duration::from_millis(5));
    let e = resolve(&p, &refs, &base, "vault:secret/app#token")
        .await
        .unwrap_err();
    let addr = std::env::var("VAULT_ADDR").unwrap();
    assert_tls_error(&e, &addr, "certificate");
    let token = std::env::var("VAULT_TOKEN").unwrap();
    assert_no_canary("TLS error", &format!("{e} {e:?}"), &[CANARY, &token]);
    eprintln!("env defaults: ok");
}
