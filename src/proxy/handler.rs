//! One client connection: read request heads, apply the policy, forward to the API server and
//! stream the answer back. Keep-alive for clients that use it.

use std::io::{self, BufWriter, Write};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::http::{
    self, Body, BodyError, Buffered, Framing, HeadReader, RequestHead, ResponseHead, Step, Version,
};
use super::listener::Stream;
use super::policy::{self, ClientFraming, Identity, Refusal};
use super::upstream::{Conn, UpstreamError};
use super::Shared;

/// What happened to one request, for the audit log and the connection loop.
pub(super) struct Outcome {
    pub identity: String,
    pub status: u16,
    pub bytes: u64,
    /// Keep the client connection open for another request.
    pub keep_alive: bool,
    /// Why the exchange was cut short, if it was.
    pub note: Option<String>,
}

/// Serves one client connection until it closes, errs, or the proxy stops.
pub(super) fn serve(shared: &Shared, stream: Stream) {
    let limits = &shared.limits;
    let _ = stream.set_write_timeout(Some(limits.io_timeout));
    let mut reader = HeadReader::new(&stream, limits.io_timeout);
    let mut first = true;
    loop {
        let idle = if first {
            limits.header_timeout
        } else {
            limits.idle_timeout
        };
        first = false;
        let head = match reader.read_request(&limits.head, idle, limits.header_timeout) {
            Ok(h) => h,
            Err(e) => {
                if let Some(status) = e.status() {
                    let started = Instant::now();
                    let body = policy::status_body(status, &e.message());
                    let _ = (&stream).write_all(&policy::simple_response(status, &body, true, &[]));
                    super::audit::record(
                        "-",
                        "-",
                        "-",
                        status,
                        0,
                        started.elapsed(),
                        Some(&e.message()),
                    );
                    stream.linger_close();
                }
                return;
            }
        };
        let _in_flight = InFlight::enter(shared);
        let started = Instant::now();
        let outcome = handle(shared, &stream, &mut reader, &head);
        super::audit::record(
            &outcome.identity,
            &head.method,
            &head.target,
            outcome.status,
            outcome.bytes,
            started.elapsed(),
            outcome.note.as_deref(),
        );
        if !outcome.keep_alive || shared.stopping.load(Ordering::SeqCst) {
            stream.linger_close();
            return;
        }
    }
}

/// Counts a request as in flight while alive.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why an exchange with the API server failed before the response head reached the client.
enum Failure {
    /// Answer 502 (the original's body); the cause goes to the log.
    Upstream(UpstreamError),
    /// The client's body framing was bad or it stopped sending: 400, close.
    ClientBody(BodyError),
    /// The client went away: nothing to answer.
    ClientGone,
}

fn handle(
    shared: &Shared,
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    head: &RequestHead,
) -> Outcome {
    let stopping = shared.stopping.load(Ordering::SeqCst);
    let mut out = Outcome {
        identity: "-".into(),
        status: 0,
        bytes: 0,
        keep_alive: head.keep_alive() && !stopping,
        note: None,
    };
    let framing = match http::request_framing(head) {
        Ok(f) => f,
        Err(why) => {
            out.keep_alive = false;
            return refuse(
                stream,
                out,
                Refusal {
                    status: 400,
                    message: format!("malformed request: {why}"),
                },
            );
        }
    };
    let has_body = framing != Framing::Empty;
    let checked = policy::check_host(head)
        .and_then(|_| policy::check_upgrade(head))
        .and_then(|_| policy::identity(head));
    let identity = match checked {
        Ok(i) => i,
        Err(r) => {
            // A refusal leaves any body unread: the connection cannot be reused then.
            if has_body || r.status == 501 {
                out.keep_alive = false;
            }
            if r.status == 400 && head.all(policy::IDENTITY_HEADER).next().is_some() {
                out.identity = "<invalid>".into();
            }
            return refuse(stream, out, r);
        }
    };
    out.identity = identity.describe().to_string();
    let expect_continue = match policy::expects_continue(head) {
        Ok(e) => e && has_body,
        Err(r) => {
            out.keep_alive = false;
            return refuse(stream, out, r);
        }
    };

    let (mut conn, resp) = match exchange(
        shared,
        stream,
        reader,
        head,
        &identity,
        framing,
        expect_continue,
    ) {
        Ok(x) => x,
        Err(Failure::Upstream(e)) => {
            log::error!("{} {}: {e}", head.method, head.target);
            out.status = 502;
            out.keep_alive = false;
            out.note = Some(e.to_string());
            let _ =
                (&*stream).write_all(&policy::simple_response(502, policy::BODY_502, true, &[]));
            return out;
        }
        Err(Failure::ClientBody(e)) => {
            out.keep_alive = false;
            return refuse(
                stream,
                out,
                Refusal {
                    status: 400,
                    message: format!("request body: {e}"),
                },
            );
        }
        Err(Failure::ClientGone) => {
            out.keep_alive = false;
            out.note = Some("client went away before the response".into());
            return out;
        }
    };
    out.status = resp.status;
    if relay_response(shared, stream, head, &mut conn, &resp, &mut out) {
        shared.upstream.checkin(conn);
    }
    out
}

