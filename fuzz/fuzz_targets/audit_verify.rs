//! `audit verify` over arbitrary bytes: the log (and, after a `\n--checkpoint--\n` line, the
//! checkpoint file) written to a temp dir, then verified. Never panics, never an I/O error, and
//! the report is consistent. Seeds are logs written by `AuditLog::append`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use broker_core::audit::{checkpoint_path, verify};
use libfuzzer_sys::fuzz_target;

const SPLIT: &[u8] = b"\n--checkpoint--\n";

fn log_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("broker-fuzz-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("audit.log")
    })
}

fuzz_target!(|data: &[u8]| {
    let (log, checkpoint) = match data.windows(SPLIT.len()).position(|w| w == SPLIT) {
        Some(i) => (&data[..=i], Some(&data[i + SPLIT.len()..])),
        None => (data, None),
    };
    let path = log_path();
    std::fs::write(path, log).expect("write log");
    let cp = checkpoint_path(path);
    match checkpoint {
        Some(c) => std::fs::write(&cp, c).expect("write checkpoint"),
        None => {
            let _ = std::fs::remove_file(&cp);
        }
    }
    let v = verify(path).expect("verify reads what we wrote");
    assert!(v.last_seq == v.records);
    if let Some(p) = &v.problem {
        assert!(p.line >= 1);
    }
});
