//! The API server side: a hand-written HTTP/1.1 client over rustls trusting only the cluster CA,
//! with a bounded pool of kept-alive connections.
//!
//! Connections are checked out for exactly one request and checked back in only when the
//! response was read to its end and the server did not ask to close. The pool keeps at most
//! `max_idle` idle connections (LIFO, each closed after `idle_timeout`), so the number of open
//! upstream connections never exceeds the requests in flight plus `max_idle`.
//!
//! The token and the CA are [`WatchedFile`]s: re-read when the files change (projected tokens
//! rotate), never per request. Connections made with an older CA are not reused.

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::watched_file::WatchedFile;

/// Where the API server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As given: `host:port`, the `Host` header we send.
    pub authority: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Target {
    /// From `--proxy.targetHost` (`host:port`, `host`, `[v6]:port`) and the protocol.
    pub fn parse(host_port: &str, tls: bool) -> Result<Target, String> {
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{host_port:?}: missing ] after an IPv6 address"))?;
            match after.strip_prefix(':') {
                Some(p) => (h.to_string(), p.to_string()),
                None if after.is_empty() => (h.to_string(), default_port.to_string()),
                None => return Err(format!("{host_port:?} is not host:port")),
            }
        } else {
            match host_port.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), p.to_string()),
                Some(_) => {
                    return Err(format!(
                        "{host_port:?}: put IPv6 addresses in brackets, e.g. [fd00::1]:443"
                    ))
                }
                None => (host_port.to_string(), default_port.to_string()),
            }
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err(format!("{host_port:?}: invalid host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{host_port:?}: invalid port {port:?}"))?;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Target {
            authority,
            host,
            port,
            tls,
        })
    }
}

/// Pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for a write to (or a partial record from) the API server.
    pub io_timeout: Duration,
}

/// Why the API server could not be reached. Always answered with the original's 502 body; the
/// message goes to the log.
#[derive(Debug)]
pub enum UpstreamError {
    Credentials(String),
    Connect(String),
    Tls(String),
    Io(io::Error),
    BadResponse(&'static str),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Credentials(m) => write!(f, "{m}"),
            UpstreamError::Connect(m) => write!(f, "cannot connect to the API server: {m}"),
            UpstreamError::Tls(m) => write!(f, "TLS with the API server failed: {m}"),
            UpstreamError::Io(e) => write!(f, "API server connection failed: {e}"),
            UpstreamError::BadResponse(w) => write!(f, "bad response from the API server: {w}"),
        }
    }
}

/// The transport under one upstream connection.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref(),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }

    /// Decrypted bytes rustls holds that a read would return without touching the socket.
    pub fn pending(&mut self) -> usize {
        match self {
            Io::Plain(_) => 0,
            Io::Tls(s) => match s.conn.process_new_packets() {
                Ok(state) => state.plaintext_bytes_to_read(),
                // Let the next read report the error.
                Err(_) => 1,
            },
        }
    }
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(s) => match s.read(buf) {
                // The API server closing without close_notify after a complete message is normal
                // for "until close" bodies; body framing catches truncation elsewhere.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(buf),
            Io::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.flush(),
            Io::Tls(s) => s.flush(),
        }
    }
}

/// Buffer for reading responses. Small: a watch holds one per open stream.
const READ_BUF: usize = 8 << 10;

