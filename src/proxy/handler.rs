//! One client connection: read request heads, apply the policy, forward to the API server and
//! stream the answer back. Keep-alive for clients that use it.
//!
//! Steady state allocates nothing per request: the request and response heads, the head sent
//! upstream and the output buffer belong to the connection and are reused; the credentials are
//! a snapshot checked with one atomic load; the upstream connection stays with a busy client
//! connection between its requests. (With musl's allocator, which has one global lock, this is
//! what lets 16 busy connections run in parallel.) Buffers that grew for a head near the limits
//! are given back as soon as the request went upstream, so a long watch holds only small ones.

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::audit;
use super::listener::Stream;
use super::policy::{self, ClientFraming, Identity, Refusal};
use super::upstream::{Conn, CredCache, Upstream, UpstreamError};
use super::Shared;
use crate::http::{
    self, Body, BodyError, Buffered, Framing, HeadError, HeadReader, RequestHead, ResponseHead,
    Step, Version,
};
use crate::metrics::{self, RefusalReason, PROXY};

/// What happened to one request, for the audit log and the connection loop.
pub(super) struct Outcome {
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

/// A head sent upstream larger than this is not kept for the next request.
const UP_HEAD_KEEP: usize = 8 << 10;

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
    /// Whom the current request runs as, for its audit line.
    identity: String,
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
        identity: String::new(),
    };
    let mut wait = limits.header_timeout;
    loop {
        if let Err(e) = next_head(shared, &mut reader, &mut head, &mut state, wait) {
            answer_bad_head(&stream, e);
            return;
        }
        wait = limits.idle_timeout;
        let keep_alive = request(shared, &stream, &mut reader, &mut head, &mut state);
        if !keep_alive || shared.stopping.load(Ordering::SeqCst) {
            drop(state);
            stream.linger_close();
            return;
        }
    }
}

/// Waits up to `wait` for the next request head. The kept upstream connection (and the thread's
/// spare memory) goes back if the client is quiet for longer than [`HOLD`].
fn next_head(
    shared: &Shared,
    reader: &mut HeadReader<&Stream>,
    head: &mut RequestHead,
    state: &mut ConnState,
    mut wait: Duration,
) -> Result<(), HeadError> {
    let limits = &shared.limits;
    loop {
        let holding = state.held.is_some();
        let w = if holding { wait.min(HOLD) } else { wait };
        match reader.read_request(head, &limits.head, w, limits.header_timeout) {
            Err(HeadError::Idle) if holding && w < wait => {
                shared.upstream.release(&mut state.held);
                give_back_memory();
                wait -= w;
            }
            other => return other,
        }
    }
}

/// A head we could not read: the status it calls for (if any), then close.
fn answer_bad_head(stream: &Stream, e: HeadError) {
    let Some(status) = e.status() else { return };
    PROXY.refused(match status {
        400 => RefusalReason::Framing,
        _ => RefusalReason::Limits,
    });
    let started = Instant::now();
    let message = e.message();
    let body = policy::status_body(status, &message);
    let _ = (&*stream).write_all(&policy::simple_response(status, &body, true, &[]));
    audit::record(&audit::Entry {
        identity: "-",
        method: "-",
        target: "-",
        target_len: 1,
        status,
        bytes: 0,
        took: started.elapsed(),
        note: Some(&message),
    });
    stream.linger_close();
}

/// Every request passes through here: answered, then recorded. Returns whether the client
/// connection stays open.
fn request(
    shared: &Shared,
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    head: &mut RequestHead,
    state: &mut ConnState,
) -> bool {
    let _in_flight = InFlight::enter(shared);
    let started = Instant::now();
    let class = metrics::method_class(head.method(), head.target());
    let watch = metrics::METHOD_CLASSES[class] == "watch";
    if watch {
        PROXY.watches.inc();
    }
    let outcome = handle(shared, stream, reader, head, state);
    if watch {
        PROXY.watches.dec();
    }
    PROXY.request(class, outcome.status, started.elapsed());
    PROXY.bytes_out.add(outcome.bytes);
    audit::record(&audit::Entry {
        identity: &state.identity,
        method: head.method(),
        target: head.target(),
        target_len: head.target_len(),
        status: outcome.status,
        bytes: outcome.bytes,
        took: started.elapsed(),
        note: outcome.note.as_deref(),
    });
    outcome.keep_alive
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
    /// The client's body framing was bad: 400, close.
    ClientBody(BodyError),
    /// The client did not send its whole body in time: 408, close.
    ClientSlow,
    /// The client went away: nothing to answer.
    ClientGone,
}

