//! The API proxy against the real kube-apiserver with real RBAC, driven the way the SSM agent
//! drives it: real curl over the real unix socket (raw bytes where curl would normalise them).
//!
//! RBAC: the proxy's ServiceAccount gets what manifests/console-user/console-user.yaml and
//! manifests/base/rbac.yaml give it — `impersonate` on `users` limited by `resourceNames` to the
//! test's ARNs, and `get` on `/version`. Those manifests are plain YAML (not JSON), so the
//! equivalent rules are created here. The attack tests deliberately give the ServiceAccount MORE
//! (impersonate on groups, uids and user extras too), so that any header the proxy let through
//! would take effect — and a control request sent directly to the API server shows it would.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const PROXY: &str = env!("CARGO_BIN_EXE_eks-connector-proxy");

/// A running proxy process; killed on drop if still running.
struct Proxy {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    log: PathBuf,
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "proxy-it-{}-{name}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Proxy {
    /// Starts the proxy on a unix socket in front of `target` (`host:port`, https) with the
    /// service-account files in `sa_dir`.
    fn start(name: &str, target: &str, sa_dir: &Path, extra: &[&str]) -> Proxy {
        let dir = scratch(name);
        let sock = dir.join("connector.sock");
        let log = dir.join("proxy.log");
        let child = Command::new(PROXY)
            .arg("--proxy.socketType=unix")
            .arg(format!("--proxy.socketAddr={}", sock.display()))
            .arg(format!("--proxy.targetHost={target}"))
            .arg(format!("--serviceaccount.dir={}", sa_dir.display()))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut p = Proxy {
            child,
            dir,
            sock,
            log,
        };
        let up = common::wait_for(Duration::from_secs(20), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("proxy exited early with {status}: {}", p.log_text());
            }
            UnixStream::connect(&p.sock).ok()
        });
        assert!(up.is_some(), "proxy did not listen: {}", p.log_text());
        p
    }

    fn for_ns(name: &str, ns: &common::TestNamespace, extra: &[&str]) -> Proxy {
        let target = ns.endpoint().authority();
        Proxy::start(name, &target, &ns.sa_dir, extra)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// curl over the unix socket; returns (status, body).
    fn curl(&self, identity: Option<&str>, args: &[&str], path: &str) -> (u16, String) {
        let mut c = Command::new("curl");
        c.arg("-sS")
            .arg("--unix-socket")
            .arg(&self.sock)
            .arg("-w")
            .arg("\n%{http_code}");
        if let Some(id) = identity {
            c.arg("-H").arg(format!("x-aws-eks-identity-arn: {id}"));
        }
        c.args(args).arg(format!("http://localhost{path}"));
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl gave no status: {text:?} {}; proxy log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            )
        });
        (code, body.to_string())
    }

    /// Raw bytes over a fresh unix-socket connection; everything the proxy sends until it closes
    /// (or 10 s pass).
    fn raw(&self, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn status_of(&self, pid_field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = s.lines().find(|l| l.starts_with(pid_field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        common::wait_for(timeout, || self.child.try_wait().unwrap())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn arn(ns: &common::TestNamespace, who: &str) -> String {
    format!("arn:aws:iam::111122223333:user/{who}-{}", ns.name)
}

/// What manifests/console-user and manifests/base/rbac.yaml grant the proxy's ServiceAccount:
/// impersonate these ARNs only, and GET /version.
fn grant_impersonation(ns: &common::TestNamespace, sa: &str, arns: &[&str]) {
    ns.bind_cluster(
        "impersonate",
        Some(json!([{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": arns}])),
        "ServiceAccount",
        sa,
    );
    ns.bind_cluster(
        "version",
        Some(json!([{"nonResourceURLs": ["/version"], "verbs": ["get"]}])),
        "ServiceAccount",
        sa,
    );
    for a in arns {
        wait_impersonation(ns, sa, a);
    }
}

/// The test control plane runs no controller-manager, so the aggregated ClusterRoles `view`,
/// `edit` and `admin` stay empty. This creates what the aggregation controller would make of
/// `view` (or `edit`, which includes `view`) and returns its name.
fn aggregated_role(ns: &common::TestNamespace, role: &str) -> String {
    let env = ns.cluster();
    let labels: &[&str] = match role {
        "view" => &["view"],
        "edit" => &["view", "edit"],
        other => panic!("no aggregation for {other}"),
    };
    let mut rules = Vec::new();
    for l in labels {
        let list = env
            .admin_request(
                "GET",
                &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles?labelSelector=rbac.authorization.k8s.io/aggregate-to-{l}%3Dtrue"),
                None,
            )
            .unwrap();
        for item in list["items"].as_array().unwrap() {
            rules.extend(item["rules"].as_array().cloned().unwrap_or_default());
        }
    }
    assert!(!rules.is_empty(), "no aggregate-to-{role} rules found");
    let name = format!("{}-{role}", ns.name);
    env.admin_request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        Some(
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                     "metadata": {"name": name}, "rules": rules}),
        ),
    )
    .unwrap();
    name
}

/// Binds the (aggregated) `view` or `edit` role to `user` in the namespace and waits until the
/// API server's authorizer sees it.
/// A fresh namespace and a user `alice` (an ARN) bound to `view` in it, whom the proxy's
/// ServiceAccount may impersonate: the set-up most tests start from.
fn viewer(prefix: &str) -> (common::TestNamespace, String) {
    let ns = common::cluster().namespace(prefix);
    let alice = arn(&ns, "alice");
    grant_impersonation(&ns, "connector", &[&alice]);
    bind_user(&ns, "view", &alice);
    (ns, alice)
}

fn bind_user(ns: &common::TestNamespace, role: &str, user: &str) {
    let name = aggregated_role(ns, role);
    ns.bind("ClusterRole", &name, "User", user);
    wait_allowed(
        ns,
        user,
        &[],
        json!({"namespace": ns.name, "verb": "list", "resource": "configmaps"}),
    );
}

/// Waits until a SubjectAccessReview allows `attrs` for `user` (RBAC changes reach the
/// authorizer's cache asynchronously).
fn wait_allowed(ns: &common::TestNamespace, user: &str, groups: &[&str], attrs: Value) {
    let env = ns.cluster();
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                        "spec": {"user": user, "groups": groups, "resourceAttributes": attrs}});
    let ok = common::wait_for(Duration::from_secs(20), || {
        let r = env
            .admin_request(
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                Some(&review),
            )
            .ok()?;
        (r["status"]["allowed"] == true).then_some(())
    });
    assert!(ok.is_some(), "RBAC never allowed {user} {attrs}");
}

fn wait_impersonation(ns: &common::TestNamespace, sa: &str, arn: &str) {
    let user = format!("system:serviceaccount:{}:{sa}", ns.name);
    let g = format!("system:serviceaccounts:{}", ns.name);
    wait_allowed(
        ns,
        &user,
        &["system:serviceaccounts", &g, "system:authenticated"],
        json!({"verb": "impersonate", "resource": "users", "name": arn}),
    );
}

fn configmap(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

fn configmap_exists(ns: &common::TestNamespace, name: &str) -> bool {
    ns.cluster()
        .admin_request(
            "GET",
            &format!("/api/v1/namespaces/{}/configmaps/{name}", ns.name),
            None,
        )
        .is_ok()
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:.500}"))
}

#[test]
fn view_user_lists_pods_but_the_api_server_forbids_a_delete() {
    let env = common::cluster();
    let ns = env.namespace("proxy-view");
    let viewer = arn(&ns, "viewer");
    ns.create_sa("default"); // no controller-manager makes it here
    grant_impersonation(&ns, "connector", &[&viewer]);
    bind_user(&ns, "view", &viewer);
    ns.create(
        "/api/v1",
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
               "spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
    );
    let proxy = Proxy::for_ns("view", &ns, &[]);

    let (code, body) = proxy.curl(
        Some(&viewer),
        &[],
        &format!("/api/v1/namespaces/{}/pods", ns.name),
    );
    assert_eq!(code, 200, "{body}");
    let list = json_of(&body);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"][0]["metadata"]["name"], "web");

    let (code, body) = proxy.curl(
        Some(&viewer),
        &["-X", "DELETE"],
        &format!("/api/v1/namespaces/{}/pods/web", ns.name),
    );
    assert_eq!(code, 403, "{body}");
    let status = json_of(&body);
    assert_eq!(status["reason"], "Forbidden");
    // The API server names the impersonated user: the request ran as the ARN, not as us.
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains(&format!("User \"{viewer}\"")),
        "{body}"
    );
    assert!(env
        .admin_request(
            "GET",
            &format!("/api/v1/namespaces/{}/pods/web", ns.name),
            None
        )
        .is_ok());

    // The audit log has one line per request with identity, method, path, status — and no token.
    let log = proxy.log_text();
    let token = std::fs::read_to_string(ns.sa_dir.join("token")).unwrap();
    assert!(!log.contains(token.trim()), "the token leaked into the log");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" audit]") || l.contains("audit:") || l.contains(" audit "))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains(&viewer)
            && l.contains("method=DELETE")
            && l.contains("status=403")
            && l.contains("/pods/web")),
        "no audit line for the delete in:\n{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("method=GET") && l.contains("status=200") && l.contains("bytes=")),
        "{log}"
    );
}

