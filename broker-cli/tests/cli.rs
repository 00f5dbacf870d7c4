//! The `broker` binary: exact stderr and exit codes, delivery, and the scratch dir on every
//! exit path (normal, child failure, SIGTERM to the broker, SIGKILL + sweep).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CANARY: &str = "canary-cli-5e8a0d13f7b2";

/// A temp dir with a `.broker.yml`, and a private `XDG_RUNTIME_DIR` so the test can see the
/// scratch dirs `broker run` creates.
struct Fixture {
    dir: tempfile::TempDir,
    runtime: tempfile::TempDir,
}

impl Fixture {
    fn new(config: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".broker.yml"), config).unwrap();
        let runtime = tempfile::tempdir().unwrap();
        std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Fixture { dir, runtime }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_broker"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("DEMO_TOKEN", CANARY)
            .env_remove("BROKER_CONFIG")
            .env_remove("BROKER_LOG")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// The per-user parent the scratch dirs go in: `RUNTIME/broker-UID`.
    fn user_dir(&self) -> PathBuf {
        self.runtime
            .path()
            .join(format!("broker-{}", rustix::process::getuid().as_raw()))
    }

    /// The scratch dirs in the per-user parent. The runtime dir holds nothing but that parent,
    /// and the parent, once made, is 0700.
    fn scratch_dirs(&self) -> Vec<PathBuf> {
        let parent = self.user_dir();
        let others: Vec<PathBuf> = std::fs::read_dir(self.runtime.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| *p != parent)
            .collect();
        assert_eq!(others, Vec::<PathBuf>::new(), "outside the per-user parent");
        let Ok(entries) = std::fs::read_dir(&parent) else {
            return Vec::new();
        };
        let mode = std::fs::symlink_metadata(&parent)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700, "{}", parent.display());
        entries.map(|e| e.unwrap().path()).collect()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

const CONFIG: &str = r#"credentials:
  api: { ref: "env:DEMO_TOKEN", as: API_TOKEN }
  key: { ref: "env:DEMO_TOKEN", as: KEY_FILE, kind: file }
"#;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_clean(o: &Output) {
    let all = stdout(o) + &stderr(o);
    assert!(!all.contains(CANARY), "canary in broker output: {all}");
}

/// The schemes of the backends this test binary's features enable, sorted.
fn compiled_schemes() -> Vec<&'static str> {
    let mut s: Vec<&str> = Vec::new();
    if cfg!(feature = "age") {
        s.extend(["age", "agenix"]);
    }
    if cfg!(feature = "aws") {
        s.extend(["aws-sm", "aws-sts"]);
    }
    if cfg!(feature = "azure") {
        s.extend(["azure-token", "azurekv"]);
    }
    if cfg!(feature = "env") {
        s.push("env");
    }
    if cfg!(feature = "gcp") {
        s.extend(["gcp-iam", "gcp-sm"]);
    }
    if cfg!(feature = "sops") {
        s.push("sops");
    }
    if cfg!(feature = "vault") {
        s.push("vault");
    }
    s.sort();
    s
}

