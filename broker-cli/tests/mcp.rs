//! `broker mcp` driven by the official MCP Python SDK (`mcp` 2.3.0 from the peers venv) as the
//! real client, over stdio and over streamable HTTP.
//!
//! Canary values (an env credential, a `kind: file` one, a policy-denied one, a revealable one)
//! are delivered to commands that print them plainly (`printenv`), base64-encoded (`env |
//! base64`), hex- and JSON-encoded and one byte at a time to stderr; none may appear in any
//! tool result, in the server's stderr or in the audit log. Also: a child writing garbage to
//! its stdout does not disturb the JSON-RPC stream, tool schemas validate (jsonschema), a
//! denied or undeclared credential is a clear tool error with an audit record, a timeout kills
//! a child that ignores SIGTERM and its grandchild, an output flood is capped, the scratch dir
//! is wiped, and over HTTP a bearer token (verified against a JWKS made here) is the identity
//! while requests without one, or with a foreign `Host` or an `Origin`, are refused.
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

mod scratch_dirs;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

const API: &str = "canary-mcp-api-4be1c07f93d2a6";
const KEY: &str = "canary-mcp-key-\"q\"/\u{e9}-8c1d5e2f70";
const DB: &str = "canary-mcp-db-7a7e0c93f1b2d4";
const SHOWN: &str = "shown-mcp-value-51c0ffee77";
const SECRETS: [&str; 3] = [API, KEY, DB];

const CONFIG: &str = r#"credentials:
  api:   { ref: "env:MCP_API", as: API_TOKEN }
  key:   { ref: "env:MCP_KEY", as: KEY_FILE, kind: file }
  db:    { ref: "env:MCP_DB", as: DB_URL }
  shown: { ref: "env:MCP_SHOWN", as: SHOWN, mcp: { reveal: true } }
policy: policy.cedar
audit: { path: audit.jsonl }
"#;

const POLICY: &str = r#"@id("agents-read-local")
permit (principal, action == Action::"resolve", resource)
when { resource.badge == "local" };

@id("no-db")
forbid (principal, action, resource == Credential::"db");
"#;

/// Prints both file and env canaries hex- and JSON-encoded to stdout, then byte by byte to
/// stderr (one write per byte).
const LEAKY: &str = r#"
import binascii, json, os
values = [os.environ["API_TOKEN"], open(os.environ["KEY_FILE"], encoding="utf-8").read()]
for v in values:
    raw = v.encode()
    print(binascii.hexlify(raw).decode())
    print(binascii.hexlify(raw).decode().upper())
    print(json.dumps(v))
    print(json.dumps({"value": v}, ensure_ascii=False))
    for b in raw:
        os.write(2, bytes([b]))
    os.write(2, b"\n")
"#;

const CLIENT: &str = r#""""An MCP client (the official Python SDK) driving `broker mcp` through a JSON list of steps.

usage: client.py stdio BROKER CWD STEPS OUT ERRLOG
       client.py http URL TOKEN STEPS OUT

