//! `broker run --isolate` (issue 13, "Isolation"): the command runs in a network namespace of
//! its own whose only way out is the run's proxy. As root and, through `setpriv`, as an
//! unprivileged uid: a client using the proxy variables reaches a local HTTPS upstream (its
//! own test CA, on 127.0.0.1, recording what it receives) with the value put in by the
//! proxy; a client ignoring them cannot connect and the upstream records nothing; the
//! command sees only `lo`; exit codes and signals pass through (on a terminal too, Ctrl-C
//! included); where user namespaces are unavailable (a nested namespace whose
//! `user.max_user_namespaces` is 0), the run is refused before anything is resolved.
//!
//! Only loopback is ever contacted.
#![cfg(feature = "proxy")]
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use broker_core::testkit::{assert_no_canary, record_skip, require_peer};

mod proxy_upstream;
mod pty_driver;

use proxy_upstream::{json_lines, read, start_upstream};

const CANARY: &str = "sk-live-CANARY-isolate-7c41d09e2b58";
const NOBODY: u32 = 65534;

/// What the isolated command does: looks at its network, calls the upstream through the
/// proxy with the placeholder, then directly (ignoring the proxy variables).
const CHILD: &str = r#"
set -u
env > "$OUT/env.txt"
tr '\0' '\n' < /proc/self/environ > "$OUT/proc-environ.txt"
cat /proc/net/dev > "$OUT/netdev.txt"
if command -v ip > /dev/null; then ip -o link show > "$OUT/ip.txt" 2>&1; fi
curl -sS --max-time 20 -o "$OUT/via-proxy.txt" -w '%{http_code}' \
  -H "Authorization: Bearer $API_KEY" "https://localhost:$UPSTREAM_PORT/via-proxy" \
  > "$OUT/via-proxy.status" 2> "$OUT/via-proxy.err"
curl -sS --max-time 20 --noproxy '*' --cacert "$UPSTREAM_CA" \
  -H "Authorization: Bearer $API_KEY" "https://localhost:$UPSTREAM_PORT/direct" \
  > /dev/null 2> "$OUT/direct.err"
echo $? > "$OUT/direct.rc"
curl -sS --max-time 20 --noproxy '*' --cacert "$UPSTREAM_CA" \
  "https://127.0.0.1:$UPSTREAM_PORT/direct-ip" > /dev/null 2>> "$OUT/direct.err"
echo $? > "$OUT/direct-ip.rc"
echo "child done; it holds $API_KEY"
"#;

fn mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The uids to run the broker as: root and an unprivileged uid (through `setpriv`) when the
/// test runs as root, else the test's own uid. `None` when namespaces cannot be created here
/// at all (the skip is recorded).
fn users() -> Option<Vec<Option<u32>>> {
    let available = Command::new("unshare")
        .args(["--user", "--net", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        record_skip("user and network namespaces cannot be created here (`unshare --user --net`)");
        return None;
    }
    let root = rustix::process::geteuid().is_root();
    if root && Command::new("setpriv").arg("--version").output().is_ok() {
        Some(vec![None, Some(NOBODY)])
    } else {
        Some(vec![None])
    }
}

/// A work dir the broker's uid owns, with its own runtime dir, and the broker binary where
/// that uid can run it.
struct Fixture {
    dir: tempfile::TempDir,
    uid: Option<u32>,
    broker: PathBuf,
}

impl Fixture {
    fn new(uid: Option<u32>, config: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join(".broker.yml"), config).unwrap();
        for sub in ["out", "runtime"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        mode(&d.join("runtime"), 0o700);
        let broker = match uid {
            None => PathBuf::from(env!("CARGO_BIN_EXE_broker")),
            Some(uid) => {
                // The build dir may be private to the test's user.
                let copy = d.join("broker");
                std::fs::copy(env!("CARGO_BIN_EXE_broker"), &copy).unwrap();
                mode(&copy, 0o755);
                for p in [d.to_path_buf(), d.join("out"), d.join("runtime")] {
                    std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
                }
                copy
            }
        };
        Fixture { dir, uid, broker }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the runs left in the runtime dir: anything but the per-user parent
    /// `runtime/broker-UID` (UID the broker's), and anything in that parent (which, once made,
    /// is the broker uid's and 0700).
    fn scratch_left(&self) -> Vec<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let uid = self
            .uid
            .unwrap_or_else(|| rustix::process::getuid().as_raw());
        let parent = self.path("runtime").join(format!("broker-{uid}"));
        if let Ok(meta) = std::fs::symlink_metadata(&parent) {
            assert_eq!((meta.uid(), meta.mode() & 0o7777), (uid, 0o700));
        }
        let in_parent = std::fs::read_dir(&parent).into_iter().flatten();
        std::fs::read_dir(self.path("runtime"))
            .unwrap()
            .chain(in_parent)
            .map(|e| e.unwrap().path())
            .filter(|p| *p != parent)
            .collect()
    }

    /// `wrapper... broker ARGS` as the fixture's uid, with a clean environment.
    fn command(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(uid) = self.uid {
            let uid = uid.to_string();
            for a in [
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
            ] {
                argv.push(a.into());
            }
        }
        argv.extend(wrapper.iter().map(Into::into));
        argv.push(self.broker.clone().into());
        argv.extend(args.iter().map(Into::into));
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..])
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", self.dir.path())
            .env("XDG_RUNTIME_DIR", self.path("runtime"))
            .env("OUT", self.path("out"))
            .env("ISOLATE_TEST_SOURCE", CANARY)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(&[], args).output().unwrap()
    }

    fn who(&self) -> String {
        match self.uid {
            None => format!("uid {}", rustix::process::geteuid().as_raw()),
            Some(uid) => format!("uid {uid} (setpriv)"),
        }
    }
}

