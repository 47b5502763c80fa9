//! Benchmark of eks-connector-proxy (not a test: it reports figures, it asserts nothing).
//!
//! One run, side by side, on a local keep-alive TLS backend (in this program, rustls, a test CA
//! made with the `openssl` CLI) answering ~4 KiB JSON, for one or more proxy binaries (e.g. the
//! build of `main` before a change and the build after it):
//! - direct (client speaks TLS to the backend), each proxy (TCP mode) and nginx as a reverse
//!   proxy (1 worker, and one per CPU), at 1 and 16 concurrent keep-alive connections:
//!   throughput, p50/p99 latency. Fair: every proxy writes one log line per request to a file
//!   (our audit line on stderr redirected to a file; nginx's access log), TLS sessions and
//!   upstream connections are reused by all;
//! - a new connection per request, as the console's traffic arrives through the SSM agent: a
//!   client that connects to the unix socket, sends one request, reads the answer and closes,
//!   vs a new direct TLS connection per request (session resumption on, as any TLS client);
//! - sequential `curl --unix-socket` requests (process start-up dominates: for reference);
//! - each proxy's RSS idle, peak under load and after; upstream connections; 1,000 concurrent
//!   idle watches (a backend endpoint holding a chunked response open): RSS.
//!
//! Usage: proxy-bench --proxy [LABEL=]PATH [--proxy ...] [--seconds N] [--out FILE]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

const IDENTITY: &str = "arn:aws:iam::111122223333:role/EKSConsoleViewer";
const PATH: &str = "/api/v1/namespaces/default/pods";
const WATCHES: usize = 1000;

type Res<T> = Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("proxy-bench: {e}");
        std::process::exit(1);
    }
}

struct Args {
    /// (label, binary)
    proxies: Vec<(String, PathBuf)>,
    seconds: u64,
    out: Option<PathBuf>,
}

fn args() -> Res<Args> {
    let mut a = Args {
        proxies: Vec::new(),
        seconds: 5,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--proxy" => {
                let v = v()?;
                let (label, path) = v.split_once('=').unwrap_or(("proxy", &v));
                a.proxies.push((label.to_string(), path.into()));
            }
            "--seconds" => a.seconds = v()?.parse().map_err(|_| "--seconds needs a number")?,
            "--out" => a.out = Some(v()?.into()),
            _ => {
                return Err(format!(
                "unknown argument {k}; usage: proxy-bench --proxy [LABEL=]PATH [--proxy ...] [--seconds N] [--out FILE]"
            ))
            }
        }
    }
    if a.proxies.is_empty() {
        return Err("--proxy PATH (a release build of eks-connector-proxy) is required".into());
    }
    Ok(a)
}

/// One proxy binary under test: a TCP and a unix-socket instance.
struct UnderTest {
    label: String,
    bin: PathBuf,
    tcp: Child,
    tcp_port: u16,
    unix: Child,
    sock: PathBuf,
    rss_idle: u64,
    rss_peak: u64,
    opened: u64,
}

/// Everything the run shares.
struct Bench {
    dir: PathBuf,
    pki: Pki,
    backend: Backend,
    sa: PathBuf,
    cfg: Arc<ClientConfig>,
    dur: Duration,
}

/// One table row.
struct Row {
    run: String,
    conns: usize,
    r: LoadResult,
}

