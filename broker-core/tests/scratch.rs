//! Scratch dirs against a hostile root, a squatted per-user parent, a swapped dir, parallel
//! sweeps and orphaned children.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use broker_core::scratch::{DIR_PREFIX, ScratchDir, sweep_stale_in};
use broker_core::{ErrorKind, SecretValue};

const CANARY: &str = "canary-scratch-7d41c9";

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The per-user parent scratch dirs go in: `root/broker-UID`.
fn user_dir(root: &Path) -> PathBuf {
    root.join(format!("broker-{}", rustix::process::getuid().as_raw()))
}

/// Makes the per-user parent of `root` as the broker would (0700), for planting dirs in it.
fn make_user_dir(root: &Path) -> PathBuf {
    let parent = user_dir(root);
    fs::create_dir(&parent).unwrap();
    chmod(&parent, 0o700);
    parent
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

// ---- defect: scratch dir in a hostile temp dir ----

#[test]
fn a_root_writable_by_others_without_the_sticky_bit_is_refused() {
    let root = tempfile::tempdir().unwrap();
    for mode in [0o777, 0o770, 0o757] {
        chmod(root.path(), mode);
        let e = ScratchDir::create_in(root.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(
            e.to_string(),
            format!(
                "cannot create a scratch dir: {}: writable by group or others without the sticky bit",
                root.path().display()
            )
        );
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0, "{mode:o}");
    }
    // The sweep does not work in such a root either (another user controls its entries).
    let planted = make_user_dir(root.path()).join(format!("{DIR_PREFIX}999999999-0"));
    fs::create_dir(&planted).unwrap();
    fs::write(planted.join("token"), "theirs").unwrap();
    assert!(sweep_stale_in(root.path()).is_empty());
    assert_eq!(fs::read(planted.join("token")).unwrap(), b"theirs");

    // With the sticky bit, others cannot rename our entries: usable.
    chmod(root.path(), 0o1777);
    fs::remove_dir_all(&planted).unwrap();
    let dir = ScratchDir::create_in(root.path()).unwrap();
    assert_eq!(dir.path().parent().unwrap(), user_dir(root.path()));
}

/// Whether any directory `path` goes through, or `path` itself, is a symlink.
fn has_symlink(path: &Path) -> bool {
    path.ancestors()
        .any(|p| fs::symlink_metadata(p).unwrap().is_symlink())
}

#[test]
fn a_root_under_an_ancestor_writable_by_others_without_the_sticky_bit_is_refused() {
    let top = tempfile::tempdir().unwrap();
    // Owned by root (we are root in tests) but writable by everyone, no sticky bit: another
    // user could rename `mine` and put a link or a dir of theirs in its place.
    let shared = top.path().join("shared");
    fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let root = shared.join("mine");
    fs::create_dir(&root).unwrap();
    chmod(&root, 0o700);
    let e = ScratchDir::create_in(&root).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(
        e.to_string(),
        format!(
            "cannot create a scratch dir: {}: ancestor {}: writable by group or others without the sticky bit",
            root.display(),
            shared.display()
        )
    );
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
    let parent = make_user_dir(&root);
    let planted = parent.join(format!("{DIR_PREFIX}999999999-0"));
    fs::create_dir(&planted).unwrap();
    assert!(sweep_stale_in(&root).is_empty());
    assert!(planted.is_dir());
    fs::remove_dir(&planted).unwrap();
    fs::remove_dir(&parent).unwrap();

    // Any ancestor counts, not only the parent.
    let deeper = root.join("deeper");
    fs::create_dir(&deeper).unwrap();
    chmod(&deeper, 0o700);
    let e = ScratchDir::create_in(&deeper).unwrap_err();
    assert!(
        e.to_string().ends_with(&format!(
            "ancestor {}: writable by group or others without the sticky bit",
            shared.display()
        )),
        "{e}"
    );
    fs::remove_dir(&deeper).unwrap();

    // Sticky, or not writable by others: usable.
    for mode in [0o1777, 0o755] {
        chmod(&shared, mode);
        let dir = ScratchDir::create_in(&root).unwrap();
        assert_eq!(dir.path().parent().unwrap(), user_dir(&root), "{mode:o}");
    }
}

#[test]
fn a_root_reached_through_a_symlink_is_used_by_its_canonical_path() {
    let top = tempfile::tempdir().unwrap();
    let real = top.path().join("real");
    fs::create_dir(&real).unwrap();
    chmod(&real, 0o1777);
    let real = fs::canonicalize(&real).unwrap();
    let evil = top.path().join("evil");
    fs::create_dir(&evil).unwrap();
    // The reproduction of F1: the link lives in a dir writable by everyone without the sticky
    // bit; it points at a good root (sticky, owned by root).
    let shared = top.path().join("shared");
    fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let link = shared.join("mine");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let dir = ScratchDir::create_in(&link).unwrap();
    assert_eq!(dir.path().parent().unwrap(), user_dir(&real));
    assert!(!has_symlink(dir.path()), "{}", dir.path().display());
    let token = dir
        .write_secret("token", &SecretValue::copy_from(CANARY.as_bytes()))
        .unwrap();
    assert_eq!(token.parent().unwrap(), dir.path());

    // The other user swaps the link for one to a dir of theirs holding the same name: the path
    // the child was given does not go through the link, so it still reads our file.
    let name = dir.path().file_name().unwrap();
    let theirs = user_dir(&evil).join(name);
    fs::create_dir_all(&theirs).unwrap();
    fs::write(theirs.join("token"), "their file").unwrap();
    let new_link = shared.join("mine.new");
    std::os::unix::fs::symlink(&evil, &new_link).unwrap();
    fs::rename(&new_link, &link).unwrap();
    assert_eq!(fs::read(&token).unwrap(), CANARY.as_bytes());

    // The sweep reports canonical paths too.
    let dead = user_dir(&real).join(format!("{DIR_PREFIX}999999999-0"));
    fs::create_dir(&dead).unwrap();
    std::os::unix::fs::symlink(&real, &new_link).unwrap();
    assert_eq!(sweep_stale_in(&new_link), vec![dead]);

    // A link to a root that fails the checks says where it leads.
    let bad = top.path().join("bad");
    fs::create_dir(&bad).unwrap();
    chmod(&bad, 0o777);
    let to_bad = top.path().join("to-bad");
    std::os::unix::fs::symlink(&bad, &to_bad).unwrap();
    assert_eq!(
        ScratchDir::create_in(&to_bad).unwrap_err().to_string(),
        format!(
            "cannot create a scratch dir: {}: writable by group or others without the sticky bit (resolved to {})",
            to_bad.display(),
            fs::canonicalize(&bad).unwrap().display()
        )
    );
}

#[test]
fn a_missing_root_is_an_io_error() {
    let root = tempfile::tempdir().unwrap();
    let gone = root.path().join("gone");
    let e = ScratchDir::create_in(&gone).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "exit 74, not 69");
    assert_eq!(
        e.to_string(),
        format!(
            "cannot create a scratch dir: {}: No such file or directory (os error 2)",
            gone.display()
        )
    );
}

