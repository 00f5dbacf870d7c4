//! Per-task scratch directories: where `kind: file` credentials are written.
//!
//! A scratch dir is created 0700 in a private per-user parent, `ROOT/broker-UID` (UID: the
//! numeric real uid), under the first usable root: `$XDG_RUNTIME_DIR` (when it is a directory
//! we own with mode 0700), else `/dev/shm`, else the system temp dir. A shared root is used only
//! when it is owned by us or root and, if group- or other-writable, has the sticky bit:
//! otherwise another user could rename our dir and put a symlink in its place. Each root is
//! first canonicalised, and every directory above it, from `/` down, must pass the same rule
//! (walked with `O_NOFOLLOW`): the root is then used by its canonical path, so the path given to
//! the child has no symlink and no component another user could rename.
//!
//! The parent `broker-UID` is made with `mkdirat` 0700 when missing (an existing one is fine),
//! then opened through the root's fd with `O_NOFOLLOW|O_DIRECTORY`, never by path. It must be a
//! directory owned by us with mode exactly 0700: a parent the broker has just created is set to
//! 0700 with `fchmod` through its fd (the umask may have cleared bits); an existing parent with
//! any other owner or mode, or a symlink or file in its place (another user squatting
//! `/dev/shm/broker-1000`), is never changed: in a shared root the dir then goes directly in
//! the root, as before the per-user parent (a warning names the parent and what is wrong; a
//! random name in a sticky root cannot be taken, and falling through to the next root would
//! let the squatter push files from a tmpfs onto disk); in `$XDG_RUNTIME_DIR` the next root
//! is tried. The parent stays when its scratch dirs are gone (removing it could race with a
//! parallel run creating its dir in it).
//!
//! Every operation of the broker itself (creating, replacing and wiping files, reading the
//! marker, removing the dir) goes through an open directory fd (`openat`/`renameat`/`unlinkat`
//! with `O_NOFOLLOW`), never through the path; [`ScratchDir::path`] (`CANON_ROOT/broker-UID/
//! broker-scratch-...`) is only for the child.
//!
//! Files are created 0600 with `O_EXCL|O_NOFOLLOW`. [`ScratchDir`] wipes everything on drop,
//! and [`sweep_stale`] removes dirs left by a process that is gone (SIGKILL, power loss). The
//! sweep lists only the per-user parents (a handful of entries), so its cost does not grow
//! with `/tmp`; a root is listed only when its parent is squatted (the dirs are then in the
//! root), and once when its parent is created (dirs left directly in the root by versions
//! before the per-user parent).
//!
//! Which process owns a dir is recorded twice, so a live dir is never taken for a dead one: in
//! its name (`broker-scratch-PID-START-RANDOM`, atomic with `mkdir`) and in its marker file
//! `.broker-owner` (`PID START`, written to a temporary name and renamed into place, so it is
//! either absent or complete). START is the process start time from `/proc/PID/stat`, which
//! tells a reused pid apart. Once the task is started, [`ScratchDir::record_child`] rewrites
//! the marker (again atomically) as `PID START CHILD_PID CHILD_START`. The sweep reads the
//! marker, falls back to the name while the marker is not there yet, and removes the dir only
//! when every process it names is gone (or a zombie): a task orphaned by a broker that died
//! of SIGKILL, SIGABRT or SIGSEGV keeps its files until it exits.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::{Error, ErrorKind, Result, SecretValue};

/// Prefix of every scratch dir's name.
pub const DIR_PREFIX: &str = "broker-scratch-";
const MARKER: &str = ".broker-owner";

/// Flags for opening a directory without following a symlink in its place.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A place a scratch dir may be created in.
struct Candidate {
    path: PathBuf,
    /// `$XDG_RUNTIME_DIR`: must be ours and 0700.
    private: bool,
}

/// Candidate parent directories, most private first.
fn candidates() -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        out.push(Candidate {
            path: PathBuf::from(xdg),
            private: true,
        });
    }
    out.push(Candidate {
        path: shm_dir(),
        private: false,
    });
    out.push(Candidate {
        path: std::env::temp_dir(),
        private: false,
    });
    out
}

