//! Process hygiene while the broker holds secret values, and redaction of its own output.
//!
//! [`Hygiene::enter`] (called by `broker run` before anything is resolved):
//! - sets the soft `RLIMIT_CORE` to 0, so a crash writes no core file (the hard limit is left
//!   alone and the soft limit restored on drop; the child inherits the 0 soft limit and may
//!   raise it again);
//! - sets `PR_SET_DUMPABLE` to 0: no core dumps, no `ptrace` attach by other processes of the
//!   same user, and `/proc/<broker>/{environ,mem,maps,...}` become readable by root only.
//!   `execve` resets the flag, so the child is unaffected;
//! - turns on memory locking of secret buffers ([`SecretValue::lock_memory`]): the pages under
//!   every value, the redactor's patterns and the bytes a redacting stream holds back are
//!   `mlock`ed while they exist, so values are not written to swap. Best effort under any
//!   `RLIMIT_MEMLOCK` (a refused lock is logged at debug level and never fails an
//!   allocation). This replaces `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)` of the
//!   whole process, whose lock and unlock walks over every mapping cost a short-lived run
//!   more than anything else it did before the child started (issue 17), and which was only
//!   possible with an unlimited `RLIMIT_MEMLOCK` or as root.
//!
//! All of this goes through `rustix`'s safe wrappers (the `mlock` calls are in
//! `broker_core`'s `sys` module): this module has no `unsafe`.
//!
//! [`RedactedStderr`] is the `tracing` writer: every log line goes through the process-wide
//! redactor ([`broker_core::redact::live`]) before it reaches standard error.
//! [`install_panic_hook`] replaces the default panic message with a redacted one.

use std::io::{self, Write};

use broker_core::{SecretValue, redact};
use rustix::process::{DumpableBehavior, Resource, Rlimit};

/// What [`Hygiene::enter`] managed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// `RLIMIT_CORE` soft limit set to 0.
    pub no_core: bool,
    /// `PR_SET_DUMPABLE` set to 0.
    pub not_dumpable: bool,
    /// Secret buffers are locked in memory from now on.
    pub memory_locked: bool,
}

/// Restores the process's settings on drop.
#[derive(Debug)]
pub struct Hygiene {
    core_before: Option<Rlimit>,
    applied: Applied,
}

impl Hygiene {
    /// Applies the settings described in the module docs. Never fails: whatever the platform
    /// refuses is logged and skipped.
    pub fn enter() -> Hygiene {
        let before = rustix::process::getrlimit(Resource::Core);
        let no_core = match rustix::process::setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: before.maximum,
            },
        ) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "could not set RLIMIT_CORE to 0");
                false
            }
        };
        let not_dumpable =
            match rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "could not clear PR_SET_DUMPABLE");
                    false
                }
            };
        SecretValue::lock_memory(true);
        let memory_locked = true;
        Hygiene {
            core_before: no_core.then_some(before),
            applied: Applied {
                no_core,
                not_dumpable,
                memory_locked,
            },
        }
    }

    /// What was applied.
    pub fn applied(&self) -> Applied {
        self.applied
    }
}

impl Drop for Hygiene {
    fn drop(&mut self) {
        if self.applied.memory_locked {
            // Values still alive stay locked until they are dropped.
            SecretValue::lock_memory(false);
        }
        if let Some(before) = self.core_before.take() {
            let _ = rustix::process::setrlimit(Resource::Core, before);
        }
        // Dumpable stays off: the process is about to exit, and turning it back on would
        // re-expose /proc/<pid>/mem while freed pages may still hold copies.
    }
}

/// `tracing` writer: one buffer per event, redacted with the live redactor, written to
/// standard error when the event is complete.
#[derive(Debug, Default, Clone, Copy)]
pub struct RedactedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedEvent;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedEvent(Vec::new())
    }
}

/// One log event being written.
#[derive(Debug)]
pub struct RedactedEvent(Vec<u8>);

impl Write for RedactedEvent {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut self.0);
        let mut err = io::stderr().lock();
        err.write_all(&redact::redact_live(&text))?;
        err.flush()
    }
}

impl Drop for RedactedEvent {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Writes `line` (plus a newline) to standard error through the live redactor.
pub fn eprint_redacted(line: &str) {
    let mut text = line.as_bytes().to_vec();
    text.push(b'\n');
    let mut err = io::stderr().lock();
    let _ = err.write_all(&redact::redact_live(&text));
}

/// Replaces the panic hook with one that prints a redacted message and no payload that has
/// not been through the live redactor.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprint_redacted(&format!("broker: internal error: {payload}{location}"));
        eprint_redacted("hint: this is a bug in the broker; please report it");
    }));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn enter_never_fails_and_disables_core_dumps() {
        let h = Hygiene::enter();
        if h.applied().no_core {
            assert_eq!(rustix::process::getrlimit(Resource::Core).current, Some(0));
        }
        if h.applied().not_dumpable {
            assert_eq!(
                rustix::process::dumpable_behavior().ok(),
                Some(DumpableBehavior::NotDumpable)
            );
        }
        assert!(h.applied().memory_locked && SecretValue::memory_locking());
        drop(h);
        assert!(!SecretValue::memory_locking());
    }
}