#[test]
fn wipe_after_the_dir_is_swapped_for_a_symlink_wipes_the_real_files_only() {
    let root = tempfile::tempdir().unwrap();
    let mut dir = ScratchDir::create_in(root.path()).unwrap();
    let token = dir
        .write_secret("token", &SecretValue::copy_from(CANARY.as_bytes()))
        .unwrap();
    // What another user could do if they could write to the dir's parent: move the live dir
    // away and put a symlink to a dir of theirs in its place.
    let moved = root.path().join("moved");
    fs::rename(dir.path(), &moved).unwrap();
    let theirs = root.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    fs::write(theirs.join("token"), "their file").unwrap();
    fs::write(theirs.join("other"), "their other file").unwrap();
    std::os::unix::fs::symlink(&theirs, token.parent().unwrap()).unwrap();
    assert_eq!(fs::read(moved.join("token")).unwrap(), CANARY.as_bytes());

    // The broker's own writes still land in its dir, not behind the link.
    dir.replace_secret("token", &SecretValue::copy_from(CANARY.as_bytes()))
        .unwrap();
    dir.write_secret("other", &SecretValue::copy_from(CANARY.as_bytes()))
        .unwrap();
    assert_eq!(fs::read(theirs.join("token")).unwrap(), b"their file");
    assert_eq!(fs::read(theirs.join("other")).unwrap(), b"their other file");

    dir.wipe().unwrap();
    // The link target is untouched, the link itself left alone ...
    assert_eq!(fs::read(theirs.join("token")).unwrap(), b"their file");
    assert_eq!(fs::read(theirs.join("other")).unwrap(), b"their other file");
    assert!(fs::symlink_metadata(dir.path()).unwrap().is_symlink());
    // ... and the real files are gone from the renamed dir.
    assert_eq!(fs::read_dir(&moved).unwrap().count(), 0);
}

