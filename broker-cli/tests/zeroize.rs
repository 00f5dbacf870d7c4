//! Freed memory never holds a value: a test allocator scans every block the broker's own
//! paths free (config, the env/age/sops backends, delivery, the redactor) for a canary.
//!
//! The allocator forwards to the system allocator and, while [`SCANNING`] is on, searches each
//! block being freed for [`MARKER`] before handing it back; a realloc is done as allocate, copy
//! and free (the default `GlobalAlloc::realloc`), so a growing or shrinking buffer that moves
//! is scanned too, whether or not the system allocator would have moved it. It never
//! allocates. It checks the broker, not the allocator: blocks are freed to the system
//! allocator unchanged (wiping them on free would make the check pass trivially).
//!
//! The file has a single `#[test]`: it is its own binary, so nothing else allocates
//! concurrently. A control at the end frees a plain `String` holding the canary and a shrunk
//! `Vec` (what `SecretValue::new` used to do): both must register, so the check is known to
//! work. Third-party buffers (reqwest, hyper, rustls, the AWS SDK, `serde_json`'s scratch) are
//! outside these paths; `docs/threat-model.md` lists them.
#![cfg(all(feature = "env", feature = "age", feature = "sops"))]
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use broker_core::redact::Redactor;
use broker_core::{Broker, RequestContext, SecretValue};
use zeroize::Zeroizing;

use broker_age as _;
use broker_env as _;
use broker_sops as _;

/// What the allocator looks for: the start of every canary value in this test.
const MARKER: &[u8] = b"ZRO-canary-4f9d1c7e";
const ENV_VAR: &str = "BROKER_ZEROIZE_TEST_VALUE";

static SCANNING: AtomicBool = AtomicBool::new(false);
/// Blocks freed while holding the marker.
static FREED: AtomicUsize = AtomicUsize::new(0);
/// Blocks that held the marker when a realloc moved them to grow.
static GROWN: AtomicUsize = AtomicUsize::new(0);
/// Blocks that held the marker when a realloc moved them to shrink.
static SHRUNK: AtomicUsize = AtomicUsize::new(0);
/// Of those, shrunk by exactly 16 bytes: an AEAD tag dropped after decrypting in place.
static SHRUNK_BY_TAG: AtomicUsize = AtomicUsize::new(0);
/// Size of the last block that held the marker, and the 8 bytes after the marker in it
/// (which canary: `-env`, `-age`, `-sops`, `-control`).
static LAST_SIZE: AtomicUsize = AtomicUsize::new(0);
static LAST_TAIL: AtomicU64 = AtomicU64::new(0);

struct Scanner;

/// Whether the `len` bytes at `ptr` contain [`MARKER`] (recording where). No allocation.
fn scan(ptr: *const u8, len: usize) -> bool {
    let byte = |i: usize| {
        // SAFETY: `i < len` and the block of `len` bytes at `ptr` is still allocated (it is
        // about to be freed or moved). Every block is allocated zeroed (see `alloc`), so its
        // bytes are initialised; a volatile read keeps the compiler from reasoning about any
        // byte that a move of padding left undefined.
        unsafe { std::ptr::read_volatile(ptr.add(i)) }
    };
    if len < MARKER.len() {
        return false;
    }
    for start in 0..=len - MARKER.len() {
        if (0..MARKER.len()).all(|j| byte(start + j) == MARKER[j]) {
            LAST_SIZE.store(len, Ordering::SeqCst);
            let mut tail = [0u8; 8];
            for (k, t) in tail.iter_mut().enumerate() {
                let at = start + MARKER.len() + k;
                *t = if at < len { byte(at) } else { 0 };
            }
            LAST_TAIL.store(u64::from_le_bytes(tail), Ordering::SeqCst);
            return true;
        }
    }
    false
}

fn scanning() -> bool {
    SCANNING.load(Ordering::SeqCst)
}

