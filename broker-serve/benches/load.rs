//! `broker serve` under load (issue 12, "Performance"): not a criterion bench, a load
//! generator whose figures are printed and recorded in docs/performance.md.
//!
//! 1. **Cached credential.** A daemon in this process (its own multi-thread tokio runtime)
//!    serves an `env:` credential behind a Cedar policy, with the fsynced audit log held as
//!    `broker serve` holds it. 64 tasks (each on its own keep-alive HTTP/1.1 connection over
//!    the unix socket) send `POST /v1/credentials/token` until 100,000 requests are answered,
//!    after 1,000 unmeasured warm-up requests. Printed: errors, wall time, requests/s, p50,
//!    p90, p99, max, the log's records and flushes (fsyncs); then `audit::verify` runs on the
//!    log. Exits non-zero on any error or a log that does not verify.
//! 2. **Cold mint.** With OpenBao (skipped, saying why, when `bao` is missing): 50 child tokens
//!    minted through the daemon (a distinct `ttl` per request, so each is a new lease-cache key
//!    and a real mint) vs 50 bare `POST /v1/auth/token/create` calls with reqwest.
//!
//! Environment: `BROKER_BENCH_REQUESTS` (100000), `BROKER_BENCH_CONCURRENCY` (64),
//! `BROKER_BENCH_FSYNC` (`true`; `false` to separate the fsync's cost), `BROKER_BENCH_POLICY`
//! (`true`; `false` uses the config's allowlist instead of the Cedar policy),
//! `BROKER_BENCH_DAEMON_THREADS` (2 worker threads; `0` runs the daemon on a current-thread
//! runtime, as the `broker` CLI did before it moved to a multi-thread one). The process
//! re-executes itself once with the bench's environment (the `env:` value, the OpenBao root
//! token): `set_var` would need `unsafe`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker_env as _;
use broker_vault as _;
use hyper::body::Bytes;

#[path = "support/mod.rs"]
mod support;

use support::{Connection, env_num, fmt, percentile};

/// The `env:` variable the cached credential reads (set by the re-execution).
const VALUE_VAR: &str = "BROKER_BENCH_VALUE";
/// A non-secret stand-in value.
const VALUE: &str = "bench-value-0123456789abcdef";
/// The OpenBao dev server's root token (the daemon reads it from `VAULT_TOKEN`).
const ROOT: &str = "bench-root-token";
const WARM_UP: u64 = 1_000;
const COLD_MINTS: u32 = 50;

/// `true` unless the variable says `false` or `0`.
fn env_flag(name: &str) -> bool {
    std::env::var(name).map_or(true, |v| v != "false" && v != "0")
}

fn main() -> ExitCode {
    if std::env::var_os(VALUE_VAR).is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(VALUE_VAR, VALUE)
            .env("VAULT_TOKEN", ROOT)
            .env_remove("VAULT_ADDR")
            .status()
            .unwrap();
        return ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1));
    }
    let requests = env_num("BROKER_BENCH_REQUESTS", 100_000).max(1);
    let concurrency = env_num("BROKER_BENCH_CONCURRENCY", 64).max(1);
    let fsync = env_flag("BROKER_BENCH_FSYNC");
    let policy = env_flag("BROKER_BENCH_POLICY");
    let threads = env_num("BROKER_BENCH_DAEMON_THREADS", 2);
    let mut ok = true;

    println!(
        "\nbroker serve load: {requests} requests, concurrency {concurrency}, {}, audit fsync {}, \
         daemon runtime {}, {} CPUs",
        if policy {
            "Cedar policy"
        } else {
            "allowlist (no policy)"
        },
        if fsync { "on" } else { "off" },
        if threads == 0 {
            "current-thread".to_string()
        } else {
            format!("multi-thread ({threads} workers)")
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let disk = fsync_latency();
    println!(
        "  disk          fsync of a 200-byte append: p50 {}, p99 {} (200 in the bench's temp dir)",
        fmt(percentile(&disk, 50.0)),
        fmt(percentile(&disk, 99.0)),
    );
    match load(requests, concurrency, fsync, policy, threads) {
        Ok(good) => ok &= good,
        Err(e) => {
            println!("load: FAILED: {e}");
            ok = false;
        }
    }

    println!("\nbroker serve cold mint: {COLD_MINTS} OpenBao child tokens");
    if let Err(e) = cold_mint(threads) {
        println!("cold mint: FAILED: {e}");
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What one fsync costs on this disk now (the floor under a flush of the held audit log):
/// 200 appends of 200 bytes, each followed by `sync_all`; sorted.
fn fsync_latency() -> Vec<Duration> {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("probe")).unwrap();
    let mut took: Vec<Duration> = (0..200)
        .map(|_| {
            let started = Instant::now();
            file.write_all(&[b'x'; 200]).unwrap();
            file.sync_all().unwrap();
            started.elapsed()
        })
        .collect();
    took.sort_unstable();
    took
}

/// The daemon's runtime: `threads` workers, or a current-thread runtime on its own thread
/// when `threads` is 0.
fn daemon_runtime(threads: u64) -> tokio::runtime::Runtime {
    let mut builder = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::try_from(threads).unwrap());
        b
    };
    builder.enable_all().thread_name("daemon").build().unwrap()
}