fn run() -> Res<()> {
    let args = args()?;
    raise_fd_limit();
    let dir = std::env::temp_dir().join(format!("proxy-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pki = make_pki(&dir)?;
    let backend = Backend::start(&pki)?;
    eprintln!("backend on 127.0.0.1:{}", backend.port);
    let sa = dir.join("sa");
    std::fs::create_dir_all(&sa).map_err(|e| e.to_string())?;
    std::fs::write(sa.join("token"), "bench-token-not-a-secret").map_err(|e| e.to_string())?;
    std::fs::copy(&pki.ca, sa.join("ca.crt")).map_err(|e| e.to_string())?;
    let cfg = client_config(&pki.ca)?;
    let b = Bench {
        dir,
        pki,
        backend,
        sa,
        cfg,
        dur: Duration::from_secs(args.seconds),
    };
    let mut uts = Vec::new();
    for (i, (label, bin)) in args.proxies.iter().enumerate() {
        uts.push(start_under_test(&b, i, label, bin)?);
    }
    if let Ok(n) = std::env::var("BENCH_PROFILE") {
        return profile(&b, &mut uts[0], &n);
    }
    let nginx = [1usize, 2]
        .into_iter()
        .filter_map(|w| start_nginx(&b.dir, w, b.backend.port, &b.pki.ca).map(|(c, p)| (w, c, p)))
        .collect::<Vec<_>>();
    if nginx.is_empty() {
        eprintln!("nginx is not installed: no reference rows (apt-get install nginx-light)");
    }
    let rows = keepalive_rows(&b, &mut uts, &nginx)?;
    for (_, mut c, _) in nginx {
        let _ = c.kill();
        let _ = c.wait();
    }
    let per_request = per_request_rows(&b, &uts)?;
    let footprints: Vec<String> = uts
        .iter_mut()
        .map(|ut| footprint(&b, ut))
        .collect::<Res<_>>()?;
    let report = report(&args, &uts, &rows, &per_request, &footprints);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).map_err(|e| format!("{}: {e}", out.display()))?;
        eprintln!("written to {}", out.display());
    }
    for ut in &mut uts {
        for c in [&mut ut.tcp, &mut ut.unix] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let _ = std::fs::remove_dir_all(&b.dir);
    Ok(())
}

fn start_under_test(b: &Bench, i: usize, label: &str, bin: &Path) -> Res<UnderTest> {
    let tcp_port = free_port()?;
    let tcp = start_proxy(
        bin,
        &b.dir,
        &format!("tcp-{i}"),
        &[
            "--proxy.socketType=tcp",
            &format!("--proxy.socketAddr=127.0.0.1:{tcp_port}"),
        ],
        b.backend.port,
        &b.sa,
    )?;
    wait_tcp(tcp_port)?;
    let sock = b.dir.join(format!("connector-{i}.sock"));
    let unix = start_proxy(
        bin,
        &b.dir,
        &format!("unix-{i}"),
        &[
            "--proxy.socketType=unix",
            &format!("--proxy.socketAddr={}", sock.display()),
        ],
        b.backend.port,
        &b.sa,
    )?;
    wait_unix(&sock)?;
    one_request(&Target::Proxy(tcp_port), &b.cfg)?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = rss_kib(tcp.id());
    Ok(UnderTest {
        label: label.to_string(),
        bin: bin.to_path_buf(),
        tcp,
        tcp_port,
        unix,
        sock,
        rss_idle,
        rss_peak: 0,
        opened: 0,
    })
}

/// `BENCH_PROFILE=N`: only the first proxy's load at N connections (attach perf/strace to the
/// printed pid); `BENCH_PROFILE=watches`: its 1,000 watches held open.
fn profile(b: &Bench, ut: &mut UnderTest, what: &str) -> Res<()> {
    let pid = ut.tcp.id();
    if what == "watches" {
        let w = open_watches(ut.tcp_port, WATCHES)?;
        eprintln!("profiling: proxy pid {pid}, {WATCHES} watches open for {:?}", b.dur);
        std::thread::sleep(b.dur);
        println!("RSS {} KiB", rss_kib(pid));
        drop(w);
    } else {
        let n: usize = what.parse().map_err(|_| "BENCH_PROFILE must be a number or watches")?;
        eprintln!("profiling: proxy pid {pid}, {n} connections");
        let r = load(&Target::Proxy(ut.tcp_port), &b.cfg, n, b.dur, false)?;
        println!("{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms", r.rps(), r.pct(50.0), r.pct(99.0));
    }
    let _ = ut.tcp.kill();
    let _ = ut.unix.kill();
    Ok(())
}

/// Keep-alive load at 1 and 16 connections: direct, each proxy, each nginx, interleaved so
/// that a change in the machine's load hits them alike.
fn keepalive_rows(
    b: &Bench,
    uts: &mut [UnderTest],
    nginx: &[(usize, Child, u16)],
) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for conns in [1usize, 16] {
        let r = load(&Target::Direct(b.backend.port), &b.cfg, conns, b.dur, false)?;
        rows.push(Row { run: "direct (TLS to backend)".into(), conns, r });
        for ut in uts.iter_mut() {
            let before = b.backend.accepted.load(Ordering::SeqCst);
            let (r, peak) = with_rss_sampler(ut.tcp.id(), || {
                load(&Target::Proxy(ut.tcp_port), &b.cfg, conns, b.dur, false)
            })?;
            ut.opened += b.backend.accepted.load(Ordering::SeqCst) - before;
            ut.rss_peak = ut.rss_peak.max(peak);
            rows.push(Row { run: format!("{}: eks-connector-proxy (TCP)", ut.label), conns, r });
        }
        for (workers, _, port) in nginx {
            match load(&Target::Proxy(*port), &b.cfg, conns, b.dur, false) {
                Ok(r) => rows.push(Row {
                    run: format!("nginx, {workers} worker(s), access log on"),
                    conns,
                    r,
                }),
                Err(e) => eprintln!("nginx reference run failed: {e}"),
            }
        }
    }
    Ok(rows)
}

