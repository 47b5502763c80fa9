//! eks-connector-proxy: the EKS console's Kubernetes API requests, from the SSM agent's unix
//! socket to the API server, impersonating the IAM identity the console names.

use std::process::ExitCode;

use eks_connector::cli::{self, Flags, Start, UsageError};
use eks_connector::kube::DEFAULT_SERVICEACCOUNT_DIR;
use eks_connector::proxy::{self, Config, Limits, ListenAddr, PoolConfig, Target};

const FLAGS: &[(&str, &str)] = &[
    (
        "--proxy.socketType unix|tcp",
        "listen on a unix socket (default) or TCP",
    ),
    (
        "--proxy.socketAddr ADDR",
        "socket path, or HOST:PORT for tcp (default /var/eks/shared/connector.sock)",
    ),
    (
        "--proxy.targetHost HOST:PORT",
        "the API server (default kubernetes.default.svc:443)",
    ),
    (
        "--proxy.targetProtocol https|http",
        "protocol to the API server (default https)",
    ),
    (
        "--serviceaccount.dir DIR",
        "token and ca.crt (default /var/run/secrets/kubernetes.io/serviceaccount)",
    ),
    (
        "--health.addr HOST:PORT",
        "serve /healthz and /readyz (default off)",
    ),
    (
        "--shutdown.grace DURATION",
        "time in-flight requests get after SIGTERM (default 20s)",
    ),
    (
        "--proxy.maxConnections N",
        "concurrent client connections; more get 503 (default 1024)",
    ),
    (
        "--proxy.maxRequestLine BYTES",
        "longest request line; longer get 414 (default 16384)",
    ),
    (
        "--proxy.maxHeaderBytes BYTES",
        "largest header section; larger get 431 (default 32768)",
    ),
    (
        "--proxy.maxHeaders N",
        "most header lines; more get 431 (default 100)",
    ),
    (
        "--proxy.headerTimeout DURATION",
        "time to send a whole request head (default 10s)",
    ),
    (
        "--proxy.idleTimeout DURATION",
        "idle time allowed between kept-alive requests (default 60s)",
    ),
    (
        "--proxy.ioTimeout DURATION",
        "longest stall of a client sending a body or reading a response (default 60s)",
    ),
    (
        "--proxy.threadStack BYTES",
        "stack size of connection threads, e.g. 128K (default 128K)",
    ),
    (
        "--upstream.maxIdle N",
        "idle API server connections kept for reuse (default 16)",
    ),
    (
        "--upstream.idleTimeout DURATION",
        "close idle API server connections after (default 60s)",
    ),
    (
        "--upstream.connectTimeout DURATION",
        "connect and TLS handshake timeout (default 10s)",
    ),
    (
        "--proxy.readOnly",
        "forward only reads (GET, HEAD, watches) and self-access reviews; 403 for the rest (default off)",
    ),
    (
        "--state.baseDir DIR",
        "accepted for compatibility with the original; unused by the proxy",
    ),
    (
        "--state.secretNamePrefix NAME",
        "accepted for compatibility with the original; unused by the proxy",
    ),
    (
        "--state.secretNamespace NAME",
        "accepted for compatibility with the original; unused by the proxy",
    ),
];

pub fn main() -> ExitCode {
    let mut flags = match Flags::from_args(
        "eks-connector-proxy",
        "Proxies the EKS console's Kubernetes API requests with impersonation.",
        FLAGS,
        std::env::args_os().skip(1).collect(),
    ) {
        Start::Run(f) => f,
        Start::Print(text) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
    };
    cli::init_logging();
    let config = match parse(&mut flags).and_then(|c| flags.finish().map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("eks-connector-proxy: {e}");
            return ExitCode::from(cli::EXIT_USAGE as u8);
        }
    };
    match proxy::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(flag: &str, message: String) -> UsageError {
    let line = FLAGS
        .iter()
        .find(|(f, _)| f.split(' ').next() == Some(flag))
        .map(|(f, h)| format!("eks-connector-proxy {f}  ({h})"))
        .unwrap_or_else(|| "eks-connector-proxy --help".into());
    UsageError {
        message,
        usage: line,
    }
}

