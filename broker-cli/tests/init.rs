//! `broker init`: a commented `.broker.yml` proposing credentials from the sops and age files
//! found (the quickstart's, decryptable with its demo key), refused over an existing config;
//! `broker init --from-env .env`: the values move into a sops-encrypted `secrets.enc.yaml` that
//! Go `sops` (the test-peer venv's) decrypts, for a new age key written where sops looks or
//! the user's existing one; `.env` is ignored by git, kept, or overwritten and removed with
//! `--remove-env`; no value is ever printed.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const CANARY_A: &str = "canary-init-a-61f0c2d9e8b4";
const CANARY_B: &str = "canary-init-b 7a3e \"quoted\" 5c1d";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Sandbox {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, program: &str, env: &[(&str, &Path)]) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.dir.path())
            .env("HOME", self.home.path())
            .env("XDG_RUNTIME_DIR", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("SOPS_AGE_KEY_FILE")
            .env_remove("SOPS_AGE_KEY")
            .env_remove("BROKER_CONFIG")
            .env_remove("BROKER_LOG")
            .env_remove("NO_COLOR")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null());
        c
    }

    fn broker(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        self.cmd(env!("CARGO_BIN_EXE_broker"), env)
            .args(args)
            .output()
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_no_canary(o: &Output) {
    let all = text(&o.stdout) + &text(&o.stderr);
    for canary in [CANARY_A, "canary-init-b"] {
        assert!(!all.contains(canary), "a value in broker output: {all}");
    }
}

#[test]
fn init_proposes_the_sops_and_age_files_it_finds() {
    let sb = Sandbox::new();
    for f in ["secrets.enc.yaml", "deploy-key.age", "demo-age-key.txt"] {
        std::fs::copy(root().join("examples/quickstart").join(f), sb.path(f)).unwrap();
    }
    let key = sb.path("demo-age-key.txt");
    let env = [("SOPS_AGE_KEY_FILE", key.as_path())];
    let out = sb.broker(&["init"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dir = sb.dir.path().display().to_string();
    assert_eq!(
        text(&out.stdout),
        format!(
            "wrote {dir}/.broker.yml: 3 credential(s) proposed\n\n$ broker audit\nconfig: {dir}/.broker.yml\negress: disabled (only local credentials resolve)\n\n\
CREDENTIAL  REFERENCE                        BACKEND  SOURCE  DESTINATION{pad}BADGE  DELIVERED AS  GATE\n\
api_token   sops:secrets.enc.yaml#api_token  sops     read    file {dir}/secrets.enc.yaml  local  $API_TOKEN    allowed\n\
db          sops:secrets.enc.yaml#db         sops     read    file {dir}/secrets.enc.yaml  local  $DB           allowed\n\
deploy-key  age:deploy-key.age               age      read    file {dir}/deploy-key.age    local  $DEPLOY_KEY   allowed\n\
\n3 credential(s); 3 stay on this machine, 0 would leave it\n",
            pad =
                " ".repeat(format!("file {dir}/secrets.enc.yaml").len() - "DESTINATION".len() + 2),
        )
    );
    assert_eq!(text(&out.stderr), "");
    let config = std::fs::read_to_string(sb.path(".broker.yml")).unwrap();
    assert!(
        config.starts_with("# .broker.yml, written by `broker init`"),
        "{config}"
    );
    assert!(
        config.contains(&format!(
            "  # From secrets.enc.yaml (sops; your age key in {} decrypts it):\n  api_token: {{ ref: \"sops:secrets.enc.yaml#api_token\", as: API_TOKEN }}\n",
            key.display()
        )),
        "{config}"
    );
    assert!(
        config.contains(&format!(
            "backends:\n  age: {{ identity: \"{}\" }}\n",
            key.display()
        )),
        "{config}"
    );
    // What it proposed resolves.
    let out = sb.broker(
        &[
            "run",
            "--",
            "sh",
            "-c",
            r#"test -n "$API_TOKEN" && test -n "$DEPLOY_KEY" && echo delivered"#,
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "delivered\n");

    // A second init refuses, and leaves the config as it was.
    let out = sb.broker(&["init"], &env);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {dir}/.broker.yml already exists; `broker init` does not overwrite a config\nhint: edit it, or move it away to start over\n"
        )
    );
    assert_eq!(
        std::fs::read_to_string(sb.path(".broker.yml")).unwrap(),
        config
    );
}

#[test]
fn init_in_an_empty_directory_writes_examples() {
    let sb = Sandbox::new();
    let out = sb.broker(&["init", "--quiet"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "config: {}/.broker.yml\negress: disabled (only local credentials resolve)\n\nno credentials declared\n",
            sb.dir.path().display()
        )
    );
    let config = std::fs::read_to_string(sb.path(".broker.yml")).unwrap();
    assert!(
        config.contains("# Nothing to propose was found here"),
        "{config}"
    );
    assert!(config.contains("\ncredentials: {}\n"), "{config}");
}

fn sops_peer() -> Option<PathBuf> {
    broker_core::testkit::require_peer("sops")
}

/// `sops decrypt FILE` with the key file `key`.
fn sops_decrypt(sb: &Sandbox, sops: &Path, key: &Path) -> String {
    let out = sb
        .cmd(sops.to_str().unwrap(), &[("SOPS_AGE_KEY_FILE", key)])
        .args(["decrypt", "secrets.enc.yaml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "sops: {}", text(&out.stderr));
    text(&out.stdout)
}

const DOTENV: &str = "# app settings\nAPI_TOKEN=canary-init-a-61f0c2d9e8b4\nexport QUOTE=\"canary-init-b 7a3e \\\"quoted\\\" 5c1d\"\n";

#[test]
fn from_env_with_a_new_key_writes_it_where_sops_looks() {
    let Some(sops) = sops_peer() else { return };
    let sb = Sandbox::new();
    std::fs::write(sb.path(".env"), DOTENV).unwrap();
    std::fs::write(sb.path(".gitignore"), "target").unwrap();
    let out = sb.broker(&["init", "--from-env", ".env"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_no_canary(&out);
    let dir = sb.dir.path().display().to_string();
    let key = sb.home.path().join(".config/sops/age/keys.txt");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("wrote {dir}/.broker.yml: 2 credential(s) proposed")
    );
    assert_eq!(
        lines[1],
        format!("wrote {dir}/secrets.enc.yaml: 2 value(s) from {dir}/.env, sops-encrypted")
    );
    assert!(
        lines[2].starts_with("created a new age key age1"),
        "{stdout}"
    );
    assert!(
        lines[2].ends_with(&format!(
            " in {}, where sops looks for it: back it up, without it secrets.enc.yaml cannot be decrypted",
            key.display()
        )),
        "{stdout}"
    );
    assert_eq!(lines[3], "added .env to .gitignore");
    assert_eq!(
        lines[4],
        "left .env as it is: delete it once `broker run` works (or rerun with --remove-env)"
    );
    assert_eq!(lines[6], "$ broker audit");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(sb.path(".env")).unwrap(), DOTENV);
    assert_eq!(
        std::fs::read_to_string(sb.path(".gitignore")).unwrap(),
        "target\n.env\n"
    );
    let encrypted = std::fs::read_to_string(sb.path("secrets.enc.yaml")).unwrap();
    assert!(!encrypted.contains("canary-init"), "{encrypted}");

    // Go sops decrypts what the broker wrote.
    assert_eq!(
        sops_decrypt(&sb, &sops, &key),
        format!("API_TOKEN: {CANARY_A}\nQUOTE: {CANARY_B}\n")
    );
    // The references it wrote deliver the values under their old names.
    let out = sb.broker(
        &[
            "run",
            "--",
            "sh",
            "-c",
            &format!(r#"test "$API_TOKEN" = '{CANARY_A}' && test "$QUOTE" = '{CANARY_B}' && echo delivered"#),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "delivered\n");
}

#[test]
fn from_env_with_the_users_key_and_remove_env() {
    let Some(sops) = sops_peer() else { return };
    let sb = Sandbox::new();
    let key = sb.home.path().join("my-age-key.txt");
    std::fs::copy(root().join("examples/quickstart/demo-age-key.txt"), &key).unwrap();
    let recipient = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .unwrap();
    std::fs::write(sb.path(".env"), DOTENV).unwrap();
    let env = [("SOPS_AGE_KEY_FILE", key.as_path())];
    let out = sb.broker(&["init", "--from-env", ".env", "--remove-env"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_no_canary(&out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "\nencrypted for your sops age key {recipient} ({})\nadded .env to .gitignore\noverwrote and removed .env\n",
            key.display()
        )),
        "{stdout}"
    );
    assert!(!sb.path(".env").exists());
    assert_eq!(
        std::fs::read_to_string(sb.path(".gitignore")).unwrap(),
        ".env\n"
    );
    assert!(!sb.home.path().join(".config").exists());
    assert_eq!(
        sops_decrypt(&sb, &sops, &key),
        format!("API_TOKEN: {CANARY_A}\nQUOTE: {CANARY_B}\n")
    );
}

#[test]
fn from_env_refuses_a_bad_line_without_echoing_it_and_writes_nothing() {
    let sb = Sandbox::new();
    std::fs::write(sb.path(".env"), format!("OK=1\n{CANARY_A}\n")).unwrap();
    let out = sb.broker(&["init", "--from-env", ".env"], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert_no_canary(&out);
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}/.env:2: not a KEY=VALUE line\nhint: lines are KEY=VALUE (optionally `export KEY=VALUE`), `#` comments\n",
            sb.dir.path().display()
        )
    );
    assert!(!sb.path("secrets.enc.yaml").exists());
    assert!(!sb.path(".broker.yml").exists());

    // --remove-env without --from-env is a usage error.
    let out = sb.broker(&["init", "--remove-env"], &[]);
    assert_eq!(out.status.code(), Some(2));
}
