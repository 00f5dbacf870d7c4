//! Where a test's runs left scratch dirs: the per-user parent `RUNTIME/broker-UID` (0700 once
//! made, asserted) and the runtime dir itself (where none belongs). Shared by the CLI tests
//! that check nothing is left behind.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The per-user parent in `runtime`, after checking it is 0700 if it exists.
fn checked_parent(runtime: &Path) -> PathBuf {
    let parent = runtime.join(format!("broker-{}", rustix::process::getuid().as_raw()));
    if let Ok(meta) = std::fs::symlink_metadata(&parent) {
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o700,
            "{}",
            parent.display()
        );
    }
    parent
}

/// Every entry of `runtime` and of its per-user parent, the parent itself left out.
fn entries(runtime: &Path) -> Vec<PathBuf> {
    let parent = checked_parent(runtime);
    let in_parent = std::fs::read_dir(&parent).into_iter().flatten();
    std::fs::read_dir(runtime)
        .unwrap()
        .chain(in_parent)
        .map(|e| e.unwrap().path())
        .filter(|p| *p != parent)
        .collect()
}

/// The `broker-scratch-*` dirs in `runtime` and in its per-user parent.
pub fn scratch_dirs(runtime: &Path) -> Vec<PathBuf> {
    entries(runtime)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("broker-scratch-"))
        })
        .collect()
}

/// Whatever the runs left in `runtime`: anything but the (empty) per-user parent.
pub fn scratch_left(runtime: &Path) -> Vec<PathBuf> {
    entries(runtime)
}