/// A request that passed the policy: how its body is framed, whom it runs as, and whether
/// the client waits for `100 Continue`.
struct Admitted<'h> {
    framing: Framing,
    identity: Identity<'h>,
    expect_continue: bool,
}

/// The policy checks, in order. A refusal says whether the connection must close (a body
/// left unread, or a request we could not frame).
fn admit<'h>(shared: &Shared, head: &'h RequestHead) -> Result<Admitted<'h>, (Refusal, bool)> {
    // Each refusal counted by its reason (label values from a fixed set).
    let counted = |why: RefusalReason| move |_: &Refusal| PROXY.refused(why);
    let framing = http::request_framing(head).map_err(|why| {
        let r = Refusal {
            status: 400,
            message: format!("malformed request: {why}"),
        };
        PROXY.refused(RefusalReason::Framing);
        (r, true)
    })?;
    let has_body = framing != Framing::Empty;
    let checked = policy::check_host(head)
        .inspect_err(counted(RefusalReason::Framing))
        .and_then(|_| policy::check_upgrade(head).inspect_err(counted(RefusalReason::Upgrade)))
        .and_then(|_| {
            policy::identity(head).inspect_err(|r| {
                PROXY.refused(match r.status {
                    401 => RefusalReason::NoIdentity,
                    _ => RefusalReason::BadIdentity,
                })
            })
        });
    let identity = checked.map_err(|r| {
        let close = has_body || r.status == 501;
        (r, close)
    })?;
    if shared.read_only {
        policy::check_read_only(head)
            .inspect_err(counted(RefusalReason::ReadOnly))
            .map_err(|r| (r, has_body))?;
    }
    let expect_continue = policy::expects_continue(head)
        .inspect_err(counted(RefusalReason::Framing))
        .map_err(|r| (r, true))?
        && has_body;
    Ok(Admitted {
        framing,
        identity,
        expect_continue,
    })
}

fn handle(
    shared: &Shared,
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    head: &mut RequestHead,
    state: &mut ConnState,
) -> Outcome {
    let stopping = shared.stopping.load(Ordering::SeqCst);
    let mut out = Outcome {
        status: 0,
        bytes: 0,
        keep_alive: head.keep_alive() && !stopping,
        note: None,
    };
    state.identity.clear();
    let exchanged = match admit(shared, head) {
        Err((r, close)) => {
            let invalid = r.status == 400 && head.all(policy::IDENTITY_HEADER).next().is_some();
            state
                .identity
                .push_str(if invalid { "<invalid>" } else { "-" });
            out.keep_alive &= !close;
            return refuse(stream, out, r);
        }
        Ok(a) => {
            state.identity.push_str(a.identity.describe());
            exchange(shared, stream, reader, head, &a, state)
        }
    };
    // Sent: what grew for a head near the limits is not needed for the rest of a long stream.
    if head.target_len() > audit::MAX_TARGET || head.headers().count() > 32 {
        head.compact(audit::MAX_TARGET);
    }
    reader.shrink();
    match exchanged {
        Ok(mut conn) => {
            out.status = state.resp.status;
            if relay_response(shared, stream, reader, head, &mut conn, state, &mut out) {
                shared.upstream.keep(conn, &mut state.held);
            }
            out
        }
        Err(f) => fail(stream, head, out, f),
    }
}

/// Answers a failed exchange.
fn fail(stream: &Stream, head: &RequestHead, mut out: Outcome, f: Failure) -> Outcome {
    let message = match f {
        Failure::Upstream(e) => {
            bad_gateway(stream, head, &mut out, e.to_string());
            return out;
        }
        Failure::ClientGone => {
            out.keep_alive = false;
            out.note = Some("client went away before the response".into());
            return out;
        }
        Failure::ClientBody(e) => {
            PROXY.refused(RefusalReason::Framing);
            (400, format!("request body: {e}"))
        }
        Failure::ClientSlow => (
            408,
            "the request body did not arrive in time (see --proxy.ioTimeout)".into(),
        ),
    };
    out.keep_alive = false;
    let (status, message) = message;
    refuse(stream, out, Refusal { status, message })
}

/// The original's 502, byte for byte, to the client; the cause goes to the log and the audit
/// line only.
fn bad_gateway(stream: &Stream, head: &RequestHead, out: &mut Outcome, why: String) {
    log::error!("{} {}: {why}", head.method(), audit_target(head));
    out.status = 502;
    out.keep_alive = false;
    out.note = Some(why);
    let _ = (&*stream).write_all(&policy::simple_response(502, policy::BODY_502, true, &[]));
}

