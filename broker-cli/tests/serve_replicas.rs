//! Many `broker serve` replicas (this crate's binary, as separate processes) sharing one real
//! Redis (`redis-server` on 127.0.0.1, started here on a free port, killed on drop): one mint
//! for a burst spread over the fleet, fleet-wide blocks, a shared rate limit, fail-closed
//! while Redis is away, blocks surviving a Redis restarted empty, and no credential value in
//! Redis or in the daemons' logs.
#![cfg(all(feature = "serve", feature = "vault", feature = "env"))]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use broker_core::testkit::{OpenBao, assert_no_canary, free_port, require_peer, wait_for_port};

const STORE_KEY: &str = "canary-store-key-3f9a2c71d04e8b56a1c9e7f20b4d6a83";
const PLAIN: &str = "canary-plain-value-replicas-5d21e8";
const ROOT: &str = "canary-root-replicas-a7c3e1";

/// `redis-server` on 127.0.0.1:`port`, nothing saved; killed on drop.
struct Redis {
    child: Child,
    port: u16,
    bin: PathBuf,
}

impl Redis {
    fn start() -> Option<Redis> {
        let bin = require_peer("redis-server")?;
        Some(Redis::on(bin, free_port()))
    }

    fn on(bin: PathBuf, port: u16) -> Redis {
        let child = Command::new(&bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_for_port(port, Duration::from_secs(30)),
            "redis-server did not start"
        );
        Redis { child, port, bin }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL; nothing is saved.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new, empty server on the same port.
    fn restart_empty(&mut self) {
        self.kill();
        *self = Redis::on(self.bin.clone(), self.port);
    }

    /// `redis-cli ARGS`, stdout as bytes.
    fn cli(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new(self.bin.with_file_name("redis-cli"))
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "redis-cli {args:?}");
        out.stdout
    }

    /// Every key with every value in it (strings, hashes, sets, lists, sorted sets, streams).
    fn dump(&self) -> Vec<u8> {
        let keys = String::from_utf8(self.cli(&["--scan"])).unwrap();
        let mut all = Vec::new();
        for key in keys.lines().filter(|k| !k.is_empty()) {
            let kind = String::from_utf8(self.cli(&["TYPE", key])).unwrap();
            let value = match kind.trim() {
                "string" => self.cli(&["GET", key]),
                "hash" => self.cli(&["HGETALL", key]),
                "set" => self.cli(&["SMEMBERS", key]),
                "list" => self.cli(&["LRANGE", key, "0", "-1"]),
                "zset" => self.cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
                "stream" => self.cli(&["XRANGE", key, "-", "+"]),
                // Expired between the scan and now (a rate-limit bucket, say).
                "none" => continue,
                other => panic!("unexpected type {other} of {key}"),
            };
            all.extend_from_slice(key.as_bytes());
            all.push(b'\n');
            all.extend_from_slice(&value);
            all.push(b'\n');
        }
        all
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One replica: `broker serve` in its own dir (its own socket), the shared config.
struct Replica {
    child: Option<Child>,
    dir: PathBuf,
    id: String,
}

impl Replica {
    fn start(work: &Path, id: &str, config: &str, redis: &Redis, env: &[(&str, &str)]) -> Self {
        let dir = work.join(id);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::write(dir.join(".broker.yml"), config.replace("REPLICA_ID", id)).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
        cmd.arg("serve")
            .current_dir(&dir)
            .env_remove("BROKER_CONFIG")
            .env_remove("BROKER_FROM")
            .env_remove("BROKER_TOKEN_FILE")
            .env("BROKER_STORE_URL", redis.url())
            .env("BROKER_STORE_KEY", STORE_KEY)
            .env("PLAIN_SECRET", PLAIN)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let replica = Replica {
            child: Some(child),
            dir,
            id: id.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while UnixStream::connect(replica.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "replica {id} did not start: {}",
                replica.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run/broker.sock")
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("audit.{}.jsonl", self.id)))
            .unwrap_or_default()
    }

    /// `POST path` over the socket: (status, body).
    fn post(&self, path: &str) -> (u16, String) {
        self.post_body(path, "")
    }

    /// `POST path` with a JSON `body`: (status, body).
    fn post_body(&self, path: &str, body: &str) -> (u16, String) {
        let mut s = UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not HTTP: {raw}"));
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, body.to_string())
    }

    fn credential(&self, name: &str) -> (u16, String) {
        self.post(&format!("/v1/credentials/{name}"))
    }

    /// SIGTERM and wait: it must exit cleanly (no panic).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            rustix::process::kill_process(
                rustix::process::Pid::from_child(&child),
                rustix::process::Signal::TERM,
            )
            .unwrap();
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "{} exited {status}: {}",
                self.id,
                self.logs()
            );
        }
        assert!(!self.logs().contains("panicked"), "{}", self.logs());
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config(extra_credentials: &str, limits: &str) -> String {
    let uid = rustix::process::getuid().as_raw();
    format!(
        r#"egress: {{ enabled: true, allow: [local, self-hosted] }}
credentials:
  plain: {{ ref: "env:PLAIN_SECRET", as: PLAIN }}
{extra_credentials}
audit: {{ path: audit.jsonl }}
serve:
  listen: run/broker.sock
  agents: [{{ id: agent-a, uid: {uid} }}]
  admins: [{{ uid: {uid} }}]
  limits: {limits}
  store:
    kind: redis
    url_ref: "env:BROKER_STORE_URL"
    key_ref: "env:BROKER_STORE_KEY"
    replica_id: REPLICA_ID
"#
    )
}

