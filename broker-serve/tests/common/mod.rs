//! A daemon started by a test: this test binary re-executed as `daemon_child`, on a unix
//! socket in a temp dir, with an audit log there; `curl` as another uid through `setpriv`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker_core::testkit::record_skip;
use broker_serve::client::{self, Answer};

/// The daemon's body: called by each test binary's ignored `daemon_child` test.
pub fn daemon_main() {
    let Some(config) = std::env::var_os("BROKER_SERVE_TEST_CONFIG") else {
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let broker = broker_core::Broker::load(Path::new(&config)).unwrap();
        let serve = broker_serve::ServeConfig::from_config(broker.config()).unwrap();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let path = std::path::PathBuf::from(&config);
        let reload: broker_serve::Reload = Box::new(move || {
            let broker = broker_core::Broker::load(&path)?;
            let serve = broker_serve::ServeConfig::from_config(broker.config())?;
            Ok((broker, serve))
        });
        broker_serve::Daemon::new(broker, serve)
            .unwrap()
            .with_reload(reload)
            .run(async move {
                term.recv().await;
            })
            .await
            .unwrap();
    });
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    /// Reads the daemon's stderr as it comes (a full pipe would block its logging).
    logs: Option<std::thread::JoinHandle<String>>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `config` (its `.broker.yml`) and `env`.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_in(tempfile::tempdir().unwrap(), config, env)
    }

    /// [`Daemon::start`] in `dir` (a restart keeps the dir: its state file, its audit log).
    pub fn start_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Daemon {
        let path = dir.path().join(".broker.yml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "daemon_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BROKER_SERVE_TEST_CONFIG", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let socket = dir.path().join("run/broker.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if child.try_wait().unwrap().is_some() {
                use std::io::Read;
                let mut logs = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut logs);
                panic!("the daemon exited: {logs}");
            }
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut stderr = child.stderr.take().unwrap();
        let logs = std::thread::spawn(move || {
            use std::io::Read;
            let mut logs = Vec::new();
            let _ = stderr.read_to_end(&mut logs);
            String::from_utf8_lossy(&logs).into_owned()
        });
        Daemon {
            child,
            logs: Some(logs),
            dir,
            socket,
        }
    }

    /// Lets other uids reach the socket (the daemon made it 0600 in a 0700 dir).
    pub fn open_to_all(&self) {
        use std::os::unix::fs::PermissionsExt;
        for p in [self.dir.path(), &self.dir.path().join("run"), &self.socket] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
    }

    /// `method path body` from this process's uid.
    pub fn call(&self, method: &str, path: &str, body: &str) -> Answer {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(client::call(
                &self.socket,
                method,
                path,
                body.as_bytes().to_vec(),
            ))
            .unwrap()
    }

    /// Sends `signal` (`HUP`, `TERM`) to the daemon.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// Stops the daemon (SIGTERM) and hands back its dir, to start it again there.
    pub fn stop_keeping_dir(mut self) -> (String, tempfile::TempDir) {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        let logs = self.logs.take().unwrap().join().unwrap();
        assert!(status.success(), "daemon exited with {status}: {logs}");
        let dir = tempfile::tempdir().unwrap();
        let dir = std::mem::replace(&mut self.dir, dir);
        (logs, dir)
    }

    /// The audit log so far.
    pub fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }

    /// SIGTERM; the daemon's logs and audit log.
    pub fn stop(mut self) -> (String, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        let logs = self.logs.take().unwrap().join().unwrap();
        assert!(status.success(), "daemon exited with {status}: {logs}");
        let audit =
            std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        (logs, audit)
    }
}

/// A test that fails before [`Daemon::stop`] leaves no daemon behind.
impl Drop for Daemon {
    fn drop(&mut self) {
        if self.logs.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The JSON body of an answer.
pub fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.body).unwrap()
}

/// The error kind of an answer.
pub fn kind_of(a: &Answer) -> String {
    json(a)["error"]["kind"].as_str().unwrap().to_string()
}

/// Whether this process may run clients as other uids (root with `setpriv`); records a skip
/// otherwise.
pub fn can_switch_uid() -> bool {
    if rustix::process::geteuid().is_root()
        && Command::new("setpriv").arg("--version").output().is_ok()
    {
        return true;
    }
    record_skip("setpriv as root is needed to connect as another uid");
    false
}

/// `curl` against `socket` as `uid`: (status, body).
pub fn curl_as(uid: u32, socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
        ])
        .args([
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            "--data-binary",
            body,
            "--unix-socket",
        ])
        .arg(socket)
        .arg(format!("http://broker{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// A free TCP port on 127.0.0.1 (bound, then released for the daemon to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on `127.0.0.1:port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `audit` (re-read each time) contains `what`.
pub fn wait_for_audit(d: &Daemon, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let audit = d.audit();
        if audit.contains(what) {
            return audit;
        }
        assert!(
            Instant::now() < deadline,
            "no `{what}` in the audit log: {audit}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET to `127.0.0.1:port`: (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
