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
//! Repeats (`--repeat N`): every row is measured N times, the rounds interleaved (each round
//! runs every row once, starting with a different one), and the tables give the median with
//! the spread (lowest–highest) and, per round, each proxy's ratio to the first one and to nginx.
//! `--scrape`: every proxy serves `--health.addr`, and a scraper GETs `/metrics` from each of
//! them every second for the whole run (as Prometheus would).
//!
//! Usage: proxy-bench --proxy [LABEL=]PATH [--proxy ...] [--seconds N] [--repeat N]
//!        [--conns 1,16] [--scrape] [--no-per-request] [--out FILE]
//!
//! Profiling: `BENCH_PROFILE=N` (load at N connections through the first proxy only; attach
//! perf/strace to the printed pid), `BENCH_PROFILE=idle`, `BENCH_PROFILE=watches`,
//! `BENCH_PROFILE=requests:N` (exactly N requests at `--conns` connections, then SIGTERM and
//! wait: with `BENCH_WRAP="valgrind --tool=callgrind ..."` the proxy runs under that command and
//! its instruction count is written when it exits; `BENCH_TARGET=nginx1` profiles nginx with 1 worker instead),
//! `BENCH_PROFILE=reconnects:N` (the same, each request over a new TCP connection),
//! `BENCH_PROFILE=scrapes:N` (with `--scrape`: exactly N scrapes of `/metrics`, no requests).
//! `BENCH_PROXY_LOG=warn` turns audit lines off.

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
    repeat: usize,
    conns: Vec<usize>,
    scrape: bool,
    per_request: bool,
    out: Option<PathBuf>,
}

const USAGE: &str = "usage: proxy-bench --proxy [LABEL=]PATH [--proxy ...] [--seconds N] [--repeat N] [--conns 1,16] [--scrape] [--no-per-request] [--out FILE]";

fn args() -> Res<Args> {
    let mut a = Args {
        proxies: Vec::new(),
        seconds: 5,
        repeat: 1,
        conns: vec![1, 16],
        scrape: false,
        per_request: true,
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
            "--repeat" => a.repeat = v()?.parse().map_err(|_| "--repeat needs a number")?,
            "--conns" => {
                a.conns = v()?
                    .split(',')
                    .map(|n| n.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "--conns needs numbers separated by commas")?
            }
            "--scrape" => a.scrape = true,
            "--no-per-request" => a.per_request = false,
            "--out" => a.out = Some(v()?.into()),
            _ => return Err(format!("unknown argument {k}; {USAGE}")),
        }
    }
    if a.repeat == 0 || a.conns.is_empty() || a.conns.contains(&0) {
        return Err(format!("--repeat and --conns must be at least 1; {USAGE}"));
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
    /// `--health.addr` port (with `--scrape`).
    health: Option<u16>,
    rss_idle: u64,
    /// Of `rss_idle`, the pages of the mapped binary (clean, shared with every process that
    /// maps the same file: in the pod, the other containers running the multi-call binary).
    rss_idle_file: u64,
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
    scrape: bool,
}

/// One table row: its result in each round.
struct Row {
    run: String,
    conns: usize,
    rounds: Vec<LoadResult>,
}

