//! Prometheus metrics in the text exposition format 0.0.4, served on `/metrics` of the health
//! address ([`crate::health`]).
//!
//! The hot path only touches atomics in statics (no lock, no allocation per request); the text
//! is built at scrape time. Label values come from fixed sets in this file only: never an
//! identity, a path, a token or anything else of unbounded cardinality.
//! Format: <https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Renders one process's metrics into the buffer (called per scrape).
pub type Render = std::sync::Arc<dyn Fn(&mut String) + Send + Sync>;

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of request durations: sub-millisecond answers up to hour-long watches.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0, 3600.0,
];
const NB: usize = DURATION_BUCKETS.len();

/// A duration histogram: one atomic per bucket (non-cumulative; summed at render), the count
/// and the sum in microseconds.
pub struct Histogram {
    buckets: [AtomicU64; NB],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; NB],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// `NAME_bucket`, `NAME_sum` and `NAME_count` lines (the header is the caller's).
    pub fn render(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        fn with_le<'a>(labels: &[(&'a str, &'a str)], le: &'a str) -> Vec<(&'a str, &'a str)> {
            let mut l = labels.to_vec();
            l.push(("le", le));
            l
        }
        let mut cumulative = 0;
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let le = b.to_string();
            sample(out, &bucket, &with_le(labels, &le), cumulative);
        }
        // +Inf counts every observation: never below the buckets read just before.
        let count = self.count.load(Ordering::Relaxed).max(cumulative);
        sample(out, &bucket, &with_le(labels, "+Inf"), count);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        sample(out, &format!("{name}_sum"), labels, sum);
        sample(out, &format!("{name}_count"), labels, count);
    }
}

/// The `# HELP` and `# TYPE` lines of a family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line. Label values are escaped as the format requires.
pub fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A family with a single unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    sample(out, name, &[], value);
}

/// `eks_connector_build_info{program,version} 1`, which every process serves.
pub fn build_info(out: &mut String, program: &str) {
    header(
        out,
        "eks_connector_build_info",
        "gauge",
        "Always 1; the labels name the program and its version.",
    );
    sample(
        out,
        "eks_connector_build_info",
        &[("program", program), ("version", crate::VERSION)],
        1,
    );
}

/// The proxy's request classes (the `method_class` label).
pub const METHOD_CLASSES: [&str; 4] = ["read", "watch", "write", "other"];

/// The `method_class` of a request: `watch` for a GET with `watch=true`/`watch=1` in its query.
pub fn method_class(method: &str, target: &str) -> usize {
    match method {
        "GET" if is_watch(target) => 1,
        "GET" | "HEAD" | "OPTIONS" => 0,
        "POST" | "PUT" | "PATCH" | "DELETE" => 2,
        _ => 3,
    }
}

fn is_watch(target: &str) -> bool {
    let Some((_, query)) = target.split_once('?') else {
        return false;
    };
    query
        .split('&')
        .any(|p| matches!(p, "watch=true" | "watch=1" | "watch=True"))
}

/// Why the proxy refused a request (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// No impersonation header: 401.
    NoIdentity,
    /// An identity header we do not accept: 400.
    BadIdentity,
    /// Smuggling or framing: bad heads, conflicting lengths, bad body framing.
    Framing,
    /// Over a limit: head size, header count, timeouts, the connection cap.
    Limits,
    /// A protocol upgrade (exec, attach, port-forward).
    Upgrade,
    /// A write in read-only mode.
    ReadOnly,
}

const REASONS: [(RefusalReason, &str); 6] = [
    (RefusalReason::NoIdentity, "no_identity"),
    (RefusalReason::BadIdentity, "bad_identity"),
    (RefusalReason::Framing, "framing"),
    (RefusalReason::Limits, "limits"),
    (RefusalReason::Upgrade, "upgrade"),
    (RefusalReason::ReadOnly, "read_only"),
];