/// The target as far as logs carry it.
fn audit_target(head: &RequestHead) -> &str {
    let t = head.target();
    t.get(..t.len().min(audit::MAX_TARGET)).unwrap_or(t)
}

fn refuse(stream: &Stream, mut out: Outcome, r: Refusal) -> Outcome {
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
/// A kept or pooled connection that closes before answering is replaced once — only for a
/// request that is safe to repeat and has no body (`GET`, `HEAD`, `OPTIONS`): anything else
/// may have run, and the client gets a 502 instead of a second execution.
fn exchange(
    shared: &Shared,
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    head: &RequestHead,
    req: &Admitted,
    state: &mut ConnState,
) -> Result<Conn, Failure> {
    let up = &shared.upstream;
    let creds = up.credentials(&mut state.creds);
    let token = creds.token().map_err(Failure::Upstream)?;
    let up_head = &mut state.up_head;
    let (framing, identity) = (req.framing, &req.identity);
    policy::upstream_head(
        up_head,
        head,
        &up.target.authority,
        token,
        identity,
        framing,
    );
    let mut conn = up
        .checkout(creds, &mut state.held)
        .map_err(Failure::Upstream)?;
    let repeatable =
        framing == Framing::Empty && matches!(head.method(), "GET" | "HEAD" | "OPTIONS");
    let mut result = send(stream, reader, &mut conn, up_head, req)
        .and_then(|_| read_head(shared, stream, &mut conn, &mut state.resp));
    if let Err(Failure::Upstream(e)) = &result {
        if conn.reused && repeatable && e.never_answered() {
            log::debug!("kept API server connection failed ({e}); retrying on a new one");
            conn = up.connect_new(creds).map_err(Failure::Upstream)?;
            result = send(stream, reader, &mut conn, up_head, req)
                .and_then(|_| read_head(shared, stream, &mut conn, &mut state.resp));
        }
    }
    if up_head.capacity() > UP_HEAD_KEEP {
        *up_head = Vec::new();
    }
    result.map(|_| conn)
}

/// Writes the head, and the body if there is one, to the API server.
fn send(
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    conn: &mut Conn,
    up_head: &[u8],
    req: &Admitted,
) -> Result<(), Failure> {
    if req.framing == Framing::Empty {
        let w = conn.io.get_mut();
        return w
            .write_all(up_head)
            .and_then(|_| w.flush())
            .map_err(|e| Failure::Upstream(UpstreamError::Io(e)));
    }
    send_body(
        stream,
        reader,
        conn,
        up_head,
        req.framing,
        req.expect_continue,
    )
}

/// Streams a request body upstream as it arrives. The whole body must arrive within the io
/// timeout: a client trickling a byte at a time does not hold a connection for hours.
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
    let deadline = Instant::now() + reader.io_timeout;
    let chunked = framing == Framing::Chunked;
    let mut w = io::BufWriter::with_capacity(16 << 10, conn.io.get_mut());
    w.write_all(up_head).map_err(up_err)?;
    let mut body = Body::new(framing);
    let client_err = |e: BodyError| match e {
        BodyError::Io(e) if http::is_timeout(&e) => Failure::ClientSlow,
        e => Failure::ClientBody(e),
    };
    loop {
        match body.step(reader).map_err(client_err)? {
            Step::End => break,
            Step::NeedInput => {
                // Pass on what we have before waiting for the client.
                w.flush().map_err(up_err)?;
                if !reader
                    .wait_until(deadline)
                    .map_err(|_| Failure::ClientGone)?
                {
                    return Err(Failure::ClientSlow);
                }
                if http::fill_more(reader).map_err(client_err)? == 0 {
                    body.at_eof().map_err(client_err)?;
                }
            }
            Step::Data(n) => {
                let piece = &reader.buffered()[..n];
                PROXY.bytes_in.add(n as u64);
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
            Err(HeadError::Closed) => return Err(Failure::Upstream(UpstreamError::ClosedEarly)),
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
/// `timeout_ms` (-1: none) passed first. Only a hang-up or an error means the client is gone:
/// a client that shut down its sending side after the request still waits for the answer.
fn wait_for_upstream(conn: &mut Conn, client: RawFd, timeout_ms: i32) -> Result<bool, Failure> {
    if !conn.io.buffered().is_empty() || conn.io.get_mut().pending() > 0 {
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
            // No events asked: poll reports POLLHUP and POLLERR regardless.
            libc::pollfd {
                fd: client,
                events: 0,
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
        if fds[1].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
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

/// How the client gets the body: our own framing, whatever the API server used.
fn client_framing(head: &RequestHead, resp: &ResponseHead, framing: Framing) -> ClientFraming {
    match framing {
        Framing::Empty => match resp.all("content-length").next() {
            Some(v) if head.method() == "HEAD" => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(ClientFraming::Length)
                .unwrap_or(ClientFraming::None),
            _ => ClientFraming::None,
        },
        Framing::Length(n) => ClientFraming::Length(n),
        Framing::Chunked | Framing::UntilClose if head.version == Version::Http11 => {
            ClientFraming::Chunked
        }
        // An HTTP/1.0 client: the body ends when we close.
        Framing::Chunked | Framing::UntilClose => ClientFraming::None,
    }
}

/// Why relaying a response stopped early.
enum Cut {
    /// The client went away, or waiting for the API server failed: the note says which.
    Gone(String),
    /// The API server's body broke.
    Broken(BodyError),
}

/// Streams the response to the client. Returns whether the upstream connection may be reused.
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
    let framing = match http::response_framing(head.method(), resp) {
        Ok(f) => f,
        Err(why) => {
            bad_gateway(stream, head, outcome, why.into());
            return false;
        }
    };
    let client = client_framing(head, resp, framing);
    if shared.stopping.load(Ordering::SeqCst)
        || client == ClientFraming::None && framing != Framing::Empty
    {
        outcome.keep_alive = false;
    }
    let out = &mut state.out;
    out.clear();
    if out.capacity() < OUT_BUF {
        out.reserve(OUT_BUF);
    }
    policy::client_head(out, resp, client, !outcome.keep_alive);
    let chunked = client == ClientFraming::Chunked;
    let relayed = relay_body(stream, reader, conn, out, framing, chunked, outcome);
    match relayed {
        Ok(()) => http::keeps_connection(resp, framing),
        Err(Cut::Gone(why)) => {
            outcome.keep_alive = false;
            outcome.note = Some(why);
            false
        }
        Err(Cut::Broken(e)) => {
            log::error!(
                "{} {}: response from the API server cut short: {e}",
                head.method(),
                audit_target(head)
            );
            // All we can do is end the connection without a clean end of body, so the client
            // sees the response as incomplete.
            outcome.keep_alive = false;
            outcome.note = Some(format!("response cut short: {e}"));
            let _ = flush(stream, out);
            false
        }
    }
}

/// The body loop: forwards what the API server has buffered, flushing to the client whenever
/// it has nothing more for the moment (so watch events arrive as they happen).
fn relay_body(
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    conn: &mut Conn,
    out: &mut Vec<u8>,
    framing: Framing,
    chunked: bool,
    outcome: &mut Outcome,
) -> Result<(), Cut> {
    let gone = |_| Cut::Gone("client went away".into());
    let mut body = Body::new(framing);
    loop {
        match body.step(&mut conn.io).map_err(Cut::Broken)? {
            Step::End => break,
            Step::NeedInput => {
                flush(stream, out).map_err(gone)?;
                await_upstream(stream, reader, conn, out)?;
                if http::fill_more(&mut conn.io).map_err(Cut::Broken)? == 0 {
                    body.at_eof().map_err(Cut::Broken)?;
                }
            }
            Step::Data(n) => {
                let piece = &conn.io.buffered()[..n];
                if chunked {
                    let _ = write!(out, "{n:x}\r\n");
                }
                if out.len() + piece.len() > OUT_BUF.max(out.capacity()) {
                    // Large pieces go straight out rather than through the buffer.
                    flush(stream, out)
                        .and_then(|_| (&*stream).write_all(piece))
                        .map_err(gone)?;
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
    flush(stream, out).map_err(gone)
}

/// A quiet thread keeps neither dead stack pages nor cached heap blocks.
fn give_back_memory() {
    super::stack::release_unused();
    crate::alloc::give_back();
}

/// Waits for more of the response; a stream quiet for a while (a watch between events) gives
/// its buffers and its thread's spare memory back meanwhile.
fn await_upstream(
    stream: &Stream,
    reader: &mut HeadReader<&Stream>,
    conn: &mut Conn,
    out: &mut Vec<u8>,
) -> Result<(), Cut> {
    let mut waited = wait_for_upstream(conn, stream.raw_fd(), QUIET);
    if let Ok(false) = waited {
        *out = Vec::new();
        reader.release_buffer();
        conn.io.release_buffer();
        conn.io.get_mut().release();
        give_back_memory();
        waited = wait_for_upstream(conn, stream.raw_fd(), -1);
    }
    match waited {
        Ok(_) => Ok(()),
        Err(Failure::Upstream(e)) => Err(Cut::Gone(format!("response cut short: {e}"))),
        Err(_) => Err(Cut::Gone("client went away".into())),
    }
}