#[test]
fn registered_schemes_equal_enabled_features() {
    let f = Fixture::new(CONFIG);
    let out = f.run(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let schemes: Vec<&str> = doc["schemes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(schemes, compiled_schemes());
}

#[test]
fn run_delivers_env_and_file_and_wipes() {
    let f = Fixture::new(CONFIG);
    let script = r#"test "$API_TOKEN" = "$DEMO_TOKEN" || exit 10
        test "$(cat "$KEY_FILE")" = "$DEMO_TOKEN" || exit 11
        test "$(stat -c %a "$KEY_FILE")" = 600 || exit 12
        test "$(stat -c %a "$(dirname "$KEY_FILE")")" = 700 || exit 13
        echo "$KEY_FILE" > delivered-path"#;
    let out = f.run(&["run", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_clean(&out);
    let path = std::fs::read_to_string(f.path("delivered-path")).unwrap();
    let scratch = Path::new(path.trim()).parent().unwrap();
    assert_eq!(scratch.parent().unwrap(), f.user_dir(), "{path}");
    assert!(!Path::new(path.trim()).exists());
    assert_eq!(f.scratch_dirs(), Vec::<PathBuf>::new());
}

#[test]
fn run_passes_the_child_exit_code_through_and_wipes() {
    let f = Fixture::new(CONFIG);
    let out = f.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "cat \"$KEY_FILE\" > /dev/null; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stderr(&out), "");
    assert_eq!(f.scratch_dirs(), Vec::<PathBuf>::new());
}

#[test]
fn run_only_delivers_the_named_credentials() {
    let f = Fixture::new(CONFIG);
    let out = f.run(&[
        "run",
        "--only",
        "api",
        "--",
        "sh",
        "-c",
        "test -z \"${KEY_FILE:-}\" && test -n \"$API_TOKEN\"",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(f.scratch_dirs(), Vec::<PathBuf>::new());
}

fn wait_for_condition(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_to_the_broker_reaches_the_child_and_wipes() {
    let f = Fixture::new(CONFIG);
    let script = "echo \"$KEY_FILE\" > started; trap 'echo got-term > trapped; exit 0' TERM; while :; do sleep 0.05; done";
    let mut child = f
        .cmd(&["run", "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&f.path("started"));
    assert_eq!(f.scratch_dirs().len(), 1);
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    assert_eq!(
        std::fs::read_to_string(f.path("trapped")).unwrap(),
        "got-term\n"
    );
    assert_eq!(f.scratch_dirs(), Vec::<PathBuf>::new());
}

#[test]
fn sigkill_leaves_a_dir_that_the_next_invocation_sweeps() {
    let f = Fixture::new(CONFIG);
    let script = "echo $$ > child-pid; echo \"$KEY_FILE\" > started; exec sleep 30";
    let mut child = f
        .cmd(&["run", "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&f.path("started"));
    // The broker records its child in the marker right after the spawn; kill it only then
    // (a broker killed in between leaves a dir whose marker names no live process).
    wait_for_condition(|| {
        f.scratch_dirs().iter().any(|d| {
            std::fs::read_to_string(d.join(".broker-owner"))
                .is_ok_and(|m| m.split_whitespace().count() == 4)
        })
    });
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    child.wait().unwrap();
    let left = f.scratch_dirs();
    assert_eq!(
        left.len(),
        1,
        "SIGKILL cannot be caught: the dir stays until swept"
    );
    // The orphaned `sleep` still runs: its files stay. Stop it, wait until it has exited
    // (or is a zombie nobody reaps), then the dir is swept.
    let orphan: u32 = std::fs::read_to_string(f.path("child-pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = f.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        f.scratch_dirs(),
        left,
        "swept while the orphaned child runs"
    );
    let orphan_pid = rustix::process::Pid::from_raw(orphan as i32).unwrap();
    rustix::process::kill_process(orphan_pid, rustix::process::Signal::KILL).unwrap();
    let stat = format!("/proc/{orphan}/stat");
    wait_for_condition(|| match std::fs::read_to_string(&stat) {
        Err(_) => true,
        Ok(s) => s[s.rfind(')').unwrap() + 2..].starts_with('Z'),
    });

    let out = f.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "swept a stale scratch dir left by a dead run: {}",
            left[0].display()
        )),
        "{}",
        stdout(&out)
    );
    assert_eq!(f.scratch_dirs(), Vec::<PathBuf>::new());
}

#[test]
fn run_errors_are_one_line_and_leave_nothing() {
    let f = Fixture::new(
        "credentials:\n  key: { ref: \"env:DEMO_TOKEN\", kind: file }\n  gone: { ref: \"env:BROKER_TEST_UNSET\" }\n",
    );
    let out = f.run(&["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(69));
    assert_eq!(
        stderr(&out),
        "error: credential `gone` (env:BROKER_TEST_UNSET): environment variable `BROKER_TEST_UNSET` is not set\n"
    );
    // `key` was written before `gone` failed; nothing may remain.
    assert_eq!(f.scratch_dirs(), Vec::<PathBuf>::new());

    let out = f.run(&["run", "--only", "key", "--", "/nonexistent/cmd"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        stderr(&out),
        "error: cannot run `/nonexistent/cmd`: No such file or directory (os error 2)\n"
    );
    assert_eq!(f.scratch_dirs(), Vec::<PathBuf>::new());
}

#[test]
fn get_refuses_a_pipe_without_reveal() {
    let f = Fixture::new(CONFIG);
    let out = f.run(&["get", "api"]);
    assert_eq!(out.status.code(), Some(77));
    assert_eq!(
        stderr(&out),
        "error: refusing to print credential `api` to a pipe or file\nhint: pass --reveal if you really mean to, or use `broker run` to hand it to a program\n"
    );
    assert_eq!(stdout(&out), "");
    let out = f.run(&["get", "api", "--reveal"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), CANARY);
}

#[test]
fn check_reports_the_first_bad_reference() {
    let f = Fixture::new(CONFIG);
    let out = f.run(&["check", "env:GOOD", "vualt:secret/app", "env:1BAD"]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!(
            "error: invalid reference `vualt:secret/app` at column 1: unknown scheme `vualt`; did you mean `vault`?\nhint: schemes compiled in: {}\n",
            compiled_schemes().join(", ")
        )
    );
    let out = f.run(&["check", "env:GOOD", "env:ALSO_GOOD"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        "ok  env:GOOD  (env)\nok  env:ALSO_GOOD  (env)\n"
    );
}

/// Issue 10: a huge reference was echoed whole (twice for an unknown scheme) in the error.
/// One argv string is capped at 128 KiB by the kernel, so this one is 120,000 characters.
#[test]
fn check_echoes_at_most_200_characters_of_a_huge_reference() {
    let f = Fixture::new(CONFIG);
    let bad_name = format!("env:{}-", "A".repeat(120_000));
    let out = f.run(&["check", &bad_name]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        stderr(&out),
        format!(
            "error: invalid reference `env:{}… (120005 chars)` at column 120005: `-` is not allowed in a variable name (letters, digits, `_`; not starting with a digit)\n",
            "A".repeat(196)
        )
    );
    let bad_scheme = format!("vualt{}:a", "x".repeat(120_000));
    let out = f.run(&["check", &bad_scheme]);
    assert_eq!(out.status.code(), Some(78));
    assert!(out.stderr.len() < 1024, "{} bytes", out.stderr.len());
    assert_eq!(
        stderr(&out),
        format!(
            "error: invalid reference `vualt{x}… (120007 chars)` at column 1: unknown scheme `vualt{x}… (120005 chars)`\nhint: schemes compiled in: {}\n",
            compiled_schemes().join(", "),
            x = "x".repeat(195)
        )
    );
}

const AGENT_POLICY: &str = r#"@id("everyone") permit (principal, action, resource);
@id("no-anonymous-agents") forbid (principal == Agent::"anonymous", action, resource);
@id("no-mallory") forbid (principal == Agent::"mallory", action, resource);
"#;

fn agent_fixture() -> Fixture {
    let f = Fixture::new(&format!("{CONFIG}policy: policy.cedar\n"));
    std::fs::write(f.path("policy.cedar"), AGENT_POLICY).unwrap();
    f
}

/// Issue 10: `--agent ""` became `Agent::""` and got past `no-anonymous-agents`, and ids were
/// compared as given, so `Mallory` or ` mallory` dodged a forbid on `mallory`.
#[test]
fn empty_blank_and_case_variant_agent_ids_cannot_dodge_a_forbid() {
    let f = agent_fixture();
    let denied = |rule: &str| {
        format!(
            "error: credential `api`: denied by policy: forbidden by {rule}\nhint: the policy in {} does not permit this request\n",
            f.path("policy.cedar").display()
        )
    };
    let cases: [(&[&str], Option<&str>, &str); 5] = [
        (&["--agent", ""], None, "no-anonymous-agents"),
        (&["--agent", "  "], None, "no-anonymous-agents"),
        (&[], Some(""), "no-anonymous-agents"),
        (&["--agent", " Mallory "], None, "no-mallory"),
        (&[], Some("MALLORY"), "no-mallory"),
    ];
    for (args, env, rule) in cases {
        let mut cmd = f.cmd(&["get", "api", "--reveal"]);
        cmd.args(args).env_remove("BROKER_AGENT_ID");
        if let Some(v) = env {
            cmd.env("BROKER_AGENT_ID", v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(77), "{args:?} {env:?}");
        assert_eq!(stderr(&out), denied(rule), "{args:?} {env:?}");
        assert_eq!(stdout(&out), "");
    }
    let out = f.run(&["get", "api", "--reveal", "--agent", "CI-Bot"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), CANARY);
    let out = f.run(&["get", "api", "--reveal", "--agent", "ci\u{1}bot"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        // The refused id is not echoed.
        "error: invalid value for '--agent <ID>': an agent id must not contain control characters\n\nFor more information, try '--help'.\n"
    );
}

#[test]
fn a_policy_naming_an_agent_id_no_agent_can_have_is_a_config_error() {
    let f = agent_fixture();
    std::fs::write(
        f.path("policy.cedar"),
        AGENT_POLICY.replace("\"mallory\"", "\"Mallory\""),
    )
    .unwrap();
    let out = f.run(&["get", "api", "--reveal", "--agent", "mallory"]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        stderr(&out),
        format!(
            "error: {}: policy: `Agent::\"Mallory\"` can never match: agent ids are trimmed and lower-cased, write `Agent::\"mallory\"`\nhint: see docs/runtime.md for how agent ids are normalised\n",
            f.path("policy.cedar").display()
        )
    );
}

#[test]
fn config_errors_name_the_line() {
    let f = Fixture::new("credentials:\n  api: { ref: \"env:X\", colour: red }\n");
    let out = f.run(&["audit"]);
    assert_eq!(out.status.code(), Some(78));
    let file = f.path(".broker.yml");
    assert_eq!(
        stderr(&out),
        format!(
            "error: {}:2:24: credential `api`: unknown key `colour`\nhint: accepted keys: ref, mint, as, kind, ttl, scope, tenant, mcp, proxy\n",
            file.display()
        )
    );
    let out = f.run(&["audit", "--json"]);
    assert_eq!(out.status.code(), Some(78));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["kind"], "invalid_config");
    assert_eq!(err["error"]["credential"], "api");
    assert_eq!(err["error"]["exit_code"], 78);
}

#[test]
fn missing_config_is_a_config_error() {
    let f = Fixture::new("");
    std::fs::remove_file(f.path(".broker.yml")).unwrap();
    let out = f.run(&["audit"]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        stderr(&out),
        format!(
            "error: no .broker.yml in {} or any parent directory\nhint: create one (see examples/quickstart/.broker.yml) or pass --config PATH\n",
            f.dir.path().display()
        )
    );
}

#[test]
fn audit_lists_the_manifest_without_resolving() {
    // DEMO_TOKEN is removed: audit must not need it.
    let f = Fixture::new(CONFIG);
    let out = f.cmd(&["audit"]).env_remove("DEMO_TOKEN").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("egress: disabled (only local credentials resolve)"),
        "{text}"
    );
    assert!(text.contains("api         env:DEMO_TOKEN  env      read    process env  local  $API_TOKEN        allowed"), "{text}");
    assert!(
        text.contains("2 credential(s); 2 stay on this machine, 0 would leave it"),
        "{text}"
    );
    let out = f
        .cmd(&["audit", "--json"])
        .env_remove("DEMO_TOKEN")
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["entries"][1]["kind"], "file");
    assert_eq!(doc["entries"][1]["badge"], "local");
    assert_eq!(doc["egress"]["enabled"], false);
}

#[cfg(feature = "vault")]
#[test]
fn egress_off_refuses_a_remote_credential_before_any_connection() {
    // Port 9 (discard) on loopback: nothing listens, and nothing must try.
    let f = Fixture::new(
        "backends:\n  vault: { address: \"https://vault.corp.example:8200\" }\ncredentials:\n  db: { ref: \"vault:secret/data/app#url\" }\n",
    );
    let out = f.run(&["run", "--", "true"]);
    assert_eq!(out.status.code(), Some(77));
    let file = f.path(".broker.yml");
    assert_eq!(
        stderr(&out),
        format!(
            "error: credential `db` (vault:secret/data/app#url): egress is disabled; this would reach https://vault.corp.example:8200 (managed-cloud)\nhint: set `egress.enabled: true` in {} after reviewing `broker audit`\n",
            file.display()
        )
    );
}

#[test]
fn usage_errors_exit_2() {
    let f = Fixture::new(CONFIG);
    let out = f.run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: the following required arguments were not provided:"),
        "{}",
        stderr(&out)
    );
}

/// Runs `cmd` to completion, killing it after a generous bound so that a broker that blocks
/// fails the test instead of hanging it (the bound is not a timing assertion).
fn output_bounded(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("the broker blocked; stderr: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn mkfifo(path: &Path) {
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
}

#[cfg(feature = "age")]
#[test]
fn age_file_that_is_a_fifo_errors_at_once() {
    let f = Fixture::new("credentials:\n  s: { ref: \"age:secret.age\", as: S }\n");
    mkfifo(&f.path("secret.age"));
    let out = output_bounded(f.cmd(&["get", "s", "--reveal"]));
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: credential `s` (age:secret.age): cannot read age file {}: a FIFO, not a regular file\n",
            f.path("secret.age").display()
        )
    );
    // The same through `broker run`, which also leaves no scratch dir behind.
    let out = output_bounded(f.cmd(&["run", "--", "true"]));
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(f.scratch_dirs().is_empty());
}

#[cfg(feature = "age")]
#[test]
fn age_file_that_is_a_device_or_too_large_is_refused() {
    let f = Fixture::new(
        "credentials:\n  z: { ref: \"age:/dev/zero\", as: Z }\n  big: { ref: \"age:big.age\", as: B }\n",
    );
    let out = output_bounded(f.cmd(&["get", "z", "--reveal"]));
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "error: credential `z` (age:/dev/zero): cannot read age file /dev/zero: a character device, not a regular file\n"
    );
    // Sparse: 64 MiB + 1 byte costs no disk.
    std::fs::File::create(f.path("big.age"))
        .unwrap()
        .set_len((64 << 20) + 1)
        .unwrap();
    let out = output_bounded(f.cmd(&["get", "big", "--reveal"]));
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: credential `big` (age:big.age): cannot read age file {}: larger than 64 MiB\n",
            f.path("big.age").display()
        )
    );
}

#[test]
fn config_that_is_a_fifo_is_a_config_error() {
    let f = Fixture::new("");
    let fifo = f.path("fifo.yml");
    mkfifo(&fifo);
    let out = output_bounded(f.cmd(&["--config", fifo.to_str().unwrap(), "audit"]));
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: cannot read config {}: a FIFO, not a regular file\n",
            fifo.display()
        )
    );
}

#[test]
fn non_utf8_config_and_policy_files_are_config_errors() {
    let f = Fixture::new("");
    std::fs::write(f.path(".broker.yml"), b"credentials: {}\n# \xff\n").unwrap();
    let out = f.run(&["audit"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: config {} is not UTF-8 text (invalid byte at offset 18)\n",
            f.path(".broker.yml").display()
        )
    );

    std::fs::write(
        f.path(".broker.yml"),
        "policy: policy.cedar\ncredentials: {}\n",
    )
    .unwrap();
    std::fs::write(
        f.path("policy.cedar"),
        b"permit(principal, action, resource); // \xff\n",
    )
    .unwrap();
    let out = f.run(&["audit"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: policy file {} is not UTF-8 text (invalid byte at offset 40)\nhint: `policy:` in the config names a regular file that must exist\n",
            f.path("policy.cedar").display()
        )
    );
}

#[test]
fn missing_policy_file_is_a_config_error() {
    let f = Fixture::new("policy: nope.cedar\ncredentials: {}\n");
    let out = f.run(&["audit"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "error: cannot read policy file {}: No such file or directory (os error 2)\nhint: `policy:` in the config names a regular file that must exist\n",
            f.path("nope.cedar").display()
        )
    );
}

/// Finding F7: control characters and escape codes in a reference reached the terminal raw
/// (an OSC title and a clear-screen), and a newline forged `ok` and `hint` lines.
#[test]
fn check_escapes_control_characters_in_what_it_echoes() {
    let f = Fixture::new(CONFIG);
    let out = f.run(&["check", "env:X\u{1b}]0;pwned\u{7}\u{1b}[2J"]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "error: invalid reference `env:X\\x1b]0;pwned\\x07\\x1b[2J` at column 6: a control character is not allowed in a reference\n"
    );
    let out = f.run(&["check", "env:X`\nok  env:FORGED  (env)\nhint: all good"]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "error: invalid reference `env:X`\\nok  env:FORGED  (env)\\nhint: all good` at column 7: whitespace is not allowed in a reference\n"
    );
    let out = f.run(&["check", "env:X\u{202e}\u{9b}2J"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        !stderr(&out).contains('\u{202e}') && !stderr(&out).contains('\u{9b}'),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("`env:X\\u{202e}\\u{9b}2J`"),
        "{}",
        stderr(&out)
    );
}

/// Finding F7: the same for a reference read from a repository's `.broker.yml`.
#[test]
fn config_references_with_control_characters_are_escaped_in_errors() {
    let f = Fixture::new("credentials:\n  api: { ref: \"env:X\\e]0;pwned\\a\\nok  forged\" }\n");
    let out = f.run(&["audit"]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(!err.chars().any(|c| c.is_control() && c != '\n'), "{err:?}");
    assert_eq!(
        err.lines().filter(|l| !l.starts_with("hint: ")).count(),
        1,
        "{err:?}"
    );
    assert!(
        err.contains("env:X\\x1b]0;pwned\\x07\\nok  forged"),
        "{err:?}"
    );
}

/// Finding F9: with stderr closed an error panicked (exit 101) instead of exiting 78.
#[test]
fn an_error_with_stderr_closed_still_exits_78() {
    let f = Fixture::new(CONFIG);
    let script = format!(
        "exec '{}' check 'bad::ref' 2>&-",
        env!("CARGO_BIN_EXE_broker")
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .current_dir(f.dir.path())
        .env_remove("BROKER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    // A pipe whose read end is gone: EPIPE, not a panic.
    let mut child = f
        .cmd(&["check", "bad::ref"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(78));
}

/// Finding F8: invisible characters and lookalike letters made ids that got past a forbid on
/// `mallory` and were logged as `mallory`; ids had no length cap. Only ASCII letters, digits
/// and `._@:/+-`, at most 256 bytes: anything else is a bad command line (exit 2).
#[test]
fn agent_ids_with_invisible_or_lookalike_characters_or_too_long_are_refused() {
    let f = agent_fixture();
    let refused = |what: &str| {
        format!(
            "error: invalid value for '--agent <ID>': an agent id must not contain {what} (only ASCII letters, digits and `._@:/+-`)\n\nFor more information, try '--help'.\n"
        )
    };
    let cases = [
        ("mallory\u{200b}", "U+200B"),
        ("\u{feff}mallory", "U+FEFF"),
        ("mallory\u{2060}", "U+2060"),
        ("mallory\u{ad}", "U+00AD"),
        ("m\u{430}llory", "U+0430"),
        ("\u{ff4d}allory", "U+FF4D"),
        ("mal lory", "a space"),
    ];
    for (id, what) in cases {
        let out = f.run(&["get", "api", "--reveal", "--agent", id]);
        assert_eq!(out.status.code(), Some(2), "{id:?}");
        assert_eq!(stderr(&out), refused(what), "{id:?}");
        assert!(
            !stderr(&out).contains(id),
            "the refused id is echoed: {id:?}"
        );
        assert_eq!(stdout(&out), "");
        let out = f
            .cmd(&["get", "api", "--reveal"])
            .env("BROKER_AGENT_ID", id)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "BROKER_AGENT_ID={id:?}");
        assert_eq!(stderr(&out), refused(what), "BROKER_AGENT_ID={id:?}");
    }
    let long = "a".repeat(257);
    let out = f.run(&["get", "api", "--reveal", "--agent", &long]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "error: invalid value for '--agent <ID>': an agent id must be at most 256 bytes, not 257\n\nFor more information, try '--help'.\n"
        )
    );
    for ok in [
        "a".repeat(256),
        "spiffe://example.org/ns/CI/sa/deploy-bot".to_string(),
        "ci-bot+1@example.org".to_string(),
        "svc:build_2.x".to_string(),
    ] {
        let out = f.run(&["get", "api", "--reveal", "--agent", &ok]);
        assert_eq!(out.status.code(), Some(0), "{ok}: {}", stderr(&out));
        assert_eq!(stdout(&out), CANARY);
    }
}

/// Finding F8: a policy literal no valid agent id can equal is a config error, not a forbid
/// that silently matches nobody.
#[test]
fn a_policy_naming_a_lookalike_or_invisible_agent_id_is_a_config_error() {
    let f = agent_fixture();
    for (literal, shown, what) in [
        ("m\u{430}llory", "m\u{430}llory", "U+0430"),
        ("mallory\u{200b}", "mallory\\u{200b}", "U+200B"),
    ] {
        std::fs::write(
            f.path("policy.cedar"),
            AGENT_POLICY.replace("\"mallory\"", &format!("\"{literal}\"")),
        )
        .unwrap();
        let out = f.run(&["get", "api", "--reveal", "--agent", "mallory"]);
        assert_eq!(out.status.code(), Some(78), "{literal:?}");
        assert_eq!(
            stderr(&out),
            format!(
                "error: {}: policy: `Agent::\"{shown}\"` can never match: an agent id must not contain {what} (only ASCII letters, digits and `._@:/+-`)\nhint: see docs/runtime.md for how agent ids are normalised\n",
                f.path("policy.cedar").display()
            ),
            "{literal:?}"
        );
    }
}
