//! The health endpoint kubelet probes: `/healthz` (the process is alive) and `/readyz` (the
//! component says it can do its job). Shared by the proxy and the agent launcher.
//!
//! Hand-written rather than tiny_http because this port is reachable from the pod network: the
//! request head is capped (4 KiB), read with a timeout, and the connection closed after one answer,
//! so a slow or hostile client costs one short-lived thread at most.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MAX_HEAD: usize = 4096;
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CONCURRENT: usize = 16;
const STACK: usize = 64 << 10;

/// Answers `/readyz`: `Ok(())` when ready, or why not.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Binds `addr` and serves in a background thread. Returns the bound address (useful with port 0).
pub fn serve(addr: &str, ready: ReadyCheck) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("health".into())
        .stack_size(STACK)
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT {
                    active.fetch_sub(1, Ordering::SeqCst);
                    continue; // dropped: probes retry
                }
                let ready = ready.clone();
                let active2 = active.clone();
                let spawned = std::thread::Builder::new()
                    .name("health-conn".into())
                    .stack_size(STACK)
                    .spawn(move || {
                        answer(stream, &ready);
                        active2.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(local)
}

fn answer(mut stream: TcpStream, ready: &ReadyCheck) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            let _ = respond(&mut stream, 431, "request head too large\n");
            drain(&mut stream);
            return;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let _ = match (method, path) {
        ("GET" | "HEAD", "/healthz" | "/livez") => respond(&mut stream, 200, "ok\n"),
        ("GET" | "HEAD", "/readyz") => match ready() {
            Ok(()) => respond(&mut stream, 200, "ok\n"),
            Err(why) => respond(&mut stream, 503, &format!("not ready: {why}\n")),
        },
        ("GET" | "HEAD", _) => respond(&mut stream, 404, "not found: try /healthz or /readyz\n"),
        _ => respond(&mut stream, 405, "method not allowed\n"),
    };
}

/// Half-closes and discards what the client still sends (briefly), so that closing with unread
/// bytes does not turn our answer into a connection reset.
fn drain(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 4096];
    let mut budget = 1usize << 20;
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || n >= budget {
            break;
        }
        budget -= n;
    }
}

fn respond(stream: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn get(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn healthz_and_readyz_follow_the_check() {
        let flag = Arc::new(AtomicBool::new(false));
        let f2 = flag.clone();
        let addr = serve(
            "127.0.0.1:0",
            Arc::new(move || {
                if f2.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("secret not in sync".into())
                }
            }),
        )
        .unwrap();
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        let r = get(addr, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("secret not in sync"),
            "{r}"
        );
        flag.store(true, Ordering::SeqCst);
        assert!(get(addr, b"GET /readyz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        assert!(get(addr, b"GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let big = format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(8000));
        assert!(get(addr, big.as_bytes()).starts_with("HTTP/1.1 431"));
    }
}