/// Why a new API server connection failed (the `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Connect = 0,
    Tls = 1,
    Timeout = 2,
}
const CONNECT_CAUSES: [&str; 3] = ["connect", "tls", "timeout"];

/// Status codes counted one by one; anything else from the API server counts as its class.
const CODES: usize = 600;

/// The proxy's metrics (one proxy per process).
pub struct ProxyMetrics {
    requests: [[Counter; CODES]; 4],
    durations: [Histogram; 4],
    pub watches: Gauge,
    refused: [Counter; 6],
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub upstream_opened: Counter,
    upstream_failures: [Counter; 3],
    pub credential_reloads: Counter,
}

pub static PROXY: ProxyMetrics = ProxyMetrics::new();

/// Gauges the proxy reads from its own state at scrape time.
pub struct ProxyGauges {
    pub in_flight: usize,
    pub upstream_open: usize,
    pub upstream_idle: usize,
}

impl ProxyMetrics {
    const fn new() -> ProxyMetrics {
        ProxyMetrics {
            requests: [const { [const { Counter::new() }; CODES] }; 4],
            durations: [const { Histogram::new() }; 4],
            watches: Gauge::new(),
            refused: [const { Counter::new() }; 6],
            bytes_in: Counter::new(),
            bytes_out: Counter::new(),
            upstream_opened: Counter::new(),
            upstream_failures: [const { Counter::new() }; 3],
            credential_reloads: Counter::new(),
        }
    }

    /// One answered request (every request passes through the proxy's `handler::request`).
    pub fn request(&self, class: usize, status: u16, took: Duration) {
        let class = class.min(3);
        let code = if (100..CODES as u16).contains(&status) {
            status as usize
        } else {
            0
        };
        self.requests[class][code].inc();
        self.durations[class].observe(took);
    }

    pub fn refused(&self, why: RefusalReason) {
        if let Some(i) = REASONS.iter().position(|(r, _)| *r == why) {
            self.refused[i].inc();
        }
    }

    pub fn upstream_failed(&self, cause: ConnectFailure) {
        self.upstream_failures[cause as usize].inc();
    }

    pub fn render(&self, out: &mut String, g: &ProxyGauges) {
        build_info(out, "eks-connector-proxy");
        let name = "eks_connector_proxy_requests_total";
        header(
            out,
            name,
            "counter",
            "Requests answered, by method class (read, watch, write, other) and status code.",
        );
        let mut code = String::new();
        for (c, per_code) in self.requests.iter().enumerate() {
            for (i, n) in per_code.iter().enumerate() {
                let v = n.get();
                if v == 0 {
                    continue;
                }
                code.clear();
                let _ = write!(code, "{}", if i == 0 { 0 } else { i });
                sample(
                    out,
                    name,
                    &[("method_class", METHOD_CLASSES[c]), ("code", &code)],
                    v,
                );
            }
        }
        let name = "eks_connector_proxy_request_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Time from a request's head to the end of its answer (watches: their whole life).",
        );
        for (c, h) in self.durations.iter().enumerate() {
            h.render(out, name, &[("method_class", METHOD_CLASSES[c])]);
        }
        single(
            out,
            "eks_connector_proxy_requests_in_flight",
            "gauge",
            "Requests being answered now.",
            g.in_flight,
        );
        single(
            out,
            "eks_connector_proxy_watches",
            "gauge",
            "Watches (streams) open now.",
            self.watches.get(),
        );
        let name = "eks_connector_proxy_refused_total";
        header(
            out,
            name,
            "counter",
            "Requests refused by the proxy itself, by reason.",
        );
        for (i, (_, reason)) in REASONS.iter().enumerate() {
            sample(out, name, &[("reason", reason)], self.refused[i].get());
        }
        single(
            out,
            "eks_connector_proxy_received_bytes_total",
            "counter",
            "Request body bytes forwarded to the API server.",
            self.bytes_in.get(),
        );
        single(
            out,
            "eks_connector_proxy_sent_bytes_total",
            "counter",
            "Response body bytes sent to clients.",
            self.bytes_out.get(),
        );
        single(
            out,
            "eks_connector_proxy_upstream_connections",
            "gauge",
            "Connections to the API server open now (in use or idle).",
            g.upstream_open,
        );
        single(
            out,
            "eks_connector_proxy_upstream_idle_connections",
            "gauge",
            "Idle connections to the API server kept for reuse.",
            g.upstream_idle,
        );
        single(
            out,
            "eks_connector_proxy_upstream_connections_opened_total",
            "counter",
            "Connections to the API server opened.",
            self.upstream_opened.get(),
        );
        let name = "eks_connector_proxy_upstream_connection_failures_total";
        header(
            out,
            name,
            "counter",
            "Failed attempts to open a connection to the API server, by cause.",
        );
        for (i, cause) in CONNECT_CAUSES.iter().enumerate() {
            sample(
                out,
                name,
                &[("cause", cause)],
                self.upstream_failures[i].get(),
            );
        }
        single(
            out,
            "eks_connector_proxy_credential_reloads_total",
            "counter",
            "Times the service-account token or CA changed on disk and was loaded.",
            self.credential_reloads.get(),
        );
    }
}