/// `/dev/shm`; debug builds let tests replace it with `BROKER_TEST_SHM_DIR` (it is usable on
/// most machines, which would hide the temp-dir fallback and its failures).
fn shm_dir() -> PathBuf {
    #[cfg(debug_assertions)]
    if let Some(dir) = std::env::var_os("BROKER_TEST_SHM_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from("/dev/shm")
}

/// Flags for walking down to a root: a directory, never a symlink; `O_PATH` needs only search
/// permission, so an ancestor we may not list (mode 0711) can still be walked and checked.
const WALK_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The rule for a shared directory (a shared root, and every ancestor of any root): owned by us
/// or root and, if group- or other-writable, sticky, so no other user can rename its entries.
fn check_shared(st: &rustix::fs::Stat, me: u32) -> std::result::Result<(), String> {
    let mode = st.st_mode & 0o7777;
    if st.st_uid != me && st.st_uid != 0 {
        return Err("owned by another user".into());
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err("writable by group or others without the sticky bit".into());
    }
    Ok(())
}

/// Opens `path` as a root and checks that no other user can rename entries in it or in any
/// directory above it. Returns the open root and its canonical path (no symlink, no `..`),
/// which is the only path handed on: a symlink in `path` is resolved once, here, and the
/// directories the result goes through are the ones checked.
fn open_root(path: &Path, private: bool) -> std::result::Result<(OwnedFd, PathBuf), String> {
    let errno = |e: Errno| io::Error::from(e).to_string();
    let canon = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    let resolved = |reason: String| {
        if canon.as_path() == path {
            reason
        } else {
            format!("{reason} (resolved to {})", canon.display())
        }
    };
    let me = rustix::process::getuid().as_raw();
    // Walk down from `/` one component at a time with `O_NOFOLLOW`, checking each directory
    // before looking up the next name in it: a component swapped for a symlink after
    // `canonicalize` fails the walk instead of leading elsewhere.
    let mut walked = PathBuf::from("/");
    let mut dir = rustix::fs::open("/", WALK_FLAGS, Mode::empty()).map_err(errno)?;
    for component in canon.components() {
        let name = match component {
            std::path::Component::RootDir => continue,
            std::path::Component::Normal(name) => name,
            _ => return Err(resolved("not a canonical path".into())),
        };
        let st = rustix::fs::fstat(&dir).map_err(errno)?;
        check_shared(&st, me)
            .map_err(|reason| resolved(format!("ancestor {}: {reason}", walked.display())))?;
        walked.push(name);
        dir = rustix::fs::openat(&dir, name, WALK_FLAGS, Mode::empty())
            .map_err(|e| resolved(format!("{}: {}", walked.display(), errno(e))))?;
    }
    let fd = rustix::fs::openat(&dir, ".", DIR_FLAGS, Mode::empty()).map_err(errno)?;
    let st = rustix::fs::fstat(&fd).map_err(errno)?;
    let mode = st.st_mode & 0o7777;
    if private {
        if st.st_uid != me {
            return Err(resolved("not owned by this user".into()));
        }
        if mode & 0o077 != 0 {
            return Err(resolved(format!("mode {mode:04o}, not 0700")));
        }
    } else {
        check_shared(&st, me).map_err(resolved)?;
    }
    Ok((fd, canon))
}

/// The usable roots (canonical paths), most private first. Scratch dirs are not made in a root
/// itself but in its per-user parent: see [`scratch_parent`].
pub fn scratch_roots() -> Vec<PathBuf> {
    candidates()
        .into_iter()
        .filter_map(|c| open_root(&c.path, c.private).ok())
        .map(|(_, path)| path)
        .collect()
}

/// The name of the per-user parent in a root: `broker-UID`, UID the numeric real uid.
pub fn user_dir_name() -> String {
    format!("broker-{}", rustix::process::getuid().as_raw())
}

/// The directory [`ScratchDir::create`] would make its dir in now: `CANON_ROOT/broker-UID`
/// under the first usable root whose per-user parent is usable or not there yet (it is not
/// created here), or that shared root itself when its parent is squatted. `None` when no
/// root is usable.
pub fn scratch_parent() -> Option<PathBuf> {
    candidates().into_iter().find_map(|c| {
        let (root, canon) = open_root(&c.path, c.private).ok()?;
        match open_parent(root.as_fd(), &canon) {
            Ok(_) => Some(canon.join(user_dir_name())),
            // Squatted in a shared root: the dir goes directly in the root.
            Err(_) if !c.private => Some(canon),
            Err(_) => None,
        }
    })
}

/// The rule for the per-user parent: a directory owned by us, mode exactly 0700.
fn check_parent(st: &rustix::fs::Stat, me: u32) -> std::result::Result<(), String> {
    let mode = st.st_mode & 0o7777;
    if st.st_uid != me {
        return Err("owned by another user".into());
    }
    if mode != 0o700 {
        return Err(format!("mode {mode:04o}, not 0700"));
    }
    Ok(())
}

/// Opens the per-user parent in `root` (through its fd, not following a symlink) and checks it.
/// `Ok(None)` when there is none; the error names the parent and what is wrong with it.
fn open_parent(
    root: BorrowedFd<'_>,
    root_path: &Path,
) -> std::result::Result<Option<(OwnedFd, PathBuf)>, String> {
    let name = user_dir_name();
    let path = root_path.join(&name);
    let fd = match rustix::fs::openat(root, name.as_str(), DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "{}: {}",
                path.display(),
                parent_open_error(root, name.as_str(), e)
            ));
        }
    };
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| format!("{}: {}", path.display(), io::Error::from(e)))?;
    check_parent(&st, rustix::process::getuid().as_raw())
        .map_err(|reason| format!("{}: {reason}", path.display()))?;
    Ok(Some((fd, path)))
}