/// [`config`] with a `vault` backend at `address` (OpenBao, or a relay in front of it).
fn vault_config(extra_credentials: &str, limits: &str, address: &str) -> String {
    config(extra_credentials, limits).replace(
        "audit: {",
        &format!("backends:\n  vault: {{ address: \"{address}\" }}\naudit: {{"),
    )
}

/// One replica per id, all with `cfg` and `env`, sharing `redis`.
fn fleet(
    work: &Path,
    ids: &[&str],
    cfg: &str,
    redis: &Redis,
    env: &[(&str, &str)],
) -> Vec<Replica> {
    ids.iter()
        .map(|id| Replica::start(work, id, cfg, redis, env))
        .collect()
}

/// Polls `f` until it is true (a delivery assertion, not a time bound: the deadline only
/// keeps a broken build from hanging); returns how long it took.
fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

const BLOCKED: &str =
    r#"{"error":{"kind":"agent_blocked","message":"agent `agent-a` is blocked"}}"#;
const UNAVAILABLE: &str = r#"{"error":{"kind":"store_unavailable","message":"the shared store (serve.store) is unavailable; refusing what depends on it"}}"#;

#[test]
fn a_block_on_one_replica_holds_on_every_replica_and_survives_a_redis_restarted_empty() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cfg = config("", "{ rate: 1000, burst: 1000 }");
    let mut fleet = fleet(work.path(), &["r1", "r2", "r3"], &cfg, &redis, &[]);
    for r in &fleet {
        assert_eq!(r.credential("plain").0, 200, "{}", r.logs());
    }

    // Block on r1: r2 and r3 refuse once the notification arrives.
    let (status, body) = fleet[0].post("/v1/agents/agent-a/block");
    assert_eq!(status, 200, "{body}");
    let blocked_at = Instant::now();
    assert_eq!(fleet[0].credential("plain"), (403, BLOCKED.to_string()));
    for r in &fleet[1..] {
        until(&format!("{} refuses the blocked agent", r.id), || {
            r.credential("plain") == (403, BLOCKED.to_string())
        });
    }
    // A figure for docs/performance.md (printed, never asserted).
    eprintln!(
        "figure: block propagated to every replica within {:?}",
        blocked_at.elapsed()
    );
    // A replica started after the block refuses at once.
    let late = Replica::start(work.path(), "r4", &cfg, &redis, &[]);
    assert_eq!(late.credential("plain"), (403, BLOCKED.to_string()));
    fleet.push(late);

    // Redis killed: the blocked agent stays refused; nothing panics.
    redis.kill();
    for r in &fleet {
        let (status, body) = r.credential("plain");
        assert_eq!((status, body.as_str()), (403, BLOCKED), "{}", r.id);
    }
    // An unblock needs the store: refused while it is away.
    let (status, body) = fleet[1].post("/v1/agents/agent-a/unblock");
    assert_eq!((status, body.as_str()), (503, UNAVAILABLE));
    // A block pressed while it is away holds here at once and reaches the store later.
    let (status, body) = fleet[2].post("/v1/agents/agent-z/block");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"persisted\":false"), "{body}");
    // Redis back, empty: the replicas re-assert the block; it is never served.
    redis.restart_empty();
    until("the block is re-asserted in the new Redis", || {
        redis.cli(&["SISMEMBER", "broker:blocked", "agent-a"]) == b"1\n"
    });
    until("the block pressed during the outage reaches Redis", || {
        redis.cli(&["SISMEMBER", "broker:blocked", "agent-z"]) == b"1\n"
    });
    for r in &fleet {
        assert_eq!(
            r.credential("plain"),
            (403, BLOCKED.to_string()),
            "{}",
            r.id
        );
    }

    // Unblock on r2 restores everyone.
    until("the store is back for the unblock", || {
        fleet[1].post("/v1/agents/agent-a/unblock").0 == 200
    });
    for r in &fleet {
        until(&format!("{} serves the unblocked agent", r.id), || {
            r.credential("plain").0 == 200
        });
    }
    for r in &mut fleet {
        r.stop();
        let audit = r.audit();
        assert!(audit.contains("agent_blocked"), "{}: {audit}", r.id);
        assert_no_canary(&format!("{} logs", r.id), &r.logs(), &[PLAIN, STORE_KEY]);
        assert_no_canary(&format!("{} audit", r.id), &audit, &[PLAIN, STORE_KEY]);
    }
    // Each replica keeps its own chain; `broker audit verify` checks them all at once.
    let logs: Vec<PathBuf> = fleet
        .iter()
        .map(|r| r.dir.join(format!("audit.{}.jsonl", r.id)))
        .collect();
    let verify = |logs: &[PathBuf]| {
        Command::new(env!("CARGO_BIN_EXE_broker"))
            .args(["audit", "verify"])
            .args(logs)
            .current_dir(work.path())
            .output()
            .unwrap()
    };
    let out = verify(&logs);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.lines().count(), logs.len(), "{stdout}");
    for (line, log) in stdout.lines().zip(&logs) {
        assert!(
            line.starts_with(&format!("ok: {}: ", log.display())),
            "{line}"
        );
    }
    // A record dropped from one replica's log: the others still verify, that one is named.
    let cut = work.path().join("audit.r2.cut.jsonl");
    let text = std::fs::read_to_string(&logs[1]).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&cut, kept.join("\n") + "\n").unwrap();
    let out = verify(&[logs[0].clone(), cut.clone(), logs[2].clone()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(69), "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stderr.starts_with(&format!(
            "error: audit log {} is broken at seq ",
            cut.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_block_survives_redis_and_every_replica_restarting_together() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cfg = config("", "{ rate: 1000, burst: 1000 }");
    let mut r1 = Replica::start(work.path(), "r1", &cfg, &redis, &[]);
    let (status, body) = r1.post("/v1/agents/agent-a/block");
    assert_eq!(status, 200, "{body}");
    // A block pressed during an outage is in the durable record too.
    redis.kill();
    let (status, body) = r1.post("/v1/agents/agent-z/block");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"persisted\":false"), "{body}");
    r1.stop();

    // Redis back empty; a replica WITHOUT a record (a fresh dir) reconnects first and writes
    // a new epoch; then the replica with the record starts again.
    redis.restart_empty();
    let fresh = Replica::start(work.path(), "fresh", &cfg, &redis, &[]);
    until("the fresh replica writes a new epoch", || {
        !redis.cli(&["GET", "broker:epoch"]).trim_ascii().is_empty()
    });
    let r1 = Replica::start(work.path(), "r1", &cfg, &redis, &[]);
    for agent in ["agent-a", "agent-z"] {
        until(&format!("{agent}'s block is re-asserted"), || {
            redis.cli(&["SISMEMBER", "broker:blocked", agent]) == b"1\n"
        });
    }
    for r in [&fresh, &r1] {
        until(&format!("{} refuses the blocked agent", r.id), || {
            r.credential("plain") == (403, BLOCKED.to_string())
        });
    }
    // An unblock is then respected: the record is at the store's epoch again.
    until("the unblock", || {
        fresh.post("/v1/agents/agent-a/unblock").0 == 200
    });
    for r in [&fresh, &r1] {
        until(&format!("{} serves the unblocked agent", r.id), || {
            r.credential("plain").0 == 200
        });
    }
}

