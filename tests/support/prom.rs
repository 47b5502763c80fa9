//! `/metrics` as Prometheus sees it: a scrape over plain HTTP, Prometheus's own `promtool check
//! metrics` on the text, and the value of one series; and the pod's side of scraping as the
//! manifests and the chart render it (its health ports, what the NetworkPolicy opens). promtool is built once per machine from the
//! Go module proxy by tests/promtool/build-promtool.sh (`./build.sh test` builds it first, as a
//! prerequisite); these tests never build it, and fail saying how when it is missing.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// The promtool binary: `$PROMTOOL`, else the cached build of tests/promtool/build-promtool.sh.
pub fn promtool() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    crate::common::go_tool(
        &BIN,
        Some("PROMTOOL"),
        "tests/promtool/build-promtool.sh",
        true,
        "promtool is needed and missing",
    )
}

/// `promtool ARGS` in `dir`, `stdin` fed in: its output, whatever its status.
pub fn run(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool().display()));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// `promtool ARGS` in `dir`, which must succeed: what it said (stdout and stderr).
pub fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args, b"");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} in {}: {said}",
        dir.display()
    );
    said
}

/// `promtool check metrics` must pass on `text` (format, HELP/TYPE, Prometheus's naming lints);
/// `what` names the endpoint in the failure.
pub fn check_metrics(what: &str, text: &str) {
    let out = run(Path::new("."), &["check", "metrics"], text.as_bytes());
    assert!(
        out.status.success(),
        "promtool check metrics on {what} ({}): {}{}\n--- the text ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET /metrics` on 127.0.0.1:`port`: the body of a 200 in the text format 0.0.4.
pub fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot connect to the health port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer from port {port}: {raw:?}"));
    assert!(
        head.starts_with("HTTP/1.1 200")
            && head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "GET /metrics on port {port}: {head}"
    );
    body.to_string()
}

/// The value of the sample `series` (name and labels exactly as served, e.g.
/// `eks_connector_proxy_refused_total{reason="no_identity"}`), if served.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{series}: not a number {v:?}"))
        })
}

/// Every sample of family `name` (labels as served → value).
pub fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            (labels.is_empty() || labels.starts_with('{'))
                .then(|| (labels.to_string(), v.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

/// The pod's health ports, each serving /metrics: (port name, container, port).
pub const HEALTH_PORTS: [(&str, &str, u64); 3] = [
    ("agent-health", "connector-agent", 8082),
    ("keysync-health", "connector-keysync", 8083),
    ("proxy-health", "connector-proxy", 8081),
];

/// Every port a rendered StatefulSet's containers declare, as (name, container, port) sorted,
/// each checked to be the port its container's `--health.addr` binds.
pub fn declared_ports(sts: &Value) -> Vec<(String, String, u64)> {
    let spec = &sts["spec"]["template"]["spec"];
    let mut declared = Vec::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        let addr = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix("--health.addr="));
        for p in c["ports"].as_array().into_iter().flatten() {
            let n = p["containerPort"].as_u64().unwrap();
            assert_eq!(
                addr.and_then(|a| a.rsplit(':').next()),
                Some(n.to_string().as_str()),
                "{} declares port {p} that is not its --health.addr",
                c["name"]
            );
            declared.push((
                p["name"].as_str().unwrap().to_string(),
                c["name"].as_str().unwrap().to_string(),
                n,
            ));
        }
    }
    declared.sort();
    declared
}

/// [`HEALTH_PORTS`] as [`declared_ports`] gives them.
pub fn health_ports() -> Vec<(String, String, u64)> {
    HEALTH_PORTS
        .iter()
        .map(|(p, c, n)| (p.to_string(), c.to_string(), *n))
        .collect()
}

/// The ports a NetworkPolicy's ingress rules open (TCP, by name), and each rule's `from`.
pub fn opened_ports(np: &Value) -> (Vec<String>, Vec<Value>) {
    let mut ports = Vec::new();
    let mut from = Vec::new();
    for rule in np["spec"]["ingress"].as_array().into_iter().flatten() {
        let rule_ports = rule["ports"].as_array().cloned().unwrap_or_default();
        assert!(
            !rule_ports.is_empty(),
            "a rule without ports opens every port: {rule}"
        );
        for p in rule_ports {
            assert_eq!(p["protocol"], "TCP", "{p}");
            ports.push(p["port"].as_str().unwrap_or("a number").to_string());
        }
        from.push(rule["from"].clone());
    }
    ports.sort();
    (ports, from)
}

/// The pod template's annotations for annotation-based scrapers: scrape, /metrics, and
/// `prometheus.io/port` only when `port` is given (else every declared port is scraped).
pub fn assert_scrape_annotations(sts: &Value, port: Option<&str>) {
    let annotations = &sts["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{annotations}");
    assert_eq!(
        annotations["prometheus.io/path"], "/metrics",
        "{annotations}"
    );
    assert_eq!(
        annotations
            .get("prometheus.io/port")
            .and_then(Value::as_str),
        port,
        "{annotations}"
    );
}

/// The series of `eks_connector_build_info` for `program` at this version.
pub fn build_info(program: &str) -> String {
    format!(
        "eks_connector_build_info{{program=\"{program}\",version=\"{}\"}}",
        eks_connector::VERSION
    )
}
