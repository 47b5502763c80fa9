//! A strict, hand-written HTTP/1.1 message-head parser and body framing, for both sides of the
//! proxy: requests from clients and responses from the API server.
//!
//! Strict on purpose (see the spec's request-smuggling list): every line must end in CRLF (a bare
//! LF is an error), obsolete line folding is an error, header names are tokens with no space
//! before the colon, header values may not hold NUL, CR, LF or any other control byte but HTAB.
//! Sizes are bounded while reading, so a hostile head never grows past the limits.

use std::io::{self, BufRead, Read};
use std::time::{Duration, Instant};

/// Size limits for a message head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest request line (or status line), without CRLF. Over it: 414.
    pub max_line: usize,
    /// Largest header section (all header lines with their CRLFs). Over it: 431.
    pub max_header_bytes: usize,
    /// Most header lines. Over it: 431.
    pub max_headers: usize,
}

/// Why a head could not be read. Each maps to one status code (or to silence).
#[derive(Debug)]
pub enum HeadError {
    /// The peer closed before sending a byte: no answer.
    Closed,
    /// Nothing arrived within the idle wait: no answer.
    Idle,
    /// Bytes arrived but the head was not complete in time: 408.
    Timeout,
    /// The request line is too long: 414.
    LineTooLong,
    /// Too many or too large header lines: 431.
    HeadersTooLarge,
    /// Malformed: 400, with what was wrong.
    Bad(&'static str),
    /// The connection failed mid-head.
    Io(io::Error),
}

impl HeadError {
    /// The status to answer with, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            HeadError::Closed | HeadError::Idle | HeadError::Io(_) => None,
            HeadError::Timeout => Some(408),
            HeadError::LineTooLong => Some(414),
            HeadError::HeadersTooLarge => Some(431),
            HeadError::Bad(_) => Some(400),
        }
    }

    pub fn message(&self) -> String {
        match self {
            HeadError::Closed => "connection closed".into(),
            HeadError::Idle => "connection idle".into(),
            HeadError::Timeout => "the request head was not received in time".into(),
            HeadError::LineTooLong => "the request line is too long".into(),
            HeadError::HeadersTooLarge => "the request headers are too large or too many".into(),
            HeadError::Bad(why) => format!("malformed request: {why}"),
            HeadError::Io(e) => format!("connection error: {e}"),
        }
    }
}

/// A byte range within a head's raw bytes.
type Span = std::ops::Range<usize>;

/// HTTP/1.0 or HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    Http10,
    #[default]
    Http11,
}

fn field_iter<'a>(
    raw: &'a [u8],
    fields: &'a [(Span, Span)],
) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
    // Names are tchar bytes: always ASCII.
    fields.iter().map(move |(n, v)| {
        (
            std::str::from_utf8(&raw[n.clone()]).unwrap_or(""),
            &raw[v.clone()],
        )
    })
}

fn field_values<'a>(
    raw: &'a [u8],
    fields: &'a [(Span, Span)],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    // Bytes compared as `str::eq_ignore_ascii_case` compares them, without a UTF-8 check of
    // every name on every lookup (a dozen lookups per proxied request).
    fields
        .iter()
        .filter(move |(n, _)| raw[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
        .map(move |(_, v)| &raw[v.clone()])
}

fn lists_token<'a>(mut values: impl Iterator<Item = &'a [u8]>, token: &str) -> bool {
    values.any(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// A parsed request head: spans into one buffer that is reused from request to request.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    raw: Vec<u8>,
    method: Span,
    target: Span,
    /// The target's length as received (more than `target` holds after [`RequestHead::compact`]).
    target_len: usize,
    pub version: Version,
    fields: Vec<(Span, Span)>,
}

impl RequestHead {
    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.raw[self.method.clone()]).unwrap_or("")
    }

    /// The origin-form target: path and query, exactly as sent.
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.raw[self.target.clone()]).unwrap_or("")
    }

    /// The target's length as received, even after [`RequestHead::compact`] shortened it.
    pub fn target_len(&self) -> usize {
        self.target_len
    }

    /// Keeps only what is needed once the request went upstream: the method, the version and
    /// the first `keep` bytes of the target (for the log); the header lines are dropped. A head
    /// near the limits (48 KiB) would otherwise stay allocated for as long as its watch lasts.
    pub fn compact(&mut self, keep: usize) {
        let (m, t) = (self.method.clone(), self.target.clone());
        let kept = t.start..t.start + t.len().min(keep);
        let mut raw = Vec::with_capacity(m.len() + 1 + kept.len());
        raw.extend_from_slice(&self.raw[m.clone()]);
        raw.push(b' ');
        raw.extend_from_slice(&self.raw[kept.clone()]);
        self.method = 0..m.len();
        self.target = m.len() + 1..raw.len();
        self.raw = raw;
        self.fields = Vec::new();
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target().split('?').next().unwrap_or("")
    }

    /// Every header line as (name as sent, value without surrounding whitespace).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        field_iter(&self.raw, &self.fields)
    }

    /// The values of every header of this name, any case.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        field_values(&self.raw, &self.fields, name)
    }

    /// Whether a comma-separated header (`Connection`) lists `token`, any case.
    pub fn lists_token(&self, name: &str, token: &str) -> bool {
        lists_token(self.all(name), token)
    }

    /// Whether the client wants the connection kept open after this request.
    pub fn keep_alive(&self) -> bool {
        match self.version {
            Version::Http11 => !self.lists_token("connection", "close"),
            Version::Http10 => false,
        }
    }

    /// Builds a head from parts (for requests of our own and for tests). Panics on invalid
    /// input, which only code of ours provides.
    pub fn from_parts(
        method: &str,
        target: &str,
        version: Version,
        headers: &[(&str, &[u8])],
    ) -> RequestHead {
        let mut head = RequestHead {
            version,
            ..RequestHead::default()
        };
        head.raw.extend_from_slice(method.as_bytes());
        head.method = 0..method.len();
        head.raw.push(b' ');
        let t = head.raw.len();
        head.raw.extend_from_slice(target.as_bytes());
        head.target = t..head.raw.len();
        head.target_len = target.len();
        for (n, v) in headers {
            let ns = head.raw.len();
            head.raw.extend_from_slice(n.as_bytes());
            let vs = head.raw.len();
            head.raw.extend_from_slice(v);
            head.fields.push((ns..vs, vs..head.raw.len()));
        }
        head
    }
}

