//! The API proxy as a child process in front of the real kube-apiserver, and the RBAC its tests
//! set up (impersonation of the test's ARNs, a user bound to `view`): shared by tests/proxy.rs
//! and tests/metrics.rs.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common;

pub const PROXY: &str = env!("CARGO_BIN_EXE_eks-connector-proxy");

/// A running proxy process; killed on drop if still running.
pub struct Proxy {
    pub child: Child,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
}

pub fn scratch(name: &str) -> PathBuf {
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
    pub fn start(name: &str, target: &str, sa_dir: &Path, extra: &[&str]) -> Proxy {
        Proxy::start_on(name, None, target, sa_dir, extra)
    }

    /// As [`Proxy::start`], but on TCP at `tcp` (`HOST:PORT`) when given: the original's
    /// `--proxy.socketType=tcp` (`sock` is then not used).
    pub fn start_on(
        name: &str,
        tcp: Option<&str>,
        target: &str,
        sa_dir: &Path,
        extra: &[&str],
    ) -> Proxy {
        let dir = scratch(name);
        let sock = dir.join("connector.sock");
        let log = dir.join("proxy.log");
        let listen = match tcp {
            Some(addr) => ["tcp".to_string(), addr.to_string()],
            None => ["unix".to_string(), sock.display().to_string()],
        };
        let child = Command::new(PROXY)
            .arg(format!("--proxy.socketType={}", listen[0]))
            .arg(format!("--proxy.socketAddr={}", listen[1]))
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
            match tcp {
                Some(addr) => TcpStream::connect(addr).ok().map(drop),
                None => UnixStream::connect(&p.sock).ok().map(drop),
            }
        });
        assert!(up.is_some(), "proxy did not listen: {}", p.log_text());
        p
    }

    pub fn for_ns(name: &str, ns: &common::TestNamespace, extra: &[&str]) -> Proxy {
        let target = ns.endpoint().authority();
        Proxy::start(name, &target, &ns.sa_dir, extra)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// curl over the unix socket; returns (status, body).
    pub fn curl(&self, identity: Option<&str>, args: &[&str], path: &str) -> (u16, String) {
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
    pub fn raw(&self, bytes: &[u8]) -> String {
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

    pub fn status_of(&self, pid_field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = s.lines().find(|l| l.starts_with(pid_field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
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

pub fn arn(ns: &common::TestNamespace, who: &str) -> String {
    format!("arn:aws:iam::111122223333:user/{who}-{}", ns.name)
}

/// What manifests/console-user and manifests/base/rbac.yaml grant the proxy's ServiceAccount:
/// impersonate these ARNs only, and GET /version.
pub fn grant_impersonation(ns: &common::TestNamespace, sa: &str, arns: &[&str]) {
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
pub fn aggregated_role(ns: &common::TestNamespace, role: &str) -> String {
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
pub fn viewer(prefix: &str) -> (common::TestNamespace, String) {
    let ns = common::cluster().namespace(prefix);
    let alice = arn(&ns, "alice");
    grant_impersonation(&ns, "connector", &[&alice]);
    bind_user(&ns, "view", &alice);
    (ns, alice)
}

pub fn bind_user(ns: &common::TestNamespace, role: &str, user: &str) {
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
pub fn wait_allowed(ns: &common::TestNamespace, user: &str, groups: &[&str], attrs: Value) {
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

pub fn wait_impersonation(ns: &common::TestNamespace, sa: &str, arn: &str) {
    let user = format!("system:serviceaccount:{}:{sa}", ns.name);
    let g = format!("system:serviceaccounts:{}", ns.name);
    wait_allowed(
        ns,
        &user,
        &["system:serviceaccounts", &g, "system:authenticated"],
        json!({"verb": "impersonate", "resource": "users", "name": arn}),
    );
}
