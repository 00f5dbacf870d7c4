//! `cargo xtask bench run` and `cargo xtask bench setup-fnox`: whole processes timed side by
//! side with the nearest peer, fnox (issue 17).
//!
//! `bench run [--runs N] [--features LIST] [--broker PATH]...` builds a release `broker`
//! (default features unless `--features`; skipped when `--broker` names binaries to compare),
//! generates an age identity, 20 age-encrypted secrets and a 1 MiB age file in a temp dir,
//! writes the same 20 secrets as a `.broker.yml` and as an equivalent `fnox.toml` (age
//! provider, `key_file`, base64 ciphertexts), and times each command as a whole process, one
//! run of each command per round, interleaved, after warm-up rounds: `/bin/true`,
//! `broker --version`, `broker run -- true` with an empty config and with the 20 secrets,
//! `fnox exec -- true` with the same secrets and with an empty config, `broker get` of the
//! 1 MiB file and `age -d` of it. It prints medians, the 10th–90th percentile range, the load
//! average before and after, and the issue's goals as ratios.
//!
//! `bench setup-fnox` installs fnox 1.46.0 into `~/.cache/bench-peers/bin` (bench setup only,
//! never CI): apt packages for its native dependencies, the crate's source from the cargo
//! registry (fetched through a throwaway manifest when not already extracted), `fnox-core` and
//! `fnox-client` pinned to `=1.46.0` (a plain `cargo install fnox` resolves an old,
//! incompatible `fnox-core`), a fresh lockfile, and `cargo install --path . --locked` with a
//! target dir under the temp dir that is deleted afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{cargo, root, run};

/// The fnox version compared against.
const FNOX_VERSION: &str = "1.46.0";
/// Debian packages fnox's native dependencies build against.
const FNOX_APT: &[&str] = &[
    "libudev-dev",
    "libusb-1.0-0-dev",
    "libdbus-1-dev",
    "pkg-config",
];
/// Secrets in the side-by-side config.
const SECRETS: usize = 20;

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// Where bench-only peers (fnox) are installed: `~/.cache/bench-peers`.
fn bench_peers() -> PathBuf {
    home().join(".cache/bench-peers")
}

fn fnox_bin() -> Option<PathBuf> {
    let installed = bench_peers().join("bin/fnox");
    if installed.is_file() {
        return Some(installed);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("fnox"))
            .find(|f| f.is_file())
    })
}

