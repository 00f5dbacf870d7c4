//! The built `broker` binary with `age:` / `agenix:` credentials: `get`, `run` (value injected,
//! output redacted), `audit` (local badge, egress off), `rotate` (the real `age -d` still
//! decrypts), and the error paths (wrong key, corrupted file) without leaking the value.
#![cfg(feature = "age")]
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use broker_core::testkit::{assert_no_canary, require_peer};

const TOKEN: &str = "canary-age-cli-token-7d41c0e9b2";
const HOST_SECRET: &str = "canary-agenix-cli-host-31f8a6";

struct Age {
    age: PathBuf,
    keygen: PathBuf,
    ssh_keygen: PathBuf,
}

impl Age {
    fn find() -> Option<Age> {
        Some(Age {
            age: require_peer("age")?,
            keygen: require_peer("age-keygen")?,
            ssh_keygen: require_peer("ssh-keygen")?,
        })
    }
}

fn ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn encrypt(age: &Path, plaintext: &str, args: &[&str], out: &Path) {
    use std::io::Write;
    let mut child = Command::new(age)
        .args(args)
        .arg("-o")
        .arg(out)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(plaintext.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn broker(dir: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env_remove("AGE_IDENTITY_FILE")
        .env_remove("BROKER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A project dir with a `.broker.yml`, an X25519 key, an agenix-style host key in `$HOME`.
struct Project {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
    tools: Age,
}

impl Project {
    fn new() -> Option<Project> {
        let tools = Age::find()?;
        let dir = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("keys")).unwrap();
        std::fs::create_dir_all(d.join("secrets")).unwrap();
        std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
        ok(Command::new(&tools.keygen)
            .arg("-o")
            .arg(d.join("keys/me.txt")));
        let me = String::from_utf8(ok(Command::new(&tools.keygen)
            .arg("-y")
            .arg(d.join("keys/me.txt"))))
        .unwrap();
        let me = me.trim();
        let host_key = home.path().join(".ssh/id_ed25519");
        ok(Command::new(&tools.ssh_keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "host", "-f"])
            .arg(&host_key));
        let host_pub = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let host_pub = host_pub.trim();

        encrypt(
            &tools.age,
            TOKEN,
            &["-a", "-r", me, "-r", host_pub],
            &d.join("secrets/token.age"),
        );
        encrypt(
            &tools.age,
            HOST_SECRET,
            &["-r", host_pub],
            &d.join("secrets/host.age"),
        );
        std::fs::write(
            d.join(".broker.yml"),
            format!(
                r#"credentials:
  token: {{ ref: "age:secrets/token.age", as: API_TOKEN }}
  host:  {{ ref: "agenix:secrets/host.age", as: HOST_SECRET, kind: file, identity: "~/.ssh/id_ed25519" }}
backends:
  age:
    identity: keys/me.txt
    recipients: ["{me}", "{host_pub}"]
"#
            ),
        )
        .unwrap();
        Some(Project { dir, home, tools })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn broker(&self, args: &[&str]) -> Output {
        broker(self.path(), self.home.path(), args)
    }
}

#[test]
fn get_run_audit_rotate() {
    let Some(p) = Project::new() else { return };

    let out = p.broker(&["get", "token", "--reveal"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(stdout(&out), TOKEN);
    assert_eq!(stderr(&out), "");
    let out = p.broker(&["get", "host", "--reveal"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(stdout(&out), HOST_SECRET);
    assert_eq!(stderr(&out), "");

    // `run`: the value reaches the child; what the child prints is redacted.
    let out = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "test \"$API_TOKEN\" = \"$EXPECTED\" && echo match; echo \"$API_TOKEN\"; cat \"$HOST_SECRET\"",
        ])
        .current_dir(p.path())
        .env("HOME", p.home.path())
        .env("EXPECTED", TOKEN)
        .env_remove("AGE_IDENTITY_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    // `match`: the child got the value; then both values, redacted by name.
    assert_eq!(stdout(&out), "match\n[REDACTED:token]\n[REDACTED:host]");
    assert_eq!(stderr(&out), "");
    assert_no_canary("run output", &t, &[TOKEN, HOST_SECRET]);

    // `audit`: local files, allowed with egress off; no values.
    let out = p.broker(&["audit", "--json"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert_eq!(stderr(&out), "");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{t}");
    for e in entries {
        assert_eq!(e["backend"], "age", "{t}");
        assert_eq!(e["badge"], "local", "{t}");
        assert_eq!(e["allowed"], true, "{t}");
    }
    assert_no_canary("audit", &t, &[TOKEN, HOST_SECRET]);

    // `rotate`: fresh file key, same recipients, mode kept, `age -d` still decrypts.
    let file = p.path().join("secrets/token.age");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::read(&file).unwrap();
    let out = p.broker(&["rotate", "token", "--json"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert_eq!(
        stdout(&out),
        "{\"credential\":\"token\",\"summary\":\"re-encrypted token.age to 2 recipients with a fresh file key (armored)\",\"version\":null}\n"
    );
    assert_eq!(stderr(&out), "");
    assert_no_canary("rotate", &t, &[TOKEN]);
    let after = std::fs::read(&file).unwrap();
    assert_ne!(before, after);
    assert!(after.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for key in [
        p.path().join("keys/me.txt"),
        p.home.path().join(".ssh/id_ed25519"),
    ] {
        let plain = ok(Command::new(&p.tools.age)
            .arg("-d")
            .arg("-i")
            .arg(&key)
            .arg(&file));
        assert_eq!(plain, TOKEN.as_bytes(), "age -d -i {}", key.display());
    }
}

#[test]
fn errors_are_one_line_and_leak_nothing() {
    let Some(p) = Project::new() else { return };
    // Wrong key: host.age is encrypted to the host key only; point the credential elsewhere.
    let yaml = std::fs::read_to_string(p.path().join(".broker.yml"))
        .unwrap()
        .replace("identity: \"~/.ssh/id_ed25519\"", "identity: keys/me.txt");
    std::fs::write(p.path().join(".broker.yml"), yaml).unwrap();
    let d = p.path().display();
    let out = p.broker(&["get", "host", "--reveal"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(69), "{t}");
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!(
            "error: credential `host` (agenix:secrets/host.age): no identity matches {d}/secrets/host.age; tried: {d}/keys/me.txt\n\
             hint: the file is not encrypted to any of these keys (or its recipient lines were damaged); set `identity:` (credential or backends.age) or AGE_IDENTITY_FILE\n"
        )
    );
    assert_no_canary("wrong key", &t, &[TOKEN, HOST_SECRET]);

    // Corrupted file.
    let file = p.path().join("secrets/token.age");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 40);
    bytes.extend_from_slice(b"\n-----END AGE ENCRYPTED FILE-----\n");
    std::fs::write(&file, bytes).unwrap();
    let out = p.broker(&["get", "token", "--reveal"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(69), "{t}");
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!(
            "error: credential `token` (age:secrets/token.age): cannot decrypt {d}/secrets/token.age: the payload fails authentication: the file is corrupted, truncated or was tampered with\n"
        )
    );
    assert_no_canary("corrupted", &t, &[TOKEN, HOST_SECRET]);

    // Missing file.
    std::fs::remove_file(&file).unwrap();
    let out = p.broker(&["get", "token", "--reveal"]);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!(
            "error: credential `token` (age:secrets/token.age): age file {d}/secrets/token.age does not exist\n"
        )
    );
}
