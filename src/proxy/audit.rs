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

/// Writes one audit line. `note` says why a request was refused or cut short.
pub fn record(
    identity: &str,
    method: &str,
    path: &str,
    status: u16,
    bytes: u64,
    took: Duration,
    note: Option<&str>,
) {
    if !*ENABLED.get_or_init(|| log::log_enabled!(target: TARGET, log::Level::Info)) {
        return;
    }
    LINE.with(|cell| {
        let Ok(mut line) = cell.try_borrow_mut() else {
            return;
        };
        line.clear();
        format_line(&mut line, identity, method, path, status, bytes, took, note);
        write_stderr(line.as_bytes());
        if line.capacity() > 16 << 10 {
            *line = String::new();
        }
    });
}

thread_local! {
    /// Each connection thread formats its lines in one reused buffer.
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

#[allow(clippy::too_many_arguments)]
fn format_line(
    line: &mut String,
    identity: &str,
    method: &str,
    path: &str,
    status: u16,
    bytes: u64,
    took: Duration,
    note: Option<&str>,
) {
    line.push('[');
    push_timestamp(line, SystemTime::now());
    let ms = took.as_secs_f64() * 1000.0;
    let _ = write!(
        line,
        " INFO  {TARGET}] identity={identity:?} method={method} path={path:?} status={status} bytes={bytes} duration_ms={ms:.1}"
    );
    if let Some(n) = note {
        let _ = write!(line, " note={n:?}");
    }
    line.push('\n');
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
}