#[test]
fn edit_user_creates_a_configmap_with_a_post_body() {
    let env = common::cluster();
    let ns = env.namespace("proxy-edit");
    let editor = arn(&ns, "editor");
    grant_impersonation(&ns, "connector", &[&editor]);
    bind_user(&ns, "edit", &editor);
    let proxy = Proxy::for_ns("edit", &ns, &[]);
    let body = configmap("made-through-proxy", json!({"k": "v"})).to_string();
    let (code, resp) = proxy.curl(
        Some(&editor),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ],
        &format!("/api/v1/namespaces/{}/configmaps", ns.name),
    );
    assert_eq!(code, 201, "{resp}");
    let got = env
        .admin_request(
            "GET",
            &format!(
                "/api/v1/namespaces/{}/configmaps/made-through-proxy",
                ns.name
            ),
            None,
        )
        .unwrap();
    assert_eq!(got["data"]["k"], "v");
    // A chunked request body (curl -T - with a pipe) is re-framed by us and arrives whole.
    let mut c = Command::new("curl")
        .arg("-sS")
        .arg("--unix-socket")
        .arg(&proxy.sock)
        .args([
            "-H",
            &format!("x-aws-eks-identity-arn: {editor}"),
            "-H",
            "Content-Type: application/json",
        ])
        .args([
            "-H",
            "Transfer-Encoding: chunked",
            "-X",
            "POST",
            "-T",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!(
            "http://localhost/api/v1/namespaces/{}/configmaps",
            ns.name
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(
            configmap("chunked", json!({"big": "x".repeat(100_000)}))
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n201"), "{text:.300}");
    let got = env
        .admin_request(
            "GET",
            &format!("/api/v1/namespaces/{}/configmaps/chunked", ns.name),
            None,
        )
        .unwrap();
    assert_eq!(got["data"]["big"].as_str().unwrap().len(), 100_000);
}

#[test]
fn missing_identity_is_401_for_everything_but_get_version() {
    let env = common::cluster();
    let ns = env.namespace("proxy-noid");
    // Make the ServiceAccount powerful: if a request without identity ran as it (the original's
    // fail-open), it would succeed.
    ns.bind(
        "ClusterRole",
        "cluster-admin",
        "ServiceAccount",
        "connector",
    );
    let sa_user = format!("system:serviceaccount:{}:connector", ns.name);
    wait_allowed(
        &ns,
        &sa_user,
        &[],
        json!({"namespace": ns.name, "verb": "create", "resource": "configmaps"}),
    );
    let proxy = Proxy::for_ns("noid", &ns, &[]);
    let pods = format!("/api/v1/namespaces/{}/pods", ns.name);
    let cms = format!("/api/v1/namespaces/{}/configmaps", ns.name);
    let body = configmap("fail-open", json!({})).to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], &pods),
        (vec!["-H", "x-aws-eks-identity-arn;"], &pods), // present but empty
        (vec!["-H", "x-aws-eks-identity-arn:    "], &pods), // whitespace only
        (
            vec![
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
            ],
            &cms,
        ),
        (vec!["-X", "POST"], "/version"),
        (vec![], "/version/"),
        (vec![], "/apis"),
        (vec!["-X", "DELETE"], &pods),
    ];
    for (args, path) in cases {
        let (code, resp) = proxy.curl(None, &args, path);
        assert_eq!(code, 401, "{args:?} {path}: {resp}");
        let s = json_of(&resp);
        assert_eq!(
            (s["kind"].as_str(), s["code"].as_u64()),
            (Some("Status"), Some(401)),
            "{resp}"
        );
    }
    assert!(!configmap_exists(&ns, "fail-open"));
    // The direct control: the ServiceAccount itself could have created it.
    let (code, resp) = proxy.curl(None, &[], "/version");
    assert_eq!(code, 200, "{resp}");
    assert!(
        json_of(&resp)["gitVersion"]
            .as_str()
            .unwrap()
            .starts_with("v1.37"),
        "{resp}"
    );
    let (code, _) = proxy.curl(None, &[], "/version?timeout=32s");
    assert_eq!(code, 200);
}

