//! Where clients connect: a unix socket (the SSM agent's path, shared through an emptyDir) or TCP.
//!
//! The unix socket: a stale file from a crashed run is removed, but if a live proxy answers on it
//! we refuse to start (two proxies would fight over one path); mode 0700; removed on exit, and
//! only if the file is still ours.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Why we could not listen.
#[derive(Debug)]
pub enum ListenError {
    /// Another proxy answers on the socket path.
    InUse(PathBuf),
    /// Something that is not a socket sits at the path; we do not delete arbitrary files.
    NotASocket(PathBuf),
    Io {
        addr: String,
        source: io::Error,
    },
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenError::InUse(p) => write!(
                f,
                "another process is serving on {} already; stop it or choose another --proxy.socketAddr",
                p.display()
            ),
            ListenError::NotASocket(p) => write!(
                f,
                "{} exists and is not a socket; remove it or choose another --proxy.socketAddr",
                p.display()
            ),
            ListenError::Io { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
        }
    }
}

/// A bound listener. Dropping it removes the unix socket file (if it is still ours).
pub struct Listener {
    inner: Inner,
}

enum Inner {
    Unix {
        listener: UnixListener,
        path: PathBuf,
        /// (dev, ino) of the socket file we created.
        id: (u64, u64),
    },
    Tcp(TcpListener),
}