fn refuse(stream: &Stream, mut out: Outcome, r: Refusal) -> Outcome {
    out.status = r.status;
    out.note = Some(r.message.clone());
    let body = policy::status_body(r.status, &r.message);
    let resp = policy::simple_response(r.status, &body, !out.keep_alive, &[]);
    if (&*stream).write_all(&resp).is_err() {
        out.keep_alive = false;
    }
    out.bytes = body.len() as u64;
    out
}

/// Sends the request (head and streamed body) and reads the response head. A pooled
/// connection that turns out to be closed is replaced once, for requests without a body.
fn exchange(
    shared: &Shared,
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    head: &RequestHead,
    identity: &Identity,
    framing: Framing,
    expect_continue: bool,
) -> Result<(Conn, ResponseHead), Failure> {
    let up = &shared.upstream;
    let token = up.token().map_err(Failure::Upstream)?;
    let up_head = policy::upstream_head(head, &up.target.authority, &token, identity, framing);
    drop(token);
    let mut conn = up.checkout().map_err(Failure::Upstream)?;
    let mut retried = false;
    loop {
        let sent = if framing == Framing::Empty {
            let w = conn.io.get_mut();
            w.write_all(&up_head)
                .and_then(|_| w.flush())
                .map_err(|e| Failure::Upstream(UpstreamError::Io(e)))
        } else {
            send_body(
                stream,
                reader,
                &mut conn,
                &up_head,
                framing,
                expect_continue,
            )
        };
        let result = sent.and_then(|_| read_head(shared, stream, &mut conn, &head.method));
        match result {
            Ok(resp) => return Ok((conn, resp)),
            Err(Failure::Upstream(e)) if conn.reused && !retried && framing == Framing::Empty => {
                log::debug!("pooled API server connection failed ({e}); retrying on a new one");
                retried = true;
                conn = up.connect_new().map_err(Failure::Upstream)?;
            }
            Err(f) => return Err(f),
        }
    }
}

fn send_body(
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    conn: &mut Conn,
    up_head: &[u8],
    framing: Framing,
    expect_continue: bool,
) -> Result<(), Failure> {
    let up_err = |e: io::Error| Failure::Upstream(UpstreamError::Io(e));
    if expect_continue {
        (&*stream)
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| Failure::ClientGone)?;
    }
    reader.body_mode().map_err(|_| Failure::ClientGone)?;
    let chunked = framing == Framing::Chunked;
    let mut w = BufWriter::with_capacity(16 << 10, conn.io.get_mut());
    w.write_all(up_head).map_err(up_err)?;
    let mut body = Body::new(framing);
    let client_err = |e: BodyError| match e {
        BodyError::Io(e) if http::is_timeout(&e) => {
            Failure::ClientBody(BodyError::Bad("timed out waiting for the request body"))
        }
        e => Failure::ClientBody(e),
    };
    loop {
        match body.step(reader).map_err(client_err)? {
            Step::End => break,
            Step::NeedInput => {
                // Pass on what we have before waiting for the client.
                w.flush().map_err(up_err)?;
                if http::fill_more(reader).map_err(client_err)? == 0 {
                    body.at_eof().map_err(client_err)?;
                }
            }
            Step::Data(n) => {
                let piece = &reader.buffered()[..n];
                if chunked {
                    write!(w, "{n:x}\r\n").map_err(up_err)?;
                    w.write_all(piece).map_err(up_err)?;
                    w.write_all(b"\r\n").map_err(up_err)?;
                } else {
                    w.write_all(piece).map_err(up_err)?;
                }
                body.consume(reader, n);
            }
        }
    }
    if chunked {
        w.write_all(b"0\r\n\r\n").map_err(up_err)?;
    }
    w.flush().map_err(up_err)?;
    Ok(())
}

fn read_head(
    shared: &Shared,
    stream: &Stream,
    conn: &mut Conn,
    method: &str,
) -> Result<ResponseHead, Failure> {
    loop {
        wait_for_upstream(conn, stream.raw_fd())?;
        let resp = match http::read_response(&mut conn.io, &shared.limits.upstream_head) {
            Ok(r) => r,
            Err(http::HeadError::Closed) => {
                return Err(Failure::Upstream(UpstreamError::BadResponse(
                    "connection closed before a response",
                )))
            }
            Err(http::HeadError::Io(e)) => return Err(Failure::Upstream(UpstreamError::Io(e))),
            Err(http::HeadError::Bad(w)) => {
                return Err(Failure::Upstream(UpstreamError::BadResponse(w)))
            }
            Err(_) => {
                return Err(Failure::Upstream(UpstreamError::BadResponse(
                    "response head too large",
                )))
            }
        };
        match resp.status {
            101 => {
                return Err(Failure::Upstream(UpstreamError::BadResponse(
                    "unexpected protocol switch",
                )))
            }
            100..=199 => continue,
            _ => {
                if method == "HEAD" || resp.status >= 200 {
                    return Ok(resp);
                }
            }
        }
    }
}

