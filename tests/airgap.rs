//! Air-gapped install (README "Air-gapped install"), with real parts: an air gap made by a
//! network namespace that holds the SSM stand-in on its own loopback, so that only a proxy living
//! in that namespace can reach it (and only that proxy resolves `ssm.example.test`); Debian's
//! tinyproxy as the corporate proxy; Debian's squid (squid-openssl, ssl_bump) as a TLS-intercepting
//! one re-signing with its own CA; Debian's docker-registry (the CNCF distribution registry) for
//! the mirror step; the real kube-apiserver for the dry run and the state Secret; AWS's SSM agent
//! (built from its source) under our launcher. init runs on the host, as the rendered component
//! configures it.
//!
//! Needs root (network namespaces, veth, mount namespaces); tinyproxy, squid-openssl, skopeo and
//! docker-registry are had as `./build.sh test` has them (scripts/lib.sh: checked by what each
//! provides, installed with apt as root); a test that cannot get one fails saying which.

mod common;
#[path = "support/kubelet_env.rs"]
mod kubelet_env;
#[path = "support/peers.rs"]
mod peers;
#[path = "support/pod.rs"]
mod pod;
#[path = "support/prereqs.rs"]
mod prereqs;
#[path = "support/ssm_stub.rs"]
mod ssm_stub;

use std::fs::File;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use ssm_stub::{pki, Stub};

const ACT_ID: &str = "5b2e7c1d-8a3f-4e6b-9c0d-1f2a3b4c5d6e";
const ACT_CODE: &str = "Ag7pQ2rS9tU4vW1xZ8aB3cD6";
const SECRET: &str = "eks-connector-state-0";
/// The SSM endpoint's name: only the proxies (inside the air gap) resolve it.
const SSM_HOST: &str = "ssm.example.test";
const PROXY_USER: &str = "airgap";
const PROXY_PASSWORD: &str = "Pr0xy-S3cret-pw";
/// The containers, as manifests/base names them (the original's names).
const INIT: &str = "connector-init";
const AGENT: &str = "connector-agent";
const PROXY: &str = "connector-proxy";
/// Where the private-ca component mounts the bundle.
const POD_CA_BUNDLE: &str = "/etc/eks-connector/ca/ca-bundle.pem";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "airgap-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

// ---------------------------------------------------------------------------------------------
// The air gap: a network namespace joined to ours by a veth pair. Its loopback holds the SSM
// stand-in; its veth address is the only thing the host can reach, and only the proxies listen
// there. `ip netns exec` gives processes in it /etc/netns/<name>/hosts as /etc/hosts.

struct AirGap {
    name: String,
    /// The namespace's address on the veth (where its proxies listen).
    addr: String,
    ns: File,
}

impl AirGap {
    fn new() -> AirGap {
        sweep_stale_namespaces();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("eksag-{pid}-{n}");
        let (host_if, ns_if) = (format!("eag{pid}h{n}"), format!("eag{pid}n{n}"));
        assert!(host_if.len() <= 15, "interface name {host_if} too long");
        let net = format!("10.{}.{}", 64 + pid % 128, n % 250);
        let ip = |args: &str| {
            run(Command::new("ip").args(args.split_whitespace()));
        };
        ip(&format!("netns add {name}"));
        let gap = AirGap {
            ns: File::open(format!("/run/netns/{name}"))
                .unwrap_or_else(|e| panic!("/run/netns/{name}: {e}")),
            addr: format!("{net}.2"),
            name: name.clone(),
        };
        ip(&format!("link add {host_if} type veth peer name {ns_if}"));
        ip(&format!("link set {ns_if} netns {name}"));
        ip(&format!("addr add {net}.1/24 dev {host_if}"));
        ip(&format!("link set {host_if} up"));
        ip(&format!("-n {name} addr add {net}.2/24 dev {ns_if}"));
        ip(&format!("-n {name} link set {ns_if} up"));
        ip(&format!("-n {name} link set lo up"));
        let etc = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("hosts"),
            format!("127.0.0.1 localhost\n127.0.0.1 {SSM_HOST}\n"),
        )
        .unwrap();
        gap
    }

    /// Runs `f` on a thread inside the namespace; sockets it opens, and threads it starts, stay
    /// there.
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let fd = self.ns.try_clone().unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we own.
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    /// `ip netns exec <name> …`.
    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `program args…` started inside the namespace, its output discarded.
    fn spawn(&self, program: &str, args: &[&std::ffi::OsStr]) -> Child {
        self.exec(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
    }

    /// The SSM stand-in on the namespace's loopback, with its certificate for `SSM_HOST`.
    fn ssm(&self) -> Stub {
        self.inside(|| Stub::start(ACT_ID, ACT_CODE))
    }
}

impl Drop for AirGap {
    fn drop(&mut self) {
        // Deleting the namespace also deletes both ends of the veth.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// Namespaces left by test processes that died before dropping them.
fn sweep_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("eksag-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&name));
        }
    }
}

fn wait_port(addr: &str) {
    let ok = common::wait_for(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200))
            .ok()
            .map(|_| ())
    });
    assert!(ok.is_some(), "nothing listens on {addr} after 10 s");
}

// ---------------------------------------------------------------------------------------------
// tinyproxy, inside the air gap.

struct Tinyproxy {
    child: Child,
    log: PathBuf,
    /// `http://<addr>:3128`, without credentials.
    url: String,
    authority: String,
}

impl Tinyproxy {
    /// `extra`: more configuration lines (BasicAuth, ConnectPort).
    fn start(gap: &AirGap, extra: &str) -> Tinyproxy {
        prereqs::need(&["tinyproxy"]);
        let dir = temp_dir("tinyproxy");
        let log = dir.join("tinyproxy.log");
        std::fs::write(&log, "").unwrap();
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port 3128\nListen {}\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\nMaxClients 32\n{extra}\n",
                gap.addr,
                log.display()
            ),
        )
        .unwrap();
        let child = gap.spawn(
            "tinyproxy",
            &["-d".as_ref(), "-c".as_ref(), conf.as_os_str()],
        );
        let authority = format!("{}:3128", gap.addr);
        let p = Tinyproxy {
            child,
            log,
            url: format!("http://{authority}"),
            authority,
        };
        wait_port(&p.authority);
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The targets of the CONNECT requests in the log.
    fn connects(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split("): CONNECT ").nth(1))
            .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    }

    /// The URL with credentials.
    fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@{}", self.authority)
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// A TLS-intercepting corporate proxy: Debian's squid (squid-openssl) with ssl_bump, inside the
// air gap. It answers CONNECT, peeks at the client's SNI, terminates TLS with a certificate for
// that name that it makes and signs with its own CA (security_file_certgen), and opens its own
// TLS connection to the SSM stand-in, trusting the stand-in's CA; its access log shows each
// request it saw in the clear.