fn parse(flags: &mut Flags) -> Result<Config, UsageError> {
    let socket_type = flags
        .string("--proxy.socketType")?
        .unwrap_or_else(|| "unix".into());
    let socket_addr = flags.string("--proxy.socketAddr")?;
    let listen = match socket_type.as_str() {
        "unix" => ListenAddr::Unix(
            socket_addr
                .unwrap_or_else(|| "/var/eks/shared/connector.sock".into())
                .into(),
        ),
        "tcp" => match socket_addr {
            Some(a) if a.contains(':') && !a.starts_with('/') => ListenAddr::Tcp(a),
            _ => return Err(usage(
                "--proxy.socketAddr",
                "--proxy.socketType=tcp needs --proxy.socketAddr HOST:PORT, e.g. 127.0.0.1:8080"
                    .into(),
            )),
        },
        other => {
            return Err(usage(
                "--proxy.socketType",
                format!("--proxy.socketType={other:?}: must be unix or tcp"),
            ))
        }
    };
    let tls = match flags
        .string("--proxy.targetProtocol")?
        .as_deref()
        .unwrap_or("https")
    {
        "https" => true,
        "http" => false,
        other => {
            return Err(usage(
                "--proxy.targetProtocol",
                format!("--proxy.targetProtocol={other:?}: must be https or http"),
            ))
        }
    };
    let target_host = flags
        .string("--proxy.targetHost")?
        .unwrap_or_else(|| "kubernetes.default.svc:443".into());
    let target = Target::parse(&target_host, tls).map_err(|e| usage("--proxy.targetHost", e))?;
    let sa_dir = flags
        .string("--serviceaccount.dir")?
        .unwrap_or_else(|| DEFAULT_SERVICEACCOUNT_DIR.into());

    let mut limits = Limits::default();
    let mut pool = PoolConfig::default();
    if let Some(n) = flags.parse::<usize>("--proxy.maxConnections")? {
        if n == 0 {
            return Err(usage(
                "--proxy.maxConnections",
                "--proxy.maxConnections must be at least 1".into(),
            ));
        }
        limits.max_connections = n;
    }
    if let Some(n) = size(flags, "--proxy.maxRequestLine")? {
        limits.head.max_line = n;
    }
    if let Some(n) = size(flags, "--proxy.maxHeaderBytes")? {
        limits.head.max_header_bytes = n;
    }
    if let Some(n) = flags.parse::<usize>("--proxy.maxHeaders")? {
        limits.head.max_headers = n;
    }
    if let Some(d) = flags.duration("--proxy.headerTimeout")? {
        limits.header_timeout = d;
    }
    if let Some(d) = flags.duration("--proxy.idleTimeout")? {
        limits.idle_timeout = d;
    }
    if let Some(d) = flags.duration("--proxy.ioTimeout")? {
        limits.io_timeout = d;
        pool.io_timeout = d;
    }
    if let Some(n) = size(flags, "--proxy.threadStack")? {
        if n < 32 << 10 {
            return Err(usage(
                "--proxy.threadStack",
                "--proxy.threadStack must be at least 32K".into(),
            ));
        }
        limits.thread_stack = n;
    }
    if let Some(n) = flags.parse::<usize>("--upstream.maxIdle")? {
        pool.max_idle = n;
    }
    if let Some(d) = flags.duration("--upstream.idleTimeout")? {
        pool.idle_timeout = d;
    }
    if let Some(d) = flags.duration("--upstream.connectTimeout")? {
        pool.connect_timeout = d;
    }
    let read_only = flags.switch("--proxy.readOnly");
    let health_addr = flags.string("--health.addr")?;
    let shutdown_grace = flags
        .duration("--shutdown.grace")?
        .unwrap_or(std::time::Duration::from_secs(20));
    for state_flag in [
        "--state.baseDir",
        "--state.secretNamePrefix",
        "--state.secretNamespace",
    ] {
        if let Some(v) = flags.string(state_flag)? {
            log::info!("{state_flag}={v} is accepted for compatibility with the original connector and ignored: the proxy keeps no state");
        }
    }
    Ok(Config {
        listen,
        target,
        sa_dir: sa_dir.into(),
        limits,
        pool,
        health_addr,
        shutdown_grace,
        read_only,
    })
}

/// A byte size: `131072`, `128K`, `1M`.
fn size(flags: &mut Flags, name: &'static str) -> Result<Option<usize>, UsageError> {
    let Some(v) = flags.string(name)? else {
        return Ok(None);
    };
    let (num, mult) = match v.strip_suffix(['K', 'k']) {
        Some(n) => (n, 1usize << 10),
        None => match v.strip_suffix(['M', 'm']) {
            Some(n) => (n, 1 << 20),
            None => (v.as_str(), 1),
        },
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .map(Some)
        .ok_or_else(|| {
            usage(
                name,
                format!("{name}={v:?} is not a size like 65536, 64K or 1M"),
            )
        })
}