// SAFETY: `alloc`, `alloc_zeroed` and `dealloc` forward to `System` with the same arguments
// (`alloc` asks for zeroed memory, a valid way to satisfy it), so the `GlobalAlloc` contract
// holds as it does for `System`. `realloc` allocates a new block from `System` with the old
// alignment, copies the smaller of the two sizes and frees the old block: the trait's
// documented default, correct for any allocator.
unsafe impl GlobalAlloc for Scanner {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract (non-zero size), which is the same for
        // `alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if scanning() && scan(ptr, layout.size()) {
            FREED.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: `ptr` was allocated by this allocator, hence by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    /// Always moves: whether a real allocator resizes in place is its choice (glibc often
    /// does, size-class allocators often do not), so a value in a block being resized counts.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if scanning() && scan(ptr, old) {
            let counter = match new_size {
                n if n >= old => &GROWN,
                n if old - n == 16 => &SHRUNK_BY_TAG,
                _ => &SHRUNK,
            };
            counter.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: the caller guarantees `new_size` is non-zero and, rounded up to the
        // alignment, does not overflow `isize`, so this layout is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a valid, non-zero-size layout.
        let new = unsafe { System.alloc_zeroed(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least `min(old, new_size)` bytes
            // long; `ptr` came from this allocator with `layout`.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, old.min(new_size));
                System.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Scanner = Scanner;

/// Counts of marker-holding blocks by fate: freed, grown, shrunk, shrunk by a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Hits {
    freed: usize,
    grown: usize,
    shrunk: usize,
    shrunk_by_tag: usize,
}

fn hits() -> Hits {
    Hits {
        freed: FREED.load(Ordering::SeqCst),
        grown: GROWN.load(Ordering::SeqCst),
        shrunk: SHRUNK.load(Ordering::SeqCst),
        shrunk_by_tag: SHRUNK_BY_TAG.load(Ordering::SeqCst),
    }
}

/// Runs `f` with scanning on and returns the blocks that held the marker meanwhile.
fn measure(f: impl FnOnce()) -> Hits {
    let before = hits();
    SCANNING.store(true, Ordering::SeqCst);
    f();
    SCANNING.store(false, Ordering::SeqCst);
    let after = hits();
    Hits {
        freed: after.freed - before.freed,
        grown: after.grown - before.grown,
        shrunk: after.shrunk - before.shrunk,
        shrunk_by_tag: after.shrunk_by_tag - before.shrunk_by_tag,
    }
}

fn last_hit() -> String {
    let tail = LAST_TAIL.load(Ordering::SeqCst).to_le_bytes();
    format!(
        "last block: {} bytes, marker followed by {:?}",
        LAST_SIZE.load(Ordering::SeqCst),
        String::from_utf8_lossy(&tail)
    )
}

fn canary(which: &str) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(MARKER.len() + which.len()));
    v.extend_from_slice(MARKER);
    v.extend_from_slice(which.as_bytes());
    v
}