/// Why opening the parent `name` in `root` failed, in words. With `O_NOFOLLOW|O_DIRECTORY`,
/// a symlink and anything else that is not a directory both fail with `ENOTDIR` (or `ELOOP`):
/// the entry itself is looked at (not followed) to say which.
fn parent_open_error(root: BorrowedFd<'_>, name: &str, e: Errno) -> String {
    match e {
        Errno::NOTDIR | Errno::LOOP => {
            match rustix::fs::statat(root, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    "a symlink, not a directory".into()
                }
                _ => "not a directory".into(),
            }
        }
        e => io::Error::from(e).to_string(),
    }
}

/// Why the per-user parent cannot be used.
enum ParentError {
    /// Something is in its place that is not ours, not 0700, or not a directory.
    Squatted(String),
    /// It could not be created or opened (a read-only root, say).
    Failed(String),
}

impl ParentError {
    fn into_reason(self) -> String {
        match self {
            ParentError::Squatted(r) | ParentError::Failed(r) => r,
        }
    }
}

/// Opens the per-user parent in `root`, creating it 0700 when missing, and checks it.
/// Returns it, its path, and whether it was created now.
fn make_parent(
    root: BorrowedFd<'_>,
    root_path: &Path,
) -> std::result::Result<(OwnedFd, PathBuf, bool), ParentError> {
    let name = user_dir_name();
    let path = root_path.join(&name);
    let created = match rustix::fs::mkdirat(root, name.as_str(), Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => {
            return Err(ParentError::Failed(format!(
                "cannot create {}: {}",
                path.display(),
                io::Error::from(e)
            )));
        }
    };
    let fd = rustix::fs::openat(root, name.as_str(), DIR_FLAGS, Mode::empty()).map_err(|e| {
        let reason = parent_open_error(root, name.as_str(), e);
        let squatted = matches!(e, Errno::NOTDIR | Errno::LOOP | Errno::ACCESS);
        let reason = format!("{}: {reason}", path.display());
        if squatted {
            ParentError::Squatted(reason)
        } else {
            ParentError::Failed(reason)
        }
    })?;
    let failed =
        |e: Errno| ParentError::Failed(format!("{}: {}", path.display(), io::Error::from(e)));
    let me = rustix::process::getuid().as_raw();
    let mut st = rustix::fs::fstat(&fd).map_err(failed)?;
    // Only a parent we have just made, and only through its fd: the umask may have cleared
    // bits of 0700. An existing parent with another mode is refused, never changed.
    if created && st.st_uid == me && st.st_mode & 0o7777 != 0o700 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(failed)?;
        st = rustix::fs::fstat(&fd).map_err(failed)?;
    }
    check_parent(&st, me)
        .map_err(|reason| ParentError::Squatted(format!("{}: {reason}", path.display())))?;
    Ok((fd, path, created))
}

