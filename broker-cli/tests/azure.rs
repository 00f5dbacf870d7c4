//! `broker run` with `azurekv://` and `azure-token://` credentials against the Azure fake of
//! broker-azure's tests (Key Vault + Entra ID over HTTPS with a test CA, on 127.0.0.1), with
//! the broker's identity as a client secret, an App Service managed identity (endpoint and
//! header in the broker's environment) and the Azure CLI (a fake `az` on `PATH`).
#![cfg(feature = "azure")]
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs, dead_code)]

#[path = "../../broker-azure/tests/support/fake.rs"]
mod fake;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use broker_core::testkit::assert_no_canary;
use fake::{BROKER_APP, FakeAzure, MI_CLIENT, TENANT};

const SECRET: &str = "cli-client-secret-c4n4ry-93bd";
const TOKEN_FIELD: &str = "cli-api-token-c4n4ry-5e1f0a";

fn fixture() -> FakeAzure {
    let fake = FakeAzure::start(&["kv1"]);
    fake.app(BROKER_APP, Some(SECRET), false, &["get", "set", "list"]);
    fake.app(MI_CLIENT, None, false, &["get"]);
    fake.put(
        "kv1",
        "api",
        &format!(r#"{{"token":"{TOKEN_FIELD}"}}"#),
        Some("application/json"),
    );
    fake
}

fn project(fake: &FakeAzure, auth: &str, credentials: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"egress: {{ enabled: true }}
backends:
  azure:
    auth: {auth}
    authority_host: "{authority}"
    vault_suffix: "{suffix}"
    ca_cert: "{ca}"
credentials:
{credentials}"#,
        authority = fake.authority(),
        suffix = fake.vault_suffix(),
        ca = fake.ca_path.display(),
    );
    std::fs::write(dir.path().join(".broker.yml"), config).unwrap();
    dir
}

fn broker(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
    cmd.args(args)
        .current_dir(dir)
        .env("TEST_AZURE_CLIENT_SECRET", SECRET)
        .env_remove("IDENTITY_ENDPOINT")
        .env_remove("IDENTITY_HEADER")
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .env("BROKER_AGENT_ID", "cli-test");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
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

const SECRET_AUTH: &str = "{ method: client_secret, tenant_id: \"00000000-0000-0000-0000-0000000000aa\", client_id: \"11111111-1111-1111-1111-111111111111\", client_secret_ref: \"env:TEST_AZURE_CLIENT_SECRET\" }";

/// The child checks its variables against what it is told and prints only facts.
const CHILD: &str = r#"test "$API_TOKEN" = "$1" && echo "api token ok"
case "$AZURE_ACCESS_TOKEN" in eyFAKE.*) echo "access token ok";; *) echo "access token WRONG";; esac"#;

#[test]
fn run_with_azurekv_and_azure_token() {
    let fake = fixture();
    let dir = project(
        &fake,
        SECRET_AUTH,
        &format!(
            "  api: {{ ref: \"azurekv://kv1/api#token\", as: API_TOKEN }}\n  arm: {{ mint: \"azure-token://{TENANT}/{BROKER_APP}\", as: AZURE_ACCESS_TOKEN }}\n"
        ),
    );
    let audit = broker(dir.path(), &["audit", "--json"], &[]);
    assert!(audit.status.success(), "{}", text(&audit));
    let manifest: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let backends: Vec<&str> = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["backend"].as_str().unwrap())
        .collect();
    assert_eq!(backends, ["azure", "azure"]);

    let out = broker(
        dir.path(),
        &["run", "--", "sh", "-c", CHILD, "child", TOKEN_FIELD],
        &[],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(stdout(&out), "api token ok\naccess token ok\n");
    assert_eq!(stderr(&out), "");
    assert_no_canary("broker run output", &all, &[SECRET]);

    // A missing secret: one line naming the credential and the reference, and a hint.
    let dir = project(
        &fake,
        SECRET_AUTH,
        "  gone: { ref: \"azurekv://kv1/gone\" }\n",
    );
    let out = broker(dir.path(), &["run", "--", "true"], &[]);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "error: credential `gone` (azurekv://kv1/gone): secret `gone` in vault `kv1` not found (SecretNotFound: A secret with (name/id) gone was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182)\n\
         hint: check the vault name, the secret name and the version; `backends.azure.vault_suffix` for other clouds\n"
    );

    // A wrong client secret: authentication failed, Entra's reason, never the secret.
    let out = broker(
        project(
            &fake,
            SECRET_AUTH,
            "  api: { ref: \"azurekv://kv1/api#token\" }\n",
        )
        .path(),
        &["run", "--", "true"],
        &[("TEST_AZURE_CLIENT_SECRET", "not-the-secret")],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("AADSTS7000215"), "{}", text(&out));
    assert_no_canary("wrong secret", &text(&out), &[SECRET, TOKEN_FIELD]);
}