/// A new connection per request: each proxy over its unix socket vs a new direct TLS
/// connection, sequential and 16 at a time; then sequential curl (process per request).
fn per_request_rows(b: &Bench, uts: &[UnderTest]) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for conns in [1usize, 16] {
        let r = load(&Target::Direct(b.backend.port), &b.cfg, conns, b.dur, true)?;
        rows.push(Row { run: "direct: new TLS connection per request".into(), conns, r });
        for ut in uts {
            let r = load(&Target::Unix(ut.sock.clone()), &b.cfg, conns, b.dur, true)?;
            rows.push(Row {
                run: format!("{}: new unix-socket connection per request", ut.label),
                conns,
                r,
            });
        }
    }
    for ut in uts {
        let sock = ut.sock.clone();
        let r = curl_series(100, |c| {
            c.arg("--unix-socket")
                .arg(&sock)
                .args(["-H", &format!("x-aws-eks-identity-arn: {IDENTITY}")])
                .arg(format!("http://localhost{PATH}"));
        })?;
        rows.push(Row { run: format!("{}: curl --unix-socket, process per request", ut.label), conns: 1, r });
    }
    let ca = b.pki.ca.clone();
    let port = b.backend.port;
    let r = curl_series(100, |c| {
        c.arg("--cacert").arg(&ca).arg(format!("https://127.0.0.1:{port}{PATH}"));
    })?;
    rows.push(Row { run: "curl https direct, process per request".into(), conns: 1, r });
    Ok(rows)
}

/// Memory and connections of one proxy: after the load, and with 1,000 idle watches.
fn footprint(b: &Bench, ut: &mut UnderTest) -> Res<String> {
    let pid = ut.tcp.id();
    let open_after = upstream_connections(pid, b.backend.port);
    let rss_after = rss_kib(pid);
    let started = Instant::now();
    let watches = open_watches(ut.tcp_port, WATCHES)?;
    let setup = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let rss_watches = rss_kib(pid);
    let threads = status_field(pid, "Threads:");
    let upstream = upstream_connections(pid, b.backend.port);
    drop(watches);
    std::thread::sleep(Duration::from_secs(2));
    let rss_closed = rss_kib(pid);
    let mib = |k: u64| k as f64 / 1024.0;
    let size = std::fs::metadata(&ut.bin).map(|m| m.len()).unwrap_or(0);
    Ok(format!(
        "| {} | {size} | {:.2} ({}) | {:.2} ({}) | {:.2} | {open_after} / {} | {:.2} ({}; {threads} threads, {upstream} upstream, {:.1} s to open) | {:.2} |\n",
        ut.label,
        mib(ut.rss_idle),
        verdict(mib(ut.rss_idle), 2.0),
        mib(ut.rss_peak),
        verdict(mib(ut.rss_peak), 8.0),
        mib(rss_after),
        ut.opened,
        mib(rss_watches),
        verdict(mib(rss_watches), 64.0),
        setup.as_secs_f64(),
        mib(rss_closed),
    ))
}