/// `cargo xtask bench setup-fnox`.
pub fn setup_fnox() -> Result<(), String> {
    let missing: Vec<&str> = FNOX_APT
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        println!("xtask: installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let work = std::env::temp_dir().join("broker-fnox-build");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = build_fnox(&work);
    // The build tree is a few GB: never leave it behind.
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn build_fnox(work: &Path) -> Result<(), String> {
    let src = work.join(format!("fnox-{FNOX_VERSION}"));
    match registry_source() {
        Some(dir) => copy_dir(&dir, &src)?,
        None => {
            let archive = fetch_crate(work)?;
            run(Command::new("tar")
                .arg("xzf")
                .arg(&archive)
                .arg("-C")
                .arg(work))?;
        }
    }
    let manifest = src.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| e.to_string())?;
    std::fs::write(&manifest, pin_fnox_crates(&text)).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(src.join("Cargo.lock"));
    run(cargo().current_dir(&src).arg("generate-lockfile"))?;
    println!("xtask: building fnox {FNOX_VERSION} (release; takes a while)");
    run(cargo()
        .current_dir(&src)
        .args(["install", "--path", ".", "--locked", "--root"])
        .arg(bench_peers())
        .env("CARGO_TARGET_DIR", work.join("target")))?;
    println!(
        "xtask: fnox installed at {}",
        bench_peers().join("bin/fnox").display()
    );
    Ok(())
}

/// `fnox-1.46.0` already extracted in the cargo registry, if any.
fn registry_source() -> Option<PathBuf> {
    let registry = home().join(".cargo/registry/src");
    std::fs::read_dir(registry).ok()?.flatten().find_map(|d| {
        let dir = d.path().join(format!("fnox-{FNOX_VERSION}"));
        dir.join("Cargo.toml").is_file().then_some(dir)
    })
}

/// Downloads the `.crate` through cargo (a throwaway manifest depending on it) and returns
/// its path in cargo's registry cache.
fn fetch_crate(work: &Path) -> Result<PathBuf, String> {
    let fetch = work.join("fetch");
    std::fs::create_dir_all(fetch.join("src")).map_err(|e| e.to_string())?;
    std::fs::write(
        fetch.join("Cargo.toml"),
        format!(
            "[package]\nname = \"fnox-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\nfnox = \"={FNOX_VERSION}\"\n\n[workspace]\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(fetch.join("src/main.rs"), "fn main() {}\n").map_err(|e| e.to_string())?;
    run(cargo().current_dir(&fetch).arg("fetch"))?;
    let cache = home().join(".cargo/registry/cache");
    std::fs::read_dir(&cache)
        .map_err(|e| format!("cannot read {}: {e}", cache.display()))?
        .flatten()
        .map(|d| d.path().join(format!("fnox-{FNOX_VERSION}.crate")))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("cargo fetch did not download fnox-{FNOX_VERSION}.crate"))
}

/// `fnox-core` and `fnox-client` pinned to the fnox version in a normalized `Cargo.toml`.
fn pin_fnox_crates(manifest: &str) -> String {
    let mut out = String::with_capacity(manifest.len() + 32);
    let mut section = "";
    for line in manifest.lines() {
        if line.starts_with('[') {
            section = line.trim();
        }
        let pinned = matches!(
            section,
            "[dependencies.fnox-core]" | "[dependencies.fnox-client]"
        ) && line.trim_start().starts_with("version");
        if pinned {
            out.push_str(&format!("version = \"={FNOX_VERSION}\""));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    run(Command::new("cp").arg("-r").arg(from).arg(to))
}

/// `cargo xtask bench run [--runs N] [--features LIST] [--broker PATH]...`.
pub fn bench_run(args: &[String]) -> Result<(), String> {
    let usage = || {
        "usage: cargo xtask bench run [--runs N] [--features LIST] [--broker PATH]... | --inputs DIR"
            .to_string()
    };
    let mut runs = 30usize;
    let mut features: Option<String> = None;
    let mut brokers: Vec<PathBuf> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|n| n.parse().ok()).ok_or_else(usage)?,
            "--features" => features = Some(it.next().ok_or_else(usage)?.clone()),
            // Only write the inputs (for profiling one command by hand) and stop.
            "--inputs" => return inputs(Path::new(it.next().ok_or_else(usage)?)),
            "--broker" => brokers.push(
                std::path::absolute(it.next().ok_or_else(usage)?).map_err(|e| e.to_string())?,
            ),
            _ => return Err(usage()),
        }
    }
    if brokers.is_empty() {
        println!("xtask: building a release broker (the first build takes minutes)");
        let mut build = cargo();
        build.args(["build", "--release", "-q", "-p", "broker-cli"]);
        if let Some(f) = &features {
            build.args(["--no-default-features", "--features", f]);
        }
        run(&mut build)?;
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root().join("target"), PathBuf::from);
        brokers.push(target.join("release/broker"));
    }
    for tool in ["age", "age-keygen"] {
        if !crate::on_path(tool) {
            return Err(format!("`{tool}` is missing: run `cargo xtask setup`"));
        }
    }
    let dir = std::env::temp_dir().join(format!("broker-xtask-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = side_by_side(&brokers, &dir, runs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A small deterministic generator (no dependency): secret values and blob bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<(), String> {
    std::fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The inputs: `dir/secrets` (20 age secrets, `.broker.yml` and `fnox.toml`), `dir/empty`
/// (empty configs for both) and `dir/secrets/blob.age` (1 MiB).
fn inputs(dir: &Path) -> Result<(), String> {
    let secrets = dir.join("secrets");
    let empty = dir.join("empty");
    for d in [&secrets, &empty] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let key = secrets.join("key.txt");
    crate::output(Command::new("age-keygen").arg("-o").arg(&key))?;
    let key_text = std::fs::read_to_string(&key).map_err(|e| e.to_string())?;
    let recipient = key_text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .ok_or("age-keygen wrote no public key")?
        .to_string();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut broker = String::from("backends:\n  age: { identity: key.txt }\ncredentials:\n");
    let mut fnox = format!(
        "[providers.age]\ntype = \"age\"\nrecipients = [\"{recipient}\"]\nkey_file = \"key.txt\"\n\n[secrets]\n"
    );
    for i in 0..SECRETS {
        let value: String = (0..32)
            .map(|_| {
                char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(rng.next() % 36) as usize])
            })
            .collect();
        let plain = secrets.join(format!("s{i}.txt"));
        write(&plain, &value)?;
        let file = secrets.join(format!("s{i}.age"));
        crate::output(
            Command::new("age")
                .args(["-r", &recipient, "-o"])
                .arg(&file)
                .arg(&plain),
        )?;
        let _ = std::fs::remove_file(&plain);
        let ciphertext = std::fs::read(&file).map_err(|e| e.to_string())?;
        broker.push_str(&format!(
            "  S{i}: {{ ref: \"age:s{i}.age\", as: SECRET_{i} }}\n"
        ));
        fnox.push_str(&format!(
            "SECRET_{i} = {{ provider = \"age\", value = \"{}\" }}\n",
            base64(&ciphertext)
        ));
    }
    broker.push_str("  blob: { ref: \"age:blob.age\", as: BLOB }\n");
    write(&secrets.join(".broker.yml"), broker)?;
    write(&secrets.join("fnox.toml"), fnox)?;
    write(&empty.join(".broker.yml"), "credentials: {}\n")?;
    write(&empty.join("fnox.toml"), "[secrets]\n")?;
    let blob: Vec<u8> = (0..1u32 << 17)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    write(&secrets.join("blob"), blob)?;
    crate::output(
        Command::new("age")
            .args(["-r", &recipient, "-o"])
            .arg(secrets.join("blob.age"))
            .arg(secrets.join("blob")),
    )?;
    Ok(())
}

/// One timed command.
struct Case {
    label: String,
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    times: Vec<f64>,
}

impl Case {
    fn new(
        label: impl Into<String>,
        program: impl Into<PathBuf>,
        args: &[&str],
        cwd: &Path,
    ) -> Case {
        Case {
            label: label.into(),
            program: program.into(),
            args: args.iter().map(|s| (*s).to_string()).collect(),
            cwd: cwd.to_path_buf(),
            times: Vec::new(),
        }
    }

    /// Runs once (output discarded, environment reduced to the same few variables for every
    /// tool so no user config leaks in) and returns the wall time in milliseconds.
    fn once(&self, home: &Path) -> Result<f64, String> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.label))?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            return Err(format!(
                "`{}` failed ({}): {}",
                self.label,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(ms)
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut t = self.times.clone();
        t.sort_by(f64::total_cmp);
        if t.is_empty() {
            return f64::NAN;
        }
        let i = ((t.len() - 1) as f64 * q).round() as usize;
        t[i.min(t.len() - 1)]
    }

    fn median(&self) -> f64 {
        self.quantile(0.5)
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn side_by_side(brokers: &[PathBuf], dir: &Path, runs: usize) -> Result<(), String> {
    inputs(dir)?;
    let secrets = dir.join("secrets");
    let empty = dir.join("empty");
    let fnox = fnox_bin();
    let several = brokers.len() > 1;
    let mut cases = vec![Case::new("/bin/true", "/bin/true", &[], dir)];
    for (i, broker) in brokers.iter().enumerate() {
        let tag = if several {
            format!(" [{}]", i + 1)
        } else {
            String::new()
        };
        cases.push(Case::new(
            format!("broker --version{tag}"),
            broker,
            &["--version"],
            dir,
        ));
        cases.push(Case::new(
            format!("broker run -- true, empty config{tag}"),
            broker,
            &["run", "--", "true"],
            &empty,
        ));
        cases.push(Case::new(
            format!("broker run -- true, {SECRETS} age secrets{tag}"),
            broker,
            &["run", "--only", &only_list(), "--", "true"],
            &secrets,
        ));
        cases.push(Case::new(
            format!("broker get, 1 MiB age file{tag}"),
            broker,
            &["get", "blob", "--reveal"],
            &secrets,
        ));
    }
    if let Some(fnox) = &fnox {
        cases.push(Case::new(
            "fnox exec -- true, empty config",
            fnox,
            &["exec", "--", "true"],
            &empty,
        ));
        cases.push(Case::new(
            format!("fnox exec -- true, {SECRETS} age secrets"),
            fnox,
            &["exec", "--", "true"],
            &secrets,
        ));
    }
    cases.push(Case::new(
        "age -d, 1 MiB age file",
        "age",
        &["-d", "-i", "key.txt", "blob.age"],
        &secrets,
    ));
    let load_before = loadavg();
    let warmup = 3;
    for round in 0..warmup + runs {
        for case in &mut cases {
            let ms = case.once(dir)?;
            if round >= warmup {
                case.times.push(ms);
            }
        }
    }
    let load_after = loadavg();
    println!(
        "\nxtask: whole processes, {runs} interleaved rounds after {warmup} warm-up rounds; load average before {load_before}, after {load_after}"
    );
    for (i, b) in brokers.iter().enumerate() {
        println!("  broker [{}] = {}", i + 1, b.display());
    }
    match &fnox {
        Some(f) => println!("  fnox = {}", f.display()),
        None => {
            println!("  fnox not installed (`cargo xtask bench setup-fnox`): its rows are left out")
        }
    }
    println!("{:<46} {:>9} {:>19}", "command", "median", "p10 – p90");
    for c in &cases {
        println!(
            "{:<46} {:>7.2}ms {:>8.2} – {:>6.2}ms",
            c.label,
            c.median(),
            c.quantile(0.1),
            c.quantile(0.9)
        );
    }
    let find = |label: &str| cases.iter().find(|c| c.label == label).map(Case::median);
    let floor = find("/bin/true").unwrap_or(f64::NAN);
    println!("goals (issue 17):");
    for (i, _) in brokers.iter().enumerate() {
        let tag = if several {
            format!(" [{}]", i + 1)
        } else {
            String::new()
        };
        let run20 = find(&format!("broker run -- true, {SECRETS} age secrets{tag}"));
        let run0 = find(&format!("broker run -- true, empty config{tag}"));
        let get = find(&format!("broker get, 1 MiB age file{tag}"));
        if let (Some(b), Some(f)) = (
            run20,
            find(&format!("fnox exec -- true, {SECRETS} age secrets")),
        ) {
            println!(
                "  run, {SECRETS} age secrets / fnox exec{tag}: {:.2} (goal ≤ 0.5)",
                b / f
            );
        }
        if let Some(r) = run0 {
            println!(
                "  run, empty config − (/bin/true + one spawn ≈ 2 × /bin/true){tag}: {:+.2} ms (goal ≤ 1.5 ms)",
                r - 2.0 * floor
            );
        }
        if let (Some(g), Some(a)) = (get, find("age -d, 1 MiB age file")) {
            println!("  get 1 MiB / age -d{tag}: {:.2} (goal ≤ 1.0)", g / a);
        }
    }
    Ok(())
}

/// `S0,S1,...`: the 20 secrets without the blob.
fn only_list() -> String {
    (0..SECRETS)
        .map(|i| format!("S{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn pins_only_the_fnox_crates() {
        let text = "[dependencies.fnox-client]\nversion = \"1\"\n\n[dependencies.fnox-core]\nversion = \"1\"\n\n[dependencies.hex]\nversion = \"1\"\n";
        let pinned = pin_fnox_crates(text);
        assert_eq!(pinned.matches("=1.46.0").count(), 2);
        assert!(pinned.contains("[dependencies.hex]\nversion = \"1\""));
    }
}
