//! `cargo xtask`: the project's own scripts, so a fresh machine needs nothing done by hand.
//!
//! - `cargo xtask setup` installs the test peers: Debian `age` (apt) and the Python peers in
//!   `xtask/peers-requirements.txt` (moto, OpenBao, sops, drongo, cross-check clients) into a
//!   venv at `$BROKER_VENV` (default `$HOME/.cache/broker-venv`). Idempotent and quick when done.
//! - `cargo xtask test [ARGS]` runs setup, then every test: `cargo test --workspace
//!   --all-features [ARGS]`, with the peers on the tests' search path.
//! - `cargo xtask bench [ARGS]` runs the criterion benches and prints their figures.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const REQUIREMENTS: &str = include_str!("../peers-requirements.txt");
/// Debian packages the tests need: the `age` CLI (interop) and `ssh-keygen` (agenix keys).
const APT_PACKAGES: &[(&str, &str)] = &[
    ("age", "age"),
    ("age-keygen", "age"),
    ("ssh-keygen", "openssh-client"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r),
        None => ("help", &[][..]),
    };
    let result = match task {
        "setup" => setup().map(|_| ()),
        "test" => setup().and_then(|venv| test(&venv, rest)),
        "bench" => setup().and_then(|venv| bench(&venv, rest)),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup | test [CARGO TEST ARGS] | bench [CARGO BENCH ARGS]>"
            );
            return ExitCode::from(if task == "help" { 0 } else { 2 });
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn venv_dir() -> PathBuf {
    if let Some(v) = std::env::var_os("BROKER_VENV") {
        return v.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/broker-venv")
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Installs what the tests need; returns the venv's bin dir.
fn setup() -> Result<PathBuf, String> {
    let mut missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        println!("xtask: installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    let venv = venv_dir();
    let bin = venv.join("bin");
    let stamp = venv.join(".broker-requirements");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(REQUIREMENTS)
        && bin.join("python").is_file()
    {
        return Ok(bin);
    }
    if !bin.join("python").is_file() {
        println!("xtask: creating the test-peer venv at {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    println!("xtask: installing the Python test peers (xtask/peers-requirements.txt)");
    let requirements = root().join("xtask/peers-requirements.txt");
    run(Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    std::fs::write(&stamp, REQUIREMENTS)
        .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(bin)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn test(peers: &Path, extra: &[String]) -> Result<(), String> {
    run(cargo()
        .args(["test", "--workspace", "--all-features"])
        .args(extra)
        .env("BROKER_PEERS_BIN", peers))
}

fn bench(peers: &Path, extra: &[String]) -> Result<(), String> {
    run(cargo()
        .args(["bench", "--workspace", "--all-features"])
        .args(extra)
        .env("BROKER_PEERS_BIN", peers))
}
