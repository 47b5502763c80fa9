//! The API proxy against the real kube-apiserver with real RBAC, driven the way the SSM agent
//! drives it: real curl over the real unix socket (raw bytes where curl would normalise them).
//!
//! RBAC: the proxy's ServiceAccount gets what manifests/console-user/impersonation/ and
//! manifests/base/rbac.yaml give it — `impersonate` on `users` limited by `resourceNames` to the
//! test's ARNs, and `get` on `/version`. Those manifests are plain YAML (not JSON), so the
//! equivalent rules are created here. The attack tests deliberately give the ServiceAccount MORE
//! (impersonate on groups, uids and user extras too), so that any header the proxy let through
//! would take effect — and a control request sent directly to the API server shows it would.

mod common;
#[path = "support/proxy.rs"]
mod proxy_env;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proxy_env::*;
use serde_json::{json, Value};

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
    let port = common::free_port();
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
    let port = common::free_port();
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
    let closed = common::free_port();
    let hport = common::free_port();
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

// ---------------------------------------------------------------------------------------------
// A misbehaving API server. The defects below need an upstream that does what the real one does
// only by accident (writes past its response, closes after a POST, says `Connection: close`):
// a plain-HTTP backend scripted per request, logging every request head it receives.

/// One request head the backend received.
#[derive(Debug, Clone)]
struct Seen {
    /// Which upstream connection (0, 1, ...) it came on, and its index on that connection.
    conn: usize,
    index: usize,
    method: String,
    target: String,
    /// `Impersonate-User` as received.
    user: String,
    /// It arrived on a connection after the backend had answered `Connection: close`.
    after_close: bool,
}

/// What the script tells the backend to do after it wrote its answer.
#[derive(PartialEq)]
enum Then {
    /// Read the next request on this connection.
    Next,
    /// Close now without another word.
    Close,
    /// We said `Connection: close`: log (as `after_close`) whatever still arrives, then close.
    SaidClose,
}

type Script = std::sync::Arc<dyn Fn(&Seen, &mut std::net::TcpStream) -> Then + Send + Sync>;

