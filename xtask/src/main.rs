//! `cargo xtask`: the project's own scripts, so a fresh machine needs nothing done by hand.
//!
//! - `cargo xtask setup` installs the test peers: Debian `age` (apt) and the Python peers in
//!   `xtask/peers-requirements.txt` (moto, OpenBao, sops, drongo, cross-check clients) into a
//!   venv at `$BROKER_VENV` (default `$HOME/.cache/broker-venv`). Idempotent and quick when done.
//! - `cargo xtask test [ARGS]` runs setup, then every test: `cargo test --workspace
//!   --all-features [ARGS]`, with the peers on the tests' search path.
//! - `cargo xtask bench [ARGS]` runs the criterion benches and prints their figures, then (without
//!   ARGS) the whole-process comparison. `cargo xtask bench serve` runs only the `broker serve`
//!   load bench (`cargo bench -p broker-serve --bench load`); `cargo xtask bench replicas`
//!   the replicas-on-Redis bench (`broker-serve/benches/replicas.rs`); `cargo xtask bench
//!   proxy` what the egress proxy adds to a request (`broker-proxy/benches/latency.rs`).
//! - `cargo xtask bench run [--runs N] [--broker PATH]...` times `broker run`/`broker get`
//!   side by side with fnox and `age -d` as whole processes (`side_by_side`);
//!   `cargo xtask bench setup-fnox` installs that peer (bench setup only, never CI).
//! - `cargo xtask bench-processes` times `broker get` against `sops decrypt --extract` and
//!   `age -d` as whole processes on generated inputs, and prints the ratios.
//! - `cargo xtask fuzz TARGET|all|smoke [--time SECONDS]` runs the libFuzzer targets in `fuzz/`
//!   (installing `cargo-fuzz` when missing), resuming each from its working corpus, and logs
//!   the executions to `$HOME/.cache/broker-fuzz-log.tsv` (see `docs/security.md`).
//! - `cargo xtask man [--out DIR]` writes the man pages of `broker` and every subcommand
//!   (`broker.1`, `broker-run.1`, ...) into DIR (default `target/man`), generated from the
//!   CLI's clap definitions by the hidden `broker man`.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod side_by_side;