fn io_error(what: impl std::fmt::Display, e: impl Into<io::Error>) -> Error {
    Error::new(ErrorKind::Io, format!("{what}: {}", e.into()))
}

/// A 0700 directory for one task's files; wiped on drop.
pub struct ScratchDir {
    path: PathBuf,
    /// The per-user parent the dir is in.
    parent: OwnedFd,
    name: String,
    dir: OwnedFd,
    wiped: bool,
}

impl std::fmt::Debug for ScratchDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchDir")
            .field("path", &self.path)
            .field("wiped", &self.wiped)
            .finish()
    }
}

impl ScratchDir {
    /// Creates a scratch dir in the per-user parent of the first usable root; an
    /// [`ErrorKind::Io`] error naming every root and why it was not used when none is (the
    /// root's own checks, or its parent `broker-UID`: not ours, not 0700, not a directory).
    pub fn create() -> Result<ScratchDir> {
        let mut why = Vec::new();
        for c in candidates() {
            let made = open_root(&c.path, c.private).and_then(|(root, canon)| {
                let (parent, path) = match make_parent(root.as_fd(), &canon) {
                    Ok((parent, path, created)) => {
                        if created {
                            // The first parent in this root (after an upgrade, or a reboot):
                            // dirs an older version left directly in the root are swept once.
                            sweep_parent(root.as_fd(), &canon);
                        }
                        (parent, path)
                    }
                    // Another user put something in the parent's place in a shared root: the
                    // dir goes directly in the root, as a random name there cannot be taken
                    // (the root's sticky bit); falling through to the next root would let
                    // them push files from a tmpfs onto disk. Swept from there too.
                    Err(ParentError::Squatted(reason)) if !c.private => {
                        tracing::warn!("{reason}: scratch dirs go directly in {}", canon.display());
                        (root, canon)
                    }
                    Err(e) => return Err(e.into_reason()),
                };
                Self::create_at(parent, &path).map_err(|e| e.message().to_owned())
            });
            match made {
                Ok(dir) => return Ok(dir),
                Err(reason) => why.push(format!("{}: {reason}", c.path.display())),
            }
        }
        Err(Error::new(
            ErrorKind::Io,
            format!("cannot create a scratch dir: {}", why.join("; ")),
        )
        .with_hint("set XDG_RUNTIME_DIR or TMPDIR to a directory only you can write (mode 0700)"))
    }

