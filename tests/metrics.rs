//! `/metrics` of each long-running process, read as Prometheus reads it: Prometheus's own
//! `promtool check metrics` (tests/promtool/build-promtool.sh) passes on every endpoint, idle and
//! after traffic, and the counters say exactly what happened: a known mix of requests through the
//! real kube-apiserver for the proxy, a rotation, an RBAC outage and its recovery for the key sync
//! (the same with AWS's own agent: tests/real_agent.rs). The example alert rules
//! (manifests/monitoring/alerts.yaml) pass `promtool check rules` and fire on their test series.

mod common;
#[path = "support/prom.rs"]
mod prom;
#[path = "support/proxy.rs"]
mod proxy_env;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{free_port, wait_for, TestNamespace};
use eks_connector::state::{self, Registration};
use proxy_env::Proxy;

const POD: &str = "eks-connector-0";
const SECRET: &str = "eks-connector-state-0";
const ACTIVATION: &str = "3f1e6a52-7c0b-4d8e-9a4f-2b6c8d0e1f23";

fn monitoring() -> PathBuf {
    common::repo_root().join("manifests/monitoring")
}

#[test]
fn the_alert_rules_pass_promtool_and_each_fires_on_its_test_series() {
    let said = prom::run_ok(&monitoring(), &["check", "rules", "alerts.yaml"]);
    assert!(said.contains("SUCCESS: 2 rules found"), "{said}");
    let said = prom::run_ok(&monitoring(), &["test", "rules", "alerts.test.yaml"]);
    assert!(said.contains("SUCCESS"), "{said}");

    // The README shows the rules as they are in the file.
    let rules = std::fs::read_to_string(monitoring().join("alerts.yaml")).unwrap();
    let groups = &rules[rules.find("groups:").expect("alerts.yaml has groups")..];
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains(groups),
        "README.md must show manifests/monitoring/alerts.yaml from `groups:` on, as it is"
    );
}

/// `promtool check metrics` passes on `text`, and every family is ours.
fn check(what: &str, text: &str) {
    prom::check_metrics(what, text);
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(line.starts_with("# TYPE eks_connector_"), "{what}: {line}");
    }
}