/// The squid's signing CA, made once per test process: (certificate, key).
fn bump_ca() -> &'static (PathBuf, PathBuf) {
    static CA: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = temp_dir("bump-ca");
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=Corp TLS inspection CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ])
            .current_dir(&dir));
        (dir.join("ca.crt"), dir.join("ca.key"))
    })
}

struct Squid {
    child: Child,
    dir: PathBuf,
    /// `http://<addr>:3128`.
    url: String,
}

impl Squid {
    fn start(gap: &AirGap) -> Squid {
        prereqs::need(&["squid-ssl-bump"]);
        let dir = temp_dir("squid");
        let (ca, ca_key) = bump_ca();
        // squid drops to user proxy: it reads these and writes its logs and certificate store.
        std::fs::copy(ca, dir.join("bump.crt")).unwrap();
        std::fs::copy(ca_key, dir.join("bump.key")).unwrap();
        std::fs::copy(&pki().ca, dir.join("upstream-ca.pem")).unwrap();
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 {SSM_HOST}\n")).unwrap();
        run(Command::new("/usr/lib/squid/security_file_certgen")
            .args(["-c", "-s"])
            .arg(dir.join("ssl_db"))
            .args(["-M", "4MB"]));
        let d = dir.display();
        std::fs::write(
            dir.join("squid.conf"),
            format!(
                "http_port {addr}:3128 ssl-bump generate-host-certificates=on \
                 dynamic_cert_mem_cache_size=4MB tls-cert={d}/bump.crt tls-key={d}/bump.key\n\
                 sslcrtd_program /usr/lib/squid/security_file_certgen -s {d}/ssl_db -M 4MB\n\
                 sslcrtd_children 3 startup=1 idle=1\n\
                 acl step1 at_step SslBump1\n\
                 ssl_bump peek step1\n\
                 ssl_bump bump all\n\
                 tls_outgoing_options cafile={d}/upstream-ca.pem\n\
                 hosts_file {d}/hosts\n\
                 dns_nameservers 127.0.0.1\n\
                 http_access allow all\n\
                 cache deny all\n\
                 access_log stdio:{d}/access.log\n\
                 cache_log {d}/cache.log\n\
                 pid_filename {d}/squid.pid\n\
                 coredump_dir {d}\n\
                 cache_effective_user proxy\n\
                 pinger_enable off\n\
                 visible_hostname airgap-squid\n\
                 shutdown_lifetime 1 seconds\n",
                addr = gap.addr
            ),
        )
        .unwrap();
        run(Command::new("chown").args(["-R", "proxy:proxy"]).arg(&dir));
        let conf = dir.join("squid.conf");
        let child = gap.spawn("squid", &["-N".as_ref(), "-f".as_ref(), conf.as_os_str()]);
        let authority = format!("{}:3128", gap.addr);
        let s = Squid {
            child,
            dir,
            url: format!("http://{authority}"),
        };
        wait_port(&authority);
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// (method, URL) of each request in the access log: `CONNECT host:port` for a tunnel, then
    /// `POST https://host:port/…` for each request it read inside the TLS it intercepted. (A
    /// connection that sent nothing, as the test's port probe, is logged with method `-`.)
    fn requests(&self) -> Vec<(String, String)> {
        self.log()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.get(5)?.to_string(), f.get(6)?.to_string()))
            })
            .filter(|(m, _)| m != "-")
            .collect()
    }

    /// The requests it read in the clear (inside intercepted TLS), by URL.
    fn intercepted(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|(m, _)| m != "CONNECT")
            .map(|(_, u)| u)
            .collect()
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        // SIGTERM: squid stops its certificate helpers and exits after shutdown_lifetime.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let stopped = common::wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        if stopped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// The README's overlay, rendered with the cached kubectl, and the pod's environment from it.

/// The fenced block of README.md's "Air-gapped install" section that starts with `first_line`.
fn readme_block(first_line: &str) -> String {
    common::readme_block("Air-gapped install", first_line)
}

/// `s` with each `(from, to)` replaced; every `from` must be there (so the README and the test
/// cannot drift apart).
fn substitute(mut s: String, pairs: &[(&str, String)]) -> String {
    for (from, to) in pairs {
        assert!(s.contains(from), "README example lost {from:?}:\n{s}");
        s = s.replace(from, to);
    }
    s
}

/// The values the README example is run with.
struct Values {
    https_proxy: String,
    no_proxy: String,
    ssm_endpoint: String,
    agent_ssm_endpoint: String,
    agent_mgs_endpoint: String,
    ca_bundle: Vec<u8>,
    /// The CA bundle from a Secret (component private-ca-secret) instead of a ConfigMap.
    ca_from_secret: bool,
}

struct Rendered {
    objects: Vec<Value>,
    yaml: String,
}

/// The README's overlay with `values`, written next to a prepared manifests/ (as
/// overlays/my-cluster/ is), moved into `namespace` when given. Removed when dropped.
struct Overlay(PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes and renders the README's overlay.
fn render(values: &Values, namespace: Option<&str>) -> Rendered {
    let dir = write_overlay(values, namespace);
    let cluster = common::cluster();
    let yaml = cluster.kubectl_ok(&["kustomize", dir.0.to_str().unwrap()], None);
    Rendered {
        objects: cluster.objects(&yaml),
        yaml,
    }
}

/// A copy of the repository with manifests/ as an operator prepares it (README, Install: git
/// ignores activation.env, the example's placeholder activation stands in). Once per process.
fn prepared_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = temp_dir("operator");
        run(Command::new("cp")
            .arg("-r")
            .arg(common::repo_root().join("manifests"))
            .arg(&root));
        let manifests = root.join("manifests");
        std::fs::copy(
            manifests.join("activation.env.example"),
            manifests.join("activation.env"),
        )
        .unwrap();
        root
    })
}

