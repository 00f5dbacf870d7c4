//! Test support shared by every backend's tests (feature `testkit`): finding and starting the
//! real peer servers, canary assertions, and the conformance suite each backend runs.
//!
//! Peers are looked up in `$BROKER_PEERS_BIN`, then the project's venv
//! (`$HOME/.cache/broker-venv/bin`, made by `cargo xtask setup`), then `PATH`. A missing peer
//! skips the test with a printed reason, except under `CI`, where it fails.
#![allow(clippy::print_stderr, clippy::unwrap_used, missing_docs)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{CredentialProvider, ErrorKind, Reference, Request, RequestContext, ResolveRef};

/// The project's venv bin dir.
pub fn venv_bin() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/broker-venv/bin"))
}

/// Finds peer binary `name`.
pub fn find_peer(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("BROKER_PEERS_BIN") {
        dirs.push(d.into());
    }
    dirs.extend(venv_bin());
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Finds peer `name`, or explains the skip (and fails under `CI`).
///
/// A skip is printed and, when `$BROKER_SKIP_LOG` names a file (as `cargo xtask test` sets
/// it), appended there, so the run ends with a summary of every skipped test instead of a
/// line buried in captured output.
pub fn require_peer(name: &str) -> Option<PathBuf> {
    match find_peer(name) {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!("test peer `{name}` is not installed; CI must run `cargo xtask setup` first")
        }
        None => {
            record_skip(&format!("test peer `{name}` is not installed"));
            None
        }
    }
}

/// Reports a skipped test: printed, and appended to `$BROKER_SKIP_LOG` when set.
pub fn record_skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_string();
    eprintln!("skipping {test}: {reason} (run `cargo xtask setup`)");
    if let Some(log) = std::env::var_os("BROKER_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A peer server process, killed (with its process group) on drop.
pub struct PeerProcess {
    child: Child,
    /// The port it listens on.
    pub port: u16,
    /// Its log file.
    pub log: PathBuf,
}

impl PeerProcess {
    /// Starts `command` (already given its args) with output to a log file, and waits for
    /// `port`. Panics with the log's tail if it does not come up within 60 s.
    pub fn start(mut command: Command, port: u16, log_name: &str) -> PeerProcess {
        use std::os::unix::process::CommandExt;
        let log = std::env::temp_dir().join(format!("broker-peer-{log_name}-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {log_name}: {e}"));
        let mut peer = PeerProcess { child, port, log };
        if !wait_for_port(port, Duration::from_secs(60)) {
            let tail = std::fs::read_to_string(&peer.log).unwrap_or_default();
            let _ = peer.child.kill();
            panic!("{log_name} did not listen on port {port} within 60 s; log:\n{tail}");
        }
        peer
    }

    /// The base URL `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh OpenBao dev server (`bao server -dev`), stopped on drop.
pub struct OpenBao {
    /// The server process.
    pub peer: PeerProcess,
    /// The `bao` binary.
    pub bin: PathBuf,
    /// A private `$HOME` for the server and the `bao` CLI (token helper files).
    pub home: tempfile::TempDir,
    /// The dev root token.
    pub root_token: String,
}

impl OpenBao {
    /// Starts a dev server with `root_token`, waits until it answers `bao status`; `None`
    /// (skip) when `bao` is not installed outside CI.
    pub fn start(root_token: &str, log_name: &str) -> Option<OpenBao> {
        let bin = require_peer("bao")?;
        let port = free_port();
        let home = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={root_token}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .env("HOME", home.path())
        .env_remove("VAULT_TOKEN")
        .env_remove("BAO_TOKEN");
        let peer = PeerProcess::start(cmd, port, log_name);
        let bao = OpenBao {
            peer,
            bin,
            home,
            root_token: root_token.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bao.command(&["status"]).output().unwrap().status.success() {
            assert!(Instant::now() < deadline, "bao did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(bao)
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.peer.url()
    }

    /// `bao ARGS` against this server as root (not yet run).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("BAO_ADDR", self.url())
            .env("VAULT_ADDR", self.url())
            .env("BAO_TOKEN", &self.root_token)
            .env("VAULT_TOKEN", &self.root_token)
            .env("HOME", self.home.path())
            .stdin(Stdio::null());
        c
    }

    /// Runs `bao ARGS` as root; panics on failure; returns stdout.
    pub fn bao(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A moto server (AWS), stopped on drop.
pub struct Moto {
    /// The server process.
    pub peer: PeerProcess,
}

impl Moto {
    /// Starts `moto_server` on a free port; `None` (skip) when it is not installed outside CI.
    pub fn start(log_name: &str) -> Option<Moto> {
        let bin = require_peer("moto_server")?;
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        Some(Moto {
            peer: PeerProcess::start(cmd, port, log_name),
        })
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.peer.url()
    }

    /// Forgets every resource (`POST /moto-api/reset`).
    pub fn reset(&self) {
        post_empty(self.peer.port, "/moto-api/reset");
    }
}

/// A drongo server (GCP Secret Manager REST), stopped on drop.
pub struct Drongo {
    /// The server process.
    pub peer: PeerProcess,
}

impl Drongo {
    /// Starts `drongo server` on a free port; `None` (skip) when it is not installed outside CI.
    pub fn start(log_name: &str) -> Option<Drongo> {
        let bin = require_peer("drongo")?;
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["server", "--host", "127.0.0.1", "--port", &port.to_string()]);
        Some(Drongo {
            peer: PeerProcess::start(cmd, port, log_name),
        })
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.peer.url()
    }

    /// Forgets every resource (`POST /drongo/reset`).
    pub fn reset(&self) {
        post_empty(self.peer.port, "/drongo/reset");
    }
}

/// `POST path` with an empty body to `127.0.0.1:port`; panics unless the answer is 2xx. Plain
/// HTTP/1.1 over a socket: core has no HTTP client.
fn post_empty(port: u16, path: &str) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    assert!(
        status.starts_with('2'),
        "POST {path} answered: {}",
        answer.lines().next().unwrap_or("nothing")
    );
}

/// A local HTTP server on 127.0.0.1 that records each request body and answers the `n`th
/// (1-based) with `respond(n)`: `(status, XML body)`. A recording stand-in for an API whose
/// requests a test asserts exactly (AWS STS, say); returns its URL and the bodies seen.
pub fn capture_server(
    respond: fn(usize) -> (u16, String),
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let body = loop {
                let n = stream.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(text[end + 4..end + 4 + len].to_string());
                    }
                }
            };
            let Some(body) = body else { continue };
            let n = {
                let mut seen = log.lock().unwrap();
                seen.push(body);
                seen.len()
            };
            let (status, reply) = respond(n);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (url, seen)
}

/// Asserts `text` contains none of `canaries` (nor a 12-byte prefix of one).
#[track_caller]
pub fn assert_no_canary(what: &str, text: &str, canaries: &[&str]) {
    for canary in canaries {
        assert!(
            !text.contains(canary),
            "{what} leaked a canary value: {text}"
        );
        if canary.len() > 16 {
            assert!(
                !text.contains(&canary[..12]),
                "{what} leaked part of a canary value: {text}"
            );
        }
    }
}

/// What one backend's conformance run needs. Every reference is resolved with `provider`.
pub struct Conformance<'a> {
    pub provider: &'a dyn CredentialProvider,
    pub base_dir: &'a Path,
    pub nested: &'a dyn ResolveRef,
    /// A reference to a plain string secret, and its value.
    pub string: (&'a str, &'a [u8]),
    /// A reference selecting one field of a JSON (or structured) secret, and the field's value
    /// (`None` only for schemes without `#field`).
    pub field: Option<(&'a str, &'a [u8])>,
    /// A reference to a secret that does not exist.
    pub missing: &'a str,
    /// A reference to an existing secret that `provider_with_wrong_credential` cannot read,
    /// with that provider (wrong key, bad token, denied identity).
    pub wrong_credential: Option<(&'a dyn CredentialProvider, &'a str)>,
    /// Malformed references for this scheme.
    pub malformed: &'a [&'a str],
    /// Values that must never appear in errors or Debug output.
    pub canaries: &'a [&'a str],
}