impl Row {
    /// The median of a figure over the rounds.
    fn median(&self, f: impl Fn(&LoadResult) -> f64) -> f64 {
        median(self.rounds.iter().map(f).collect())
    }
    fn rps(&self) -> f64 {
        self.median(LoadResult::rps)
    }
    fn spread(&self) -> (f64, f64) {
        let v: Vec<f64> = self.rounds.iter().map(LoadResult::rps).collect();
        (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Adds one round's result to the row (`run`, `conns`), creating it at its first result.
fn record(rows: &mut Vec<Row>, run: String, conns: usize, r: LoadResult) {
    match rows.iter_mut().find(|x| x.run == run && x.conns == conns) {
        Some(row) => row.rounds.push(r),
        None => rows.push(Row {
            run,
            conns,
            rounds: vec![r],
        }),
    }
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
        scrape: args.scrape,
    };
    let mut uts = Vec::new();
    for (i, (label, bin)) in args.proxies.iter().enumerate() {
        uts.push(start_under_test(&b, i, label, bin)?);
    }
    if let Ok(n) = std::env::var("BENCH_PROFILE") {
        let done = profile(&b, uts.swap_remove(0), &n, args.conns[0]);
        let _ = std::fs::remove_dir_all(&b.dir);
        return done;
    }
    let scraper = Scraper::start(&uts);
    let nginx = [1usize, 2]
        .into_iter()
        .filter_map(|w| {
            start_nginx(&b.dir, w, b.backend.port, &b.pki.ca, false).map(|(c, p)| (w, c, p))
        })
        .collect::<Vec<_>>();
    if nginx.is_empty() {
        eprintln!("nginx is not installed: no reference rows (apt-get install nginx-light)");
    }
    let rows = keepalive_rows(&b, &args, &mut uts, &nginx)?;
    for (_, c, _) in nginx {
        stop_gracefully(c);
    }
    let per_request = match args.per_request {
        true => per_request_rows(&b, &args, &uts)?,
        false => Vec::new(),
    };
    let footprints: Vec<String> = uts
        .iter_mut()
        .map(|ut| footprint(&b, ut))
        .collect::<Res<_>>()?;
    let scrapes = scraper.stop();
    let report = report(&args, &uts, &rows, &per_request, &footprints, &scrapes);
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
    let health = match b.scrape {
        true => Some(free_port()?),
        false => None,
    };
    let mut listen = vec![
        "--proxy.socketType=tcp".to_string(),
        format!("--proxy.socketAddr=127.0.0.1:{tcp_port}"),
    ];
    listen.extend(health.map(|p| format!("--health.addr=127.0.0.1:{p}")));
    let tcp = start_proxy(
        bin,
        &b.dir,
        &format!("tcp-{i}"),
        &listen,
        b.backend.port,
        &b.sa,
        true,
    )?;
    wait_tcp(tcp_port)?;
    let sock = b.dir.join(format!("connector-{i}.sock"));
    let unix = start_proxy(
        bin,
        &b.dir,
        &format!("unix-{i}"),
        &[
            "--proxy.socketType=unix".to_string(),
            format!("--proxy.socketAddr={}", sock.display()),
        ],
        b.backend.port,
        &b.sa,
        false,
    )?;
    wait_unix(&sock)?;
    one_request(&Target::Proxy(tcp_port), &b.cfg)?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = rss_kib(tcp.id());
    let rss_idle_file = status_field(tcp.id(), "RssFile:");
    Ok(UnderTest {
        label: label.to_string(),
        bin: bin.to_path_buf(),
        tcp,
        tcp_port,
        unix,
        sock,
        health,
        rss_idle,
        rss_idle_file,
        rss_peak: 0,
        opened: 0,
    })
}

/// `BENCH_PROFILE=N`: only the first proxy's load at N connections (attach perf/strace to the
/// printed pid); `BENCH_PROFILE=idle`: held idle after one request (RSS idle);
/// `BENCH_PROFILE=watches`: its 1,000 watches held open;
/// `BENCH_PROFILE=requests:N`: exactly N requests at `conns` connections, then SIGTERM and wait
/// for the proxy to exit (so a `BENCH_WRAP` tool writes its counts).
fn profile(b: &Bench, mut ut: UnderTest, what: &str, conns: usize) -> Res<()> {
    let pid = ut.tcp.id();
    if what == "idle" {
        // After its one request, as the footprint table's "RSS idle" is taken: read its smaps.
        eprintln!("profiling: proxy pid {pid}, idle for {:?}", b.dur);
        std::thread::sleep(b.dur);
        println!("RSS {} KiB", rss_kib(pid));
    } else if what == "watches" {
        let w = open_watches(ut.tcp_port, WATCHES)?;
        eprintln!(
            "profiling: proxy pid {pid}, {WATCHES} watches open for {:?}",
            b.dur
        );
        std::thread::sleep(b.dur);
        println!("RSS {} KiB", rss_kib(pid));
        drop(w);
    } else if let Some(n) = what.strip_prefix("scrapes:") {
        // Exactly N scrapes of /metrics (with --scrape), no requests: what one scrape costs.
        let n: usize = n
            .parse()
            .map_err(|_| "BENCH_PROFILE=scrapes:N needs a number")?;
        let port = ut.health.ok_or("BENCH_PROFILE=scrapes:N needs --scrape")?;
        let answers: Vec<String> = (0..n).map(|_| scrape(port).0).collect();
        println!(
            "pid {pid}: {n} scrapes, the last answered {:?}",
            answers.last()
        );
        let _ = ut.unix.kill();
        let _ = ut.unix.wait();
        stop_gracefully(ut.tcp);
        return Ok(());
    } else if let Some((n, reconnect)) = what
        .strip_prefix("requests:")
        .map(|n| (n, false))
        .or_else(|| what.strip_prefix("reconnects:").map(|n| (n, true)))
    {
        // BENCH_TARGET=nginxW: nginx with W workers (under BENCH_WRAP) instead of the proxy.
        // reconnects:N: each request over a new connection, closed after the answer.
        let n: usize = n
            .parse()
            .map_err(|_| "BENCH_PROFILE=requests:N or reconnects:N needs a number")?;
        let per = n.div_ceil(conns);
        let _ = ut.unix.kill();
        let _ = ut.unix.wait();
        let (child, port) = match std::env::var("BENCH_TARGET").ok().as_deref() {
            Some(w) if w.starts_with("nginx") => {
                // Under BENCH_WRAP too: stopped with its wrapper, not left behind by a SIGKILL.
                stop_gracefully(ut.tcp);
                let workers = w["nginx".len()..].parse().unwrap_or(1);
                start_nginx(&b.dir, workers, b.backend.port, &b.pki.ca, true)
                    .ok_or("nginx did not start")?
            }
            _ => (ut.tcp, ut.tcp_port),
        };
        let pid = child.id();
        eprintln!(
            "profiling: pid {pid}, {} requests at {conns} connections",
            per * conns
        );
        let r = load_with(
            &Target::Proxy(port),
            &b.cfg,
            conns,
            b.dur,
            reconnect,
            per,
            &mut || {},
        )?;
        println!("pid {pid}: {} requests, {:.0} req/s", r.count, r.rps());
        stop_gracefully(child);
        return Ok(());
    } else {
        let n: usize = what.parse().map_err(|_| {
            "BENCH_PROFILE must be a number, idle, watches, requests:N or reconnects:N"
        })?;
        eprintln!("profiling: proxy pid {pid}, {n} connections");
        let r = load(&Target::Proxy(ut.tcp_port), &b.cfg, n, b.dur, false)?;
        println!(
            "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
            r.rps(),
            r.pct(50.0),
            r.pct(99.0)
        );
    }
    stop_gracefully(ut.tcp);
    let _ = ut.unix.kill();
    let _ = ut.unix.wait();
    Ok(())
}

/// A scraper that GETs `/metrics` from every proxy's health address once a second.
struct Scraper {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<(String, usize, String)>>>,
}

impl Scraper {
    fn start(uts: &[UnderTest]) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Vec<(String, u16)> = uts
            .iter()
            .filter_map(|u| u.health.map(|p| (u.label.clone(), p)))
            .collect();
        if targets.is_empty() {
            return Scraper { stop, handle: None };
        }
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            // Per proxy: scrapes, and the status lines answered (with their count).
            let mut seen: Vec<(usize, std::collections::BTreeMap<String, usize>, usize)> =
                targets.iter().map(|_| (0, Default::default(), 0)).collect();
            while !s.load(Ordering::SeqCst) {
                let t0 = Instant::now();
                for ((_, port), got) in targets.iter().zip(seen.iter_mut()) {
                    let (status, bytes) = scrape(*port);
                    got.0 += 1;
                    *got.1.entry(status).or_default() += 1;
                    got.2 = got.2.max(bytes);
                }
                if let Some(rest) = Duration::from_secs(1).checked_sub(t0.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            targets
                .iter()
                .zip(seen)
                .map(|((label, _), (n, statuses, bytes))| {
                    let st: Vec<String> =
                        statuses.iter().map(|(k, v)| format!("{v} × {k}")).collect();
                    (
                        label.clone(),
                        n,
                        format!("{} (largest answer {bytes} bytes)", st.join(", ")),
                    )
                })
                .collect()
        });
        Scraper {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops scraping: per proxy, (label, scrapes, what they got).
    fn stop(self) -> Vec<(String, usize, String)> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

/// One `GET /metrics`: the status line (or the error) and the bytes read.
fn scrape(port: u16) -> (String, usize) {
    let run = || -> std::io::Result<(String, usize)> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut all = Vec::new();
        s.read_to_end(&mut all)?;
        let line = all.split(|&c| c == b'\r').next().unwrap_or_default();
        Ok((String::from_utf8_lossy(line).into_owned(), all.len()))
    };
    run().unwrap_or_else(|e| (format!("error: {e}"), 0))
}

/// One measurement of a round: a row's label and what it runs.
struct Job<'a> {
    run: String,
    target: Target,
    /// The processes serving it (a proxy; nginx's master, whose workers are counted with it).
    pids: Vec<u32>,
    /// The proxy whose RSS and upstream connections are watched meanwhile.
    ut: Option<&'a mut UnderTest>,
}

impl Job<'_> {
    /// The client speaking TLS to the backend itself.
    fn direct(run: &str, port: u16) -> Self {
        Job {
            run: run.into(),
            target: Target::Direct(port),
            pids: Vec::new(),
            ut: None,
        }
    }
}

/// Runs each round's jobs, the k-th round starting at its k-th job (so that no row is always
/// first after a pause, or always last), recording each result in `rows`.
fn rounds(
    b: &Bench,
    repeat: usize,
    conns: usize,
    reconnect: bool,
    mut jobs: Vec<Job>,
    rows: &mut Vec<Row>,
) -> Res<()> {
    for round in 0..repeat {
        let n = jobs.len();
        for i in 0..n {
            let Job {
                run,
                target,
                pids,
                ut,
            } = &mut jobs[(round + i) % n];
            let cpu0 = (cpu_ms(pids), own_cpu_ms(), switches(pids), own_switches());
            // The server's threads are sampled again at the end of the load, before the
            // client connections (and the proxy's threads serving them) close.
            let mut server_end = std::collections::HashMap::new();
            let mut at_end = || server_end = switches(pids);
            let mut go = || {
                let target: &Target = target;
                load_with(
                    target,
                    &b.cfg,
                    conns,
                    b.dur,
                    reconnect,
                    usize::MAX,
                    &mut at_end,
                )
            };
            let r = match ut.as_deref_mut() {
                Some(ut) => {
                    let before = b.backend.accepted.load(Ordering::SeqCst);
                    let (r, peak) = with_rss_sampler(ut.tcp.id(), go)?;
                    ut.opened += b.backend.accepted.load(Ordering::SeqCst) - before;
                    ut.rss_peak = ut.rss_peak.max(peak);
                    r
                }
                None => match go() {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("{run} failed: {e}");
                        continue;
                    }
                },
            };
            let mut r = r;
            r.cpu_server_ms = cpu_ms(pids).saturating_sub(cpu0.0);
            r.cpu_bench_ms = own_cpu_ms().saturating_sub(cpu0.1);
            r.switches_server = switches_between(&cpu0.2, &server_end);
            r.switches_bench = own_switches().saturating_sub(cpu0.3);
            eprintln!(
                "round {}: {} at {conns}: {:.0} req/s",
                round + 1,
                run,
                r.rps()
            );
            record(rows, run.clone(), conns, r);
        }
    }
    // Rows in the jobs' order, whatever order the rounds ran them in.
    rows.sort_by_key(|r| {
        (
            r.conns,
            jobs.iter()
                .position(|j| j.run == r.run)
                .unwrap_or(usize::MAX),
        )
    });
    Ok(())
}