fn write_overlay(values: &Values, namespace: Option<&str>) -> Overlay {
    // overlays/<name>/ next to manifests/, as the README has it.
    let dir = prepared_root().join("overlays").join(format!(
        "my-cluster-{}",
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut kustomization = substitute(
        readme_block("# overlays/my-cluster/kustomization.yaml"),
        &[
            (
                "http://proxy-user:proxy-password@proxy.corp.example:3128",
                values.https_proxy.clone(),
            ),
            // The test API server's --service-cluster-ip-range.
            (
                "SERVICE_CIDR=10.96.0.0/12",
                "SERVICE_CIDR=10.0.0.0/24".into(),
            ),
            (
                "NO_PROXY=.corp.example",
                format!("NO_PROXY={}", values.no_proxy),
            ),
            (
                "SSM_ENDPOINT=https://vpce-0abc-ssm.ssm.us-west-2.vpce.amazonaws.com",
                format!("SSM_ENDPOINT={}", values.ssm_endpoint),
            ),
        ],
    );
    if values.ca_from_secret {
        let generator = "  - name: eks-connector-ca-bundle\n    namespace: eks-connector\n    files:\n      - ca-bundle.pem\n";
        kustomization = substitute(
            kustomization,
            &[
                (
                    "egress-proxy/private-ca\n",
                    "egress-proxy/private-ca-secret\n".into(),
                ),
                (generator, String::new()),
                (
                    "secretGenerator:\n",
                    format!("secretGenerator:\n{generator}"),
                ),
            ],
        );
    }
    if let Some(ns) = namespace {
        kustomization.push_str(&format!("namespace: {ns}\n"));
    }
    std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
    let agent = substitute(
        readme_block("{\"Profile\""),
        &[
            (
                "https://vpce-0abc-ssm.ssm.us-west-2.vpce.amazonaws.com",
                values.agent_ssm_endpoint.clone(),
            ),
            (
                "https://vpce-0def-ssmmessages.ssmmessages.us-west-2.vpce.amazonaws.com",
                values.agent_mgs_endpoint.clone(),
            ),
        ],
    );
    std::fs::write(dir.join("amazon-ssm-agent.json"), agent).unwrap();
    std::fs::write(dir.join("ca-bundle.pem"), &values.ca_bundle).unwrap();
    Overlay(dir)
}

impl Rendered {
    fn object(&self, kind: &str, name_prefix: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| {
                o["kind"] == kind
                    && o["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(name_prefix))
            })
            .unwrap_or_else(|| panic!("no {kind} {name_prefix}* in the rendered overlay"))
    }

    fn container(&self, name: &str) -> &Value {
        let spec = &self.object("StatefulSet", "eks-connector")["spec"]["template"]["spec"];
        spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(spec["containers"].as_array().unwrap())
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    /// A key of a rendered ConfigMap or Secret (by its generated name).
    fn key(&self, kind: &str, name: &str, key: &str) -> Option<String> {
        kubelet_env::key(&self.objects, kind, name, key)
    }

    /// The container's egress variables as the kubelet makes them (the API server's service
    /// variables first, as the kubelet gives every container).
    fn egress_env(&self, container: &str, ns: &common::TestNamespace) -> Vec<(String, String)> {
        kubelet_env::egress(kubelet_env::resolve(
            &self.objects,
            self.container(container),
            &ns.kube_env(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// init, on the host, with the component's environment.

struct InitEnv {
    ns: common::TestNamespace,
    vault: PathBuf,
    /// The CA bundle the pod would see at POD_CA_BUNDLE.
    bundle: PathBuf,
}

fn init_env(prefix: &str) -> InitEnv {
    let ns = common::cluster().namespace(prefix);
    let role = ns.apply_role_from_manifest(&common::repo_root().join("manifests/base/role.yaml"));
    ns.bind("Role", &role, "ServiceAccount", "connector");
    let dir = temp_dir("init");
    InitEnv {
        ns,
        vault: dir.join("Vault"),
        bundle: dir.join("ca-bundle.pem"),
    }
}

struct InitRun {
    code: i32,
    stderr: String,
}

impl InitRun {
    fn error_line(&self) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.contains("ERROR"))
            .collect();
        assert_eq!(lines.len(), 1, "want one error line:\n{}", self.stderr);
        lines[0].to_string()
    }
}

impl InitEnv {
    /// Runs init with exactly `env` (the component's egress variables, the CA bundle path mapped
    /// to this machine) besides what a pod always has, in a mount namespace whose /etc/hosts holds
    /// only `hosts` (besides localhost) and whose resolver is loopback with nothing on port 53:
    /// names fail at once, as a cluster's DNS answers for names it does not know.
    fn run(&self, env: &[(String, String)], bundle: &[u8], hosts: &str) -> InitRun {
        std::fs::write(&self.bundle, bundle).unwrap();
        let _ = std::fs::remove_dir_all(&self.vault);
        let dir = self.bundle.parent().unwrap();
        let (hosts_file, resolv) = (dir.join("hosts"), dir.join("resolv.conf"));
        std::fs::write(&hosts_file, format!("127.0.0.1 localhost\n{hosts}\n")).unwrap();
        std::fs::write(
            &resolv,
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .unwrap();
        let mut c = Command::new("unshare");
        c.args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && mount --bind \"$1\" /etc/resolv.conf && shift && exec \"$@\"",
        ])
        .arg(&hosts_file)
        .arg(&resolv)
        .arg(env!("CARGO_BIN_EXE_eks-connector-init"));
        c.env_clear()
            .envs(self.ns.kube_env())
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("POD_NAME", "eks-connector-0")
            .env("EKS_ACTIVATION_ID", ACT_ID)
            .env("EKS_ACTIVATION_CODE", ACT_CODE)
            .env("RUST_LOG", "info")
            .args([
                format!("--state.baseDir={}", self.vault.display()),
                format!("--state.secretNamespace={}", self.ns.name),
                format!("--serviceaccount.dir={}", self.ns.sa_dir.display()),
                "--ssm.timeout=10s".into(),
                "--ssm.deadline=15s".into(),
                "--kube.deadline=5s".into(),
            ]);
        for (k, v) in env {
            let v = if v == POD_CA_BUNDLE {
                self.bundle.display().to_string()
            } else {
                v.clone()
            };
            c.env(k, v);
        }
        let out = c.output().expect("run init");
        InitRun {
            code: out.status.code().unwrap_or(-1),
            stderr: text(&out.stderr),
        }
    }

    fn secret_exists(&self) -> bool {
        common::cluster()
            .admin()
            .get_secret(&self.ns.name, SECRET)
            .is_ok()
    }
}

impl Drop for InitEnv {
    fn drop(&mut self) {
        if let Some(p) = self.vault.parent() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn ssm_url(port: u16) -> String {
    format!("https://{SSM_HOST}:{port}")
}

fn values(https_proxy: &str, no_proxy: &str, ssm_endpoint: &str, ca: &[&Path]) -> Values {
    let mut bundle = Vec::new();
    for p in ca {
        bundle.extend(std::fs::read(p).unwrap());
    }
    Values {
        https_proxy: https_proxy.into(),
        no_proxy: no_proxy.into(),
        ssm_endpoint: ssm_endpoint.into(),
        agent_ssm_endpoint: ssm_endpoint.into(),
        agent_mgs_endpoint: ssm_endpoint.into(),
        ca_bundle: bundle,
        ca_from_secret: false,
    }
}

fn assert_registered(env: &InitEnv, stub: &Stub, r: &InitRun) {
    assert_eq!(r.code, 0, "init failed:\n{}", r.stderr);
    assert_eq!(stub.registrations().len(), 1, "{}", r.stderr);
    stub.assert_strict();
    assert!(env.secret_exists(), "no state Secret:\n{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn without_a_proxy_init_cannot_cross_the_air_gap_and_says_so() {
    let gap = AirGap::new();
    let stub = gap.ssm();
    let env = init_env("airgap-noproxy");
    // By name: nothing on this side resolves it.
    let rendered = render(&values("", "", &ssm_url(stub.port), &[&pki().ca]), None);
    let e = rendered.egress_env(INIT, &env.ns);
    let r = env.run(&e, &std::fs::read(&pki().ca).unwrap(), "");
    assert_ne!(r.code, 0);
    let line = r.error_line();
    for want in [SSM_HOST, "cannot resolve", "HTTPS_PROXY"] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    // By address: the stand-in listens only inside the gap.
    let direct = format!("https://{}:{}", gap.addr, stub.port);
    let rendered = render(&values("", "", &direct, &[&pki().ca]), None);
    let r = env.run(
        &rendered.egress_env(INIT, &env.ns),
        &std::fs::read(&pki().ca).unwrap(),
        "",
    );
    assert_ne!(r.code, 0);
    let line = r.error_line();
    for want in [direct.as_str(), "directly (no proxy)"] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    assert!(stub.requests().is_empty());
    assert!(!env.secret_exists());
}

#[test]
fn with_the_components_proxy_init_registers_and_the_proxy_sees_the_connect() {
    let gap = AirGap::new();
    let stub = gap.ssm();
    let proxy = Tinyproxy::start(&gap, "");
    let env = init_env("airgap-proxy");
    let rendered = render(
        &values(&proxy.url, "", &ssm_url(stub.port), &[&pki().ca]),
        None,
    );
    let e = rendered.egress_env(INIT, &env.ns);
    let no_proxy = &e.iter().find(|(k, _)| k == "NO_PROXY").unwrap().1;
    let api = &env.ns.kube_env()[0].1;
    assert!(
        no_proxy.starts_with(&format!("{api},10.0.0.0/24,")),
        "the API server and the service range lead NO_PROXY: {no_proxy}"
    );
    let r = env.run(&e, &std::fs::read(&pki().ca).unwrap(), "");
    assert_registered(&env, &stub, &r);
    // One tunnel, to the endpoint; the Secret went to the API server directly.
    assert_eq!(
        proxy.connects(),
        [format!("{SSM_HOST}:{}", stub.port)],
        "{}",
        proxy.log()
    );
    assert!(
        r.stderr.contains(&proxy.url),
        "init names the proxy:\n{}",
        r.stderr
    );
}

#[test]
fn no_proxy_keeps_a_listed_ssm_name_direct() {
    // A VPC endpoint's private name that this side resolves (init's own /etc/hosts, in a mount
    // namespace) to a stand-in outside the gap; the proxy cannot reach it.
    let gap = AirGap::new();
    let proxy = Tinyproxy::start(&gap, "");
    let vpce = Stub::start(ACT_ID, ACT_CODE);
    let env = init_env("airgap-direct");
    let hosts = format!("127.0.0.1 {SSM_HOST}");
    let ca = std::fs::read(&pki().ca).unwrap();
    // Not listed: init tunnels through the proxy, which cannot reach the name.
    let rendered = render(
        &values(&proxy.url, "", &ssm_url(vpce.port), &[&pki().ca]),
        None,
    );
    let r = env.run(&rendered.egress_env(INIT, &env.ns), &ca, &hosts);
    assert_ne!(r.code, 0, "{}", r.stderr);
    let tunnels = proxy.connects();
    assert!(!tunnels.is_empty(), "{}", proxy.log());
    assert!(
        tunnels
            .iter()
            .all(|t| *t == format!("{SSM_HOST}:{}", vpce.port)),
        "{tunnels:?}"
    );
    assert!(vpce.requests().is_empty());
    // Listed: direct, registered, and no new tunnel.
    let rendered = render(
        &values(&proxy.url, SSM_HOST, &ssm_url(vpce.port), &[&pki().ca]),
        None,
    );
    let r = env.run(&rendered.egress_env(INIT, &env.ns), &ca, &hosts);
    assert_registered(&env, &vpce, &r);
    assert_eq!(proxy.connects(), tunnels, "{}", proxy.log());
}

#[test]
fn a_proxy_that_wants_credentials_is_named_and_credentials_are_never_logged() {
    let gap = AirGap::new();
    let stub = gap.ssm();
    let proxy = Tinyproxy::start(&gap, &format!("BasicAuth {PROXY_USER} {PROXY_PASSWORD}"));
    let env = init_env("airgap-auth");
    let ca = std::fs::read(&pki().ca).unwrap();
    let endpoint = ssm_url(stub.port);
    // tinyproxy answers a CONNECT without credentials with 407, wrong ones with 401.
    for (url, what, status) in [
        (proxy.url.clone(), "wants credentials", "HTTP 407"),
        (
            proxy.url_with(PROXY_USER, "wrong-password"),
            "refused the credentials",
            "HTTP 401",
        ),
    ] {
        let rendered = render(&values(&url, "", &endpoint, &[&pki().ca]), None);
        let r = env.run(&rendered.egress_env(INIT, &env.ns), &ca, "");
        assert_eq!(r.code, 15, "{what}: {}", r.stderr);
        let line = r.error_line();
        for want in [status, what, &proxy.authority, &endpoint, "HTTPS_PROXY"] {
            assert!(line.contains(want), "{what}: {want:?} in {line}");
        }
        assert!(!r.stderr.contains("wrong-password"), "{}", r.stderr);
    }
    let rendered = render(
        &values(
            &proxy.url_with(PROXY_USER, PROXY_PASSWORD),
            "",
            &endpoint,
            &[&pki().ca],
        ),
        None,
    );
    let r = env.run(&rendered.egress_env(INIT, &env.ns), &ca, "");
    assert_registered(&env, &stub, &r);
    assert!(!r.stderr.contains(PROXY_PASSWORD), "{}", r.stderr);
    assert!(
        !r.stderr.contains(&format!("{PROXY_USER}:")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&proxy.authority), "{}", r.stderr);
}

#[test]
fn a_proxy_that_refuses_connect_gets_one_line_naming_proxy_and_endpoint() {
    let gap = AirGap::new();
    let stub = gap.ssm();
    // Tunnels only to 443: the stand-in's port is refused (403).
    let proxy = Tinyproxy::start(&gap, "ConnectPort 443");
    let env = init_env("airgap-refused");
    let endpoint = ssm_url(stub.port);
    let rendered = render(&values(&proxy.url, "", &endpoint, &[&pki().ca]), None);
    let r = env.run(
        &rendered.egress_env(INIT, &env.ns),
        &std::fs::read(&pki().ca).unwrap(),
        "",
    );
    assert_ne!(r.code, 0);
    let line = r.error_line();
    for want in ["refused CONNECT", "403", &proxy.url, &endpoint] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    assert!(stub.requests().is_empty());
}

#[test]
fn an_endpoint_name_that_does_not_resolve_is_named_through_the_proxy_and_directly() {
    let gap = AirGap::new();
    let proxy = Tinyproxy::start(&gap, "");
    let env = init_env("airgap-nxdomain");
    let endpoint = "https://vpce-0000-ssm.nowhere.example.test";
    let ca = std::fs::read(&pki().ca).unwrap();
    let rendered = render(&values(&proxy.url, "", endpoint, &[&pki().ca]), None);
    let r = env.run(&rendered.egress_env(INIT, &env.ns), &ca, "");
    assert_ne!(r.code, 0);
    let line = r.error_line();
    for want in [
        &proxy.url,
        "vpce-0000-ssm.nowhere.example.test",
        "could not connect",
    ] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    let rendered = render(&values("", "", endpoint, &[&pki().ca]), None);
    let r = env.run(&rendered.egress_env(INIT, &env.ns), &ca, "");
    let line = r.error_line();
    for want in ["vpce-0000-ssm.nowhere.example.test", "cannot resolve"] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
}

/// squid with ssl_bump between init and SSM (README: "put the proxy's CA in ca-bundle.pem").
#[test]
fn a_tls_intercepting_proxy_works_with_its_ca_in_the_bundle_and_is_named_without() {
    let gap = AirGap::new();
    let stub = gap.ssm();
    let proxy = Squid::start(&gap);
    let env = init_env("airgap-intercept");
    let endpoint = ssm_url(stub.port);
    // The bundle has the endpoint's real CA but not the proxy's.
    let rendered = render(&values(&proxy.url, "", &endpoint, &[&pki().ca]), None);
    let e = rendered.egress_env(INIT, &env.ns);
    assert!(
        e.contains(&("AWS_CA_BUNDLE".into(), POD_CA_BUNDLE.into())),
        "{e:?}"
    );
    let r = env.run(&e, &std::fs::read(&pki().ca).unwrap(), "");
    assert_ne!(r.code, 0);
    let line = r.error_line();
    for want in [&proxy.url, SSM_HOST, "not trusted", "AWS_CA_BUNDLE"] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    assert!(stub.requests().is_empty());
    assert!(
        proxy.intercepted().is_empty(),
        "init sent a request into TLS it does not trust: {}",
        proxy.log()
    );
    // With the proxy's CA in the bundle (from the overlay's ConfigMap).
    let rendered = render(&values(&proxy.url, "", &endpoint, &[&bump_ca().0]), None);
    let bundle = rendered
        .key(
            "ConfigMap",
            rendered.object("ConfigMap", "eks-connector-ca-bundle")["metadata"]["name"]
                .as_str()
                .unwrap(),
            "ca-bundle.pem",
        )
        .unwrap();
    let r = env.run(&rendered.egress_env(INIT, &env.ns), bundle.as_bytes(), "");
    assert_registered(&env, &stub, &r);
    // squid read the registration in the clear: the TLS init trusted was squid's.
    assert_eq!(
        proxy.intercepted(),
        [format!("https://{SSM_HOST}:{}/", stub.port)],
        "{}",
        proxy.log()
    );
}

#[test]
fn the_component_renders_and_passes_a_server_side_dry_run() {
    let ns = common::cluster().namespace("airgap-dry");
    for from_secret in [false, true] {
        let mut v = values(
            &format!("http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.corp.example:3128"),
            ".corp.example",
            "https://vpce-0abc-ssm.ssm.us-west-2.vpce.amazonaws.com",
            &[&pki().ca],
        );
        v.ca_from_secret = from_secret;
        let rendered = render(&v, Some(&ns.name));
        let volume = rendered.object("StatefulSet", "eks-connector")["spec"]["template"]["spec"]
            ["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "egress-ca")
            .expect("the CA bundle volume")
            .clone();
        let (kind, source) = if from_secret {
            ("Secret", &volume["secret"]["secretName"])
        } else {
            ("ConfigMap", &volume["configMap"]["name"])
        };
        let bundle = rendered
            .key(kind, source.as_str().unwrap(), "ca-bundle.pem")
            .unwrap_or_else(|| panic!("the volume names the generated {kind}: {volume}"));
        assert_eq!(bundle.as_bytes(), std::fs::read(&pki().ca).unwrap());
        check_rendered(&rendered, &ns);
    }
}

fn check_rendered(rendered: &Rendered, ns: &common::TestNamespace) {
    // The patches land on the base's containers (matched by name), adding none.
    let spec = &rendered.object("StatefulSet", "eks-connector")["spec"]["template"]["spec"];
    for c in spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_array().unwrap())
    {
        assert!(
            c["image"].is_string(),
            "a container the base does not have: {c}"
        );
    }
    // Both containers that talk to AWS get the proxy, NO_PROXY and the CA; no other does.
    for c in [INIT, AGENT] {
        let e = rendered.egress_env(c, ns);
        let get = |k: &str| e.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("HTTPS_PROXY"),
            Some(format!("http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.corp.example:3128").as_str()),
            "{c}"
        );
        let no_proxy = get("NO_PROXY").unwrap();
        assert!(no_proxy.ends_with(",.corp.example"), "{c}: {no_proxy}");
        assert!(!no_proxy.contains("$("), "{c}: {no_proxy}");
        assert_eq!(get("AWS_CA_BUNDLE"), Some(POD_CA_BUNDLE), "{c}");
    }
    let agent = rendered.egress_env(AGENT, ns);
    for k in ["https_proxy", "no_proxy", "SSL_CERT_FILE"] {
        assert!(
            agent.iter().any(|(n, _)| n == k),
            "agent has {k}: {agent:?}"
        );
    }
    assert!(rendered.egress_env(INIT, ns).contains(&(
        "AWS_ENDPOINT_URL_SSM".into(),
        "https://vpce-0abc-ssm.ssm.us-west-2.vpce.amazonaws.com".into()
    )));
    let proxy_env = rendered.container(PROXY)["env"].to_string();
    assert!(
        !proxy_env.contains("PROXY\""),
        "the API proxy is not proxied: {proxy_env}"
    );
    // The agent's configuration carries the endpoints; the proxy URL is only in the Secret.
    let cm = rendered.object("ConfigMap", "eks-connector-agent");
    let agent_json: Value =
        serde_json::from_str(cm["data"]["amazon-ssm-agent.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        agent_json["Ssm"]["Endpoint"],
        "https://vpce-0abc-ssm.ssm.us-west-2.vpce.amazonaws.com"
    );
    assert!(
        cm["data"]["seelog.xml"].is_string(),
        "merge keeps seelog.xml"
    );
    for o in &rendered.objects {
        if o["kind"] != "Secret" {
            assert!(!o.to_string().contains(PROXY_PASSWORD), "{o}");
        }
    }
    // The real API server accepts every object.
    let out = common::cluster().run_kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(rendered.yaml.as_bytes()),
    );
    assert!(
        out.status.success(),
        "server-side dry run refused the overlay:\n{}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("statefulset.apps/eks-connector created (server dry run)"),
        "{stdout}"
    );
}

/// The pod's egress as the README's overlay sets it (proxy `proxy_url`, CA bundle `bundle`), with
/// AWS's own SSM agent under our launcher (tests/support/pod.rs runs each container in its own
/// namespaces, env and volumes as rendered): init registers, and the agent authenticates with
/// key #0, rotates its key and authenticates with key #1, all through the proxy; the rotated key
/// reaches the Secret (written to the API server directly). Returns the stand-in, inside `gap`.
fn agent_through_proxy(
    gap: &AirGap,
    ns: &common::TestNamespace,
    proxy_url: &str,
    bundle: &[&Path],
    proxy_log: &dyn Fn() -> String,
) -> Stub {
    peers::ssm_agent();
    let overlay = write_overlay(
        &values(proxy_url, "", "https://unused.example.test", bundle),
        None,
    );
    let rendered = pod::render_dir(&overlay.0);
    let activation = |k: &str| {
        let v = rendered.activation["data"][k].as_str().unwrap();
        text(&base64::engine::general_purpose::STANDARD.decode(v).unwrap())
    };
    let (id, code) = (
        activation("EKS_ACTIVATION_ID"),
        activation("EKS_ACTIVATION_CODE"),
    );
    let stub = gap.inside(move || Stub::start(&id, &code));
    // Short credentials: the agent asks again within seconds, so a rotation comes quickly.
    stub.set_token_lifetime(Duration::from_secs(6));
    let spec = &rendered.statefulset["spec"]["template"]["spec"];
    let sa = spec["serviceAccountName"].as_str().unwrap().to_string();
    let sa_dir = ns.create_sa(&sa);
    let role = rendered.role["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    ns.create_role(&role, rendered.role["rules"].clone());
    ns.bind("Role", &role, "ServiceAccount", &sa);
    let mut pod = pod::Pod::new_with(
        ns,
        "eks-connector-0",
        &sa_dir,
        &ssm_url(stub.port),
        rendered,
    );
    pod.run_init_containers();
    let regs = stub.registrations();
    assert_eq!(
        regs.len(),
        1,
        "init registered through the proxy: {}",
        proxy_log()
    );
    let instance = regs[0].instance_id.clone().unwrap();
    let agent_name = pod.agent_container();
    let agent = pod.start(&agent_name);
    // The key sync runs in a container of its own (the agent's holds no token).
    let sync_name = pod.key_sync_container();
    let _sync = (sync_name != agent_name).then(|| pod.start(&sync_name));
    let logs = || format!("agent:\n{}\nproxy:\n{}", agent.log(), proxy_log());
    let signed_with = |key: usize| {
        common::wait_for(Duration::from_secs(90), || {
            stub.tokens_granted()
                .into_iter()
                .find(|r| r.signed_by == Some((instance.clone(), key)))
        })
    };
    assert!(
        signed_with(0).is_some(),
        "no credentials through the proxy\n{}",
        logs()
    );
    stub.rotate_on_next_token();
    let rotated = common::wait_for(Duration::from_secs(60), || {
        stub.key_updates().into_iter().next()
    });
    assert!(
        rotated.is_some(),
        "no rotation through the proxy\n{}",
        logs()
    );
    assert!(
        signed_with(1).is_some(),
        "the new key was not used\n{}",
        logs()
    );
    // The rotated key is in the Secret, byte for byte the Vault's (the key sync wrote it to the
    // API server directly).
    let synced = common::wait_for(Duration::from_secs(30), || {
        let vault = eks_connector::state::read_vault(&pod.vault()).ok()?;
        let secret = common::cluster()
            .admin()
            .get_secret(&ns.name, SECRET)
            .ok()?;
        (secret.data.get("regkey") == Some(&vault.regkey().to_vec())).then_some(())
    });
    assert!(
        synced.is_some(),
        "the rotated key did not reach the Secret\n{}",
        logs()
    );
    stub.assert_strict();
    drop(agent);
    let _ = std::fs::remove_dir_all(&pod.work);
    stub
}

#[test]
fn the_real_agent_authenticates_and_rotates_through_the_proxy_and_the_key_reaches_the_secret() {
    let gap = AirGap::new();
    let proxy = Tinyproxy::start(&gap, "");
    let ns = common::cluster().namespace("airgap-agent");
    let stub = agent_through_proxy(&gap, &ns, &proxy.url, &[&pki().ca], &|| proxy.log());
    // Every tunnel went to the SSM endpoint; none to the API server.
    let tunnels = proxy.connects();
    assert!(
        tunnels.len() >= 3,
        "init, credentials, rotation: {tunnels:?}"
    );
    assert!(
        tunnels
            .iter()
            .all(|t| *t == format!("{SSM_HOST}:{}", stub.port)),
        "{tunnels:?}"
    );
}

/// The same through squid re-signing TLS, with only squid's CA in the bundle: the agent (which
/// reads AWS_CA_BUNDLE for its SDK calls and SSL_CERT_FILE for Go's pool, as the private-ca
/// component sets them and our launcher passes them on) trusts squid's certificates, and squid
/// reads every SSM call in the clear.
#[test]
fn the_real_agent_authenticates_and_rotates_through_a_tls_intercepting_proxy() {
    let gap = AirGap::new();
    let proxy = Squid::start(&gap);
    let ns = common::cluster().namespace("airgap-agent-bump");
    let stub = agent_through_proxy(&gap, &ns, &proxy.url, &[&bump_ca().0], &|| proxy.log());
    let endpoint = format!("{SSM_HOST}:{}", stub.port);
    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .all(|(m, u)| (m == "CONNECT" && *u == endpoint)
                || (m == "POST" && u.starts_with(&format!("https://{endpoint}/")))),
        "only SSM calls go through the proxy: {requests:?}"
    );
    // init's registration, the agent's credentials with key #0, the key update, credentials with
    // key #1: all read by squid inside the TLS it terminated.
    let ssm_calls = proxy
        .intercepted()
        .iter()
        .filter(|u| **u == format!("https://{endpoint}/"))
        .count();
    assert!(
        ssm_calls >= 4,
        "squid read {ssm_calls} SSM calls in the clear:\n{}",
        proxy.log()
    );
}

// ---------------------------------------------------------------------------------------------
// The mirror step (README step 1) into a private registry on loopback: Debian's docker-registry
// (the CNCF distribution registry) with TLS from a private CA, which skopeo trusts the way the
// README says (/etc/containers/certs.d/<registry>/ca.crt).

struct Registry {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:<port>`.
    authority: String,
    certs_d: PathBuf,
}

impl Registry {
    fn start() -> Registry {
        prereqs::need(&["docker-registry", "skopeo"]);
        let dir = temp_dir("registry");
        // The tests' private CA, whose server certificate names 127.0.0.1.
        let tls = pki();
        let authority = format!("127.0.0.1:{}", common::free_port());
        let d = dir.display();
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n\
                 http:\n  addr: {authority}\n  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            ),
        )
        .unwrap();
        let certs_d = PathBuf::from("/etc/containers/certs.d").join(&authority);
        std::fs::create_dir_all(&certs_d).unwrap();
        std::fs::copy(&tls.ca, certs_d.join("ca.crt")).unwrap();
        let log = File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let r = Registry {
            child,
            dir,
            authority,
            certs_d,
        };
        wait_port(&r.authority);
        r
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.certs_d);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sha256(bytes: &[u8]) -> String {
    use rsa::sha2::{Digest, Sha256};
    let d = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A stand-in for AWS's SSM agent image as README step 1 has an operator save it
/// (`skopeo copy --all docker://public.ecr.aws/… oci-archive:…`): an OCI image index over an amd64
/// and an arm64 image, one small layer each. AWS's registry cannot be reached from this machine,
/// so the test makes it; the mirror step reads nothing of an image but its manifests and blobs.
fn agent_archive(tag: &str) -> PathBuf {
    let dir = temp_dir("agent-image");
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |bytes: &[u8], media_type: &str| -> Value {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes).unwrap();
        serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    };
    let mut images = Vec::new();
    for arch in ["amd64", "arm64"] {
        let root = dir.join(format!("rootfs-{arch}"));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/amazon-ssm-agent-stand-in"),
            format!("a test's stand-in for the SSM agent image, {arch}\n"),
        )
        .unwrap();
        let layer_tar = dir.join(format!("layer-{arch}.tar"));
        run(Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&layer_tar)
            .arg("etc"));
        let layer = blob(
            &std::fs::read(&layer_tar).unwrap(),
            "application/vnd.oci.image.layer.v1.tar",
        );
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        });
        let config = blob(
            config.to_string().as_bytes(),
            "application/vnd.oci.image.config.v1+json",
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": [layer],
        });
        let mut m = blob(
            manifest.to_string().as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        );
        m["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
        images.push(m);
    }
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": images,
    });
    let mut top = blob(
        index.to_string().as_bytes(),
        "application/vnd.oci.image.index.v1+json",
    );
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [top]}).to_string(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("amazon-ssm-agent.oci.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    archive
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    run(Command::new("skopeo").args(args)).stdout
}

/// The digests of every blob (manifests, configs, layers) of an OCI layout directory.
fn blob_digests(layout: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap_or_else(|e| panic!("{}: {e}", layout.display()))
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect()
}

/// `images:` entries as the mirror step prints them: name → (newName, digest).
fn printed_images(out: &str) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut cur: Option<(String, String, String)> = None;
    for l in out.lines() {
        let l = l.trim();
        if let Some(n) = l.strip_prefix("- name: ") {
            entries.extend(cur.take());
            cur = Some((n.into(), String::new(), String::new()));
        } else if let (Some(c), Some(v)) = (cur.as_mut(), l.strip_prefix("newName: ")) {
            c.1 = v.into();
        } else if let (Some(c), Some(v)) = (cur.as_mut(), l.strip_prefix("digest: ")) {
            c.2 = v.into();
        }
    }
    entries.extend(cur);
    entries
}

