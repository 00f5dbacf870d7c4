//! The README's first command: `broker audit` then `broker run` on examples/quickstart.
#![cfg(all(feature = "age", feature = "sops"))]
#![allow(clippy::unwrap_used)]

mod scratch_dirs;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const DEMO_VALUES: &[&str] = &[
    "demo-api-token-not-a-secret",
    "demo-db-password-not-a-secret",
    "demo-deploy-key-not-a-secret",
];

fn broker(args: &[&str], runtime: &Path) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["--config", "examples/quickstart/.broker.yml"])
        .args(args)
        .current_dir(root)
        .env("XDG_RUNTIME_DIR", runtime)
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY")
        .env_remove("AGE_IDENTITY_FILE")
        .output()
        .unwrap()
}

#[test]
fn quickstart_audit_then_run() {
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();

    let audit = broker(&["audit"], runtime.path());
    let text = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(
        audit.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert!(
        text.contains("3 credential(s); 3 stay on this machine, 0 would leave it"),
        "{text}"
    );

    let run = broker(
        &["run", "--", "examples/quickstart/task.sh"],
        runtime.path(),
    );
    let out =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{out}");
    assert!(
        out.contains("task: API_TOKEN is set (27 bytes), DB_PASSWORD is set (29 bytes)"),
        "{out}"
    );
    assert!(out.contains("(mode 600, 3 lines)"), "{out}");
    // The task prints its token; `broker run` redacts it.
    assert!(
        out.contains("task: oops, printing the token: [REDACTED:api]"),
        "{out}"
    );
    for value in DEMO_VALUES {
        assert!(!text.contains(value), "audit printed a value");
        assert!(!out.contains(value), "run printed a value: {out}");
    }
    assert_eq!(
        scratch_dirs::scratch_left(runtime.path()),
        Vec::<std::path::PathBuf>::new(),
        "scratch dir left behind"
    );
}