/// One checked-out connection.
pub struct Conn {
    pub io: BufReader<Io>,
    /// Taken from the idle pool (it may have been closed by the server meanwhile).
    pub reused: bool,
    ca_generation: u64,
    idle_since: Instant,
    open: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

struct TlsCache {
    generation: u64,
    config: Arc<ClientConfig>,
}

/// The API server, its credentials and the connection pool.
pub struct Upstream {
    pub target: Target,
    config: PoolConfig,
    server_name: Option<ServerName<'static>>,
    token: WatchedFile,
    ca: WatchedFile,
    tls: Mutex<Option<TlsCache>>,
    idle: Mutex<Vec<Conn>>,
    open: Arc<AtomicUsize>,
}

/// How often the token and CA files are checked for changes.
const FILE_RECHECK: Duration = Duration::from_secs(1);

impl Upstream {
    pub fn new(target: Target, sa_dir: &Path, config: PoolConfig) -> Result<Upstream, String> {
        let server_name = if target.tls {
            Some(crate::tls::server_name(&target.host).map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok(Upstream {
            target,
            config,
            server_name,
            token: WatchedFile::new(sa_dir.join("token"), FILE_RECHECK, 64 << 10),
            ca: WatchedFile::new(sa_dir.join("ca.crt"), FILE_RECHECK, 1 << 20),
            tls: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            open: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Upstream connections open right now (checked out or idle).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The current token, checked to be safe in a header line.
    pub fn token(&self) -> Result<Arc<Vec<u8>>, UpstreamError> {
        let (bytes, _) = self.token.get().map_err(|e| {
            UpstreamError::Credentials(format!(
                "cannot read the service-account token {}: {e}",
                self.token.path().display()
            ))
        })?;
        let trimmed = bytes.trim_ascii();
        if !super::policy::valid_token(trimmed) {
            return Err(UpstreamError::Credentials(format!(
                "the service-account token {} holds bytes that cannot be sent in a header",
                self.token.path().display()
            )));
        }
        if trimmed.len() == bytes.len() {
            Ok(bytes)
        } else {
            Ok(Arc::new(trimmed.to_vec()))
        }
    }

    fn tls_config(&self) -> Result<(Arc<ClientConfig>, u64), UpstreamError> {
        let (pem, generation) = self.ca.get().map_err(|e| {
            UpstreamError::Credentials(format!(
                "cannot read the cluster CA {}: {e}",
                self.ca.path().display()
            ))
        })?;
        let mut guard = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.as_ref() {
            if c.generation == generation {
                return Ok((c.config.clone(), generation));
            }
        }
        let certs = crate::tls::parse_pem_certs(&pem).map_err(|d| {
            UpstreamError::Credentials(format!("cluster CA {}: {d}", self.ca.path().display()))
        })?;
        let roots = crate::tls::root_store(&certs).map_err(|d| {
            UpstreamError::Credentials(format!("cluster CA {}: {d}", self.ca.path().display()))
        })?;
        let config = crate::tls::client_config(roots, &[b"http/1.1"])
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        *guard = Some(TlsCache {
            generation,
            config: config.clone(),
        });
        Ok((config, generation))
    }

    /// A connection for one request: a live idle one, or a new one.
    pub fn checkout(&self) -> Result<Conn, UpstreamError> {
        let generation = if self.target.tls {
            Some(self.tls_config()?)
        } else {
            None
        };
        let current_gen = generation.as_ref().map(|g| g.1).unwrap_or(0);
        loop {
            let candidate = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut conn) = candidate else { break };
            if conn.ca_generation != current_gen
                || conn.idle_since.elapsed() >= self.config.idle_timeout
            {
                continue;
            }
            if conn.io.buffer().is_empty() && is_quiet(conn.io.get_ref().raw_fd()) {
                conn.reused = true;
                return Ok(conn);
            }
        }
        self.connect(generation)
    }

    /// A fresh connection, bypassing the pool (for a retry after a stale pooled one).
    pub fn connect_new(&self) -> Result<Conn, UpstreamError> {
        let generation = if self.target.tls {
            Some(self.tls_config()?)
        } else {
            None
        };
        self.connect(generation)
    }

    fn connect(&self, tls: Option<(Arc<ClientConfig>, u64)>) -> Result<Conn, UpstreamError> {
        let addrs = (self.target.host.as_str(), self.target.port)
            .to_socket_addrs()
            .map_err(|e| UpstreamError::Connect(format!("{}: {e}", self.target.authority)))?;
        let mut last = None;
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.config.connect_timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(format!("{a}: {e}")),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            UpstreamError::Connect(
                last.unwrap_or_else(|| format!("{}: no address", self.target.authority)),
            )
        })?;
        let _ = tcp.set_nodelay(true);
        tcp.set_write_timeout(Some(self.config.io_timeout))
            .map_err(UpstreamError::Io)?;
        let (io, ca_generation) = match tls {
            None => (Io::Plain(tcp), 0),
            Some((config, generation)) => {
                let name = self
                    .server_name
                    .clone()
                    .ok_or_else(|| UpstreamError::Tls("no server name".into()))?;
                let mut conn = ClientConnection::new(config, name)
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                let mut tcp = tcp;
                tcp.set_read_timeout(Some(self.config.connect_timeout))
                    .map_err(UpstreamError::Io)?;
                while conn.is_handshaking() {
                    conn.complete_io(&mut tcp)
                        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                }
                (Io::Tls(Box::new(StreamOwned::new(conn, tcp))), generation)
            }
        };
        io.tcp()
            .set_read_timeout(Some(self.config.io_timeout))
            .map_err(UpstreamError::Io)?;
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(Conn {
            io: BufReader::with_capacity(READ_BUF, io),
            reused: false,
            ca_generation,
            idle_since: Instant::now(),
            open: self.open.clone(),
        })
    }

    /// Returns a connection whose response was read completely and which may be reused.
    pub fn checkin(&self, mut conn: Conn) {
        if !conn.io.buffer().is_empty() || conn.io.get_mut().pending() > 0 {
            return; // unexpected extra bytes: not reusable
        }
        conn.idle_since = Instant::now();
        conn.reused = false;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Drop expired connections while we are here.
        let timeout = self.config.idle_timeout;
        idle.retain(|c| c.idle_since.elapsed() < timeout);
        if idle.len() < self.config.max_idle {
            idle.push(conn);
        }
    }

    /// Closes idle connections past their timeout (called periodically).
    pub fn reap_idle(&self) {
        let timeout = self.config.idle_timeout;
        let expired: Vec<Conn> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let (keep, expired) = idle
                .drain(..)
                .partition(|c| c.idle_since.elapsed() < timeout);
            *idle = keep;
            expired
        };
        drop(expired);
    }

    /// Closes every idle connection (at shutdown).
    pub fn close_idle(&self) {
        let all: Vec<Conn> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        drop(all);
    }
}

/// Whether an idle socket has nothing to say: no data, no EOF, no error. A pooled connection the
/// server has closed (or sent anything on) is not reused.
fn is_quiet(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_the_original_flag() {
        let t = Target::parse("kubernetes.default.svc:443", true).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("kubernetes.default.svc", 443, "kubernetes.default.svc:443")
        );
        let t = Target::parse("[fd00::1]:6443", true).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("fd00::1", 6443, "[fd00::1]:6443")
        );
        assert_eq!(Target::parse("10.0.0.1", false).unwrap().port, 80);
        assert!(Target::parse("fd00::1", true).is_err());
        assert!(Target::parse("host:port", true).is_err());
        assert!(Target::parse("a b:1", true).is_err());
        assert!(Target::parse(":443", true).is_err());
    }