#[test]
fn the_sweep_never_follows_a_symlink_named_like_a_scratch_dir() {
    let root = tempfile::tempdir().unwrap();
    let theirs = root.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    fs::write(theirs.join(".broker-owner"), "999999999 1\n").unwrap();
    fs::write(theirs.join("token"), "their file").unwrap();
    let link = make_user_dir(root.path()).join(format!("{DIR_PREFIX}999999999-0"));
    std::os::unix::fs::symlink(&theirs, &link).unwrap();
    assert!(sweep_stale_in(root.path()).is_empty());
    assert_eq!(fs::read(theirs.join("token")).unwrap(), b"their file");
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
}

// ---- the per-user parent `ROOT/broker-UID` ----

#[test]
fn the_per_user_parent_is_created_0700_and_shared_by_later_dirs() {
    let root = tempfile::tempdir().unwrap();
    let root_path = fs::canonicalize(root.path()).unwrap();
    let parent = user_dir(&root_path);
    let first = ScratchDir::create_in(root.path()).unwrap();
    assert_eq!(first.path().parent().unwrap(), parent);
    assert_eq!(mode(&parent), 0o700);
    assert_eq!(
        fs::metadata(&parent).unwrap().uid(),
        rustix::process::getuid().as_raw()
    );
    assert_eq!(mode(first.path()), 0o700);
    // An existing parent is fine (EEXIST): the next dir goes in it too.
    let second = ScratchDir::create_in(root.path()).unwrap();
    assert_eq!(second.path().parent().unwrap(), parent);
    assert_ne!(first.path(), second.path());
    drop((first, second));
    // The dirs are gone; the parent stays, and nothing else was made in the root.
    assert_eq!(fs::read_dir(&parent).unwrap().count(), 0);
    assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
}

#[test]
fn a_parent_with_another_mode_is_refused_and_left_unchanged() {
    let root = tempfile::tempdir().unwrap();
    let parent = user_dir(root.path());
    fs::create_dir(&parent).unwrap();
    let dead = parent.join(format!("{DIR_PREFIX}999999999-1-00000000000000aa"));
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("token"), CANARY).unwrap();
    for bad in [0o755, 0o750, 0o701, 0o500, 0o1700] {
        chmod(&parent, bad);
        let e = ScratchDir::create_in(root.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(
            e.to_string(),
            format!(
                "cannot create a scratch dir: {}: {}: mode {bad:04o}, not 0700",
                root.path().display(),
                parent.display()
            )
        );
        assert_eq!(mode(&parent), bad, "never chmod a parent we did not create");
        // The sweep skips it silently: the dead owner's dir inside stays.
        assert!(sweep_stale_in(root.path()).is_empty(), "{bad:o}");
        assert_eq!(fs::read(dead.join("token")).unwrap(), CANARY.as_bytes());
        assert_eq!(fs::read_dir(&parent).unwrap().count(), 1, "{bad:o}");
    }
    // Once it is 0700 again, it is used, and the sweep works in it.
    chmod(&parent, 0o700);
    assert_eq!(sweep_stale_in(root.path()), vec![dead]);
    let dir = ScratchDir::create_in(root.path()).unwrap();
    assert_eq!(dir.path().parent().unwrap(), parent);
}

