//! `broker run` and its scratch dir: which roots are used, exact stderr and exit code when none
//! is usable, and orphaned children keeping their files.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const CANARY: &str = "canary-cli-scratch-29f1c6";
const CONFIG: &str = "credentials:\n  key: { ref: \"env:DEMO_TOKEN\", as: KEY_FILE, kind: file }\n";

/// `broker` in `dir` with no `XDG_RUNTIME_DIR`, `/dev/shm` replaced by `shm` (debug builds
/// only) and `TMPDIR` set to `tmp`.
fn broker(dir: &Path, shm: &Path, tmp: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_broker"));
    c.args(args)
        .current_dir(dir)
        .env_remove("XDG_RUNTIME_DIR")
        .env("BROKER_TEST_SHM_DIR", shm)
        .env("TMPDIR", tmp)
        .env("DEMO_TOKEN", CANARY)
        .env_remove("BROKER_CONFIG")
        .env_remove("BROKER_LOG")
        .stdin(Stdio::null());
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The per-user parent scratch dirs go in: `root/broker-UID`.
fn user_dir(root: &Path) -> PathBuf {
    root.join(format!("broker-{}", rustix::process::getuid().as_raw()))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Asserts that `root` holds only the per-user parent, 0700 and empty: every scratch dir wiped.
fn assert_only_an_empty_parent(root: &Path) {
    let parent = user_dir(root);
    let names: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names, vec![parent.clone()]);
    assert_eq!(mode_of(&parent), 0o700);
    let left: Vec<PathBuf> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "scratch dirs left behind");
}

#[test]
fn no_usable_scratch_root_exits_74_with_every_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".broker.yml"), CONFIG).unwrap();
    let shm = dir.path().join("no-shm");
    let tmp = tempfile::tempdir().unwrap();
    // Writable by everyone without the sticky bit: another user could swap our dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = broker(dir.path(), &shm, tmp.path(), &["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        stderr(&out),
        format!(
            "error: cannot create a scratch dir: {}: No such file or directory (os error 2); {}: writable by group or others without the sticky bit\n\
             hint: set XDG_RUNTIME_DIR or TMPDIR to a directory only you can write (mode 0700)\n",
            shm.display(),
            tmp.path().display()
        )
    );
    assert_eq!(out.status.code(), Some(74));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(CANARY));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    // A temp dir that does not exist: the same, exit 74 (it was 69, "unavailable").
    let gone = tmp.path().join("gone");
    let out = broker(dir.path(), &shm, &gone, &["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        stderr(&out),
        format!(
            "error: cannot create a scratch dir: {}: No such file or directory (os error 2); {}: No such file or directory (os error 2)\n\
             hint: set XDG_RUNTIME_DIR or TMPDIR to a directory only you can write (mode 0700)\n",
            shm.display(),
            gone.display()
        )
    );
    assert_eq!(out.status.code(), Some(74));
}

#[test]
fn a_sticky_temp_dir_is_used_when_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".broker.yml"), CONFIG).unwrap();
    let shm = dir.path().join("no-shm");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let script = "test \"$(cat \"$KEY_FILE\")\" = \"$DEMO_TOKEN\" && echo \"$KEY_FILE\"";
    let out = broker(
        dir.path(),
        &shm,
        tmp.path(),
        &["run", "--", "sh", "-c", script],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let scratch = Path::new(&path).parent().unwrap();
    assert_eq!(scratch.parent().unwrap(), user_dir(tmp.path()), "{path}");
    assert!(!Path::new(&path).exists());
    assert_only_an_empty_parent(tmp.path());
}

#[test]
fn parallel_runs_and_a_check_loop_never_sweep_a_live_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".broker.yml"), CONFIG).unwrap();
    let shm = dir.path().join("no-shm");
    let tmp = tempfile::tempdir().unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let script = "test \"$(cat \"$KEY_FILE\")\" = \"$DEMO_TOKEN\" || exit 9";
    std::thread::scope(|s| {
        let checker = s.spawn(|| {
            let mut codes = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let out = broker(dir.path(), &shm, tmp.path(), &["check", "env:DEMO_TOKEN"])
                    .output()
                    .unwrap();
                codes.push(out.status.code());
            }
            codes
        });
        let runners: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..8)
                        .map(|_| {
                            let out = broker(
                                dir.path(),
                                &shm,
                                tmp.path(),
                                &["run", "--", "sh", "-c", script],
                            )
                            .output()
                            .unwrap();
                            (out.status.code(), stderr(&out))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<_> = runners.into_iter().map(|r| r.join()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let codes = checker.join().unwrap();
        for r in results {
            for (code, err) in r.unwrap() {
                assert_eq!((code, err.as_str()), (Some(0), ""));
            }
        }
        assert!(codes.iter().all(|c| *c == Some(0)), "{codes:?}");
    });
    assert_only_an_empty_parent(tmp.path());
}

/// Waits (bounded) until `pid` has exited: no `/proc` entry, or a zombie nobody reaped.
fn wait_gone(pid: u32) {
    for _ in 0..3000 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat) if stat[stat.rfind(')').unwrap() + 2..].starts_with('Z') => return,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    panic!("process {pid} did not exit");
}