/// A parsed response head (the API server's), its buffer reused too.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    raw: Vec<u8>,
    pub version: Version,
    pub status: u16,
    reason: Span,
    fields: Vec<(Span, Span)>,
}

impl ResponseHead {
    pub fn reason(&self) -> &str {
        std::str::from_utf8(&self.raw[self.reason.clone()]).unwrap_or("")
    }

    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        field_iter(&self.raw, &self.fields)
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        field_values(&self.raw, &self.fields, name)
    }

    pub fn lists_token(&self, name: &str, token: &str) -> bool {
        lists_token(self.all(name), token)
    }

    /// Builds a head from parts (for tests).
    pub fn from_parts(status: u16, reason: &str, headers: &[(&str, &[u8])]) -> ResponseHead {
        let mut head = ResponseHead {
            status,
            ..ResponseHead::default()
        };
        head.raw.extend_from_slice(reason.as_bytes());
        head.reason = 0..reason.len();
        for (n, v) in headers {
            let ns = head.raw.len();
            head.raw.extend_from_slice(n.as_bytes());
            let vs = head.raw.len();
            head.raw.extend_from_slice(v);
            head.fields.push((ns..vs, vs..head.raw.len()));
        }
        head
    }
}

/// `tchar` of RFC 9110.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Allowed in a field value: HTAB, SP, visible ASCII and obs-text. Never NUL, CR, LF or DEL.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Parses one header line (without CRLF) that starts at `base` in its buffer: the spans of the
/// name and of the value without surrounding whitespace.
fn parse_header_line(line: &[u8], base: usize) -> Result<(Span, Span), &'static str> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return Err("obsolete line folding");
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or("header line without a colon")?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() {
        return Err("empty header name");
    }
    if !name.iter().all(|&b| is_tchar(b)) {
        return Err("invalid byte in a header name (or whitespace before the colon)");
    }
    if !value.iter().all(|&b| is_value_byte(b)) {
        return Err("control byte in a header value");
    }
    let lead = value.len() - value.trim_ascii_start().len();
    let trimmed = value.trim_ascii().len();
    let vs = base + colon + 1 + lead;
    Ok((base..base + colon, vs..vs + trimmed))
}

/// Parses `METHOD SP origin-form SP HTTP/1.x` starting at `base`.
fn parse_request_line(line: &[u8], base: usize) -> Result<(Span, Span, Version), &'static str> {
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().ok_or("request line without a target")?;
    let version = parts.next().ok_or("request line without a version")?;
    if parts.next().is_some() {
        return Err("request line with extra spaces");
    }
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err("invalid method");
    }
    if target.first() != Some(&b'/') {
        return Err("the request target must be a path starting with /");
    }
    if !target
        .iter()
        .all(|&b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        return Err("invalid byte in the request target");
    }
    let version = parse_version(version).ok_or("unsupported HTTP version")?;
    let t = base + method.len() + 1;
    Ok((base..base + method.len(), t..t + target.len(), version))
}

fn parse_version(v: &[u8]) -> Option<Version> {
    match v {
        b"HTTP/1.1" => Some(Version::Http11),
        b"HTTP/1.0" => Some(Version::Http10),
        _ => None,
    }
}

/// Parses `HTTP/1.x SP 3DIGIT SP reason` starting at `base`.
fn parse_status_line(line: &[u8], base: usize) -> Result<(Version, u16, Span), &'static str> {
    let version = parse_version(line.get(..8).ok_or("short status line")?)
        .ok_or("unsupported HTTP version in the status line")?;
    let rest = &line[8..];
    if rest.first() != Some(&b' ') || rest.len() < 4 {
        return Err("malformed status line");
    }
    let code = &rest[1..4];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err("malformed status code");
    }
    let status = code.iter().fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'));
    if status < 100 {
        return Err("malformed status code");
    }
    let reason = match rest.get(4) {
        None => base + 12..base + 12,
        Some(b' ') => base + 13..base + line.len(),
        Some(_) => return Err("malformed status line"),
    };
    let ok = line[reason.start - base..]
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b));
    Ok((version, status, if ok { reason } else { base..base }))
}

/// Something we can read from with a deadline: sockets.
pub trait Timed {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Timed for std::net::TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Timed for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl<T: Timed + ?Sized> Timed for &T {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        (**self).set_timeout(t)
    }
}

const INITIAL_BUF: usize = 4096;

