//! A small file whose contents we keep in memory and re-read only when the file changes.
//!
//! Projected service-account tokens are rotated by the kubelet through an atomic symlink swap, so
//! a change shows up as a new inode, size or mtime of the path (following links). We stat at most
//! once per `recheck` interval, so a busy proxy never touches the file per request.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    ino: u64,
    dev: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        ino: m.ino(),
        dev: m.dev(),
        len: m.len(),
        mtime: m.modified().ok(),
    })
}

struct Cached {
    stamp: Stamp,
    bytes: Arc<Vec<u8>>,
    generation: u64,
    checked: Instant,
}

/// See the module docs.
pub struct WatchedFile {
    path: PathBuf,
    recheck: Duration,
    max_len: u64,
    cached: Mutex<Option<Cached>>,
}

impl WatchedFile {
    /// `max_len` guards against a wrong path pointing at something huge.
    pub fn new(path: impl Into<PathBuf>, recheck: Duration, max_len: u64) -> Self {
        WatchedFile {
            path: path.into(),
            recheck,
            max_len,
            cached: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current contents and a generation number that grows each time they change.
    pub fn get(&self) -> std::io::Result<(Arc<Vec<u8>>, u64)> {
        let mut guard = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.as_mut() {
            if c.checked.elapsed() < self.recheck {
                return Ok((c.bytes.clone(), c.generation));
            }
            c.checked = Instant::now();
            match stamp(&self.path) {
                Ok(s) if s == c.stamp => return Ok((c.bytes.clone(), c.generation)),
                // Mid-rotation the path may briefly vanish: keep serving the old contents.
                Err(_) => return Ok((c.bytes.clone(), c.generation)),
                Ok(_) => {}
            }
        }
        let generation = guard.as_ref().map(|c| c.generation + 1).unwrap_or(1);
        let before = stamp(&self.path)?;
        if before.len > self.max_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is {} bytes, more than the {} expected",
                    self.path.display(),
                    before.len,
                    self.max_len
                ),
            ));
        }
        let bytes = std::fs::read(&self.path)?;
        // Keep a new reading only if it is not empty: an empty token is a write in progress.
        if bytes.is_empty() {
            if let Some(c) = guard.as_ref() {
                return Ok((c.bytes.clone(), c.generation));
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", self.path.display()),
            ));
        }
        let bytes = Arc::new(bytes);
        let unchanged = guard.as_ref().is_some_and(|c| *c.bytes == *bytes);
        let generation = if unchanged {
            generation - 1
        } else {
            generation
        };
        *guard = Some(Cached {
            stamp: before,
            bytes: bytes.clone(),
            generation,
            checked: Instant::now(),
        });
        Ok((bytes, generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_only_after_change() {
        let dir = std::env::temp_dir().join(format!("wf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, "one").unwrap();
        let w = WatchedFile::new(&p, Duration::ZERO, 1024);
        let (a, g1) = w.get().unwrap();
        assert_eq!(&**a, b"one");
        let (_, g1b) = w.get().unwrap();
        assert_eq!(g1, g1b);
        // Replace atomically as the kubelet does.
        let tmp = dir.join("token.new");
        std::fs::write(&tmp, "two-longer").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let (b, g2) = w.get().unwrap();
        assert_eq!(&**b, b"two-longer");
        assert!(g2 > g1);
        // A vanished file keeps the last good contents.
        std::fs::remove_file(&p).unwrap();
        assert_eq!(&*w.get().unwrap().0, b"two-longer");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_oversized_and_empty_files() {
        let dir = std::env::temp_dir().join(format!("wf2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("big");
        std::fs::write(&p, vec![b'x'; 100]).unwrap();
        assert!(WatchedFile::new(&p, Duration::ZERO, 10).get().is_err());
        std::fs::write(&p, "").unwrap();
        assert!(WatchedFile::new(&p, Duration::ZERO, 10).get().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
