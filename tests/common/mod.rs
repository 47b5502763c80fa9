//! The real control plane for integration tests: one etcd + kube-apiserver (built from the Go
//! modules by tests/kube-env) per test binary, started on first use, and an isolated namespace
//! with its own ServiceAccount and service-account directory for each test.
//!
//! Processes are started by `tests/kube-env/start.sh` from a thread that lives as long as the test
//! process, with PR_SET_PDEATHSIG: when the test binary exits, panics or is killed, the control
//! plane goes with it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use eks_connector::kube::{Client, Endpoint, KubeError, ServiceAccountDir};
use serde_json::{json, Value};

/// The control plane shared by the tests of one test binary.
pub struct Cluster {
    pub dir: PathBuf,
    pub server_url: String,
    pub endpoint: Endpoint,
    admin: Client,
    bin_dir: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static OLDEST: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The oldest Kubernetes minor that builds here (tests/kube-env/v1.29: module, build-older.sh).
pub const OLDEST_KUBE: &str = "v1.29";

/// The control plane, started on first call.
/// The control plane, started on first call. If it cannot start, every test fails with the reason.
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(|| start(None)) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// A second control plane at the oldest Kubernetes we support ([`OLDEST_KUBE`]), started on
/// first call (its first build on a machine takes minutes, like the newest one's).
pub fn oldest_cluster() -> &'static Cluster {
    match OLDEST.get_or_init(|| start(Some(OLDEST_KUBE))) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// A test tool built from the Go modules by `script` (tests/*/build-*.sh, through
/// tests/go-install-cached.sh), found once per process in `cell`; `$env_var`, when set, names it
/// instead. `cached_only`: never build it here (the script then says how). Panics with `missing`
/// and the script's words if it fails.
pub fn go_tool(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    env_var: Option<&str>,
    script: &str,
    cached_only: bool,
    missing: &str,
) -> &'static Path {
    let found = cell.get_or_init(|| {
        if let Some(p) = env_var.and_then(std::env::var_os).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let script = repo_root().join(script);
        let mut cmd = Command::new(&script);
        if cached_only {
            cmd.env("GO_TOOL_CACHED_ONLY", "1");
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{missing}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    match found {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The body of the fenced block in README.md's section `## <section>` that starts with
/// `first_line` (so the README's commands are the ones the tests run).
pub fn readme_block(section: &str, first_line: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let body = readme
        .split(&format!("\n## {section}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README.md has no \"{section}\" section"));
    let body = body.split("\n## ").next().unwrap_or_default();
    body.split("```")
        .skip(1)
        .step_by(2)
        .find_map(|b| {
            let b = b.split_once('\n')?.1;
            b.starts_with(first_line).then(|| b.to_string())
        })
        .unwrap_or_else(|| panic!("README's {section:?} has no block starting {first_line:?}"))
}

/// Removes data directories left by earlier test processes that are gone.
fn sweep_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("eks-connector-kube-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn start(older: Option<&'static str>) -> Result<Cluster, String> {
    let base = std::env::temp_dir();
    sweep_stale_dirs(&base);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = base.join(format!("eks-connector-kube-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = repo_root().join("tests/kube-env/start.sh");
    let log_path = dir.join("start.log");
    let exited = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let dir = dir.clone();
        let exited = exited.clone();
        std::thread::Builder::new()
            .name("control-plane-keeper".into())
            .spawn(move || {
                use std::os::unix::process::CommandExt;
                let log = std::fs::File::create(&log_path).unwrap();
                let mut cmd = Command::new("bash");
                cmd.arg(&script).arg(&dir).args(older);
                cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
                // SAFETY: prctl is async-signal-safe; it only sets this child's death signal.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                match cmd.spawn() {
                    Ok(mut child) => {
                        tx.send(Ok(())).unwrap();
                        let _ = child.wait();
                        exited.store(true, Ordering::SeqCst);
                    }
                    Err(e) => {
                        tx.send(Err(e)).unwrap();
                        exited.store(true, Ordering::SeqCst);
                    }
                }
                // Live as long as the process: the control plane's death signal is tied to us.
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
    }
    if let Err(e) = rx.recv().unwrap() {
        return Err(format!("cannot run tests/kube-env/start.sh with bash: {e}"));
    }
    // The first run on a machine builds kube-apiserver from source: allow for it.
    let deadline = Instant::now() + Duration::from_secs(40 * 60);
    while !dir.join("ready").exists() {
        if exited.load(Ordering::SeqCst) || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("start.log")).unwrap_or_default();
            return Err(format!(
                "the test control plane did not start (Go toolchain and module proxy are needed \
                 for the first build; see tests/kube-env/start.sh). Its log:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let server_url = std::fs::read_to_string(dir.join("server-url")).unwrap();
    let port = server_url.rsplit(':').next().unwrap();
    let endpoint = Endpoint::from_parts("127.0.0.1", port).unwrap();
    let admin = Client::new(endpoint.clone(), &ServiceAccountDir::new(dir.join("admin")));
    let mut build = match older {
        None => Command::new(repo_root().join("tests/kube-env/build-bins.sh")),
        Some(v) => {
            let mut c = Command::new(repo_root().join("tests/kube-env/build-older.sh"));
            c.arg(v);
            c
        }
    };
    let bin_dir = PathBuf::from(
        String::from_utf8(build.output().unwrap().stdout)
            .unwrap()
            .trim(),
    );
    Ok(Cluster {
        dir,
        server_url,
        endpoint,
        admin,
        bin_dir,
    })
}

/// The body of a 2xx answer as JSON.
fn as_json(bytes: Vec<u8>) -> Value {
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

impl Cluster {
    /// A client with cluster-admin rights.
    pub fn admin(&self) -> &Client {
        &self.admin
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// An admin API call; `body` is JSON.
    pub fn admin_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, KubeError> {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        self.admin
            .request(method, path, bytes.as_deref())
            .map(as_json)
    }

    /// `kubectl` (v1.37, built with the API server) with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.bin_dir.join("kubectl"));
        c.arg("--kubeconfig").arg(self.kubeconfig());
        c
    }

    /// `kubectl ARGS` with `stdin` piped in when given: its output, whatever its exit status.
    pub fn run_kubectl(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        use std::io::Write;
        let mut c = self.kubectl();
        c.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kubectl");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `kubectl ARGS`, which must succeed: its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.run_kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Rendered YAML as JSON objects (kubectl's local conversion: no API server, so kinds it does
    /// not serve, like OpenShift's, convert too; removing an annotation nobody sets changes nothing).
    pub fn objects(&self, yaml: &str) -> Vec<Value> {
        let out = self.kubectl_ok(
            &[
                "annotate",
                "--local",
                "-f",
                "-",
                "eks-connector.test/none-",
                "-o",
                "json",
            ],
            Some(yaml.as_bytes()),
        );
        // One JSON document per object (or a List).
        let mut objs = Vec::new();
        for v in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
            let v = v.unwrap();
            match v["kind"].as_str() {
                Some("List") => objs.extend(v["items"].as_array().unwrap().iter().cloned()),
                _ => objs.push(v),
            }
        }
        objs
    }

    /// A fresh namespace with a ServiceAccount `connector` and its service-account directory.
    pub fn namespace(&'static self, prefix: &str) -> TestNamespace {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let mut suffix = [0u8; 3];
        eks_connector::random::fill(&mut suffix).unwrap();
        let name = format!(
            "{prefix}-{n}-{:02x}{:02x}{:02x}",
            suffix[0], suffix[1], suffix[2]
        );
        self.admin_request(
            "POST",
            "/api/v1/namespaces",
            Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})),
        )
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let ns = TestNamespace {
            name,
            cluster: self,
            sa_name: "connector".into(),
            sa_dir: PathBuf::new(),
        };
        let sa_dir = ns.create_sa("connector");
        TestNamespace { sa_dir, ..ns }
    }
}

/// One test's namespace.
pub struct TestNamespace {
    pub name: String,
    pub sa_name: String,
    /// `token`, `ca.crt`, `namespace`: exactly what a pod of `sa_name` sees.
    pub sa_dir: PathBuf,
    cluster: &'static Cluster,
}

impl TestNamespace {
    pub fn cluster(&self) -> &'static Cluster {
        self.cluster
    }

    pub fn endpoint(&self) -> Endpoint {
        self.cluster.endpoint.clone()
    }

    /// `KUBERNETES_SERVICE_HOST`/`_PORT` for a child process of ours.
    pub fn kube_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "KUBERNETES_SERVICE_HOST".into(),
                self.cluster.endpoint.host.clone(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                self.cluster.endpoint.port.to_string(),
            ),
        ]
    }

    /// Our client, authenticated as the namespace's `connector` ServiceAccount.
    pub fn client(&self) -> Client {
        Client::new(self.endpoint(), &ServiceAccountDir::new(&self.sa_dir))
    }

    /// A client for another service-account directory.
    pub fn client_for(&self, sa_dir: &Path) -> Client {
        Client::new(self.endpoint(), &ServiceAccountDir::new(sa_dir))
    }

    /// Creates ServiceAccount `sa` and returns its service-account directory with a fresh token.
    pub fn create_sa(&self, sa: &str) -> PathBuf {
        self.cluster
            .admin_request(
                "POST",
                &format!("/api/v1/namespaces/{}/serviceaccounts", self.name),
                Some(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})),
            )
            .unwrap_or_else(|e| panic!("create serviceaccount {sa}: {e}"));
        let dir = self
            .cluster
            .dir
            .join("sa")
            .join(format!("{}-{sa}", self.name));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), self.token_for(sa, 3600)).unwrap();
        std::fs::copy(self.cluster.ca_path(), dir.join("ca.crt")).unwrap();
        std::fs::write(dir.join("namespace"), &self.name).unwrap();
        dir
    }

