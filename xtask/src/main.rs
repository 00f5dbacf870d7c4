//! `cargo xtask`: the project's own scripts, so a fresh machine needs nothing done by hand.
//!
//! - `cargo xtask setup` installs the test peers: Debian `age` (apt) and the Python peers in
//!   `xtask/peers-requirements.txt` (moto, OpenBao, sops, drongo, cross-check clients) into a
//!   venv at `$BROKER_VENV` (default `$HOME/.cache/broker-venv`). Idempotent and quick when done.
//! - `cargo xtask test [ARGS]` runs setup, then every test: `cargo test --workspace
//!   --all-features [ARGS]`, with the peers on the tests' search path.
//! - `cargo xtask bench [ARGS]` runs the criterion benches and prints their figures, then (without
//!   ARGS) the whole-process comparison.
//! - `cargo xtask bench-processes` times `broker get` against `sops decrypt --extract` and
//!   `age -d` as whole processes on generated inputs, and prints the ratios.
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
        "bench-processes" => setup().and_then(|venv| processes(&venv)),
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
        .env("BROKER_PEERS_BIN", peers))?;
    if extra.is_empty() {
        processes(peers)?;
    }
    Ok(())
}

/// Whole-process timings: `broker get` against `sops decrypt --extract` and `age -d` on the
/// same inputs (a 1,000-key sops YAML, a 1 MiB age file), each command run 20 times.
fn processes(peers: &Path) -> Result<(), String> {
    println!("\nxtask: whole-process comparison (release broker with the age and sops backends)");
    run(cargo().args([
        "build",
        "--release",
        "-q",
        "-p",
        "broker-cli",
        "--no-default-features",
        "--features",
        "env,age,sops",
    ]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let broker = target.join("release/broker");
    let dir = std::env::temp_dir().join(format!("broker-xtask-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = compare(peers, &broker, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn output(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

fn mean_ms(runs: u32, mut cmd: impl FnMut() -> Command) -> Result<f64, String> {
    output(&mut cmd())?; // warm the page cache
    let start = std::time::Instant::now();
    for _ in 0..runs {
        output(&mut cmd())?;
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / f64::from(runs))
}

fn compare(peers: &Path, broker: &Path, dir: &Path) -> Result<(), String> {
    let key = dir.join("key.txt");
    output(Command::new("age-keygen").arg("-o").arg(&key))?;
    let key_text = std::fs::read_to_string(&key).map_err(|e| e.to_string())?;
    let recipient = key_text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .ok_or("age-keygen wrote no public key")?
        .to_string();

    let mut yaml = String::new();
    for i in 0..1000 {
        yaml.push_str(&format!("key{i}: value-{i}-{}\n", "x".repeat(24)));
    }
    std::fs::write(dir.join("plain.yaml"), yaml).map_err(|e| e.to_string())?;
    let enc = output(
        Command::new(peers.join("sops"))
            .args(["--disable-version-check", "encrypt", "--age", &recipient])
            .arg(dir.join("plain.yaml")),
    )?;
    std::fs::write(dir.join("big.enc.yaml"), enc).map_err(|e| e.to_string())?;

    let blob: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("blob"), blob).map_err(|e| e.to_string())?;
    output(
        Command::new("age")
            .args(["-r", &recipient, "-o"])
            .arg(dir.join("blob.age"))
            .arg(dir.join("blob")),
    )?;

    std::fs::write(
        dir.join(".broker.yml"),
        "backends:\n  age: { identity: key.txt }\n  sops: { age_key_file: key.txt }\ncredentials:\n  one: { ref: \"sops:big.enc.yaml#key500\" }\n  blob: { ref: \"age:blob.age\" }\n",
    )
    .map_err(|e| e.to_string())?;

    let config = dir.join(".broker.yml");
    let runs = 20;
    let broker_sops = mean_ms(runs, || {
        let mut c = Command::new(broker);
        c.arg("--config")
            .arg(&config)
            .args(["get", "one", "--reveal"]);
        c
    })?;
    let sops = mean_ms(runs, || {
        let mut c = Command::new(peers.join("sops"));
        c.args([
            "--disable-version-check",
            "decrypt",
            "--extract",
            "[\"key500\"]",
        ])
        .arg(dir.join("big.enc.yaml"))
        .env("SOPS_AGE_KEY_FILE", &key);
        c
    })?;
    let broker_age = mean_ms(runs, || {
        let mut c = Command::new(broker);
        c.arg("--config")
            .arg(&config)
            .args(["get", "blob", "--reveal"]);
        c
    })?;
    let age = mean_ms(runs, || {
        let mut c = Command::new("age");
        c.args(["-d", "-i"]).arg(&key).arg(dir.join("blob.age"));
        c
    })?;
    println!(
        "{:<52} {:>10} {:>10} {:>8}",
        "input", "broker", "reference", "ratio"
    );
    println!(
        "{:<52} {:>8.1}ms {:>8.1}ms {:>8.2}",
        "sops YAML, 1,000 keys, one value (sops --extract)",
        broker_sops,
        sops,
        broker_sops / sops
    );
    println!(
        "{:<52} {:>8.1}ms {:>8.1}ms {:>8.2}",
        "age file, 1 MiB (age -d)",
        broker_age,
        age,
        broker_age / age
    );
    Ok(())
}
