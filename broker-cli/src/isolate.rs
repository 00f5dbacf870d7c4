//! `broker run --isolate`: the command runs in a network namespace of its own whose only way
//! out is the run's egress proxy. The user-facing description is `docs/proxy.md`
//! ("Isolation").
//!
//! The broker is multi-threaded by the time it runs the command (output pumps, the proxy),
//! and the kernel refuses a new user namespace to a multi-threaded process. So the broker
//! runs this binary again as a hidden, single-threaded helper (`broker __isolate`) in the
//! command's place — with the command's environment, standard streams, process group or
//! session and controlling terminal — and the helper:
//!
//! 1. calls `unshare(CLONE_NEWUSER | CLONE_NEWNET)` ([`crate::sys::unshare_user_and_net`]),
//!    writes `/proc/self/setgroups` (`deny`), `uid_map` and `gid_map` (the caller's uid and
//!    gid to themselves, and only those), and brings `lo` up over rtnetlink — still
//!    single-threaded;
//! 2. listens on `127.0.0.1:PORT` inside the namespace — the port the child's proxy
//!    variables name — and relays each connection to the proxy's unix socket outside (a
//!    filesystem socket, which crosses network namespaces; its directory is the broker's
//!    0700 scratch dir);
//! 3. runs the command (which dies with the helper: `PR_SET_PDEATHSIG`), and exits with its
//!    status: its exit code, or 128+n when signal n killed it.
//!
//! Before that (still single-threaded) it marks every descriptor but the standard streams
//! close-on-exec ([`crate::sys::cloexec_above_stderr`]): a socket the broker inherited keeps
//! the network namespace it was made in, and would be a way out. The relay carries at most
//! [`MAX_CONNECTIONS`] connections at once, as many as the proxy takes.
//!
//! Signals: when the helper leads its own process group (the usual case) the broker signals
//! that group, which the command is in too, so the helper only catches SIGINT, SIGTERM,
//! SIGHUP and SIGQUIT (to outlive them and pass the command's status on). When it shares
//! the terminal's foreground group, the terminal delivers SIGINT and SIGQUIT to the command
//! itself and the broker forwards SIGTERM and SIGHUP to the helper, which passes them on.
//! A command that left the helper's group for one of its own (`setsid`, `setpgid`, an
//! interactive shell) gets SIGTERM and SIGHUP from the helper, sent to that group, and when it
//! exits the helper kills what it left running there (SIGKILL); one that joined another
//! group gets them alone. (A job it moves to a session of its own is out of reach: there is
//! no pid namespace.) A signal that arrives before the
//! command is started ends the helper with 128+n, and the command is not run.
//!
//! Before resolving anything, `broker run --isolate` runs the helper once with `--probe`: where
//! namespaces cannot be created (user namespaces disabled, a limit reached, a seccomp filter),
//! the run is refused with one line and exit code [`exit::OSERR`], and the command never
//! runs unisolated. So is a run whose scratch root is too long a path for the proxy's unix
//! socket (exit code [`exit::CONFIG`]).