const REQUIREMENTS: &str = include_str!("../peers-requirements.txt");
/// Debian packages the tests need: the `age` CLI (interop) and `ssh-keygen` (agenix keys).
const APT_PACKAGES: &[(&str, &str)] = &[
    ("age", "age"),
    ("age-keygen", "age"),
    ("ssh-keygen", "openssh-client"),
    // Real clients of the daemon and proxy tests, and the man-page renderer.
    ("curl", "curl"),
    ("man", "man-db"),
    // The shared store of `broker serve` replicas (broker-cli/tests/serve_replicas.rs).
    ("redis-server", "redis-server"),
    // `systemd-analyze verify` of the units in deploy/systemd (broker-serve/tests/deploy.rs).
    ("systemd-analyze", "systemd"),
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
        // Bench-only peers and whole-process timings: no test-peer setup needed.
        "bench" if rest.first().is_some_and(|a| a == "run") => side_by_side::bench_run(&rest[1..]),
        "bench" if rest.first().is_some_and(|a| a == "setup-fnox") => side_by_side::setup_fnox(),
        "bench" => setup().and_then(|venv| bench(&venv, rest)),
        "bench-processes" => setup().and_then(|venv| processes(&venv)),
        "fuzz" => fuzz(rest),
        "man" => man(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup | test [CARGO TEST ARGS] | bench [serve | replicas | proxy | run | setup-fnox | CARGO BENCH ARGS] | fuzz TARGET|all|smoke [--time SECONDS] | man [--out DIR]>"
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

/// The workspace root: `cargo run` (the `cargo xtask` alias) names xtask's manifest dir at run
/// time. The compile-time value is only a fallback: a target dir shared by two clones can hand
/// one clone an xtask binary built in the other, which would then work on the wrong tree.
fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
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
    if bin.join("python").is_file() {
        node(&bin)?;
    }
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
    node(&bin)?;
    Ok(bin)
}

/// The Node release the proxy tests use as a real client (`fetch` with `NODE_USE_ENV_PROXY`
/// needs Node ≥ 24; Debian's is 20).
const NODE_PACKAGE: &str = "node@24";

/// Installs Node 24 from the npm registry's `node` package under the cache dir and links it
/// into the venv's bin dir as `node24`, where the tests look for peers.
fn node(bin: &Path) -> Result<(), String> {
    let link = bin.join("node24");
    if link.is_file() {
        return Ok(());
    }
    let prefix = venv_dir()
        .parent()
        .map_or_else(|| PathBuf::from("/tmp"), Path::to_path_buf)
        .join("broker-node");
    println!(
        "xtask: installing {NODE_PACKAGE} (npm) into {}",
        prefix.display()
    );
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&prefix)
        .arg(NODE_PACKAGE))?;
    let target = prefix.join("node_modules/.bin/node");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link)
        .map_err(|e| format!("cannot link {}: {e}", link.display()))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs the tests; tests that skip because a peer is missing record it in a log (see
/// `broker_core::testkit::record_skip`), summarised at the end whatever the outcome.
fn test(peers: &Path, extra: &[String]) -> Result<(), String> {
    let skip_log = std::env::temp_dir().join(format!("broker-skips-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    let result = run(cargo()
        .args(["test", "--workspace", "--all-features"])
        .args(extra)
        .env("BROKER_PEERS_BIN", peers)
        .env("BROKER_SKIP_LOG", &skip_log));
    let skipped = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let _ = std::fs::remove_file(&skip_log);
    if skipped.is_empty() {
        println!("xtask: no test was skipped");
    } else {
        println!(
            "xtask: {} test(s) SKIPPED because a peer could not start:",
            skipped.lines().count()
        );
        for line in skipped.lines() {
            println!("  {line}");
        }
    }
    result
}

fn bench(peers: &Path, extra: &[String]) -> Result<(), String> {
    if let Some((first, rest)) = extra.split_first()
        && first == "serve"
    {
        return bench_serve(peers, rest);
    }
    if let Some((first, rest)) = extra.split_first()
        && first == "proxy"
    {
        // What the egress proxy adds to a request (broker-proxy/benches/latency.rs).
        return run(cargo()
            .args(["bench", "-p", "broker-proxy", "--bench", "latency"])
            .args(rest));
    }
    if let Some((first, rest)) = extra.split_first()
        && first == "replicas"
    {
        // `broker serve` replicas sharing a Redis (broker-serve/benches/replicas.rs).
        return run(with_peers(
            cargo()
                .args(["bench", "-p", "broker-serve", "--features", "redis"])
                .args(["--bench", "replicas"])
                .args(rest),
            peers,
        ));
    }
    // Includes broker-serve's `load` bench (harness = false: it prints its own figures).
    run(with_peers(
        cargo()
            .args(["bench", "--workspace", "--all-features"])
            .args(extra),
        peers,
    ))?;
    if extra.is_empty() {
        processes(peers)?;
    }
    Ok(())
}

/// `cargo xtask bench serve`: only the `broker serve` load and cold-mint bench (release
/// profile); `BROKER_BENCH_REQUESTS`, `BROKER_BENCH_CONCURRENCY`, `BROKER_BENCH_FSYNC` and
/// `BROKER_BENCH_DAEMON_THREADS` pass through (see `broker-serve/benches/load.rs`).
fn bench_serve(peers: &Path, extra: &[String]) -> Result<(), String> {
    println!("xtask: broker serve load bench (release build; the first one takes minutes)");
    run(with_peers(
        cargo()
            .args(["bench", "-p", "broker-serve", "--bench", "load"])
            .args(extra),
        peers,
    ))
}

/// The test peers (OpenBao for the cold-mint figures) where the benches look for them:
/// `BROKER_PEERS_BIN` and the front of `PATH`.
fn with_peers<'a>(cmd: &'a mut Command, peers: &Path) -> &'a mut Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(peers.to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .unwrap_or(path);
    cmd.env("BROKER_PEERS_BIN", peers).env("PATH", path)
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

/// The fuzz targets in `fuzz/fuzz_targets/`, in the order `all` and `smoke` run them.
const FUZZ_TARGETS: &[&str] = &[
    "reference",
    "config",
    "sops_yaml",
    "sops_json",
    "sops_dotenv",
    "sops_ini",
    "sops_document",
    "age_decrypt",
    "audit_verify",
    "redact",
    "ws_frames",
];
/// Seconds per target for `cargo xtask fuzz smoke`.
const SMOKE_SECONDS: u64 = 5;

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache")
}