#[test]
fn a_failover_that_lost_a_block_is_detected_by_the_generation_and_the_block_comes_back() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cfg = config("", "{ rate: 1000, burst: 1000 }");
    let r1 = Replica::start(work.path(), "g1", &cfg, &redis, &[]);
    let r2 = Replica::start(work.path(), "g2", &cfg, &redis, &[]);
    let (status, body) = r1.post("/v1/agents/agent-a/block");
    assert_eq!(status, 200, "{body}");
    until("g2 refuses the blocked agent", || {
        r2.credential("plain") == (403, BLOCKED.to_string())
    });
    // A failover to a server that missed the block: the epoch was replicated, the block and
    // the generation it raised were not. Then the replicas' subscriptions drop (as in a
    // failover) and they re-read the store.
    let epoch = redis.cli(&["GET", "broker:epoch"]);
    assert!(!epoch.trim_ascii().is_empty());
    redis.cli(&["SREM", "broker:blocked", "agent-a"]);
    redis.cli(&["SET", "broker:gen", "0"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    until("the block is re-asserted", || {
        redis.cli(&["SISMEMBER", "broker:blocked", "agent-a"]) == b"1\n"
    });
    assert_eq!(redis.cli(&["GET", "broker:epoch"]), epoch);
    for r in [&r1, &r2] {
        until(&format!("{} refuses the blocked agent", r.id), || {
            r.credential("plain") == (403, BLOCKED.to_string())
        });
    }
}

#[test]
fn redis_killed_mid_run_refuses_with_a_clear_error_and_service_resumes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cfg = config("", "{ rate: 1000, burst: 1000 }")
        + "alert: { command: \"cat >> alerts.jsonl; echo >> alerts.jsonl\" }\n";
    let mut fleet = fleet(work.path(), &["k1", "k2", "k3"], &cfg, &redis, &[]);
    for r in &fleet {
        assert_eq!(r.credential("plain").0, 200);
    }
    redis.kill();
    for r in &fleet {
        until(&format!("{} refuses while Redis is away", r.id), || {
            r.credential("plain") == (503, UNAVAILABLE.to_string())
        });
    }
    redis.restart_empty();
    for r in &fleet {
        until(&format!("{} serves again", r.id), || {
            r.credential("plain").0 == 200
        });
    }
    for r in &mut fleet {
        // The outage and the return are audited (an alert, then a notice).
        until(&format!("{} records the store's return", r.id), || {
            r.audit()
                .lines()
                .any(|l| l.contains("store_available") && l.contains("\"notice\""))
        });
        r.stop();
        let audit = r.audit();
        assert!(
            audit.lines().any(|l| l.contains("\"severity\":\"alert\"")
                && l.contains("\"outcome\":\"store_unavailable\"")),
            "{}: {audit}",
            r.id
        );
        let alerts = std::fs::read_to_string(r.dir.join("alerts.jsonl")).unwrap_or_default();
        assert!(alerts.contains("store_unavailable"), "{}: {alerts}", r.id);
        assert_no_canary(&format!("{} logs", r.id), &r.logs(), &[PLAIN, STORE_KEY]);
    }
}

