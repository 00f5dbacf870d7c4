//! `broker run` with an `aws-sm://` and an `aws-sts://` credential against a fresh moto with IAM
//! enforcement on, and `broker credential-process` consumed by boto3 through a temp AWS config.
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use broker_core::testkit::{self, PeerProcess, assert_no_canary, require_peer};
use serde_json::Value;

struct Moto {
    peer: PeerProcess,
    fx: Value,
    python: PathBuf,
}

fn moto() -> Option<Moto> {
    let python = require_peer("python")?;
    let peer = testkit::Moto::start("moto-cli")?.peer;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker-aws/tests/support/moto_setup.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(peer.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "moto setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Moto {
        peer,
        fx: serde_json::from_slice(&out.stdout).unwrap(),
        python,
    })
}

impl Moto {
    fn s(&self, path: &str) -> String {
        self.fx
            .pointer(path)
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    /// A project dir with a .broker.yml for this moto.
    fn project(&self, extra: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"egress: {{ enabled: true }}
backends:
  aws:
    region: us-east-1
    endpoint_url: "{url}"
    access_key_id_ref: "env:TEST_BROKER_AWS_KEY_ID"
    secret_access_key_ref: "env:TEST_BROKER_AWS_SECRET"
credentials:
  api: {{ ref: "aws-sm://staging/api#token", as: API_TOKEN }}
  deploy:
    mint: "aws-sts://{role}"
    ttl: 15m
    scope: {{ actions: ["s3:GetObject"], resources: ["arn:aws:s3:::bucket-a/*"] }}
{extra}"#,
            url = self.peer.url(),
            role = self.s("/deploy_role"),
        );
        std::fs::write(dir.path().join(".broker.yml"), config).unwrap();
        dir
    }

