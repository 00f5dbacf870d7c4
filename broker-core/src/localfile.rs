//! The one way the broker reads a local file: age and sops files, key and identity files,
//! the config and the policy.
//!
//! [`read`] (and [`open`], for a caller that streams the file) opens with `O_NONBLOCK | O_CLOEXEC | O_NOCTTY`, so opening a FIFO returns at once
//! instead of waiting for a writer; refuses anything that `fstat` does not call a regular file
//! (FIFO, socket, device, directory), so `age:/dev/zero` or `age:/dev/stdin` cannot block the
//! broker or exhaust its memory; and reads at most `max + 1` bytes, failing when the file is
//! larger than `max`. A read of a regular file cannot block indefinitely, so the caller's
//! signal handling and timeouts keep working around it.
//!
//! [`write_atomically`] is the one way the broker writes a local file back (sops rotation,
//! age re-encryption): a new file next to the target, renamed over it.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind};

/// The largest secret file (age file, sops file, key or identity file) the broker reads.
pub const MAX_SECRET_FILE: u64 = 64 << 20;
/// The largest config or policy file the broker reads.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Why [`read`] failed. Its text never contains the file's contents.
#[derive(Debug)]
pub enum ReadError {
    /// Opening, `fstat` or reading failed.
    Io(std::io::Error),
    /// The path is not a regular file; the value names what it is (`"a FIFO"`, ...).
    NotRegular(&'static str),
    /// The file is larger than the cap (in bytes).
    TooLarge(u64),
}

impl ReadError {
    /// The OS error kind for [`ReadError::Io`]; `None` otherwise.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            ReadError::Io(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        self.io_kind() == Some(std::io::ErrorKind::NotFound)
    }

    /// An [`Error`] "`what`: reason": a missing file is [`ErrorKind::NotFound`], an unreadable
    /// one [`ErrorKind::PermissionDenied`], another OS error [`ErrorKind::Io`], and a file
    /// that is not regular or too large `kind`.
    pub fn to_error(&self, what: impl fmt::Display, kind: ErrorKind) -> Error {
        let kind = match self.io_kind() {
            Some(std::io::ErrorKind::NotFound) => ErrorKind::NotFound,
            Some(std::io::ErrorKind::PermissionDenied) => ErrorKind::PermissionDenied,
            Some(_) => ErrorKind::Io,
            None => kind,
        };
        Error::new(kind, format!("{what}: {self}"))
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(what) => write!(f, "{what}, not a regular file"),
            ReadError::TooLarge(max) => write!(f, "larger than {}", human(*max)),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl From<rustix::io::Errno> for ReadError {
    fn from(e: rustix::io::Errno) -> Self {
        ReadError::Io(e.into())
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

fn describe(file_type: FileType) -> &'static str {
    match file_type {
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        _ => "not a regular file",
    }
}

/// Opens the regular file at `path` for reading, with the checks of [`read`]: returns it and
/// its length, at most `max` (a FIFO, device or directory is refused without blocking).
/// Symbolic links are followed; what they point to must be a regular file. A caller that
/// streams it should read no more than the length returned (the file may grow meanwhile).
pub fn open(path: &Path, max: u64) -> Result<(std::fs::File, u64), ReadError> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&fd)?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::RegularFile {
        return Err(ReadError::NotRegular(describe(file_type)));
    }
    let len = u64::try_from(stat.st_size).unwrap_or(0);
    if len > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok((std::fs::File::from(fd), len))
}

/// Reads the regular file at `path`, at most `max` bytes, into a zeroizing buffer (see the
/// module docs). Symbolic links are followed; what they point to must be a regular file.
pub fn read(path: &Path, max: u64) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let (file, len) = open(path, max)?;
    let mut buf = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    // The file may grow after fstat: read one byte past the cap to notice.
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(buf)
}

/// Reads a config or policy file as UTF-8 text, at most [`MAX_CONFIG_FILE`] bytes. Every
/// failure is [`ErrorKind::InvalidConfig`] (exit 78): "cannot read `what` PATH: reason".
pub fn read_config_text(path: &Path, what: &str) -> Result<String, Error> {
    let bytes = read(path, MAX_CONFIG_FILE).map_err(|e| {
        Error::invalid_config(format!("cannot read {what} {}: {e}", path.display()))
    })?;
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        Error::invalid_config(format!(
            "{what} {} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Replaces the file at `path` with `bytes`, atomically: readers see the old file or the new
/// one, never a mix, and a crash leaves the old file in place.
///
/// The new content goes to a sibling temporary file (`.NAME.broker-RANDOM.tmp`, created
/// `0600` with `O_EXCL | O_NOFOLLOW`, so nothing else can have it open or have planted it),
/// which is fsynced, given the permission bits of the file it replaces (`0600` when there is
/// none), renamed over `path`, and the directory is fsynced. On failure the temporary file is
/// removed and `path` is untouched. A symbolic link at `path` is replaced by the new file, not
/// followed. The error names `path` and never the content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let label = path.display();
    let io = |what: &str, e: std::io::Error| Error::io(format_args!("{what} {label}"), &e);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let tmp = dir.join(format!(".{name}.broker-{:016x}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags((OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32)
            .open(&tmp)
            .map_err(|e| io("cannot create a temporary file next to", e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io("cannot write the new version of", e))?;
        if mode != 0o600 {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| io("cannot set permissions for", e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| io("cannot replace", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename is done; syncing the directory makes it durable. A failure here cannot be
    // undone, so it is not reported.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read(&p, 5).unwrap().as_slice(), b"hello");
        assert!(matches!(read(&p, 4), Err(ReadError::TooLarge(4))));
    }

    #[test]
    fn refuses_a_fifo_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, Mode::from_raw_mode(0o600)).unwrap();
        let e = read(&p, 10).unwrap_err();
        assert_eq!(e.to_string(), "a FIFO, not a regular file");
    }

    #[test]
    fn refuses_devices_and_directories() {
        let e = read(Path::new("/dev/zero"), MAX_SECRET_FILE).unwrap_err();
        assert_eq!(e.to_string(), "a character device, not a regular file");
        let dir = tempfile::tempdir().unwrap();
        let e = read(dir.path(), MAX_SECRET_FILE).unwrap_err();
        assert_eq!(e.to_string(), "a directory, not a regular file");
    }

    #[test]
    fn refuses_a_file_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_SECRET_FILE + 1).unwrap();
        let e = read(&p, MAX_SECRET_FILE).unwrap_err();
        assert_eq!(e.to_string(), "larger than 64 MiB");
    }

    #[test]
    fn config_text_errors_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yml");
        std::fs::write(&p, b"a: \xff\n").unwrap();
        let e = read_config_text(&p, "config").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        let e = read_config_text(&dir.path().join("missing"), "config").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn write_atomically_replaces_and_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.age");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn write_atomically_creates_a_new_file_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fresh");
        write_atomically(&p, b"v").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"v");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn write_atomically_replaces_a_symlink_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"kept").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
    }

    #[test]
    fn write_atomically_fails_cleanly_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("f");
        let e = write_atomically(&p, b"canary-value").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        assert!(!e.to_string().contains("canary-value"), "{e}");
        // A directory in the way: the rename fails and the temporary file is removed.
        let p = dir.path().join("a-dir");
        std::fs::create_dir(&p).unwrap();
        assert!(write_atomically(&p, b"v").is_err());
        assert!(leftovers(dir.path()).is_empty());
    }
}