    #[test]
    fn pool_reuses_and_bounds_idle_connections() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc2 = accepted.clone();
        std::thread::spawn(move || {
            let mut keep = Vec::new();
            for s in server.incoming() {
                acc2.fetch_add(1, Ordering::SeqCst);
                keep.push(s.unwrap());
            }
        });
        let dir = std::env::temp_dir().join(format!("pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "tok\n").unwrap();
        let up = Upstream::new(
            Target::parse(&format!("127.0.0.1:{port}"), false).unwrap(),
            &dir,
            PoolConfig {
                max_idle: 2,
                idle_timeout: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(5),
                io_timeout: Duration::from_secs(5),
            },
        )
        .unwrap();
        assert_eq!(&**up.token().unwrap(), b"tok");
        let conns: Vec<Conn> = (0..4).map(|_| up.checkout().unwrap()).collect();
        assert_eq!(up.open_connections(), 4);
        for c in conns {
            up.checkin(c);
        }
        // Only max_idle stay open.
        assert_eq!(up.open_connections(), 2);
        let c = up.checkout().unwrap();
        assert!(c.reused);
        assert_eq!(up.open_connections(), 2);
        drop(c);
        assert_eq!(up.open_connections(), 1);
        up.close_idle();
        assert_eq!(up.open_connections(), 0);
        // The server saw exactly the four connections (the reuse made none).
        let deadline = Instant::now() + Duration::from_secs(5);
        while accepted.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_with_control_bytes_are_refused() {
        assert!(!super::super::policy::valid_token(
            b"a\r\nImpersonate-Group: x"
        ));
        assert!(!super::super::policy::valid_token(b""));
        assert!(super::super::policy::valid_token(b"eyJhbGciOi.x-y_z"));
    }
}
