//! This crate's only `unsafe` code (the other is broker-core's `sys`, `mlock` of secret
//! pages): registering what the child does between `fork` and `exec`, and `unshare` and
//! descriptor flags for `broker run --isolate`. Kept to this one module (the crate root
//! denies `unsafe_code` and allows it here only), each block with a `SAFETY:` comment.

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

/// Moves this process into a new user namespace and a new network namespace
/// (`unshare(CLONE_NEWUSER | CLONE_NEWNET)`), for the `broker run --isolate` helper.
///
/// Call it while the process has a single thread: the kernel refuses a new user namespace to
/// a multi-threaded process (`EINVAL`).
#[cfg(feature = "proxy")]
pub fn unshare_user_and_net() -> std::io::Result<()> {
    use rustix::thread::UnshareFlags;
    // SAFETY: rustix marks `unshare` unsafe only because of `UnshareFlags::FILES`, which gives
    // the calling thread a file descriptor table other threads do not see. We pass NEWUSER
    // and NEWNET only; neither touches the descriptor table or any memory, and the helper
    // calls this before it starts any thread.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNET) }?;
    Ok(())
}

/// Makes the child receive SIGKILL when this process (its parent) dies
/// (`PR_SET_PDEATHSIG`), so the isolated command never outlives the helper that relays its
/// connections and passes its exit status on. If this process is already gone when the
/// child sets it up, the child does not run the command.
#[cfg(feature = "proxy")]
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before `exec`, where only
    // async-signal-safe operations are allowed. It makes two raw system calls through rustix
    // (`prctl(PR_SET_PDEATHSIG)` and `getppid`), builds an `io::Error` from an errno (no
    // allocation), allocates nothing, takes no lock and touches no state shared with other
    // threads. `parent` is a plain integer copied into the closure.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(
                    rustix::io::Errno::SRCH.raw_os_error(),
                ));
            }
            Ok(())
        });
    }
}

/// Marks every descriptor above standard error close-on-exec, so the command the
/// `broker run --isolate` helper runs inherits none of the helper's other descriptors — a
/// socket a parent leaked to the broker keeps the network namespace it was made in, a way
/// around the isolation. The helper's own descriptors stay open in the helper.
///
/// Call it while the process has a single thread. Returns how many descriptors were marked.
#[cfg(feature = "proxy")]
pub fn cloexec_above_stderr() -> std::io::Result<usize> {
    use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};
    let mut marked = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(raw) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if raw <= 2 {
            continue;
        }
        // SAFETY: `raw` was just listed in /proc/self/fd, so it was open then; the process has
        // a single thread and closes nothing while the listing is read (the listing's own
        // descriptor stays open until the loop ends), so it is still open for this borrow,
        // which ends within this iteration. Setting FD_CLOEXEC takes nothing from its owner.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        let flags = fcntl_getfd(fd)?;
        if !flags.contains(FdFlags::CLOEXEC) {
            fcntl_setfd(fd, flags | FdFlags::CLOEXEC)?;
            marked += 1;
        }
    }
    Ok(marked)
}