struct Backend {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl Backend {
    fn start(script: Script) -> Backend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (conn, s) in listener.incoming().enumerate() {
                let Ok(s) = s else { return };
                let (script, log) = (script.clone(), log.clone());
                std::thread::spawn(move || Backend::serve(conn, s, &script, &log));
            }
        });
        Backend { port, seen }
    }

    fn serve(
        conn: usize,
        mut s: std::net::TcpStream,
        script: &Script,
        log: &std::sync::Mutex<Vec<Seen>>,
    ) {
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut after_close = false;
        for index in 0.. {
            let Some(seen) = Backend::read_request(&mut r, conn, index, after_close) else {
                return;
            };
            log.lock().unwrap().push(seen.clone());
            if after_close {
                continue;
            }
            match script(&seen, &mut s) {
                Then::Next => {}
                Then::Close => return,
                Then::SaidClose => {
                    after_close = true;
                    // Linger a while: a proxy that ignores the header sends its next request here.
                    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                }
            }
        }
    }

    /// Reads one request head and its Content-Length body.
    fn read_request(
        r: &mut impl std::io::BufRead,
        conn: usize,
        index: usize,
        after_close: bool,
    ) -> Option<Seen> {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        let header = |name: &str| {
            head.iter()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let len: usize = header("content-length").parse().unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).ok()?;
        let mut first = head.first()?.split(' ');
        Some(Seen {
            conn,
            index,
            method: first.next()?.to_string(),
            target: first.next()?.to_string(),
            user: header("impersonate-user"),
            after_close,
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// A proxy in front of this backend (plain HTTP), with a token file of its own.
    fn proxy(&self, name: &str, extra: &[&str]) -> Proxy {
        self.proxy_on(name, None, extra)
    }

    /// The same on TCP at `tcp` (`HOST:PORT`) when given.
    fn proxy_on(&self, name: &str, tcp: Option<&str>, extra: &[&str]) -> Proxy {
        let sa = scratch(&format!("{name}-sa"));
        std::fs::write(sa.join("token"), "backend-test-token\n").unwrap();
        let mut args = vec!["--proxy.targetProtocol=http"];
        args.extend_from_slice(extra);
        let target = format!("127.0.0.1:{}", self.port);
        Proxy::start_on(name, tcp, &target, &sa, &args)
    }
}

/// A complete answer with a body.
fn answer(s: &mut std::net::TcpStream, extra: &str, body: &str) {
    // The proxy may have gone already: what it saw is what the test checks.
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// Answers `for <impersonated user> <target>`: who the backend served, and what.
fn echo(seen: &Seen, s: &mut std::net::TcpStream) -> Then {
    answer(s, "", &format!("for {} {}", seen.user, seen.target));
    Then::Next
}

fn get(target: &str, who: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: {who}\r\n{extra}\r\n"
    )
}

#[test]
fn bytes_the_api_server_sent_unasked_never_reach_the_next_client() {
    let backend = Backend::start(std::sync::Arc::new(
        |seen: &Seen, s: &mut std::net::TcpStream| {
            if seen.target == "/first" {
                answer(s, "", "first");
                // A buggy upstream (or a box in between) writes past its response, a moment later.
                std::thread::sleep(Duration::from_millis(100));
                answer(s, "", "INJECTED");
                return Then::Next;
            }
            echo(seen, s)
        },
    ));
    let proxy = backend.proxy("unasked", &[]);
    let a = proxy.raw(get("/first", "alice", "Connection: close\r\n").as_bytes());
    assert!(a.ends_with("\r\n\r\nfirst"), "{a}");
    std::thread::sleep(Duration::from_millis(300));
    for (who, path) in [("bob", "/second"), ("carol", "/third")] {
        let r = proxy.raw(get(path, who, "Connection: close\r\n").as_bytes());
        assert!(
            r.ends_with(&format!("\r\n\r\nfor {who} {path}")),
            "{who} got someone else's answer:\n{r}\nbackend saw {:?}",
            backend.seen()
        );
    }
}

#[test]
fn only_safe_methods_are_retried_after_a_kept_connection_fails() {
    // The backend reads the request, then closes without answering: did it run? We cannot know.
    let backend = Backend::start(std::sync::Arc::new(
        |seen: &Seen, s: &mut std::net::TcpStream| {
            if seen.index == 1 && seen.conn == 0 {
                return Then::Close;
            }
            echo(seen, s)
        },
    ));
    let proxy = backend.proxy("retry", &[]);
    let mut c = UnixStream::connect(&proxy.sock).unwrap();
    c.write_all(get("/warm", "alice", "").as_bytes()).unwrap();
    assert!(read_one_response(&mut c).ends_with("for alice /warm"));
    write!(
        c,
        "POST /api/v1/namespaces/x/configmaps HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: alice\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let r = read_one_response(&mut c);
    let posts = backend.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(
        posts, 1,
        "the API server saw the POST {posts} times; the client got:\n{r}"
    );
    assert!(r.starts_with("HTTP/1.1 502 "), "{r}");
    // A GET on a kept connection that fails the same way is still retried: it is safe to repeat.
    let backend = Backend::start(std::sync::Arc::new(
        |seen: &Seen, s: &mut std::net::TcpStream| {
            if seen.index == 1 && seen.conn == 0 {
                return Then::Close;
            }
            echo(seen, s)
        },
    ));
    let proxy = backend.proxy("retry-get", &[]);
    let mut c = UnixStream::connect(&proxy.sock).unwrap();
    c.write_all(get("/warm", "alice", "").as_bytes()).unwrap();
    assert!(read_one_response(&mut c).ends_with("for alice /warm"));
    c.write_all(get("/again", "alice", "").as_bytes()).unwrap();
    let r = read_one_response(&mut c);
    assert!(r.ends_with("for alice /again"), "{r}");
}

#[test]
fn quiet_watches_with_the_largest_heads_give_their_buffers_back() {
    let backend = Backend::start(one_event_then_quiet());
    let proxy = backend.proxy("bigheads", &["--proxy.maxConnections=1100"]);
    // Heads at the default limits: a 16 KiB request line and a 32 KiB header section.
    let target = format!(
        "/api/v1/pods?watch=1&labelSelector={}",
        "a".repeat(16 * 1024 - 60)
    );
    let accept = "b".repeat(32 * 1024 - 200);
    let one = || {
        let mut c = UnixStream::connect(&proxy.sock).unwrap();
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: alice\r\nAccept: {accept}\r\n\r\n"
        );
        c.write_all(req.as_bytes()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        read_until(&mut c, b"event\n\r\n");
        c
    };
    // Warm up (thread stacks, allocator arenas), then measure what each further watch costs.
    let mut held: Vec<UnixStream> = (0..50).map(|_| one()).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let before = proxy.status_of("VmRSS:");
    const N: u64 = 300;
    held.extend((0..N).map(|_| one()));
    // Quiet for longer than the proxy waits before giving a stream's buffers back.
    std::thread::sleep(Duration::from_millis(2500));
    let after = proxy.status_of("VmRSS:");
    let per_watch = (after.saturating_sub(before)) / N;
    eprintln!("RSS {before} KiB -> {after} KiB for {N} quiet watches with 48 KiB heads: {per_watch} KiB each");
    // The bound: 1024 connections (the default cap) x 48 KiB + a few MiB stay under the pod's
    // 64 MiB limit.
    assert!(
        per_watch <= 48,
        "{per_watch} KiB per quiet watch (bound: 48 KiB)"
    );
    drop(held);
}

/// Writes one byte every `every` until a write fails; how long that took, if it did within `max`.
fn trickle(c: &mut UnixStream, every: Duration, max: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < max {
        if c.write_all(b"x").is_err() {
            return Some(started.elapsed());
        }
        std::thread::sleep(every);
    }
    None
}

#[test]
fn a_trickling_client_cannot_hold_its_connection_for_long() {
    let backend = Backend::start(std::sync::Arc::new(echo));
    let proxy = backend.proxy("trickle", &["--proxy.ioTimeout=2s"]);
    // After an error answer the proxy discards what the client still sends: but not for ever.
    let mut c = UnixStream::connect(&proxy.sock).unwrap();
    c.write_all(b"NOT HTTP\r\n\r\n").unwrap();
    let held = trickle(&mut c, Duration::from_millis(300), Duration::from_secs(8));
    assert!(
        held.is_some_and(|t| t < Duration::from_secs(4)),
        "the proxy still took bytes {held:?} after its 400"
    );
    // A request body sent a byte at a time never stalls for the 2 s io timeout, but must still
    // arrive within it as a whole.
    let mut c = UnixStream::connect(&proxy.sock).unwrap();
    write!(
        c,
        "POST /api/v1/namespaces/x/configmaps HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: alice\r\nContent-Length: 100\r\n\r\n"
    )
    .unwrap();
    let started = Instant::now();
    let held = trickle(&mut c, Duration::from_millis(300), Duration::from_secs(8));
    let r = read_one_response(&mut c);
    assert!(
        held.is_some_and(|t| t < Duration::from_secs(5)),
        "the body was still being taken after {:?}: {r}",
        started.elapsed()
    );
    assert!(
        r.starts_with("HTTP/1.1 408 ") || r.starts_with("HTTP/1.1 400 "),
        "{r}"
    );
}

#[test]
fn the_readiness_probe_never_reuses_a_connection_the_server_closes() {
    for (version, extra) in [("HTTP/1.1", "Connection: close\r\n"), ("HTTP/1.0", "")] {
        let backend = Backend::start(std::sync::Arc::new(
            move |seen: &Seen, s: &mut std::net::TcpStream| {
                if seen.target == "/readyz" {
                    write!(s, "{version} 200 OK\r\n{extra}Content-Length: 2\r\n\r\nok").unwrap();
                    return Then::SaidClose;
                }
                echo(seen, s)
            },
        ));
        let port = common::free_port();
        let proxy = backend.proxy("probe-close", &[&format!("--health.addr=127.0.0.1:{port}")]);
        let mut h = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        h.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut probe = String::new();
        h.read_to_string(&mut probe).unwrap();
        assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
        let r = proxy.raw(get("/next", "alice", "Connection: close\r\n").as_bytes());
        assert!(r.ends_with("for alice /next"), "{r}");
        let late: Vec<Seen> = backend
            .seen()
            .into_iter()
            .filter(|s| s.after_close)
            .collect();
        assert!(
            late.is_empty(),
            "after a {version} {extra:?} answer the proxy still sent {late:?}"
        );
    }
}

#[test]
fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let backend = Backend::start(std::sync::Arc::new(
        |seen: &Seen, s: &mut std::net::TcpStream| {
            std::thread::sleep(Duration::from_millis(300));
            echo(seen, s)
        },
    ));
    let proxy = backend.proxy("halfclose", &[]);
    let mut c = UnixStream::connect(&proxy.sock).unwrap();
    c.write_all(get("/slow", "alice", "").as_bytes()).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = String::new();
    let _ = c.read_to_string(&mut r);
    assert!(
        r.starts_with("HTTP/1.1 200 ") && r.ends_with("for alice /slow"),
        "{r:?}"
    );
}

/// Runs `f` on a thread of its own in a new network namespace (its loopback up, and
/// `net.ipv4.tcp_fin_timeout` set to `fin_timeout` seconds there only): what it starts, sockets,
/// threads and child processes, stays in that namespace. Needs root.
fn in_new_network<T: Send + 'static>(
    fin_timeout: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let t = std::thread::spawn(move || {
        // SAFETY: unshare affects this thread only (and what it starts).
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "a network namespace (run as root): {}",
            std::io::Error::last_os_error()
        );
        let lo = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        assert!(
            lo.as_ref().is_ok_and(|s| s.success()),
            "ip link set lo up: {lo:?}"
        );
        // /proc/sys/net shows the namespace of the thread that opens it: this one's.
        std::fs::write(
            "/proc/sys/net/ipv4/tcp_fin_timeout",
            fin_timeout.to_string(),
        )
        .unwrap();
        f()
    });
    t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Keep-alive probes sent in the calling thread's network namespace.
fn keepalive_probes_sent() -> u64 {
    let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next().unwrap(), tcp_ext.next().unwrap());
    let at = names.split(' ').position(|n| n == "TCPKeepAlive").unwrap();
    values.split(' ').nth(at).unwrap().parse().unwrap()
}

