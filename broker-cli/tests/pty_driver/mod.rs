//! A pty for CLI tests: a small Python `pty.fork` driver, run as `python3 -c DRIVER CMD ARGS...`.

/// Runs argv[1:] on a new pty, copies what the pty shows to stdout; the command's stdout is
/// the file `TTY_STDOUT` when set; once the pty has shown `TTY_SEND_AFTER`, types
/// `TTY_SEND` (a Ctrl-C, say). Exits with the command's status (128+n for a signal). Kills
/// the command after 30 s.
pub const DRIVER: &str = r#"
import os, pty, select, sys, time
after = os.environ.get("TTY_SEND_AFTER")
send = os.environ.get("TTY_SEND", "").encode()
sent = after is None
pid, fd = pty.fork()
if pid == 0:
    path = os.environ.get("TTY_STDOUT")
    if path:
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
    os.execv(sys.argv[1], sys.argv[1:])
seen = b""
deadline = time.time() + 30
while True:
    if time.time() > deadline:
        os.kill(pid, 9)
        break
    if not sent and after.encode() in seen:
        os.write(fd, send)
        sent = True
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(seen)
sys.stdout.flush()
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"#;