    /// `broker ARGS` in `dir` with the broker's own (fake, moto-issued) keys in its env.
    fn broker(&self, dir: &Path, args: &[&str]) -> Output {
        // Empty AWS config files: nothing from this machine's ~/.aws leaks into the test.
        let (config, credentials) = (
            dir.join("empty-aws-config"),
            dir.join("empty-aws-credentials"),
        );
        std::fs::write(&config, "").unwrap();
        std::fs::write(&credentials, "").unwrap();
        Command::new(env!("CARGO_BIN_EXE_broker"))
            .args(args)
            .current_dir(dir)
            .env("TEST_BROKER_AWS_KEY_ID", self.s("/broker_key/id"))
            .env("TEST_BROKER_AWS_SECRET", self.s("/broker_key/secret"))
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env("AWS_CONFIG_FILE", config)
            .env("AWS_SHARED_CREDENTIALS_FILE", credentials)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("BROKER_AGENT_ID", "cli-test")
            .output()
            .unwrap()
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `stdout` with the request id that ends each STS session name (`AGENT@<32 hex>`, random per
/// request) replaced by `<request-id>`; panics if a session name has no such id.
fn stdout_masked(out: &Output) -> String {
    let text = stdout(out);
    let mut masked = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(":assumed-role/") {
        let at = i + rest[i..].find('@').unwrap() + 1;
        let id = &rest[at..];
        let n = id
            .find(|c: char| !matches!(c, '0'..='9' | 'a'..='f'))
            .unwrap_or(id.len());
        assert_eq!(n, 32, "no request id after the session name: {text}");
        masked.push_str(&rest[..at]);
        masked.push_str("<request-id>");
        rest = &id[n..];
    }
    masked + rest
}

/// A python snippet the child runs: it checks its env, calls STS and SM with the minted
/// credentials and prints only non-secret facts.
const CHILD: &str = r#"
import os, sys, json, boto3
assert "DEPLOY" not in os.environ, "the JSON document must not be dumped into the env"
token = os.environ["API_TOKEN"]
expected = sys.argv[2]
print("api token ok" if token == expected else "api token WRONG")
sts = boto3.client("sts", endpoint_url=sys.argv[1])
print("caller", sts.get_caller_identity()["Arn"])
print("region", os.environ["AWS_REGION"])
"#;

#[test]
fn run_with_aws_sm_and_aws_sts_under_iam_enforcement() {
    let Some(moto) = moto() else { return };
    let dir = moto.project("");
    let audit = moto.broker(dir.path(), &["audit", "--json"]);
    assert!(audit.status.success(), "{}", text(&audit));
    let manifest: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let backends: Vec<&str> = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["backend"].as_str().unwrap())
        .collect();
    assert_eq!(backends, ["aws", "aws"]);

    let token = moto.s("/values/token");
    let out = moto.broker(
        dir.path(),
        &[
            "run",
            "--",
            moto.python.to_str().unwrap(),
            "-c",
            CHILD,
            &moto.peer.url(),
            &token,
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(
        stdout_masked(&out),
        "api token ok\n\
         caller arn:aws:sts::123456789012:assumed-role/agent-deploy/cli-test@<request-id>\n\
         region us-east-1\n"
    );
    assert_eq!(stderr(&out), "");
    assert_no_canary(
        "broker run output",
        &all,
        &[&moto.s("/broker_key/secret"), &token],
    );

    // kind: file: AWS_SHARED_CREDENTIALS_FILE points at a 0600 credentials file.
    let dir = moto.project(
        "  deployfile:\n    mint: \"aws-sts://ROLE\"\n    kind: file\n"
            .replace("ROLE", &moto.s("/deploy_role"))
            .as_str(),
    );
    let child = r#"
import os, stat, boto3, sys
p = os.environ["AWS_SHARED_CREDENTIALS_FILE"]
assert p == os.environ["DEPLOYFILE"], (p, os.environ["DEPLOYFILE"])
assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    assert v not in os.environ, v
print("caller", boto3.client("sts", endpoint_url=sys.argv[1]).get_caller_identity()["Arn"])
"#;
    let out = moto.broker(
        dir.path(),
        &[
            "run",
            "--only",
            "deployfile",
            "--",
            moto.python.to_str().unwrap(),
            "-c",
            child,
            &moto.peer.url(),
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(
        stdout_masked(&out),
        "caller arn:aws:sts::123456789012:assumed-role/agent-deploy/cli-test@<request-id>\n"
    );
    assert_eq!(stderr(&out), "");

    // A role whose trust policy refuses the broker: one clear error naming the role.
    let dir = moto.project(&format!(
        "  refused: {{ mint: \"aws-sts://{}\" }}\n",
        moto.s("/refusing_role")
    ));
    let out = moto.broker(dir.path(), &["run", "--only", "refused", "--", "true"]);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert_eq!(stdout(&out), "");
    let role = moto.s("/refusing_role");
    assert_eq!(role, "arn:aws:iam::123456789012:role/someone-else");
    assert_eq!(
        stderr(&out),
        format!(
            "error: credential `refused` (aws-sts://{role}): AWS denied AssumeRole on role {role} (AccessDenied: User: arn:aws:iam::123456789012:user/broker is not authorized to perform: sts:AssumeRole)\n\
             hint: the role's trust policy must allow the broker's identity to call sts:AssumeRole (and sts:TagSession / sts:SetSourceIdentity when used)\n"
        )
    );
}

#[test]
fn credential_process_feeds_boto3() {
    let Some(moto) = moto() else { return };
    let dir = moto.project("");
    let aws_config = dir.path().join("aws-config");
    let broker = env!("CARGO_BIN_EXE_broker");
    std::fs::write(
        &aws_config,
        format!(
            "[profile brokered]\ncredential_process = {broker} --config {} credential-process deploy\nregion = us-east-1\n",
            dir.path().join(".broker.yml").display()
        ),
    )
    .unwrap();
    // The document itself.
    let out = moto.broker(dir.path(), &["credential-process", "deploy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(stderr(&out), "");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["Version"], 1);
    for key in [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(doc[key].is_string(), "{key}");
    }
    // A resolve credential is refused.
    let out = moto.broker(dir.path(), &["credential-process", "api"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "error: credential `api` is a `aws-sm:` reference; credential-process serves `aws-sts://` credentials\n\
         hint: declare it as `mint: \"aws-sts://ROLE_ARN\"`\n"
    );

    // boto3 runs the broker through the profile and the call succeeds against moto.
    let script = r#"
import sys, boto3
s = boto3.Session(profile_name="brokered")
print("caller", s.client("sts", endpoint_url=sys.argv[1]).get_caller_identity()["Arn"])
"#;
    let out = Command::new(&moto.python)
        .args(["-c", script, &moto.peer.url()])
        .current_dir(dir.path())
        .env("AWS_CONFIG_FILE", &aws_config)
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("empty-aws-credentials"),
        )
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("TEST_BROKER_AWS_KEY_ID", moto.s("/broker_key/id"))
        .env("TEST_BROKER_AWS_SECRET", moto.s("/broker_key/secret"))
        .env("BROKER_AGENT_ID", "boto3-test")
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(
        stdout_masked(&out),
        "caller arn:aws:sts::123456789012:assumed-role/agent-deploy/boto3-test@<request-id>\n"
    );
    assert_eq!(stderr(&out), "");
}
