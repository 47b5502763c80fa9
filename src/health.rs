//! The health endpoint kubelet probes: `/healthz` (the process is alive) and `/readyz` (the
//! component says it can do its job), and `/metrics` (Prometheus text format, [`crate::metrics`]).
//! Shared by the proxy and the agent launcher.
//!
//! This port is reachable from the pod network, so a slow or hostile client must never make a
//! probe fail: request heads go through the proxy's strict parser ([`crate::http`]) with small
//! limits, every connection has a total deadline of a few seconds (however slowly its bytes
//! trickle in), one answer then close, and over the connection cap a client gets a 503 rather
//! than a silent close.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::http::{self, HeadError, HeadLimits, HeadReader, RequestHead};
use crate::metrics::Render;

/// A probe's head is one short line and a few headers.
const LIMITS: HeadLimits = HeadLimits {
    max_line: 1024,
    max_header_bytes: 4096,
    max_headers: 32,
};
/// The longest wait for a request's first byte, then for the rest of its head: with the write
/// and the linger after it, a connection lasts a few seconds at most.
const HEAD_WAIT: Duration = Duration::from_millis(1500);
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections answered at once. Far more than kubelet's probes need, so a handful of slow
/// clients cannot crowd them out; beyond it, 503.
const MAX_CONCURRENT: usize = 64;
const STACK: usize = 64 << 10;

/// Answers `/readyz`: `Ok(())` when ready, or why not.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Binds `addr` and serves in a background thread. Returns the bound address (useful with port 0).
pub fn serve(addr: &str, ready: ReadyCheck, metrics: Render) -> std::io::Result<SocketAddr> {
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
                    turn_away(&stream);
                    continue;
                }
                let ready = ready.clone();
                let metrics = metrics.clone();
                let active2 = active.clone();
                let spawned = std::thread::Builder::new()
                    .name("health-conn".into())
                    .stack_size(STACK)
                    .spawn(move || {
                        answer(&stream, &ready, &metrics);
                        active2.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(local)
}

/// Over the cap: a 503 written from the accepting thread without ever waiting (a fresh
/// socket's send buffer is empty), after taking whatever the client already sent so that
/// closing does not reset the answer away.
fn turn_away(stream: &TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut buf = [0u8; 1024];
    let _ = (&*stream).read(&mut buf);
    let _ = respond(stream, 503, "busy: too many health connections; retry\n");
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn answer(stream: &TcpStream, ready: &ReadyCheck, metrics: &Render) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut reader = HeadReader::new(stream, HEAD_WAIT);
    let mut head = RequestHead::default();
    let read = reader.read_request(&mut head, &LIMITS, HEAD_WAIT, HEAD_WAIT);
    let answered = match read {
        Ok(()) => route(stream, &head, ready, metrics),
        Err(e @ (HeadError::Closed | HeadError::Io(_))) => {
            log::debug!("health check connection: {}", e.message());
            return;
        }
        // The status the error calls for; a client that sent nothing in time gets 408 too.
        Err(e) => respond(
            stream,
            e.status().unwrap_or(408),
            &format!("{}\n", e.message()),
        ),
    };
    if answered.is_ok() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        http::discard_until_closed(stream);
    }
}

fn route(
    stream: &TcpStream,
    head: &RequestHead,
    ready: &ReadyCheck,
    metrics: &Render,
) -> std::io::Result<()> {
    match (head.method(), head.path()) {
        ("GET" | "HEAD", "/metrics") => {
            let mut text = String::with_capacity(16 << 10);
            metrics(&mut text);
            respond_as(stream, 200, METRICS_TYPE, &text)
        }
        ("GET" | "HEAD", "/healthz" | "/livez") => respond(stream, 200, "ok\n"),
        ("GET" | "HEAD", "/readyz") => match ready() {
            Ok(()) => respond(stream, 200, "ok\n"),
            Err(why) => respond(stream, 503, &format!("not ready: {why}\n")),
        },
        ("GET" | "HEAD", _) => respond(
            stream,
            404,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
        _ => respond(stream, 405, "method not allowed\n"),
    }
}

fn respond(stream: &TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    respond_as(stream, code, "text/plain; charset=utf-8", body)
}

/// The content type of the Prometheus text exposition format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn respond_as(
    mut stream: &TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn no_metrics() -> Render {
        Arc::new(|_: &mut String| {})
    }

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
            Arc::new(|out: &mut String| out.push_str("# HELP m_total M.\n")),
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
        let m = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(
            m.starts_with("HTTP/1.1 200")
                && m.contains("Content-Type: text/plain; version=0.0.4")
                && m.ends_with("\r\n\r\n# HELP m_total M.\n"),
            "{m}"
        );
        let big = format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(8000));
        assert!(get(addr, big.as_bytes()).starts_with("HTTP/1.1 431"));
        // The strict parser: a bare LF is not a line end.
        assert!(get(addr, b"GET /healthz HTTP/1.1\n\n").starts_with("HTTP/1.1 400"));
    }

    #[test]
    fn slow_clients_never_make_a_probe_fail() {
        let addr = serve("127.0.0.1:0", Arc::new(|| Ok(())), no_metrics()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // 16 clients sending a byte a second, reconnecting whenever they are cut off.
        let slow: Vec<_> = (0..16)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let Ok(mut s) = TcpStream::connect(addr) else {
                            continue;
                        };
                        for b in b"GET /healthz HTTP/1.1\r\nX: yyyyyyyyyyyyyyyyyyyyyyy" {
                            if stop.load(Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                })
            })
            .collect();
        let started = std::time::Instant::now();
        for at in [2, 4, 6, 8] {
            let wait = Duration::from_secs(at).saturating_sub(started.elapsed());
            std::thread::sleep(wait);
            let r = get(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(r.starts_with("HTTP/1.1 200"), "probe at {at} s got {r:?}");
        }
        stop.store(true, Ordering::SeqCst);
        for t in slow {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_connection_lasts_a_few_seconds_however_slow() {
        let addr = serve("127.0.0.1:0", Arc::new(|| Ok(())), no_metrics()).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        let started = std::time::Instant::now();
        let mut cut = None;
        for _ in 0..40 {
            if s.write_all(b"x").is_err() {
                cut = Some(started.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(
            cut.is_some_and(|t| t < Duration::from_secs(7)),
            "still connected after {:?}",
            started.elapsed()
        );
    }
}