Each step is {"tool": NAME, "args": {...}} or {"list_tools": true}; the report written to OUT
has the tools (with their schemas checked by jsonschema), every result as the client received
it, and every exception the session saw on the stream (a corrupted message would be one).
"""
import asyncio
import json
import os
import sys

import jsonschema
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def check_schemas(tools):
    problems = []
    for tool in tools:
        for kind in ("inputSchema", "outputSchema"):
            schema = tool.get(kind)
            if schema is None:
                continue
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as e:
                problems.append(f"{tool['name']}.{kind}: {e.message}")
        if tool.get("inputSchema", {}).get("type") != "object":
            problems.append(f"{tool['name']}: inputSchema is not an object schema")
    return problems


async def drive(session, steps, stream_errors):
    report = {"steps": [], "stream_errors": stream_errors}
    init = await session.initialize()
    report["server"] = init.server_info.model_dump(mode="json")
    report["instructions"] = init.instructions
    tools = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in (await session.list_tools()).tools]
    report["tools"] = tools
    report["schema_problems"] = check_schemas(tools)
    by_name = {t["name"]: t for t in tools}
    for step in steps:
        if step.get("list_tools"):
            again = await session.list_tools()
            report["steps"].append({"tools": [t.name for t in again.tools]})
            continue
        tool = by_name.get(step["tool"])
        arg_problem = None
        if tool is not None:
            try:
                jsonschema.validate(step.get("args", {}), tool["inputSchema"])
            except jsonschema.ValidationError as e:
                arg_problem = e.message
        try:
            result = await session.call_tool(step["tool"], step.get("args", {}))
            entry = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        except Exception as e:  # a protocol error is a result too
            entry = {"exception": f"{type(e).__name__}: {e}"}
        entry["arg_problem"] = arg_problem
        structured = entry.get("structuredContent")
        if tool is not None and structured is not None and tool.get("outputSchema") and not entry.get("isError"):
            try:
                jsonschema.validate(structured, tool["outputSchema"])
            except jsonschema.ValidationError as e:
                entry["output_problem"] = e.message
        report["steps"].append(entry)
    return report


async def main():
    mode = sys.argv[1]
    stream_errors = []

    async def on_message(message):
        if isinstance(message, Exception):
            stream_errors.append(f"{type(message).__name__}: {message}")

    if mode == "stdio":
        broker, cwd, steps_path, out, errlog = sys.argv[2:7]
        steps = json.load(open(steps_path))
        params = StdioServerParameters(
            command=broker, args=["mcp"], cwd=cwd, env=dict(os.environ)
        )
        with open(errlog, "w") as err:
            async with stdio_client(params, errlog=err) as (read, write):
                async with ClientSession(read, write, message_handler=on_message) as session:
                    report = await drive(session, steps, stream_errors)
    else:
        url, token, steps_path, out = sys.argv[2:6]
        steps = json.load(open(steps_path))
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with client:
            async with streamable_http_client(url, http_client=client) as (read, write):
                async with ClientSession(read, write, message_handler=on_message) as session:
                    report = await drive(session, steps, stream_errors)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)


asyncio.run(main())
"#;

struct Sandbox {
    dir: tempfile::TempDir,
    runtime: tempfile::TempDir,
    python: PathBuf,
}

impl Sandbox {
    fn new(extra_config: &str) -> Option<Sandbox> {
        let python = mcp_python()?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".broker.yml"),
            format!("{CONFIG}{extra_config}"),
        )
        .unwrap();
        std::fs::write(dir.path().join("policy.cedar"), POLICY).unwrap();
        std::fs::write(dir.path().join("client.py"), CLIENT).unwrap();
        // 0700, or the broker skips it as `XDG_RUNTIME_DIR` (a temp dir is made 0755) and
        // its scratch dirs land in `/dev/shm`, where `scratch_dirs` does not look.
        let runtime = tempfile::tempdir().unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700))
                .unwrap();
        }
        Some(Sandbox {
            dir,
            runtime,
            python,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The environment the server starts with: the canary sources, and a scratch root of our own.
    fn env(&self, cmd: &mut Command) {
        cmd.env("MCP_API", API)
            .env("MCP_KEY", KEY)
            .env("MCP_DB", DB)
            .env("MCP_SHOWN", SHOWN)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env_remove("BROKER_CONFIG")
            .env_remove("BROKER_LOG")
            .env_remove("BROKER_AGENT_ID");
    }

    /// Runs the Python client with `args` and `steps`; returns its report.
    fn client(&self, args: &[&str], steps: &Value) -> Value {
        std::fs::write(self.path("steps.json"), steps.to_string()).unwrap();
        let mut cmd = Command::new(&self.python);
        cmd.arg(self.path("client.py"))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        self.env(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "the MCP client failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&std::fs::read(self.path("report.json")).unwrap()).unwrap()
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.path("audit.jsonl")).unwrap_or_default()
    }

    fn audit_records(&self) -> Vec<Value> {
        self.audit()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The scratch dirs the runs left (see the shared `scratch_dirs` module).
    fn scratch_dirs(&self) -> Vec<PathBuf> {
        scratch_dirs::scratch_dirs(self.runtime.path())
    }
}

/// The peers venv's Python, when it has the MCP SDK (a skip otherwise; a failure under CI).
fn mcp_python() -> Option<PathBuf> {
    let python = broker_core::testkit::require_peer("python")?;
    let ok = Command::new(&python)
        .args(["-c", "import mcp, jsonschema"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    if std::env::var_os("CI").is_some() {
        panic!("the MCP Python SDK is not installed; CI must run `cargo xtask setup` first");
    }
    broker_core::testkit::record_skip("the MCP Python SDK (mcp==2.3.0) is not in the peers venv");
    None
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` holds none of the canaries, nor their common encodings.
fn assert_clean(what: &str, text: &str, values: &[&str]) {
    for v in values {
        let forms = [
            v.to_string(),
            hex(v.as_bytes()),
            hex(v.as_bytes()).to_uppercase(),
            base64::engine::general_purpose::STANDARD.encode(v),
            serde_json::to_string(v).unwrap(),
        ];
        for form in forms {
            assert!(
                !text.contains(&form),
                "{what} holds a canary value (or an encoding of it)"
            );
        }
    }
}

fn run(argv: &[&str], credentials: &[&str]) -> Value {
    json!({ "tool": "run", "args": { "argv": argv, "credentials": credentials } })
}

fn structured(step: &Value) -> &Value {
    assert_eq!(step["isError"], json!(false), "tool error: {step}");
    &step["structuredContent"]
}

fn text(step: &Value) -> String {
    step["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn tool_names(report: &Value) -> Vec<String> {
    let mut names: Vec<String> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Whether `pid` is gone (or a zombie nobody reaped yet), waiting up to 10 s for it.
fn process_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        };
        if gone || Instant::now() > deadline {
            return gone;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stdio_an_agent_runs_commands_with_credentials_it_never_sees() {
    let Some(sandbox) = Sandbox::new("mcp: { agent: Test-Agent }\n") else {
        return;
    };
    let python = sandbox.python.to_str().unwrap();
    let dir = sandbox.dir.path().to_str().unwrap();
    let grandchild = sandbox.path("grandchild.pid");
    let steps = json!([
        { "tool": "list_credentials", "args": {} },
        run(&["printenv"], &["api", "key"]),
        run(&["sh", "-c", "env | base64"], &["api", "key"]),
        run(&[python, "-c", LEAKY], &["api", "key"]),
        run(&["sh", "-c", "printf 'garbage\\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\\n\\001\\377'; printf 'Content-Length: 5\\r\\n\\r\\n'"], &["api"]),
        { "list_tools": true },
        run(&["printenv"], &["db"]),
        run(&["printenv"], &["nope"]),
        { "tool": "run", "args": {
            "argv": ["sh", "-c", format!("trap '' TERM; sh -c 'echo $$ > {}; exec sleep 300' & sleep 300", grandchild.display())],
            "credentials": ["api"], "timeout_seconds": 1, "cwd": dir } },
        { "tool": "run", "args": {
            "argv": ["sh", "-c", "head -c 2000000 /dev/zero | tr '\\000' a; echo done >&2"],
            "max_output_bytes": 4096 } },
        { "tool": "reveal_credential", "args": { "name": "shown", "reason": "the test asks" } },
        { "tool": "reveal_credential", "args": { "name": "api" } },
        run(&["sh", "-c", "exit 3"], &[]),
    ]);
    let broker = env!("CARGO_BIN_EXE_broker");
    let report = sandbox.client(
        &[
            "stdio",
            broker,
            dir,
            "steps.json",
            "report.json",
            "server.log",
        ],
        &steps,
    );
    let steps = report["steps"].as_array().unwrap();

    // Initialize, list tools, schemas.
    assert_eq!(report["server"]["name"], json!("broker"));
    assert!(
        report["instructions"]
            .as_str()
            .unwrap()
            .contains("never shown")
    );
    assert_eq!(
        tool_names(&report),
        ["list_credentials", "reveal_credential", "run"]
    );
    assert_eq!(report["schema_problems"], json!([]), "{report}");
    assert_eq!(
        report["stream_errors"],
        json!([]),
        "the JSON-RPC stream was disturbed"
    );
    for tool in report["tools"].as_array().unwrap() {
        assert!(
            tool["description"]
                .as_str()
                .unwrap()
                .contains("never shown"),
            "{tool}"
        );
    }
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step.get("exception"), None, "step {i}: {step}");
        assert_eq!(step["arg_problem"], Value::Null, "step {i}: {step}");
        assert_eq!(step.get("output_problem"), None, "step {i}: {step}");
    }

    // list_credentials: the manifest, filtered by policy (db is forbidden), no values.
    let listed = structured(&steps[0]);
    assert_eq!(listed["agent"], json!("test-agent"));
    let names: Vec<&str> = listed["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["credential"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "key", "shown"]);
    let key = &listed["credentials"][1];
    assert_eq!(key["delivered_as"], json!("KEY_FILE"));
    assert_eq!(key["kind"], json!("file"));
    assert_eq!(key["badge"], json!("local"));
    assert_eq!(key["reference"], json!("env:MCP_KEY"));
    assert_eq!(listed["credentials"][2]["revealable"], json!(true));
    assert_eq!(listed["credentials"][0]["revealable"], json!(false));

    // printenv: delivered, redacted; only the pass-through variables besides.
    let out = structured(&steps[1]);
    assert_eq!(out["exit_code"], json!(0));
    let stdout = out["stdout"].as_str().unwrap();
    assert!(stdout.contains("API_TOKEN=[REDACTED:api]\n"), "{stdout}");
    assert!(stdout.contains("KEY_FILE="), "{stdout}");
    assert!(
        !stdout.contains("MCP_API="),
        "the server's environment leaked: {stdout}"
    );
    assert!(
        !stdout.contains("MCP_SHOWN="),
        "the server's environment leaked: {stdout}"
    );
    assert_eq!(out["credentials"], json!(["api", "key"]));

    // env | base64: the value inside a longer base64 text is found too.
    let out = structured(&steps[2]);
    assert_eq!(out["exit_code"], json!(0));
    assert!(
        out["stdout"].as_str().unwrap().contains("[REDACTED:api]"),
        "{out}"
    );

    // hex, JSON, byte by byte to stderr.
    let out = structured(&steps[3]);
    assert_eq!(out["exit_code"], json!(0), "{out}");
    let stdout = out["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("[REDACTED:api]") && stdout.contains("[REDACTED:key]"),
        "{stdout}"
    );
    let stderr = out["stderr"].as_str().unwrap();
    assert_eq!(stderr, "[REDACTED:api]\n[REDACTED:key]\n");

    // Garbage on the child's fd 1 is its output, not protocol: the stream went on.
    let out = structured(&steps[4]);
    assert!(
        out["stdout"].as_str().unwrap().starts_with("garbage\n"),
        "{out}"
    );
    assert_eq!(steps[5]["tools"].as_array().unwrap().len(), 3);

    // Denied by policy, and undeclared: clear tool errors.
    assert_eq!(steps[6]["isError"], json!(true));
    let denied = text(&steps[6]);
    assert!(
        denied.starts_with("error: credential `db`: denied by policy: forbidden by no-db"),
        "{denied}"
    );
    assert_eq!(steps[7]["isError"], json!(true));
    assert!(
        text(&steps[7]).contains("no credential named `nope`"),
        "{}",
        text(&steps[7])
    );

    // Timeout: the TERM-ignoring child and its grandchild are killed.
    let out = structured(&steps[8]);
    assert_eq!(out["timed_out"], json!(true), "{out}");
    assert_eq!(out["signal"], json!(9), "{out}");
    let pid: u32 = std::fs::read_to_string(&grandchild)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        process_gone(pid),
        "the grandchild {pid} survived the timeout"
    );

    // Flood: capped, flagged, the command ran to its end.
    let out = structured(&steps[9]);
    assert_eq!(out["truncated"], json!(true));
    assert_eq!(out["exit_code"], json!(0));
    assert_eq!(out["stdout"].as_str().unwrap().len(), 4096);
    assert_eq!(out["stderr"], json!("done\n"));

    // Reveal: only the revealable one.
    assert_eq!(steps[10]["isError"], json!(false));
    assert_eq!(text(&steps[10]), SHOWN);
    assert_eq!(steps[11]["isError"], json!(true));
    assert!(text(&steps[11]).contains("credential `api` cannot be revealed"));

    assert_eq!(structured(&steps[12])["exit_code"], json!(3));

    // No value in any tool result (but the revealed one), the server's log, or the audit log.
    let mut results = report.clone();
    results["steps"][10] = Value::Null;
    assert_clean("a tool result", &results.to_string(), &SECRETS);
    assert_clean("a tool result", &results.to_string(), &[SHOWN]);
    let log = std::fs::read_to_string(sandbox.path("server.log")).unwrap();
    assert_clean("the server's stderr", &log, &SECRETS);
    assert_clean("the server's stderr", &log, &[SHOWN]);
    let audit = sandbox.audit();
    assert_clean("the audit log", &audit, &SECRETS);
    assert_clean("the audit log", &audit, &[SHOWN]);

    // Audit: the stdio agent id, the refusals, the reveal.
    let records = sandbox.audit_records();
    let find = |pred: &dyn Fn(&Value) -> bool| records.iter().find(|r| pred(r)).cloned();
    let denied = find(&|r| r["credential"] == json!("db") && r["decision"] == json!("denied"))
        .expect("a record of the refusal");
    assert_eq!(denied["agent_id"], json!("test-agent"));
    assert!(
        denied["identity"]
            .as_str()
            .unwrap()
            .starts_with("mcp stdio")
    );
    find(&|r| r["credential"] == json!("nope") && r["decision"] == json!("denied"))
        .expect("a record of the undeclared name");
    let revealed = find(&|r| r["outcome"] == json!("revealed")).expect("a record of the reveal");
    assert_eq!(revealed["credential"], json!("shown"));
    assert_eq!(revealed["purpose"], json!("the test asks"));
    find(&|r| r["outcome"] == json!("reveal_refused") && r["credential"] == json!("api"))
        .expect("a record of the refused reveal");
    let verify = Command::new(broker)
        .args([
            "audit",
            "verify",
            sandbox.path("audit.jsonl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // Every scratch dir was wiped.
    assert_eq!(sandbox.scratch_dirs(), Vec::<PathBuf>::new());
}

/// An ES256 key, its JWKS, and a token it signs.
struct Issuer {
    key: ring::signature::EcdsaKeyPair,
}

const ISSUER: &str = "https://issuer.test";

impl Issuer {
    fn new() -> Issuer {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Issuer { key }
    }

    fn jwks(&self) -> String {
        use ring::signature::KeyPair;
        let point = self.key.public_key().as_ref();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
            "x": b64.encode(&point[1..33]), "y": b64.encode(&point[33..65]),
        }]})
        .to_string()
    }

    fn token(&self, subject: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = b64.encode(json!({ "alg": "ES256", "typ": "JWT", "kid": "k1" }).to_string());
        let claims = b64.encode(
            json!({ "iss": ISSUER, "aud": "broker-mcp", "sub": subject, "iat": now, "exp": now + 600 })
                .to_string(),
        );
        let signing_input = format!("{header}.{claims}");
        let rng = ring::rand::SystemRandom::new();
        let signature = self.key.sign(&rng, signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", b64.encode(signature.as_ref()))
    }
}

/// `broker mcp --listen 127.0.0.1:0`, its address, and its stderr as it comes.
struct Server {
    child: std::process::Child,
    addr: SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(sandbox: &Sandbox) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
        cmd.args(["mcp", "--listen", "127.0.0.1:0"])
            .current_dir(sandbox.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        sandbox.env(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let addr = loop {
            let line = lines
                .next()
                .expect("broker mcp exited before listening")
                .unwrap();
            stderr.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(rest) = line.strip_prefix("broker mcp: listening on http://") {
                break rest.trim_end_matches("/mcp").parse().unwrap();
            }
        };
        let sink = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Server {
            child,
            addr,
            stderr,
        }
    }

    /// One raw POST of an `initialize` request; returns the status code.
    fn status(&self, headers: &[(&str, String)]) -> u16 {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": { "name": "raw", "version": "0" } } })
        .to_string();
        let mut request = format!(
            "POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if !headers.iter().any(|(k, _)| *k == "Host") {
            request.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"))
    }

    fn stop(mut self) -> String {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "broker mcp --listen ended with {status}");
        std::thread::sleep(Duration::from_millis(100));
        self.stderr.lock().unwrap().clone()
    }
}

#[test]
fn http_bearer_token_is_the_identity_and_values_stay_out() {
    let extra = r#"mcp: { allow_programs: [printenv] }
serve:
  jwt: { issuer: "https://issuer.test", audience: broker-mcp, jwks_file: jwks.json, algorithms: [ES256] }
"#;
    let Some(sandbox) = Sandbox::new(extra) else {
        return;
    };
    let issuer = Issuer::new();
    std::fs::write(sandbox.path("jwks.json"), issuer.jwks()).unwrap();
    let token = issuer.token("HTTP-Agent");
    let server = Server::start(&sandbox);

    // Refused before the MCP layer: no token, a forged one; by the SDK: a foreign Host
    // (DNS rebinding) or any Origin (a browser page).
    let bearer = format!("Bearer {token}");
    assert_eq!(server.status(&[]), 401);
    let forged = format!("Bearer {}x", &token[..token.len() - 1]);
    assert_eq!(server.status(&[("Authorization", forged)]), 401);
    let foreign_host = server.status(&[
        ("Authorization", bearer.clone()),
        ("Host", format!("evil.example:{}", server.addr.port())),
    ]);
    assert!((400..500).contains(&foreign_host), "{foreign_host}");
    let origin = server.status(&[
        ("Authorization", bearer.clone()),
        ("Origin", "http://evil.example".into()),
    ]);
    assert!((400..500).contains(&origin), "{origin}");
    assert_eq!(server.status(&[("Authorization", bearer.clone())]), 200);

    let steps = json!([
        { "tool": "list_credentials", "args": {} },
        run(&["printenv"], &["api", "key"]),
        run(&["sh", "-c", "printenv"], &["api"]),
        run(&["printenv"], &["db"]),
        { "tool": "reveal_credential", "args": { "name": "shown" } },
    ]);
    let url = format!("http://{}/mcp", server.addr);
    let report = sandbox.client(&["http", &url, &token, "steps.json", "report.json"], &steps);
    let log = server.stop();
    let steps = report["steps"].as_array().unwrap();

    assert_eq!(
        tool_names(&report),
        ["list_credentials", "reveal_credential", "run"]
    );
    assert_eq!(report["schema_problems"], json!([]), "{report}");
    assert_eq!(report["stream_errors"], json!([]));
    let listed = structured(&steps[0]);
    assert_eq!(listed["agent"], json!("http-agent"));
    let out = structured(&steps[1]);
    assert!(
        out["stdout"]
            .as_str()
            .unwrap()
            .contains("API_TOKEN=[REDACTED:api]\n"),
        "{out}"
    );
    // mcp.allow_programs: `sh` is not on the list.
    assert_eq!(steps[2]["isError"], json!(true));
    assert!(
        text(&steps[2]).contains("`sh` is not in `mcp.allow_programs`"),
        "{}",
        text(&steps[2])
    );
    assert_eq!(steps[3]["isError"], json!(true));
    assert!(text(&steps[3]).contains("denied by policy"));
    assert_eq!(text(&steps[4]), SHOWN);

    let mut results = report.clone();
    results["steps"][4] = Value::Null;
    assert_clean("a tool result", &results.to_string(), &SECRETS);
    assert_clean("a tool result", &results.to_string(), &[SHOWN]);
    assert_clean("the server's stderr", &log, &SECRETS);
    assert_clean("the server's stderr", &log, &[SHOWN]);
    assert!(
        !log.contains(&token[token.len() - 20..]),
        "the token reached the log"
    );
    let audit = sandbox.audit();
    assert_clean("the audit log", &audit, &SECRETS);
    assert_clean("the audit log", &audit, &[SHOWN]);
    assert!(
        !audit.contains(&token[token.len() - 20..]),
        "the token reached the audit log"
    );

    // The token's subject is the agent; the refusals are on record.
    let records = sandbox.audit_records();
    let issued = records
        .iter()
        .find(|r| r["event"] == json!("issuance") && r["credential"] == json!("api"))
        .expect("an issuance record");
    assert_eq!(issued["agent_id"], json!("http-agent"));
    assert!(
        issued["identity"]
            .as_str()
            .unwrap()
            .starts_with("jwt iss=https://issuer.test sub=HTTP-Agent"),
        "{issued}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["outcome"] == json!("program_refused"))
    );
    assert!(
        records
            .iter()
            .any(|r| r["outcome"] == json!("mcp_token_refused"))
    );
    assert!(
        records
            .iter()
            .any(|r| r["credential"] == json!("db") && r["decision"] == json!("denied"))
    );
    assert_eq!(sandbox.scratch_dirs(), Vec::<PathBuf>::new());
}

#[test]
fn http_refuses_non_loopback_addresses_and_configs_without_a_token_verifier() {
    let Some(sandbox) = Sandbox::new("") else {
        return;
    };
    let broker = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
        cmd.args(args)
            .current_dir(sandbox.dir.path())
            .stdin(Stdio::null());
        sandbox.env(&mut cmd);
        cmd.output().unwrap()
    };
    let out = broker(&["mcp", "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only loopback addresses are accepted"));
    let out = broker(&["mcp", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`serve.jwt` is not set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An issuer vouches for callers nobody listed: without a policy, refused.
    let without_policy = CONFIG.replace("policy: policy.cedar\n", "")
        + "serve:\n  jwt: { issuer: \"https://issuer.test\", audience: broker-mcp, jwks_file: jwks.json, algorithms: [ES256] }\n";
    std::fs::write(sandbox.path(".broker.yml"), without_policy).unwrap();
    std::fs::write(sandbox.path("jwks.json"), r#"{"keys": []}"#).unwrap();
    let out = broker(&["mcp", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: `broker mcp --listen` accepts any token `serve.jwt`'s issuer signs for the audience, and without a policy file each caller would get every credential\n\
         hint: add `policy: FILE.cedar` that says which principals may have what (docs/serve.md, Identity)\n"
    );
}

#[test]
fn the_example_config_loads() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/mcp/.broker.yml");
    let out = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["--config", config, "audit", "--json"])
        .env_remove("BROKER_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["credential"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "db", "deploy-key"]);
}