#[test]
fn the_rate_limit_is_spent_across_replicas() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // One request an hour after a burst of 6: the burst is all there is in this test.
    let cfg = config("", "{ rate: \"1/h\", burst: 6 }");
    let mut fleet = fleet(work.path(), &["l1", "l2", "l3"], &cfg, &redis, &[]);
    let mut admitted = 0;
    let mut limited = 0;
    for i in 0..12 {
        match fleet[i % 3].credential("plain") {
            (200, _) => admitted += 1,
            (429, body) => {
                assert!(body.contains("\"rate_limited\""), "{body}");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // Per replica it would have been 12 admitted (6 each on 3 replicas, 4 asked of each).
    assert_eq!((admitted, limited), (6, 6));
    for r in &mut fleet {
        r.stop();
    }
}

/// A TCP relay on 127.0.0.1 in front of OpenBao that counts the token-creation requests
/// passing through it (the request line `POST /v1/auth/token/create`, found across read
/// boundaries): the mints the backend saw. Returns the relay's URL and the counter.
fn counting_relay(upstream: u16) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            let counter = counter.clone();
            std::thread::spawn(move || {
                const LINE: &[u8] = b"POST /v1/auth/token/create";
                let mut tail: Vec<u8> = Vec::new();
                let mut buf = [0u8; 16384];
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    tail.extend_from_slice(&buf[..n]);
                    let found = tail.windows(LINE.len()).filter(|w| *w == LINE).count();
                    counter.fetch_add(found, Ordering::SeqCst);
                    // Keep what could begin a request line split across reads (too short
                    // to hold a whole one, so nothing is counted twice).
                    let keep = tail.len().min(LINE.len() - 1);
                    tail.drain(..tail.len() - keep);
                }
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), count)
}