fn report(
    args: &Args,
    uts: &[UnderTest],
    rows: &[Row],
    per_request: &[Row],
    footprints: &[String],
) -> String {
    let mut t = String::new();
    let ver = Command::new(&uts[0].bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    t.push_str(&format!(
        "# eks-connector-proxy benchmark\n\n{ver}; {} CPUs, {}; {} s per load run; backend: rustls TLS 1.3 (ECDSA P-256), {} byte JSON responses, keep-alive; load average at the end of the run: {}.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| format!("Linux {}", s.trim())).unwrap_or_default(),
        args.seconds,
        BODY_LEN,
        std::fs::read_to_string("/proc/loadavg").map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default(),
    ));
    t.push_str("Load generator, backend and proxies share the same CPUs. Proxies: ");
    for ut in uts {
        t.push_str(&format!("`{}` = {}; ", ut.label, ut.bin.display()));
    }
    t.push_str("\n\n### Keep-alive connections\n\n");
    table(&mut t, rows, "nginx, 1 worker");
    t.push_str("\n### A new connection per request (the console's traffic through the SSM agent)\n\n");
    table(&mut t, per_request, "direct: new TLS");
    t.push_str("\n### Footprint (MiB; budgets: idle ≤ 2, under load ≤ 8, 1,000 watches < 64)\n\n");
    t.push_str("| proxy | binary bytes | RSS idle | RSS peak under load | RSS after load | upstream conns open after load / opened during it | RSS with 1,000 idle watches | RSS after they closed |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for f in footprints {
        t.push_str(f);
    }
    t
}

/// Rows with req/s, latency and the ratio to direct and to the reference row (`reference`,
/// matched by prefix) at the same connection count.
fn table(t: &mut String, rows: &[Row], reference: &str) {
    t.push_str(&format!("| run | conns | req/s | p50 ms | p99 ms | / direct | / {reference} |\n|---|---:|---:|---:|---:|---:|---:|\n"));
    for row in rows {
        let same = |p: &str| rows.iter().find(|r| r.conns == row.conns && r.run.starts_with(p));
        let ratio = |p: &str| {
            same(p)
                .filter(|r| !std::ptr::eq(*r, row))
                .map(|r| format!("{:.2}×", row.r.rps() / r.r.rps().max(1.0)))
                .unwrap_or_default()
        };
        t.push_str(&format!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {} |\n",
            row.run,
            row.conns,
            row.r.rps(),
            row.r.pct(50.0),
            row.r.pct(99.0),
            ratio("direct"),
            ratio(reference),
        ));
    }
}

fn verdict(v: f64, max: f64) -> String {
    if v <= max {
        "met".into()
    } else {
        format!("MISSED by {:.2}", v - max)
    }
}