#[test]
fn a_symlink_or_a_file_planted_as_the_parent_is_refused_and_never_followed() {
    let root = tempfile::tempdir().unwrap();
    // A private dir elsewhere, holding what looks like a dead owner's scratch dir.
    let elsewhere = root.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    chmod(&elsewhere, 0o700);
    let dead = elsewhere.join(format!("{DIR_PREFIX}999999999-1-00000000000000aa"));
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("token"), "their file").unwrap();
    let parent = user_dir(root.path());
    std::os::unix::fs::symlink(&elsewhere, &parent).unwrap();

    let e = ScratchDir::create_in(root.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(
        e.to_string(),
        format!(
            "cannot create a scratch dir: {}: {}: a symlink, not a directory",
            root.path().display(),
            parent.display()
        )
    );
    assert!(sweep_stale_in(root.path()).is_empty());
    assert_eq!(fs::read(dead.join("token")).unwrap(), b"their file");
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        1,
        "nothing made behind the link"
    );
    assert!(fs::symlink_metadata(&parent).unwrap().is_symlink());

    // A dangling link, or one to a file: the same.
    fs::remove_file(&parent).unwrap();
    std::os::unix::fs::symlink(root.path().join("nowhere"), &parent).unwrap();
    assert!(
        ScratchDir::create_in(root.path())
            .unwrap_err()
            .to_string()
            .ends_with(": a symlink, not a directory")
    );
    assert!(!root.path().join("nowhere").exists());
    fs::remove_file(&parent).unwrap();

    // A regular file in its place.
    fs::write(&parent, "squatted").unwrap();
    assert_eq!(
        ScratchDir::create_in(root.path()).unwrap_err().to_string(),
        format!(
            "cannot create a scratch dir: {}: {}: not a directory",
            root.path().display(),
            parent.display()
        )
    );
    assert!(sweep_stale_in(root.path()).is_empty());
    assert_eq!(fs::read(&parent).unwrap(), b"squatted");
}

#[test]
fn a_parent_owned_by_another_user_is_refused() {
    // Only root can make a dir owned by another user.
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let parent = user_dir(root.path());
    fs::create_dir(&parent).unwrap();
    chmod(&parent, 0o700);
    let dead = parent.join(format!("{DIR_PREFIX}999999999-1-00000000000000aa"));
    fs::create_dir(&dead).unwrap();
    std::os::unix::fs::chown(&dead, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(&parent, Some(65534), Some(65534)).unwrap();
    let e = ScratchDir::create_in(root.path()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cannot create a scratch dir: {}: {}: owned by another user",
            root.path().display(),
            parent.display()
        )
    );
    assert_eq!(fs::metadata(&parent).unwrap().uid(), 65534, "never chown");
    assert!(sweep_stale_in(root.path()).is_empty());
    assert!(dead.is_dir());
}

#[test]
fn the_sweep_lists_only_the_per_user_parent_not_the_root() {
    let root = tempfile::tempdir().unwrap();
    // A dead owner's dir directly under the root (where versions before the per-user parent
    // made them): no longer swept.
    let legacy = root
        .path()
        .join(format!("{DIR_PREFIX}999999999-1-00000000000000aa"));
    fs::create_dir(&legacy).unwrap();
    fs::write(legacy.join("token"), CANARY).unwrap();
    // No parent yet: nothing to do, and none is created by a sweep.
    assert!(sweep_stale_in(root.path()).is_empty());
    assert!(!user_dir(root.path()).exists());

    let parent = make_user_dir(root.path());
    let dead = parent.join(format!("{DIR_PREFIX}999999999-1-00000000000000bb"));
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("token"), CANARY).unwrap();
    let live = ScratchDir::create_in(root.path()).unwrap();
    assert_eq!(sweep_stale_in(root.path()), vec![dead.clone()]);
    assert!(!dead.exists());
    assert!(live.path().is_dir());
    assert_eq!(fs::read(legacy.join("token")).unwrap(), CANARY.as_bytes());
}

// ---- defect: parallel invocations sweep each other's live scratch dirs ----

