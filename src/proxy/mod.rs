//! The API proxy: the security boundary of the product. Whoever can talk to it acts in the
//! cluster as the identity it forwards, so it fails closed.
//!
//! Threads: `main` waits for SIGTERM/SIGINT; one acceptor thread; one small-stack thread per
//! client connection (capped: over the cap a client gets 503 with `Retry-After`); one reaper
//! closing idle upstream connections; the optional health server. Concerns, one module each:
//! [`http`] (strict parsing and framing), [`policy`] (identity and headers), [`upstream`] (TLS
//! client and pool), `listener`, `handler` (one connection) and `audit`.

mod audit;
mod handler;
mod stack;

pub mod listener;
pub mod policy;
pub mod upstream;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::health::ReadyCheck;
use crate::metrics::Render;
pub use listener::ListenAddr;
pub use upstream::{PoolConfig, Target};

use crate::http::{self, HeadLimits};
use listener::{Listener, Stream};
use upstream::Upstream;

/// Limits against bad or slow clients. Defaults fit a 64 MiB memory limit with every
/// connection slot in use by an idle watch (measured: see bench/RESULTS.md).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Concurrent client connections; more get 503 with `Retry-After`.
    pub max_connections: usize,
    /// Request line, header section and header count limits (414, 431).
    pub head: HeadLimits,
    /// Limits for the API server's response heads.
    pub upstream_head: HeadLimits,
    /// Time from a request's first byte to the end of its head (slowloris).
    pub header_timeout: Duration,
    /// How long a kept-alive client connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Longest wait for a client to send more body or take more response bytes.
    pub io_timeout: Duration,
    /// Stack size of connection threads.
    pub thread_stack: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            head: HeadLimits {
                max_line: 16 << 10,
                max_header_bytes: 32 << 10,
                max_headers: 100,
            },
            upstream_head: HeadLimits {
                max_line: 8 << 10,
                max_header_bytes: 64 << 10,
                max_headers: 200,
            },
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(60),
            thread_stack: 128 << 10,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle: 16,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
        }
    }
}

/// Everything the proxy needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenAddr,
    pub target: Target,
    /// Holds `token` and `ca.crt`.
    pub sa_dir: PathBuf,
    pub limits: Limits,
    pub pool: PoolConfig,
    /// `HOST:PORT` for `/healthz` and `/readyz`, off when `None`.
    pub health_addr: Option<String>,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// Forward only reads and self-access reviews (`--proxy.readOnly`).
    pub read_only: bool,
}