/// Keep-alive load: direct, each proxy, each nginx, interleaved so that a change in the
/// machine's load hits them alike.
fn keepalive_rows(
    b: &Bench,
    args: &Args,
    uts: &mut [UnderTest],
    nginx: &[(usize, Child, u16)],
) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for &conns in &args.conns {
        let mut jobs = vec![Job::direct("direct (TLS to backend)", b.backend.port)];
        for ut in uts.iter_mut() {
            jobs.push(Job {
                run: format!("{}: eks-connector-proxy (TCP)", ut.label),
                target: Target::Proxy(ut.tcp_port),
                pids: vec![ut.tcp.id()],
                ut: Some(ut),
            });
        }
        for (workers, child, port) in nginx {
            let nginx_pid = child.id();
            jobs.push(Job {
                run: format!("nginx, {workers} worker(s), access log on"),
                target: Target::Proxy(*port),
                pids: vec![nginx_pid],
                ut: None,
            });
        }
        rounds(b, args.repeat, conns, false, jobs, &mut rows)?;
    }
    Ok(rows)
}

/// A new connection per request: each proxy over its unix socket vs a new direct TLS
/// connection; then sequential curl (process per request).
fn per_request_rows(b: &Bench, args: &Args, uts: &[UnderTest]) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for &conns in &args.conns {
        let mut jobs = vec![Job::direct(
            "direct: new TLS connection per request",
            b.backend.port,
        )];
        for ut in uts {
            jobs.push(Job {
                run: format!("{}: new unix-socket connection per request", ut.label),
                target: Target::Unix(ut.sock.clone()),
                pids: vec![ut.unix.id()],
                ut: None,
            });
        }
        rounds(b, args.repeat, conns, true, jobs, &mut rows)?;
    }
    for ut in uts {
        let sock = ut.sock.clone();
        let r = curl_series(100, |c| {
            c.arg("--unix-socket")
                .arg(&sock)
                .args(["-H", &format!("x-aws-eks-identity-arn: {IDENTITY}")])
                .arg(format!("http://localhost{PATH}"));
        })?;
        record(
            &mut rows,
            format!("{}: curl --unix-socket, process per request", ut.label),
            1,
            r,
        );
    }
    let ca = b.pki.ca.clone();
    let port = b.backend.port;
    let r = curl_series(100, |c| {
        c.arg("--cacert")
            .arg(&ca)
            .arg(format!("https://127.0.0.1:{port}{PATH}"));
    })?;
    record(
        &mut rows,
        "curl https direct, process per request".into(),
        1,
        r,
    );
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
        "| {} | {size} | {:.2} ({}) | {:.2} / {:.2} | {:.2} ({}) | {:.2} | {open_after} / {} | {:.2} ({}; {threads} threads, {upstream} upstream, {:.1} s to open) | {:.2} |\n",
        ut.label,
        mib(ut.rss_idle),
        verdict(mib(ut.rss_idle), 2.0),
        mib(ut.rss_idle_file),
        mib(ut.rss_idle - ut.rss_idle_file.min(ut.rss_idle)),
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
    scrapes: &[(String, usize, String)],
) -> String {
    let mut t = String::new();
    let ver = Command::new(&uts[0].bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    t.push_str(&format!(
        "# eks-connector-proxy benchmark\n\n{ver}; {} CPUs, {}; {} s per load run, {} round(s) interleaved; backend: rustls TLS 1.3 (ECDSA P-256), {} byte JSON responses, keep-alive; load average at the end of the run: {}.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| format!("Linux {}", s.trim())).unwrap_or_default(),
        args.seconds,
        args.repeat,
        BODY_LEN,
        std::fs::read_to_string("/proc/loadavg").map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default(),
    ));
    t.push_str("Load generator, backend and proxies share the same CPUs. Proxies: ");
    for ut in uts {
        t.push_str(&format!("`{}` = {}; ", ut.label, ut.bin.display()));
    }
    t.push_str("\n\n");
    for (label, n, what) in scrapes {
        t.push_str(&format!("`GET /metrics` on `{label}`'s health address once a second during the whole run: {n} scrapes, answered {what}.\n\n"));
    }
    t.push_str("### Keep-alive connections\n\n");
    table(&mut t, rows, "nginx, 1 worker");
    paired(&mut t, rows, &uts[0].label);
    if !per_request.is_empty() {
        t.push_str(
            "\n### A new connection per request (the console's traffic through the SSM agent)\n\n",
        );
        table(&mut t, per_request, "direct: new TLS");
        paired(&mut t, per_request, &uts[0].label);
    }
    t.push_str("\n### Footprint (MiB; budgets: idle ≤ 2, under load ≤ 8, 1,000 watches < 64)\n\n");
    t.push_str("| proxy | binary bytes | RSS idle | of which the mapped binary / the rest | RSS peak under load | RSS after load | upstream conns open after load / opened during it | RSS with 1,000 idle watches | RSS after they closed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for f in footprints {
        t.push_str(f);
    }
    t
}

/// Rows with the median req/s and its spread over the rounds, median latencies, and the
/// ratio of medians to direct and to the reference row (`reference`, matched by prefix) at
/// the same connection count.
fn table(t: &mut String, rows: &[Row], reference: &str) {
    t.push_str(&format!("| run | conns | req/s (median) | lowest–highest | p50 ms | p99 ms | / direct | / {reference} | server CPU µs/req | client+backend CPU µs/req | server / client+backend context switches per req |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"));
    for row in rows {
        let same = |p: &str| {
            rows.iter()
                .find(|r| r.conns == row.conns && r.run.starts_with(p))
        };
        let ratio = |p: &str| {
            same(p)
                .filter(|r| !std::ptr::eq(*r, row))
                .map(|r| format!("{:.2}×", row.rps() / r.rps().max(1.0)))
                .unwrap_or_default()
        };
        let (lo, hi) = row.spread();
        t.push_str(&format!(
            "| {} | {} | {:.0} | {lo:.0}–{hi:.0} | {:.3} | {:.3} | {} | {} | {:.1} | {:.1} | {:.2} / {:.2} |\n",
            row.run,
            row.conns,
            row.rps(),
            row.median(|r| r.pct(50.0)),
            row.median(|r| r.pct(99.0)),
            ratio("direct"),
            ratio(reference),
            row.median(|r| r.cpu_us().0),
            row.median(|r| r.cpu_us().1),
            row.median(|r| r.switches().0),
            row.median(|r| r.switches().1),
        ));
    }
}

/// Round by round (each round measures every row once, close in time): each proxy's req/s over
/// the first proxy's and over each nginx's — ratios that the machine's load cancels out of.
fn paired(t: &mut String, rows: &[Row], first: &str) {
    let proxies: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            !r.run.starts_with("direct") && !r.run.starts_with("nginx") && !r.run.contains("curl")
        })
        .collect();
    let mut lines = Vec::new();
    for row in &proxies {
        let refs = rows.iter().filter(|r| {
            r.conns == row.conns
                && !std::ptr::eq(*r, *row)
                && (r.run.starts_with(&format!("{first}:")) || r.run.starts_with("nginx"))
                && r.rounds.len() == row.rounds.len()
        });
        for other in refs {
            let per: Vec<f64> = row
                .rounds
                .iter()
                .zip(&other.rounds)
                .map(|(a, b)| a.rps() / b.rps().max(1.0))
                .collect();
            let list: Vec<String> = per.iter().map(|x| format!("{x:.2}")).collect();
            lines.push(format!(
                "| {} / {} | {} | {} | {:.2}× |\n",
                row.run.split(':').next().unwrap_or(&row.run),
                other.run.split(':').next().unwrap_or(&other.run),
                row.conns,
                list.join(", "),
                median(per),
            ));
        }
    }
    if !lines.is_empty() {
        t.push_str(
            "\n| ratio, round by round | conns | each round | median |\n|---|---:|---|---:|\n",
        );
        lines.iter().for_each(|l| t.push_str(l));
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
fn start_nginx(
    dir: &Path,
    workers: usize,
    backend: u16,
    ca: &Path,
    wrapped: bool,
) -> Option<(Child, u16)> {
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
    let child = command(Path::new(bin), wrapped)
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

/// SIGTERM, then waits: nginx's master stops its workers (a SIGKILL would leave them running).
/// The child's own children are signalled too: under `strace`, which ignores SIGTERM while it
/// runs a command, the server is strace's child.
fn stop_gracefully(mut c: Child) {
    for pid in with_children(&[c.id()]).into_iter().rev() {
        // SAFETY: signalling our own child or its children.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let _ = c.wait();
}

/// `bin`, or (`wrapped`) `bin` under the command in `BENCH_WRAP` (e.g. valgrind), if set.
fn command(bin: &Path, wrapped: bool) -> Command {
    let wrap = std::env::var("BENCH_WRAP").ok().filter(|_| wrapped);
    let mut words = wrap.iter().flat_map(|w| w.split_whitespace());
    match words.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(words).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// Starts a proxy; `wrapped`: under the command in `BENCH_WRAP`, if set.
fn start_proxy(
    bin: &Path,
    dir: &Path,
    name: &str,
    listen: &[String],
    backend: u16,
    sa: &Path,
    wrapped: bool,
) -> Res<Child> {
    let log =
        std::fs::File::create(dir.join(format!("proxy-{name}.log"))).map_err(|e| e.to_string())?;
    let mut cmd = command(bin, wrapped);
    cmd.args(listen)
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
    // 20 s: a proxy under valgrind starts slowly.
    for _ in 0..800 {
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
        Target::Unix(p) => Ok(Conn::Unix(
            UnixStream::connect(p).map_err(|e| e.to_string())?,
        )),
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
    /// CPU time (user + system) of the proxy or nginx under test, and of this program (load
    /// generator and backend), during the run.
    cpu_server_ms: u64,
    cpu_bench_ms: u64,
    /// Context switches of the server's threads, and of this program's, during the run.
    switches_server: u64,
    switches_bench: u64,
}

impl LoadResult {
    fn rps(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    /// CPU µs per request: the server's, and the load generator's and backend's.
    fn cpu_us(&self) -> (f64, f64) {
        let n = self.count.max(1) as f64;
        (
            self.cpu_server_ms as f64 * 1000.0 / n,
            self.cpu_bench_ms as f64 * 1000.0 / n,
        )
    }
    /// Context switches per request: the server's, and the load generator's and backend's.
    fn switches(&self) -> (f64, f64) {
        let n = self.count.max(1) as f64;
        (
            self.switches_server as f64 / n,
            self.switches_bench as f64 / n,
        )
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
    load_with(t, cfg, conns, dur, reconnect, usize::MAX, &mut || {})
}

/// [`load`], each client stopping after `per_conn` requests (then `dur` is not waited for),
/// calling `at_end` when `dur` has passed, before the clients stop.
fn load_with(
    t: &Target,
    cfg: &Arc<ClientConfig>,
    conns: usize,
    dur: Duration,
    reconnect: bool,
    per_conn: usize,
    at_end: &mut dyn FnMut(),
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
            let mut lat = Vec::with_capacity(per_conn.min(1 << 16));
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) && lat.len() < per_conn {
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
    if per_conn == usize::MAX {
        std::thread::sleep(dur);
        at_end();
        stop.store(true, Ordering::SeqCst);
    }
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
        cpu_server_ms: 0,
        cpu_bench_ms: 0,
        switches_server: 0,
        switches_bench: 0,
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
        cpu_server_ms: 0,
        cpu_bench_ms: 0,
        switches_server: 0,
        switches_bench: 0,
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

/// These processes and their children (nginx's workers).
fn with_children(pids: &[u32]) -> Vec<u32> {
    let mut all: Vec<u32> = pids.to_vec();
    for &p in pids {
        let kids =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        all.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<u32>().ok()),
        );
    }
    all
}

/// Context switches (voluntary and not) of each live thread of these processes and their
/// children, by thread id: each voluntary one is a thread going to sleep, to be woken again.
fn switches(pids: &[u32]) -> std::collections::HashMap<String, u64> {
    let mut n = std::collections::HashMap::new();
    for p in with_children(pids) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let c = st
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
            n.insert(t.file_name().to_string_lossy().into_owned(), c);
        }
    }
    n
}

/// Switches between two samples of [`switches`]: threads in both by their difference, threads
/// born meanwhile in full (threads that ended meanwhile are not seen: sample before they end).
fn switches_between(
    a: &std::collections::HashMap<String, u64>,
    b: &std::collections::HashMap<String, u64>,
) -> u64 {
    b.iter()
        .map(|(t, n)| n.saturating_sub(a.get(t).copied().unwrap_or(0)))
        .sum()
}

/// Context switches of this whole program so far, ended threads included.
fn own_switches() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        (u.ru_nvcsw + u.ru_nivcsw) as u64
    }
}

/// CPU time (user + system, ms) of these processes and their children (nginx's workers).
fn cpu_ms(pids: &[u32]) -> u64 {
    proc_cpu_ms(&with_children(pids))
}

/// CPU time of this program: the load generator and the backend (not its child processes,
/// the servers under test).
fn own_cpu_ms() -> u64 {
    proc_cpu_ms(&[std::process::id()])
}

/// CPU time (user + system, ms) of these processes, each with all its threads.
fn proc_cpu_ms(pids: &[u32]) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let tick_ms = 1000 / (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64);
    pids.iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Fields after the command (which may hold spaces): state is field 3; utime 14, stime 15.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (t(11) + t(12)) * tick_ms
        })
        .sum()
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