#[test]
fn over_tcp_a_closed_quiet_watch_ends_and_a_half_closed_one_still_gets_its_events() {
    // Over TCP, a client's close() and a half-close both reach the proxy as a FIN; only the
    // keep-alive probes tell them apart (the closed client's socket answers them with a reset
    // once tcp_fin_timeout has passed). In a namespace of our own it is 1 s instead of 60.
    in_new_network(1, || {
        let (ended_tx, ended) = std::sync::mpsc::channel::<String>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let (ended_tx, go_rx) = (
            std::sync::Mutex::new(ended_tx),
            std::sync::Mutex::new(go_rx),
        );
        let backend = Backend::start(std::sync::Arc::new(
            move |seen: &Seen, s: &mut std::net::TcpStream| {
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nevent\n\r\n",
                );
                if seen.target == "/watch/half" {
                    let _ = go_rx.lock().unwrap().recv();
                    let _ = s.write_all(b"5\r\nnext\n\r\n");
                }
                let mut buf = [0u8; 64];
                while s.read(&mut buf).is_ok_and(|n| n > 0) {}
                let _ = ended_tx.lock().unwrap().send(seen.target.clone());
                Then::Close
            },
        ));
        // Nothing else listens in a new namespace: any port is free.
        let proxy = backend.proxy_on("keepalive", Some("127.0.0.1:8080"), &[]);
        let watch = |path: &str| {
            let mut c = std::net::TcpStream::connect("127.0.0.1:8080").unwrap();
            c.write_all(get(path, "alice", "").as_bytes()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // All of the first event, so that the close below sends a FIN, not a reset.
            read_until(&mut c, b"event\n\r\n");
            c
        };
        let mut half = watch("/watch/half");
        let closed = watch("/watch/closed");
        let probes = keepalive_probes_sent();
        half.shutdown(std::net::Shutdown::Write).unwrap();
        drop(closed);
        let started = Instant::now();
        // The first probe goes out 15 s after the FIN; tcp_fin_timeout passed long before.
        let gone = ended.recv_timeout(Duration::from_secs(30));
        assert_eq!(
            gone.as_deref(),
            Ok("/watch/closed"),
            "{:?} after the client closed, the proxy still relays its quiet watch:\n{}",
            started.elapsed(),
            proxy.log_text()
        );
        eprintln!(
            "the closed watch ended {:?} after its client closed",
            started.elapsed()
        );
        // The half-closed client was probed too (first: it went quiet first), and answered.
        std::thread::sleep(Duration::from_secs(1));
        let sent = keepalive_probes_sent() - probes;
        assert!(sent >= 2, "{sent} keep-alive probes sent");
        go.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"next\n\r\n") {
            let n = half.read(&mut buf).unwrap_or(0);
            assert!(
                n > 0,
                "the half-closed client's watch ended without its next event: {:?}\n{}",
                String::from_utf8_lossy(&got),
                proxy.log_text()
            );
            got.extend_from_slice(&buf[..n]);
        }
    });
}