#[test]
fn app_service_managed_identity_from_the_environment() {
    let fake = fixture();
    let auth = format!("{{ method: managed_identity, client_id: \"{MI_CLIENT}\" }}");
    let dir = project(
        &fake,
        &auth,
        &format!(
            "  api: {{ ref: \"azurekv://kv1/api#token\", as: API_TOKEN }}\n  arm: {{ mint: \"azure-token://{TENANT}/{MI_CLIENT}\", as: AZURE_ACCESS_TOKEN }}\n"
        ),
    );
    let endpoint = format!("{}/msi/token", fake.authority());
    let header = fake.mi_header();
    let out = broker(
        dir.path(),
        &["run", "--", "sh", "-c", CHILD, "child", TOKEN_FIELD],
        &[
            ("IDENTITY_ENDPOINT", &endpoint),
            ("IDENTITY_HEADER", &header),
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(stdout(&out), "api token ok\naccess token ok\n");
    assert_eq!(stderr(&out), "");
    assert!(
        fake.log().iter().any(|l| l.contains("/msi/token")),
        "{:?}",
        fake.log()
    );
    // A wrong header: the endpoint refuses.
    let out = broker(
        dir.path(),
        &["run", "--only", "arm", "--", "true"],
        &[
            ("IDENTITY_ENDPOINT", &endpoint),
            ("IDENTITY_HEADER", "wrong"),
        ],
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr(&out).contains("azure-token://"), "{}", text(&out));
}

#[test]
fn azure_cli_identity_from_a_fake_az() {
    let fake = fixture();
    let bin = tempfile::tempdir().unwrap();
    let args_file = bin.path().join("args");
    let az = bin.path().join("az");
    std::fs::write(
        &az,
        format!(
            "#!/bin/sh\necho \"$@\" > '{}'\ncat <<'EOF'\n{{\"accessToken\": \"eyFAKE.from-az-cli\", \"expiresOn\": \"2099-01-01 00:00:00.000000\", \"expires_on\": 4070908800, \"subscription\": \"sub\", \"tenant\": \"{TENANT}\", \"tokenType\": \"Bearer\"}}\nEOF\n",
            args_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = project(
        &fake,
        &format!("{{ method: azure_cli, tenant_id: \"{TENANT}\" }}"),
        &format!(
            "  arm: {{ mint: \"azure-token://{TENANT}/{BROKER_APP}?scope=https://graph.microsoft.com/.default\", as: AZURE_ACCESS_TOKEN }}\n"
        ),
    );
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = broker(
        dir.path(),
        &[
            "run",
            "--",
            "sh",
            "-c",
            r#"test "$AZURE_ACCESS_TOKEN" = eyFAKE.from-az-cli && echo "cli token ok""#,
        ],
        &[("PATH", &path)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(stdout(&out), "cli token ok\n");
    assert_eq!(stderr(&out), "");
    let args = std::fs::read_to_string(&args_file).unwrap();
    assert_eq!(
        args.trim(),
        format!(
            "account get-access-token -o json --scope https://graph.microsoft.com/.default --tenant {TENANT}"
        )
    );
}