/// The interface names in a `/proc/net/dev` listing.
fn interfaces(netdev: &str) -> Vec<String> {
    netdev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

const PROXY_CONFIG: &str = r#"egress:
  enabled: true
  proxy: { allow_private: true, allow_hosts: ["127.0.0.1"], upstream_ca: upstream-ca.pem }
credentials:
  api:
    ref: "env:ISOLATE_TEST_SOURCE"
    as: API_KEY
    proxy: { hosts: ["localhost"], placeholder: { prefix: "sk-live-", length: 32 } }
audit: { path: audit.jsonl }
"#;

/// One env credential (the canary) and an audit log: for the tests refused before a run.
const ONE_ENV_CREDENTIAL: &str = "credentials:\n  api: { ref: \"env:ISOLATE_TEST_SOURCE\", as: API_KEY }\naudit: { path: audit.jsonl }\n";

#[test]
fn an_isolated_child_reaches_the_upstream_only_through_the_proxy() {
    let Some(users) = users() else {
        return;
    };
    let Some(python) = require_peer("python") else {
        return;
    };
    for uid in users {
        let f = Fixture::new(uid, PROXY_CONFIG);
        let who = f.who();
        let (upstream, port) = start_upstream(&python, f.dir.path());
        mode(&f.path("upstream-ca.pem"), 0o644);
        std::fs::write(f.path("child.sh"), CHILD).unwrap();
        let output = f
            .command(&[], &["run", "--isolate", "--", "sh", "child.sh"])
            .env("UPSTREAM_PORT", port.to_string())
            .env("UPSTREAM_CA", f.path("upstream-ca.pem"))
            .output()
            .unwrap();
        drop(upstream);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(0), "{who}: {stdout}\n{stderr}");
        let out = |name: &str| read(f.path("out").join(name));

        // Through the proxy: the upstream got the value, the child the upstream's answer.
        assert_eq!(
            out("via-proxy.status"),
            "200",
            "{who}: {}",
            out("via-proxy.err")
        );
        assert_eq!(
            out("via-proxy.txt"),
            r#"{"method": "GET", "path": "/via-proxy", "body": ""}"#
        );
        let seen = json_lines(&read(f.path("upstream.jsonl")));
        assert_eq!(seen.len(), 1, "{who}: {seen:?}");
        assert_eq!(seen[0]["path"], "/via-proxy");
        assert_eq!(
            seen[0]["headers"]["authorization"],
            format!("Bearer {CANARY}").as_str()
        );
        // Around it: nothing to connect to (curl's 7, "couldn't connect"), nothing received.
        assert_eq!(out("direct.rc").trim(), "7", "{who}: {}", out("direct.err"));
        assert_eq!(
            out("direct-ip.rc").trim(),
            "7",
            "{who}: {}",
            out("direct.err")
        );

        // The namespace has only loopback.
        assert_eq!(interfaces(&out("netdev.txt")), ["lo"], "{who}");
        if let Ok(ip) = std::fs::read_to_string(f.path("out").join("ip.txt")) {
            let links: Vec<&str> = ip.lines().collect();
            assert_eq!(links.len(), 1, "{who}: {ip}");
            assert!(
                links[0].starts_with("1: lo: <LOOPBACK,UP,LOWER_UP>"),
                "{who}: {ip}"
            );
        }

        // The child's view: the placeholder and the proxy, never the value.
        let env = out("env.txt");
        let placeholder = env
            .lines()
            .find_map(|l| l.strip_prefix("API_KEY="))
            .unwrap()
            .to_string();
        assert!(placeholder.starts_with("sk-live-"), "{who}: {placeholder}");
        let proxy_url = env
            .lines()
            .find_map(|l| l.strip_prefix("HTTPS_PROXY="))
            .unwrap();
        assert!(
            proxy_url.starts_with("http://broker:") && proxy_url.contains("@127.0.0.1:"),
            "{who}: {proxy_url}"
        );
        assert!(
            stdout.contains(&format!("it holds {placeholder}")),
            "{stdout}"
        );
        for (what, text) in [
            ("child env", env.clone()),
            ("/proc/self/environ", out("proc-environ.txt")),
            ("broker stdout", stdout.clone()),
            ("broker stderr", stderr.clone()),
            ("audit log", read(f.path("audit.jsonl"))),
        ] {
            assert_no_canary(what, &text, &[CANARY]);
        }
        let audit = read(f.path("audit.jsonl"));
        assert!(
            audit.contains("\"action\":\"proxy\"") && audit.contains("/via-proxy"),
            "{who}: the proxied request is audited: {audit}"
        );
        // The run's scratch dirs (the proxy's socket among them) are gone.
        let left = f.scratch_left();
        assert!(left.is_empty(), "{who}: {left:?}");
    }
}

