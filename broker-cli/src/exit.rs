//! Exit codes. The child's own code passes through `broker run`; the broker's codes follow
//! `sysexits.h` so they rarely collide with a tool's own.

use broker_core::ErrorKind;

/// Bad command line (clap's own code).
pub const USAGE: u8 = 2;
/// Refused by the egress gate or by policy (EX_NOPERM).
pub const DENIED: u8 = 77;
/// Invalid or incomplete config or reference (EX_CONFIG).
pub const CONFIG: u8 = 78;
/// A backend could not produce the credential: not found, access denied, tampered data,
/// unsupported operation, an answer the broker cannot use (a redirect, not JSON)
/// (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// A temporary failure that survived the retries: unreachable, timed out (EX_TEMPFAIL).
pub const TEMPFAIL: u8 = 75;
/// A bug (EX_SOFTWARE).
pub const SOFTWARE: u8 = 70;
/// Local I/O failed: scratch dir, audit log (EX_IOERR).
pub const IOERR: u8 = 74;
/// `broker run --isolate` where namespaces cannot be created: the command was not run
/// (EX_OSERR).
#[cfg(feature = "proxy")]
pub const OSERR: u8 = 71;

/// The exit code for an error of `kind`.
pub fn for_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidReference | ErrorKind::InvalidConfig | ErrorKind::NotConfigured => CONFIG,
        ErrorKind::EgressDenied | ErrorKind::PolicyDenied => DENIED,
        ErrorKind::Transient => TEMPFAIL,
        ErrorKind::Io => IOERR,
        ErrorKind::UnexpectedAnswer => UNAVAILABLE,
        ErrorKind::Internal => SOFTWARE,
        _ => UNAVAILABLE,
    }
}