/// Waits (bounded) until `path` has content.
fn wait_for(path: &Path) -> String {
    for _ in 0..3000 {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}

#[test]
fn an_orphaned_child_keeps_its_files_until_it_exits() {
    use rustix::process::{Pid, Signal, kill_process};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".broker.yml"), CONFIG).unwrap();
    let shm = dir.path().join("no-shm");
    let tmp = tempfile::tempdir().unwrap();
    let script = "echo \"$$ $KEY_FILE\" > started.tmp && mv started.tmp started; exec sleep 60";
    let mut run = broker(
        dir.path(),
        &shm,
        tmp.path(),
        &["run", "--", "sh", "-c", script],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let started = wait_for(&dir.path().join("started"));
    let (child, file) = started.trim_end().split_once(' ').unwrap();
    let child: u32 = child.parse().unwrap();
    // The broker records the child in its marker right after spawning it; a broker killed
    // before that (a window of microseconds) leaves a dir the sweep takes for stale. Wait for
    // the record, as a crash at any later point would find it.
    let marker = Path::new(file).parent().unwrap().join(".broker-owner");
    for _ in 0..3000 {
        let text = std::fs::read_to_string(&marker).unwrap_or_default();
        if text.split_whitespace().nth(2) == Some(child.to_string().as_str()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The broker dies without wiping (as with SIGABRT or SIGSEGV); its child runs on.
    kill_process(Pid::from_raw(run.id() as i32).unwrap(), Signal::KILL).unwrap();
    run.wait().unwrap();

    let out = broker(dir.path(), &shm, tmp.path(), &["doctor"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("swept"),
        "swept a live child's dir"
    );
    assert_eq!(std::fs::read(file).unwrap(), CANARY.as_bytes());

    // Once the child is gone too, the next invocation sweeps the dir.
    kill_process(Pid::from_raw(child as i32).unwrap(), Signal::KILL).unwrap();
    wait_gone(child);
    let out = broker(dir.path(), &shm, tmp.path(), &["doctor"])
        .output()
        .unwrap();
    let parent = Path::new(file).parent().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "swept a stale scratch dir left by a dead run: {}",
            parent.display()
        )),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(parent.parent().unwrap(), user_dir(tmp.path()));
    assert_only_an_empty_parent(tmp.path());
}

#[test]
fn a_squatted_per_user_parent_in_a_shared_root_puts_the_dir_in_the_root_itself() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".broker.yml"), CONFIG).unwrap();
    // `/dev/shm` stand-in: a good root (sticky, world-writable like the real one), but its
    // `broker-UID` is 0755 (someone made it, and it is not ours to fix). Falling through to
    // the temp dir would let the squatter push the files from a tmpfs onto disk: the dir goes
    // directly in the shm root instead, as before the per-user parent.
    let shm = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shm.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let squatted = user_dir(shm.path());
    std::fs::create_dir(&squatted).unwrap();
    std::fs::set_permissions(&squatted, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let script = "test \"$(cat \"$KEY_FILE\")\" = \"$DEMO_TOKEN\" && echo \"$KEY_FILE\"";
    let out = broker(
        dir.path(),
        shm.path(),
        tmp.path(),
        &["run", "--", "sh", "-c", script],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            " WARN {}: mode 0755, not 0700: scratch dirs go directly in {}\n",
            squatted.display(),
            shm.path().canonicalize().unwrap().display()
        )
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let scratch = Path::new(&path).parent().unwrap();
    assert_eq!(
        scratch.parent().unwrap(),
        shm.path().canonicalize().unwrap(),
        "{path}"
    );
    // Gone after the run; nothing went to the temp dir; the squatted parent left as it was.
    let left: Vec<PathBuf> = std::fs::read_dir(shm.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, vec![squatted.clone()]);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    assert_eq!(mode_of(&squatted), 0o755, "left as it was");
    assert_eq!(std::fs::read_dir(&squatted).unwrap().count(), 0);

    // A dir a killed run left there is swept from the root, as the parent is not usable.
    let dead = shm
        .path()
        .join("broker-scratch-999999999-1-00000000000000aa");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("secret"), CANARY).unwrap();
    let out = broker(dir.path(), shm.path(), tmp.path(), &["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!dead.exists(), "swept");
}

#[test]
fn a_squatted_parent_in_the_runtime_dir_falls_through_to_the_next_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".broker.yml"), CONFIG).unwrap();
    // XDG_RUNTIME_DIR is ours and 0700: something in its parent's place is ours too (a file
    // here), and the next root is used, with no warning.
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(user_dir(runtime.path()), b"not a dir").unwrap();
    let shm = dir.path().join("no-shm");
    let tmp = tempfile::tempdir().unwrap();
    let out = broker(
        dir.path(),
        &shm,
        tmp.path(),
        &["run", "--", "sh", "-c", "echo \"$KEY_FILE\""],
    )
    .env("XDG_RUNTIME_DIR", runtime.path())
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let parent = Path::new(&path)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    assert_eq!(
        parent,
        user_dir(&tmp.path().canonicalize().unwrap()),
        "{path}"
    );
    assert_only_an_empty_parent(tmp.path());
}

#[test]
fn the_per_user_parent_is_0700_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".broker.yml"), CONFIG).unwrap();
    let shm = dir.path().join("no-shm");
    let tmp = tempfile::tempdir().unwrap();
    // A umask that clears the owner's write bit: mkdir makes 0500, the broker sets 0700.
    let out = Command::new("sh")
        .args(["-c", "umask 277; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_broker"))
        .args(["run", "--", "sh", "-c", "cat \"$KEY_FILE\" >/dev/null"])
        .current_dir(dir.path())
        .env_remove("XDG_RUNTIME_DIR")
        .env("BROKER_TEST_SHM_DIR", &shm)
        .env("TMPDIR", tmp.path())
        .env("DEMO_TOKEN", CANARY)
        .env_remove("BROKER_CONFIG")
        .env_remove("BROKER_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_only_an_empty_parent(tmp.path());
}
