//! `broker completions SHELL` (clap_complete) and the hidden `broker man --out DIR`
//! (clap_mangen) that `cargo xtask man` runs: both are generated from the same clap
//! definitions as the parser, so they cannot drift from it.

use std::io::Write;
use std::path::Path;

use broker_core::Error;
use clap::CommandFactory;

use crate::cli::Cli;

/// Writes the completion script for `shell` to standard output.
pub fn completions(shell: clap_complete::Shell) -> Result<u8, Error> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "broker", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("cannot write to standard output", &e))?;
    Ok(0)
}

/// Writes `broker.1` and one `broker-<sub>.1` page per subcommand (nested ones as
/// `broker-audit-verify.1`) into `dir`, creating it; hidden subcommands get no page.
/// Prints each path written.
pub fn man_pages(dir: &Path) -> Result<u8, Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), &e))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, "broker", dir, &mut written)?;
    let mut out = std::io::stdout().lock();
    for path in written {
        let _ = writeln!(out, "{}", path.display());
    }
    Ok(0)
}

fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> Result<(), Error> {
    let page = cmd
        .clone()
        .name(name.to_string())
        .bin_name(name.replace('-', " "));
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .map_err(|e| Error::io(format!("cannot render the man page of `{name}`"), &e))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, roff)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), &e))?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