use std::ffi::OsString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::net::{TcpListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;

use broker_proxy::server::MAX_CONNECTIONS;

use crate::cli::IsolateArgs;
use crate::exit;

/// The helper's first argument.
pub const HELPER: &str = "__isolate";

/// This very executable, even when its path is not reachable (a directory the user may not
/// search) or the file was replaced since the broker started.
const SELF_EXE: &str = "/proc/self/exe";

/// `lo` in a new network namespace (the kernel's `LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: i32 = 1;

/// Checks, before anything is resolved, that the helper can create its namespaces. `None`
/// when it can; otherwise the reason has been printed (one line) and the run must exit with
/// the returned code.
pub fn refuse_unless_available() -> Option<u8> {
    use std::os::unix::process::CommandExt;
    if let Err(line) = socket_path_fits() {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        return Some(exit::CONFIG);
    }
    let output = std::process::Command::new(SELF_EXE)
        .arg0("broker")
        .args([HELPER, "--probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let line = match output {
        Ok(out) if out.status.success() => return None,
        Ok(out) if out.status.code() == Some(exit::OSERR.into()) && !out.stderr.is_empty() => {
            String::from_utf8_lossy(&out.stderr).trim_end().to_string()
        }
        Ok(out) => format!(
            "error: --isolate: the namespace check failed ({}); the command was not run",
            out.status
        ),
        Err(e) => format!(
            "error: --isolate: cannot run the namespace check ({e}); the command was not run"
        ),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    Some(exit::OSERR)
}

/// The longest path a unix socket address holds (`sun_path`, 108 bytes with its NUL).
const SUN_PATH_MAX: usize = 107;

/// Checks that the proxy's unix socket, `ROOT/broker-UID/broker-scratch-PID-START-RANDOM/
/// proxy.sock` in the per-user parent the run will use, fits a socket address; the error is
/// the line to print. Checked up front: the socket is made only after the credentials are
/// resolved.
fn socket_path_fits() -> Result<(), String> {
    // No usable root: the run fails later with the scratch dir's own error.
    let Some(root) = broker_core::scratch::scratch_parent() else {
        return Ok(());
    };
    let pid = std::process::id();
    let start = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_comm = stat.get(stat.rfind(')')? + 2..)?;
            after_comm.split_whitespace().nth(19)?.parse::<u64>().ok()
        })
        .unwrap_or(u64::MAX); // unknown: assume the longest
    let name = format!(
        "{}{pid}-{start}-{:016x}",
        broker_core::scratch::DIR_PREFIX,
        0u64
    );
    let len = root.join(name).join(SOCKET_NAME).as_os_str().len();
    if len <= SUN_PATH_MAX {
        return Ok(());
    }
    Err(format!(
        "error: --isolate: the proxy's socket under {} would have a path longer than a unix socket allows ({SUN_PATH_MAX} bytes); set XDG_RUNTIME_DIR or TMPDIR to a shorter directory; the command was not run",
        root.display()
    ))
}

/// The proxy socket's name in the run's scratch dir (`broker_proxy::RunProxy`).
const SOCKET_NAME: &str = "proxy.sock";

/// The command that runs `program` isolated: this binary as the helper, relaying
/// `127.0.0.1:port` inside the namespace to `socket`.
pub fn command(
    program: &OsString,
    rest: &[OsString],
    socket: &Path,
    port: u16,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(SELF_EXE);
    cmd.arg0("broker")
        .arg(HELPER)
        .arg("--socket")
        .arg(socket)
        .arg("--port")
        .arg(port.to_string())
        .arg("--")
        .arg(program)
        .args(rest);
    cmd
}

/// `broker __isolate ...`: the helper's whole life. Runs before the broker's own setup (no
/// runtime, no thread, no logging), since namespaces must be created single-threaded.
pub fn main() -> ExitCode {
    use clap::Parser;
    // The first argument, `__isolate`, stands in for the binary's name.
    match IsolateArgs::try_parse_from(std::env::args_os().skip(1)) {
        Ok(args) => helper(&args),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(exit::USAGE)
        }
    }
}

fn helper(args: &IsolateArgs) -> ExitCode {
    if let Err(line) = enter_namespaces() {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        return ExitCode::from(exit::OSERR);
    }
    if args.probe {
        return ExitCode::SUCCESS;
    }
    let (Some(socket), Some(port), Some((program, rest))) =
        (&args.socket, args.port, args.command.split_first())
    else {
        let _ = writeln!(
            std::io::stderr().lock(),
            "error: --isolate: the helper needs --socket, --port and a command"
        );
        return ExitCode::from(exit::USAGE);
    };
    // Nothing but the standard streams reaches the command: an inherited socket would keep
    // the network namespace it was made in.
    if let Err(e) = crate::sys::cloexec_above_stderr() {
        let _ = writeln!(
            std::io::stderr().lock(),
            "error: --isolate: cannot keep inherited descriptors from the command: {e}; the command was not run"
        );
        return ExitCode::from(exit::OSERR);
    }
    // Threads are allowed from here on.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "error: --isolate: cannot start the async runtime: {e}"
            );
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    ExitCode::from(runtime.block_on(supervise(socket.clone(), port, program, rest)))
}

