//! Writing the certificate directory's files.
//!
//! Running nodes poll their certificate, key, CA bundle and CRL and reload them when they
//! change, so every write goes to a temporary file in the same directory that is then renamed
//! over the target: a reader sees the old file or the new one, never half of one.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Writes a private key: mode 0600 from the moment the file exists.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_atomic(path, contents.as_bytes(), false)
}

/// Writes a certificate, CRL or registry: readable by everyone (subject to the umask).
pub fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_atomic(path, contents.as_bytes(), true)
}

fn write_atomic(path: &Path, contents: &[u8], public: bool) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    // A dot prefix keeps the temporary file out of globs like node-*.pem.
    builder.prefix(".canopy-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if public {
            builder.permissions(std::fs::Permissions::from_mode(0o644));
        }
    }
    #[cfg(not(unix))]
    let _ = public;
    // tempfile's own default mode is 0600, which is what private keys need.
    let mut file = builder
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    file.write_all(contents)
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    file.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// The lock file every `canopy certs` command that changes DIR holds while it does.
const LOCK_FILE: &str = ".canopy-certs.lock";

/// An exclusive lock on DIR, released when dropped.
pub struct DirLock {
    _file: std::fs::File,
}

/// Waits for and takes DIR's lock, so that commands changing the directory run one at a time
/// (two revocations at once would otherwise each rewrite the registry and CRL without the
/// other's entry). Outside `init`, a DIR that is not a cluster's gets the registry's error and
/// no lock file.
pub fn lock_dir(dir: &Path) -> anyhow::Result<DirLock> {
    if !dir.join(super::registry::REGISTRY_FILE).exists() {
        return Err(match super::registry::Registry::load(dir, None) {
            Err(e) => e,
            Ok(_) => super::registry::no_ca(dir),
        });
    }
    lock_new_dir(dir)
}

/// [`lock_dir`] for `init`, in a directory that may not hold a cluster yet.
pub fn lock_new_dir(dir: &Path) -> anyhow::Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor this function owns and keeps open in the guard;
        // it only blocks until no other process holds the lock.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(DirLock { _file: file })
}

/// Reads a text file, naming it in the error.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Makes sure DIR's `.gitignore` ignores private keys, keeping whatever else it says.
pub fn ensure_gitignore(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(".gitignore");
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if existing.lines().any(|line| line.trim() == "*.key") {
        return Ok(());
    }
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("*.key\n");
    write_public(&path, &text)
}

/// The `CERTIFICATE` blocks of a PEM text, each as its own PEM text (with a final newline).
///
/// Used to split a CA bundle without a PEM encoder: the blocks are copied as they are.
pub fn certificate_blocks(pem: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines() {
        let line = line.trim_end();
        if line == "-----BEGIN CERTIFICATE-----" {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line == "-----END CERTIFICATE-----" {
            blocks.extend(current.take());
        }
    }
    blocks
}
