//! `broker run` under a terminal: the child's controlling terminal is the broker's redacted
//! pseudo-terminal, so what it writes to `/dev/tty` is redacted too; typed input still reaches
//! it; Ctrl-C still interrupts it; the user's terminal settings are restored afterwards.
//!
//! The outer terminal is a pty driven by Python's `pty` module (`python3` must be on PATH).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

const CANARY: &str = "canary-tty-4b7f19e2d0c6";

mod pty_driver;

use pty_driver::DRIVER;

struct Sandbox {
    dir: tempfile::TempDir,
    runtime: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".broker.yml"),
            "credentials:\n  api: { ref: \"env:DEMO_TOKEN\", as: API_TOKEN }\n",
        )
        .unwrap();
        let runtime = tempfile::tempdir().unwrap();
        std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Sandbox { dir, runtime }
    }

    /// Runs `argv` on a fresh terminal; `env` goes to the driver (and so to `argv`).
    fn on_tty(&self, argv: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new("python3");
        c.arg("-c")
            .arg(DRIVER)
            .args(argv)
            .current_dir(self.dir.path())
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("DEMO_TOKEN", CANARY)
            .env_remove("BROKER_CONFIG")
            .env_remove("BROKER_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    /// `broker run -- sh -c SCRIPT` on a fresh terminal.
    fn run_sh(&self, script: &str, env: &[(&str, &str)]) -> Output {
        let broker = env!("CARGO_BIN_EXE_broker");
        self.on_tty(&[broker, "run", "--", "sh", "-c", script], env)
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_no_canary(what: &str, s: &str) {
    assert!(!s.contains(CANARY), "{what} shows the value: {s:?}");
}

#[test]
fn writes_to_dev_tty_are_redacted() {
    let sb = Sandbox::new();
    let out = sb.run_sh(r#"printf 'tty:%s\n' "$API_TOKEN" > /dev/tty"#, &[]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_no_canary("the terminal", &shown);
    assert!(shown.contains("tty:[REDACTED:api]"), "{shown:?}");
}

#[test]
fn writes_to_dev_tty_are_redacted_when_stdout_is_a_file() {
    let sb = Sandbox::new();
    let file = sb.path("out.txt");
    let out = sb.run_sh(
        r#"printf 'tty:%s\n' "$API_TOKEN" > /dev/tty; printf 'out:%s\n' "$API_TOKEN""#,
        &[("TTY_STDOUT", file.to_str().unwrap())],
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_no_canary("the terminal", &shown);
    assert!(shown.contains("tty:[REDACTED:api]"), "{shown:?}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written, "out:[REDACTED:api]\n");
}

#[test]
fn typed_input_reaches_a_child_reading_dev_tty_and_stdin() {
    let sb = Sandbox::new();
    let out = sb.run_sh(
        r#"printf 'pw? ' > /dev/tty; read a < /dev/tty; printf 'again? '; read b; echo "got:$a:$b""#,
        &[("TTY_SEND_AFTER", "pw? "), ("TTY_SEND", "first\rsecond\r")],
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains("got:first:second"), "{shown:?}");
}

#[test]
fn ctrl_c_typed_on_the_terminal_interrupts_the_child() {
    let sb = Sandbox::new();
    // `exec`: the interrupted process is the one holding the pty (a `sleep` left behind by a
    // `sh` that died first would keep the pty open until it ends).
    let out = sb.run_sh(
        "echo ready; exec sleep 30",
        &[("TTY_SEND_AFTER", "ready"), ("TTY_SEND", "\x03")],
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(130), "{shown}");
}

#[test]
fn terminal_settings_are_restored_after_the_run() {
    let sb = Sandbox::new();
    let broker = env!("CARGO_BIN_EXE_broker");
    let (before, after) = (sb.path("before"), sb.path("after"));
    for child in ["true", "exit 3"] {
        let script = format!(r#"stty -g > "$1"; "$2" run -- sh -c '{child}'; stty -g > "$3""#);
        let out = sb.on_tty(
            &[
                "/bin/sh",
                "-c",
                &script,
                "sh",
                before.to_str().unwrap(),
                broker,
                after.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let (b, a) = (
            std::fs::read_to_string(&before).unwrap(),
            std::fs::read_to_string(&after).unwrap(),
        );
        assert!(!b.is_empty());
        assert_eq!(b, a, "terminal settings changed by `{child}`");
    }
}

/// (pid, session, tty_nr) from a `/proc/PID/stat` line.
fn stat_ids(line: &str) -> (u64, u64, u64) {
    let pid = line.split_whitespace().next().unwrap().parse().unwrap();
    let rest: Vec<&str> = line
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    (pid, rest[3].parse().unwrap(), rest[4].parse().unwrap())
}

#[test]
fn the_child_leads_its_own_session_on_the_brokers_pty() {
    let sb = Sandbox::new();
    let script = r#"echo "outer:$(cat /proc/$$/stat)"; "$0" run -- sh -c 'echo "inner:$(cat /proc/$$/stat)"'"#;
    let out = sb.on_tty(
        &["/bin/sh", "-c", script, env!("CARGO_BIN_EXE_broker")],
        &[],
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let find = |tag: &str| {
        stat_ids(
            shown
                .lines()
                .find_map(|l| l.trim().strip_prefix(tag))
                .unwrap_or_else(|| panic!("{shown:?}")),
        )
    };
    let (_, _, outer_tty) = find("outer:");
    let (pid, session, inner_tty) = find("inner:");
    assert_eq!(session, pid, "the child is not a session leader: {shown:?}");
    assert_ne!(inner_tty, 0, "{shown:?}");
    assert_ne!(inner_tty, outer_tty, "{shown:?}");
}
