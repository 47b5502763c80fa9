//! One client connection: read request heads, apply the policy, forward to the API server and
//! stream the answer back. Keep-alive for clients that use it.
//!
//! Steady state allocates nothing per request: the request and response heads, the head sent
//! upstream and the output buffer belong to the connection and are reused; the credentials are
//! a snapshot checked with one atomic load; the upstream connection stays with a busy client
//! connection between its requests. (With musl's allocator, which has one global lock, this is
//! what lets 16 busy connections run in parallel.)

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::listener::Stream;
use super::policy::{self, ClientFraming, Identity, Refusal};
use super::upstream::{Conn, CredCache, Upstream, UpstreamError};
use super::Shared;
use crate::http::{
    self, Body, BodyError, Buffered, Framing, HeadError, HeadReader, RequestHead, ResponseHead,
    Step, Version,
};

/// What happened to one request, for the audit log and the connection loop.
pub(super) struct Outcome<'h> {
    pub identity: &'h str,
    pub status: u16,
    pub bytes: u64,
    /// Keep the client connection open for another request.
    pub keep_alive: bool,
    /// Why the exchange was refused or cut short, if it was.
    pub note: Option<String>,
}

/// How long a client connection keeps its upstream connection while waiting for its next
/// request; after that the upstream connection goes back to the shared pool.
const HOLD: Duration = Duration::from_secs(1);

/// How long a response may sit waiting for the API server before its buffers are given back
/// (a watch between events).
const QUIET: i32 = 1000;

/// Output buffered before it is written to the client.
const OUT_BUF: usize = 8 << 10;

/// Per client connection: the credentials snapshot, the upstream connection kept between
/// back-to-back requests, and reusable buffers.
pub(super) struct ConnState<'a> {
    up: &'a Upstream,
    creds: CredCache,
    held: Option<Conn>,
    /// The head sent upstream.
    up_head: Vec<u8>,
    /// Bytes for the client, written when full or when the API server pauses.
    out: Vec<u8>,
    resp: ResponseHead,
}

impl Drop for ConnState<'_> {
    fn drop(&mut self) {
        self.up.release(&mut self.held);
    }
}

/// Serves one client connection until it closes, errs, or the proxy stops.
pub(super) fn serve(shared: &Shared, stream: Stream) {
    let limits = &shared.limits;
    let _ = stream.set_write_timeout(Some(limits.io_timeout));
    let mut reader = HeadReader::new(&stream, limits.io_timeout);
    let mut head = RequestHead::default();
    let mut state = ConnState {
        up: &shared.upstream,
        creds: CredCache::default(),
        held: None,
        up_head: Vec::new(),
        out: Vec::new(),
        resp: ResponseHead::default(),
    };
    let mut first = true;
    loop {
        let mut wait = if first {
            limits.header_timeout
        } else {
            limits.idle_timeout
        };
        first = false;
        let read = loop {
            let holding = state.held.is_some();
            let w = if holding { wait.min(HOLD) } else { wait };
            match reader.read_request(&mut head, &limits.head, w, limits.header_timeout) {
                Err(HeadError::Idle) if holding && w < wait => {
                    shared.upstream.release(&mut state.held);
                    wait -= w;
                }
                other => break other,
            }
        };
        if let Err(e) = read {
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
        let _in_flight = InFlight::enter(shared);
        let started = Instant::now();
        let outcome = handle(shared, &stream, &mut reader, &head, &mut state);
        super::audit::record(
            outcome.identity,
            head.method(),
            head.target(),
            outcome.status,
            outcome.bytes,
            started.elapsed(),
            outcome.note.as_deref(),
        );
        if !outcome.keep_alive || shared.stopping.load(Ordering::SeqCst) {
            drop(state);
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

fn handle<'h>(
    shared: &Shared,
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    head: &'h RequestHead,
    state: &mut ConnState,
) -> Outcome<'h> {
    let stopping = shared.stopping.load(Ordering::SeqCst);
    let mut out = Outcome {
        identity: "-",
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
                out.identity = "<invalid>";
            }
            return refuse(stream, out, r);
        }
    };
    out.identity = identity.describe();
    let expect_continue = match policy::expects_continue(head) {
        Ok(e) => e && has_body,
        Err(r) => {
            out.keep_alive = false;
            return refuse(stream, out, r);
        }
    };

    let exchanged = exchange(
        shared,
        stream,
        reader,
        head,
        &identity,
        framing,
        expect_continue,
        state,
    );
    let mut conn = match exchanged {
        Ok(conn) => conn,
        Err(Failure::Upstream(e)) => {
            bad_gateway(stream, head, &mut out, e.to_string());
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
    out.status = state.resp.status;
    if relay_response(shared, stream, reader, head, &mut conn, state, &mut out) {
        shared.upstream.keep(conn, &mut state.held);
    }
    out
}

/// The original's 502, byte for byte, to the client; the cause goes to the log and the audit
/// line only.
fn bad_gateway(stream: &Stream, head: &RequestHead, out: &mut Outcome, why: String) {
    log::error!("{} {}: {why}", head.method(), head.target());
    out.status = 502;
    out.keep_alive = false;
    out.note = Some(why);
    let _ = (&*stream).write_all(&policy::simple_response(502, policy::BODY_502, true, &[]));
}

fn refuse<'h>(stream: &Stream, mut out: Outcome<'h>, r: Refusal) -> Outcome<'h> {
    out.status = r.status;
    let body = policy::status_body(r.status, &r.message);
    let resp = policy::simple_response(r.status, &body, !out.keep_alive, &[]);
    if (&*stream).write_all(&resp).is_err() {
        out.keep_alive = false;
    }
    out.bytes = body.len() as u64;
    out.note = Some(r.message);
    out
}