/// Field 22 of `/proc/PID/stat`.
fn start_time(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[test]
fn a_dir_without_its_marker_yet_is_not_swept_while_its_creator_lives() {
    let root = tempfile::tempdir().unwrap();
    let parent = make_user_dir(root.path());
    let me = std::process::id();
    // What a sweep used to see between `mkdir` and the marker: no marker, or an empty one.
    let creating = parent.join(format!(
        "{DIR_PREFIX}{me}-{}-00000000000000aa",
        start_time(me)
    ));
    fs::create_dir(&creating).unwrap();
    let half_written = parent.join(format!(
        "{DIR_PREFIX}{me}-{}-00000000000000bb",
        start_time(me)
    ));
    fs::create_dir(&half_written).unwrap();
    fs::write(half_written.join(".broker-owner"), "").unwrap();
    let dead = parent.join(format!("{DIR_PREFIX}999999999-1-00000000000000cc"));
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("token"), CANARY).unwrap();

    assert_eq!(sweep_stale_in(root.path()), vec![dead.clone()]);
    assert!(creating.is_dir());
    assert!(half_written.is_dir());
}

#[test]
fn parallel_creators_and_sweepers_never_sweep_a_live_dir() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sweepers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut swept = Vec::new();
                    while !done.load(Ordering::SeqCst) {
                        swept.extend(sweep_stale_in(root));
                    }
                    swept
                })
            })
            .collect();
        let creators: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || -> Result<(), String> {
                    for _ in 0..150 {
                        let dir = ScratchDir::create_in(root).map_err(|e| e.to_string())?;
                        let path = dir
                            .write_secret("token", &SecretValue::copy_from(CANARY.as_bytes()))
                            .map_err(|e| e.to_string())?;
                        if fs::read(&path).map_err(|e| e.to_string())? != CANARY.as_bytes() {
                            return Err(format!("{} changed under the run", path.display()));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let results: Vec<_> = creators.into_iter().map(|c| c.join()).collect();
        done.store(true, Ordering::SeqCst);
        for swept in sweepers {
            assert_eq!(swept.join().unwrap(), Vec::<std::path::PathBuf>::new());
        }
        for r in results {
            assert_eq!(r.unwrap(), Ok(()));
        }
    });
    assert_eq!(fs::read_dir(user_dir(root)).unwrap().count(), 0);
    let names: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        names,
        vec![user_dir(root)],
        "only the per-user parent stays"
    );
}

// ---- defect: orphans lose their files ----

#[test]
fn a_dead_owner_with_a_live_child_is_not_swept() {
    let root = tempfile::tempdir().unwrap();
    let parent = make_user_dir(root.path());
    let me = std::process::id();
    // The broker (999999999) died of SIGABRT; its child (this process) still runs.
    let orphaned = parent.join(format!("{DIR_PREFIX}999999999-1-00000000000000aa"));
    fs::create_dir(&orphaned).unwrap();
    fs::write(
        orphaned.join(".broker-owner"),
        format!("999999999 1 {me} {}\n", start_time(me)),
    )
    .unwrap();
    fs::write(orphaned.join("token"), CANARY).unwrap();
    // Both gone, or the child's pid reused by another process: swept.
    let gone = parent.join(format!("{DIR_PREFIX}999999999-1-00000000000000bb"));
    fs::create_dir(&gone).unwrap();
    fs::write(gone.join(".broker-owner"), "999999999 1 999999998 1\n").unwrap();
    let reused = parent.join(format!("{DIR_PREFIX}999999999-1-00000000000000cc"));
    fs::create_dir(&reused).unwrap();
    fs::write(
        reused.join(".broker-owner"),
        format!("999999999 1 {me} {}\n", start_time(me) + 1),
    )
    .unwrap();

    let mut swept = sweep_stale_in(root.path());
    swept.sort();
    assert_eq!(swept, vec![gone, reused]);
    assert_eq!(fs::read(orphaned.join("token")).unwrap(), CANARY.as_bytes());
}

#[test]
fn record_child_rewrites_the_marker_with_the_child_pid_and_start_time() {
    let root = tempfile::tempdir().unwrap();
    let dir = ScratchDir::create_in(root.path()).unwrap();
    let me = std::process::id();
    let marker = dir.path().join(".broker-owner");
    assert_eq!(
        fs::read_to_string(&marker).unwrap(),
        format!("{me} {}\n", start_time(me))
    );
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    dir.record_child(child.id()).unwrap();
    let recorded = fs::read_to_string(&marker).unwrap();
    let child_start = start_time(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        recorded,
        format!("{me} {} {} {child_start}\n", start_time(me), child.id())
    );
    // Only the marker: the temporary file was renamed over it.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(".broker-owner")]);
}