/// A buffered reader for a client connection that reads request heads under limits and
/// deadlines, then serves the body bytes (first what is already buffered).
pub struct HeadReader<S> {
    inner: S,
    buf: Vec<u8>,
    /// The buffer's size when (re)allocated.
    capacity: usize,
    pos: usize,
    end: usize,
    /// The read timeout currently set on the socket, to avoid needless syscalls.
    timeout: Option<Duration>,
    /// Timeout for body reads.
    pub io_timeout: Duration,
    /// Line offsets of the head being parsed (kept to reuse its allocation).
    lines: Vec<(usize, usize)>,
}

impl<S: Timed + Read> HeadReader<S> {
    pub fn new(inner: S, io_timeout: Duration) -> Self {
        Self::with_capacity(inner, io_timeout, INITIAL_BUF)
    }

    /// A reader whose buffer (allocated at the first read) is `capacity` bytes.
    pub fn with_capacity(inner: S, io_timeout: Duration, capacity: usize) -> Self {
        HeadReader {
            inner,
            buf: Vec::new(),
            capacity,
            pos: 0,
            end: 0,
            timeout: None,
            io_timeout,
            lines: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    fn set_timeout(&mut self, t: Duration) -> io::Result<()> {
        let t = Some(t.max(Duration::from_millis(1)));
        if self.timeout != t {
            self.inner.set_timeout(t)?;
            self.timeout = t;
        }
        Ok(())
    }

    /// Reads more bytes into the buffer, growing it up to `cap`. `Ok(0)` at EOF.
    fn read_more(&mut self, cap: usize) -> io::Result<usize> {
        if self.pos > 0 && self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else if self.buf.len() < cap {
                let new_len = (self.buf.len() * 2).min(cap);
                self.buf.resize(new_len, 0);
            } else {
                return Err(io::Error::other("buffer full"));
            }
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a request head into `head` (its buffers are reused). Waits up to `idle` for its
    /// first byte, then up to `header_timeout` for the rest.
    pub fn read_request(
        &mut self,
        head: &mut RequestHead,
        limits: &HeadLimits,
        idle: Duration,
        header_timeout: Duration,
    ) -> Result<(), HeadError> {
        // Shrink a buffer that grew for a large previous head.
        if self.pos == self.end && self.buf.len() > 4 * self.capacity {
            self.buf = vec![0; self.capacity];
            self.pos = 0;
            self.end = 0;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; self.capacity];
        }
        if self.pos == self.end {
            self.set_timeout(idle).map_err(HeadError::Io)?;
            match self.read_more(usize::MAX) {
                Ok(0) => return Err(HeadError::Closed),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Err(HeadError::Idle),
                Err(e) => return Err(HeadError::Io(e)),
            }
        }
        let deadline = Instant::now() + header_timeout;
        let mut lines = std::mem::take(&mut self.lines);
        lines.clear();
        let read = self.read_lines(&mut lines, limits, deadline, true);
        let result = read.and_then(|consumed| {
            head.raw.clear();
            head.raw
                .extend_from_slice(&self.buf[self.pos..self.pos + consumed]);
            head.fields.clear();
            let (s, e) = *lines.first().ok_or(HeadError::Bad("empty head"))?;
            let (m, t, v) = parse_request_line(&head.raw[s..e], s).map_err(HeadError::Bad)?;
            head.target_len = t.len();
            head.method = m;
            head.target = t;
            head.version = v;
            for &(s, e) in &lines[1..] {
                let f = parse_header_line(&head.raw[s..e], s).map_err(HeadError::Bad)?;
                head.fields.push(f);
            }
            self.pos += consumed;
            Ok(())
        });
        self.lines = lines;
        result
    }

    /// Gives the read buffer back while nothing is buffered (a connection about to sit idle
    /// in a long response); the next read allocates it again.
    pub fn release_buffer(&mut self) {
        if self.pos == self.end {
            self.buf = Vec::new();
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Finds the lines of one head in the buffer, reading as needed. Returns the (start, end)
    /// offsets of each line relative to `self.pos` (without CRLF, without the empty last line),
    /// and how many bytes the head took.
    fn read_lines(
        &mut self,
        lines: &mut Vec<(usize, usize)>,
        limits: &HeadLimits,
        deadline: Instant,
        is_request: bool,
    ) -> Result<usize, HeadError> {
        let cap = limits.max_line + limits.max_header_bytes + 4 + 2 * 4;
        let mut scan = HeadScan {
            limits,
            is_request,
            line_start: 0,
            scanned: 0,
            header_bytes: 0,
            leading_empty: 0,
        };
        loop {
            // Offsets are relative to pos: read_more may move the data to the start.
            if let Some(len) = scan.lines(&self.buf[self.pos..self.end], lines)? {
                return Ok(len);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HeadError::Timeout);
            }
            self.set_timeout(deadline - now).map_err(HeadError::Io)?;
            match self.read_more(cap) {
                Ok(0) if self.end == self.pos => return Err(HeadError::Closed),
                Ok(0) => return Err(HeadError::Bad("connection closed inside the request head")),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Err(HeadError::Timeout),
                Err(e) => return Err(HeadError::Io(e)),
            }
        }
    }

    /// Makes the next read wait no later than `deadline` (a request body's total deadline).
    /// `false` once the deadline has passed.
    pub fn wait_until(&mut self, deadline: Instant) -> io::Result<bool> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        self.set_timeout(deadline - now)?;
        Ok(true)
    }

    /// Gives back a buffer that grew for a large head, once nothing is left in it.
    pub fn shrink(&mut self) {
        if self.buf.len() > 4 * self.capacity {
            self.release_buffer();
        }
        if self.lines.capacity() > 64 {
            self.lines = Vec::new();
        }
    }
}

impl<S: Timed + Read> Read for HeadReader<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<S: Timed + Read> BufRead for HeadReader<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
            if self.buf.is_empty() {
                self.buf = vec![0; self.capacity];
            }
            self.read_more(self.buf.len())?;
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
    }
}

