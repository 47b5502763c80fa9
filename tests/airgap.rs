//! Air-gapped install (README "Air-gapped install"), with real parts: an air gap made by a
//! network namespace that holds the SSM stand-in on its own loopback, so that only a proxy living
//! in that namespace can reach it (and only that proxy resolves `ssm.example.test`); Debian's
//! tinyproxy as the corporate proxy; a TLS-intercepting proxy of our own (rustls) re-signing with
//! its CA; Debian's docker-registry for the mirror; the real kube-apiserver for the dry run and the
//! state Secret. init runs on the host, as the rendered component configures it.
//!
//! Needs root (network namespaces, veth, mount namespaces), tinyproxy, skopeo and docker-registry
//! (installed with apt-get when missing; a test that cannot get one fails saying which).

mod common;
#[path = "support/peers.rs"]
mod peers;
#[path = "support/pod.rs"]
mod pod;
#[path = "support/ssm_stub.rs"]
mod ssm_stub;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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

/// A Debian tool the test needs: installed with apt-get when missing; fails saying what when it
/// cannot be had.
fn need_tool(command: &str, package: &str) {
    static APT: Mutex<()> = Mutex::new(());
    let have = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {command}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return;
    }
    let _guard = APT.lock().unwrap_or_else(|e| e.into_inner());
    if have() {
        return;
    }
    let out = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "-o",
            "DPkg::Lock::Timeout=300",
            package,
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output();
    let detail = match &out {
        Ok(o) => text(&o.stderr),
        Err(e) => e.to_string(),
    };
    assert!(
        have(),
        "this test needs `{command}` (Debian package {package}) and `apt-get install {package}` \
         did not provide it: {detail}"
    );
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
        need_tool("tinyproxy", "tinyproxy");
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
        let child = gap
            .exec("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
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
// A TLS-intercepting proxy: answers CONNECT, terminates TLS with a certificate for the asked
// host signed by its own CA (as corporate proxies do), and opens its own TLS connection to the
// SSM stand-in, trusting the stand-in's CA.

struct InterceptCa {
    ca: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").args(args).current_dir(dir));
}

fn intercept_ca() -> &'static InterceptCa {
    static CA: OnceLock<InterceptCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = temp_dir("intercept-ca");
        std::fs::write(
            dir.join("ext.cnf"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n\
                 subjectAltName=DNS:{SSM_HOST}\n"
            ),
        )
        .unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj",
            "/CN=Corp TLS inspection CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign",
        ]);
        openssl(&dir, &ca);
        let mut leaf = vec!["req"];
        leaf.extend(ec);
        leaf.extend(["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=ssm"]);
        openssl(&dir, &leaf);
        openssl(
            &dir,
            &[
                "x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "leaf.crt", "-days", "2", "-extfile", "ext.cnf",
            ],
        );
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("leaf.crt"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        InterceptCa {
            ca: dir.join("ca.crt"),
            server: Arc::new(server),
        }
    })
}

fn upstream_tls() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki().ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

struct Interceptor {
    url: String,
    /// CONNECT targets, and what happened to each.
    events: Arc<Mutex<Vec<String>>>,
}

impl Interceptor {
    /// Listens on the air gap's address; tunnels go to the stand-in on the namespace's loopback.
    fn start(gap: &AirGap, stub_port: u16) -> Interceptor {
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let addr = gap.addr.clone();
        let port = gap.inside(move || {
            let listener = TcpListener::bind((addr.as_str(), 0)).unwrap();
            let port = listener.local_addr().unwrap().port();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(client) = conn else { continue };
                    let ev = ev.clone();
                    std::thread::spawn(move || {
                        let r = intercept(client, stub_port, &ev);
                        if let Err(e) = r {
                            ev.lock().unwrap().push(format!("error: {e}"));
                        }
                    });
                }
            });
            port
        });
        Interceptor {
            url: format!("http://{}:{port}", gap.addr),
            events,
        }
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