/// A daemon serving `config` (written to `dir/.broker.yml`) until dropped.
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::thread::JoinHandle<Result<(), String>>,
    socket: PathBuf,
    audit: Option<Arc<broker_core::audit::AuditLog>>,
}

impl Running {
    fn start(dir: &Path, config: &str, threads: u64) -> Result<Running, String> {
        let path = dir.join(".broker.yml");
        std::fs::write(&path, config).unwrap();
        let broker = broker_core::Broker::load(&path).map_err(|e| e.to_string())?;
        let serve =
            broker_serve::ServeConfig::from_config(broker.config()).map_err(|e| e.to_string())?;
        let audit = broker.shared_audit_log();
        let daemon = broker_serve::Daemon::in_memory(broker, serve);
        let socket = daemon.socket_path().unwrap().to_path_buf();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = std::thread::spawn(move || {
            daemon_runtime(threads).block_on(async move {
                daemon
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if done.is_finished() {
                return Err(done.join().unwrap().err().unwrap_or_default());
            }
            if Instant::now() > deadline {
                return Err("the daemon did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Running {
            stop: Some(stop),
            done,
            socket,
            audit,
        })
    }

    /// Stops the daemon; the audit log's flush count (the log is released afterwards).
    fn stop(mut self) -> Result<u64, String> {
        let _ = self.stop.take().unwrap().send(());
        self.done.join().unwrap()?;
        Ok(self.audit.take().map_or(0, |log| log.flushes()))
    }
}

fn config_load(uid: u32, fsync: bool, policy: bool) -> String {
    let policy = if policy { "policy: policy.cedar" } else { "" };
    format!(
        r#"credentials:
  token: {{ ref: "env:{VALUE_VAR}", as: BENCH_TOKEN }}
{policy}
audit: {{ path: audit.jsonl, fsync: {fsync} }}
serve:
  listen: run/broker.sock
  agents: [{{ id: bench, uid: {uid} }}]
  limits: {{ rate: 0, concurrency: 0, connections_per_peer: 4096 }}
"#
    )
}

const POLICY_LOAD: &str = r#"@id("bench-reads-token")
permit (principal == Agent::"bench", action == Action::"resolve", resource == Credential::"token");
"#;

/// The cached-credential load; `Ok(false)` when a request failed or the log did not verify.
fn load(
    requests: u64,
    concurrency: u64,
    fsync: bool,
    policy: bool,
    threads: u64,
) -> Result<bool, String> {
    let dir = tempfile::tempdir().unwrap();
    let uid = rustix::process::getuid().as_raw();
    std::fs::write(dir.path().join("policy.cedar"), POLICY_LOAD).unwrap();
    let daemon = Running::start(dir.path(), &config_load(uid, fsync, policy), threads)?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("load")
        .build()
        .unwrap();
    let expected = Bytes::from(format!("\"value\":\"{VALUE}\""));
    let outcome = client.block_on(generate(
        daemon.socket.clone(),
        requests,
        concurrency,
        expected,
    ));
    drop(client);
    let flushes = daemon.stop()?;
    let Outcome {
        mut latencies,
        errors,
        first_error,
        wall,
    } = outcome?;

    latencies.sort_unstable();
    let answered = latencies.len() as u64;
    let rps = answered as f64 / wall.as_secs_f64();
    println!("  requests      {answered} measured (+{WARM_UP} warm-up)");
    println!("  errors        {errors}");
    if let Some(e) = first_error {
        println!("  first error   {e}");
    }
    println!("  wall time     {:.2} s", wall.as_secs_f64());
    println!("  requests/s    {rps:.0}");
    for (name, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0)] {
        println!("  {name}           {}", fmt(percentile(&latencies, p)));
    }
    println!(
        "  max           {}",
        fmt(latencies.last().copied().unwrap_or_default())
    );
    println!(
        "  goal          >= 20000 requests/s and p99 <= 2 ms: {}",
        if rps >= 20_000.0 && percentile(&latencies, 99.0) <= Duration::from_millis(2) {
            "met"
        } else {
            "NOT met"
        }
    );

    let log = dir.path().join("audit.jsonl");
    let verified = broker_core::audit::verify(&log);
    let verified_ok = match &verified {
        Ok(v) => {
            println!(
                "  audit log     {} records in {flushes} flushes ({:.1} records per fsync{})",
                v.records,
                v.records as f64 / flushes.max(1) as f64,
                if fsync { "" } else { "; fsync off" },
            );
            println!(
                "  audit verify  {}",
                match &v.problem {
                    None => "ok".to_string(),
                    Some(p) => format!("FAILED at seq {} (line {}): {}", p.seq, p.line, p.reason),
                }
            );
            v.is_ok()
        }
        Err(e) => {
            println!("  audit verify  FAILED: {e}");
            false
        }
    };
    Ok(errors == 0 && verified_ok)
}

struct Outcome {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    wall: Duration,
}

/// `concurrency` tasks, one connection each: the warm-up, then (all together) the measured
/// requests, claimed one at a time from a shared counter.
async fn generate(
    socket: PathBuf,
    requests: u64,
    concurrency: u64,
    expected: Bytes,
) -> Result<Outcome, String> {
    let claimed = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(
        usize::try_from(concurrency).unwrap() + 1,
    ));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (socket, claimed, barrier, expected) = (
            socket.clone(),
            claimed.clone(),
            barrier.clone(),
            expected.clone(),
        );
        let warm = WARM_UP / concurrency + u64::from(t < WARM_UP % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(&socket).await;
            for _ in 0..warm {
                if let Ok(c) = &mut conn {
                    let _ = c.post("/v1/credentials/token", "{}").await;
                }
            }
            barrier.wait().await;
            let mut conn = conn?;
            let mut latencies = Vec::new();
            let (mut errors, mut first_error) = (0u64, None);
            while claimed.fetch_add(1, Ordering::Relaxed) < requests {
                let started = Instant::now();
                let answer = conn.post("/v1/credentials/token", "{}").await;
                let took = started.elapsed();
                let problem = match answer {
                    Ok((200, body)) if contains(&body, &expected) => None,
                    Ok((200, _)) => Some("200 without the expected value".to_string()),
                    Ok((status, body)) => Some(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )),
                    Err(e) => {
                        // A broken connection: count it, open another.
                        conn = Connection::open(&socket).await?;
                        Some(e)
                    }
                };
                match problem {
                    None => latencies.push(took),
                    Some(p) => {
                        errors += 1;
                        first_error.get_or_insert(p);
                    }
                }
            }
            Ok::<_, String>((latencies, errors, first_error))
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut out = Outcome {
        latencies: Vec::with_capacity(usize::try_from(requests).unwrap_or(0)),
        errors: 0,
        first_error: None,
        wall: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, errors, first_error) = task.await.map_err(|e| e.to_string())??;
        out.latencies.extend(latencies);
        out.errors += errors;
        if out.first_error.is_none() {
            out.first_error = first_error;
        }
    }
    out.wall = started.elapsed();
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn mean(values: &[Duration]) -> Duration {
    values.iter().sum::<Duration>() / u32::try_from(values.len().max(1)).unwrap()
}

/// Cold mints through the daemon vs bare token-create calls to the same OpenBao.
fn cold_mint(threads: u64) -> Result<(), String> {
    let Some(bao) = broker_core::testkit::OpenBao::start(ROOT, "bao-bench-serve") else {
        println!(
            "  skipped: OpenBao (`bao`) is not installed (run through `cargo xtask bench`, \
             which puts the test-peer venv on BROKER_PEERS_BIN)"
        );
        return Ok(());
    };
    let url = bao.url();
    let uid = rustix::process::getuid().as_raw();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.cedar"),
        r#"@id("bench-mints-child")
permit (principal == Agent::"bench", action == Action::"mint", resource == Credential::"child");
"#,
    )
    .unwrap();
    let config = format!(
        r#"egress: {{ enabled: true }}
backends:
  vault: {{ address: "{url}" }}
credentials:
  child: {{ mint: "vault:auth/token/create?policies=default", ttl: 1h }}
policy: policy.cedar
audit: {{ path: audit.jsonl }}
serve:
  listen: run/broker.sock
  agents: [{{ id: bench, uid: {uid} }}]
  limits: {{ rate: 0, concurrency: 0 }}
"#
    );
    let daemon = Running::start(dir.path(), &config, threads)?;
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A distinct ttl per request is a distinct lease-cache key: every request mints.
    let bodies: Vec<String> = (0..COLD_MINTS + 5)
        .map(|i| format!(r#"{{"ttl": {}}}"#, 3000 - i))
        .collect();
    let through = client.block_on(async {
        let mut conn = Connection::open(&daemon.socket).await?;
        let mut took = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let started = Instant::now();
            let (status, answer) = conn.post("/v1/credentials/child", body).await?;
            let elapsed = started.elapsed();
            if status != 200 {
                return Err(format!(
                    "mint through the daemon: HTTP {status}: {}",
                    String::from_utf8_lossy(&answer[..answer.len().min(300)])
                ));
            }
            if i >= 5 {
                took.push(elapsed); // the first five warm up (token lookup, connections)
            }
        }
        Ok::<_, String>(took)
    });
    let flushes = daemon.stop()?;
    let through = through?;

    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let create = format!("{url}/v1/auth/token/create");
    let bare = client.block_on(async {
        let mut took = Vec::new();
        for i in 0..COLD_MINTS + 5 {
            let ttl = format!("{}s", 3000 - i);
            let body = serde_json::json!({
                "policies": ["default"], "ttl": ttl, "explicit_max_ttl": ttl,
            });
            let started = Instant::now();
            let response = http
                .post(&create)
                .header("X-Vault-Token", ROOT)
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| format!("bare token create: {e}"))?;
            let status = response.status();
            let _ = response.bytes().await.map_err(|e| e.to_string())?;
            let elapsed = started.elapsed();
            if !status.is_success() {
                return Err(format!("bare token create: HTTP {status}"));
            }
            if i >= 5 {
                took.push(elapsed);
            }
        }
        Ok::<_, String>(took)
    })?;
    drop(bao);

    let (mut through, mut bare) = (through, bare);
    through.sort_unstable();
    bare.sort_unstable();
    let (tm, bm) = (mean(&through), mean(&bare));
    let (tp, bp) = (percentile(&through, 50.0), percentile(&bare, 50.0));
    println!("  through the daemon   mean {}  p50 {}", fmt(tm), fmt(tp));
    println!("  bare token create    mean {}  p50 {}", fmt(bm), fmt(bp));
    println!(
        "  ratio                mean {:.2}  p50 {:.2}  (daemon audit log: {flushes} flushes)",
        tm.as_secs_f64() / bm.as_secs_f64(),
        tp.as_secs_f64() / bp.as_secs_f64()
    );
    let verified =
        broker_core::audit::verify(&dir.path().join("audit.jsonl")).map_err(|e| e.to_string())?;
    if !verified.is_ok() {
        return Err("the cold-mint daemon's audit log does not verify".into());
    }
    Ok(())
}