const PLAIN_CONFIG: &str = r#"credentials:
  api: { ref: "env:ISOLATE_TEST_SOURCE", as: API_KEY }
  key: { ref: "env:ISOLATE_TEST_SOURCE", as: KEY_FILE, kind: file }
"#;

#[test]
fn exit_codes_and_signals_pass_through_the_isolation() {
    let Some(users) = users() else {
        return;
    };
    for uid in users {
        let f = Fixture::new(uid, PLAIN_CONFIG);
        let who = f.who();

        // No `proxy:` credential: still isolated, the proxy is the only way out.
        let out = f.run(&[
            "run",
            "--isolate",
            "--",
            "sh",
            "-c",
            r#"cat /proc/net/dev > "$OUT/netdev.txt"; test -n "$HTTPS_PROXY" && exit 3"#,
        ]);
        assert_eq!(out.status.code(), Some(3), "{who}: {out:?}");
        assert_eq!(
            interfaces(&read(f.path("out").join("netdev.txt"))),
            ["lo"],
            "{who}"
        );

        let out = f.run(&["run", "--isolate", "--", "sh", "-c", "kill -TERM $$"]);
        assert_eq!(out.status.code(), Some(143), "{who}: {out:?}");

        let out = f.run(&["run", "--isolate", "--", "/nonexistent/cmd"]);
        assert_eq!(out.status.code(), Some(127), "{who}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "error: cannot run `/nonexistent/cmd`: No such file or directory (os error 2)\n"
        );

        let out = f.run(&[
            "run",
            "--isolate",
            "--",
            "sh",
            "-c",
            r#"echo "$API_KEY"; cat "$KEY_FILE"; echo; echo oops >&2; exit 42"#,
        ]);
        assert_eq!(out.status.code(), Some(42), "{who}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{who}: {stdout}");
        assert!(
            lines.iter().all(|l| l.starts_with("[REDACTED:")),
            "{who}: {stdout}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

        // SIGTERM to the broker: the command is terminated, the scratch dir wiped.
        let mut broker = f
            .command(
                &[],
                &[
                    "run",
                    "--isolate",
                    "--",
                    "sh",
                    "-c",
                    r#"echo "$KEY_FILE" > "$OUT/key-path"; echo $$ > "$OUT/pid.tmp"; mv "$OUT/pid.tmp" "$OUT/pid"; exec sleep 120"#,
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid_file = f.path("out").join("pid");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pid_file.exists() {
            assert!(
                Instant::now() < deadline,
                "{who}: the command did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let child_pid: i32 = read(pid_file).trim().parse().unwrap();
        let key_path = PathBuf::from(read(f.path("out").join("key-path")).trim());
        assert!(key_path.exists(), "{who}");
        let broker_pid = rustix::process::Pid::from_raw(broker.id() as i32).unwrap();
        rustix::process::kill_process(broker_pid, rustix::process::Signal::TERM).unwrap();
        let status = broker.wait().unwrap();
        assert_eq!(status.code(), Some(143), "{who}");
        assert!(
            !Path::new(&format!("/proc/{child_pid}")).exists(),
            "{who}: the command outlived the run"
        );
        assert!(
            !key_path.exists(),
            "{who}: the scratch file outlived the run"
        );
        let left = f.scratch_left();
        assert!(left.is_empty(), "{who}: {left:?}");
    }
}

#[test]
fn isolate_is_refused_where_user_namespaces_are_unavailable() {
    let Some(users) = users() else {
        return;
    };
    for uid in users {
        let f = Fixture::new(uid, ONE_ENV_CREDENTIAL);
        let who = f.who();
        // A user namespace of the test's own in which no further one may be created: the
        // limit is per namespace and applies to everything nested in it.
        let out = f
            .command(
                &[
                    "unshare",
                    "--user",
                    "--map-root-user",
                    "sh",
                    "-c",
                    r#"echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" "$@""#,
                ],
                &["run", "--isolate", "--", "sh", "-c", r#"touch "$OUT/ran""#],
            )
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(71), "{who}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "error: --isolate: cannot create a network namespace: the limit on user namespaces is reached (sysctl user.max_user_namespaces); the command was not run\n",
            "{who}"
        );
        assert!(out.stdout.is_empty(), "{who}");
        assert!(
            !f.path("out").join("ran").exists(),
            "{who}: the command ran"
        );
        // Refused before anything was resolved: no audit record at all.
        assert!(!f.path("audit.jsonl").exists(), "{who}");
    }
}

#[test]
fn the_helper_is_not_part_of_the_documented_interface() {
    let help = Command::new(env!("CARGO_BIN_EXE_broker"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(!String::from_utf8_lossy(&help.stdout).contains("__isolate"));
    let bash = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(bash.status.success());
    assert!(!String::from_utf8_lossy(&bash.stdout).contains("__isolate"));
    let run_help = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&run_help.stdout).contains("--isolate"));
}

#[test]
fn on_a_terminal_the_isolated_command_is_redacted_and_ctrl_c_and_sigterm_reach_it() {
    if users().is_none() {
        return;
    }
    if Command::new("python3").arg("--version").output().is_err() {
        record_skip("python3 is needed to drive a terminal");
        return;
    }
    let f = Fixture::new(None, PLAIN_CONFIG);
    // With a controlling terminal of its own (the helper leads the session), and sharing the
    // user's terminal (--no-redact: the terminal signals the whole foreground group).
    for extra in [&[][..], &["--no-redact"][..]] {
        let mut args = vec!["run", "--isolate"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "--",
            "sh",
            "-c",
            r#"printf 'tty:%s\n' "$API_KEY" > /dev/tty; grep -c : /proc/net/dev; echo ready; exec sleep 30"#,
        ]);
        let out = f
            .command(&["python3", "-c", pty_driver::DRIVER], &args)
            .env("TTY_SEND_AFTER", "ready")
            .env("TTY_SEND", "\x03")
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(130), "{extra:?}: {shown}");
        // `/proc/net/dev` lists one interface (`lo`; the header lines have no colon).
        assert!(
            shown.contains("1\r\nready") || shown.contains("1\nready"),
            "{extra:?}: {shown:?}"
        );
        if extra.is_empty() {
            assert!(shown.contains("tty:[REDACTED:api]"), "{shown:?}");
            assert_no_canary("the terminal", &shown, &[CANARY]);
        }

        // SIGTERM to the broker (its pid is the helper's parent): forwarded to the group, or
        // to the helper, which passes it on to the command. (Were it not passed on, the
        // broker would wait out the long grace period and the driver kill it first.)
        let mut args = vec!["run", "--isolate", "--grace", "120"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "--",
            "sh",
            "-c",
            r#"kill -TERM "$(cut -d' ' -f4 /proc/$PPID/stat)"; exec sleep 30"#,
        ]);
        let out = f
            .command(&["python3", "-c", pty_driver::DRIVER], &args)
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(143), "{extra:?}: {shown}");
    }
}

#[cfg(feature = "serve")]
#[test]
fn isolate_with_from_is_refused() {
    let f = Fixture::new(None, PLAIN_CONFIG);
    let out = f.run(&[
        "run",
        "--isolate",
        "--from",
        "/nonexistent/broker.sock",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --isolate cannot be used with --from yet: the daemon's proxy is not reachable from the command's network namespace\n"
    );
}

/// Whether process `pid` is running (a zombie is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next());
        !matches!(state, Some("Z" | "X" | "x"))
    })
}

