//! The audit log: one line per request — identity, method, path, status, bytes, duration. Never
//! a token: nothing from `Authorization` (ours or the client's) is ever passed here, and every
//! field is either validated printable ASCII or quoted with escapes.

use std::time::Duration;

/// The log target, so audit lines can be filtered (`RUST_LOG=audit=info`).
pub const TARGET: &str = "audit";

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
    if !log::log_enabled!(target: TARGET, log::Level::Info) {
        return;
    }
    let ms = took.as_secs_f64() * 1000.0;
    match note {
        None => log::info!(
            target: TARGET,
            "identity={identity:?} method={method} path={path:?} status={status} bytes={bytes} duration_ms={ms:.1}"
        ),
        Some(n) => log::info!(
            target: TARGET,
            "identity={identity:?} method={method} path={path:?} status={status} bytes={bytes} duration_ms={ms:.1} note={n:?}"
        ),
    }
}