fn intercept(
    mut client: TcpStream,
    stub_port: u16,
    events: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = text(&head);
    let target = match head.split_whitespace().collect::<Vec<_>>()[..] {
        ["CONNECT", t, ..] => t.to_string(),
        _ => {
            client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
    };
    events.lock().unwrap().push(format!("CONNECT {target}"));
    let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    let mut down = rustls::Connection::Server(
        rustls::ServerConnection::new(intercept_ca().server.clone()).map_err(other)?,
    );
    while down.is_handshaking() {
        if let Err(e) = down.complete_io(&mut client) {
            events
                .lock()
                .unwrap()
                .push(format!("client refused the interception certificate: {e}"));
            return Ok(());
        }
    }
    events
        .lock()
        .unwrap()
        .push(format!("intercepted TLS for {host}"));
    let mut upstream = TcpStream::connect(("127.0.0.1", stub_port))?;
    let name = ServerName::try_from(host.to_string()).map_err(other)?;
    let mut up = rustls::Connection::Client(
        rustls::ClientConnection::new(upstream_tls(), name).map_err(other)?,
    );
    while up.is_handshaking() {
        up.complete_io(&mut upstream)?;
    }
    relay(&mut client, &mut down, &mut upstream, &mut up)
}

fn other<E: std::fmt::Display>(e: E) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Plaintext both ways between two TLS connections until either side closes.
fn relay(
    a_sock: &mut TcpStream,
    a: &mut rustls::Connection,
    b_sock: &mut TcpStream,
    b: &mut rustls::Connection,
) -> std::io::Result<()> {
    // One direction: TLS records from `from_sock`, plaintext into `to`. False at end of stream.
    fn pump(
        from_sock: &mut TcpStream,
        from: &mut rustls::Connection,
        to_sock: &mut TcpStream,
        to: &mut rustls::Connection,
    ) -> std::io::Result<bool> {
        if from.read_tls(from_sock)? == 0 {
            return Ok(false);
        }
        from.process_new_packets().map_err(other)?;
        let mut buf = [0u8; 16 << 10];
        let mut open = true;
        loop {
            match from.reader().read(&mut buf) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => to.writer().write_all(&buf[..n])?,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while to.wants_write() {
            to.write_tls(to_sock)?;
        }
        while from.wants_write() {
            from.write_tls(from_sock)?;
        }
        Ok(open)
    }
    loop {
        let mut fds = [
            libc::pollfd {
                fd: a_sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b_sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds on the stack.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 30_000) };
        if n <= 0 {
            return Ok(());
        }
        if fds[0].revents != 0 && !pump(a_sock, a, b_sock, b)? {
            break;
        }
        if fds[1].revents != 0 && !pump(b_sock, b, a_sock, a)? {
            break;
        }
    }
    let _ = a_sock.shutdown(Shutdown::Both);
    let _ = b_sock.shutdown(Shutdown::Both);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The README's overlay, rendered with the cached kubectl, and the pod's environment from it.

/// The fenced block of README.md's "Air-gapped install" section that starts with `first_line`.
fn readme_block(first_line: &str) -> String {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Air-gapped install\n")
        .nth(1)
        .expect("README.md has an \"Air-gapped install\" section");
    let section = section.split("\n## ").next().unwrap();
    let mut blocks = section.split("```").skip(1).step_by(2);
    blocks
        .find_map(|b| {
            let body = b.split_once('\n')?.1;
            body.starts_with(first_line).then(|| body.to_string())
        })
        .unwrap_or_else(|| {
            panic!("README's Air-gapped install has no block starting {first_line:?}")
        })
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
        let o = self
            .objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)?;
        let v = o["data"][key].as_str()?;
        Some(if kind == "Secret" {
            text(
                &base64::engine::general_purpose::STANDARD
                    // kustomize folds long base64 values across lines.
                    .decode(v.split_whitespace().collect::<String>())
                    .unwrap_or_else(|e| panic!("{kind} {name} key {key}: {e}: {v:?}")),
            )
        } else {
            v.to_string()
        })
    }

    /// The container's environment as the kubelet makes it: the API server's service variables,
    /// then each entry in order (ConfigMap/Secret keys, optional ones left out when absent), with
    /// `$(VAR)` expanded from what is defined so far. Only the egress variables are kept.
    fn egress_env(&self, container: &str, ns: &common::TestNamespace) -> Vec<(String, String)> {
        let mut env = ns.kube_env();
        for e in self.container(container)["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                let mut v = v.to_string();
                for (k, val) in &env {
                    v = v.replace(&format!("$({k})"), val);
                }
                Some(v)
            } else {
                let from = &e["valueFrom"];
                let (kind, r) = if from["configMapKeyRef"].is_object() {
                    ("ConfigMap", &from["configMapKeyRef"])
                } else if from["secretKeyRef"].is_object() {
                    ("Secret", &from["secretKeyRef"])
                } else {
                    continue;
                };
                let v = self.key(
                    kind,
                    r["name"].as_str().unwrap(),
                    r["key"].as_str().unwrap(),
                );
                assert!(
                    v.is_some() || r["optional"] == true,
                    "env {name}: {kind} key {r} is missing and not optional"
                );
                v
            };
            if let Some(v) = value {
                env.retain(|(k, _)| *k != name);
                env.push((name, v));
            }
        }
        let keep = [
            "HTTPS_PROXY",
            "https_proxy",
            "NO_PROXY",
            "no_proxy",
            "AWS_CA_BUNDLE",
            "SSL_CERT_FILE",
            "AWS_ENDPOINT_URL_SSM",
        ];
        env.retain(|(k, _)| keep.contains(&k.as_str()));
        env
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

#[test]
fn a_tls_intercepting_proxy_works_with_its_ca_in_the_bundle_and_is_named_without() {
    let gap = AirGap::new();
    let stub = gap.ssm();
    let proxy = Interceptor::start(&gap, stub.port);
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
    // With the proxy's CA in the bundle (from the overlay's ConfigMap).
    let rendered = render(
        &values(&proxy.url, "", &endpoint, &[&intercept_ca().ca]),
        None,
    );
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
    assert!(
        proxy
            .events()
            .contains(&format!("intercepted TLS for {SSM_HOST}")),
        "{:?}",
        proxy.events()
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

/// The pod's egress as the README's overlay sets it, with AWS's own SSM agent under our launcher
/// (tests/support/pod.rs runs each container in its own namespaces, env and volumes as
/// rendered): init registers and the agent authenticates and rotates its key, all through
/// tinyproxy, while the key reaches the Secret directly.
#[test]
fn the_real_agent_authenticates_and_rotates_through_the_proxy_and_the_key_reaches_the_secret() {
    peers::ssm_agent();
    let gap = AirGap::new();
    let proxy = Tinyproxy::start(&gap, "");
    let ns = common::cluster().namespace("airgap-agent");
    let overlay = write_overlay(
        &values(&proxy.url, "", "https://unused.example.test", &[&pki().ca]),
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
        &ns,
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
        proxy.log()
    );
    let instance = regs[0].instance_id.clone().unwrap();
    let agent_name = pod.agent_container();
    let agent = pod.start(&agent_name);
    // The key sync runs in a container of its own (the agent's holds no token).
    let sync_name = pod.key_sync_container();
    let _sync = (sync_name != agent_name).then(|| pod.start(&sync_name));
    let logs = || format!("agent:\n{}\nproxy:\n{}", agent.log(), proxy.log());
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
    drop(agent);
    let _ = std::fs::remove_dir_all(&pod.work);
}
