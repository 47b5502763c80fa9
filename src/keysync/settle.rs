//! When the Vault files have settled: stat stamps and bytes unchanged for a quiet period.
//! Pure logic over observed snapshots and times (no clock), so it is unit-tested.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// Largest Vault file we read; real ones are under 2 KiB.
const MAX_FILE: u64 = crate::state::MAX_ITEM as u64 + 1;

/// Identity and shape of one file at one moment; `None` when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
}

pub(super) fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime: m.modified().ok(),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

pub(super) fn read_file(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        // An unreadable file reads as empty, which never parses as complete.
        if f.take(MAX_FILE).read_to_end(&mut buf).is_err() {
            buf.clear();
        }
    }
    buf
}

/// The three files' stamps and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub(super) stamps: [Option<Stamp>; 3],
    pub(super) bytes: [Vec<u8>; 3],
}

/// Decides when the files have settled. Pure logic over observed snapshots and times, so it is
/// unit-tested without a clock.
#[derive(Default)]
pub(super) struct Settler {
    /// The last snapshot seen and when it first appeared.
    last: Option<(Snapshot, Instant)>,
    /// Stamps of the last snapshot handed out as settled: while the files still show these,
    /// nothing needs reading.
    evaluated: Option<[Option<Stamp>; 3]>,
}

impl Settler {
    /// Whether the files need reading at all: their stamps differ from the last settled ones.
    pub(super) fn needs_read(&self, stamps: &[Option<Stamp>; 3]) -> bool {
        self.evaluated.as_ref() != Some(stamps)
    }

    /// Feeds one observation; returns the snapshot once it has been unchanged for `quiet`.
    /// Each settled snapshot is returned once.
    pub(super) fn observe(
        &mut self,
        snap: Snapshot,
        now: Instant,
        quiet: Duration,
    ) -> Option<Snapshot> {
        match &self.last {
            Some((prev, since)) if *prev == snap => {
                if now.duration_since(*since) >= quiet {
                    self.evaluated = Some(snap.stamps);
                    self.last = None;
                    return Some(snap);
                }
                None
            }
            _ => {
                self.last = Some((snap, now));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(len: u64, body: &str) -> Snapshot {
        let st = Some(Stamp {
            ino: 1,
            len,
            mtime: None,
            ctime: (0, 0),
        });
        Snapshot {
            stamps: [st, st, st],
            bytes: [body.into(), body.into(), body.into()],
        }
    }

    #[test]
    fn a_snapshot_settles_only_after_the_quiet_period() {
        let q = Duration::from_millis(400);
        let t0 = Instant::now();
        let mut s = Settler::default();
        assert!(s.needs_read(&snap(1, "a").stamps));
        assert_eq!(s.observe(snap(1, "a"), t0, q), None);
        assert_eq!(
            s.observe(snap(1, "a"), t0 + Duration::from_millis(200), q),
            None
        );
        // A change restarts the quiet period.
        assert_eq!(
            s.observe(snap(2, "ab"), t0 + Duration::from_millis(399), q),
            None
        );
        assert_eq!(
            s.observe(snap(2, "ab"), t0 + Duration::from_millis(600), q),
            None
        );
        let got = s.observe(snap(2, "ab"), t0 + Duration::from_millis(800), q);
        assert_eq!(got, Some(snap(2, "ab")));
        // Settled stamps need no more reading until they move.
        assert!(!s.needs_read(&snap(2, "ab").stamps));
        assert!(s.needs_read(&snap(3, "abc").stamps));
    }

    #[test]
    fn same_stamps_with_different_bytes_are_a_change() {
        let q = Duration::from_millis(400);
        let t0 = Instant::now();
        let mut s = Settler::default();
        assert_eq!(s.observe(snap(1, "a"), t0, q), None);
        assert_eq!(
            s.observe(snap(1, "b"), t0 + Duration::from_millis(500), q),
            None
        );
        assert_eq!(
            s.observe(snap(1, "b"), t0 + Duration::from_millis(700), q),
            None
        );
        assert!(s
            .observe(snap(1, "b"), t0 + Duration::from_millis(900), q)
            .is_some());
    }
}
