//! `broker completions SHELL` and the man pages (`broker man --out DIR`, what `cargo xtask man`
//! runs): the bash script loads and registers `broker`; every page renders with `man -l` (or
//! `groff -man` where man-db is missing).
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};

fn broker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .env_remove("BROKER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_bash_script_loads_and_completes_subcommands() {
    let script = format!(
        r#"source <("{}" completions bash) && complete -p broker && COMP_WORDS=(broker comp) COMP_CWORD=1 COMP_LINE="broker comp" COMP_POINT=11 && _broker broker comp broker && echo "got:${{COMPREPLY[*]}}""#,
        env!("CARGO_BIN_EXE_broker")
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.starts_with("complete -o bashdefault -o default -o nosort -F _broker broker\n"),
        "{shown}"
    );
    assert!(shown.contains("got:completions"), "{shown}");
}

#[test]
fn every_shell_gets_a_script_naming_broker() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = broker(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("broker"), "{shell}: {text}");
        assert!(text.contains("completions"), "{shell}: {text}");
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = broker(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: invalid value 'tcsh' for '<SHELL>'\n  [possible values: bash, elvish, fish, powershell, zsh]\n\n  tip: a similar value exists: 'zsh'\n\nFor more information, try '--help'.\n"
    );
}

#[test]
fn man_pages_for_every_subcommand_render() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man");
    let out = broker(&["man", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut expected = vec![
        "broker.1",
        "broker-audit.1",
        "broker-audit-verify.1",
        "broker-check.1",
        "broker-completions.1",
        "broker-credential-process.1",
        "broker-doctor.1",
        "broker-get.1",
        "broker-revoke.1",
        "broker-rotate.1",
        "broker-run.1",
    ];
    if cfg!(feature = "serve") {
        expected.extend(["broker-request.1", "broker-serve.1"]);
    }
    for page in &expected {
        assert!(pages.iter().any(|p| p == page), "no {page} in {pages:?}");
    }
    assert!(!pages.iter().any(|p| p == "broker-man.1"), "{pages:?}");
    let renderer = if on_path("man") {
        ["man", "-l"]
    } else if on_path("groff") {
        ["groff", "-man"]
    } else {
        broker_core::testkit::record_skip("neither man nor groff is installed");
        return;
    };
    for page in &pages {
        let out = Command::new(renderer[0])
            .arg(renderer[1])
            .args(if renderer[0] == "groff" {
                vec!["-Tutf8"]
            } else {
                vec![]
            })
            .arg(out_dir.join(page))
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{page}: {text}");
        let name = page.trim_end_matches(".1");
        assert!(text.contains("NAME"), "{page}: {text}");
        let after_name = text.split("NAME").nth(1).unwrap_or_default().trim_start();
        assert!(
            after_name.starts_with(&format!("{name} ")),
            "{page}: {text}"
        );
        assert!(text.contains("SYNOPSIS"), "{page}: {text}");
    }
    let run = std::fs::read_to_string(out_dir.join("broker-run.1")).unwrap();
    assert!(run.contains("\\-\\-only"), "{run}");
}