/// `cargo fuzz` with the nightly-only flags allowed and its own target dir.
fn cargo_fuzz() -> Command {
    let mut cmd = cargo();
    cmd.arg("fuzz")
        .current_dir(root().join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", cache_dir().join("broker-fuzz-target"));
    cmd
}

/// `cargo xtask fuzz TARGET|all|smoke [--time SECONDS]`.
fn fuzz(args: &[String]) -> Result<(), String> {
    let usage = || {
        format!(
            "usage: cargo xtask fuzz <{}|all|smoke> [--time SECONDS]",
            FUZZ_TARGETS.join("|")
        )
    };
    let mut which = None;
    let mut seconds = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time" => {
                let v = it.next().ok_or_else(usage)?;
                seconds = Some(v.parse::<u64>().map_err(|_| usage())?);
            }
            t if which.is_none() => which = Some(t.to_string()),
            _ => return Err(usage()),
        }
    }
    let which = which.ok_or_else(usage)?;
    let (targets, seconds): (Vec<&str>, u64) = match which.as_str() {
        "all" => (FUZZ_TARGETS.to_vec(), seconds.unwrap_or(60)),
        "smoke" => (FUZZ_TARGETS.to_vec(), seconds.unwrap_or(SMOKE_SECONDS)),
        t => match FUZZ_TARGETS.iter().find(|n| **n == t) {
            Some(n) => (vec![*n], seconds.unwrap_or(60)),
            None => return Err(usage()),
        },
    };
    if output(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["fuzz", "--version"]),
    )
    .is_err()
    {
        println!("xtask: installing cargo-fuzz");
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    // One build for every target; ASan is off (see docs/security.md).
    run(cargo_fuzz().args(["build", "--sanitizer", "none"]))?;
    let mut failed = Vec::new();
    let mut total = 0u64;
    for target in &targets {
        let (execs, finding) = fuzz_one(target, seconds)?;
        total += execs;
        if let Some(f) = finding {
            failed.push(format!("{target}: {f}"));
        }
    }
    if targets.len() > 1 {
        println!("xtask: fuzz: {total} executions in all");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzz findings:\n  {}", failed.join("\n  ")))
    }
}

/// Runs `target` for `seconds` from its working corpus; returns the executions and a finding.
fn fuzz_one(target: &str, seconds: u64) -> Result<(u64, Option<String>), String> {
    let corpus = cache_dir().join("broker-fuzz-corpus").join(target);
    let artifacts = cache_dir().join("broker-fuzz-artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let seeds = root().join("fuzz/corpus").join(target);
    let start = std::time::Instant::now();
    let out = cargo_fuzz()
        .args(["run", "--sanitizer", "none", target])
        .arg(&corpus)
        .args(seeds.is_dir().then_some(&seeds))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args([
            "-jobs=1",
            "-workers=1",
            "-print_final_stats=1",
            "-timeout=10",
            "-rss_limit_mb=2048",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let execs = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let finding = if out.status.success() {
        None
    } else {
        let artifact = stderr
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map(str::trim);
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        Some(match artifact {
            Some(a) => {
                let kind = Path::new(a)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split('-').next())
                    .unwrap_or("crash");
                format!("{kind}, input {a}")
            }
            None => format!("cargo fuzz failed with {}", out.status),
        })
    };
    let elapsed = start.elapsed().as_secs();
    println!(
        "xtask: fuzz {target}: {execs} executions in {elapsed}s{}",
        finding
            .as_deref()
            .map(|f| format!(", FINDING: {f}"))
            .unwrap_or_default()
    );
    let log = cache_dir().join("broker-fuzz-log.tsv");
    let new = !log.exists();
    let mut line = String::new();
    if new {
        line.push_str("date\ttarget\tseconds\texecutions\tfindings\n");
    }
    line.push_str(&format!(
        "{}\t{target}\t{seconds}\t{execs}\t{}\n",
        utc_now(),
        finding.as_deref().unwrap_or("none")
    ));
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| format!("cannot append to {}: {e}", log.display()))?;
    Ok((execs, finding))
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (no date crate in xtask).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `cargo xtask man [--out DIR]`: builds `broker` and has it write its man pages.
fn man(args: &[String]) -> Result<(), String> {
    let out = match args {
        [] => root().join("target/man"),
        [flag, dir] if flag == "--out" => std::env::current_dir()
            .map_err(|e| format!("cannot read the working directory: {e}"))?
            .join(dir),
        _ => return Err("usage: cargo xtask man [--out DIR]".into()),
    };
    run(cargo()
        .args([
            "run",
            "--quiet",
            "-p",
            "broker-cli",
            "--bin",
            "broker",
            "--",
            "man",
            "--out",
        ])
        .arg(&out))?;
    println!(
        "xtask: man pages in {} (view one with `man -l`)",
        out.display()
    );
    Ok(())
}
