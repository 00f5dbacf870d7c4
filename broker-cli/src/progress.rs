//! A spinner on stderr while a slow backend answers: after [`DELAY`] it names the credential
//! and the backend being waited on, redraws every [`TICK`], and is wiped when the answer (or
//! an error) arrives. Only when [`Style::progress`](crate::style::Style) allows it (stderr is
//! a terminal; not `--quiet`, `--json` or `--color never`). It is written with `\r` and
//! spaces, no escape sequences, and shows names only, never a value.
//!
//! Hand-written on the tokio timer the CLI already runs rather than a progress-bar crate: one
//! line, one frame set.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

/// How long an answer may take before the spinner shows.
pub const DELAY: Duration = Duration::from_millis(300);
/// How often it redraws.
pub const TICK: Duration = Duration::from_millis(100);

const FRAMES: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// What is being waited on, for the spinner: `minting `deploy` (aws-sts, backend aws)`.
pub fn label(broker: &broker_core::Broker, name: &str) -> String {
    let name = broker_core::grammar::escape_controls(name);
    let Some(spec) = broker.config().credential(&name) else {
        return format!("resolving `{name}`");
    };
    let scheme = spec.reference.scheme();
    let backend = broker_core::Registry::global()
        .for_scheme(scheme)
        .map_or(scheme, |d| d.name);
    let verb = match spec.source {
        broker_core::Source::Mint => "minting",
        broker_core::Source::Resolve => "reading",
    };
    format!("{verb} `{name}` from {backend} ({scheme}:)")
}

/// Awaits `work`, drawing the spinner for `label` if it takes longer than [`DELAY`].
pub async fn waiting<T>(label: &str, work: impl Future<Output = T>) -> T {
    if !crate::style::get().progress {
        return work.await;
    }
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return done,
        () = tokio::time::sleep(DELAY) => {}
    }
    let mut ticks = tokio::time::interval(TICK);
    let mut frame = 0usize;
    let mut width = 0usize;
    let result = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = ticks.tick() => {
                let line = format!("{} waiting: {label}…", FRAMES[frame % FRAMES.len()]);
                width = width.max(line.chars().count());
                let _ = write!(std::io::stderr().lock(), "\r{line}");
                frame += 1;
            }
        }
    };
    // Wipe the line with spaces: no escape sequence reaches the terminal.
    let _ = write!(std::io::stderr().lock(), "\r{}\r", " ".repeat(width));
    result
}