/// What the API server says the request ran as.
fn whoami(proxy: &Proxy, identity: Option<&str>, headers: &[&str]) -> (u16, Value) {
    let mut args = vec!["-X", "POST", "-H", "Content-Type: application/json"];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    let body = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    args.push("--data-binary");
    args.push(body);
    let (code, resp) = proxy.curl(
        identity,
        &args,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    );
    (code, serde_json::from_str(&resp).unwrap_or(Value::Null))
}

fn assert_exactly(user_info: &Value, user: &str) {
    assert_eq!(user_info["username"], user, "{user_info}");
    assert_eq!(
        user_info["groups"],
        json!(["system:authenticated"]),
        "{user_info}"
    );
    assert!(user_info.get("uid").is_none(), "{user_info}");
    assert!(user_info.get("extra").is_none(), "{user_info}");
}

#[test]
fn client_impersonation_and_authorization_headers_never_escalate() {
    let env = common::cluster();
    let ns = env.namespace("proxy-attack");
    let alice = arn(&ns, "alice");
    grant_impersonation(&ns, "connector", &[&alice]);
    // Deliberately too generous: any Impersonate-* header that got through would take effect.
    ns.bind_cluster(
        "impersonate-everything",
        Some(json!([
            {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"], "verbs": ["impersonate"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["*"], "verbs": ["impersonate"]}
        ])),
        "ServiceAccount",
        "connector",
    );
    bind_user(&ns, "view", &alice);
    // A powerful token a client might present.
    let admin_sa_dir = ns.create_sa("powerful");
    ns.bind_cluster("cluster-admin", None, "ServiceAccount", "powerful");
    let powerful = std::fs::read_to_string(admin_sa_dir.join("token")).unwrap();
    let proxy = Proxy::for_ns("attack", &ns, &[]);

    // Control: sent straight to the API server with the proxy's token, these headers DO escalate.
    let token = std::fs::read_to_string(ns.sa_dir.join("token")).unwrap();
    let direct = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(env.ca_path())
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .args([
            "-H",
            &format!("Impersonate-User: {alice}"),
            "-H",
            "Impersonate-Group: system:masters",
        ])
        .args([
            "-H",
            "Impersonate-Uid: 42",
            "-H",
            "Impersonate-Extra-Scopes: all",
        ])
        .args([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ])
        .arg(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#)
        .arg(format!(
            "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            env.server_url.trim()
        ))
        .output()
        .unwrap();
    let direct: Value = serde_json::from_slice(&direct.stdout).unwrap();
    let groups = direct["status"]["userInfo"]["groups"].to_string();
    assert!(
        groups.contains("system:masters"),
        "control failed, the test could not detect anything: {direct}"
    );

    let bearer = format!("Authorization: Bearer {}", powerful.trim());
    let attacks: Vec<Vec<String>> = vec![
        vec!["Impersonate-Group: system:masters".into()],
        vec![
            "impersonate-group: system:masters".into(),
            "IMPERSONATE-GROUP: system:masters".into(),
        ],
        vec!["iMpErSoNaTe-GrOuP: system:masters".into()],
        vec!["Impersonate-Uid: 42".into()],
        vec![
            "Impersonate-Extra-Scopes: all".into(),
            "impersonate-extra-acme.com%2Fproject: x".into(),
        ],
        vec!["Impersonate-User: system:admin".into()],
        vec![bearer.clone()],
        vec![bearer.clone(), "Impersonate-Group: system:masters".into()],
        vec![
            "Proxy-Authorization: Bearer x".into(),
            "Cookie: session=1".into(),
            "X-Forwarded-For: 10.0.0.1".into(),
        ],
        // Hop-by-hop abuse (CVE-2021-31999): a stripper honouring these would remove our headers.
        vec!["Connection: Impersonate-User".into()],
        vec!["Connection: Authorization".into()],
        vec!["Connection: keep-alive, Impersonate-User, Authorization".into()],
    ];
    for headers in &attacks {
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (code, review) = whoami(&proxy, Some(&alice), &refs);
        assert_eq!(code, 201, "{headers:?}: {review}");
        assert_exactly(&review["status"]["userInfo"], &alice);
        // And what the API server allowed: alice (view) still may not read Secrets.
        let mut args: Vec<&str> = Vec::new();
        for h in &refs {
            args.push("-H");
            args.push(h);
        }
        let (code, _) = proxy.curl(
            Some(&alice),
            &args,
            &format!("/api/v1/namespaces/{}/secrets", ns.name),
        );
        assert_eq!(code, 403, "{headers:?} read secrets");
        let (code, _) = proxy.curl(
            Some(&alice),
            &[&args[..], &["-X", "DELETE"]].concat(),
            &format!("/api/v1/namespaces/{}", ns.name),
        );
        assert_eq!(code, 403, "{headers:?} deleted the namespace");
    }
    // Without an identity, a client's own credentials get nothing either.
    let (code, _) = whoami(&proxy, None, &[&bearer]);
    assert_eq!(code, 401);
    let log = proxy.log_text();
    assert!(
        !log.contains(token.trim()) && !log.contains(powerful.trim()),
        "a token leaked into the log"
    );
}

#[test]
fn smuggling_and_header_injection_are_refused_and_nothing_happens() {
    let env = common::cluster();
    let ns = env.namespace("proxy-smuggle");
    let alice = arn(&ns, "alice");
    grant_impersonation(&ns, "connector", &[&alice]);
    ns.bind_cluster(
        "impersonate-groups",
        Some(json!([{"apiGroups": [""], "resources": ["groups"], "verbs": ["impersonate"]}])),
        "ServiceAccount",
        "connector",
    );
    bind_user(&ns, "edit", &alice);
    let proxy = Proxy::for_ns("smuggle", &ns, &[]);
    let path = format!("/api/v1/namespaces/{}/configmaps", ns.name);
    let cm = |name: &str| configmap(name, json!({})).to_string();
    let post = |name: &str, extra: &str| {
        let body = cm(name);
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: {alice}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Sanity: the well-formed raw request works, so the refusals below are about the attack.
    let ok = proxy.raw(post("plain", "Connection: close\r\n").as_bytes());
    assert!(ok.starts_with("HTTP/1.1 201"), "{ok}");
    assert!(configmap_exists(&ns, "plain"));

    let smuggled = cm("smuggled");
    let inner = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: {alice}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let chunked_and_cl = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: {alice}\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}"
    );
    let body = cm("dup-cl");
    let dup_cl = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: {alice}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nContent-Length: {}\r\n\r\n{body}{inner}",
        body.len(),
        body.len() + inner.len()
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CL+TE", chunked_and_cl.into_bytes()),
        (
            "TE+CL",
            post("te-cl", "Transfer-Encoding: chunked\r\n").into_bytes(),
        ),
        ("duplicate CL", dup_cl.into_bytes()),
        (
            "LF in identity",
            post(
                "lf",
                "x-aws-eks-identity-arn-2: x\nImpersonate-Group: system:masters\r\n",
            )
            .into_bytes(),
        ),
        (
            "bare LF ending the identity",
            post("lf2", "")
                .replace(
                    &format!("{alice}\r\n"),
                    &format!("{alice}\nImpersonate-Group: system:masters\r\n"),
                )
                .into_bytes(),
        ),
        (
            "CR in identity",
            post("cr", "")
                .replace(
                    &format!("{alice}\r\n"),
                    &format!("{alice}\rImpersonate-Group: system:masters\r\n"),
                )
                .into_bytes(),
        ),
        (
            "NUL in identity",
            post("nul", "")
                .replace(
                    &format!("{alice}\r\n"),
                    &format!("{alice}\0system:masters\r\n"),
                )
                .into_bytes(),
        ),
        (
            "obs-fold",
            post("fold", "X-A: b\r\n Impersonate-Group: system:masters\r\n").into_bytes(),
        ),
        (
            "space before colon",
            post("sp", "Content-Length : 5\r\n").into_bytes(),
        ),
        (
            "two identities",
            post("two", &format!("X-AWS-EKS-Identity-Arn: {alice}\r\n")).into_bytes(),
        ),
        (
            "space inside identity",
            post("space", "")
                .replace(&alice, &format!("{alice} x"))
                .into_bytes(),
        ),
    ];
    for (what, bytes) in cases {
        let resp = proxy.raw(&bytes);
        assert!(resp.starts_with("HTTP/1.1 400 "), "{what}: {resp}");
        // One answer, then the connection closes: nothing after it is read as a request.
        assert_eq!(resp.matches("HTTP/1.1").count(), 1, "{what}: {resp}");
        assert!(resp.contains("\"kind\":\"Status\""), "{what}: {resp}");
    }
    for name in [
        "smuggled", "te-cl", "dup-cl", "lf", "lf2", "cr", "nul", "fold", "sp", "two", "space",
    ] {
        assert!(!configmap_exists(&ns, name), "{name} was created");
    }
    // Upgrades (exec, attach, port-forward) are refused plainly.
    let (code, resp) = proxy.curl(
        Some(&alice),
        &["-H", "Connection: Upgrade", "-H", "Upgrade: SPDY/3.1"],
        &format!("/api/v1/namespaces/{}/pods/x/exec?command=sh", ns.name),
    );
    assert_eq!(code, 501, "{resp}");
    assert!(json_of(&resp)["message"]
        .as_str()
        .unwrap()
        .contains("not supported"));
}