fn run(cmd: &mut Command, stdin: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An age identity, an age file and a sops file (age recipient) holding canaries, and a
/// config that names them and an env variable.
fn setup(dir: &Path) {
    let peers = std::env::var_os("BROKER_PEERS_BIN").expect("BROKER_PEERS_BIN (for sops)");
    let sops = Path::new(&peers).join("sops");
    run(
        Command::new("age-keygen")
            .arg("-o")
            .arg(dir.join("key.txt")),
        b"",
    );
    let recipient = run(
        Command::new("age-keygen")
            .arg("-y")
            .arg(dir.join("key.txt")),
        b"",
    );
    let recipient = String::from_utf8(recipient).unwrap().trim().to_string();

    let age_out = dir.join("secret.age");
    run(
        Command::new("age")
            .args(["-r", &recipient, "-o"])
            .arg(&age_out),
        &canary("-age"),
    );

    let mut plain = Zeroizing::new(b"db:\n    password: ".to_vec());
    plain.extend_from_slice(&canary("-sops"));
    plain.extend_from_slice(b"\n    port: 5432\n");
    let plain_path = dir.join("plain.yaml");
    std::fs::write(&plain_path, &*plain).unwrap();
    let encrypted = run(
        Command::new(&sops)
            .args(["--encrypt", "--age", &recipient, "--input-type", "yaml"])
            .args(["--output-type", "yaml"])
            .arg(&plain_path)
            .env("SOPS_AGE_KEY_FILE", dir.join("key.txt")),
        b"",
    );
    std::fs::remove_file(&plain_path).unwrap();
    std::fs::write(dir.join("secrets.enc.yaml"), encrypted).unwrap();

    std::fs::write(
        dir.join(".broker.yml"),
        format!(
            "credentials:\n  \
             from_env: {{ ref: \"env:{ENV_VAR}\", as: FROM_ENV }}\n  \
             from_age: {{ ref: \"age:secret.age\", as: FROM_AGE, kind: file }}\n  \
             from_sops: {{ ref: \"sops:secrets.enc.yaml#db.password\", as: FROM_SOPS }}\n\
             backends:\n  \
             age: {{ identity: key.txt }}\n  \
             sops: {{ age_key_file: key.txt }}\n\
             audit: {{ path: audit.jsonl }}\n"
        ),
    )
    .unwrap();
}

#[test]
fn freed_memory_never_holds_a_value() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let env_value = canary("-env");
    // SAFETY: this binary has one test; nothing else reads or writes the environment while
    // this runs (libtest's main thread only waits for this one).
    unsafe { std::env::set_var(ENV_VAR, std::str::from_utf8(&env_value).unwrap()) };
    let stream_input = {
        let mut v = Zeroizing::new(Vec::with_capacity(4096));
        v.extend_from_slice(b"starting\nthe value is ");
        v.extend_from_slice(&canary("-age"));
        v.extend_from_slice(b" and again: ");
        v.extend_from_slice(&canary("-env"));
        v.extend_from_slice(b"\ndone\n");
        v
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = dir.path().join(".broker.yml");

    let mut checked = 0;
    let hits = measure(|| {
        let broker = Broker::load(&config).unwrap();
        let context = RequestContext::new();
        let mut delivery = runtime.block_on(broker.deliver(&[], &context)).unwrap();
        // Each value arrived: env and sops values in the environment, age's in a file.
        let env: Vec<&SecretValue> = delivery.env().iter().map(|(_, v)| v).collect();
        assert!(env.iter().any(|v| v.expose() == env_value.as_slice()));
        assert!(env.iter().any(|v| v.expose().ends_with(b"-sops")));
        let scratch = delivery.scratch().unwrap().path().to_path_buf();
        let file = Zeroizing::new(std::fs::read(scratch.join("from_age")).unwrap());
        assert!(file.starts_with(MARKER));

        let redactor = Arc::new(Redactor::new(
            delivery.secrets().iter().map(|(n, v)| (n.as_str(), v)),
        ));
        let mut stream = redactor.stream();
        let mut out = Vec::new();
        // Split so that the values straddle writes and the held tail grows.
        for piece in stream_input.chunks(7) {
            stream.push(piece, &mut out);
        }
        stream.flush(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("[REDACTED:from_age]") && text.contains("[REDACTED:from_env]"));
        assert!(!text.contains("ZRO-canary"), "{text}");
        checked = delivery.secrets().len();
        drop(stream);
        drop(redactor);
        delivery.wipe().unwrap();
        drop(delivery);
        drop(broker);
    });
    assert_eq!(checked, 3, "one value per credential");
    // The age crate (0.12) decrypts each STREAM chunk in a `Vec` of ciphertext + tag, drops
    // the 16-byte tag and turns it into a `SecretSlice` (a shrinking `into_boxed_slice`): its
    // one chunk here is the only block allowed, and only as a shrink by exactly the tag.
    // Third-party, listed in docs/threat-model.md; glibc shrinks in place, so nothing is left.
    assert!(
        hits.freed == 0 && hits.grown == 0 && hits.shrunk == 0 && hits.shrunk_by_tag <= 1,
        "freed or moved blocks held a value: {hits:?}; {}",
        last_hit()
    );

    // Control: the check registers a plain String freed unwiped and a Vec shrunk into a boxed
    // slice (the old `SecretValue::new`), so a zero above means something.
    let control = measure(|| {
        let s = String::from_utf8(canary("-control").to_vec()).unwrap();
        drop(std::hint::black_box(s));
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&canary("-control"));
        let mut boxed = std::hint::black_box(v.into_boxed_slice());
        zeroize::Zeroize::zeroize(&mut *boxed);
    });
    assert_eq!(
        control,
        Hits {
            freed: 1,
            shrunk: 1,
            ..Hits::default()
        },
        "the control leaves two unwiped copies; {}",
        last_hit()
    );
    // SAFETY: as for `set_var` above.
    unsafe { std::env::remove_var(ENV_VAR) };
    drop(runtime);
}
