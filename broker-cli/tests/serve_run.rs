//! `broker run --from SOCKET`: credentials obtained from a `broker serve` daemon (this same
//! binary, on a unix socket in a temp dir), delivered, redacted and wiped as in a local run, by
//! a client with no config and no backend credentials of its own.
#![cfg(feature = "serve")]
#![allow(clippy::unwrap_used)]

mod scratch_dirs;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const CANARY: &str = "canary-serve-run-3b9e71d0c4a2";
const KEY_CANARY: &str = "canary-serve-run-key-5f06c2e8";
const OTHER_CANARY: &str = "canary-serve-run-other-a41d97";

mod serve_daemon;

use serve_daemon::Daemon;

/// The daemon with three `env:` credentials (one `kind: file`), this uid as `agent-a`.
fn start() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let uid = rustix::process::getuid().as_raw();
    std::fs::write(
        dir.path().join(".broker.yml"),
        format!(
            "credentials:\n  api: {{ ref: \"env:DEMO_TOKEN\", as: API_TOKEN }}\n  \
             key: {{ ref: \"env:DEMO_KEY\", as: KEY_FILE, kind: file }}\n  \
             other: {{ ref: \"env:DEMO_OTHER\", as: OTHER_TOKEN }}\n\
             audit: {{ path: audit.jsonl }}\n\
             serve:\n  listen: run/broker.sock\n  agents: [{{ id: agent-a, uid: {uid} }}]\n"
        ),
    )
    .unwrap();
    Daemon::start(
        dir,
        &[
            ("DEMO_TOKEN", CANARY),
            ("DEMO_KEY", KEY_CANARY),
            ("DEMO_OTHER", OTHER_CANARY),
        ],
    )
}

/// `broker run --from` in an empty dir (no .broker.yml anywhere up), with a clean environment.
fn client(socket: &Path, runtime: &Path, args: &[&str]) -> std::process::Output {
    let cwd = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .arg("run")
        .arg("--from")
        .arg(socket)
        .args(args)
        .current_dir(cwd.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("XDG_RUNTIME_DIR", runtime)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn runtime_dir() -> tempfile::TempDir {
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    runtime
}

#[test]
fn a_run_from_the_daemon_delivers_redacts_and_wipes() {
    let d = start();
    let runtime = runtime_dir();
    let out = client(
        &d.socket,
        runtime.path(),
        &[
            "--",
            "sh",
            "-c",
            "echo \"token=$API_TOKEN\"; echo \"path=$KEY_FILE\"; stat -c 'mode=%a' \"$KEY_FILE\"; \
             echo \"file=$(cat \"$KEY_FILE\")\"; echo \"other=$OTHER_TOKEN\"; env",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("token=[REDACTED:api]\n"), "{stdout}");
    assert!(stdout.contains("file=[REDACTED:key]\n"), "{stdout}");
    assert!(stdout.contains("other=[REDACTED:other]\n"), "{stdout}");
    assert!(stdout.contains("mode=600\n"), "{stdout}");
    for canary in [CANARY, KEY_CANARY, OTHER_CANARY] {
        assert!(!stdout.contains(canary) && !stderr.contains(canary));
    }
    // The child's environment: the delivered variables, none of the daemon's.
    assert!(!stdout.contains("DEMO_"), "{stdout}");
    assert!(!stdout.contains("BROKER_"), "{stdout}");
    // The file was under the client's runtime dir and is gone with its scratch dir.
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("path="))
        .unwrap();
    let user_dir = runtime
        .path()
        .join(format!("broker-{}", rustix::process::getuid().as_raw()));
    assert!(path.starts_with(user_dir.to_str().unwrap()), "{path}");
    assert!(!Path::new(path).exists());
    assert_eq!(
        scratch_dirs::scratch_left(runtime.path()),
        Vec::<std::path::PathBuf>::new()
    );

    // --only: just those; a name the daemon does not offer is refused before anything runs.
    let out = client(
        &d.socket,
        runtime.path(),
        &[
            "--only",
            "api",
            "--",
            "sh",
            "-c",
            "echo \"token=$API_TOKEN key=${KEY_FILE:-none}\"",
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "token=[REDACTED:api] key=none\n"
    );
    let out = client(
        &d.socket,
        runtime.path(),
        &["--only", "nope", "--", "sh", "-c", "echo ran"],
    );
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: the daemon does not offer `nope` to this caller\n\
         hint: its manifest lists what you may request: GET /v1/manifest\n"
    );

    let (logs, audit) = d.stop();
    assert!(!logs.contains(CANARY) && !audit.contains(CANARY));
    // Each delivered value was a request by the verified agent.
    assert!(audit.contains("\"agent_id\":\"agent-a\""), "{audit}");
}