    /// Creates a scratch dir in the per-user parent of `root`, as [`ScratchDir::create`] does
    /// for each candidate root: `root` (and every directory above it) must pass the checks for a
    /// shared root, and `root/broker-UID` (created when missing) those for the parent.
    /// [`ScratchDir::path`] is then `CANON_ROOT/broker-UID/broker-scratch-...`.
    pub fn create_in(root: &Path) -> Result<ScratchDir> {
        let (parent, path) = open_root(root, false)
            .and_then(|(fd, canon)| {
                make_parent(fd.as_fd(), &canon)
                    .map(|(parent, path, _)| (parent, path))
                    .map_err(ParentError::into_reason)
            })
            .map_err(|reason| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot create a scratch dir: {}: {reason}", root.display()),
                )
            })?;
        Self::create_at(parent, &path)
    }

    /// Creates the scratch dir in `parent` (open, checked), whose path is `parent_path`.
    fn create_at(parent: OwnedFd, parent_path: &Path) -> Result<ScratchDir> {
        let pid = std::process::id();
        let start = process_start_time(pid).unwrap_or(0);
        // The owner is in the name from the first instant: a sweep running before the marker
        // is in place sees a live owner.
        let name = format!("{DIR_PREFIX}{pid}-{start}-{:016x}", rand::random::<u64>());
        let path = parent_path.join(&name);
        let failed = |e: Errno| io_error(format_args!("cannot create {}", path.display()), e);
        rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(0o700)).map_err(failed)?;
        let dir = rustix::fs::openat(&parent, name.as_str(), DIR_FLAGS, Mode::empty());
        let dir = match dir {
            Ok(dir) => dir,
            Err(e) => {
                let _ = rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::REMOVEDIR);
                return Err(failed(e));
            }
        };
        let scratch = ScratchDir {
            path: path.clone(),
            parent,
            name,
            dir,
            wiped: false,
        };
        // From here on a failure drops `scratch`, which removes the dir.
        rustix::fs::fchmod(&scratch.dir, Mode::from_raw_mode(0o700)).map_err(failed)?;
        scratch.write_marker(&format!("{pid} {start}\n"))?;
        Ok(scratch)
    }

    /// The directory, for handing paths to the child. The broker itself never uses it. It is
    /// `CANON_ROOT/broker-UID/broker-scratch-...`: no symlink in it, and every directory in it
    /// checked.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `value` to a new 0600 file named `name` and returns its path.
    pub fn write_secret(&self, name: &str, value: &SecretValue) -> Result<PathBuf> {
        check_name(name)?;
        self.create_file(name, value.expose())?;
        Ok(self.path.join(name))
    }

    /// Whether the dir holds a regular file `name` (looked up through the dir fd, not
    /// following a symlink).
    pub fn holds(&self, name: &str) -> bool {
        check_name(name).is_ok()
            && rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
    }

    /// Replaces file `name` atomically (write a sibling, then rename over it), keeping 0600.
    pub fn replace_secret(&self, name: &str, value: &SecretValue) -> Result<PathBuf> {
        check_name(name)?;
        let tmp = format!(".{name}.{:08x}.tmp", rand::random::<u32>());
        self.create_file(&tmp, value.expose())?;
        let target = self.path.join(name);
        rustix::fs::renameat(&self.dir, tmp.as_str(), &self.dir, name).map_err(|e| {
            let _ = rustix::fs::unlinkat(&self.dir, tmp.as_str(), AtFlags::empty());
            io_error(format_args!("cannot replace {}", target.display()), e)
        })?;
        Ok(target)
    }

    /// Records the task's process (`pid`, and its start time) in the marker, so the dir is not
    /// swept while the task runs even if the broker dies first. Rewrites the marker atomically.
    pub fn record_child(&self, pid: u32) -> Result<()> {
        let me = std::process::id();
        self.write_marker(&format!(
            "{me} {} {pid} {}\n",
            process_start_time(me).unwrap_or(0),
            process_start_time(pid).unwrap_or(0)
        ))
    }

    /// Writes the marker atomically: a temporary file renamed over `.broker-owner`.
    fn write_marker(&self, text: &str) -> Result<()> {
        let tmp = format!("{MARKER}.{:08x}.tmp", rand::random::<u32>());
        self.create_file(&tmp, text.as_bytes())?;
        rustix::fs::renameat(&self.dir, tmp.as_str(), &self.dir, MARKER).map_err(|e| {
            let _ = rustix::fs::unlinkat(&self.dir, tmp.as_str(), AtFlags::empty());
            io_error(
                format_args!("cannot write {}", self.path.join(MARKER).display()),
                e,
            )
        })
    }

    /// Creates `name` in the dir (through its fd) with `O_EXCL|O_NOFOLLOW`, 0600, and syncs it.
    fn create_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let shown = self.path.join(name);
        let fd = rustix::fs::openat(
            &self.dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io_error(format_args!("cannot create {}", shown.display()), e))?;
        let mut file = File::from(fd);
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(format_args!("cannot write {}", shown.display()), e))
    }

    /// Overwrites every file with zeros, removes them, then removes the directory. Idempotent.
    ///
    /// Works on the directory the broker created even if it was renamed meanwhile: the files
    /// are wiped through the open fd, and the entry in the parent is removed only if it is
    /// still that directory (never whatever was put in its place).
    pub fn wipe(&mut self) -> io::Result<()> {
        if self.wiped {
            return Ok(());
        }
        self.wiped = true;
        wipe_contents(self.dir.as_fd(), 0)?;
        if !remove_entry(self.parent.as_fd(), &self.name, self.dir.as_fd())? {
            tracing::warn!(
                dir = %self.path.display(),
                "the scratch dir was moved or replaced while in use; its files were wiped through the open directory"
            );
        }
        Ok(())
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = self.wipe() {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not wipe scratch dir");
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
        return Err(Error::internal(format!("bad scratch file name `{name}`")));
    }
    Ok(())
}