/// The longest a connection we are closing may go on sending, in total.
const LINGER: Duration = Duration::from_secs(2);
/// ... and the most it may send meanwhile.
const LINGER_BYTES: usize = 256 << 10;

/// Closes a connection after an answer without resetting it: the caller has half-closed it;
/// what the peer still sends is read and discarded (for at most [`LINGER`] in all, however
/// slowly it trickles in) so that closing with unread bytes does not turn our answer into a
/// reset.
pub fn discard_until_closed<S: Read + Timed>(mut s: S) {
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 2048];
    let mut budget = LINGER_BYTES;
    loop {
        let now = Instant::now();
        if now >= deadline || s.set_timeout(Some(deadline - now)).is_err() {
            return;
        }
        match s.read(&mut buf) {
            Ok(n) if n > 0 && n < budget => budget -= n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

/// Where the search for a head's lines stands, between reads.
struct HeadScan<'l> {
    limits: &'l HeadLimits,
    is_request: bool,
    line_start: usize,
    scanned: usize,
    header_bytes: usize,
    leading_empty: usize,
}

impl HeadScan<'_> {
    fn line_too_long(&self) -> HeadError {
        if self.is_request {
            HeadError::LineTooLong
        } else {
            HeadError::Bad("status line too long")
        }
    }

    /// Takes the complete lines in `avail` (the head's bytes so far). `Some(length)` once the
    /// empty line ending the head is found; `None` when more input is needed (after checking
    /// the partial line against the limits, so a line that never ends is refused as well).
    fn lines(
        &mut self,
        avail: &[u8],
        lines: &mut Vec<(usize, usize)>,
    ) -> Result<Option<usize>, HeadError> {
        let limits = self.limits;
        while let Some(off) = avail[self.scanned..].iter().position(|&b| b == b'\n') {
            let lf = self.scanned + off;
            self.scanned = lf + 1;
            // The limits first, as for a line still arriving: the same bytes give the same
            // error whether they come at once or a few at a time (found by fuzzing).
            self.check_partial(lines, lf - self.line_start)?;
            if lf == 0 || avail[lf - 1] != b'\r' {
                return Err(HeadError::Bad("a line ends in a bare LF"));
            }
            let (s, e) = (self.line_start, lf - 1);
            self.line_start = lf + 1;
            if avail[s..e].contains(&b'\r') {
                return Err(HeadError::Bad("a bare CR inside a line"));
            }
            if lines.is_empty() {
                if s == e {
                    // Tolerate a few empty lines before a request line (RFC 9112 2.2).
                    self.leading_empty += 1;
                    if self.leading_empty > 4 {
                        return Err(HeadError::Bad("too many empty lines"));
                    }
                    continue;
                }
                if e - s > limits.max_line {
                    return Err(self.line_too_long());
                }
                lines.push((s, e));
                continue;
            }
            if s == e {
                return Ok(Some(self.line_start));
            }
            self.header_bytes += e - s + 2;
            if self.header_bytes > limits.max_header_bytes || lines.len() > limits.max_headers {
                return Err(HeadError::HeadersTooLarge);
            }
            lines.push((s, e));
        }
        self.check_partial(lines, avail.len() - self.line_start)?;
        Ok(None)
    }

    /// Refuses a line of `len` bytes so far (its end not yet judged) that is over the limits.
    fn check_partial(&self, lines: &[(usize, usize)], len: usize) -> Result<(), HeadError> {
        let limits = self.limits;
        if lines.is_empty() {
            if len > limits.max_line + 2 {
                return Err(self.line_too_long());
            }
        } else if self.header_bytes + len > limits.max_header_bytes + 2 {
            return Err(HeadError::HeadersTooLarge);
        }
        Ok(())
    }
}

/// Whether an I/O error is a read/write timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads a response head from a buffered reader (the API server's side) into `head`. 1xx heads
/// other than 101 are skipped by the caller.
pub fn read_response<R: BufRead>(
    r: &mut R,
    limits: &HeadLimits,
    head: &mut ResponseHead,
) -> Result<(), HeadError> {
    head.raw.clear();
    head.fields.clear();
    let mut total = 0usize;
    let mut count = 0usize;
    let mut status_line: Option<Span> = None;
    loop {
        let start = head.raw.len();
        let max = if status_line.is_none() {
            limits.max_line
        } else {
            limits.max_header_bytes
        };
        match read_crlf_line(r, max, &mut head.raw) {
            Ok(true) => {}
            Ok(false) => {
                return Err(if status_line.is_none() && head.raw.is_empty() {
                    HeadError::Closed
                } else {
                    HeadError::Bad("connection closed inside the response head")
                })
            }
            Err(LineError::TooLong) => return Err(HeadError::HeadersTooLarge),
            Err(LineError::Bad(why)) => return Err(HeadError::Bad(why)),
            Err(LineError::Io(e)) => return Err(HeadError::Io(e)),
        }
        let end = head.raw.len();
        if start == end {
            if status_line.is_none() {
                return Err(HeadError::Bad("empty status line"));
            }
            break;
        }
        match status_line {
            None => status_line = Some(start..end),
            Some(_) => {
                total += end - start + 2;
                count += 1;
                if total > limits.max_header_bytes || count > limits.max_headers {
                    return Err(HeadError::HeadersTooLarge);
                }
                let f = parse_header_line(&head.raw[start..end], start).map_err(HeadError::Bad)?;
                head.fields.push(f);
            }
        }
    }
    let sl = status_line.unwrap_or_default();
    let (version, status, reason) =
        parse_status_line(&head.raw[sl.clone()], sl.start).map_err(HeadError::Bad)?;
    head.version = version;
    head.status = status;
    head.reason = reason;
    Ok(())
}

