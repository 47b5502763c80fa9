//! One key sync per Vault. Two processes can be placed beside one Vault with a token — a
//! launcher of an older manifest and the `server` of a drop-in, or a restarted container whose
//! predecessor is still finishing — and two writers of one Secret would take turns overwriting
//! each other with whatever each saw last. The first to take an exclusive `flock` on the Vault
//! directory syncs; the others stand by and take over when it exits (the kernel drops the lock
//! with the process, however it ends).
//!
//! The lock is on the directory itself: no file is added to the Vault (the agent and the original
//! connector see exactly their own files), containers that mount the same emptyDir share the
//! inode, and reading the directory needs no more than the sync needs anyway.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Held for as long as this process syncs the Vault.
#[derive(Debug)]
pub struct VaultLock {
    _dir: File,
}

/// Takes the lock if free: `Ok(None)` when another process holds it.
pub fn try_lock(base: &Path) -> io::Result<Option<VaultLock>> {
    let dir = File::open(base)?;
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(VaultLock { _dir: dir }));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!(
            "vault-lock-{}-{}",
            std::process::id(),
            crate::random::uuid_v4().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let first = try_lock(&dir).unwrap().expect("free at first");
        // A separate open is a separate lock holder, as another process would be.
        assert!(try_lock(&dir).unwrap().is_none(), "held by the first");
        drop(first);
        assert!(try_lock(&dir).unwrap().is_some(), "free again");
        assert!(try_lock(&dir.join("absent")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