impl Conformance<'_> {
    async fn resolve(
        &self,
        provider: &dyn CredentialProvider,
        text: &str,
    ) -> crate::Result<crate::Credential> {
        let reference: Reference = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        let ctx = RequestContext::new();
        let req = Request::new(&reference, self.base_dir, &ctx)
            .with_credential("conformance")
            .with_nested(self.nested);
        provider.resolve(&req).await
    }

    /// Runs the suite; panics on the first failure.
    pub async fn run(&self) {
        let resolve = |p, t| self.resolve(p, t);
        let (text, want) = self.string;
        let got = resolve(self.provider, text)
            .await
            .unwrap_or_else(|e| panic!("string {text}: {e}"));
        assert_eq!(got.value().expose(), want, "string secret {text}");
        assert_no_canary("Debug of a credential", &format!("{got:?}"), self.canaries);

        if let Some((text, want)) = self.field {
            let got = resolve(self.provider, text)
                .await
                .unwrap_or_else(|e| panic!("field {text}: {e}"));
            assert_eq!(got.value().expose(), want, "field {text}");
        }

        let err = resolve(self.provider, self.missing)
            .await
            .expect_err("missing secret must fail");
        assert_eq!(err.kind(), ErrorKind::NotFound, "missing secret: {err}");
        assert!(
            !err.is_retryable(),
            "a missing secret is not retryable: {err}"
        );
        assert_no_canary(
            "missing-secret error",
            &format!("{err} {err:?}"),
            self.canaries,
        );

        if let Some((provider, text)) = self.wrong_credential {
            let err = resolve(provider, text)
                .await
                .expect_err("wrong credential must fail");
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::PermissionDenied
                        | ErrorKind::AuthenticationFailed
                        | ErrorKind::Integrity
                ),
                "wrong credential gave {:?}: {err}",
                err.kind()
            );
            assert!(
                !err.is_retryable(),
                "a wrong credential is not retryable: {err}"
            );
            assert_no_canary(
                "wrong-credential error",
                &format!("{err} {err:?}"),
                self.canaries,
            );
        }

        for text in self.malformed {
            let err = text
                .parse::<Reference>()
                .expect_err(&format!("{text} must not parse"));
            assert_eq!(err.kind(), ErrorKind::InvalidReference, "{text}: {err}");
            assert!(
                err.to_string().contains("column"),
                "{text}: error must say where: {err}"
            );
        }
    }
}