/// Why the proxy could not start (it stops cleanly on signals: that is not an error).
#[derive(Debug)]
pub enum ProxyError {
    Listen(listener::ListenError),
    Config(String),
    Health {
        addr: String,
        source: std::io::Error,
    },
    Signals(std::io::Error),
    Thread(std::io::Error),
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Listen(e) => write!(f, "{e}"),
            ProxyError::Config(m) => write!(f, "{m}"),
            ProxyError::Health { addr, source } => {
                write!(
                    f,
                    "cannot serve health checks on {addr}: {source}; check --health.addr"
                )
            }
            ProxyError::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
            ProxyError::Thread(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// State shared by every thread.
pub(crate) struct Shared {
    upstream: Upstream,
    limits: Limits,
    /// Client connections open now.
    active: AtomicUsize,
    /// Connections being turned away with a 503 now.
    rejecting: AtomicUsize,
    /// Requests being answered now.
    in_flight: AtomicUsize,
    stopping: AtomicBool,
    read_only: bool,
}

/// At most this many over-the-cap clients are answered 503 at once; beyond, they are dropped.
const MAX_REJECTING: usize = 32;

/// Runs the proxy until SIGTERM or SIGINT, then stops gracefully. Call from `main` before any
/// other thread is started (signals are blocked here and inherited by every thread).
pub fn run(config: Config) -> Result<(), ProxyError> {
    run_with(config, None)
}

/// A job this process runs beside the proxy (the key sync, [`crate::keysync::start_if_mounted`]):
/// part of `/readyz` (not ready while it says why not) and of `/metrics`.
pub struct Beside {
    pub ready: ReadyCheck,
    pub metrics: Render,
}

/// [`run`], with a job [`Beside`] the proxy.
pub fn run_with(config: Config, beside: Option<Beside>) -> Result<(), ProxyError> {
    let blocked = crate::signals::block(&[crate::signals::SIGTERM, crate::signals::SIGINT])
        .map_err(ProxyError::Signals)?;
    raise_fd_limit();
    let upstream = Upstream::new(config.target.clone(), &config.sa_dir, config.pool)
        .map_err(ProxyError::Config)?;
    if let Err(e) = upstream.current_credentials().token() {
        log::warn!("{e}; requests will fail with 502 until it is readable");
    }
    let listener = Arc::new(Listener::bind(&config.listen).map_err(ProxyError::Listen)?);
    let scheme = if config.target.tls { "https" } else { "http" };
    log::info!(
        "eks-connector-proxy {} listening on {} for {scheme}://{} (max {} connections, {} idle upstream)",
        crate::VERSION,
        listener.local_addr(),
        config.target.authority,
        config.limits.max_connections,
        config.pool.max_idle
    );
    let shared = Arc::new(Shared {
        upstream,
        limits: config.limits,
        active: AtomicUsize::new(0),
        rejecting: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        read_only: config.read_only,
    });
    if let Some(addr) = &config.health_addr {
        serve_health(addr, &shared, &listener, beside)?;
    }
    let acceptor = start_threads(&shared, &listener)?;
    let signal = loop {
        match blocked.wait(None) {
            Ok(Some(a)) => break a.signal,
            Ok(None) => continue,
            Err(e) => return Err(ProxyError::Signals(e)),
        }
    };
    log::info!(
        "{} received: no longer accepting; waiting up to {:?} for {} request(s) in flight",
        crate::signals::name(signal),
        config.shutdown_grace,
        shared.in_flight.load(Ordering::SeqCst)
    );
    shared.stopping.store(true, Ordering::SeqCst);
    listener.remove_file();
    listener.stop();
    let _ = acceptor.join();
    drain(&shared, &blocked, config.shutdown_grace);
    shared.upstream.close_idle();
    drop(listener);
    log::info!("stopped");
    Ok(())
}

fn serve_health(
    addr: &str,
    shared: &Arc<Shared>,
    listener: &Arc<Listener>,
    beside: Option<Beside>,
) -> Result<(), ProxyError> {
    let (s, l) = (shared.clone(), listener.clone());
    let m = shared.clone();
    let (also_ready, also_metrics) = beside.map(|b| (b.ready, b.metrics)).unzip();
    let metrics = Arc::new(move |out: &mut String| {
        let gauges = crate::metrics::ProxyGauges {
            in_flight: m.in_flight.load(Ordering::Relaxed),
            upstream_open: m.upstream.open_connections(),
            upstream_idle: m.upstream.idle_connections(),
        };
        crate::metrics::PROXY.render(out, &gauges);
        if let Some(render) = &also_metrics {
            render(out);
        }
    });
    let check = move || {
        ready(&s, &l)?;
        also_ready.as_ref().map_or(Ok(()), |c| c())
    };
    let bound = crate::health::serve(addr, Arc::new(check), metrics).map_err(|source| {
        ProxyError::Health {
            addr: addr.to_string(),
            source,
        }
    })?;
    log::info!("health checks on http://{bound}/healthz and /readyz, metrics on /metrics");
    Ok(())
}

/// The acceptor (returned, to be joined at shutdown) and the housekeeping thread.
fn start_threads(
    shared: &Arc<Shared>,
    listener: &Arc<Listener>,
) -> Result<std::thread::JoinHandle<()>, ProxyError> {
    let acceptor = {
        let (s, l) = (shared.clone(), listener.clone());
        std::thread::Builder::new()
            .name("accept".into())
            .stack_size(64 << 10)
            .spawn(move || accept_loop(&s, &l))
            .map_err(ProxyError::Thread)?
    };
    let s = shared.clone();
    std::thread::Builder::new()
        .name("reaper".into())
        .stack_size(64 << 10)
        .spawn(move || {
            // Credentials: a stat of two files twice a second; idle connections: every 5 s.
            for tick in 1u64.. {
                std::thread::sleep(Duration::from_millis(500));
                if s.upstream.refresh_credentials() {
                    crate::metrics::PROXY.credential_reloads.inc();
                }
                if tick % 10 == 0 {
                    s.upstream.reap_idle();
                }
            }
        })
        .map_err(ProxyError::Thread)?;
    Ok(acceptor)
}

/// Waits up to `grace` for the requests in flight; a second signal cuts the wait short.
fn drain(shared: &Shared, blocked: &crate::signals::Blocked, grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        let left = shared.in_flight.load(Ordering::SeqCst);
        if left == 0 {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            log::warn!("{left} request(s) still running after {grace:?}; ending them");
            return;
        }
        if let Ok(Some(a)) = blocked.wait(Some((deadline - now).min(Duration::from_millis(50)))) {
            log::warn!(
                "{} received again: ending {left} request(s) now",
                crate::signals::name(a.signal)
            );
            return;
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &Listener) {
    loop {
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                // Out of descriptors or memory: back off briefly rather than spin.
                log::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.limits.max_connections {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            crate::metrics::PROXY.refused(crate::metrics::RefusalReason::Limits);
            reject(shared, stream);
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(shared.limits.thread_stack)
            .spawn(move || {
                handler::serve(&s, stream);
                s.active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            log::warn!("cannot start a connection thread: {e}");
        }
    }
}

/// Answers a client over the connection cap with 503 and `Retry-After`, from a short-lived
/// thread of its own (bounded too), reading its request first so the answer is not lost to a
/// reset.
fn reject(shared: &Arc<Shared>, stream: Stream) {
    if shared.rejecting.fetch_add(1, Ordering::SeqCst) >= MAX_REJECTING {
        shared.rejecting.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    log::warn!(
        "connection limit of {} reached: answering 503",
        shared.limits.max_connections
    );
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || {
            let _ = http::Timed::set_timeout(&stream, Some(Duration::from_secs(1)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 1024];
            let _ = (&stream).read(&mut buf);
            let body = policy::status_body(
                503,
                "eks-connector-proxy is at its connection limit; retry shortly",
            );
            let _ = (&stream).write_all(&policy::simple_response(
                503,
                &body,
                true,
                &[("Retry-After", "1")],
            ));
            stream.linger_close();
            s.rejecting.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        shared.rejecting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `/readyz`: the socket is listening and the API server answers its `/readyz` to our token.
fn ready(shared: &Shared, listener: &Listener) -> Result<(), String> {
    if shared.stopping.load(Ordering::SeqCst) {
        return Err("shutting down".into());
    }
    if !listener.is_listening() {
        return Err(format!("{} is gone", listener.local_addr()));
    }
    match shared.upstream.get("/readyz", &shared.limits.upstream_head) {
        Ok(200) => Ok(()),
        Ok(code) => Err(format!("the API server answered /readyz with {code}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Thousands of watches need thousands of descriptors: raise the soft limit to the hard one.
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