// ---------------------------------------------------------------- PKI

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path) -> Res<Pki> {
    let sh = |args: &[&str]| -> Res<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    };
    sh(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ca.key",
    ])?;
    sh(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=bench-ca",
    ])?;
    sh(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "server.key",
    ])?;
    sh(&[
        "req",
        "-new",
        "-key",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=bench-backend",
    ])?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    sh(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "server.ext",
    ])?;
    Ok(Pki {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(ca: &Path) -> Res<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

// ---------------------------------------------------------------- backend

const BODY_LEN: usize = 4096;

fn json_body() -> Vec<u8> {
    let mut s = String::from("{\"kind\":\"PodList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"1\"},\"items\":[");
    let mut i = 0;
    while s.len() < BODY_LEN - 120 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{{\"metadata\":{{\"name\":\"pod-{i:04}\",\"namespace\":\"default\"}},\"status\":{{\"phase\":\"Running\"}}}}"));
        i += 1;
    }
    s.push(']');
    while s.len() < BODY_LEN - 1 {
        s.push(' ');
    }
    s.push('}');
    s.into_bytes()
}

struct Backend {
    port: u16,
    accepted: Arc<AtomicU64>,
}

impl Backend {
    fn start(pki: &Pki) -> Res<Backend> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
            .map_err(|e| e.to_string())?
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_file(&pki.key).map_err(|e| e.to_string())?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| e.to_string())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let accepted = Arc::new(AtomicU64::new(0));
        let acc = accepted.clone();
        let body: Arc<Vec<u8>> = Arc::new(json_body());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                acc.fetch_add(1, Ordering::SeqCst);
                let (cfg, body) = (cfg.clone(), body.clone());
                let _ = std::thread::Builder::new()
                    .stack_size(128 << 10)
                    .spawn(move || {
                        let _ = s.set_nodelay(true);
                        let Ok(conn) = ServerConnection::new(cfg) else {
                            return;
                        };
                        let _ = serve_backend(StreamOwned::new(conn, s), &body);
                    });
            }
        });
        Ok(Backend { port, accepted })
    }
}

fn serve_backend(
    stream: StreamOwned<ServerConnection, TcpStream>,
    body: &[u8],
) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(4096, stream);
    let mut line = String::new();
    let mut resp = Vec::with_capacity(body.len() + 256);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
        }
        resp.clear();
        if path.starts_with("/watch") {
            let event = b"{\"type\":\"ADDED\",\"object\":{\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"x\"}}}\n";
            resp.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
            resp.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
            resp.extend_from_slice(event);
            resp.extend_from_slice(b"\r\n");
            r.get_mut().write_all(&resp)?;
            r.get_mut().flush()?;
            // Hold the watch open until the other side goes away.
            let mut buf = [0u8; 512];
            while r.read(&mut buf)? > 0 {}
            return Ok(());
        }
        resp.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nAudit-Id: 0f5e1c3a-bench\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
        );
        resp.extend_from_slice(body);
        r.get_mut().write_all(&resp)?;
        r.get_mut().flush()?;
    }
}

// ---------------------------------------------------------------- nginx (reference)