/// Waits (at most 60 s) for `path` to exist.
fn wait_for(path: &Path, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{who}: {} never came",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Execs `broker ARGS` with a UDP socket bound on 127.0.0.1 on descriptor 5, inheritable (as
/// a careless parent would leave it).
const LEAK_FD: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
os.dup2(s.fileno(), 5, inheritable=True)
os.execv(sys.argv[1], sys.argv[1:])
"#;

#[test]
fn an_inherited_socket_does_not_reach_the_isolated_command() {
    let Some(users) = users() else {
        return;
    };
    // A python every uid can run (a user's own install may be private to it).
    let python = "/usr/bin/python3";
    if !Path::new(python).exists() {
        record_skip("/usr/bin/python3 is needed to pass a descriptor on");
        return;
    }
    for uid in users {
        let f = Fixture::new(uid, PLAIN_CONFIG);
        let who = f.who();
        let check = r#"if [ -e /proc/self/fd/5 ]; then readlink /proc/self/fd/5; exit 9; fi"#;
        // Without --isolate the descriptor reaches the command (the wrapper works)...
        let out = f
            .command(&[python, "-c", LEAK_FD], &["run", "--", "sh", "-c", check])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(9), "{who}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("socket:["),
            "{who}: {out:?}"
        );
        // ...with it, the command has none: a socket keeps the namespace it was made in.
        let out = f
            .command(
                &[python, "-c", LEAK_FD],
                &["run", "--isolate", "--", "sh", "-c", check],
            )
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{who}: {out:?}");
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{who}: {out:?}"
        );
    }
}

