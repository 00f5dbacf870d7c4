//! Leak tests for `broker run`: canary values through every channel a value could escape by.
//!
//! Only local `env:` credentials (env and `kind: file`), so the suite needs no peer and runs
//! in CI. Each test gets its own config dir and its own `XDG_RUNTIME_DIR`, so scratch dirs
//! land where the test can see them (and nowhere another test looks).
//!
//! Channels: the child's stdout and stderr (plain, every encoding, one-byte writes,
//! interleaved, multi-line, values that contain each other, binary), a pty, the broker's own
//! stderr and logs, `/proc/<broker>/environ` and `/proc/<broker>/cmdline` during the run, error
//! messages, a panic (debug builds have a test-only hook that panics with a value in the
//! message), and the scratch dir after every exit path, with exact exit codes.
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

mod scratch_dirs;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const API: &str = "canary-api-7f3a9c2e11";
/// Contains [`API`]: the longer match must win.
const API_EXT: &str = "canary-api-7f3a9c2e11-extended-b4";
const KEY: &str = "canary-key-5d81e0aa44/+=?&\"é";
const ML: &str = "canary-ml-line-one\ncanary-ml-line-two\ncanary-ml-3";
const ALL: [&str; 4] = [API, API_EXT, KEY, ML];

const CONFIG: &str = r#"credentials:
  api:     { ref: "env:LEAK_API", as: API_TOKEN }
  api_ext: { ref: "env:LEAK_API_EXT", as: API_TOKEN_EXT }
  key:     { ref: "env:LEAK_KEY", as: KEY_FILE, kind: file }
  ml:      { ref: "env:LEAK_ML", as: ML_VALUE }
"#;

struct Sandbox {
    dir: tempfile::TempDir,
    runtime: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".broker.yml"), CONFIG).unwrap();
        // 0700, or the broker skips it as `XDG_RUNTIME_DIR` (a temp dir is made 0755) and
        // its scratch dirs land in `/dev/shm`, where `scratch_dirs` does not look.
        let runtime = tempfile::tempdir().unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700))
                .unwrap();
        }
        Sandbox { dir, runtime }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn broker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("LEAK_API", API)
            .env("LEAK_API_EXT", API_EXT)
            .env("LEAK_KEY", KEY)
            .env("LEAK_ML", ML)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env_remove("BROKER_CONFIG")
            .env_remove("BROKER_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `broker run -- sh -c SCRIPT` to completion.
    fn run_sh(&self, extra: &[&str], script: &str) -> Output {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        let child = self.broker(&args).spawn().unwrap();
        finish(child)
    }

    /// The scratch dirs the runs left (see the shared `scratch_dirs` module).
    fn scratch_dirs(&self) -> Vec<PathBuf> {
        scratch_dirs::scratch_dirs(self.runtime.path())
    }
}

struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Output {
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Waits for `child` (a safety net of 120 s against a hung test, not a timing assertion).
fn finish(mut child: Child) -> Output {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_bounded(&mut child);
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("broker did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- encodings, written out here so the test does not trust the redactor's own ----

fn b64(data: &[u8], url: bool, pad: bool) -> String {
    let table: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            out.push(table[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        if pad {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

fn hex(data: &[u8], upper: bool) -> String {
    data.iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

fn percent(data: &[u8]) -> String {
    data.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn json(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if !c.is_ascii() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn encodings(value: &str) -> Vec<String> {
    let v = value.as_bytes();
    vec![
        value.to_string(),
        b64(v, false, true),
        b64(v, false, false),
        b64(v, true, true),
        b64(v, true, false),
        hex(v, false),
        hex(v, true),
        percent(v),
        json(value),
    ]
}

/// Asserts no canary, in any encoding, and no line of a multi-line canary, is in `text`.
fn assert_clean(channel: &str, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    assert!(
        !text.contains("canary"),
        "{channel} leaked a canary:\n{text}"
    );
    for value in ALL {
        for enc in encodings(value) {
            assert!(
                !text.contains(&enc),
                "{channel} leaked an encoding of a canary:\n{text}"
            );
        }
    }
}

// ---- child output ----

#[test]
fn plain_and_encoded_values_are_redacted_on_stdout_and_stderr() {
    let sb = Sandbox::new();
    let mut payload = String::new();
    for value in [API_EXT, KEY] {
        for enc in encodings(value) {
            payload.push_str(&format!("x {enc} y\n"));
        }
    }
    // A value inside a longer base64 text, at an odd byte offset.
    payload.push_str(&format!(
        "{}\n",
        b64(
            format!("Authorization: Bearer {API_EXT}!").as_bytes(),
            false,
            true
        )
    ));
    let file = sb.file("payload.txt", payload.as_bytes());
    let script = format!(
        "cat '{f}'; cat '{f}' >&2; printf '%s\\n' \"$API_TOKEN\"; cat \"$KEY_FILE\"; echo",
        f = file.display()
    );
    let out = sb.run_sh(&[], &script);
    assert_eq!(out.code(), 0, "stderr: {}", out.err());
    assert_clean("child stdout", &out.stdout);
    assert_clean("child stderr", &out.stderr);
    let lines = encodings(API_EXT).len() + encodings(KEY).len();
    for (name, text) in [("stdout", out.out()), ("stderr", out.err())] {
        let n = text.matches("[REDACTED:").count();
        assert!(n > lines, "{name}: only {n} redactions:\n{text}");
    }
    assert!(out.out().contains("x [REDACTED:api_ext] y\n"));
    assert!(out.out().contains("x [REDACTED:key] y\n"));
    assert!(out.out().contains("[REDACTED:api]\n[REDACTED:key]\n"));
}

#[test]
fn one_byte_writes_interleaved_across_stdout_and_stderr() {
    let sb = Sandbox::new();
    let a = sb.file("a.txt", format!("<{API}>\n").as_bytes());
    let b = sb.file("b.txt", format!("<{ML}>\n").as_bytes());
    let script = format!(
        "{{ dd if='{a}' bs=1 status=none; dd if='{b}' bs=1 status=none; }} & \
         {{ dd if='{b}' bs=1 status=none; dd if='{a}' bs=1 status=none; }} >&2 & wait",
        a = a.display(),
        b = b.display()
    );
    let out = sb.run_sh(&[], &script);
    assert_eq!(out.code(), 0, "stderr: {}", out.err());
    assert_clean("stdout", &out.stdout);
    assert_clean("stderr", &out.stderr);
    // One writer per stream (two writers on one stream would interleave their bytes, and no
    // redactor can match a value that never appears contiguously); the streams run at once.
    for text in [out.out(), out.err()] {
        assert_eq!(text.matches("[REDACTED:").count(), 2, "{text}");
    }
}

#[test]
fn one_byte_writes_on_one_stream_are_redacted_exactly() {
    let sb = Sandbox::new();
    let a = sb.file(
        "a.txt",
        format!("<{API}>\n<{ML}>\n<{API_EXT}>\n").as_bytes(),
    );
    let script = format!("dd if='{}' bs=1 status=none", a.display());
    let out = sb.run_sh(&[], &script);
    assert_eq!(out.code(), 0);
    assert_eq!(
        out.out(),
        "<[REDACTED:api]>\n<[REDACTED:ml]>\n<[REDACTED:api_ext]>\n"
    );
}

#[test]
fn multiline_and_nested_values_redact_the_longest_match() {
    let sb = Sandbox::new();
    let out = sb.run_sh(
        &[],
        "printf '%s|%s|%s|%s-tail\\n' \"$ML_VALUE\" \"$API_TOKEN_EXT\" \"$API_TOKEN\" \"$API_TOKEN\"",
    );
    assert_eq!(out.code(), 0);
    assert_eq!(
        out.out(),
        "[REDACTED:ml]|[REDACTED:api_ext]|[REDACTED:api]|[REDACTED:api]-tail\n"
    );
}

#[test]
fn binary_output_passes_through_unchanged_apart_from_matches() {
    let sb = Sandbox::new();
    let mut data: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    let at = 100_003;
    let mut expected = data[..at].to_vec();
    expected.extend_from_slice(b"[REDACTED:api]");
    expected.extend_from_slice(&data[at..]);
    data.splice(at..at, API.bytes());
    let file = sb.file("blob.bin", &data);
    let out = sb.run_sh(&[], &format!("cat '{}'", file.display()));
    assert_eq!(out.code(), 0);
    assert!(out.stdout == expected, "binary output was altered");
}

#[test]
fn no_redact_passes_output_through() {
    let sb = Sandbox::new();
    let out = sb.run_sh(&["--no-redact"], "printf '%s' \"$API_TOKEN\"");
    assert_eq!(out.code(), 0, "stderr: {}", out.err());
    assert_eq!(out.out(), API);
    assert!(out.err().contains("--no-redact"), "{}", out.err());
    assert_clean("broker stderr", &out.stderr);
}

#[test]
fn pty_output_stays_a_terminal_and_is_redacted() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let Ok(master) = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY) else {
        eprintln!("skipped: no pseudo-terminals here");
        return;
    };
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let sb = Sandbox::new();
    let mut cmd = sb.broker(&[
        "run",
        "--",
        "sh",
        "-c",
        "test -t 1 && echo stdout-is-a-tty; test -t 2 && echo stderr-is-a-tty >&2; \
         printf '%s\\n' \"$API_TOKEN\" \"$ML_VALUE\"",
    ]);
    cmd.stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    drop(slave);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once every slave fd is closed.
        while let Ok(n) = rustix::io::read(&master, &mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let status = wait_bounded(&mut child);
    let all = reader.join().unwrap();
    let text = String::from_utf8_lossy(&all).replace("\r\n", "\n");
    assert_eq!(status.code(), Some(0), "{text}");
    assert_clean("pty", &all);
    assert!(text.contains("stdout-is-a-tty\n"), "{text}");
    assert!(text.contains("stderr-is-a-tty\n"), "{text}");
    assert!(text.contains("[REDACTED:api]\n[REDACTED:ml]\n"), "{text}");
}

// ---- the broker's own channels ----

#[test]
fn broker_stderr_and_logs_are_redacted() {
    let sb = Sandbox::new();
    let mut cmd = sb.broker(&["run", "--", "sh", "-c", "echo \"$API_TOKEN\"; exit 4"]);
    cmd.env("BROKER_LOG", "trace");
    let out = finish(cmd.spawn().unwrap());
    assert_eq!(out.code(), 4);
    assert_clean("broker stderr (trace logs)", &out.stderr);
    assert_clean("stdout", &out.stdout);

    // An error message that would carry a value (here through the program name).
    let missing = format!("/nonexistent/{API_EXT}");
    let out = finish(sb.broker(&["run", "--", &missing]).spawn().unwrap());
    assert_eq!(out.code(), 127);
    assert!(out.err().contains("[REDACTED:api_ext]"), "{}", out.err());
    assert_clean("broker error message", &out.stderr);
}

#[test]
fn proc_environ_and_cmdline_hold_no_delivered_values() {
    let sb = Sandbox::new();
    let mut child = sb
        .broker(&["run", "--", "sh", "-c", "echo ready; exec sleep 60"])
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_clean("/proc/<broker>/cmdline", &cmdline);
    match std::fs::read(format!("/proc/{pid}/environ")) {
        // Not dumpable: readable only by root.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied),
        Ok(environ) => {
            // env: values come from the broker's own environment by design; what matters is
            // that the broker added nothing: no delivered variable, no file path.
            let vars: Vec<String> = environ
                .split(|&b| b == 0)
                .filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            for var in ["API_TOKEN=", "API_TOKEN_EXT=", "KEY_FILE=", "ML_VALUE="] {
                assert!(
                    !vars.iter().any(|v| v.starts_with(var)),
                    "broker environ has {var}"
                );
            }
            let mine: Vec<&String> = vars.iter().filter(|v| v.contains("canary")).collect();
            assert_eq!(
                mine.len(),
                4,
                "only the four source variables hold canaries"
            );
        }
    }
    // The child's argv has no value either.
    let kids =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for kid in kids.split_whitespace() {
        if let Ok(c) = std::fs::read(format!("/proc/{kid}/cmdline")) {
            assert_clean("/proc/<child>/cmdline", &c);
        }
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = wait_bounded(&mut child);
    assert_eq!(status.code(), Some(143));
}

#[test]
fn panic_message_is_redacted_and_scratch_is_wiped() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the panic hook exists in debug builds only");
        return;
    }
    let sb = Sandbox::new();
    let mut cmd = sb.broker(&["run", "--", "true"]);
    cmd.env("BROKER_TEST_PANIC_WITH_VALUE", "1");
    let out = finish(cmd.spawn().unwrap());
    assert_eq!(out.code(), 101, "stderr: {}", out.err());
    assert!(out.err().contains("internal error"), "{}", out.err());
    assert!(out.err().contains("[REDACTED:api]"), "{}", out.err());
    assert_clean("panic message", &out.stderr);
    assert_eq!(sb.scratch_dirs(), Vec::<PathBuf>::new());
}

// ---- scratch files and exit codes on every exit path ----

/// Starts a run whose child prints the scratch file's path, then "ready", then runs `rest`.
fn start_waiting(sb: &Sandbox, extra: &[&str], rest: &str) -> (Child, PathBuf) {
    let script = format!("printf '%s\\n' \"$KEY_FILE\"; echo ready; {rest}");
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", &script]);
    let mut child = sb.broker(&args).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut path = String::new();
    stdout.read_line(&mut path).unwrap();
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert_eq!(ready, "ready\n", "path line: {path}");
    let path = PathBuf::from(path.trim_end());
    assert!(path.exists(), "scratch file missing during the run");
    assert_eq!(std::fs::read(&path).unwrap(), KEY.as_bytes());
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    (child, path)
}

fn assert_wiped(sb: &Sandbox, path: &Path) {
    assert!(!path.exists(), "scratch file survived: {}", path.display());
    assert_eq!(sb.scratch_dirs(), Vec::<PathBuf>::new());
}

#[test]
fn normal_exit_and_child_exit_codes_pass_through() {
    let sb = Sandbox::new();
    for (script, code) in [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("kill -9 $$", 137),
    ] {
        let out = sb.run_sh(&[], &format!("test -f \"$KEY_FILE\" || exit 99; {script}"));
        assert_eq!(out.code(), code, "{script}: {}", out.err());
        assert_eq!(sb.scratch_dirs(), Vec::<PathBuf>::new(), "after {script}");
        assert_clean("stderr", &out.stderr);
    }
    let out = finish(
        sb.broker(&["run", "--", "/nonexistent/tool"])
            .spawn()
            .unwrap(),
    );
    assert_eq!(out.code(), 127);
    assert_eq!(sb.scratch_dirs(), Vec::<PathBuf>::new());
}

#[test]
fn forwarded_signals_wipe_and_exit_128_plus_n() {
    use rustix::process::{Pid, Signal, kill_process};
    let sb = Sandbox::new();
    for (signal, code) in [
        (Signal::INT, 130),
        (Signal::TERM, 143),
        (Signal::HUP, 129),
        (Signal::QUIT, 131),
    ] {
        let (mut child, path) = start_waiting(&sb, &[], "exec sleep 60");
        kill_process(Pid::from_raw(child.id() as i32).unwrap(), signal).unwrap();
        let status = wait_bounded(&mut child);
        assert_eq!(status.code(), Some(code), "{signal:?}");
        assert_wiped(&sb, &path);
    }
}

#[test]
fn a_child_ignoring_the_signal_is_killed_after_the_grace_period() {
    use rustix::process::{Pid, Signal, kill_process};
    let sb = Sandbox::new();
    let (mut child, path) = start_waiting(
        &sb,
        &["--grace", "1"],
        "trap '' TERM INT; while :; do sleep 1; done",
    );
    kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::TERM).unwrap();
    let status = wait_bounded(&mut child);
    assert_eq!(status.code(), Some(143));
    assert_wiped(&sb, &path);
}

#[test]
fn sigkill_leaves_a_marked_dir_that_the_next_invocation_sweeps() {
    use rustix::process::{Pid, Signal, kill_process, kill_process_group};
    let sb = Sandbox::new();
    let (mut child, path) = start_waiting(&sb, &[], "exec sleep 60");
    let broker_pid = Pid::from_raw(child.id() as i32).unwrap();
    // The grandchild has its own process group (stdin is not a terminal), led by itself.
    let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .unwrap_or_default();
    kill_process(broker_pid, Signal::KILL).unwrap();
    let status = wait_bounded(&mut child);
    assert_eq!(status.code(), None, "killed by a signal");
    for kid in kids.split_whitespace() {
        if let Some(p) = kid.parse().ok().and_then(Pid::from_raw) {
            let _ = kill_process_group(p, Signal::KILL);
        }
    }
    // The sweep spares a dir whose child still runs: wait (bounded) until each has exited or
    // is a zombie nobody reaps.
    for kid in kids.split_whitespace() {
        let stat = format!("/proc/{kid}/stat");
        let mut polls = 0;
        while std::fs::read_to_string(&stat)
            .is_ok_and(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        {
            polls += 1;
            assert!(polls < 3000, "child {kid} did not exit");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    assert!(
        path.exists(),
        "SIGKILL cannot be caught: the dir is left behind"
    );
    let dir = path.parent().unwrap().to_path_buf();
    let marker = std::fs::read_to_string(dir.join(".broker-owner")).unwrap();
    assert!(marker.starts_with(&format!("{broker_pid} ", broker_pid = child.id())));

    let out = finish(sb.broker(&["doctor"]).spawn().unwrap());
    assert!(
        out.out().contains(&dir.display().to_string()),
        "doctor did not report the sweep: {}",
        out.out()
    );
    assert_wiped(&sb, &path);
}