/// nginx as a tuned reverse proxy in front of the same backend: `workers` worker processes,
/// upstream keep-alive, TLS session reuse, and an access-log line per request written to a file
/// (as our audit line is).
fn start_nginx(dir: &Path, workers: usize, backend: u16, ca: &Path) -> Option<(Child, u16)> {
    let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port().ok()?;
    let nd = dir.join(format!("nginx-{workers}"));
    std::fs::create_dir_all(nd.join("logs")).ok()?;
    let conf = format!(
        "worker_processes {workers};\nuser root;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log {d}/logs/access.log;\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/pt;\n  \
         fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n  \
         upstream backend {{ server 127.0.0.1:{backend}; keepalive 32; keepalive_requests 100000000; }}\n  \
         keepalive_requests 100000000; keepalive_timeout 600s;\n  \
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass https://backend;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      \
         proxy_set_header Authorization \"Bearer bench-token-not-a-secret\";\n      \
         proxy_set_header Impersonate-User $http_x_aws_eks_identity_arn;\n      \
         proxy_ssl_verify on;\n      proxy_ssl_trusted_certificate {ca};\n      proxy_ssl_name localhost;\n      \
         proxy_ssl_session_reuse on;\n    }}\n  }}\n}}\n",
        d = nd.display(),
        ca = ca.display(),
    );
    std::fs::write(nd.join("nginx.conf"), conf).ok()?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(&nd)
        .arg("-c")
        .arg(nd.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_tcp(port).ok()?;
    Some((child, port))
}

// ---------------------------------------------------------------- proxy process

fn start_proxy(
    bin: &Path,
    dir: &Path,
    name: &str,
    listen: &[&str],
    backend: u16,
    sa: &Path,
) -> Res<Child> {
    let log =
        std::fs::File::create(dir.join(format!("proxy-{name}.log"))).map_err(|e| e.to_string())?;
    Command::new(bin)
        .args(listen)
        .arg(format!("--proxy.targetHost=127.0.0.1:{backend}"))
        .arg(format!("--serviceaccount.dir={}", sa.display()))
        .env(
            "RUST_LOG",
            std::env::var("BENCH_PROXY_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))
}

fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_tcp(port: u16) -> Res<()> {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!("the proxy did not listen on {port}"))
}

fn wait_unix(p: &Path) -> Res<()> {
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(p).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!("the proxy did not listen on {}", p.display()))
}

// ---------------------------------------------------------------- load

enum Target {
    Direct(u16),
    Proxy(u16),
    Unix(PathBuf),
}

enum Conn {
    Plain(TcpStream),
    Unix(UnixStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(b),
            Conn::Unix(s) => s.read(b),
            Conn::Tls(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(b),
            Conn::Unix(s) => s.write(b),
            Conn::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

fn connect(t: &Target, cfg: &Arc<ClientConfig>) -> Res<Conn> {
    match t {
        Target::Unix(p) => Ok(Conn::Unix(UnixStream::connect(p).map_err(|e| e.to_string())?)),
        Target::Proxy(p) => {
            let s = TcpStream::connect(("127.0.0.1", *p)).map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            Ok(Conn::Plain(s))
        }
        Target::Direct(p) => {
            let s = TcpStream::connect(("127.0.0.1", *p)).map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
            let c =
                ClientConnection::new(cfg.clone(), name.to_owned()).map_err(|e| e.to_string())?;
            Ok(Conn::Tls(Box::new(StreamOwned::new(c, s))))
        }
    }
}

fn request(t: &Target) -> Vec<u8> {
    match t {
        Target::Proxy(_) | Target::Unix(_) => format!("GET {PATH} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nx-aws-eks-identity-arn: {IDENTITY}\r\n\r\n").into_bytes(),
        Target::Direct(_) => format!("GET {PATH} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nAuthorization: Bearer bench-token-not-a-secret\r\nImpersonate-User: {IDENTITY}\r\n\r\n").into_bytes(),
    }
}

/// Reads one response with a Content-Length body; returns its status.
fn read_response<R: BufRead>(r: &mut R, line: &mut String) -> Res<u16> {
    line.clear();
    r.read_line(line).map_err(|e| e.to_string())?;
    let status: u16 = line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(line).map_err(|e| e.to_string())? == 0 {
            return Err("closed".into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().map_err(|_| "bad content-length")?;
        }
    }
    let mut left = len;
    while left > 0 {
        let n = {
            let b = r.fill_buf().map_err(|e| e.to_string())?;
            if b.is_empty() {
                return Err("body cut short".into());
            }
            b.len().min(left)
        };
        r.consume(n);
        left -= n;
    }
    Ok(status)
}

fn one_request(t: &Target, cfg: &Arc<ClientConfig>) -> Res<()> {
    let mut c = BufReader::new(connect(t, cfg)?);
    c.get_mut()
        .write_all(&request(t))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let s = read_response(&mut c, &mut line)?;
    if s != 200 {
        return Err(format!("status {s}"));
    }
    Ok(())
}

struct LoadResult {
    count: usize,
    elapsed: Duration,
    lat_us: Vec<u32>,
}

impl LoadResult {
    fn rps(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (self.lat_us.len() - 1) as f64).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }
}

/// `conns` clients sending requests back to back for `dur`: over one kept-alive connection
/// each, or (`reconnect`) over a new connection per request, closed after the answer.
fn load(
    t: &Target,
    cfg: &Arc<ClientConfig>,
    conns: usize,
    dur: Duration,
    reconnect: bool,
) -> Res<LoadResult> {
    let req = Arc::new(request(t));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    let start = Instant::now();
    for _ in 0..conns {
        let mut c = match reconnect {
            true => None,
            false => Some(BufReader::with_capacity(16 << 10, connect(t, cfg)?)),
        };
        let (req, stop, errors) = (req.clone(), stop.clone(), errors.clone());
        let (t, cfg) = (
            match t {
                Target::Direct(p) => Target::Direct(*p),
                Target::Proxy(p) => Target::Proxy(*p),
                Target::Unix(p) => Target::Unix(p.clone()),
            },
            cfg.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let mut conn = match c.take() {
                    Some(conn) => conn,
                    None => match connect(&t, &cfg) {
                        Ok(conn) => BufReader::with_capacity(16 << 10, conn),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::SeqCst) == 0 {
                                eprintln!("load: connect: {e}");
                            }
                            break;
                        }
                    },
                };
                if conn.get_mut().write_all(&req).is_err() {
                    errors.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                match read_response(&mut conn, &mut line) {
                    Ok(200) => lat.push(t0.elapsed().as_micros() as u32),
                    other => {
                        if errors.fetch_add(1, Ordering::SeqCst) == 0 {
                            eprintln!("load: {other:?} {line:?}");
                        }
                        break;
                    }
                }
                if !reconnect {
                    c = Some(conn);
                }
            }
            lat
        }));
    }
    std::thread::sleep(dur);
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| "load thread panicked")?);
    }
    let elapsed = start.elapsed();
    if errors.load(Ordering::SeqCst) > 0 {
        return Err(format!(
            "{} load connections failed",
            errors.load(Ordering::SeqCst)
        ));
    }
    all.sort_unstable();
    Ok(LoadResult {
        count: all.len(),
        elapsed,
        lat_us: all,
    })
}