#[test]
fn a_burst_over_three_replicas_mints_once_and_redis_holds_no_value() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let Some(bao) = OpenBao::start(ROOT, "bao-replicas") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (relay, minted) = counting_relay(bao.peer.port);
    let mints = || minted.load(Ordering::SeqCst);
    let cfg = vault_config(
        "  tok: { mint: \"vault:auth/token/create\", ttl: 12s, as: BAO_TOKEN }",
        "{ rate: 1000, burst: 1000, concurrency: 200 }",
        &relay,
    );
    let env = [("VAULT_TOKEN", ROOT), ("HOME", "/nonexistent")];
    let mut fleet = fleet(work.path(), &["m1", "m2", "m3"], &cfg, &redis, &env);
    let before = mints();

    let burst = |fleet: &[Replica]| -> Vec<String> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..100)
                .map(|i| {
                    let r = &fleet[i % 3];
                    s.spawn(move || r.credential("tok"))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    let (status, body) = h.join().unwrap();
                    assert_eq!(status, 200, "{body}");
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    v["value"].as_str().unwrap().to_string()
                })
                .collect()
        })
    };
    let first = burst(&fleet);
    assert_eq!(mints() - before, 1, "one mint for the whole fleet");
    assert!(first.iter().all(|v| *v == first[0]), "one token for all");

    // Redis holds no value in plaintext (nor the store key, nor OpenBao's root token).
    let dump = redis.dump();
    assert!(!dump.is_empty());
    let text = String::from_utf8_lossy(&dump);
    assert_no_canary("redis", &text, &[&first[0], STORE_KEY, ROOT, PLAIN]);
    assert!(
        !dump
            .windows(first[0].len())
            .any(|w| w == first[0].as_bytes()),
        "the minted token is in Redis"
    );

    // Past the refresh point (and the expiry): exactly one re-mint for the fleet.
    std::thread::sleep(Duration::from_millis(12_500));
    let second = burst(&fleet);
    assert_eq!(mints() - before, 2, "one re-mint for the whole fleet");
    assert!(second.iter().all(|v| *v == second[0]) && second[0] != first[0]);

    for r in &mut fleet {
        r.stop();
        assert_no_canary(
            &format!("{} logs", r.id),
            &r.logs(),
            &[&first[0], &second[0], STORE_KEY, ROOT],
        );
    }
}

const PASSWORD: &str = "canary-redis-password-91e4c2";

#[test]
fn a_lease_revoked_on_one_replica_is_never_served_again_even_after_redis_restarts_empty() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let Some(bao) = OpenBao::start(ROOT, "bao-revoke-replicas") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cfg = vault_config(
        "  tok: { mint: \"vault:auth/token/create\", ttl: 600s, as: BAO_TOKEN }",
        "{ rate: 1000, burst: 1000 }",
        &format!("http://127.0.0.1:{}", bao.peer.port),
    );
    let env = [("VAULT_TOKEN", ROOT), ("HOME", "/nonexistent")];
    let v1 = Replica::start(work.path(), "v1", &cfg, &redis, &env);
    let v2 = Replica::start(work.path(), "v2", &cfg, &redis, &env);
    let value = |r: &Replica| -> (String, String) {
        let (status, body) = r.credential("tok");
        assert_eq!(status, 200, "{}: {body}", r.id);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            v["value"].as_str().unwrap().to_string(),
            v["lease_id"].as_str().unwrap().to_string(),
        )
    };
    // Both replicas hold the same token in their caches.
    let (token, lease) = value(&v1);
    assert_eq!(value(&v2).0, token);
    let (status, body) = v1.post(&format!("/v1/leases/{lease}/revoke"));
    assert_eq!(status, 200, "{body}");
    until("v2 hears of the revocation", || {
        v2.logs()
            .contains("a lease revoked in the fleet leaves this cache")
    });
    // Redis loses every lease record: the revoked token is still never served.
    redis.restart_empty();
    let mut after = None;
    until("v2 serves again", || {
        let (status, body) = v2.credential("tok");
        if status == 200 {
            after = Some(body);
        }
        status == 200
    });
    let body = after.unwrap();
    assert!(!body.contains(&token), "v2 served a revoked token again");
    assert_ne!(value(&v1).0, token);
}