/// Sends the request (head and streamed body) and reads the response head into `state.resp`.
/// A kept or pooled connection that turns out to be closed is replaced once, for requests
/// without a body.
#[allow(clippy::too_many_arguments)]
fn exchange(
    shared: &Shared,
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    head: &RequestHead,
    identity: &Identity,
    framing: Framing,
    expect_continue: bool,
    state: &mut ConnState,
) -> Result<Conn, Failure> {
    let up = &shared.upstream;
    let creds = up.credentials(&mut state.creds);
    let token = creds.token().map_err(Failure::Upstream)?;
    policy::upstream_head(
        &mut state.up_head,
        head,
        &up.target.authority,
        token,
        identity,
        framing,
    );
    let mut conn = up
        .checkout(creds, &mut state.held, framing == Framing::Empty)
        .map_err(Failure::Upstream)?;
    let mut retried = false;
    loop {
        let sent = if framing == Framing::Empty {
            let w = conn.io.get_mut();
            w.write_all(&state.up_head)
                .and_then(|_| w.flush())
                .map_err(|e| Failure::Upstream(UpstreamError::Io(e)))
        } else {
            send_body(
                stream,
                reader,
                &mut conn,
                &state.up_head,
                framing,
                expect_continue,
            )
        };
        let result = sent.and_then(|_| read_head(shared, stream, &mut conn, &mut state.resp));
        match result {
            Ok(()) => return Ok(conn),
            Err(Failure::Upstream(e)) if conn.reused && !retried && framing == Framing::Empty => {
                log::debug!("kept API server connection failed ({e}); retrying on a new one");
                retried = true;
                conn = up.connect_new(creds).map_err(Failure::Upstream)?;
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
    let mut w = io::BufWriter::with_capacity(16 << 10, conn.io.get_mut());
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
    resp: &mut ResponseHead,
) -> Result<(), Failure> {
    let bad = |w| Err(Failure::Upstream(UpstreamError::BadResponse(w)));
    loop {
        wait_for_upstream(conn, stream.raw_fd(), -1)?;
        match http::read_response(&mut conn.io, &shared.limits.upstream_head, resp) {
            Ok(()) => {}
            Err(HeadError::Closed) => return bad("connection closed before a response"),
            Err(HeadError::Io(e)) => return Err(Failure::Upstream(UpstreamError::Io(e))),
            Err(HeadError::Bad(w)) => return bad(w),
            Err(_) => return bad("response head too large"),
        }
        match resp.status {
            101 => return bad("unexpected protocol switch"),
            100..=199 => continue,
            _ => return Ok(()),
        }
    }
}

/// Waits until the API server has something for us, giving up if the client hangs up
/// meanwhile (so an abandoned watch does not hold a thread and a connection). `Ok(false)` if
/// `timeout_ms` (-1: none) passed first.
fn wait_for_upstream(conn: &mut Conn, client: RawFd, timeout_ms: i32) -> Result<bool, Failure> {
    if !conn.io.buffer().is_empty() || conn.io.get_mut().pending() > 0 {
        return Ok(true);
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
        // SAFETY: two valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Failure::Upstream(UpstreamError::Io(e)));
        }
        if rc == 0 {
            return Ok(false);
        }
        if fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Err(Failure::ClientGone);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
    }
}

/// Writes what `out` holds to the client.
fn flush(stream: &Stream, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        let r = (&*stream).write_all(out);
        out.clear();
        r?;
    }
    Ok(())
}

/// Streams the response to the client, flushing whenever the API server has nothing more for
/// the moment (so watch events arrive as they happen). Returns whether the upstream connection
/// may be reused.
fn relay_response(
    shared: &Shared,
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    head: &RequestHead,
    conn: &mut Conn,
    state: &mut ConnState,
    outcome: &mut Outcome,
) -> bool {
    let resp = &state.resp;
    let out = &mut state.out;
    let framing = match http::response_framing(head.method(), resp) {
        Ok(f) => f,
        Err(why) => {
            bad_gateway(stream, head, outcome, why.into());
            return false;
        }
    };
    let client_framing = match framing {
        Framing::Empty => match resp.all("content-length").next() {
            Some(v) if head.method() == "HEAD" => std::str::from_utf8(v)
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
                outcome.keep_alive = false;
                ClientFraming::None
            }
        }
    };
    if shared.stopping.load(Ordering::SeqCst) {
        outcome.keep_alive = false;
    }
    let upstream_reusable = resp.version == Version::Http11
        && framing != Framing::UntilClose
        && !resp.lists_token("connection", "close");

    let gone = |outcome: &mut Outcome, why: String| {
        outcome.keep_alive = false;
        outcome.note = Some(why);
        false
    };
    out.clear();
    if out.capacity() < OUT_BUF {
        out.reserve(OUT_BUF);
    }
    policy::client_head(out, resp, client_framing, !outcome.keep_alive);
    let chunked = client_framing == ClientFraming::Chunked;
    let mut body = Body::new(framing);
    loop {
        let step = match body.step(&mut conn.io) {
            Ok(s) => s,
            Err(e) => return cut_short(stream, head, out, outcome, e),
        };
        match step {
            Step::End => break,
            Step::NeedInput => {
                // Nothing buffered from the API server: whatever we hold goes to the client now
                // (a watch event must not wait for the next one), then we wait.
                if flush(stream, out).is_err() {
                    return gone(outcome, "client went away".into());
                }
                let mut waited = wait_for_upstream(conn, stream.raw_fd(), QUIET);
                if let Ok(false) = waited {
                    // A quiet stream (a watch between events): give the buffers back meanwhile.
                    *out = Vec::new();
                    reader.release_buffer();
                    conn.io.release();
                    waited = wait_for_upstream(conn, stream.raw_fd(), -1);
                }
                match waited {
                    Ok(_) => {}
                    Err(Failure::ClientGone) => return gone(outcome, "client went away".into()),
                    Err(Failure::Upstream(e)) => {
                        return gone(outcome, format!("response cut short: {e}"))
                    }
                    Err(Failure::ClientBody(e)) => return gone(outcome, e.to_string()),
                }
                match http::fill_more(&mut conn.io) {
                    Ok(0) => {
                        if let Err(e) = body.at_eof() {
                            return cut_short(stream, head, out, outcome, e);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return cut_short(stream, head, out, outcome, e),
                }
            }
            Step::Data(n) => {
                let piece = &conn.io.buffer()[..n];
                if chunked {
                    let _ = write!(out, "{n:x}\r\n");
                }
                if out.len() + piece.len() > OUT_BUF.max(out.capacity()) {
                    // Large pieces go straight out rather than through the buffer.
                    let written = flush(stream, out).and_then(|_| (&*stream).write_all(piece));
                    if written.is_err() {
                        return gone(outcome, "client went away".into());
                    }
                } else {
                    out.extend_from_slice(piece);
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                outcome.bytes += n as u64;
                body.consume(&mut conn.io, n);
            }
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if flush(stream, out).is_err() {
        return gone(outcome, "client went away".into());
    }
    upstream_reusable
}

/// The API server's response broke after its head went out: all we can do is end the
/// connection without a clean end of body, so the client sees the response as incomplete.
fn cut_short(
    stream: &Stream,
    head: &RequestHead,
    out: &mut Vec<u8>,
    outcome: &mut Outcome,
    e: BodyError,
) -> bool {
    log::error!(
        "{} {}: response from the API server cut short: {e}",
        head.method(),
        head.target()
    );
    outcome.keep_alive = false;
    outcome.note = Some(format!("response cut short: {e}"));
    let _ = flush(stream, out);
    false
}
