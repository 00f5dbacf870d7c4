//! The whole story of `broker serve`, end to end with the real binary and a real OpenBao: an
//! agent process with no credentials of its own, running as a different uid, obtains a scoped,
//! short-lived OpenBao token from the daemon over its socket (`broker run --from`), uses it,
//! and loses it when an admin blocks the agent: the token stops working mid-task and the
//! agent's next request is refused.
#![cfg(all(feature = "serve", feature = "vault"))]
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use broker_core::testkit::{OpenBao, assert_no_canary, record_skip};

const ROOT: &str = "canary-root-serve-agent-81c2f9";
const SECRET: &str = "canary-kv-serve-agent-2d7e04";
const AGENT_UID: u32 = 65533;

fn mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_agent_of_another_uid_obtains_uses_and_loses_a_scoped_credential() {
    if !rustix::process::geteuid().is_root()
        || Command::new("setpriv").arg("--version").output().is_err()
    {
        record_skip("root with setpriv is needed to run the agent as another uid");
        return;
    }
    let Some(bao) = OpenBao::start(ROOT, "bao-serve-agent") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // What the agent's token may do: read one KV path, nothing else.
    std::fs::write(
        w.join("app-read.hcl"),
        "path \"secret/data/app\" { capabilities = [\"read\"] }\n",
    )
    .unwrap();
    bao.bao(&[
        "policy",
        "write",
        "app-read",
        &w.join("app-read.hcl").display().to_string(),
    ]);
    bao.bao(&["kv", "put", "secret/app", &format!("value={SECRET}")]);
    bao.bao(&["kv", "put", "secret/other", &format!("value={SECRET}")]);

    // The daemon: root, its config and audit log in a dir the agent cannot read.
    let daemon_dir = w.join("daemon");
    std::fs::create_dir(&daemon_dir).unwrap();
    mode(&daemon_dir, 0o711);
    std::fs::create_dir(daemon_dir.join("run")).unwrap();
    mode(&daemon_dir.join("run"), 0o711);
    let root_uid = rustix::process::getuid().as_raw();
    std::fs::write(
        daemon_dir.join(".broker.yml"),
        format!(
            r#"egress: {{ enabled: true }}
backends:
  vault: {{ address: "{url}" }}
credentials:
  app_token: {{ mint: "vault:auth/token/create?policies=app-read", ttl: 5m, as: BAO_TOKEN }}
audit: {{ path: audit.jsonl }}
serve:
  listen: run/broker.sock
  mode: "0660"
  group: "{AGENT_UID}"
  agents: [{{ id: agent-b, uid: {AGENT_UID} }}]
  admins: [{{ uid: {root_uid} }}]
"#,
            url = bao.url()
        ),
    )
    .unwrap();
    mode(&daemon_dir.join(".broker.yml"), 0o600);
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_broker"))
        .arg("serve")
        .current_dir(&daemon_dir)
        .env("VAULT_TOKEN", ROOT)
        .env("HOME", bao.home.path())
        .env_remove("BROKER_CONFIG")
        .env_remove("BROKER_FROM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = daemon_dir.join("run/broker.sock");
    wait_for("the daemon's socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });

    // The agent: a copy of the binary it may execute, its own runtime dir, a shared dir for
    // the test to talk to it, and an environment with no credentials at all.
    let agent_dir = w.join("agent");
    std::fs::create_dir(&agent_dir).unwrap();
    mode(w, 0o711);
    mode(&agent_dir, 0o777);
    let broker = agent_dir.join("broker");
    std::fs::copy(env!("CARGO_BIN_EXE_broker"), &broker).unwrap();
    mode(&broker, 0o755);
    let runtime = agent_dir.join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::os::unix::fs::chown(&runtime, Some(AGENT_UID), Some(AGENT_UID)).unwrap();
    mode(&runtime, 0o700);
    let url = bao.url();
    let task = format!(
        "use() {{ curl -s -o /dev/null -w '%{{http_code}}' -H \"X-Vault-Token: $BAO_TOKEN\" {url}/v1/secret/data/$1; echo \" $1\"; }}; \
         use app; use other; touch {d}/used; \
         while [ ! -e {d}/blocked ]; do sleep 0.1; done; use app",
        d = agent_dir.display()
    );
    let agent = Command::new("setpriv")
        .args([
            "--reuid",
            &AGENT_UID.to_string(),
            "--regid",
            &AGENT_UID.to_string(),
            "--clear-groups",
        ])
        .arg(&broker)
        .args(["run", "--from"])
        .arg(&socket)
        .args(["--", "sh", "-c", &task])
        .current_dir(&agent_dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", &agent_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the agent to use its token", || {
        agent_dir.join("used").exists()
    });

    // The admin blocks the agent mid-task.
    let block = Command::new("curl")
        .args(["-s", "-X", "POST", "--unix-socket"])
        .arg(&socket)
        .arg("http://broker/v1/agents/agent-b/block")
        .output()
        .unwrap();
    let block = String::from_utf8_lossy(&block.stdout).to_string();
    assert!(block.contains("\"blocked\":true"), "{block}");
    assert!(
        block.contains("\"revoked\":[\"token-accessor:"),
        "the token was revoked: {block}"
    );
    std::fs::write(agent_dir.join("blocked"), "").unwrap();
    let out = agent.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout, "200 app\n403 other\n403 app\n",
        "scoped to one path; dead after the block"
    );

    // Its next request is refused, with a message naming the block.
    let again = Command::new("setpriv")
        .args([
            "--reuid",
            &AGENT_UID.to_string(),
            "--regid",
            &AGENT_UID.to_string(),
            "--clear-groups",
        ])
        .arg(&broker)
        .args(["request", "app_token", "--reveal", "--from"])
        .arg(&socket)
        .current_dir(&agent_dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let again_err = String::from_utf8_lossy(&again.stderr).to_string();
    assert_eq!(again.status.code(), Some(77), "{again_err}");
    assert_eq!(
        again_err,
        "error: the daemon refused (403 agent_blocked): agent `agent-b` is blocked\n"
    );
    assert!(again.stdout.is_empty());

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(daemon.wait().unwrap().success(), "{logs}");
    let audit = std::fs::read_to_string(daemon_dir.join("audit.jsonl")).unwrap();
    for (what, text) in [
        ("agent stdout", &stdout),
        ("agent stderr", &stderr),
        ("request stderr", &again_err),
        ("block answer", &block),
        ("daemon logs", &logs),
        ("audit log", &audit),
    ] {
        assert_no_canary(what, text, &[ROOT, SECRET]);
    }
    assert!(audit.contains("\"outcome\":\"agent_blocked\""), "{audit}");
    assert!(
        audit.contains(&format!("unix peer uid {AGENT_UID}")),
        "{audit}"
    );
    // Nothing of the agent's run is left behind.
    let left: Vec<_> = std::fs::read_dir(&runtime).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
