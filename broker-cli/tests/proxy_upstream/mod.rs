//! A local HTTPS upstream for the proxy tests: Python's standard library on 127.0.0.1 with a
//! certificate (SANs `localhost`, `127.0.0.1`) from its own test CA (`upstream-ca.pem` in the
//! test's dir), logging every request it receives as a JSON line (`upstream.jsonl`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A small HTTPS server (Python's standard library) that logs every request as a JSON line.
pub const UPSTREAM: &str = r#"
import http.server, json, ssl, sys
cert, key, port_file, log = sys.argv[1:5]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def serve(self):
        body = self.body().decode("utf-8", "replace")
        record = {"method": self.command, "path": self.path,
                  "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
        key = self.headers.get("Authorization") or self.headers.get("X-Api-Key") or ""
        if self.path.startswith("/reflect"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            text = ("you sent: " + key + " (twice: " + key + ")\n").encode()
            for i in range(0, len(text), 5):
                part = text[i:i + 5]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        out = json.dumps({"method": self.command, "path": self.path, "body": body}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = serve

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
"#;

/// Killed on drop.
pub struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes the upstream's CA and leaf (SANs localhost, 127.0.0.1) into `dir`.
pub fn upstream_certs(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "broker proxy test upstream CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let leaf = leaf_params
        .signed_by(&leaf_key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    std::fs::write(dir.join("upstream-ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("upstream.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("upstream-key.pem"), leaf_key.serialize_pem()).unwrap();
}

pub fn start_upstream(python: &Path, dir: &Path) -> (Killed, u16) {
    upstream_certs(dir);
    std::fs::write(dir.join("upstream.py"), UPSTREAM).unwrap();
    let port_file = dir.join("upstream.port");
    let child = Command::new(python)
        .arg(dir.join("upstream.py"))
        .arg(dir.join("upstream.pem"))
        .arg(dir.join("upstream-key.pem"))
        .arg(&port_file)
        .arg(dir.join("upstream.jsonl"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child);
    let start = Instant::now();
    loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            return (child, p.trim().parse().unwrap());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the upstream did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The JSON lines of `text` (the upstream's log, an audit log).
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The audit records of requests the proxy forwarded with a value.
pub fn forwarded(records: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    records
        .iter()
        .filter(|r| r["action"] == "proxy" && r["outcome"] == "forwarded")
        .collect()
}