#[test]
fn a_watch_streams_events_as_they_happen() {
    let env = common::cluster();
    let (ns, alice) = viewer("proxy-watch");
    let proxy = Proxy::for_ns("watch", &ns, &[]);
    let list = env
        .admin_request(
            "GET",
            &format!("/api/v1/namespaces/{}/configmaps", ns.name),
            None,
        )
        .unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut s = UnixStream::connect(&proxy.sock).unwrap();
    write!(
        s,
        "GET /api/v1/namespaces/{}/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=60 HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: {alice}\r\n\r\n",
        ns.name
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    env.admin_request(
        "POST",
        &format!("/api/v1/namespaces/{}/configmaps", ns.name),
        Some(&configmap("watched", json!({}))),
    )
    .unwrap();
    let created = Instant::now();
    // The event must arrive long before the watch ends (60 s): the proxy does not buffer it.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while !String::from_utf8_lossy(&got).contains("\"name\":\"watched\"") {
        let n = s.read(&mut buf).expect("no watch event arrived");
        assert!(n > 0, "watch closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let latency = created.elapsed();
    eprintln!("watch event latency through the proxy: {latency:?}");
    assert!(latency < Duration::from_secs(1), "event took {latency:?}");
    assert!(String::from_utf8_lossy(&got).contains("\"type\":\"ADDED\""));
}

#[test]
fn table_accept_header_returns_a_table() {
    let env = common::cluster();
    let (ns, alice) = viewer("proxy-table");
    env.admin_request(
        "POST",
        &format!("/api/v1/namespaces/{}/configmaps", ns.name),
        Some(&configmap("t", json!({"a": "b"}))),
    )
    .unwrap();
    let proxy = Proxy::for_ns("table", &ns, &[]);
    let (code, body) = proxy.curl(
        Some(&alice),
        &["-H", "Accept: application/json;as=Table;v=v1;g=meta.k8s.io"],
        &format!("/api/v1/namespaces/{}/configmaps", ns.name),
    );
    assert_eq!(code, 200, "{body}");
    let t = json_of(&body);
    assert_eq!(t["kind"], "Table", "{body:.300}");
    assert!(t["columnDefinitions"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
    assert!(body.contains("\"t\""));

    // Other shapes clients use: HTTP/1.0, HEAD, gzip, Expect: 100-continue, kubectl-style
    // keep-alive with several requests on one connection.
    let cms = format!("/api/v1/namespaces/{}/configmaps", ns.name);
    let (code, body) = proxy.curl(Some(&alice), &["-0"], &cms);
    assert_eq!(code, 200);
    assert_eq!(json_of(&body)["items"][0]["metadata"]["name"], "t");
    // The API server answers HEAD on a list with 405: passed through, headers only, no body.
    let (code, body) = proxy.curl(Some(&alice), &["-I"], &cms);
    assert_eq!(code, 405, "{body}");
    assert!(
        body.contains("Audit-Id:") && !body.contains("\"kind\""),
        "{body}"
    );
    let (code, body) = proxy.curl(Some(&alice), &["--compressed"], &cms);
    assert_eq!(code, 200);
    assert_eq!(json_of(&body)["kind"], "ConfigMapList");
    let (code, _) = proxy.curl(
        Some(&alice),
        &[
            "-X",
            "POST",
            "-H",
            "Expect: 100-continue",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &configmap("viewer-may-not", json!({})).to_string(),
        ],
        &cms,
    );
    assert_eq!(code, 403); // answered by the API server: the body went through
    let mut s = UnixStream::connect(&proxy.sock).unwrap();
    for _ in 0..3 {
        write!(
            s,
            "GET {cms}/t HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: {alice}\r\n\r\n"
        )
        .unwrap();
        let resp = read_one_response(&mut s);
        assert!(
            resp.starts_with("HTTP/1.1 200 ") && resp.contains("\"a\":\"b\""),
            "{resp}"
        );
    }
}

/// Reads one response with a Content-Length body from a kept-alive connection.
fn read_one_response(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn upstream_connections(pid: u32, port: u16) -> usize {
    // Socket inodes of the process, matched against established TCP connections to `port`.
    let mut inodes = std::collections::HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().into_owned();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(i.to_string());
            }
        }
    }
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) && f[3] == "01" && inodes.contains(f[9]) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn a_large_list_streams_through_with_flat_memory_and_connections_are_reused() {
    let env = common::cluster();
    let (ns, alice) = viewer("proxy-big");
    // 12 ConfigMaps of ~700 KiB: a list of about 8 MiB.
    for i in 0..12 {
        let v = char::from(b'a' + i).to_string().repeat(700 << 10);
        env.admin_request(
            "POST",
            &format!("/api/v1/namespaces/{}/configmaps", ns.name),
            Some(&configmap(&format!("big-{i}"), json!({"v": v}))),
        )
        .unwrap();
    }
    let proxy = Proxy::for_ns("big", &ns, &[]);
    let (code, _) = proxy.curl(Some(&alice), &[], "/version");
    assert_eq!(code, 200);
    let before = proxy.status_of("VmHWM:");
    let rss_before = proxy.status_of("VmRSS:");
    let (code, body) = proxy.curl(
        Some(&alice),
        &[],
        &format!("/api/v1/namespaces/{}/configmaps", ns.name),
    );
    assert_eq!(code, 200);
    assert!(body.len() > 8_000_000, "list is only {} bytes", body.len());
    assert_eq!(json_of(&body)["items"].as_array().unwrap().len(), 12);
    let after = proxy.status_of("VmHWM:");
    eprintln!(
        "proxy peak RSS {before} KiB before and {after} KiB after an {} byte list",
        body.len()
    );
    // Buffering the list would raise the peak by its size (~8 MiB); streaming needs buffers only.
    // VmHWM is the peak of VmRSS: even a moment of buffering would show.
    assert!(
        after < before + 3 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    let rss_after = proxy.status_of("VmRSS:");
    assert!(
        rss_after < rss_before + 3 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Sequential requests reuse one kept-alive upstream connection instead of opening new ones.
    for _ in 0..20 {
        let (code, _) = proxy.curl(
            Some(&alice),
            &[],
            &format!("/api/v1/namespaces/{}/configmaps/big-0", ns.name),
        );
        assert_eq!(code, 200);
    }
    let open = upstream_connections(proxy.pid(), env.endpoint.port);
    assert!(
        open <= 1,
        "{open} upstream connections open after 21 sequential requests"
    );
}

#[test]
fn a_rotated_token_is_used_from_the_next_request_on() {
    let (ns, alice) = viewer("proxy-rotate");
    // Start with the token of a ServiceAccount that may not impersonate anyone.
    let weak_dir = ns.create_sa("weak");
    let dir = scratch("rotate-sa");
    std::fs::copy(weak_dir.join("ca.crt"), dir.join("ca.crt")).unwrap();
    std::fs::copy(weak_dir.join("token"), dir.join("token")).unwrap();
    let proxy = Proxy::start("rotate", &ns.endpoint().authority(), &dir, &[]);
    let pods = format!("/api/v1/namespaces/{}/pods", ns.name);
    let (code, body) = proxy.curl(Some(&alice), &[], &pods);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("cannot impersonate"), "{body}");
    // Rotate as the kubelet does: write aside, rename over.
    let tmp = dir.join("token.new");
    std::fs::write(&tmp, ns.token_for("connector", 3600)).unwrap();
    std::fs::rename(&tmp, dir.join("token")).unwrap();
    // The proxy looks at the file at most once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, body) = proxy.curl(Some(&alice), &[], &pods);
    assert_eq!(code, 200, "{body}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_lets_a_slow_response_finish_removes_the_socket_and_exits_0() {
    let env = common::cluster();
    let (ns, alice) = viewer("proxy-term");
    env.admin_request(
        "POST",
        &format!("/api/v1/namespaces/{}/configmaps", ns.name),
        Some(&configmap("first", json!({}))),
    )
    .unwrap();
    let mut proxy = Proxy::for_ns("term", &ns, &["--health.addr=127.0.0.1:0"]);
    // A watch that the API server ends after 3 s.
    let mut watch = Command::new("curl")
        .args(["-sS", "-N", "--unix-socket"])
        .arg(&proxy.sock)
        .args([
            "-H",
            &format!("x-aws-eks-identity-arn: {alice}"),
            "-w",
            "\nEND %{http_code}",
        ])
        .arg(format!(
            "http://localhost/api/v1/namespaces/{}/configmaps?watch=true&timeoutSeconds=3",
            ns.name
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the watch is in flight (its first event, ConfigMap "first", arrived).
    let mut out = watch.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("ADDED") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "watch ended before its first event");
        seen.extend_from_slice(&buf[..n]);
    }
    let signalled = Instant::now();
    proxy.signal(libc::SIGTERM);
    assert!(
        common::wait_for(Duration::from_secs(5), || (!proxy.sock.exists())
            .then_some(()))
        .is_some(),
        "the socket file is still there"
    );
    assert!(
        UnixStream::connect(&proxy.sock).is_err(),
        "new connections are still accepted"
    );
    out.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.ends_with("END 200"),
        "the watch did not complete cleanly: {text}"
    );
    // curl fails (exit 18) on a chunked body without its end: it got the whole response.
    assert!(watch.wait().unwrap().success());
    let status = proxy
        .wait_exit(Duration::from_secs(30))
        .expect("proxy did not exit");
    assert_eq!(status.code(), Some(0), "{}", proxy.log_text());
    eprintln!("proxy exited {:?} after SIGTERM", signalled.elapsed());
}

#[test]
fn sigint_past_the_grace_period_ends_streams_and_exits_0() {
    let env = common::cluster();
    let (ns, alice) = viewer("proxy-grace");
    env.admin_request(
        "POST",
        &format!("/api/v1/namespaces/{}/configmaps", ns.name),
        Some(&configmap("first", json!({}))),
    )
    .unwrap();
    let mut proxy = Proxy::for_ns("grace", &ns, &["--shutdown.grace=1s"]);
    // A watch that would run for 5 minutes.
    let mut watch = Command::new("curl")
        .args(["-sS", "-N", "--unix-socket"])
        .arg(&proxy.sock)
        .args(["-H", &format!("x-aws-eks-identity-arn: {alice}")])
        .arg(format!(
            "http://localhost/api/v1/namespaces/{}/configmaps?watch=true&timeoutSeconds=300",
            ns.name
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = watch.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("ADDED") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "watch ended before its first event");
        seen.extend_from_slice(&buf[..n]);
    }
    proxy.signal(libc::SIGINT);
    let status = proxy
        .wait_exit(Duration::from_secs(30))
        .expect("proxy did not exit after its grace period");
    assert_eq!(status.code(), Some(0), "{}", proxy.log_text());
    assert!(!proxy.sock.exists());
    // The stream was ended without its last chunk: curl reports an incomplete transfer.
    let _ = out.read_to_end(&mut seen);
    let curl = watch.wait().unwrap();
    assert!(!curl.success(), "the watch looked complete");
    assert!(
        proxy.log_text().contains("still running after"),
        "{}",
        proxy.log_text()
    );
}

#[test]
fn limits_and_failures_answer_with_the_right_status() {
    let env = common::cluster();
    let ns = env.namespace("proxy-limits");
    let alice = arn(&ns, "alice");
    grant_impersonation(&ns, "connector", &[&alice]);
    let proxy = Proxy::for_ns(
        "limits",
        &ns,
        &[
            "--proxy.headerTimeout=1s",
            "--proxy.maxRequestLine=1024",
            "--proxy.maxHeaderBytes=2048",
        ],
    );
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    assert!(proxy.raw(long.as_bytes()).starts_with("HTTP/1.1 414 "));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(3000)
    );
    let r = proxy.raw(big.as_bytes());
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    // Slowloris: a head that never ends is cut off by the header timeout.
    let started = Instant::now();
    let slow = proxy.raw(b"GET / HTTP/1.1\r\nHost: x\r\n");
    assert!(slow.starts_with("HTTP/1.1 408 "), "{slow}");
    assert!(started.elapsed() < Duration::from_secs(9));
    // Connection cap: two idle connections hold both slots; a third gets 503 with Retry-After.
    let proxy = Proxy::for_ns("cap", &ns, &["--proxy.maxConnections=2"]);
    // Kept-alive clients fill the slots (a connection of the start-up probe may still hold one
    // for a moment, so the 503 may come one connection early, never later).
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..3 {
        let mut s = UnixStream::connect(&proxy.sock).unwrap();
        s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let resp = read_one_response(&mut s);
        if resp.starts_with("HTTP/1.1 503 ") {
            refused = Some(resp);
            break;
        }
        assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
        held.push(s);
    }
    let resp = refused.unwrap_or_else(|| {
        panic!(
            "no 503 with 3 connections and a cap of 2:\n{}",
            proxy.log_text()
        )
    });
    assert!(
        resp.contains("Retry-After: 1\r\n") && resp.contains("\"code\":503"),
        "{resp}"
    );
    drop(held);
    let ok = common::wait_for(Duration::from_secs(5), || {
        let r = proxy.raw(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        r.starts_with("HTTP/1.1 200").then_some(())
    });
    assert!(ok.is_some(), "slots were not freed");

    // An unreachable API server: the original's 502 body, byte for byte, and the cause logged.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dead = Proxy::start("dead", &format!("127.0.0.1:{port}"), &ns.sa_dir, &[]);
    let (code, body) = dead.curl(Some(&alice), &[], "/api");
    assert_eq!(code, 502);
    assert_eq!(
        body,
        r#"{"status": 502, "message": "eks connector failed to proxy the request to kubernetes api. check eks connector logs for details."}"#
    );
    assert!(
        dead.log_text().contains("cannot connect to the API server"),
        "{}",
        dead.log_text()
    );
    // A second proxy on a live socket refuses to start and leaves the first one working.
    let out = Command::new(PROXY)
        .arg(format!("--proxy.socketAddr={}", proxy.sock.display()))
        .arg(format!("--proxy.targetHost={}", ns.endpoint().authority()))
        .arg(format!("--serviceaccount.dir={}", ns.sa_dir.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another process is serving"),
        "{out:?}"
    );
    let (code, _) = proxy.curl(None, &[], "/version");
    assert_eq!(code, 200);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&proxy.sock).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn readiness_follows_the_api_server() {
    let env = common::cluster();
    let ns = env.namespace("proxy-ready");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let proxy = Proxy::for_ns("ready", &ns, &[&format!("--health.addr=127.0.0.1:{port}")]);
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ready = common::wait_for(Duration::from_secs(10), || {
        (get("/readyz") == "200").then_some(())
    });
    assert!(ready.is_some(), "{}", proxy.log_text());
    assert_eq!(get("/healthz"), "200");
    // Not ready when the API server is unreachable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hport = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _dead = Proxy::start(
        "ready-dead",
        &format!("127.0.0.1:{closed}"),
        &ns.sa_dir,
        &[&format!("--health.addr=127.0.0.1:{hport}")],
    );
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{hport}/readyz"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n503"), "{text}");
}
