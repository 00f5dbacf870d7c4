//! The spinner on a slow backend: on a terminal `broker get` names the credential and the
//! backend it waits on (after ~300 ms) and wipes the line; through a pipe, with `--quiet`,
//! `--json` or `--color never` nothing is drawn. The slow backend is a Vault stand-in on
//! 127.0.0.1 that answers every request after one second; the value never shows on stderr.
//!
//! The terminal is a pty driven by Python's `pty` module (as in `tests/tty.rs`).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

mod pty_driver;

const CANARY: &str = "canary-progress-7d2c90e14b5a";

/// A Vault stand-in on 127.0.0.1 answering every request after a second: token lookups and
/// KV v2 reads alike get a body with `data.data.url` = the canary.
fn slow_vault() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
                let body = format!(
                    r#"{{"data":{{"data":{{"url":"{CANARY}"}},"metadata":{{"version":1}},"ttl":3600,"policies":["default"],"options":{{"version":"2"}},"type":"kv","path":"secret/"}},"lease_duration":0,"renewable":false}}"#
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    url
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "egress: {{ enabled: true }}\nbackends:\n  vault: {{ address: \"{}\", auth: {{ method: token, token_ref: \"env:VAULT_TOKEN\" }} }}\ncredentials:\n  db: {{ ref: \"vault:secret/data/app#url\" }}\n",
            slow_vault()
        );
        std::fs::write(dir.path().join(".broker.yml"), config).unwrap();
        Sandbox { dir }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.dir.path())
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("VAULT_TOKEN", "test-root-token")
            .env_remove("BROKER_CONFIG")
            .env_remove("BROKER_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        c
    }

    /// `broker ARGS` on a fresh terminal, its stdout in a file: returns (what the terminal
    /// showed, i.e. stderr; the stdout file; the exit code).
    fn on_tty(&self, args: &[&str]) -> (String, String, Option<i32>) {
        let file = self.dir.path().join("stdout.txt");
        let out = self
            .command("python3")
            .arg("-c")
            .arg(pty_driver::DRIVER)
            .arg(env!("CARGO_BIN_EXE_broker"))
            .args(args)
            .env("TTY_STDOUT", &file)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            std::fs::read_to_string(&file).unwrap_or_default(),
            out.status.code(),
        )
    }

    fn piped(&self, args: &[&str]) -> Output {
        self.command(env!("CARGO_BIN_EXE_broker"))
            .args(args)
            .output()
            .unwrap()
    }
}

const SPINNER: &str = "waiting: reading `db` from vault (vault:)…";

#[test]
fn a_terminal_sees_the_spinner_name_the_credential_and_backend() {
    let sb = Sandbox::new();
    let (shown, stdout, code) = sb.on_tty(&["get", "db", "--reveal"]);
    assert_eq!(code, Some(0), "{shown:?}");
    assert_eq!(stdout, CANARY);
    assert!(shown.contains(SPINNER), "{shown:?}");
    assert!(
        !shown.contains(CANARY),
        "the terminal shows the value: {shown:?}"
    );
    assert!(!shown.contains('\x1b'), "an escape sequence: {shown:?}");
    // The last thing drawn wipes the line: spaces, then a carriage return.
    let last = shown.rsplit('\r').nth(1).unwrap();
    assert!(
        !last.is_empty() && last.chars().all(|c| c == ' '),
        "{shown:?}"
    );
}

#[test]
fn no_spinner_with_quiet_json_or_color_never() {
    let sb = Sandbox::new();
    for args in [
        &["get", "db", "--reveal", "--quiet"][..],
        &["get", "db", "--reveal", "--json"],
        &["--color", "never", "get", "db", "--reveal"],
    ] {
        let (shown, stdout, code) = sb.on_tty(args);
        assert_eq!(code, Some(0), "{args:?}: {shown:?}");
        assert!(stdout.contains(CANARY), "{args:?}");
        assert_eq!(shown, "", "{args:?}");
    }
}

#[test]
fn a_pipe_sees_no_spinner() {
    let sb = Sandbox::new();
    let out = sb.piped(&["get", "db", "--reveal"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), CANARY);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
