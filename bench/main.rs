//! Benchmark of eks-connector-proxy (not a test: it reports figures, it asserts nothing).
//!
//! One run, side by side, on a local keep-alive TLS backend (in this program, rustls, a test CA
//! made with the `openssl` CLI) answering ~4 KiB JSON:
//! - direct (client speaks TLS to the backend) vs through the proxy (TCP mode), 1 and 16
//!   concurrent keep-alive connections: throughput, p50/p99 latency;
//! - sequential `curl --unix-socket` requests (the SSM agent's path);
//! - the proxy's RSS idle, peak under load and after; upstream connections open after the load
//!   and opened in total;
//! - 1,000 concurrent idle watches (a backend endpoint holding a chunked response open): RSS.
//!
//! Usage: proxy-bench --proxy PATH [--seconds N] [--out FILE]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
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
    proxy: PathBuf,
    seconds: u64,
    out: Option<PathBuf>,
}

fn args() -> Res<Args> {
    let mut a = Args {
        proxy: PathBuf::new(),
        seconds: 5,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--proxy" => a.proxy = v()?.into(),
            "--seconds" => a.seconds = v()?.parse().map_err(|_| "--seconds needs a number")?,
            "--out" => a.out = Some(v()?.into()),
            _ => {
                return Err(format!(
                "unknown argument {k}; usage: proxy-bench --proxy PATH [--seconds N] [--out FILE]"
            ))
            }
        }
    }
    if a.proxy.as_os_str().is_empty() {
        return Err("--proxy PATH (a release build of eks-connector-proxy) is required".into());
    }
    Ok(a)
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

    let tcp_port = free_port()?;
    let mut proxy = start_proxy(
        &args.proxy,
        &dir,
        "tcp",
        &[
            "--proxy.socketType=tcp",
            &format!("--proxy.socketAddr=127.0.0.1:{tcp_port}"),
        ],
        backend.port,
        &sa,
    )?;
    wait_tcp(tcp_port)?;
    let pid = proxy.id();
    let client_cfg = client_config(&pki.ca)?;
    let dur = Duration::from_secs(args.seconds);

    // Idle: after one request.
    one_request(&Target::Proxy(tcp_port), &client_cfg)?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = rss_kib(pid);

    // For profiling: BENCH_PROFILE=N runs only the proxy load at N connections for --seconds.
    if std::env::var("BENCH_PROFILE").as_deref() == Ok("watches") {
        let w = open_watches(tcp_port, WATCHES)?;
        eprintln!(
            "profiling: proxy pid {pid}, {WATCHES} watches open for {} s",
            dur.as_secs()
        );
        std::thread::sleep(dur);
        println!("RSS {} KiB", rss_kib(pid));
        drop(w);
        let _ = proxy.kill();
        return Ok(());
    }
    if let Ok(n) = std::env::var("BENCH_PROFILE") {
        let n: usize = n.parse().map_err(|_| "BENCH_PROFILE must be a number")?;
        eprintln!("profiling: proxy pid {pid}, {n} connections");
        let r = load(&Target::Proxy(tcp_port), &client_cfg, n, dur)?;
        println!(
            "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
            r.rps(),
            r.pct(50.0),
            r.pct(99.0)
        );
        let _ = proxy.kill();
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut accepted_during = 0;
    let mut peak = 0;
    for conns in [1usize, 16] {
        let d = load(&Target::Direct(backend.port), &client_cfg, conns, dur)?;
        let before = backend.accepted.load(Ordering::SeqCst);
        let (p, peak_rss) = with_rss_sampler(pid, || {
            load(&Target::Proxy(tcp_port), &client_cfg, conns, dur)
        })?;
        accepted_during += backend.accepted.load(Ordering::SeqCst) - before;
        peak = peak.max(peak_rss);
        rows.push((conns, d, p));
    }
    std::thread::sleep(Duration::from_secs(1));
    // A C reverse proxy on the same backend, if nginx is installed: the anchors' reference.
    let mut nginx_rows = Vec::new();
    if let Some((mut nginx, port)) = start_nginx(&dir, backend.port, &pki.ca) {
        for (conns, d, _) in &rows {
            match load(&Target::Proxy(port), &client_cfg, *conns, dur) {
                Ok(n) => nginx_rows.push((*conns, n.rps() / d.rps().max(1.0), n)),
                Err(e) => eprintln!("nginx reference run failed: {e}"),
            }
        }
        let _ = nginx.kill();
        let _ = nginx.wait();
        if nginx_rows.is_empty() {
            let log = std::fs::read_to_string(dir.join("nginx/logs/error.log")).unwrap_or_default();
            eprintln!(
                "nginx error log:\n{}",
                log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            );
        }
    }
    let open_after = upstream_connections(pid, backend.port);
    let rss_after = rss_kib(pid);

    // The SSM path: sequential curl over the unix socket, one request per process, and the same
    // curl straight to the backend over TLS for reference.
    let sock = dir.join("connector.sock");
    let mut unix_proxy = start_proxy(
        &args.proxy,
        &dir,
        "unix",
        &[
            "--proxy.socketType=unix",
            &format!("--proxy.socketAddr={}", sock.display()),
        ],
        backend.port,
        &sa,
    )?;
    wait_unix(&sock)?;
    let curl_n = 200;
    let curl_proxy = curl_series(curl_n, |c| {
        c.arg("--unix-socket")
            .arg(&sock)
            .args(["-H", &format!("x-aws-eks-identity-arn: {IDENTITY}")])
            .arg(format!("http://localhost{PATH}"));
    })?;
    let curl_direct = curl_series(curl_n, |c| {
        c.arg("--cacert")
            .arg(&pki.ca)
            .arg(format!("https://127.0.0.1:{}{PATH}", backend.port));
    })?;
    let _ = unix_proxy.kill();
    let _ = unix_proxy.wait();

    // 1,000 idle watches through the TCP proxy.
    let rss_before_watches = rss_kib(pid);
    let started = Instant::now();
    let watches = open_watches(tcp_port, WATCHES)?;
    let watch_setup = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let rss_watches = rss_kib(pid);
    let threads_watches = status_field(pid, "Threads:");
    let upstream_watches = upstream_connections(pid, backend.port);
    drop(watches);
    std::thread::sleep(Duration::from_secs(2));
    let rss_after_watches = rss_kib(pid);

    let _ = proxy.kill();
    let _ = proxy.wait();

    // The report.
    let mut t = String::new();
    let ver = Command::new(&args.proxy)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let size = std::fs::metadata(&args.proxy).map(|m| m.len()).unwrap_or(0);
    t.push_str(&format!(
        "# eks-connector-proxy benchmark\n\n{} ({} bytes), {} CPUs, {}, {} s per load run, backend: rustls TLS 1.3 (ECDSA P-256), {} byte JSON responses, keep-alive.\n\n",
        ver,
        size,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| format!("Linux {}", s.trim())).unwrap_or_default(),
        args.seconds,
        BODY_LEN,
    ));
    t.push_str("Load generator, backend and proxy share the same CPUs (as in the anchors' measurement).\n\n");
    t.push_str("| run | conns | req/s | p50 ms | p99 ms | proxy/direct |\n|---|---:|---:|---:|---:|---:|\n");
    for (conns, d, p) in &rows {
        t.push_str(&format!(
            "| direct (TLS to backend) | {conns} | {:.0} | {:.3} | {:.3} | |\n",
            d.rps(),
            d.pct(50.0),
            d.pct(99.0)
        ));
        t.push_str(&format!(
            "| through proxy (TCP) | {conns} | {:.0} | {:.3} | {:.3} | {:.0}% |\n",
            p.rps(),
            p.pct(50.0),
            p.pct(99.0),
            100.0 * p.rps() / d.rps().max(1.0)
        ));
    }
    for (conns, ratio, n) in &nginx_rows {
        t.push_str(&format!(
            "| reference: nginx reverse proxy, TLS upstream, keep-alive | {conns} | {:.0} | {:.3} | {:.3} | {:.0}% |\n",
            n.rps(),
            n.pct(50.0),
            n.pct(99.0),
            100.0 * ratio
        ));
    }
    t.push_str(&format!(
        "| curl --unix-socket, sequential (process per request) | 1 | {:.0} | {:.3} | {:.3} | |\n",
        curl_proxy.rps(),
        curl_proxy.pct(50.0),
        curl_proxy.pct(99.0)
    ));
    t.push_str(&format!(
        "| curl https direct, sequential (reference) | 1 | {:.0} | {:.3} | {:.3} | |\n\n",
        curl_direct.rps(),
        curl_direct.pct(50.0),
        curl_direct.pct(99.0)
    ));
    t.push_str("| figure | value | budget |\n|---|---:|---|\n");
    let mib = |k: u64| k as f64 / 1024.0;
    t.push_str(&format!(
        "| proxy RSS idle (after one request) | {:.2} MiB | ≤ 2 MiB: {} |\n",
        mib(rss_idle),
        verdict(mib(rss_idle), 2.0)
    ));
    t.push_str(&format!(
        "| proxy RSS peak under load (1 and 16 conns) | {:.2} MiB | ≤ 8 MiB: {} |\n",
        mib(peak),
        verdict(mib(peak), 8.0)
    ));
    t.push_str(&format!(
        "| proxy RSS after load | {:.2} MiB | |\n",
        mib(rss_after)
    ));
    t.push_str(&format!(
        "| upstream connections open after load | {open_after} | ≤ idle pool (16) |\n"
    ));
    t.push_str(&format!(
        "| upstream connections opened during all proxy load runs | {accepted_during} | |\n"
    ));
    let ratio16 = rows
        .iter()
        .find(|r| r.0 == 16)
        .map(|(_, d, p)| 100.0 * p.rps() / d.rps().max(1.0))
        .unwrap_or(0.0);
    t.push_str(&format!(
        "| through-proxy throughput at 16 conns, % of direct | {ratio16:.0}% | ≥ 55%: {} |\n",
        if ratio16 >= 55.0 { "met" } else { "MISSED" }
    ));
    t.push_str(&format!(
        "| {WATCHES} concurrent idle watches: proxy RSS | {:.2} MiB (from {:.2}; {} threads, {} upstream conns, set up in {:.1} s) | < 64 MiB: {} |\n",
        mib(rss_watches),
        mib(rss_before_watches),
        threads_watches,
        upstream_watches,
        watch_setup.as_secs_f64(),
        verdict(mib(rss_watches), 64.0)
    ));
    t.push_str(&format!(
        "| proxy RSS after the watches closed | {:.2} MiB | |\n",
        mib(rss_after_watches)
    ));
    println!("{t}");
    if let Some(out) = &args.out {
        std::fs::write(out, &t).map_err(|e| format!("{}: {e}", out.display()))?;
        eprintln!("written to {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn verdict(v: f64, max: f64) -> String {
    if v <= max {
        "met".into()
    } else {
        format!("MISSED by {:.2} MiB", v - max)
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

fn start_nginx(dir: &Path, backend: u16, ca: &Path) -> Option<(Child, u16)> {
    let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port().ok()?;
    let nd = dir.join("nginx");
    std::fs::create_dir_all(nd.join("logs")).ok()?;
    let conf = format!(
        "worker_processes auto;\nuser root;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
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
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(b),
            Conn::Tls(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(b),
            Conn::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

fn connect(t: &Target, cfg: &Arc<ClientConfig>) -> Res<Conn> {
    match t {
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
        Target::Proxy(_) => format!("GET {PATH} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nx-aws-eks-identity-arn: {IDENTITY}\r\n\r\n").into_bytes(),
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

fn load(t: &Target, cfg: &Arc<ClientConfig>, conns: usize, dur: Duration) -> Res<LoadResult> {
    let req = Arc::new(request(t));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    let start = Instant::now();
    for _ in 0..conns {
        let mut c = BufReader::with_capacity(16 << 10, connect(t, cfg)?);
        let (req, stop, errors) = (req.clone(), stop.clone(), errors.clone());
        handles.push(std::thread::spawn(move || {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if c.get_mut().write_all(&req).is_err() {
                    errors.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                match read_response(&mut c, &mut line) {
                    Ok(200) => lat.push(t0.elapsed().as_micros() as u32),
                    other => {
                        if errors.fetch_add(1, Ordering::SeqCst) == 0 {
                            eprintln!("load: {other:?} {line:?}");
                        }
                        break;
                    }
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