fn with_rss_sampler<T>(pid: u32, f: impl FnOnce() -> Res<T>) -> Res<(T, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let (s2, p2) = (stop.clone(), peak.clone());
    let h = std::thread::spawn(move || {
        while !s2.load(Ordering::SeqCst) {
            p2.fetch_max(rss_kib(pid), Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let r = f();
    stop.store(true, Ordering::SeqCst);
    let _ = h.join();
    Ok((r?, peak.load(Ordering::SeqCst)))
}

fn curl_series(n: usize, setup: impl Fn(&mut Command)) -> Res<LoadResult> {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
        setup(&mut c);
        let out = c.output().map_err(|e| format!("curl: {e}"))?;
        if out.stdout != b"200" {
            return Err(format!("curl got {}", String::from_utf8_lossy(&out.stdout)));
        }
        lat.push(t0.elapsed().as_micros() as u32);
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    Ok(LoadResult {
        count: n,
        elapsed,
        lat_us: lat,
    })
}

fn open_watches(port: u16, n: usize) -> Res<Vec<TcpStream>> {
    let req = format!("GET /watch/configmaps?watch=true HTTP/1.1\r\nHost: localhost\r\nx-aws-eks-identity-arn: {IDENTITY}\r\n\r\n");
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        conns.push(s);
    }
    // Every watch has its first event.
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(5).any(|w| w == b"ADDED") {
            let k = s.read(&mut buf).map_err(|e| format!("watch: {e}"))?;
            if k == 0 {
                return Err(format!(
                    "a watch was closed: {}",
                    String::from_utf8_lossy(&got)
                ));
            }
            got.extend_from_slice(&buf[..k]);
        }
        if !got.starts_with(b"HTTP/1.1 200") {
            return Err(format!("watch answered {}", String::from_utf8_lossy(&got)));
        }
    }
    Ok(conns)
}

// ---------------------------------------------------------------- /proc

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

fn upstream_connections(pid: u32, port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                let t = t.to_string_lossy().into_owned();
                if let Some(i) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(i.to_string());
                }
            }
        }
    }
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let remote = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote == Some(port) && f[3] == "01" && inodes.contains(f[9]) {
                n += 1;
            }
        }
    }
    n
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