fn requests(text: &str) -> Vec<(String, f64)> {
    let mut v = prom::samples(text, "eks_connector_proxy_requests_total");
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn series(class: &str, code: u16, n: f64) -> (String, f64) {
    (format!("{{method_class=\"{class}\",code=\"{code}\"}}"), n)
}

/// Reads a watch's answer head; the watch stays open.
fn open_watch(proxy: &Proxy, ns: &str, who: &str) -> UnixStream {
    let mut s = UnixStream::connect(&proxy.sock).unwrap();
    write!(
        s,
        "GET /api/v1/namespaces/{ns}/configmaps?watch=true&timeoutSeconds=120 HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: {who}\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the watch closed before its head");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

fn gauge(port: u16, name: &str) -> f64 {
    prom::value(&prom::scrape(port), name).unwrap_or_else(|| panic!("{name} not served"))
}

/// Waits until gauge `name` reads `want`; panics with the text served otherwise.
fn wait_gauge(port: u16, name: &str, want: f64, proxy: &Proxy) {
    let ok = wait_for(Duration::from_secs(20), || {
        (gauge(port, name) == want).then_some(())
    });
    assert!(
        ok.is_some(),
        "{name} is {} (want {want})\n{}\nproxy log:\n{}",
        gauge(port, name),
        prom::scrape(port),
        proxy.log_text()
    );
}

#[test]
fn the_proxy_counts_exactly_the_requests_it_answered() {
    let (ns, alice) = proxy_env::viewer("metrics-mix");
    let health = free_port();
    let addr = format!("--health.addr=127.0.0.1:{health}");
    let proxy = Proxy::for_ns("metrics-mix", &ns, &[&addr]);
    wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", health)).ok()
    })
    .expect("the health port listens");

    let idle = prom::scrape(health);
    check("the idle proxy", &idle);
    assert_eq!(requests(&idle), vec![], "nothing answered yet:\n{idle}");
    assert_eq!(
        prom::value(&idle, "eks_connector_proxy_requests_in_flight"),
        Some(0.0)
    );
    assert_eq!(prom::value(&idle, "eks_connector_proxy_watches"), Some(0.0));
    let build = prom::build_info("eks-connector-proxy");
    assert_eq!(prom::value(&idle, &build), Some(1.0), "{idle}");

    // The mix: 5 reads allowed, 3 reads the API server forbids (view has no Secrets), 2 without
    // an identity (the proxy's own 401), 1 delete the API server forbids (not read-only here).
    let cms = format!("/api/v1/namespaces/{}/configmaps", ns.name);
    let secrets = format!("/api/v1/namespaces/{}/secrets", ns.name);
    for _ in 0..5 {
        assert_eq!(proxy.curl(Some(&alice), &[], &cms).0, 200);
    }
    for _ in 0..3 {
        assert_eq!(proxy.curl(Some(&alice), &[], &secrets).0, 403);
    }
    for _ in 0..2 {
        assert_eq!(proxy.curl(None, &[], &cms).0, 401);
    }
    let one = format!("{cms}/kube-root-ca.crt");
    assert_eq!(proxy.curl(Some(&alice), &["-X", "DELETE"], &one).0, 403);

    // A watch: in flight and counted as a watch while open; a request once it ends.
    let watch = open_watch(&proxy, &ns.name, &alice);
    let open = prom::scrape(health);
    assert_eq!(
        prom::value(&open, "eks_connector_proxy_watches"),
        Some(1.0),
        "{open}"
    );
    assert_eq!(
        prom::value(&open, "eks_connector_proxy_requests_in_flight"),
        Some(1.0),
        "{open}"
    );
    check("the proxy with a watch open", &open);
    drop(watch);
    wait_gauge(health, "eks_connector_proxy_watches", 0.0, &proxy);
    wait_gauge(
        health,
        "eks_connector_proxy_requests_in_flight",
        0.0,
        &proxy,
    );

    let after = prom::scrape(health);
    check("the proxy after traffic", &after);
    let mut want = vec![
        series("read", 200, 5.0),
        series("read", 403, 3.0),
        series("read", 401, 2.0),
        series("write", 403, 1.0),
        series("watch", 200, 1.0),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(requests(&after), want, "{after}");
    for (reason, n) in [
        ("no_identity", 2.0),
        ("bad_identity", 0.0),
        ("framing", 0.0),
        ("limits", 0.0),
        ("upgrade", 0.0),
        ("read_only", 0.0),
    ] {
        let s = format!("eks_connector_proxy_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(prom::value(&after, &s), Some(n), "{s}\n{after}");
    }
    for (class, n) in [
        ("read", 10.0),
        ("write", 1.0),
        ("watch", 1.0),
        ("other", 0.0),
    ] {
        let count = format!(
            "eks_connector_proxy_request_duration_seconds_count{{method_class=\"{class}\"}}"
        );
        let inf = format!(
            "eks_connector_proxy_request_duration_seconds_bucket{{method_class=\"{class}\",le=\"+Inf\"}}"
        );
        assert_eq!(prom::value(&after, &count), Some(n), "{count}\n{after}");
        assert_eq!(prom::value(&after, &inf), Some(n), "{inf}\n{after}");
    }
    let opened = prom::value(
        &after,
        "eks_connector_proxy_upstream_connections_opened_total",
    );
    assert!(opened.is_some_and(|n| n >= 1.0), "{after}");
    let sent = prom::value(&after, "eks_connector_proxy_sent_bytes_total");
    assert!(sent.is_some_and(|n| n > 0.0), "{after}");
    for cause in ["connect", "tls", "timeout"] {
        let s =
            format!("eks_connector_proxy_upstream_connection_failures_total{{cause=\"{cause}\"}}");
        assert_eq!(prom::value(&after, &s), Some(0.0), "{s}\n{after}");
    }
    // No identity, path or token in any label.
    for secret in [alice.as_str(), ns.name.as_str(), "configmaps", "Bearer"] {
        assert!(!after.contains(secret), "{secret:?} in /metrics:\n{after}");
    }
}

/// A registration with a realistically sized (random) key.
fn registration() -> Registration {
    let mut key = vec![0u8; 1190];
    eks_connector::random::fill(&mut key).unwrap();
    key[0] = 0x30;
    let fp = eks_connector::random::uuid_v4().unwrap();
    Registration::new(
        "mi-0123456789abcdef0",
        "us-west-2",
        &key,
        SystemTime::now(),
        &fp,
    )
}

fn scratch(tag: &str) -> PathBuf {
    let d = proxy_env::scratch(tag);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One of our programs with `--health.addr` on a free port; killed on drop.
struct Program {
    child: Child,
    log: PathBuf,
    health: u16,
}

impl Program {
    /// `eks-connector WORD ARGS…` (the image's multi-call entry), `POD_NAME` set and the test API
    /// server in the environment.
    fn start(word: &str, ns: &TestNamespace, dir: &std::path::Path, args: &[String]) -> Program {
        let health = free_port();
        let log = dir.join(format!("{word}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_eks-connector"))
            .arg(word)
            .arg(format!("--health.addr=127.0.0.1:{health}"))
            .args(args)
            .env("POD_NAME", POD)
            .env("RUST_LOG", "info")
            .envs(ns.kube_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let p = Program { child, log, health };
        let up = wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", health)).ok()
        });
        assert!(up.is_some(), "{word} did not listen: {}", p.log_text());
        p
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        prom::scrape(self.health)
    }

    /// Waits until the sample `series` reads at least `want`: the text served then.
    fn wait_value(&self, series: &str, want: f64, timeout: Duration) -> String {
        wait_for(timeout, || {
            let m = self.metrics();
            prom::value(&m, series)
                .is_some_and(|v| v >= want)
                .then_some(m)
        })
        .unwrap_or_else(|| {
            panic!(
                "{series} never reached {want} in {timeout:?}:\n{}\nlog:\n{}",
                self.metrics(),
                self.log_text()
            )
        })
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keysync_value(text: &str, name: &str) -> f64 {
    prom::value(text, name).unwrap_or_else(|| panic!("{name} not served:\n{text}"))
}

#[test]
fn the_key_sync_program_counts_a_rotation_an_rbac_outage_and_its_recovery() {
    let ns = common::cluster().namespace("metrics-sync");
    let role = ns.apply_role_from_manifest(&common::repo_root().join("manifests/base/role.yaml"));
    let binding = ns.bind("Role", &role, "ServiceAccount", &ns.sa_name);
    let dir = scratch("metrics-sync");
    let vault = dir.join("vault");
    let first = registration();
    state::write_vault(&vault, &first).unwrap();
    state::write_vault_activation(&vault, ACTIVATION).unwrap();
    let secret = state::new_state_secret(&ns.name, SECRET, &first, ACTIVATION);
    common::cluster().admin().create_secret(&secret).unwrap();

    let sync = Program::start(
        "keysync",
        &ns,
        &dir,
        &[
            format!("--state.baseDir={}", vault.display()),
            format!("--state.secretNamespace={}", ns.name),
            format!("--serviceaccount.dir={}", ns.sa_dir.display()),
        ],
    );
    let in_sync = sync.wait_value(
        "eks_connector_keysync_in_sync",
        1.0,
        Duration::from_secs(20),
    );
    check("the key sync, in sync", &in_sync);
    let build = prom::build_info("eks-connector-keysync");
    assert_eq!(prom::value(&in_sync, &build), Some(1.0), "{in_sync}");
    assert_eq!(
        keysync_value(&in_sync, "eks_connector_keysync_standby"),
        0.0
    );
    assert_eq!(
        keysync_value(&in_sync, "eks_connector_keysync_rotations_total"),
        0.0
    );
    let started_ok = keysync_value(
        &in_sync,
        "eks_connector_keysync_last_success_timestamp_seconds",
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now + 1.0).contains(&started_ok),
        "last success {started_ok}, now {now}"
    );

    // The outage: RBAC no longer lets the sync in, and the agent rotates its key.
    ns.unbind(&binding);
    let client = ns.client();
    wait_for(Duration::from_secs(30), || {
        client.get_secret(&ns.name, SECRET).is_err().then_some(())
    })
    .expect("removing the RoleBinding did not take effect");
    let second = registration();
    state::write_vault(&vault, &second).unwrap();
    let refused = sync.wait_value(
        "eks_connector_keysync_failures_total{cause=\"forbidden\"}",
        1.0,
        Duration::from_secs(20),
    );
    check("the key sync, refused", &refused);
    assert_eq!(
        keysync_value(&refused, "eks_connector_keysync_in_sync"),
        0.0
    );
    assert_eq!(
        keysync_value(&refused, "eks_connector_keysync_rotations_total"),
        1.0
    );

    // Recovery: allowed again, the key gets through at the next attempt.
    ns.bind("Role", &role, "ServiceAccount", &ns.sa_name);
    let back = sync.wait_value(
        "eks_connector_keysync_in_sync",
        1.0,
        Duration::from_secs(90),
    );
    check("the key sync, recovered", &back);
    let secret = common::cluster()
        .admin()
        .get_secret(&ns.name, SECRET)
        .unwrap();
    assert_eq!(secret.data["regkey"], second.regkey());
    let attempts = keysync_value(&back, "eks_connector_keysync_attempts_total");
    let failed: f64 = prom::samples(&back, "eks_connector_keysync_failures_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    let forbidden = keysync_value(
        &back,
        "eks_connector_keysync_failures_total{cause=\"forbidden\"}",
    );
    assert!(forbidden >= 1.0, "{back}");
    assert_eq!(failed, forbidden, "only RBAC refused:\n{back}");
    // The first save at start (the Secret already held it), the refused ones, the one that got
    // through.
    assert_eq!(attempts, failed + 2.0, "{back}");
    assert_eq!(
        keysync_value(&back, "eks_connector_keysync_rotations_total"),
        1.0
    );
    assert!(
        keysync_value(
            &back,
            "eks_connector_keysync_last_success_timestamp_seconds"
        ) >= started_ok
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_launcher_serves_its_own_metrics_and_no_key_sync_where_none_runs() {
    let ns = common::cluster().namespace("metrics-launcher");
    let dir = scratch("metrics-launcher");
    let vault = dir.join("vault");
    state::write_vault(&vault, &registration()).unwrap();
    // No token in its service-account directory: the agent's container as manifests/ lays it
    // out, where connector-keysync syncs the Vault.
    let no_token = dir.join("serviceaccount");
    std::fs::create_dir_all(&no_token).unwrap();
    let launcher = Program::start(
        "agent",
        &ns,
        &dir,
        &[
            format!("--state.baseDir={}", vault.display()),
            format!("--serviceaccount.dir={}", no_token.display()),
            "--".into(),
            "/bin/sh".into(),
            "-c".into(),
            "sleep 60".into(),
        ],
    );
    let m = launcher.wait_value("eks_connector_agent_running", 1.0, Duration::from_secs(20));
    check("the launcher", &m);
    let build = prom::build_info("eks-connector-agent");
    assert_eq!(prom::value(&m, &build), Some(1.0), "{m}");
    assert_eq!(
        prom::value(&m, "eks_connector_agent_last_exit_code"),
        Some(-1.0)
    );
    assert!(
        !m.contains("eks_connector_keysync_"),
        "no key sync runs in this launcher, so it serves none of its families (an in_sync of 0 \
         would set off the alert):\n{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
