//! Helpers shared by the broker-age integration tests.
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use broker_age::{AgeProvider, Settings};
use broker_core::provider::NoNestedRefs;
use broker_core::testkit::require_peer;
use broker_core::{
    Credential, CredentialProvider, Error, Reference, Request, RequestContext, ResolveRef, Rotation,
};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upstream-age");

pub fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// A provider with fixed (empty) environment: no AGE_IDENTITY_FILE, HOME = `home`.
pub fn provider(settings: Settings, home: Option<&Path>) -> AgeProvider {
    AgeProvider::new(settings)
        .unwrap()
        .with_environment(None, home.map(Path::to_path_buf))
}

/// A provider whose backend identity is `paths` (isolated from the real environment).
pub fn with_identities(paths: &[&Path]) -> AgeProvider {
    let settings = Settings {
        identity: broker_age::IdentityList(
            paths
                .iter()
                .map(|p| broker_age::IdentitySpec::Path(p.display().to_string()))
                .collect(),
        ),
        ..Settings::default()
    };
    provider(settings, None)
}

pub async fn resolve(
    provider: &AgeProvider,
    reference: &str,
    base: &Path,
) -> Result<Credential, Error> {
    resolve_with(provider, reference, base, &NoNestedRefs).await
}

pub async fn resolve_with(
    provider: &AgeProvider,
    reference: &str,
    base: &Path,
    nested: &dyn ResolveRef,
) -> Result<Credential, Error> {
    let reference: Reference = reference.parse().unwrap();
    let ctx = RequestContext::new();
    let req = Request::new(&reference, base, &ctx).with_nested(nested);
    provider.resolve(&req).await
}

pub async fn rotate(
    provider: &AgeProvider,
    reference: &str,
    base: &Path,
) -> Result<Rotation, Error> {
    let reference: Reference = reference.parse().unwrap();
    let ctx = RequestContext::new();
    let req = Request::new(&reference, base, &ctx);
    provider.rotate(&req).await
}

/// The `age`, `age-keygen` and `ssh-keygen` binaries, or `None` (skip) when absent.
pub struct Tools {
    pub age: PathBuf,
    pub keygen: PathBuf,
    pub ssh_keygen: PathBuf,
}

pub fn tools() -> Option<Tools> {
    Some(Tools {
        age: require_peer("age")?,
        keygen: require_peer("age-keygen")?,
        ssh_keygen: require_peer("ssh-keygen")?,
    })
}

impl Tools {
    /// `age-keygen -o PATH`; returns the recipient.
    pub fn x25519(&self, path: &Path) -> String {
        run(Command::new(&self.keygen).arg("-o").arg(path));
        let out = run(Command::new(&self.keygen).arg("-y").arg(path));
        String::from_utf8(out).unwrap().trim().to_string()
    }

    /// `ssh-keygen -t KIND -N PASSPHRASE -f PATH`; returns the public key line.
    pub fn ssh(&self, kind: &str, path: &Path, passphrase: &str) -> String {
        let mut cmd = Command::new(&self.ssh_keygen);
        cmd.args([
            "-q",
            "-t",
            kind,
            "-C",
            "test@broker",
            "-N",
            passphrase,
            "-f",
        ])
        .arg(path);
        if kind == "rsa" {
            cmd.args(["-b", "2048"]);
        }
        run(&mut cmd);
        std::fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `age [-a] -r R... -o OUT` with `plaintext` on stdin.
    pub fn encrypt(&self, plaintext: &[u8], recipients: &[&str], armor: bool, out: &Path) {
        let mut cmd = Command::new(&self.age);
        if armor {
            cmd.arg("-a");
        }
        for r in recipients {
            cmd.arg("-r").arg(r);
        }
        cmd.arg("-o").arg(out);
        run_with_input(&mut cmd, plaintext);
    }

    /// `age -d -i IDENTITY FILE`; the plaintext.
    pub fn decrypt(&self, identity: &Path, file: &Path) -> Vec<u8> {
        run(Command::new(&self.age)
            .arg("-d")
            .arg("-i")
            .arg(identity)
            .arg(file))
    }
}

pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A random canary value, different per call.
pub fn canary(tag: &str) -> String {
    format!("canary-age-{tag}-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}
