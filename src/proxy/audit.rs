//! The audit log: one line per request — identity, method, path, status, bytes, duration. Never
//! a token: nothing from `Authorization` (ours or the client's) is ever passed here, and every
//! field is either validated printable ASCII or quoted with escapes.
//!
//! Lines look exactly like the rest of the log (`[time INFO  audit] ...`) and obey `RUST_LOG`
//! (target `audit`), but each is written to stderr with one `write` call of its own rather than
//! through the logger's process-wide stderr lock: under load, connection threads queueing on
//! that lock cost more than the proxying itself.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// The log target, so audit lines can be filtered (`RUST_LOG=info,audit=off`).
pub const TARGET: &str = "audit";

static ENABLED: OnceLock<bool> = OnceLock::new();

/// The most of a request target an audit line carries: a query string can be 16 KiB.
pub const MAX_TARGET: usize = 1024;

/// One request, as the audit line records it.
pub struct Entry<'a> {
    pub identity: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    /// The target's length as received (it may be longer than `target`).
    pub target_len: usize,
    pub status: u16,
    pub bytes: u64,
    pub took: Duration,
    /// Why a request was refused or cut short.
    pub note: Option<&'a str>,
}

/// Writes one audit line.
pub fn record(entry: &Entry) {
    if !*ENABLED.get_or_init(|| log::log_enabled!(target: TARGET, log::Level::Info)) {
        return;
    }
    LINE.with(|cell| {
        let Ok(mut line) = cell.try_borrow_mut() else {
            return;
        };
        line.clear();
        format_line(&mut line, entry);
        write_stderr(line.as_bytes());
    });
}

thread_local! {
    /// Each connection thread formats its lines in one reused buffer (a few KiB at most: every
    /// field is bounded).
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn format_line(line: &mut String, e: &Entry) {
    line.push('[');
    push_timestamp(line, SystemTime::now());
    let ms = e.took.as_secs_f64() * 1000.0;
    let mut cut = e.target.len().min(MAX_TARGET);
    while !e.target.is_char_boundary(cut) {
        cut -= 1;
    }
    let _ = write!(line, " INFO  {TARGET}] identity=");
    push_quoted(line, e.identity);
    let _ = write!(line, " method={} path=", e.method);
    push_quoted(line, &e.target[..cut]);
    let len = e.target_len.max(e.target.len());
    if len > cut {
        let _ = write!(line, " path_bytes={len}");
    }
    let _ = write!(
        line,
        " status={} bytes={} duration_ms={ms:.1}",
        e.status, e.bytes
    );
    if let Some(n) = e.note {
        let _ = write!(line, " note={n:?}");
    }
    line.push('\n');
}

/// `s` as `{:?}` writes it. Identities and paths are nearly always printable ASCII without
/// quotes or backslashes, which `{:?}` would copy unchanged: those are copied at once rather
/// than escaped character by character.
fn push_quoted(line: &mut String, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        line.push('"');
        line.push_str(s);
        line.push('"');
    } else {
        let _ = write!(line, "{s:?}");
    }
}

fn write_stderr(mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writing a valid buffer to fd 2.
        let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        b = &b[n as usize..];
    }
}

/// `2026-11-25T16:19:06.456Z`, as the logger prints it.
fn push_timestamp(out: &mut String, t: SystemTime) {
    let u = crate::utc::Utc::from(t);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        u.year,
        u.month,
        u.day,
        u.hour,
        u.minute,
        u.second,
        u.nanos / 1_000_000
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn timestamps_match_the_logger_format() {
        let mut s = String::new();
        push_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_795_623_546_456),
        );
        assert_eq!(s, "2026-11-25T16:19:06.456Z");
        let mut s = String::new();
        push_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
        let mut s = String::new();
        push_timestamp(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn quoted_values_read_as_debug_formatting_writes_them() {
        // Every ASCII character alone and inside a value, quotes, backslashes, control
        // characters, non-ASCII text: the audit line quotes as `{:?}` always did.
        let mut cases: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        cases.extend((0u8..0x80).map(|b| format!("/api/v1/pods?x={}&y", char::from(b))));
        cases.extend(
            [
                "",
                "arn:aws:iam::111122223333:role/EKSConsoleViewer",
                "say \"hi\"",
                "back\\slash",
                "tab\there",
                "é/ü/\u{200b}/\u{301}",
                "\u{7f}\u{85}",
            ]
            .map(String::from),
        );
        for c in &cases {
            let mut line = String::new();
            push_quoted(&mut line, c);
            assert_eq!(line, format!("{c:?}"), "for {c:?}");
        }
    }

    #[test]
    fn a_long_query_string_is_capped() {
        let target = format!("/api/v1/pods?labelSelector={}", "a".repeat(16 << 10));
        let mut entry = Entry {
            identity: "arn:x",
            method: "GET",
            target: &target,
            target_len: target.len(),
            status: 200,
            bytes: 5,
            took: Duration::ZERO,
            note: None,
        };
        let mut line = String::new();
        format_line(&mut line, &entry);
        assert!(line.len() < 2048, "a {} byte audit line", line.len());
        assert!(
            line.contains("path=\"/api/v1/pods?labelSelector=aaa"),
            "{line}"
        );
        let tail = format!("a\" path_bytes={} status=200", target.len());
        assert!(line.contains(&tail), "{line}");
        assert!(line.ends_with('\n'));
        // A head compacted for a long stream keeps the target's length.
        entry.target = &target[..MAX_TARGET];
        let mut again = String::new();
        format_line(&mut again, &entry);
        assert_eq!(line[24..], again[24..]);
        // Short targets are written whole, without a length.
        entry.target = "/version";
        entry.target_len = 8;
        line.clear();
        format_line(&mut line, &entry);
        assert!(line.contains(" path=\"/version\" status=200 "), "{line}");
    }
}
