//! Output conventions: `--color auto|always|never` and `NO_COLOR`, `--quiet`, `--json` on
//! `broker get`, and `broker doctor`'s "what to do" line for each failing check.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};

mod pty_driver;

const CANARY: &str = "canary-output-3f9e1b7c25d0";

/// An age backend whose identity file is missing (a failing doctor check, offline), an env
/// credential, and the audit log turned off (a warning on `broker audit`).
const CONFIG: &str = "backends:\n  age: { identity: missing-key.txt }\ncredentials:\n  blob: { ref: \"age:blob.age\" }\n  api: { ref: \"env:DEMO_TOKEN\" }\naudit: { enabled: false }\n";

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".broker.yml"), CONFIG).unwrap();
        Sandbox { dir }
    }

    fn command(&self, program: &str, env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.dir.path())
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("DEMO_TOKEN", CANARY)
            .env_remove("BROKER_CONFIG")
            .env_remove("BROKER_LOG")
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(env!("CARGO_BIN_EXE_broker"), env)
            .args(args)
            .output()
            .unwrap()
    }

    /// What a terminal shows of `broker ARGS` (stdout and stderr both), and the exit code.
    fn on_tty(&self, args: &[&str], env: &[(&str, &str)]) -> (String, Option<i32>) {
        let out = self
            .command("python3", env)
            .arg("-c")
            .arg(pty_driver::DRIVER)
            .arg(env!("CARGO_BIN_EXE_broker"))
            .args(args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code(),
        )
    }

    fn config_path(&self) -> String {
        self.dir.path().join(".broker.yml").display().to_string()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_terminal_gets_colour_unless_no_color_or_color_never() {
    let sb = Sandbox::new();
    let (shown, code) = sb.on_tty(&["doctor"], &[]);
    assert_eq!(code, Some(69), "{shown:?}");
    assert!(
        shown.contains("\x1b[1;33mwhat to do:\x1b[0m age: "),
        "{shown:?}"
    );
    let (shown, code) = sb.on_tty(&["get", "nope"], &[]);
    assert_eq!(code, Some(78), "{shown:?}");
    assert!(shown.starts_with("\x1b[1;31merror:\x1b[0m "), "{shown:?}");

    for (args, env) in [
        (&["doctor"][..], &[("NO_COLOR", "1")][..]),
        (&["get", "nope"], &[("NO_COLOR", "1")]),
        (&["--color", "never", "doctor"], &[]),
        (&["get", "nope", "--color", "never"], &[]),
    ] {
        let (shown, _) = sb.on_tty(args, env);
        assert!(
            shown.contains("what to do:") || shown.contains("error:"),
            "{shown:?}"
        );
        assert!(!shown.contains('\x1b'), "{args:?} {env:?}: {shown:?}");
    }
}

#[test]
fn pipes_get_no_colour_unless_color_always() {
    let sb = Sandbox::new();
    let out = sb.run(&["get", "nope", "--reveal"], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: no credential named `nope` in {}\nhint: declared credentials: blob, api\n",
            sb.config_path()
        )
    );
    let out = sb.run(&["--color", "always", "get", "nope", "--reveal"], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        text(&out.stderr),
        format!(
            "\x1b[1;31merror:\x1b[0m no credential named `nope` in {}\n\x1b[1;36mhint:\x1b[0m declared credentials: blob, api\n",
            sb.config_path()
        )
    );
    // --json output stays plain whatever --color says.
    let out = sb.run(&["--color", "always", "doctor", "--json"], &[]);
    assert!(!out.stdout.contains(&0x1b), "{}", text(&out.stdout));
}

#[test]
fn quiet_drops_warnings_and_notes_but_never_errors() {
    let sb = Sandbox::new();
    let out = sb.run(&["audit"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stderr),
        format!(
            "warning: the audit log is off (`audit: {{ enabled: false }}` in {}): nothing the broker hands out is recorded\n",
            sb.config_path()
        )
    );
    let out = sb.run(&["audit", "--quiet"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), "");
    assert!(text(&out.stdout).contains("CREDENTIAL"));

    let out = sb.run(&["-q", "get", "nope", "--reveal"], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: no credential named `nope` in {}\nhint: declared credentials: blob, api\n",
            sb.config_path()
        )
    );
}

#[test]
fn get_json_holds_the_value_behind_the_reveal_rule() {
    let sb = Sandbox::new();
    let out = sb.run(&["get", "api", "--json"], &[]);
    assert_eq!(out.status.code(), Some(77));
    assert_eq!(text(&out.stdout), "");
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["kind"], "policy_denied");
    assert!(!text(&out.stderr).contains(CANARY));

    let out = sb.run(&["get", "api", "--json", "--reveal"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{{\"credential\":\"api\",\"value\":\"{CANARY}\",\"companions\":{{}},\"lease_id\":null,\"expires_at\":null}}\n"
        )
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn doctor_says_what_to_do_for_each_failing_check() {
    let sb = Sandbox::new();
    let out = sb.run(&["doctor"], &[]);
    assert_eq!(out.status.code(), Some(69));
    let stdout = text(&out.stdout);
    let todo: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("what to do:"))
        .collect();
    assert_eq!(
        todo,
        [format!(
            "what to do: age: check that the identity files in `backends.age` exist and are readable in {}; see docs/backends/age.md",
            sb.config_path()
        )]
    );
    assert!(!stdout.contains(CANARY));

    let out = sb.run(&["doctor", "--json"], &[]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backends = doc["backends"].as_array().unwrap();
    let age = backends.iter().find(|b| b["backend"] == "age").unwrap();
    assert_eq!(age["ok"], false);
    assert!(
        age["what_to_do"]
            .as_str()
            .unwrap()
            .starts_with("check that the identity files")
    );
    let env = backends.iter().find(|b| b["backend"] == "env").unwrap();
    assert_eq!(env["what_to_do"], serde_json::Value::Null);

    // Egress off: a remote backend is not checked, and doctor says how to allow it.
    std::fs::write(
        sb.dir.path().join(".broker.yml"),
        "credentials:\n  db: { ref: \"vault:secret/data/app#url\" }\n",
    )
    .unwrap();
    let out = sb.run(&["doctor"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!(
            "\nwhat to do: vault: review `broker audit`, then allow it in `egress:` of {} (`enabled: true`, `allow:`)\n",
            sb.config_path()
        )),
        "{}",
        text(&out.stdout)
    );

    // No config at all.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_broker"))
        .arg("doctor")
        .current_dir(empty.path())
        .env_remove("BROKER_CONFIG")
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).ends_with(
            "config: none found (run in a directory with .broker.yml, or pass --config)\nwhat to do: run `broker init` to write a .broker.yml here, or pass --config PATH\n"
        ),
        "{}",
        text(&out.stdout)
    );
}