/// Step 1 (see the module docs); the error is the line to print.
fn enter_namespaces() -> Result<(), String> {
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    crate::sys::unshare_user_and_net().map_err(|e| {
        format!(
            "error: --isolate: cannot create a network namespace: {}; the command was not run",
            unavailable(&e)
        )
    })?;
    // Our own uid and gid, mapped to themselves (after giving up setgroups, as the kernel
    // requires). Only that: a process inside the new namespace may not map other ids, root
    // included, so other users' files show as `nobody` inside.
    let uid_map = format!("{uid} {uid} 1\n");
    let gid_map = format!("{gid} {gid} 1\n");
    let setup_failed = |what: &str, e: std::io::Error| {
        format!(
            "error: --isolate: cannot set up the user namespace ({what}: {e}); the command was not run"
        )
    };
    match write_proc("/proc/self/setgroups", "deny") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(setup_failed("/proc/self/setgroups", e));
        }
        _ => {}
    }
    write_proc("/proc/self/uid_map", &uid_map)
        .map_err(|e| setup_failed("/proc/self/uid_map", e))?;
    write_proc("/proc/self/gid_map", &gid_map)
        .map_err(|e| setup_failed("/proc/self/gid_map", e))?;
    loopback_up().map_err(|e| {
        format!(
            "error: --isolate: cannot bring up the namespace's loopback interface: {e}; the command was not run"
        )
    })
}

/// Why `unshare` failed, in words.
fn unavailable(e: &std::io::Error) -> String {
    match rustix::io::Errno::from_io_error(e) {
        Some(rustix::io::Errno::NOSPC) => {
            "the limit on user namespaces is reached (sysctl user.max_user_namespaces)".into()
        }
        Some(rustix::io::Errno::PERM) => format!(
            "user namespaces are not permitted here (a seccomp filter, a security module or a sysctl forbids them: {e})"
        ),
        Some(rustix::io::Errno::INVAL) => {
            format!("user or network namespaces are not supported here ({e})")
        }
        _ => format!("unshare failed ({e})"),
    }
}