/// README step 1 as written (the registry's name replaced): `./build.sh image`, then the mirror
/// line for a machine that cannot reach public.ecr.aws, whose agent image comes from an archive
/// (here a two-architecture stand-in made by the test, see `agent_archive`; AWS's own image is
/// not reachable from this machine, so the `docker://public.ecr.aws/…` source of the other mirror
/// line is not exercised). Pulled back from the registry by the digests it printed, each image is
/// the one mirrored: the same index byte for byte, amd64 and arm64 in it, every blob the same, and
/// the printed `images:` entries, put in manifests/kustomization.yaml, name both images by them.
#[test]
fn the_mirror_step_pushes_both_architectures_and_pulling_back_by_digest_gives_the_same_image() {
    let registry = Registry::start();
    let reg = registry.authority.as_str();
    let image_line = readme_block("./build.sh image\n");
    let mirror = readme_block("# on a machine that reaches public.ecr.aws");
    let (save_line, mirror_line) = {
        let lines: Vec<&str> = mirror.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 2, "a save line and a mirror line: {mirror}");
        (lines[0], lines[1])
    };
    // The tag the README saves is the one the manifests name.
    let kustomization =
        std::fs::read_to_string(common::repo_root().join("manifests/kustomization.yaml")).unwrap();
    let tag = save_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("docker://public.ecr.aws/amazon-ssm-agent/amazon-ssm-agent:"))
        .expect("the README saves the agent image by tag");
    assert!(
        kustomization.contains(&format!("newTag: \"{tag}\"")),
        "README saves tag {tag}, manifests/kustomization.yaml names another"
    );
    let agent = agent_archive(tag);
    let sh = |line: &str| {
        let out = run(Command::new("bash")
            .args(["-c", line])
            .current_dir(common::repo_root())
            .stdin(Stdio::null()));
        text(&out.stdout)
    };
    sh(image_line.lines().next().unwrap());
    let printed = sh(&substitute(
        mirror_line.to_string(),
        &[
            ("registry.corp.example:5000", reg.to_string()),
            (
                "oci-archive:amazon-ssm-agent.oci.tar",
                format!("oci-archive:{}", agent.display()),
            ),
        ],
    ));
    let entries = printed_images(&printed);
    let ours = common::repo_root().join(format!(
        "dist/eks-connector-{}.oci.tar",
        env!("CARGO_PKG_VERSION")
    ));
    let sources = [
        ("eks-connector", ours),
        ("public.ecr.aws/amazon-ssm-agent/amazon-ssm-agent", agent),
    ];
    assert_eq!(entries.len(), 2, "two images: entries:\n{printed}");
    let work = temp_dir("pulled");
    for (i, ((name, source), (printed_name, new_name, digest))) in
        sources.iter().zip(&entries).enumerate()
    {
        assert_eq!(printed_name, name, "{printed}");
        assert!(
            new_name.starts_with(&format!("{reg}/")),
            "{name} mirrored to {new_name}"
        );
        let source_ref = format!("oci-archive:{}", source.display());
        let source_index = skopeo(&["inspect", "--raw", &source_ref]);
        let pulled_ref = format!("docker://{new_name}@{digest}");
        let pulled_index = skopeo(&["inspect", "--raw", &pulled_ref]);
        assert_eq!(
            sha256(&pulled_index),
            *digest,
            "{name}: the registry's index is not the printed digest"
        );
        assert!(
            pulled_index == source_index,
            "{name}: the mirrored index differs from the archive's:\n{}\n{}",
            text(&pulled_index),
            text(&source_index)
        );
        let index: Value = serde_json::from_slice(&pulled_index).unwrap();
        let mut archs: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: not an index: {index}"))
            .iter()
            .filter_map(|m| m["platform"]["architecture"].as_str())
            .collect();
        archs.sort();
        assert_eq!(archs, ["amd64", "arm64"], "{name}");
        // Every blob of every architecture, pulled back by digest, is the archive's.
        let source_dir = work.join(format!("source-{i}"));
        std::fs::create_dir_all(&source_dir).unwrap();
        run(Command::new("tar")
            .arg("-C")
            .arg(&source_dir)
            .arg("-xf")
            .arg(source));
        // (No colon in the path: skopeo's oci: reference is PATH:TAG.)
        let pulled_dir = work.join(format!("pulled-{i}"));
        skopeo(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--quiet",
            &pulled_ref,
            &format!("oci:{}:pulled", pulled_dir.display()),
        ]);
        let (src, got) = (blob_digests(&source_dir), blob_digests(&pulled_dir));
        assert_eq!(got, src, "{name}: the blobs pulled back differ");
        assert!(src.contains(digest), "{name}");
    }
    // The printed entries in manifests/kustomization.yaml name both images by digest.
    let root = prepared_root();
    let k = root.join("manifests/kustomization.yaml");
    let original = std::fs::read_to_string(&k).unwrap();
    let head = original
        .split("\nimages:\n")
        .next()
        .expect("manifests/kustomization.yaml has images:");
    let yaml_start = printed.find("images:\n").expect("printed images:");
    let mirrored_root = temp_dir("mirrored-manifests");
    run(Command::new("cp")
        .arg("-r")
        .arg(root.join("manifests"))
        .arg(&mirrored_root));
    std::fs::write(
        mirrored_root.join("manifests/kustomization.yaml"),
        format!("{head}\n{}", &printed[yaml_start..]),
    )
    .unwrap();
    let rendered = common::cluster().objects(&common::cluster().kubectl_ok(
        &[
            "kustomize",
            mirrored_root.join("manifests").to_str().unwrap(),
        ],
        None,
    ));
    let sts = rendered
        .iter()
        .find(|o| o["kind"] == "StatefulSet")
        .expect("a StatefulSet");
    let spec = &sts["spec"]["template"]["spec"];
    let mut images: Vec<String> = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_array().unwrap())
        .map(|c| c["image"].as_str().unwrap().to_string())
        .collect();
    images.sort();
    images.dedup();
    let mut want: Vec<String> = entries.iter().map(|(_, n, d)| format!("{n}@{d}")).collect();
    want.sort();
    assert_eq!(images, want);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&mirrored_root);
}
