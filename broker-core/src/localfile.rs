//! The one way the broker reads a local file: age and sops files, key and identity files,
//! the config and the policy.
//!
//! [`read`] opens with `O_NONBLOCK | O_CLOEXEC | O_NOCTTY`, so opening a FIFO returns at once
//! instead of waiting for a writer; refuses anything that `fstat` does not call a regular file
//! (FIFO, socket, device, directory), so `age:/dev/zero` or `age:/dev/stdin` cannot block the
//! broker or exhaust its memory; and reads at most `max + 1` bytes, failing when the file is
//! larger than `max`. A read of a regular file cannot block indefinitely, so the caller's
//! signal handling and timeouts keep working around it.

use std::fmt;
use std::io::Read;
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

/// Reads the regular file at `path`, at most `max` bytes, into a zeroizing buffer (see the
/// module docs). Symbolic links are followed; what they point to must be a regular file.
pub fn read(path: &Path, max: u64) -> Result<Zeroizing<Vec<u8>>, ReadError> {
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
    let mut buf = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    // The file may grow after fstat: read one byte past the cap to notice.
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut buf)?;
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
}