#[test]
fn a_replica_reaches_redis_over_tls_with_a_password() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let Some(bin) = require_peer("redis-server") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "broker test Redis CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let leaf = leaf_params
        .signed_by(&key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    std::fs::write(w.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(w.join("redis.pem"), leaf.pem()).unwrap();
    std::fs::write(w.join("redis-key.pem"), key.serialize_pem()).unwrap();
    let port = free_port();
    let path = |f: &str| w.join(f).display().to_string();
    let child = Command::new(&bin)
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-auth-clients",
            "no",
        ])
        .args(["--tls-cert-file", &path("redis.pem")])
        .args(["--tls-key-file", &path("redis-key.pem")])
        .args(["--tls-ca-cert-file", &path("ca.pem")])
        .args(["--requirepass", PASSWORD])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let redis = Redis { child, port, bin };
    assert!(wait_for_port(port, Duration::from_secs(30)));
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{port}");
    let cfg =
        config("", "{ rate: 1000, burst: 1000 }") + &format!("    ca_file: {}\n", path("ca.pem"));
    let mut replica = Replica::start(w, "t1", &cfg, &redis, &[("BROKER_STORE_URL", &url)]);
    assert_eq!(replica.credential("plain").0, 200, "{}", replica.logs());
    assert_eq!(replica.post("/v1/agents/agent-a/block").0, 200);
    assert_eq!(replica.credential("plain"), (403, BLOCKED.to_string()));
    let member = Command::new(redis.bin.with_file_name("redis-cli"))
        .args(["--tls", "--cacert", &path("ca.pem"), "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "--no-auth-warning", "-a", PASSWORD])
        .args(["--raw", "SISMEMBER", "broker:blocked", "agent-a"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&member.stdout),
        "1\n",
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    replica.stop();
    assert_no_canary("t1 logs", &replica.logs(), &[PASSWORD, STORE_KEY, PLAIN]);
    assert_no_canary("t1 audit", &replica.audit(), &[PASSWORD, STORE_KEY, PLAIN]);
}

/// A relay in front of OpenBao that holds every token-creation request until `open` is set,
/// counting the ones held in `arrived`: requests stay in flight for as long as the test wants.
fn gated_relay(upstream: u16) -> (String, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let arrived = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicBool::new(false));
    let (arrivals, gate) = (arrived.clone(), open.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            let (arrivals, gate) = (arrivals.clone(), gate.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let line: &[u8] = b"POST /v1/auth/token/create";
                    if buf[..n].windows(line.len()).any(|w| w == line) {
                        arrivals.fetch_add(1, Ordering::SeqCst);
                        while !gate.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), arrived, open)
}

#[test]
fn the_in_flight_cap_counts_requests_on_every_replica() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let Some(bao) = OpenBao::start(ROOT, "bao-replicas-inflight") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (relay, arrived, open) = gated_relay(bao.peer.port);
    let cfg = vault_config(
        "  tok: { mint: \"vault:auth/token/create\", ttl: 15m, as: BAO_TOKEN }",
        "{ rate: 1000, burst: 1000, concurrency: 2 }",
        &relay,
    );
    let env = [("VAULT_TOKEN", ROOT), ("HOME", "/nonexistent")];
    let mut fleet = fleet(work.path(), &["c1", "c2", "c3"], &cfg, &redis, &env);
    // Two requests (distinct lifetimes: two mints) held in flight on c1 and c2...
    std::thread::scope(|s| {
        let held: Vec<_> = [(0, "10m"), (1, "11m")]
            .into_iter()
            .map(|(i, ttl)| {
                let r = &fleet[i];
                s.spawn(move || {
                    r.post_body("/v1/credentials/tok", &format!("{{\"ttl\":\"{ttl}\"}}"))
                })
            })
            .collect();
        until("two mints held at the relay", || {
            arrived.load(Ordering::SeqCst) == 2
        });
        // ...so the agent's third, on c3, is over the cap the fleet shares.
        assert_eq!(
            fleet[2].post_body("/v1/credentials/tok", "{\"ttl\":\"12m\"}"),
            (
                429,
                r#"{"error":{"kind":"too_many_in_flight","message":"agent `agent-a` has 2 requests in flight (`serve.limits`)"}}"#
                    .to_string()
            )
        );
        open.store(true, Ordering::SeqCst);
        for h in held {
            assert_eq!(h.join().unwrap().0, 200);
        }
    });
    // The slots are given back: c3 is served now.
    until("c3 admits the agent again", || {
        fleet[2]
            .post_body("/v1/credentials/tok", "{\"ttl\":\"12m\"}")
            .0
            == 200
    });
    for r in &mut fleet {
        r.stop();
    }
}
