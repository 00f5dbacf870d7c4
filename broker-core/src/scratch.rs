//! Per-task scratch directories: where `kind: file` credentials are written.
//!
//! A scratch dir is created 0700 under `$XDG_RUNTIME_DIR` (when it is a directory we own with
//! mode 0700), else `/dev/shm` (tmpfs, when writable), else the system temp dir. Files are
//! created 0600 with `O_EXCL|O_NOFOLLOW`. The dir holds a marker with the owner's pid and start
//! time; [`ScratchDir`] wipes everything on drop, and [`sweep_stale`] removes dirs left by a
//! process that is gone (SIGKILL, power loss).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result, SecretValue};

/// Prefix of every scratch dir's name.
pub const DIR_PREFIX: &str = "broker-scratch-";
const MARKER: &str = ".broker-owner";

/// Candidate parent directories, most private first.
pub fn scratch_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR") {
        let p = PathBuf::from(xdg);
        if let Ok(m) = fs::metadata(&p)
            && m.is_dir()
            && m.uid() == rustix::process::getuid().as_raw()
            && m.mode() & 0o077 == 0
        {
            roots.push(p);
        }
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() && rustix::fs::access(&shm, rustix::fs::Access::WRITE_OK).is_ok() {
        roots.push(shm);
    }
    roots.push(std::env::temp_dir());
    roots
}

/// A 0700 directory for one task's files; wiped on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    wiped: bool,
}

impl ScratchDir {
    /// Creates a scratch dir under the first usable root.
    pub fn create() -> Result<ScratchDir> {
        let mut last = None;
        for root in scratch_roots() {
            match Self::create_in(&root) {
                Ok(dir) => return Ok(dir),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::internal("no scratch root available")))
    }

    /// Creates a scratch dir under `root`.
    pub fn create_in(root: &Path) -> Result<ScratchDir> {
        let name = format!(
            "{DIR_PREFIX}{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = root.join(name);
        DirBuilder::new().mode(0o700).create(&path).map_err(|e| {
            Error::io(
                format_args!("cannot create scratch dir in {}", root.display()),
                &e,
            )
        })?;
        let dir = ScratchDir { path, wiped: false };
        let marker = format!(
            "{} {}\n",
            std::process::id(),
            process_start_time(std::process::id()).unwrap_or(0)
        );
        dir.create_file(MARKER, marker.as_bytes())?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `value` to a new 0600 file named `name` and returns its path.
    pub fn write_secret(&self, name: &str, value: &SecretValue) -> Result<PathBuf> {
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
            return Err(Error::internal(format!("bad scratch file name `{name}`")));
        }
        self.create_file(name, value.expose())
    }

    /// Replaces file `name` atomically (write a sibling, then rename over it), keeping 0600.
    pub fn replace_secret(&self, name: &str, value: &SecretValue) -> Result<PathBuf> {
        let tmp = format!(".{name}.{:08x}.tmp", rand::random::<u32>());
        let tmp_path = self.create_file(&tmp, value.expose())?;
        let target = self.path.join(name);
        fs::rename(&tmp_path, &target).map_err(|e| {
            let _ = fs::remove_file(&tmp_path);
            Error::io(format_args!("cannot replace {}", target.display()), &e)
        })?;
        Ok(target)
    }

    fn create_file(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.path.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| Error::io(format_args!("cannot create {}", path.display()), &e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(format_args!("cannot write {}", path.display()), &e))?;
        Ok(path)
    }

    /// Overwrites every file with zeros, then removes the directory. Idempotent.
    pub fn wipe(&mut self) -> io::Result<()> {
        if self.wiped {
            return Ok(());
        }
        self.wiped = true;
        wipe_dir(&self.path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = self.wipe() {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not wipe scratch dir");
        }
    }
}

/// Zero-fills the regular files in `dir` (not following links) and removes it.
fn wipe_dir(dir: &Path) -> io::Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                    continue;
                };
                if meta.is_file()
                    && let Ok(mut f) = OpenOptions::new()
                        .write(true)
                        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                        .open(entry.path())
                {
                    let zeros = vec![0u8; meta.len().min(1 << 20) as usize];
                    let _ = f.write_all(&zeros).and_then(|()| f.sync_all());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that wrote `marker` is still running.
fn owner_alive(marker: &str) -> bool {
    let mut parts = marker.split_whitespace();
    let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    let started: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    match process_start_time(pid) {
        // A reused pid has a different start time.
        Some(now) => started == 0 || now == started,
        None => rustix::process::Pid::from_raw(pid as i32)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok()),
    }
}

/// Removes scratch dirs under every root whose owner process is gone; returns what it removed.
pub fn sweep_stale() -> Vec<PathBuf> {
    scratch_roots()
        .iter()
        .flat_map(|root| sweep_stale_in(root))
        .collect()
}

/// [`sweep_stale`] for one root.
pub fn sweep_stale_in(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(root) else {
        return removed;
    };
    let me = rustix::process::getuid().as_raw();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry.file_name().to_string_lossy().starts_with(DIR_PREFIX)
            && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if !is_ours {
            continue;
        }
        let marker = read_marker(&path.join(MARKER));
        if marker.as_deref().is_some_and(owner_alive) {
            continue;
        }
        if wipe_dir(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

fn read_marker(path: &Path) -> Option<String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .ok()?;
    let mut text = String::new();
    io::Read::read_to_string(&mut io::Read::take(file, 64), &mut text).ok()?;
    Some(text)
}

/// The mode bits of `path`, for tests and `doctor`.
pub fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn sweep_removes_dead_owners_only() {
        let root = tempfile::tempdir().unwrap();
        let live = ScratchDir::create_in(root.path()).unwrap();
        let dead = root.path().join(format!("{DIR_PREFIX}999999999-0"));
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(MARKER), "999999999 1\n").unwrap();
        fs::write(dead.join("token"), "canary").unwrap();
        let removed = sweep_stale_in(root.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.path().exists());
    }
}