/// The names in `dir`, without `.` and `..`.
fn entries(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Zero-fills the regular files in `dir` and removes every entry, all relative to the fd and
/// without following links.
fn wipe_contents(dir: BorrowedFd<'_>, depth: u32) -> io::Result<()> {
    for name in entries(dir)? {
        let Ok(st) = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => zero_fill(dir, &name),
            FileType::Directory if depth < 8 => {
                // Not made by the broker, but never follow it either.
                if let Ok(sub) = rustix::fs::openat(dir, name.as_c_str(), DIR_FLAGS, Mode::empty())
                {
                    let _ = wipe_contents(sub.as_fd(), depth + 1);
                }
                match rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            _ => {}
        }
        match rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Overwrites the regular file `name` in `dir` with zeros and syncs it (best effort).
fn zero_fill(dir: BorrowedFd<'_>, name: &CStr) {
    let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::openat(dir, name, flags, Mode::empty()) else {
        return;
    };
    let Ok(st) = rustix::fs::fstat(&fd) else {
        return;
    };
    if !FileType::from_raw_mode(st.st_mode).is_file() {
        return;
    }
    let mut file = File::from(fd);
    let zeros = [0u8; 8192];
    let mut left = u64::try_from(st.st_size).unwrap_or(0);
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        if file.write_all(&zeros[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
    let _ = file.sync_all();
}

/// Removes `name` from `root` if it is still the directory open as `dir`. Returns whether the
/// entry was that directory (or already gone); `false` when something else is in its place.
fn remove_entry(root: BorrowedFd<'_>, name: &str, dir: BorrowedFd<'_>) -> io::Result<bool> {
    let ours = rustix::fs::fstat(dir)?;
    match rustix::fs::statat(root, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_dev == ours.st_dev && st.st_ino == ours.st_ino => {
            match rustix::fs::unlinkat(root, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => Ok(true),
                Err(e) => Err(e.into()),
            }
        }
        Ok(_) => Ok(false),
        Err(Errno::NOENT) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid`, started at `started` (clock ticks since boot; 0 when unknown), is
/// still running. A zombie is not; a reused pid (another start time) is not.
fn process_alive(pid: u32, started: u64) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let Some(end) = stat.rfind(')') else {
                return true;
            };
            let mut fields = stat[end + 1..].split_whitespace();
            if matches!(fields.next(), Some("Z" | "X" | "x")) {
                return false;
            }
            let now = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
            started == 0 || now.is_none_or(|now| now == started)
        }
        Err(_) => matches!(
            rustix::process::test_kill_process(p),
            Ok(()) | Err(Errno::PERM)
        ),
    }
}

/// The `(pid, start time)` pairs a marker names: the owner first.
fn marker_processes(marker: &str) -> Vec<(u32, u64)> {
    let fields: Vec<&str> = marker.split_whitespace().collect();
    fields
        .chunks(2)
        .map_while(|pair| match pair {
            [pid, start] => Some((pid.parse().ok()?, start.parse().ok()?)),
            _ => None,
        })
        .collect()
}

/// The owner a dir's name records (`broker-scratch-PID-START-RANDOM`, or the older
/// `broker-scratch-PID-RANDOM`).
fn name_process(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix(DIR_PREFIX)?;
    let parts: Vec<&str> = rest.split('-').collect();
    match parts.as_slice() {
        [pid, start, _] => Some((pid.parse().ok()?, start.parse().ok()?)),
        [pid, _] => Some((pid.parse().ok()?, 0)),
        _ => None,
    }
}

/// Whether a process recorded for the dir `name` (by its marker, else by its name) is alive.
fn in_use(marker: Option<&str>, name: &str) -> bool {
    let mut processes = marker.map(marker_processes).unwrap_or_default();
    if processes.is_empty() {
        processes.extend(name_process(name));
    }
    processes
        .into_iter()
        .any(|(pid, started)| process_alive(pid, started))
}

/// Removes scratch dirs whose owner process is gone from the per-user parent of every usable
/// root; returns what it removed. Lists only those parents, never a root itself; a parent
/// that is missing or fails its checks (not ours, not 0700, a symlink) is skipped silently.
pub fn sweep_stale() -> Vec<PathBuf> {
    candidates()
        .iter()
        .filter_map(|c| open_root(&c.path, c.private).ok())
        .flat_map(|(fd, path)| sweep_user_dir(fd.as_fd(), &path))
        .collect()
}

/// [`sweep_stale`] for one root: its per-user parent `root/broker-UID` (nothing when `root`
/// fails the checks for a shared root, or the parent those for a parent); the paths returned
/// are under `root`'s canonical path.
pub fn sweep_stale_in(root: &Path) -> Vec<PathBuf> {
    match open_root(root, false) {
        Ok((fd, canon)) => sweep_user_dir(fd.as_fd(), &canon),
        Err(_) => Vec::new(),
    }
}

/// Sweeps the per-user parent of `root` when it passes the checks; when something else is in
/// its place, the root itself (where [`ScratchDir::create`] then puts the dirs).
fn sweep_user_dir(root: BorrowedFd<'_>, root_path: &Path) -> Vec<PathBuf> {
    match open_parent(root, root_path) {
        Ok(Some((parent, path))) => sweep_parent(parent.as_fd(), &path),
        Ok(None) => Vec::new(),
        Err(_) => sweep_parent(root, root_path),
    }
}

/// Removes the dead owners' scratch dirs in `parent` (a checked per-user parent).
fn sweep_parent(parent: BorrowedFd<'_>, parent_path: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(names) = entries(parent) else {
        return removed;
    };
    let me = rustix::process::getuid().as_raw();
    for name in names {
        let Ok(name) = name.into_string() else {
            continue;
        };
        if !name.starts_with(DIR_PREFIX) {
            continue;
        }
        // A symlink in the dir's place fails here; nothing is ever followed.
        let Ok(dir) = rustix::fs::openat(parent, name.as_str(), DIR_FLAGS, Mode::empty()) else {
            continue;
        };
        if !rustix::fs::fstat(&dir).is_ok_and(|st| st.st_uid == me) {
            continue;
        }
        if in_use(read_marker(dir.as_fd()).as_deref(), &name) {
            continue;
        }
        if wipe_contents(dir.as_fd(), 0).is_ok()
            && remove_entry(parent, &name, dir.as_fd()).unwrap_or(false)
        {
            removed.push(parent_path.join(std::ffi::OsStr::from_bytes(name.as_bytes())));
        }
    }
    removed
}

fn read_marker(dir: BorrowedFd<'_>) -> Option<String> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, MARKER, flags, Mode::empty()).ok()?;
    let mut text = String::new();
    File::from(fd).take(256).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The mode bits of `path`, for tests and `doctor`.
pub fn mode_of(path: &Path) -> io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn files_are_private_and_wiped_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let dir = ScratchDir::create_in(root.path()).unwrap();
        assert_eq!(mode_of(dir.path()).unwrap(), 0o700);
        let p = dir
            .write_secret("token", &SecretValue::copy_from(b"canary-scratch"))
            .unwrap();
        assert_eq!(mode_of(&p).unwrap(), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"canary-scratch");
        assert!(
            dir.write_secret("token", &SecretValue::copy_from(b"x"))
                .is_err(),
            "O_EXCL"
        );
        let p2 = dir
            .replace_secret("token", &SecretValue::copy_from(b"rotated"))
            .unwrap();
        assert_eq!(p, p2);
        assert_eq!(fs::read(&p).unwrap(), b"rotated");
        assert_eq!(mode_of(&p).unwrap(), 0o600);
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn refuses_to_follow_a_planted_symlink() {
        let root = tempfile::tempdir().unwrap();
        let dir = ScratchDir::create_in(root.path()).unwrap();
        let victim = root.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("token")).unwrap();
        assert!(
            dir.write_secret("token", &SecretValue::copy_from(b"x"))
                .is_err()
        );
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert!(!dir.holds("token"), "a symlink is not a file the dir holds");
        dir.write_secret("real", &SecretValue::copy_from(b"x"))
            .unwrap();
        assert!(dir.holds("real"));
        assert!(!dir.holds("missing") && !dir.holds("../real"));
    }

    #[test]
    fn sweep_removes_dead_owners_only() {
        let root = tempfile::tempdir().unwrap();
        let live = ScratchDir::create_in(root.path()).unwrap();
        let parent = root.path().join(user_dir_name());
        assert_eq!(live.path().parent().unwrap(), parent);
        let dead = parent.join(format!("{DIR_PREFIX}999999999-0"));
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(MARKER), "999999999 1\n").unwrap();
        fs::write(dead.join("token"), "canary").unwrap();
        let removed = sweep_stale_in(root.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.path().exists());
    }
}
