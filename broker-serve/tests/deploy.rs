//! `deploy/`: the Kubernetes manifests validate against the Kubernetes schemas
//! (`kubernetes-validate --strict`, offline), and the systemd units pass `systemd-analyze
//! verify` without a warning.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

use broker_core::testkit::{record_skip, require_peer};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no .{ext} files in {}", dir.display());
    out
}

#[test]
fn kubernetes_manifests_validate_strictly() {
    let Some(bin) = require_peer("kubernetes-validate") else {
        return;
    };
    let manifests = files(&deploy().join("kubernetes"), "yaml");
    let out = Command::new(bin)
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .args(&manifests)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.starts_with("INFO ") && line.contains(" passed "),
            "{line}"
        );
    }
    // Every resource of every file was checked (a file of unknown kinds would be skipped).
    for m in &manifests {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        assert!(text.contains(&name), "{name} not validated: {text}");
    }
    let documents: usize = manifests
        .iter()
        .map(|m| {
            std::fs::read_to_string(m)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("kind:"))
                .count()
        })
        .sum();
    assert_eq!(text.matches(" passed ").count(), documents, "{text}");
}

#[test]
fn systemd_units_verify_without_warnings() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var_os("CI").is_some() {
            panic!("systemd-analyze is not installed; CI must run `cargo xtask setup` first");
        }
        record_skip("systemd-analyze is not installed");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    for unit in files(&deploy().join("systemd"), "service") {
        let text = std::fs::read_to_string(&unit).unwrap();
        assert!(
            text.contains("ExecStart=/usr/local/bin/broker "),
            "{}",
            unit.display()
        );
        // The binary must exist for `verify`; everything else is checked as written.
        let text = text.replace("/usr/local/bin/broker ", "/bin/true ");
        let name = unit
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("@.", "@1.");
        let copy = work.path().join(name);
        std::fs::write(&copy, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{}: {said}",
            unit.display()
        );
    }
}