enum LineError {
    TooLong,
    Bad(&'static str),
    Io(io::Error),
}

/// Appends one CRLF-terminated line (without the CRLF) of at most `max` bytes to `out`.
/// `Ok(false)` on EOF before the line ended.
fn read_crlf_line<R: BufRead>(r: &mut R, max: usize, out: &mut Vec<u8>) -> Result<bool, LineError> {
    let start = out.len();
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineError::Io(e)),
        };
        if avail.is_empty() {
            return Ok(false);
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if out.len() - start + take > max + 2 {
            return Err(LineError::TooLong);
        }
        out.extend_from_slice(&avail[..take]);
        r.consume(take);
        if done {
            out.pop();
            if out.pop() != Some(b'\r') {
                return Err(LineError::Bad("a line ends in a bare LF"));
            }
            if out[start..].contains(&b'\r') {
                return Err(LineError::Bad("a bare CR inside a line"));
            }
            return Ok(true);
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A request's body framing. Anything ambiguous is an error (400 and close): both
/// `Content-Length` and `Transfer-Encoding`, more than one `Content-Length` (even equal ones),
/// a length that is not plain digits, a transfer coding other than exactly `chunked`.
pub fn request_framing(head: &RequestHead) -> Result<Framing, &'static str> {
    let mut cl = head.all("content-length");
    let mut te = head.all("transfer-encoding");
    let (cl1, cl2) = (cl.next(), cl.next());
    let (te1, te2) = (te.next(), te.next());
    match (cl1, te1) {
        (None, None) => Ok(Framing::Empty),
        (Some(_), Some(_)) => Err("both Content-Length and Transfer-Encoding"),
        (Some(v), None) => {
            if cl2.is_some() {
                return Err("more than one Content-Length");
            }
            match parse_length(v) {
                Some(0) => Ok(Framing::Empty),
                Some(n) => Ok(Framing::Length(n)),
                None => Err("invalid Content-Length"),
            }
        }
        (None, Some(v)) => {
            if te2.is_some() {
                Err("more than one Transfer-Encoding")
            } else if head.version == Version::Http10 {
                Err("Transfer-Encoding in an HTTP/1.0 request")
            } else if v.eq_ignore_ascii_case(b"chunked") {
                Ok(Framing::Chunked)
            } else {
                Err("unsupported Transfer-Encoding (only chunked is accepted)")
            }
        }
    }
}

/// A response's body framing (RFC 9112 6.3), given the request method.
pub fn response_framing(method: &str, head: &ResponseHead) -> Result<Framing, &'static str> {
    if method == "HEAD" || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(Framing::Empty);
    }
    if let Some(last) = head.all("transfer-encoding").last() {
        let coding = last.rsplit(|&b| b == b',').next().unwrap_or_default();
        return Ok(if coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut cl = head.all("content-length");
    let Some(first) = cl.next() else {
        return Ok(Framing::UntilClose);
    };
    let n = parse_length(first).ok_or("invalid Content-Length from upstream")?;
    if cl.any(|v| v != first) {
        return Err("conflicting Content-Length from upstream");
    }
    Ok(Framing::Length(n))
}

/// The one reuse rule for a connection whose response was read to its end: HTTP/1.1, a body
/// with an end of its own, and no `Connection: close`. Every upstream exchange follows it.
pub fn keeps_connection(head: &ResponseHead, framing: Framing) -> bool {
    head.version == Version::Http11
        && framing != Framing::UntilClose
        && !head.lists_token("connection", "close")
}

const MAX_CHUNK_LINE: usize = 1024;
const MAX_TRAILERS: usize = 8192;

/// A reader whose buffered bytes can be looked at without reading more.
pub trait Buffered: BufRead {
    fn buffered(&self) -> &[u8];
}

impl<T: Read> Buffered for io::BufReader<T> {
    fn buffered(&self) -> &[u8] {
        self.buffer()
    }
}

impl<S: Timed + Read> Buffered for HeadReader<S> {
    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }
}

/// What a body has next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many bytes of body at the start of the reader's buffer.
    Data(usize),
    /// The body is complete.
    End,
    /// Nothing buffered: the caller should flush what it wrote, then read more.
    NeedInput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data,
    DataCrlf,
    Trailers,
}