/// Why a key sync attempt failed (the `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncFailure {
    /// RBAC (403) or a rejected token (401).
    Forbidden = 0,
    /// 409 after the store's own retries.
    Conflict = 1,
    /// No answer: connection, DNS, TLS, timeout.
    Unreachable = 2,
    /// Anything else (another status, a bad answer, local configuration).
    Other = 3,
}
const SYNC_CAUSES: [&str; 4] = ["forbidden", "conflict", "unreachable", "other"];

/// The key sync's metrics (one sync per process).
pub struct KeySyncMetrics {
    pub in_sync: Gauge,
    /// 1 while another process syncs this Vault and this one stands by (its `in_sync` is 0 then
    /// without anything being wrong: alerts on `in_sync` leave standby processes out).
    pub standby: Gauge,
    /// Unix time the Secret was last seen holding the Vault's registration (a save or a
    /// re-read), 0 before the first.
    pub last_success: Gauge,
    pub attempts: Counter,
    failures: [Counter; 4],
    pub rotations: Counter,
}

pub static KEYSYNC: KeySyncMetrics = KeySyncMetrics {
    in_sync: Gauge::new(),
    standby: Gauge::new(),
    last_success: Gauge::new(),
    attempts: Counter::new(),
    failures: [const { Counter::new() }; 4],
    rotations: Counter::new(),
};

impl KeySyncMetrics {
    pub fn failed(&self, cause: SyncFailure) {
        self.failures[cause as usize].inc();
    }

    pub fn succeeded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.last_success.set(now);
    }

    pub fn render(&self, out: &mut String) {
        single(
            out,
            "eks_connector_keysync_in_sync",
            "gauge",
            "1 when the state Secret holds the Vault's registration, else 0.",
            self.in_sync.get(),
        );
        single(
            out,
            "eks_connector_keysync_standby",
            "gauge",
            "1 while another process keeps this Vault's Secret in step and this one stands by.",
            self.standby.get(),
        );
        single(
            out,
            "eks_connector_keysync_last_success_timestamp_seconds",
            "gauge",
            "Unix time the Secret was last seen holding the Vault's registration, by a save or a re-read (0: not yet).",
            self.last_success.get(),
        );
        single(
            out,
            "eks_connector_keysync_attempts_total",
            "counter",
            "Attempts to save the Vault's registration to the Secret.",
            self.attempts.get(),
        );
        let name = "eks_connector_keysync_failures_total";
        header(out, name, "counter", "Failed save attempts, by cause.");
        for (i, cause) in SYNC_CAUSES.iter().enumerate() {
            sample(out, name, &[("cause", cause)], self.failures[i].get());
        }
        single(
            out,
            "eks_connector_keysync_rotations_total",
            "counter",
            "Changes of the Vault's registration seen (key rotations).",
            self.rotations.get(),
        );
    }
}

