#!/usr/bin/env python3
"""A minimal client for `broker serve`, standard library only.

The daemon listens on a unix socket and takes the caller's identity from the kernel (the
socket peer's uid), so the agent holds no token, key or config: it connects and asks.

    client.py SOCKET manifest                 what this agent may request (secret-free)
    client.py SOCKET get NAME [--ttl 5m] [--scope JSON] [--reason TEXT]
                                              obtain one credential (a shorter ttl, a
                                              narrower scope, why it is asked for)

`get` prints the answer as JSON with the value replaced by `[REDACTED:NAME]` (and its length):
a real agent uses the value (sets it in a subprocess's environment, writes it to a 0600 file,
puts it in a request header) instead of printing it. `--reveal` prints it as is.

Errors are printed as `error: STATUS KIND: MESSAGE` on stderr (exit 1); the daemon's error
bodies never hold a value.
"""

import json
import socket
import sys


def call(sock_path, method, path, body=None):
    """One HTTP/1.1 request over the unix socket: (status, parsed JSON body)."""
    payload = b"" if body is None else json.dumps(body).encode()
    request = (
        f"{method} {path} HTTP/1.1\r\n"
        "Host: broker\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode() + payload
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(sock_path)
        s.sendall(request)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = dechunk(rest)
    elif "content-length" in headers:
        rest = rest[: int(headers["content-length"])]
    return status, json.loads(rest) if rest else None


def dechunk(data):
    """The body of a `Transfer-Encoding: chunked` answer."""
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def fail(status, body):
    error = (body or {}).get("error", {})
    kind = error.get("kind", "unknown")
    message = error.get("message", "no error body")
    print(f"error: {status} {kind}: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv):
    if len(argv) < 2 or argv[1] not in ("manifest", "get") or (argv[1] == "get" and len(argv) < 3):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    sock_path, command = argv[0], argv[1]
    if command == "manifest":
        status, body = call(sock_path, "GET", "/v1/manifest")
        if status != 200:
            fail(status, body)
        for entry in body["entries"]:
            print(json.dumps({k: entry[k] for k in ("credential", "delivered_as", "kind", "ttl")}))
        return 0

    name, rest = argv[2], argv[3:]
    request = {}
    reveal = "--reveal" in rest
    if "--ttl" in rest:
        request["ttl"] = rest[rest.index("--ttl") + 1]
    if "--scope" in rest:
        # e.g. '{"resources": ["arn:aws:s3:::bucket-a/reports/*"]}': may only narrow the config's.
        request["scope"] = json.loads(rest[rest.index("--scope") + 1])
    if "--reason" in rest:
        request["reason"] = rest[rest.index("--reason") + 1]
    status, body = call(sock_path, "POST", f"/v1/credentials/{name}", request)
    if status != 200:
        fail(status, body)
    value = body.pop("value")
    if not reveal:
        body["value_length"] = len(value)
        value = f"[REDACTED:{name}]"
        body["companions"] = {k: f"[REDACTED:{k}]" for k in body.get("companions", {})}
    body["value"] = value
    print(json.dumps(body, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