/// One `write` to a `/proc` file (the id maps must be written in a single call).
fn write_proc(path: &str, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let written = file.write(text.as_bytes())?;
    if written != text.len() {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    Ok(())
}

/// Sets `IFF_UP` on `lo` with one rtnetlink `RTM_NEWLINK` request and reads the kernel's
/// acknowledgement.
fn loopback_up() -> std::io::Result<()> {
    use rustix::net::netlink::SocketAddrNetlink;
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_ACK: u16 = 0x4;
    const NLMSG_ERROR: u16 = 2;
    const IFF_UP: u32 = 0x1;
    const LEN: u32 = 16 + 16; // nlmsghdr + ifinfomsg

    // `None`: NETLINK_ROUTE, protocol 0.
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let mut msg = Vec::with_capacity(LEN as usize);
    // struct nlmsghdr
    msg.extend_from_slice(&LEN.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns it
    // struct ifinfomsg
    msg.push(0); // AF_UNSPEC
    msg.push(0); // padding
    msg.extend_from_slice(&0u16.to_ne_bytes()); // device type
    msg.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    rustix::net::sendto(&fd, &msg, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))?;
    let mut reply = [0u8; 1024];
    let (n, _) = rustix::net::recv(&fd, &mut reply[..], RecvFlags::empty())?;
    let field = |at: usize| -> Option<[u8; 4]> { reply.get(at..at + 4)?.try_into().ok() };
    let (Some(kind), Some(code)) = (
        reply.get(4..6).and_then(|b| <[u8; 2]>::try_from(b).ok()),
        field(16),
    ) else {
        return Err(std::io::Error::other(format!(
            "a short rtnetlink answer ({n} bytes)"
        )));
    };
    if n < 20 || u16::from_ne_bytes(kind) != NLMSG_ERROR {
        return Err(std::io::Error::other("an unexpected rtnetlink answer"));
    }
    match i32::from_ne_bytes(code) {
        0 => Ok(()),
        err => Err(std::io::Error::from_raw_os_error(-err)),
    }
}

/// Steps 2 and 3 (see the module docs); returns the helper's exit code.
async fn supervise(socket: PathBuf, port: u16, program: &OsString, rest: &[OsString]) -> u8 {
    // The helper leads its own group when the broker made one for the command; the broker
    // then signals the whole group, which reaches the command as long as it stays in it.
    let own_group = rustix::process::getpgrp() == rustix::process::getpid();
    let signals = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::child(),
    ]
    .map(signal);
    let [
        Ok(mut int),
        Ok(mut term),
        Ok(mut hup),
        Ok(mut quit),
        Ok(mut chld),
    ] = signals
    else {
        let _ = writeln!(
            std::io::stderr().lock(),
            "error: --isolate: cannot install signal handlers; the command was not run"
        );
        return exit::OSERR;
    };
    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "error: --isolate: cannot listen on 127.0.0.1:{port} inside the namespace: {e}; the command was not run"
            );
            return exit::OSERR;
        }
    };
    tokio::spawn(relay(listener, Arc::new(socket)));

    // A signal that came before the command exists was meant for it: do not run it. (Let the
    // runtime take in what the handlers caught first.)
    tokio::task::yield_now().await;
    let pending = tokio::select! {
        biased;
        Some(()) = int.recv() => Some(Signal::INT),
        Some(()) = term.recv() => Some(Signal::TERM),
        Some(()) = hup.recv() => Some(Signal::HUP),
        Some(()) = quit.recv() => Some(Signal::QUIT),
        () = std::future::ready(()) => None,
    };
    if let Some(sig) = pending {
        return signal_status(sig.as_raw());
    }

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest);
    crate::sys::die_with_parent(&mut cmd);
    let spawned = cmd.spawn();
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // The same line and codes as `broker run` without --isolate.
            let _ = writeln!(
                std::io::stderr().lock(),
                "error: cannot run `{}`: {e}",
                program.to_string_lossy()
            );
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) else {
        let _ = writeln!(
            std::io::stderr().lock(),
            "error: --isolate: the command has no process id"
        );
        return exit::SOFTWARE;
    };
    // Where the command is: in the helper's group (the broker's signals to that group reach
    // it), in a group of its own (`setsid`, `setpgid(0, 0)`, an interactive shell: they do
    // not), or in another process's group (theirs, not to be signalled).
    let own_group_of_command = || {
        rustix::process::getpgid(Some(pid))
            .ok()
            .filter(|g| *g == pid && *g != rustix::process::getpgrp())
    };
    let pass_on = |sig: Signal| {
        let group = rustix::process::getpgid(Some(pid)).ok();
        if let Some(group) = own_group_of_command() {
            let _ = rustix::process::kill_process_group(group, sig);
        } else if !own_group || group != Some(rustix::process::getpgrp()) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    };
    loop {
        tokio::select! {
            Some(()) = chld.recv() => if exited(pid) { break },
            _ = term.recv() => pass_on(Signal::TERM),
            _ = hup.recv() => pass_on(Signal::HUP),
            // The group's or the terminal's: the command has it already.
            _ = int.recv() => {}
            _ = quit.recv() => {}
        }
    }
    // The command has exited and is not reaped yet, so its group's id (its pid) cannot be
    // reused: end what it left running in the group it made.
    if let Some(group) = own_group_of_command() {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
    match child.wait().await {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => code as u8,
            (None, Some(sig)) => signal_status(sig),
            (None, None) => 1,
        },
        Err(e) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "error: --isolate: waiting for the command failed: {e}"
            );
            exit::SOFTWARE
        }
    }
}

/// The exit code for death by signal `n`: 128+n.
fn signal_status(n: i32) -> u8 {
    (128 + n) as u8
}

/// Whether `pid` (a child) has exited, without reaping it.
fn exited(pid: Pid) -> bool {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    match waitid(WaitId::Pid(pid), options) {
        Ok(status) => status.is_some(),
        // Already reaped, or not ours: nothing left to wait for.
        Err(_) => true,
    }
}

/// Carries each connection to `127.0.0.1:PORT` inside the namespace to the proxy's unix
/// socket outside, both ways, until either side closes.
async fn relay(listener: TcpListener, socket: Arc<PathBuf>) {
    // As many as the proxy takes ([`MAX_CONNECTIONS`]): further clients wait in the backlog.
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&open).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((mut inside, _)) => {
                let socket = Arc::clone(&socket);
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = inside.set_nodelay(true);
                    // A failed connect closes `inside`: the client sees the proxy go away.
                    if let Ok(mut outside) = UnixStream::connect(&*socket).await {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                    }
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
