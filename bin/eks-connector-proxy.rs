//! eks-connector-proxy: the EKS console's Kubernetes API requests, from the SSM agent's unix
//! socket to the API server, impersonating the IAM identity the console names.

use std::process::ExitCode;
use std::time::Duration;

use eks_connector::cli::{self, Flag, Kind, Parsed, Program, MAX_DURATION};
use eks_connector::http::HeadLimits;
use eks_connector::proxy::{self, Config, Limits, ListenAddr, PoolConfig, Target};
use eks_connector::{keysync, signals};

const PROGRAM: &str = "eks-connector-proxy";

/// musl's malloc takes one process-wide lock; connection threads keep a few blocks of their own.
#[global_allocator]
static ALLOCATOR: eks_connector::alloc::ThreadCache = eks_connector::alloc::ThreadCache;

const TIMEOUT: Kind = Kind::Duration {
    min: Duration::from_millis(100),
    max: MAX_DURATION,
};
const fn count(min: u64, max: u64) -> Kind {
    Kind::Count { min, max }
}
const fn size(min: u64, max: u64) -> Kind {
    Kind::Size { min, max }
}

/// Every flag with its default: the proxy's configuration comes from here, not from
/// `Limits::default()`.
const FLAGS: &[Flag] = &[
    Flag::new("--proxy.socketType", "unix|tcp", Kind::OneOf(&["unix", "tcp"]), "listen on a unix socket or TCP").default("unix"),
    Flag::new("--proxy.socketAddr", "ADDR", Kind::Check(check_socket_addr), "socket path, or HOST:PORT for tcp").default("/var/eks/shared/connector.sock"),
    Flag::new("--proxy.targetHost", "HOST:PORT", Kind::Check(check_target), "the API server").default("kubernetes.default.svc:443"),
    Flag::new("--proxy.targetProtocol", "https|http", Kind::OneOf(&["https", "http"]), "protocol to the API server").default("https"),
    Flag::new("--shutdown.grace", "DURATION", Kind::Duration { min: Duration::ZERO, max: MAX_DURATION }, "time in-flight requests get after SIGTERM").default("20s"),
    Flag::new("--proxy.maxConnections", "N", count(1, 1_000_000), "concurrent client connections; more get 503").default("1024"),
    Flag::new("--proxy.maxRequestLine", "BYTES", size(256, 1 << 20), "longest request line; longer get 414").default("16384"),
    Flag::new("--proxy.maxHeaderBytes", "BYTES", size(1 << 10, 16 << 20), "largest header section; larger get 431").default("32768"),
    Flag::new("--proxy.maxHeaders", "N", count(1, 10_000), "most header lines; more get 431").default("100"),
    Flag::new("--proxy.headerTimeout", "DURATION", TIMEOUT, "time to send a whole request head").default("10s"),
    Flag::new("--proxy.idleTimeout", "DURATION", TIMEOUT, "idle time allowed between kept-alive requests").default("60s"),
    Flag::new("--proxy.ioTimeout", "DURATION", TIMEOUT, "longest stall of a client sending a body or reading a response").default("60s"),
    Flag::new("--proxy.threadStack", "BYTES", size(32 << 10, 64 << 20), "stack size of connection threads, e.g. 128K").default("128K"),
    Flag::new("--upstream.maxIdle", "N", count(0, 10_000), "idle API server connections kept for reuse").default("16"),
    Flag::new("--upstream.idleTimeout", "DURATION", TIMEOUT, "close idle API server connections after").default("60s"),
    Flag::new("--upstream.connectTimeout", "DURATION", TIMEOUT, "connect and TLS handshake timeout").default("10s"),
    Flag::new("--proxy.readOnly", "", Kind::Switch, "forward only reads (GET, HEAD, watches) and self-access reviews; 403 for the rest (default off)"),
];

const ABOUT: &str = "Proxies the EKS console's Kubernetes API requests with impersonation. \
When the SSM agent's Vault (--state.baseDir) is mounted here, it also copies every rotated key to \
the state Secret, as the original's server did (the original's pod layout).";

fn check_socket_addr(v: &str) -> Result<(), String> {
    if v.starts_with('/') {
        return cli::check_path(v);
    }
    cli::listen_addr(v)
        .map(|_| ())
        .map_err(|_| "must be an absolute socket path, or HOST:PORT for tcp".into())
}