    /// A new token for ServiceAccount `sa` from the TokenRequest API.
    pub fn token_for(&self, sa: &str, seconds: u64) -> String {
        let v = self
            .cluster
            .admin_request(
                "POST",
                &format!(
                    "/api/v1/namespaces/{}/serviceaccounts/{sa}/token",
                    self.name
                ),
                Some(&json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"expirationSeconds": seconds}
                })),
            )
            .unwrap_or_else(|e| panic!("token request for {sa}: {e}"));
        v["status"]["token"].as_str().unwrap().to_string()
    }

    /// Creates a Role in this namespace from its JSON (name and namespace are set here).
    pub fn create_role(&self, name: &str, rules: Value) {
        self.create(
            "/apis/rbac.authorization.k8s.io/v1",
            "roles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": name}, "rules": rules}),
        );
    }

    /// Binds a Role (kind "Role") or ClusterRole (kind "ClusterRole") in this namespace to a
    /// subject: `("ServiceAccount", name)` or `("User", name)`. Returns the binding's name.
    pub fn bind(&self, role_kind: &str, role: &str, subject_kind: &str, subject: &str) -> String {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("bind-{n}");
        self.create(
            "/apis/rbac.authorization.k8s.io/v1",
            "rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": name},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
                   "subjects": [subject_json(&self.name, subject_kind, subject)]}),
        );
        name
    }

    /// A cluster-wide binding of a ClusterRole (for `impersonate`, `/version`, …), named after
    /// this namespace so tests do not collide. `rules`, if given, creates the ClusterRole first.
    pub fn bind_cluster(
        &self,
        cluster_role: &str,
        rules: Option<Value>,
        subject_kind: &str,
        subject: &str,
    ) -> String {
        let role_name = if let Some(rules) = rules {
            let role_name = format!("{}-{cluster_role}", self.name);
            self.cluster
                .admin_request(
                    "POST",
                    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                    Some(
                        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                 "metadata": {"name": role_name}, "rules": rules}),
                    ),
                )
                .unwrap_or_else(|e| panic!("create clusterrole {role_name}: {e}"));
            role_name
        } else {
            cluster_role.to_string()
        };
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("{}-crb-{n}", self.name);
        self.cluster
            .admin_request(
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                Some(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                             "metadata": {"name": name},
                             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
                             "subjects": [subject_json(&self.name, subject_kind, subject)]})),
            )
            .unwrap_or_else(|e| panic!("create clusterrolebinding {name}: {e}"));
        name
    }

    /// Deletes a RoleBinding made by [`bind`](Self::bind).
    pub fn unbind(&self, binding: &str) {
        self.cluster
            .admin_request(
                "DELETE",
                &format!(
                    "/apis/rbac.authorization.k8s.io/v1/namespaces/{}/rolebindings/{binding}",
                    self.name
                ),
                None,
            )
            .unwrap_or_else(|e| panic!("delete rolebinding {binding}: {e}"));
    }

    /// POSTs `obj` into this namespace under `{group_path}/namespaces/{ns}/{resource}`.
    pub fn create(&self, group_path: &str, resource: &str, obj: Value) -> Value {
        self.cluster
            .admin_request(
                "POST",
                &format!("{group_path}/namespaces/{}/{resource}", self.name),
                Some(&obj),
            )
            .unwrap_or_else(|e| panic!("create {resource} in {}: {e}", self.name))
    }

    /// Reads the namespaced Role in a manifest file (JSON, which is also YAML) and creates it
    /// here, so tests bind exactly the RBAC that ships. Returns the Role's name.
    pub fn apply_role_from_manifest(&self, path: &Path) -> String {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let role: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{} must be JSON-style YAML for the tests: {e}",
                path.display()
            )
        });
        let name = role["metadata"]["name"].as_str().unwrap().to_string();
        self.create_role(&name, role["rules"].clone());
        name
    }
}

fn subject_json(namespace: &str, kind: &str, name: &str) -> Value {
    match kind {
        "ServiceAccount" => json!({"kind": "ServiceAccount", "name": name, "namespace": namespace}),
        "Group" => json!({"kind": "Group", "name": name, "apiGroup": "rbac.authorization.k8s.io"}),
        _ => json!({"kind": "User", "name": name, "apiGroup": "rbac.authorization.k8s.io"}),
    }
}

/// Waits until `f` returns `Some`, polling every 50 ms, up to `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A local TCP port free right now: for a child to listen on (`--health.addr`), or one where
/// nothing answers (an unreachable server or proxy).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
