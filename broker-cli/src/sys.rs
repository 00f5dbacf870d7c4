//! The broker's only `unsafe` code: registering what the child does between `fork` and
//! `exec`. Kept to this one module (the crate root denies `unsafe_code` and allows it here
//! only), each block with a `SAFETY:` comment.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// Makes the child start a session of its own (`setsid`) with `slave` as its controlling
/// terminal (`TIOCSCTTY`), so `/dev/tty` in the child is the broker's pseudo-terminal (read
/// and redacted by the broker), not the user's terminal. The child is then the leader of its
/// own process group, whose id is its pid.
///
/// Do not combine with `Command::process_group`: `setsid` fails in a process-group leader.
/// `slave` must stay open until `spawn` returns.
pub fn controlling_terminal(cmd: &mut tokio::process::Command, slave: &OwnedFd) {
    let raw = slave.as_raw_fd();
    // SAFETY: the closure runs in the forked child before `exec`, where only async-signal-safe
    // operations are allowed. It calls two raw system calls through rustix (`setsid`, and
    // `ioctl(TIOCSCTTY)`), converts a failure to `io::Error` from its errno (no allocation),
    // allocates nothing, takes no lock and touches no state shared with other threads.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid()?;
            // SAFETY: `raw` is the parent's open descriptor of the pty slave, which the
            // parent keeps open until `spawn` returns; `fork` copied it into this process,
            // and `CLOEXEC` closes it only at `exec`, after this call.
            let fd = BorrowedFd::borrow_raw(raw);
            rustix::process::ioctl_tiocsctty(fd)?;
            Ok(())
        });
    }
}