/// The agent launcher's metrics. The launcher never restarts the agent itself (it exits with
/// the agent's code and kubelet restarts the container: `kube_pod_container_status_restarts_total`
/// counts those), so this is whether the agent runs, and how it last ended.
pub struct LauncherMetrics {
    pub agent_running: Gauge,
    /// The agent's last exit code (128 + signal), -1 while it has not exited.
    pub last_exit_code: Gauge,
}

pub static LAUNCHER: LauncherMetrics = LauncherMetrics {
    agent_running: Gauge::new(),
    last_exit_code: Gauge(AtomicI64::new(-1)),
};

impl LauncherMetrics {
    pub fn render(&self, out: &mut String) {
        build_info(out, "eks-connector-agent");
        single(
            out,
            "eks_connector_agent_running",
            "gauge",
            "1 while the SSM agent process runs.",
            self.agent_running.get(),
        );
        single(
            out,
            "eks_connector_agent_last_exit_code",
            "gauge",
            "The SSM agent's last exit code (128 + signal when killed); -1 while it runs first.",
            self.last_exit_code.get(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_with_inf_sum_and_count() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(7200));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", &[("method_class", "read")]);
        assert!(
            out.contains("x_seconds_bucket{method_class=\"read\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{method_class=\"read\",le=\"0.005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{method_class=\"read\",le=\"3600\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{method_class=\"read\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_sum{method_class=\"read\"} 7200.0033\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_count{method_class=\"read\"} 3\n"),
            "{out}"
        );
    }

    #[test]
    fn label_values_are_escaped_and_families_have_help_and_type() {
        let mut out = String::new();
        header(&mut out, "a_total", "counter", "Things.");
        sample(&mut out, "a_total", &[("l", "q\"b\\n\n")], 2);
        assert_eq!(
            out,
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{l=\"q\\\"b\\\\n\\n\"} 2\n"
        );
    }

    #[test]
    fn method_classes() {
        assert_eq!(METHOD_CLASSES[method_class("GET", "/api/v1/pods")], "read");
        assert_eq!(
            METHOD_CLASSES[method_class("GET", "/api/v1/pods?watch=true&x=1")],
            "watch"
        );
        assert_eq!(
            METHOD_CLASSES[method_class("GET", "/api/v1/pods?watch=false")],
            "read"
        );
        assert_eq!(
            METHOD_CLASSES[method_class("DELETE", "/api/v1/pods/a")],
            "write"
        );
        assert_eq!(METHOD_CLASSES[method_class("BREW", "/")], "other");
    }

    #[test]
    fn proxy_render_counts_and_has_no_duplicate_families() {
        let m = ProxyMetrics::new();
        m.request(0, 200, Duration::from_millis(1));
        m.request(0, 200, Duration::from_millis(1));
        m.request(2, 403, Duration::from_millis(1));
        m.request(3, 999, Duration::from_millis(1));
        m.refused(RefusalReason::NoIdentity);
        let mut out = String::new();
        let g = ProxyGauges {
            in_flight: 1,
            upstream_open: 2,
            upstream_idle: 1,
        };
        m.render(&mut out, &g);
        for want in [
            "eks_connector_proxy_requests_total{method_class=\"read\",code=\"200\"} 2\n",
            "eks_connector_proxy_requests_total{method_class=\"write\",code=\"403\"} 1\n",
            "eks_connector_proxy_requests_total{method_class=\"other\",code=\"0\"} 1\n",
            "eks_connector_proxy_refused_total{reason=\"no_identity\"} 1\n",
            "eks_connector_proxy_requests_in_flight 1\n",
            "eks_connector_build_info{program=\"eks-connector-proxy\",version=\"",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        let types: Vec<&str> = out.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a family declared twice:\n{out}");
        let helps = out.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(helps, n);
        assert!(names.iter().all(|n| n.starts_with("eks_connector_")));
    }
}