/// The isolated command: moves to a process group of its own, starts a job there that
/// ignores SIGTERM, and on SIGTERM writes `$OUT/term` and exits 0, leaving the job behind.
const OWN_GROUP: &str = r#"
import os, signal, subprocess, sys
out = os.environ["OUT"]
os.setpgid(0, 0)
def on_term(*_):
    with open(out + "/term", "w") as f:
        f.write("got-term")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
job = subprocess.Popen(
    ["sleep", "120"], preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)
)
with open(out + "/pids.tmp", "w") as f:
    f.write(f"{os.getpid()} {job.pid}")
os.rename(out + "/pids.tmp", out + "/pids")
while True:
    signal.pause()
"#;

#[test]
fn sigterm_reaches_an_isolated_command_in_a_group_of_its_own_and_its_jobs_end() {
    let Some(users) = users() else {
        return;
    };
    if Command::new("python3").arg("--version").output().is_err() {
        record_skip("python3 is needed to change process groups");
        return;
    }
    for uid in users {
        let f = Fixture::new(uid, PLAIN_CONFIG);
        let who = f.who();
        let broker = f
            .command(
                &[],
                &[
                    "run",
                    "--isolate",
                    "--grace",
                    "120",
                    "--",
                    "python3",
                    "-c",
                    OWN_GROUP,
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pids = f.path("out").join("pids");
        wait_for(&pids, &who);
        let pids: Vec<i32> = read(pids)
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        let broker_pid = rustix::process::Pid::from_raw(broker.id() as i32).unwrap();
        rustix::process::kill_process(broker_pid, rustix::process::Signal::TERM).unwrap();
        // (Were SIGTERM not passed on, the broker would wait out the grace period: a hang.)
        let out = broker.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(143), "{who}: {out:?}");
        assert_eq!(read(f.path("out").join("term")), "got-term", "{who}");
        // The job that ignored SIGTERM was killed with the helper's exit.
        let deadline = Instant::now() + Duration::from_secs(30);
        while pids.iter().any(|&p| alive(p)) {
            assert!(
                Instant::now() < deadline,
                "{who}: {pids:?} outlived the run"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_scratch_root_too_long_for_the_socket_is_refused_before_anything_is_resolved() {
    let Some(users) = users() else {
        return;
    };
    for uid in users {
        let f = Fixture::new(uid, ONE_ENV_CREDENTIAL);
        let who = f.who();
        let long = f.path("runtime").join("r".repeat(90));
        std::fs::create_dir(&long).unwrap();
        mode(&long, 0o700);
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&long, Some(uid), Some(uid)).unwrap();
        }
        let out = f
            .command(
                &[],
                &["run", "--isolate", "--", "sh", "-c", r#"touch "$OUT/ran""#],
            )
            .env("XDG_RUNTIME_DIR", &long)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{who}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "error: --isolate: the proxy's socket under {} would have a path longer than a unix socket allows (107 bytes); set XDG_RUNTIME_DIR or TMPDIR to a shorter directory; the command was not run\n",
                long.canonicalize()
                    .unwrap()
                    .join(format!(
                        "broker-{}",
                        uid.unwrap_or_else(|| rustix::process::getuid().as_raw())
                    ))
                    .display()
            ),
            "{who}"
        );
        assert!(out.stdout.is_empty(), "{who}");
        assert!(
            !f.path("out").join("ran").exists(),
            "{who}: the command ran"
        );
        assert!(!f.path("audit.jsonl").exists(), "{who}");
    }
}