#[test]
fn a_quiet_watch_probes_the_api_server_so_a_vanished_one_ends_it() {
    // A host that vanishes sends nothing, not even a reset: without keep-alive the proxy would
    // wait for the watch's next event forever. Its probes are seen as the socket's timer.
    let backend = Backend::start(one_event_then_quiet());
    let proxy = backend.proxy("upstream-keepalive", &[]);
    let mut c = UnixStream::connect(&proxy.sock).unwrap();
    c.write_all(get("/watch", "alice", "").as_bytes()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    read_until(&mut c, b"event\n\r\n");
    std::thread::sleep(Duration::from_millis(500)); // everything sent is acknowledged
    let timers = upstream_timers(proxy.pid(), backend.port);
    // timer 2: keep-alive, due within the 30 s period (in 1/100 s); 0: no timer at all.
    assert!(
        !timers.is_empty() && timers.iter().all(|&(t, due)| t == 2 && due <= 3000),
        "the proxy's connections to the API server have (timer kind, due in 1/100 s) {timers:?}; \
         expected keep-alive (2) within 30 s"
    );
    drop(c);
}

/// A backend answering each request with a chunked stream of one event, then quiet until the
/// proxy closes the connection (a watch between events).
fn one_event_then_quiet() -> Script {
    std::sync::Arc::new(|_: &Seen, s: &mut std::net::TcpStream| {
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nevent\n\r\n");
        let mut buf = [0u8; 64];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
        Then::Close
    })
}

/// Reads until what arrived ends with `end`; the stream ending first fails the test.
fn read_until(c: &mut impl Read, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(end) {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// (timer kind, due in 1/100 s) of each established connection `pid` has to `port`, from
/// /proc/PID/net/tcp (tr and tm->when, see proc_net_tcp.rst).
fn upstream_timers(pid: u32, port: u16) -> Vec<(u32, u64)> {
    let own: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = u16::from_str_radix(f[2].rsplit(':').next()?, 16).ok()?;
            let established = f[3] == "01";
            if remote_port != port || !established || !own.contains(f[9]) {
                return None;
            }
            let (kind, due) = f[5].split_once(':')?;
            Some((
                u32::from_str_radix(kind, 16).ok()?,
                u64::from_str_radix(due, 16).ok()?,
            ))
        })
        .collect()
}

/// A raw request with a JSON body (or none), as one connection; the whole answer.
fn raw_request(proxy: &Proxy, method: &str, path: &str, who: &str, body: &str) -> String {
    proxy.raw(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: {who}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[test]
fn read_only_mode_forwards_reads_and_self_reviews_and_refuses_every_write() {
    let env = common::cluster();
    let ns = env.namespace("proxy-ro");
    // An identity the cluster lets write: read-only mode is the second line of defence.
    let editor = arn(&ns, "editor");
    grant_impersonation(&ns, "connector", &[&editor]);
    bind_user(&ns, "edit", &editor);
    env.admin_request(
        "POST",
        &format!("/api/v1/namespaces/{}/configmaps", ns.name),
        Some(&configmap("keep", json!({"k": "v"}))),
    )
    .unwrap();
    let proxy = Proxy::for_ns("ro", &ns, &["--proxy.readOnly"]);
    let cms = format!("/api/v1/namespaces/{}/configmaps", ns.name);

    // Reads, watches and the questions a UI asks about its own permissions go through.
    let (code, body) = proxy.curl(Some(&editor), &[], &cms);
    assert_eq!(code, 200, "{body}");
    // HEAD passes (the API server itself answers it with 405).
    let (code, _) = proxy.curl(Some(&editor), &["-I"], &format!("{cms}/keep"));
    assert_ne!(code, 403);
    let (code, body) = proxy.curl(
        Some(&editor),
        &[],
        &format!("{cms}?watch=1&timeoutSeconds=1"),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ADDED\""), "{body}");
    let ssar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": ns.name, "verb": "create", "resource": "configmaps"}}})
    .to_string();
    let r = raw_request(
        &proxy,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        &editor,
        &ssar,
    );
    assert!(
        r.starts_with("HTTP/1.1 201 ") && r.contains("\"allowed\":true"),
        "{r}"
    );
    let ssrr = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": ns.name}})
    .to_string();
    let r = raw_request(
        &proxy,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        &editor,
        &ssrr,
    );
    assert!(
        r.starts_with("HTTP/1.1 201 ") && r.contains("resourceRules"),
        "{r}"
    );
    let ssr =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).to_string();
    let r = raw_request(
        &proxy,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        &editor,
        &ssr,
    );
    assert!(r.starts_with("HTTP/1.1 201 ") && r.contains(&editor), "{r}");

    // Writes, and writes dressed as one of those questions, are refused by the proxy itself.
    let cm = configmap("made", json!({"k": "v"})).to_string();
    let n = &ns.name;
    let dressed = [
        ("POST", cms.clone()),
        ("POST", format!("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/../../../../api/v1/namespaces/{n}/configmaps")),
        ("POST", format!("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews%2F..%2F..%2F..%2F..%2Fapi%2Fv1%2Fnamespaces%2F{n}%2Fconfigmaps")),
        ("POST", format!("/api/v1/namespaces/{n}/configmaps?x=/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")),
        ("POST", "//apis/authorization.k8s.io/v1/selfsubjectaccessreviews".into()),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/".into()),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/status".into()),
        ("POST", "/apis/authorizatio%6e.k8s.io/v1/selfsubjectaccessreviews".into()),
        ("POST", "/apis/evil.example.com/v1/selfsubjectaccessreviews".into()),
        ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews".into()),
        ("POST", format!("/apis/authorization.k8s.io/v1/namespaces/{n}/localsubjectaccessreviews")),
        ("POST", format!("/apis/authorization.k8s.io/v1/namespaces/{n}/selfsubjectaccessreviews")),
        ("PUT", format!("{cms}/keep")),
        ("PATCH", format!("{cms}/keep")),
        ("DELETE", format!("{cms}/keep")),
        ("DELETE", cms.clone()),
        ("post", cms.clone()),
        ("GET", format!("/api/v1/namespaces/{n}/services/web:80/proxy/admin/delete")),
        ("GET", "/api/v1/nodes/node-1/proxy/run".into()),
    ];
    for (method, path) in &dressed {
        let r = raw_request(&proxy, method, path, &editor, &cm);
        assert!(
            r.starts_with("HTTP/1.1 403 ")
                && r.contains("read-only")
                && r.contains("\"kind\":\"Status\""),
            "{method} {path} was not refused by the proxy:\n{r}"
        );
    }
    assert!(!configmap_exists(&ns, "made"), "a write went through");
    let kept = env
        .admin_request("GET", &format!("{cms}/keep"), None)
        .unwrap();
    assert_eq!(kept["data"], json!({"k": "v"}));
    // The refusals are audited like any answer.
    let log = proxy.log_text();
    assert!(
        log.contains("method=DELETE") && log.contains("status=403"),
        "{log}"
    );
}