fn check_target(v: &str) -> Result<(), String> {
    let bad_char = |c: char| !(c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    if v.len() > 260 || v.starts_with('-') || v.chars().any(bad_char) {
        return Err("must be HOST:PORT of at most 260 characters".into());
    }
    Target::parse(v, true).map(|_| ())
}

pub fn main() -> ExitCode {
    let program = Program {
        name: PROGRAM,
        about: ABOUT,
        flags: &[FLAGS, &cli::STATE_FLAGS, &[cli::HEALTH_FLAG]].concat(),
        trailing: None,
    };
    let p = cli::parse_or_exit(&program, std::env::args_os().skip(1).collect());
    cli::init_logging();
    let config = config(&p).unwrap_or_else(|e| cli::usage_exit(PROGRAM, e));
    // Before the key-sync thread exists, so that it inherits the blocked mask and SIGTERM
    // reaches the proxy's wait, not the default action.
    if let Err(e) = signals::block(&[signals::SIGTERM, signals::SIGINT]) {
        log::error!("cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let state = cli::StateFlags::from(&p);
    let sync = match keysync::start_if_mounted(
        std::path::Path::new(&state.base_dir),
        &state.secret_namespace,
        &state.secret_prefix,
        &config.sa_dir,
    ) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let beside = sync.as_ref().map(|s| proxy::Beside {
        ready: s.ready_check(),
        metrics: std::sync::Arc::new(|out: &mut String| {
            eks_connector::metrics::KEYSYNC.render(out)
        }),
    });
    let result = proxy::run_with(config, beside);
    if let Some(s) = sync {
        s.last_look(keysync::FINAL_LOOK);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The proxy's configuration from checked flags (every one has a default).
fn config(p: &Parsed) -> Result<Config, cli::UsageError> {
    let text = |n: &str| p.text(n).unwrap_or_default();
    let dur = |n: &str| p.duration(n).unwrap_or_default();
    let num = |n: &str| p.number(n).unwrap_or_default() as usize;
    let addr = text("--proxy.socketAddr");
    let listen = match (text("--proxy.socketType").as_str(), addr.starts_with('/')) {
        ("tcp", false) => ListenAddr::Tcp(cli::listen_addr(&addr).unwrap_or(addr)),
        ("unix", true) => ListenAddr::Unix(addr.into()),
        (t, _) => {
            return Err(cli::UsageError {
                message: format!("--proxy.socketType={t} does not match --proxy.socketAddr (a path for unix, HOST:PORT for tcp)"),
                usage: format!("{PROGRAM} --proxy.socketAddr ADDR"),
            })
        }
    };
    let tls = text("--proxy.targetProtocol") == "https";
    let target =
        Target::parse(&text("--proxy.targetHost"), tls).map_err(|message| cli::UsageError {
            message,
            usage: format!("{PROGRAM} --proxy.targetHost HOST:PORT"),
        })?;
    let defaults = Limits::default();
    let limits = Limits {
        max_connections: num("--proxy.maxConnections"),
        head: HeadLimits {
            max_line: num("--proxy.maxRequestLine"),
            max_header_bytes: num("--proxy.maxHeaderBytes"),
            max_headers: num("--proxy.maxHeaders"),
        },
        header_timeout: dur("--proxy.headerTimeout"),
        idle_timeout: dur("--proxy.idleTimeout"),
        io_timeout: dur("--proxy.ioTimeout"),
        thread_stack: num("--proxy.threadStack"),
        // Not a flag: the API server's heads are trusted to fit these.
        upstream_head: defaults.upstream_head,
    };
    let pool = PoolConfig {
        max_idle: num("--upstream.maxIdle"),
        idle_timeout: dur("--upstream.idleTimeout"),
        connect_timeout: dur("--upstream.connectTimeout"),
        io_timeout: limits.io_timeout,
    };
    Ok(Config {
        listen,
        target,
        sa_dir: text("--serviceaccount.dir").into(),
        limits,
        pool,
        health_addr: p.text(cli::HEALTH_FLAG.name),
        shutdown_grace: dur("--shutdown.grace"),
        read_only: p.switch("--proxy.readOnly"),
    })
}