/// Waits until the API server has something for us, giving up if the client hangs up
/// meanwhile (so an abandoned watch does not hold a thread and a connection).
fn wait_for_upstream(conn: &mut Conn, client: RawFd) -> Result<(), Failure> {
    if !conn.io.buffer().is_empty() || conn.io.get_mut().pending() > 0 {
        return Ok(());
    }
    let up = conn.io.get_ref().raw_fd();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: up,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: client,
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds; no timeout (the client's hangup or the server's data ends it).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Failure::Upstream(UpstreamError::Io(e)));
        }
        if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Err(Failure::ClientGone);
        }
        if fds[0].revents != 0 {
            return Ok(());
        }
    }
}

/// Streams the response to the client, flushing whenever the API server has nothing more for
/// the moment (so watch events arrive as they happen), and returns the connection to the pool
/// when the exchange ended cleanly.
fn relay_response(
    shared: &Shared,
    stream: &Stream,
    head: &RequestHead,
    conn: &mut Conn,
    resp: &ResponseHead,
    out: &mut Outcome,
) -> bool {
    let framing = match http::response_framing(&head.method, resp) {
        Ok(f) => f,
        Err(why) => {
            log::error!("{} {}: {why}", head.method, head.target);
            out.status = 502;
            out.keep_alive = false;
            out.note = Some(why.into());
            let _ =
                (&*stream).write_all(&policy::simple_response(502, policy::BODY_502, true, &[]));
            return false;
        }
    };
    let client_framing = match framing {
        Framing::Empty => match resp.all("content-length").next().map(|h| h.value.clone()) {
            Some(v) if head.method == "HEAD" => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(ClientFraming::Length)
                .unwrap_or(ClientFraming::None),
            _ => ClientFraming::None,
        },
        Framing::Length(n) => ClientFraming::Length(n),
        Framing::Chunked | Framing::UntilClose => {
            if head.version == Version::Http11 {
                ClientFraming::Chunked
            } else {
                out.keep_alive = false;
                ClientFraming::None
            }
        }
    };
    if shared.stopping.load(Ordering::SeqCst) {
        out.keep_alive = false;
    }
    let upstream_reusable = resp.version == Version::Http11
        && framing != Framing::UntilClose
        && !resp.all("connection").any(|h| {
            h.value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        });

    let mut w = BufWriter::with_capacity(8 << 10, stream);
    let chead = policy::client_head(resp, client_framing, !out.keep_alive);
    if w.write_all(&chead).is_err() {
        out.keep_alive = false;
        out.note = Some("client went away".into());
        return false;
    }
    let chunked = client_framing == ClientFraming::Chunked;
    let mut body = Body::new(framing);
    let gone = |out: &mut Outcome, why: String| {
        out.keep_alive = false;
        out.note = Some(why);
        false
    };
    loop {
        let step = match body.step(&mut conn.io) {
            Ok(s) => s,
            Err(e) => return cut_short(head, &mut w, out, e),
        };
        match step {
            Step::End => break,
            Step::NeedInput => {
                // Nothing buffered from the API server: whatever we hold goes to the client now
                // (a watch event must not wait for the next one), then we wait.
                if w.flush().is_err() {
                    return gone(out, "client went away".into());
                }
                match wait_for_upstream(conn, stream.raw_fd()) {
                    Ok(()) => {}
                    Err(Failure::ClientGone) => return gone(out, "client went away".into()),
                    Err(Failure::Upstream(e)) => {
                        return gone(out, format!("response cut short: {e}"))
                    }
                    Err(Failure::ClientBody(e)) => return gone(out, e.to_string()),
                }
                match http::fill_more(&mut conn.io) {
                    Ok(0) => {
                        if let Err(e) = body.at_eof() {
                            return cut_short(head, &mut w, out, e);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return cut_short(head, &mut w, out, e),
                }
            }
            Step::Data(n) => {
                let piece = &conn.io.buffer()[..n];
                let written = if chunked {
                    write!(w, "{n:x}\r\n")
                        .and_then(|_| w.write_all(piece))
                        .and_then(|_| w.write_all(b"\r\n"))
                } else {
                    w.write_all(piece)
                };
                if written.is_err() {
                    return gone(out, "client went away".into());
                }
                out.bytes += n as u64;
                body.consume(&mut conn.io, n);
            }
        }
    }
    let ended = if chunked {
        w.write_all(b"0\r\n\r\n").and_then(|_| w.flush())
    } else {
        w.flush()
    };
    if ended.is_err() {
        out.keep_alive = false;
        out.note = Some("client went away".into());
        return false;
    }
    if framing == Framing::UntilClose && client_framing == ClientFraming::None {
        out.keep_alive = false;
    }
    upstream_reusable
}

/// The API server's response broke after its head went out: all we can do is end the
/// connection without a clean end of body, so the client sees the response as incomplete.
fn cut_short(
    head: &RequestHead,
    w: &mut BufWriter<&Stream>,
    out: &mut Outcome,
    e: BodyError,
) -> bool {
    log::error!(
        "{} {}: response from the API server cut short: {e}",
        head.method,
        head.target
    );
    out.keep_alive = false;
    out.note = Some(format!("response cut short: {e}"));
    let _ = w.flush();
    false
}
