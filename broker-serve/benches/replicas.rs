//! `broker serve` replicas sharing a Redis (issue 19): not a criterion bench, a load generator
//! whose figures are printed and recorded in docs/performance.md ("More than one replica").
//!
//! With `redis-server` on 127.0.0.1 (started here on a free port, nothing saved; skipped,
//! saying why, when it is missing), daemons in this process (each on its own 2-worker tokio
//! runtime) serve an `env:` credential (cached after the first request) with the audit log on
//! (fsync off, so the store's cost is not hidden behind the disk's) and a rate limit and
//! in-flight cap high enough never to refuse:
//!
//! 1. one daemon, `serve.store` in memory;
//! 2. one daemon, `serve.store.kind: redis` (a rate-limit script and an in-flight slot per
//!    request are Redis round trips; the block check reads the local mirror);
//! 3. three replicas on Redis, the load spread over their three sockets.
//!
//! Each: `BROKER_BENCH_REQUESTS` (20000) requests from `BROKER_BENCH_CONCURRENCY` (48)
//! keep-alive connections after a warm-up; printed: errors, requests/s, p50, p99, and the
//! machine's load average before and after. Exits non-zero on any error.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker_env as _;

#[path = "support/mod.rs"]
mod support;

use support::{Connection, env_num, fmt, percentile};

const VALUE_VAR: &str = "BROKER_BENCH_VALUE";
const VALUE: &str = "bench-value-0123456789abcdef";
const KEY: &str = "bench-store-key-0123456789abcdef0123456789abcdef";
const WARM_UP: u64 = 500;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> ExitCode {
    let port = match std::env::var("BROKER_BENCH_REDIS_PORT") {
        Ok(p) => p.parse::<u16>().unwrap(),
        Err(_) => {
            // Start Redis, then re-execute with the environment the configs refer to
            // (`set_var` would need `unsafe`).
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let Ok(child) = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            else {
                println!("broker serve replicas: skipped: redis-server is not installed");
                return ExitCode::SUCCESS;
            };
            let _redis = Redis(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            let status = Command::new(std::env::current_exe().unwrap())
                .args(std::env::args_os().skip(1))
                .env(VALUE_VAR, VALUE)
                .env("BROKER_BENCH_REDIS_PORT", port.to_string())
                .env("BROKER_STORE_URL", format!("redis://127.0.0.1:{port}"))
                .env("BROKER_STORE_KEY", KEY)
                .status()
                .unwrap();
            return ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1));
        }
    };
    let requests = env_num("BROKER_BENCH_REQUESTS", 20_000).max(1);
    let concurrency = env_num("BROKER_BENCH_CONCURRENCY", 48).max(3);
    println!(
        "\nbroker serve replicas: {requests} requests, concurrency {concurrency}, redis on port \
         {port}, {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let mut ok = true;
    let mut figures = Vec::new();
    for (name, replicas, shared) in [
        ("1 daemon, memory store", 1, false),
        ("1 daemon, redis store", 1, true),
        ("3 replicas, redis store", 3, true),
    ] {
        match scenario(replicas, shared, requests, concurrency) {
            Ok((good, rps, p50, p99)) => {
                ok &= good;
                println!(
                    "  {name:<26} {rps:>7.0} requests/s   p50 {}   p99 {}",
                    fmt(p50),
                    fmt(p99)
                );
                figures.push((name, rps, p50));
            }
            Err(e) => {
                println!("  {name}: FAILED: {e}");
                ok = false;
            }
        }
    }
    if let [(_, _, mem), (_, _, redis), ..] = figures[..] {
        println!(
            "  redis store overhead per request at p50: {}",
            fmt(redis.saturating_sub(mem))
        );
    }
    println!("  load average after: {}", load_average());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn config(uid: u32, id: &str, shared: bool) -> String {
    let store = if shared {
        format!(
            "  store: {{ kind: redis, url_ref: \"env:BROKER_STORE_URL\", key_ref: \
             \"env:BROKER_STORE_KEY\", replica_id: {id}, prefix: \"bench:\" }}\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"credentials:
  token: {{ ref: "env:{VALUE_VAR}", as: BENCH_TOKEN }}
audit: {{ path: audit.jsonl, fsync: false }}
serve:
  listen: run/broker.sock
  agents: [{{ id: bench, uid: {uid} }}]
  limits: {{ rate: 1000000, burst: 1000000, concurrency: 100000, connections_per_peer: 4096 }}
{store}"#
    )
}

/// A daemon serving `dir/.broker.yml` until dropped.
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<std::thread::JoinHandle<Result<(), String>>>,
    socket: PathBuf,
}

impl Running {
    fn start(dir: &Path, config: &str) -> Result<Running, String> {
        let path = dir.join(".broker.yml");
        std::fs::write(&path, config).unwrap();
        let broker = broker_core::Broker::load(&path).map_err(|e| e.to_string())?;
        let serve =
            broker_serve::ServeConfig::from_config(broker.config()).map_err(|e| e.to_string())?;
        let daemon = if serve.shared_store.is_some() {
            broker_serve::Daemon::new(broker, serve).map_err(|e| e.to_string())?
        } else {
            broker_serve::Daemon::in_memory(broker, serve)
        };
        let socket = daemon.socket_path().unwrap().to_path_buf();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("daemon")
                .build()
                .unwrap()
                .block_on(async move {
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
            done: Some(done),
            socket,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.join();
        }
    }
}

/// `replicas` daemons; the load spread over them. (all ok, requests/s, p50, p99)
fn scenario(
    replicas: usize,
    shared: bool,
    requests: u64,
    concurrency: u64,
) -> Result<(bool, f64, Duration, Duration), String> {
    let uid = rustix::process::getuid().as_raw();
    let dirs: Vec<tempfile::TempDir> = (0..replicas)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let daemons: Vec<Running> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| Running::start(d.path(), &config(uid, &format!("b{i}"), shared)))
        .collect::<Result<_, _>>()?;
    let sockets: Vec<PathBuf> = daemons.iter().map(|d| d.socket.clone()).collect();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let claimed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let (latencies, wall) = client.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(concurrency as usize + 1));
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let socket = sockets[t as usize % sockets.len()].clone();
            let (claimed, errors, barrier) = (claimed.clone(), errors.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = Connection::open(&socket).await.unwrap();
                for _ in 0..WARM_UP / concurrency + 1 {
                    let _ = conn
                        .post("/v1/credentials/token", "{}")
                        .await
                        .map(|(status, _)| status);
                }
                barrier.wait().await;
                let mut took = Vec::new();
                while claimed.fetch_add(1, Ordering::Relaxed) < requests {
                    let started = Instant::now();
                    match conn
                        .post("/v1/credentials/token", "{}")
                        .await
                        .map(|(status, _)| status)
                    {
                        Ok(200) => took.push(started.elapsed()),
                        Ok(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            conn = Connection::open(&socket).await.unwrap();
                        }
                    }
                }
                took
            }));
        }
        barrier.wait().await;
        let started = Instant::now();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        (all, started.elapsed())
    });
    drop(client);
    drop(daemons);
    let mut latencies = latencies;
    latencies.sort_unstable();
    let rps = latencies.len() as f64 / wall.as_secs_f64();
    Ok((
        errors.load(Ordering::Relaxed) == 0,
        rps,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
    ))
}
