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

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::http::{self, Buffered, HeadLimits, HeadReader};
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
    /// The connection closed before a byte of the answer: a kept connection the server had
    /// timed out, usually.
    ClosedEarly,
    BadResponse(&'static str),
}

impl UpstreamError {
    /// The request certainly did not reach the API server's handler: the connection was closed
    /// or reset under us before any answer. (A request that timed out may still be running.)
    pub fn never_answered(&self) -> bool {
        match self {
            UpstreamError::ClosedEarly => true,
            UpstreamError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Credentials(m) => write!(f, "{m}"),
            UpstreamError::Connect(m) => write!(f, "cannot connect to the API server: {m}"),
            UpstreamError::Tls(m) => write!(f, "TLS with the API server failed: {m}"),
            UpstreamError::Io(e) => write!(f, "API server connection failed: {e}"),
            UpstreamError::ClosedEarly => {
                write!(f, "the API server closed the connection before answering")
            }
            UpstreamError::BadResponse(w) => write!(f, "bad response from the API server: {w}"),
        }
    }
}

/// The transport under one upstream connection.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, Readahead>>),
}

/// The socket under a TLS connection, read in large pieces: rustls asks for 4 KiB at a time,
/// so a 4 KiB answer in one TLS record would take two `recv`s; this takes one, and rustls is
/// served from memory. The buffer is given back while the connection is quiet.
pub struct Readahead {
    sock: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

/// What one `recv` may bring: a whole TLS record (16 KiB of data and its overhead).
const READAHEAD: usize = 17 << 10;

impl Readahead {
    fn new(sock: TcpStream) -> Readahead {
        Readahead {
            sock,
            buf: Vec::new(),
            pos: 0,
            end: 0,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.pos
    }

    fn release(&mut self) {
        if self.pos == self.end {
            self.buf = Vec::new();
            self.pos = 0;
            self.end = 0;
        }
    }
}

impl Read for Readahead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end {
            if self.buf.is_empty() {
                self.buf = vec![0; READAHEAD];
            }
            self.pos = 0;
            self.end = self.sock.read(&mut self.buf)?;
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Readahead {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.sock.write(b)
    }
    fn write_vectored(&mut self, b: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.sock.write_vectored(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => &s.get_ref().sock,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }

    /// Whether an idle connection has nothing to say: no data, no EOF, no error. TLS records
    /// that carry no data (a TLS 1.3 session ticket arriving after the handshake) are taken in
    /// without blocking; anything that would reach a reader — data, a close — is not quiet.
    pub fn is_quiet(&mut self) -> bool {
        for _ in 0..4 {
            if self.pending() > 0 {
                return false;
            }
            if is_quiet(self.raw_fd()) {
                return true;
            }
            let Io::Tls(s) = self else { return false };
            if s.sock.sock.set_nonblocking(true).is_err() {
                return false;
            }
            let read = s.conn.read_tls(&mut s.sock);
            let _ = s.sock.sock.set_nonblocking(false);
            match read {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Decrypted bytes a read would return without waiting for the socket (TLS bytes read
    /// ahead are decrypted first; an error or a close counts, for the next read to report).
    pub fn pending(&mut self) -> usize {
        let Io::Tls(s) = self else { return 0 };
        loop {
            match s.conn.process_new_packets() {
                Ok(state) if state.peer_has_closed() => return 1,
                Ok(state) if state.plaintext_bytes_to_read() > 0 => {
                    return state.plaintext_bytes_to_read()
                }
                Ok(_) => {}
                Err(_) => return 1,
            }
            if s.sock.buffered() == 0 {
                return 0;
            }
            // From memory: no system call.
            match s.conn.read_tls(&mut s.sock) {
                Ok(n) if n > 0 => {}
                _ => return 1,
            }
        }
    }

    /// Gives back the read-ahead buffer if it holds nothing (a connection about to wait).
    pub fn release(&mut self) {
        if let Io::Tls(s) = self {
            s.sock.release();
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

/// Buffer for reading responses. Small: a watch holds one per open stream (and gives it back
/// while the stream is quiet: [`HeadReader::release_buffer`]).
const READ_BUF: usize = 8 << 10;

/// Seconds of silence before a keep-alive probe to the API server, and between probes: what
/// client-go's dialer uses (the original's connections to the API server).
const UPSTREAM_KEEPALIVE: libc::c_int = 30;

/// A buffered reader over an upstream connection: the same reader as the client side's.
pub type UpReader = HeadReader<Io>;

impl http::Timed for Io {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(t)
    }
}

/// One checked-out connection.
pub struct Conn {
    pub io: UpReader,
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

/// The credentials requests use: the token and the TLS configuration built from the CA, as a
/// snapshot refreshed in the background when the files change. Requests never touch the files
/// and never take a lock for them (see [`CredCache`]).
pub struct Creds {
    token: Result<Arc<Vec<u8>>, String>,
    tls: Result<Option<(Arc<ClientConfig>, u64)>, String>,
}

impl Creds {
    pub fn token(&self) -> Result<&[u8], UpstreamError> {
        match &self.token {
            Ok(t) => Ok(t),
            Err(e) => Err(UpstreamError::Credentials(e.clone())),
        }
    }

    fn tls(&self) -> Result<Option<(Arc<ClientConfig>, u64)>, UpstreamError> {
        self.tls.clone().map_err(UpstreamError::Credentials)
    }

    fn ca_generation(&self) -> u64 {
        match &self.tls {
            Ok(Some((_, g))) => *g,
            _ => 0,
        }
    }
}

/// A connection thread's copy of the current [`Creds`]: checked against one atomic per request.
#[derive(Default)]
pub struct CredCache {
    version: u64,
    creds: Option<Arc<Creds>>,
}

/// The API server, its credentials and the connection pool.
pub struct Upstream {
    pub target: Target,
    config: PoolConfig,
    server_name: Option<ServerName<'static>>,
    token_file: WatchedFile,
    ca_file: WatchedFile,
    creds: RwLock<Arc<Creds>>,
    creds_version: AtomicU64,
    idle: Mutex<Vec<Conn>>,
    /// Idle connections anywhere: in `idle` or held by a client connection between its requests.
    idle_total: AtomicUsize,
    open: Arc<AtomicUsize>,
    /// Queue of the handshake threads (TLS targets only).
    handshakes: Option<mpsc::Sender<Handshake>>,
}

/// A TLS handshake to run on a handshake thread.
struct Handshake {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
    reply: mpsc::SyncSender<Result<(ClientConnection, TcpStream), UpstreamError>>,
}

impl Handshake {
    fn run(self) -> Result<(ClientConnection, TcpStream), UpstreamError> {
        let mut tcp = self.tcp;
        let mut conn = ClientConnection::new(self.config, self.name)
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        }
        Ok((conn, tcp))
    }
}

/// Handshake threads: two, so one slow server does not hold up every new connection.
const HANDSHAKE_THREADS: usize = 2;

fn start_handshake_threads() -> Option<mpsc::Sender<Handshake>> {
    let (tx, rx) = mpsc::channel::<Handshake>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..HANDSHAKE_THREADS {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("tls-handshake-{i}"))
            .stack_size(256 << 10)
            .spawn(move || loop {
                let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(job) => job,
                    Err(_) => return,
                };
                let reply = job.reply.clone();
                let _ = reply.send(job.run());
            });
        if spawned.is_err() {
            // Without handshake threads, connection threads do their own handshakes.
            return None;
        }
    }
    Some(tx)
}

impl Upstream {
    pub fn new(target: Target, sa_dir: &Path, config: PoolConfig) -> Result<Upstream, String> {
        let server_name = if target.tls {
            Some(crate::tls::server_name(&target.host).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let handshakes = if target.tls {
            start_handshake_threads()
        } else {
            None
        };
        let up = Upstream {
            target,
            config,
            server_name,
            // Only `refresh_credentials` reads these, on its own schedule.
            token_file: WatchedFile::new(sa_dir.join("token"), Duration::ZERO, 64 << 10),
            ca_file: WatchedFile::new(sa_dir.join("ca.crt"), Duration::ZERO, 1 << 20),
            creds: RwLock::new(Arc::new(Creds {
                token: Err("not loaded yet".into()),
                tls: Err("not loaded yet".into()),
            })),
            creds_version: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            idle_total: AtomicUsize::new(0),
            open: Arc::new(AtomicUsize::new(0)),
            handshakes,
        };
        up.refresh_credentials();
        Ok(up)
    }

    /// Idle upstream connections kept for reuse (counting those a client connection holds).
    pub fn idle_connections(&self) -> usize {
        self.idle_total.load(Ordering::Relaxed)
    }

    /// Upstream connections open right now (in use or idle).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn load_token(&self) -> Result<Arc<Vec<u8>>, String> {
        let path = self.token_file.path().display();
        let (bytes, _) = self
            .token_file
            .get()
            .map_err(|e| format!("cannot read the service-account token {path}: {e}"))?;
        let trimmed = bytes.trim_ascii();
        if !super::policy::valid_token(trimmed) {
            return Err(format!(
                "the service-account token {path} holds bytes that cannot be sent in a header"
            ));
        }
        Ok(if trimmed.len() == bytes.len() {
            bytes
        } else {
            Arc::new(trimmed.to_vec())
        })
    }

    fn load_tls(&self, current: &Creds) -> Result<Option<(Arc<ClientConfig>, u64)>, String> {
        if !self.target.tls {
            return Ok(None);
        }
        let path = self.ca_file.path().display();
        let (pem, generation) = self
            .ca_file
            .get()
            .map_err(|e| format!("cannot read the cluster CA {path}: {e}"))?;
        if let Ok(Some((config, g))) = &current.tls {
            if *g == generation {
                return Ok(Some((config.clone(), generation)));
            }
        }
        let certs =
            crate::tls::parse_pem_certs(&pem).map_err(|d| format!("cluster CA {path}: {d}"))?;
        let roots =
            crate::tls::root_store(&certs).map_err(|d| format!("cluster CA {path}: {d}"))?;
        let config = crate::tls::client_config(roots, &[b"http/1.1"]).map_err(|e| e.to_string())?;
        Ok(Some((config, generation)))
    }

    /// Re-reads the token and CA if their files changed (a stat each otherwise); called at start
    /// and periodically by the proxy's housekeeping thread. Returns whether anything changed.
    pub fn refresh_credentials(&self) -> bool {
        let current = self.current_credentials();
        let token = self.load_token();
        let tls = self.load_tls(&current);
        // A file that cannot be read now keeps the last good contents (mid-rotation).
        let token = match (token, &current.token) {
            (Err(_), Ok(old)) => Ok(old.clone()),
            (t, _) => t,
        };
        let tls = match (tls, &current.tls) {
            (Err(e), Ok(old)) => {
                log::warn!("{e}; keeping the CA loaded before");
                Ok(old.clone())
            }
            (t, _) => t,
        };
        let same_token = match (&token, &current.token) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a == b,
            _ => false,
        };
        let same_tls = match (&tls, &current.tls) {
            (Ok(a), Ok(b)) => a.as_ref().map(|x| x.1) == b.as_ref().map(|x| x.1),
            (Err(a), Err(b)) => a == b,
            _ => false,
        };
        if same_token && same_tls {
            return false;
        }
        if !same_token && token.is_ok() && current.token.is_ok() {
            log::info!("the service-account token changed; using the new one");
        }
        if !same_tls && tls.is_ok() && current.tls.is_ok() {
            log::info!("the cluster CA changed; new connections trust the new one");
        }
        *self.creds.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Creds { token, tls });
        self.creds_version.fetch_add(1, Ordering::Release);
        true
    }

    /// The current credentials (takes a read lock: for occasional callers).
    pub fn current_credentials(&self) -> Arc<Creds> {
        self.creds.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current credentials through a per-thread cache: one atomic load per call.
    pub fn credentials<'a>(&self, cache: &'a mut CredCache) -> &'a Creds {
        let v = self.creds_version.load(Ordering::Acquire);
        if cache.creds.is_none() || cache.version != v {
            cache.creds = Some(self.current_credentials());
            cache.version = v;
        }
        cache.creds.as_deref().unwrap_or_else(|| unreachable!())
    }

    fn reserve_idle(&self) -> bool {
        let max = self.config.max_idle;
        self.idle_total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release_idle(&self) {
        self.idle_total.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether a kept connection may carry the next request: made with the current CA, not idle
    /// too long, and quiet — nothing buffered, nothing pending in TLS, nothing on the socket. Bytes
    /// the API server sent unasked (a bug, a box in between) would otherwise be read as the next
    /// request's answer, whoever sent it; such a connection is closed instead.
    fn usable(&self, conn: &mut Conn, creds: &Creds) -> bool {
        conn.ca_generation == creds.ca_generation()
            && conn.idle_since.elapsed() < self.config.idle_timeout
            && conn.io.buffered().is_empty()
            && conn.io.get_mut().is_quiet()
    }

    /// A connection for one request: the one this client connection kept (`held`), else a live
    /// idle one from the pool, else a new one.
    pub fn checkout(&self, creds: &Creds, held: &mut Option<Conn>) -> Result<Conn, UpstreamError> {
        if let Some(mut conn) = held.take() {
            self.release_idle();
            if self.usable(&mut conn, creds) {
                conn.reused = true;
                return Ok(conn);
            }
        }
        loop {
            let candidate = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut conn) = candidate else { break };
            self.release_idle();
            if self.usable(&mut conn, creds) {
                conn.reused = true;
                return Ok(conn);
            }
        }
        self.connect(creds.tls()?)
    }

    /// A fresh connection, bypassing the pool (for a retry after a stale pooled one).
    pub fn connect_new(&self, creds: &Creds) -> Result<Conn, UpstreamError> {
        self.connect(creds.tls()?)
    }

    /// Opens a connection, counted in the metrics: opened, or failed by cause.
    fn connect(&self, tls: Option<(Arc<ClientConfig>, u64)>) -> Result<Conn, UpstreamError> {
        use crate::metrics::{ConnectFailure, PROXY};
        let made = self.open_conn(tls);
        match &made {
            Ok(_) => PROXY.upstream_opened.inc(),
            Err(UpstreamError::Tls(_)) => PROXY.upstream_failed(ConnectFailure::Tls),
            Err(UpstreamError::Io(e)) if crate::http::is_timeout(e) => {
                PROXY.upstream_failed(ConnectFailure::Timeout)
            }
            Err(UpstreamError::Connect(m)) if m.contains("timed out") => {
                PROXY.upstream_failed(ConnectFailure::Timeout)
            }
            Err(_) => PROXY.upstream_failed(ConnectFailure::Connect),
        }
        made
    }

    fn open_conn(&self, tls: Option<(Arc<ClientConfig>, u64)>) -> Result<Conn, UpstreamError> {
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
        // A quiet watch on an API server whose host vanished would otherwise wait for its next
        // event forever: probes end it within 30 + 9 × 30 s, with client-go's dialer's period.
        super::listener::keep_alive(&tcp, UPSTREAM_KEEPALIVE);
        tcp.set_write_timeout(Some(self.config.io_timeout))
            .map_err(UpstreamError::Io)?;
        let (io, ca_generation) = match tls {
            None => (Io::Plain(tcp), 0),
            Some((config, generation)) => {
                let name = self
                    .server_name
                    .clone()
                    .ok_or_else(|| UpstreamError::Tls("no server name".into()))?;
                tcp.set_read_timeout(Some(self.config.connect_timeout))
                    .map_err(UpstreamError::Io)?;
                let (conn, tcp) = self.handshake(config, name, tcp)?;
                (
                    Io::Tls(Box::new(StreamOwned::new(conn, Readahead::new(tcp)))),
                    generation,
                )
            }
        };
        io.tcp()
            .set_read_timeout(Some(self.config.io_timeout))
            .map_err(UpstreamError::Io)?;
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(Conn {
            io: HeadReader::with_capacity(io, self.config.io_timeout, READ_BUF),
            reused: false,
            ca_generation,
            idle_since: Instant::now(),
            open: self.open.clone(),
        })
    }

    /// The TLS handshake, run by a handshake thread: its deep stack (key exchange, certificate
    /// verification) is touched there once, not in each of up to a thousand small connection
    /// threads that would keep those pages for as long as their watch lasts.
    fn handshake(
        &self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> Result<(ClientConnection, TcpStream), UpstreamError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Handshake {
            config,
            name,
            tcp,
            reply,
        };
        match &self.handshakes {
            Some(tx) => {
                tx.send(job)
                    .map_err(|_| UpstreamError::Tls("the handshake threads are gone".into()))?;
                answer
                    .recv()
                    .map_err(|_| UpstreamError::Tls("the handshake thread failed".into()))?
            }
            None => job.run(),
        }
    }

    fn reusable(conn: &mut Conn) -> bool {
        // Unexpected extra bytes after the response: not reusable.
        conn.io.buffered().is_empty() && conn.io.get_mut().pending() == 0
    }

    /// After a response read to its end: the client connection keeps `conn` for its next
    /// request (`held`), if the idle budget allows; otherwise it is closed.
    pub fn keep(&self, mut conn: Conn, held: &mut Option<Conn>) {
        if !Self::reusable(&mut conn) || !self.reserve_idle() {
            return;
        }
        conn.idle_since = Instant::now();
        conn.reused = false;
        if let Some(old) = held.replace(conn) {
            drop(old);
            self.release_idle();
        }
    }

    /// The client connection is done or idle: its kept connection goes to the shared pool.
    pub fn release(&self, held: &mut Option<Conn>) {
        if let Some(conn) = held.take() {
            // Its idle reservation moves with it.
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }

    /// Returns a connection straight to the shared pool (if the idle budget allows).
    pub fn checkin(&self, mut conn: Conn) {
        if !Self::reusable(&mut conn) || !self.reserve_idle() {
            return;
        }
        conn.idle_since = Instant::now();
        conn.reused = false;
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }

    /// A `GET` of `path` with our own token (no impersonation), through the pool and under the
    /// same reuse rule as every proxied request; the status code. For the readiness probe.
    pub fn get(&self, path: &str, limits: &HeadLimits) -> Result<u16, UpstreamError> {
        let creds = self.current_credentials();
        let mut req = Vec::with_capacity(256);
        for part in [
            "GET ",
            path,
            " HTTP/1.1\r\nHost: ",
            &self.target.authority,
            "\r\nAuthorization: Bearer ",
        ] {
            req.extend_from_slice(part.as_bytes());
        }
        req.extend_from_slice(creds.token()?);
        req.extend_from_slice(b"\r\nUser-Agent: eks-connector/");
        req.extend_from_slice(crate::VERSION.as_bytes());
        req.extend_from_slice(b"\r\nAccept: */*\r\n\r\n");
        let mut conn = self.checkout(&creds, &mut None)?;
        let mut resp = http::ResponseHead::default();
        // The retry rule of every proxied GET: once, on a new connection, if a kept one closed
        // before answering.
        if let Err(e) = Self::ask(&mut conn, &req, limits, &mut resp) {
            if !(conn.reused && e.never_answered()) {
                return Err(e);
            }
            conn = self.connect_new(&creds)?;
            Self::ask(&mut conn, &req, limits, &mut resp)?;
        }
        let framing = http::response_framing("GET", &resp).map_err(UpstreamError::BadResponse)?;
        let mut body = http::Body::new(framing);
        let mut total = 0usize;
        while let http::Step::Data(n) = body
            .next(&mut conn.io)
            .map_err(|_| UpstreamError::BadResponse("a probe's answer was cut short"))?
        {
            body.consume(&mut conn.io, n);
            total += n;
            if total > 1 << 20 {
                return Err(UpstreamError::BadResponse("a probe's answer is too large"));
            }
        }
        if http::keeps_connection(&resp, framing) {
            self.checkin(conn);
        }
        Ok(resp.status)
    }

    /// Sends `req` and reads the response head.
    fn ask(
        conn: &mut Conn,
        req: &[u8],
        limits: &HeadLimits,
        resp: &mut http::ResponseHead,
    ) -> Result<(), UpstreamError> {
        let w = conn.io.get_mut();
        w.write_all(req)
            .and_then(|_| w.flush())
            .map_err(UpstreamError::Io)?;
        match http::read_response(&mut conn.io, limits, resp) {
            Ok(()) => Ok(()),
            Err(http::HeadError::Closed) => Err(UpstreamError::ClosedEarly),
            Err(http::HeadError::Io(e)) => Err(UpstreamError::Io(e)),
            Err(_) => Err(UpstreamError::BadResponse("no valid answer to a probe")),
        }
    }

    /// Closes pooled connections past their idle timeout (called periodically).
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
        for _ in &expired {
            self.release_idle();
        }
    }

    /// Closes every pooled connection (at shutdown).
    pub fn close_idle(&self) {
        let all: Vec<Conn> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        for _ in &all {
            self.release_idle();
        }
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
        let creds = up.current_credentials();
        assert_eq!(creds.token().unwrap(), b"tok");
        let mut none = None;
        let conns: Vec<Conn> = (0..4)
            .map(|_| up.checkout(&creds, &mut none).unwrap())
            .collect();
        assert_eq!(up.open_connections(), 4);
        for c in conns {
            up.checkin(c);
        }
        // Only max_idle stay open.
        assert_eq!(up.open_connections(), 2);
        let c = up.checkout(&creds, &mut none).unwrap();
        assert!(c.reused);
        assert_eq!(up.open_connections(), 2);
        // A client connection keeps it between requests; the budget counts it as idle.
        let mut held = None;
        up.keep(c, &mut held);
        assert!(held.is_some());
        let extra = up.checkout(&creds, &mut none).unwrap(); // the last pooled one
        let fresh = up.checkout(&creds, &mut none).unwrap(); // a new one
        assert_eq!(up.open_connections(), 3);
        up.checkin(extra); // budget: held + this = 2
        up.checkin(fresh); // over the budget: closed
        assert_eq!(up.open_connections(), 2);
        let c = up.checkout(&creds, &mut held).unwrap();
        assert!(c.reused && held.is_none());
        drop(c);
        assert_eq!(up.open_connections(), 1);
        up.close_idle();
        assert_eq!(up.open_connections(), 0);
        // The server saw exactly the five connections (the reuses made none).
        let deadline = Instant::now() + Duration::from_secs(5);
        while accepted.load(Ordering::SeqCst) < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
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