impl Listener {
    pub fn bind(addr: &ListenAddr) -> Result<Listener, ListenError> {
        match addr {
            ListenAddr::Unix(path) => bind_unix(path),
            ListenAddr::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(|source| ListenError::Io {
                    addr: a.clone(),
                    source,
                })?;
                // Linux copies these options to every connection accept() returns: set once
                // here, not four system calls per client.
                keep_alive(&l, CLIENT_KEEPALIVE);
                Ok(Listener {
                    inner: Inner::Tcp(l),
                })
            }
        }
    }

    /// The address actually bound (useful with TCP port 0).
    pub fn local_addr(&self) -> String {
        match &self.inner {
            Inner::Unix { path, .. } => format!("unix:{}", path.display()),
            Inner::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_else(|_| "tcp:?".into()),
        }
    }

    pub fn accept(&self) -> io::Result<Stream> {
        match &self.inner {
            Inner::Unix { listener, .. } => listener.accept().map(|(s, _)| Stream::Unix(s)),
            Inner::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        match &self.inner {
            Inner::Unix { listener, .. } => listener.as_raw_fd(),
            Inner::Tcp(l) => l.as_raw_fd(),
        }
    }

    /// Wakes a thread blocked in [`Listener::accept`] (it then fails) and stops new connections.
    pub fn stop(&self) {
        // SAFETY: shutting down a socket we own; on Linux this wakes a blocked accept().
        unsafe {
            libc::shutdown(self.raw_fd(), libc::SHUT_RDWR);
        }
    }

    /// Removes the unix socket file now (if it is still ours), so no new client can connect.
    pub fn remove_file(&self) {
        if let Inner::Unix { path, id, .. } = &self.inner {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if (m.dev(), m.ino()) == *id {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }

    /// Whether the listener is still there: for unix sockets, that the file is still ours.
    pub fn is_listening(&self) -> bool {
        match &self.inner {
            Inner::Unix { path, id, .. } => std::fs::symlink_metadata(path)
                .map(|m| (m.dev(), m.ino()) == *id)
                .unwrap_or(false),
            Inner::Tcp(_) => true,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.remove_file();
    }
}

/// Client connections: TCP keep-alive as the original's Go listener set it (`CLIENT_KEEPALIVE`).
/// While a response waits for the API server (a quiet watch) only a hang-up or an error means
/// the client is gone, since a half-closed client still gets its answer; over TCP a client's
/// close() raises neither, so the probes are what ends the stream. A closed client's socket
/// lingers orphaned in FIN_WAIT2 and answers them until `net.ipv4.tcp_fin_timeout` (60 s by
/// default) has passed, then the next probe draws a reset: the stream ends within
/// tcp_fin_timeout + 15 s. A client host that vanished (powered off, partitioned) answers
/// nothing: within 15 + 9 × 15 = 150 s. A living client, half-closed or not, answers every probe
/// (its kernel does) and keeps its stream.
pub(super) const CLIENT_KEEPALIVE: libc::c_int = 15;

/// Keep-alive on a TCP connection (or on a listener, for the connections it accepts): the first
/// probe after `period` seconds of silence, then one every `period`; 9 unanswered mean gone.
pub(super) fn keep_alive(s: &impl AsRawFd, period: libc::c_int) {
    let options = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, period),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, period),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 9),
    ];
    for (level, name, value) in options {
        // SAFETY: an int option on a socket we own, its size given.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            log::debug!(
                "TCP keep-alive option {name}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

fn bind_unix(path: &Path) -> Result<Listener, ListenError> {
    let io_err = |source| ListenError::Io {
        addr: format!("unix:{}", path.display()),
        source,
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(ListenError::NotASocket(path.to_path_buf()));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(ListenError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => {
                log::info!("removing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(io_err)?;
            }
        }
    }
    // Create the socket with no group/other access from the start, then make sure of 0700.
    // SAFETY: umask is process-wide; this runs once at start-up before connection threads exist.
    let old = unsafe { libc::umask(0o077) };
    let bound = UnixListener::bind(path);
    // SAFETY: restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io_err)?;
    let m = std::fs::symlink_metadata(path).map_err(io_err)?;
    Ok(Listener {
        inner: Inner::Unix {
            listener,
            path: path.to_path_buf(),
            id: (m.dev(), m.ino()),
        },
    })
}

/// A client connection.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(on),
            Stream::Tcp(s) => s.set_nonblocking(on),
        }
    }

    pub fn shutdown_write(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }

    pub fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    /// Closes after an answer without resetting the connection (see
    /// [`crate::http::discard_until_closed`]).
    pub fn linger_close(&self) {
        self.shutdown_write();
        crate::http::discard_until_closed(self);
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Stream::Unix(s) => (&*s).read(buf),
            Stream::Tcp(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Unix(s) => (&*s).write(buf),
            Stream::Tcp(s) => (&*s).write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match *self {
            Stream::Unix(s) => (&*s).write_vectored(bufs),
            Stream::Tcp(s) => (&*s).write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl crate::http::Timed for Stream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("proxy-listener-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn unix_socket_lifecycle() {
        let d = tmp("life");
        let p = d.join("connector.sock");
        let addr = ListenAddr::Unix(p.clone());
        let l = Listener::bind(&addr).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(l.is_listening());
        // A live listener is not stale: a second bind refuses.
        assert!(matches!(Listener::bind(&addr), Err(ListenError::InUse(_))));
        drop(l);
        assert!(!p.exists());
        // A stale socket file (nobody listening) is replaced.
        let stale = UnixListener::bind(&p).unwrap();
        drop(stale);
        assert!(p.exists());
        let l = Listener::bind(&addr).unwrap();
        drop(l);
        // A regular file is never deleted.
        std::fs::write(&p, "keep me").unwrap();
        assert!(matches!(
            Listener::bind(&addr),
            Err(ListenError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"keep me");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stop_wakes_a_blocked_accept() {
        let d = tmp("stop");
        for addr in [
            ListenAddr::Unix(d.join("s.sock")),
            ListenAddr::Tcp("127.0.0.1:0".into()),
        ] {
            let l = std::sync::Arc::new(Listener::bind(&addr).unwrap());
            let l2 = l.clone();
            let t = std::thread::spawn(move || l2.accept().is_err());
            std::thread::sleep(Duration::from_millis(50));
            l.stop();
            assert!(t.join().unwrap(), "accept should fail after stop on {addr}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
