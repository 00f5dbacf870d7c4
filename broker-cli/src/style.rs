//! Output conventions shared by every command: `--color auto|always|never` with `NO_COLOR`
//! (<https://no-color.org>), `--quiet`, and whether a progress spinner may be drawn.
//!
//! Set once in `main` from the parsed flags; read anywhere. Colour is emphasis only (the
//! `error:`, `warning:`, `hint:` and `what to do:` prefixes): every line reads the same
//! without it, and nothing a test asserts on a pipe ever carries an escape.

use std::io::IsTerminal;
use std::sync::OnceLock;

use crate::cli::ColorChoice;

/// What this invocation may print besides its results and errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// Colour on stdout.
    pub stdout_color: bool,
    /// Colour on stderr.
    pub stderr_color: bool,
    /// `--quiet`: no warnings, notes or progress.
    pub quiet: bool,
    /// A spinner may be drawn on stderr: a terminal, not `--quiet`, not `--json`, not
    /// `--color never` (the spinner itself is never coloured, so `NO_COLOR` keeps it).
    pub progress: bool,
}

static STYLE: OnceLock<Style> = OnceLock::new();

/// Whether `NO_COLOR` is set to something non-empty.
fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Decides the style from the flags; call once, before anything is printed.
pub fn init(color: ColorChoice, quiet: bool, json: bool) {
    let decide = |terminal: bool| match color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && !no_color_env(),
    };
    let stderr_tty = std::io::stderr().is_terminal();
    let style = Style {
        stdout_color: !json && decide(std::io::stdout().is_terminal()),
        stderr_color: decide(stderr_tty),
        quiet,
        progress: stderr_tty && !quiet && !json && color != ColorChoice::Never,
    };
    let _ = STYLE.set(style);
}

/// The style set by [`init`] (everything off before it).
pub fn get() -> Style {
    STYLE.get().copied().unwrap_or_default()
}

/// A colour for a prefix.
#[derive(Debug, Clone, Copy)]
pub enum Paint {
    /// Errors.
    Red,
    /// Warnings and what to do.
    Yellow,
    /// Hints.
    Cyan,
}

/// `text` in bold `paint` when `on`, else as is.
pub fn paint(text: &str, paint: Paint, on: bool) -> String {
    if !on {
        return text.to_string();
    }
    let code = match paint {
        Paint::Red => "1;31",
        Paint::Yellow => "1;33",
        Paint::Cyan => "1;36",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// `text` painted for stderr.
pub fn err(text: &str, p: Paint) -> String {
    paint(text, p, get().stderr_color)
}

/// `text` painted for stdout.
pub fn out(text: &str, p: Paint) -> String {
    paint(text, p, get().stdout_color)
}