/// A message body, decoded from its framing using only what the reader has buffered, so the
/// caller decides when to block (after flushing: watch events must not sit in a buffer).
pub struct Body {
    framing: Framing,
    /// Bytes left in the current chunk (chunked) or the body (length).
    remaining: u64,
    chunk: Chunk,
    line: Vec<u8>,
    trailer_bytes: usize,
    done: bool,
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Malformed framing from the peer.
    Bad(&'static str),
    /// The peer closed early.
    Truncated,
    Io(io::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Bad(w) => write!(f, "malformed body framing: {w}"),
            BodyError::Truncated => write!(f, "the body ended early (connection closed)"),
            BodyError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl Body {
    pub fn new(framing: Framing) -> Body {
        let (remaining, done) = match framing {
            Framing::Empty => (0, true),
            Framing::Length(n) => (n, n == 0),
            Framing::Chunked | Framing::UntilClose => (0, false),
        };
        Body {
            framing,
            remaining,
            chunk: Chunk::Size,
            line: Vec::new(),
            trailer_bytes: 0,
            done,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next step, without reading from the socket.
    pub fn step<R: Buffered>(&mut self, r: &mut R) -> Result<Step, BodyError> {
        if self.done {
            return Ok(Step::End);
        }
        let avail = r.buffered().len();
        match self.framing {
            Framing::Empty => Ok(Step::End),
            Framing::Length(_) => Ok(if avail == 0 {
                Step::NeedInput
            } else {
                Step::Data(avail.min(self.remaining as usize))
            }),
            Framing::UntilClose => Ok(if avail == 0 {
                Step::NeedInput
            } else {
                Step::Data(avail)
            }),
            Framing::Chunked => loop {
                if self.chunk == Chunk::Data {
                    if self.remaining == 0 {
                        self.chunk = Chunk::DataCrlf;
                        continue;
                    }
                    let avail = r.buffered().len();
                    return Ok(if avail == 0 {
                        Step::NeedInput
                    } else {
                        Step::Data(avail.min(self.remaining as usize))
                    });
                }
                if !take_line(r, &mut self.line)? {
                    return Ok(Step::NeedInput);
                }
                match self.chunk {
                    Chunk::DataCrlf => {
                        if !self.line.is_empty() {
                            return Err(BodyError::Bad("chunk data longer than its size"));
                        }
                        self.chunk = Chunk::Size;
                    }
                    Chunk::Size => {
                        let size = parse_chunk_size(&self.line)?;
                        if size == 0 {
                            self.chunk = Chunk::Trailers;
                        } else {
                            self.remaining = size;
                            self.chunk = Chunk::Data;
                        }
                    }
                    Chunk::Trailers => {
                        if self.line.is_empty() {
                            self.done = true;
                            return Ok(Step::End);
                        }
                        parse_header_line(&self.line, 0).map_err(BodyError::Bad)?;
                        self.trailer_bytes += self.line.len();
                        if self.trailer_bytes > MAX_TRAILERS {
                            return Err(BodyError::Bad("trailers too large"));
                        }
                    }
                    Chunk::Data => {}
                }
                self.line.clear();
            },
        }
    }

    /// Marks `n` bytes of the last [`Step::Data`] as used.
    pub fn consume<R: BufRead>(&mut self, r: &mut R, n: usize) {
        r.consume(n);
        match self.framing {
            Framing::Length(_) => {
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.done = true;
                }
            }
            Framing::Chunked => self.remaining -= n as u64,
            _ => {}
        }
    }

    /// The peer closed: the end of an "until close" body, a truncation otherwise.
    pub fn at_eof(&mut self) -> Result<Step, BodyError> {
        if self.framing == Framing::UntilClose {
            self.done = true;
            Ok(Step::End)
        } else {
            Err(BodyError::Truncated)
        }
    }

    /// Like [`Body::step`] but reads (blocking) instead of returning [`Step::NeedInput`].
    pub fn next<R: Buffered>(&mut self, r: &mut R) -> Result<Step, BodyError> {
        loop {
            match self.step(r)? {
                Step::NeedInput => {
                    if fill_more(r)? == 0 {
                        return self.at_eof();
                    }
                }
                s => return Ok(s),
            }
        }
    }
}

/// Reads more into `r`'s buffer; the number of bytes now buffered (0 at EOF).
pub fn fill_more<R: BufRead>(r: &mut R) -> Result<usize, BodyError> {
    loop {
        match r.fill_buf() {
            Ok(b) => return Ok(b.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(BodyError::Io(e)),
        }
    }
}

/// Moves buffered bytes into `line` up to a LF. `Ok(true)` when the line is complete (CRLF
/// removed); `Ok(false)` when more input is needed.
fn take_line<R: Buffered>(r: &mut R, line: &mut Vec<u8>) -> Result<bool, BodyError> {
    let avail = r.buffered();
    let (take, done) = match avail.iter().position(|&b| b == b'\n') {
        Some(i) => (i + 1, true),
        None => (avail.len(), false),
    };
    if line.len() + take > MAX_CHUNK_LINE + 2 {
        return Err(BodyError::Bad("chunk line too long"));
    }
    line.extend_from_slice(&avail[..take]);
    r.consume(take);
    if !done {
        return Ok(false);
    }
    line.pop();
    if line.pop() != Some(b'\r') {
        return Err(BodyError::Bad("a line ends in a bare LF"));
    }
    if line.contains(&b'\r') {
        return Err(BodyError::Bad("a bare CR inside a line"));
    }
    Ok(true)
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let hex_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (hex, rest) = line.split_at(hex_end);
    if hex.is_empty() || hex.len() > 15 {
        return Err(BodyError::Bad("invalid chunk size"));
    }
    // Only chunk extensions may follow: `;name[=value]`, optionally after whitespace.
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && (rest[0] != b';' || !rest.iter().all(|&b| is_value_byte(b))) {
        return Err(BodyError::Bad("invalid chunk size"));
    }
    let s = std::str::from_utf8(hex).map_err(|_| BodyError::Bad("invalid chunk size"))?;
    u64::from_str_radix(s, 16).map_err(|_| BodyError::Bad("invalid chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A `Timed` over bytes, delivering them in pieces of `step`.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }
    impl Read for Pieces {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }
    impl Timed for Pieces {
        fn set_timeout(&self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    const LIMITS: HeadLimits = HeadLimits {
        max_line: 100,
        max_header_bytes: 200,
        max_headers: 5,
    };

    fn parse_steps(raw: &[u8], step: usize) -> Result<(RequestHead, Vec<u8>), HeadError> {
        let mut r = HeadReader::new(
            Pieces {
                data: raw.to_vec(),
                at: 0,
                step,
            },
            Duration::from_secs(1),
        );
        let mut head = RequestHead::default();
        r.read_request(
            &mut head,
            &LIMITS,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )?;
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        Ok((head, rest))
    }

    fn parse(raw: &[u8]) -> Result<RequestHead, HeadError> {
        let a = parse_steps(raw, 1 << 20);
        let b = parse_steps(raw, 1);
        // Byte-at-a-time delivery must give the same answer.
        assert_eq!(
            format!("{:?}", a.as_ref().map(|x| &x.0)),
            format!("{:?}", b.as_ref().map(|x| &x.0))
        );
        a.map(|x| x.0)
    }

    fn bad(raw: &[u8]) -> &'static str {
        match parse(raw) {
            Err(HeadError::Bad(w)) => w,
            other => panic!(
                "expected Bad for {:?}, got {other:?}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    #[test]
    fn parses_a_curl_request_and_keeps_the_body() {
        let raw = b"POST /api/v1/namespaces/x/configmaps?dryRun=All HTTP/1.1\r\nHost: localhost\r\nX-Aws-Eks-Identity-Arn:  arn:aws:iam::1:user/a \r\nContent-Length: 2\r\n\r\n{}";
        let (h, rest) = parse_steps(raw, 3).unwrap();
        assert_eq!(h.method(), "POST");
        assert_eq!(h.target(), "/api/v1/namespaces/x/configmaps?dryRun=All");
        assert_eq!(h.path(), "/api/v1/namespaces/x/configmaps");
        assert_eq!(h.version, Version::Http11);
        let id: Vec<_> = h.all("x-aws-eks-identity-arn").collect();
        assert_eq!(id.len(), 1);
        assert_eq!(id[0], b"arn:aws:iam::1:user/a");
        assert_eq!(request_framing(&h), Ok(Framing::Length(2)));
        assert_eq!(rest, b"{}");
    }

    #[test]
    fn rejects_smuggling_shapes() {
        assert_eq!(
            bad(b"GET / HTTP/1.1\nHost: a\r\n\r\n"),
            "a line ends in a bare LF"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"),
            "a line ends in a bare LF"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"),
            "obsolete line folding"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"),
            "control byte in a header value"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n"),
            "control byte in a header value"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n"),
            "control byte in a header value"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"),
            "a bare CR inside a line"
        );
        assert!(bad(b"GET / HTTP/1.1\r\nX : a\r\n\r\n").contains("header name"));
        assert_eq!(bad(b"GET / HTTP/1.1\r\n: a\r\n\r\n"), "empty header name");
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"),
            "header line without a colon"
        );
        assert!(bad(b"GET http://x/ HTTP/1.1\r\n\r\n").contains("target"));
        assert!(bad(b"GET /a b HTTP/1.1\r\n\r\n").contains("extra spaces"));
        assert!(bad(b"GET /a\x01 HTTP/1.1\r\n\r\n").contains("target"));
        assert!(bad(b"GET / HTTP/2.0\r\n\r\n").contains("version"));
        assert!(bad(b"G(T / HTTP/1.1\r\n\r\n").contains("method"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost: a\r\n").contains("closed inside"));
    }

    #[test]
    fn limits_give_414_and_431() {
        let table = [
            (format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(200)), 414),
            // Even when the line never ends.
            (format!("GET /{}", "a".repeat(500)), 414),
            (
                format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300)),
                431,
            ),
            (format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(300)), 431),
            (
                format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(6)),
                431,
            ),
        ];
        for (raw, status) in table {
            let got = parse(raw.as_bytes()).err().and_then(|e| e.status());
            assert_eq!(got, Some(status), "{raw:.40}");
        }
        let ok = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(5));
        assert!(parse(ok.as_bytes()).is_ok());
        assert_eq!(HeadError::LineTooLong.status(), Some(414));
        assert_eq!(HeadError::HeadersTooLarge.status(), Some(431));
    }

    #[test]
    fn closed_before_a_byte_is_silent() {
        assert!(matches!(parse(b""), Err(HeadError::Closed)));
        assert_eq!(HeadError::Closed.status(), None);
    }

    #[test]
    fn two_pipelined_requests() {
        let raw = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut r = HeadReader::new(Cursor::new(raw.to_vec()), Duration::from_secs(1));
        let d = Duration::from_secs(1);
        let mut h = RequestHead::default();
        r.read_request(&mut h, &LIMITS, d, d).unwrap();
        assert_eq!(h.target(), "/a");
        r.read_request(&mut h, &LIMITS, d, d).unwrap();
        assert_eq!(h.target(), "/b");
        assert!(matches!(
            r.read_request(&mut h, &LIMITS, d, d),
            Err(HeadError::Closed)
        ));
    }

    impl Timed for Cursor<Vec<u8>> {
        fn set_timeout(&self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    fn head(lines: &[&str]) -> RequestHead {
        let raw = format!(
            "POST / HTTP/1.1\r\n{}\r\n",
            lines.iter().map(|l| format!("{l}\r\n")).collect::<String>()
        );
        parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn request_framing_is_strict() {
        assert_eq!(request_framing(&head(&[])), Ok(Framing::Empty));
        assert_eq!(
            request_framing(&head(&["Content-Length: 0"])),
            Ok(Framing::Empty)
        );
        assert_eq!(
            request_framing(&head(&["Transfer-Encoding: Chunked"])),
            Ok(Framing::Chunked)
        );
        assert!(
            request_framing(&head(&["Content-Length: 4", "Transfer-Encoding: chunked"])).is_err()
        );
        assert!(
            request_framing(&head(&["transfer-encoding: chunked", "content-length: 4"])).is_err()
        );
        assert!(request_framing(&head(&["Content-Length: 2", "Content-Length: 5"])).is_err());
        assert!(request_framing(&head(&["Content-Length: 2", "Content-Length: 2"])).is_err());
        assert!(request_framing(&head(&["Content-Length: 2, 2"])).is_err());
        assert!(request_framing(&head(&["Content-Length: +2"])).is_err());
        assert!(request_framing(&head(&["Content-Length: 99999999999999999999"])).is_err());
        assert!(request_framing(&head(&["Transfer-Encoding: gzip, chunked"])).is_err());
        assert!(request_framing(&head(&[
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: chunked"
        ]))
        .is_err());
    }

    fn read_body(framing: Framing, raw: &[u8]) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
        let mut r = io::BufReader::with_capacity(3, Cursor::new(raw.to_vec()));
        let mut b = Body::new(framing);
        let mut out = Vec::new();
        while let Step::Data(n) = b.next(&mut r)? {
            out.extend_from_slice(&r.buffer()[..n]);
            b.consume(&mut r, n);
        }
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        Ok((out, rest))
    }

    #[test]
    fn step_never_blocks_and_asks_for_input_at_chunk_boundaries() {
        // A whole chunk buffered, the next not yet sent: Data, then NeedInput (not a blocking read).
        let mut r = io::BufReader::new(Cursor::new(b"5\r\nhello\r\n".to_vec()));
        r.fill_buf().unwrap();
        let mut b = Body::new(Framing::Chunked);
        assert_eq!(b.step(&mut r).unwrap(), Step::Data(5));
        b.consume(&mut r, 5);
        assert_eq!(b.step(&mut r).unwrap(), Step::NeedInput);
        assert_eq!(fill_more(&mut r).unwrap(), 0);
        assert!(matches!(b.at_eof(), Err(BodyError::Truncated)));
    }

    #[test]
    fn chunked_bodies_decode_and_leave_the_next_message() {
        let (body, rest) = read_body(
            Framing::Chunked,
            b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\nNEXT",
        )
        .unwrap();
        assert_eq!(body, b"hello!");
        assert_eq!(rest, b"NEXT");
        assert!(matches!(
            read_body(Framing::Chunked, b"5\r\nhelloXX\r\n0\r\n\r\n"),
            Err(BodyError::Bad(_))
        ));
        assert!(matches!(
            read_body(Framing::Chunked, b"5\nhello\r\n0\r\n\r\n"),
            Err(BodyError::Bad(_))
        ));
        assert!(matches!(
            read_body(Framing::Chunked, b"zz\r\n"),
            Err(BodyError::Bad(_))
        ));
        assert!(matches!(
            read_body(Framing::Chunked, b"-1\r\n"),
            Err(BodyError::Bad(_))
        ));
        assert!(matches!(
            read_body(Framing::Chunked, b"ffffffffffffffffff\r\n"),
            Err(BodyError::Bad(_))
        ));
        assert!(matches!(
            read_body(Framing::Chunked, b"5\r\nhel"),
            Err(BodyError::Truncated)
        ));
        let (body, rest) = read_body(Framing::Length(3), b"abcdef").unwrap();
        assert_eq!(
            (body.as_slice(), rest.as_slice()),
            (&b"abc"[..], &b"def"[..])
        );
        assert!(matches!(
            read_body(Framing::Length(9), b"abc"),
            Err(BodyError::Truncated)
        ));
        let (body, _) = read_body(Framing::UntilClose, b"all of it").unwrap();
        assert_eq!(body, b"all of it");
    }

    fn resp(raw: &[u8]) -> Result<ResponseHead, HeadError> {
        let mut h = ResponseHead::default();
        read_response(&mut Cursor::new(raw.to_vec()), &LIMITS, &mut h).map(|_| h)
    }

    #[test]
    fn response_heads_and_framing() {
        let h = resp(b"HTTP/1.1 200 OK\r\nContent-Type:  application/json \r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!((h.status, h.reason()), (200, "OK"));
        assert_eq!(h.all("content-type").next(), Some(&b"application/json"[..]));
        assert_eq!(response_framing("GET", &h), Ok(Framing::Chunked));
        assert_eq!(response_framing("HEAD", &h), Ok(Framing::Empty));
        let h = resp(b"HTTP/1.1 404 \r\nContent-Length: 7\r\n\r\n").unwrap();
        assert_eq!((h.status, h.reason()), (404, ""));
        assert_eq!(response_framing("GET", &h), Ok(Framing::Length(7)));
        let h = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n").unwrap();
        assert!(response_framing("GET", &h).is_err());
        let h = resp(b"HTTP/1.0 200\r\n\r\n").unwrap();
        assert_eq!(h.version, Version::Http10);
        assert_eq!(response_framing("GET", &h), Ok(Framing::UntilClose));
        let h = resp(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(response_framing("GET", &h), Ok(Framing::Empty));
        assert!(matches!(resp(b""), Err(HeadError::Closed)));
        assert!(matches!(
            resp(b"HTTP/1.1 200 OK\nX: y\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        assert!(matches!(
            resp(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
        assert!(matches!(
            resp(b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n"),
            Err(HeadError::Bad(_))
        ));
    }
}
