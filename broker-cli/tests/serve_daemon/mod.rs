//! `broker serve` (this crate's binary) started by a test in a temp dir whose `.broker.yml` the
//! test wrote, on `run/broker.sock`; stopped with SIGTERM, or killed if the test fails first.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Daemon {
    /// `broker serve` in `dir` with `env` (no `BROKER_*` client variables leak in); waits
    /// until its socket accepts.
    pub fn start(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
        cmd.arg("serve")
            .current_dir(dir.path())
            .env_remove("BROKER_CONFIG")
            .env_remove("BROKER_FROM")
            .env_remove("BROKER_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let socket = dir.path().join("run/broker.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, dir, socket }
    }

    /// SIGTERM; the daemon's stderr and audit log.
    pub fn stop(mut self) -> (String, String) {
        use std::io::Read;
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let mut logs = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        assert!(self.child.wait().unwrap().success(), "{logs}");
        let audit = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap();
        (logs, audit)
    }
}

/// A test that fails before [`Daemon::stop`] leaves no daemon behind.
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
