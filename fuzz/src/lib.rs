//! The fuzz targets' bodies, one function per target. `fuzz_targets/*.rs` hand them libFuzzer's
//! inputs; `tests/fuzz_corpus.rs` (a normal, stable `cargo test`) includes this file and feeds
//! them every committed corpus file, so a crash once found stays fixed. Each function panics
//! when an invariant breaks: that is the finding.

use std::io::{self, Read};
use std::time::Duration;

use eks_connector::http::{
    self, Body, Framing, HeadLimits, HeadReader, RequestHead, ResponseHead, Step, Timed, Version,
};
use eks_connector::proxy::policy::{self, ClientFraming, Identity};

/// Smaller than the proxy's defaults so that inputs of a few KiB reach every limit.
const LIMITS: HeadLimits = HeadLimits {
    max_line: 512,
    max_header_bytes: 2048,
    max_headers: 24,
};
const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &[u8] = b"eyJhbGciOiJSUzI1NiJ9.fuzz-token";
const HOST: &str = "kubernetes.default.svc:443";

/// In-memory bytes delivered `step` at a time, as a slow socket would.
struct Trickle<'a> {
    data: &'a [u8],
    at: usize,
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(out.len()).min(self.data.len() - self.at);
        out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Timed for Trickle<'_> {
    fn set_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// A parsed head in comparable form: method, target, version, headers.
type Parsed = (String, String, Version, Vec<(String, Vec<u8>)>);

fn parse_request(
    data: &[u8],
    step: usize,
    limits: &HeadLimits,
) -> (Result<RequestHead, String>, usize) {
    let mut r = HeadReader::new(Trickle { data, at: 0, step }, WAIT);
    let mut head = RequestHead::default();
    let result = r.read_request(&mut head, limits, WAIT, WAIT);
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    let consumed = data.len() - rest.len();
    (result.map(|_| head).map_err(|e| e.message()), consumed)
}

fn parsed(h: &RequestHead) -> Parsed {
    let headers = h
        .headers()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
    (h.method().into(), h.target().into(), h.version, headers)
}

/// The request head parser: never panics, answers the same whether the bytes arrive at once or
/// a few at a time, and what it accepts holds no byte that could split a line downstream.
pub fn request_head(data: &[u8]) {
    let step = data.first().map_or(1, |b| usize::from(*b % 7) + 1);
    let (whole, _) = parse_request(data, usize::MAX, &LIMITS);
    let (pieces, _) = parse_request(data, step, &LIMITS);
    assert_eq!(
        whole.as_ref().map(parsed),
        pieces.as_ref().map(parsed),
        "whole vs {step} at a time"
    );
    let Ok(head) = whole else { return };
    assert!(head.target().starts_with('/'));
    assert!(head.target_len() <= LIMITS.max_line);
    assert!(head.headers().count() <= LIMITS.max_headers);
    for (name, value) in head.headers() {
        assert!(
            !name.is_empty() && name.bytes().all(http::is_tchar),
            "{name:?}"
        );
        assert!(!value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0));
    }
    let _ = http::request_framing(&head);
    let _ = policy::check_read_only(&head);
    let method = head.method().to_string();
    let mut compacted = head.clone();
    compacted.compact(16);
    assert_eq!(compacted.method(), method);
    assert_eq!(compacted.target_len(), head.target_len());
    assert!(head.target().starts_with(compacted.target()));
}

/// Decodes a body with a reader of `cap` bytes; the decoded bytes or the error's text.
fn decode(framing: Framing, data: &[u8], cap: usize) -> Result<Vec<u8>, String> {
    let mut r = io::BufReader::with_capacity(cap, data);
    let mut body = Body::new(framing);
    let mut out = Vec::new();
    loop {
        match body.next(&mut r).map_err(|e| e.to_string())? {
            Step::Data(n) => {
                out.extend_from_slice(&r.buffer()[..n]);
                body.consume(&mut r, n);
            }
            Step::End => return Ok(out),
            Step::NeedInput => unreachable!("next() reads instead"),
        }
    }
}

/// Chunked (and length) decoding: the answer does not depend on how the bytes are buffered,
/// and what decodes re-encodes to the same bytes.
pub fn chunked(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cap = usize::from(first % 16) + 1;
    let framing = match first >> 6 {
        0 | 1 => Framing::Chunked,
        2 => Framing::Length(u64::from(first & 0x3f)),
        _ => Framing::UntilClose,
    };
    let small = decode(framing, rest, cap);
    let large = decode(framing, rest, 1 << 16);
    assert_eq!(small, large, "buffer of {cap} vs 64 KiB");
    if let (Framing::Chunked, Ok(body)) = (framing, small) {
        let mut again = Vec::new();
        if !body.is_empty() {
            again.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            again.extend_from_slice(&body);
            again.extend_from_slice(b"\r\n");
        }
        again.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(
            decode(Framing::Chunked, &again, 7).as_deref(),
            Ok(&body[..])
        );
    }
}

type ShownResponse = (u16, Version, String, Vec<(String, Vec<u8>)>);

fn show(r: &Result<ResponseHead, String>) -> Result<ShownResponse, String> {
    r.as_ref().map_err(Clone::clone).map(|h| {
        let hs = h.headers().map(|(n, v)| (n.into(), v.to_vec())).collect();
        (h.status, h.version, h.reason().to_string(), hs)
    })
}

fn read_response(data: &[u8], cap: usize) -> Result<ResponseHead, String> {
    let mut r = io::BufReader::with_capacity(cap, data);
    let mut head = ResponseHead::default();
    http::read_response(&mut r, &LIMITS, &mut head)
        .map(|_| head)
        .map_err(|e| e.message())
}

/// Response heads and framing: what we would send the client after an accepted response head
/// parses again, with the same status, one framing header at most and nothing hop-by-hop.
pub fn response(data: &[u8]) {
    let cap = data.first().map_or(1, |b| usize::from(*b % 9) + 1);
    let a = read_response(data, 1 << 16);
    let b = read_response(data, cap);
    assert_eq!(show(&a), show(&b), "64 KiB vs {cap} byte buffer");
    let Ok(resp) = a else { return };
    for method in ["GET", "HEAD"] {
        let Ok(framing) = http::response_framing(method, &resp) else {
            continue;
        };
        let _ = http::keeps_connection(&resp, framing);
        let client = match framing {
            Framing::Empty => ClientFraming::None,
            Framing::Length(n) => ClientFraming::Length(n),
            _ => ClientFraming::Chunked,
        };
        let mut out = Vec::new();
        policy::client_head(&mut out, &resp, client, true);
        let big = HeadLimits {
            max_line: 1 << 16,
            max_header_bytes: 1 << 20,
            max_headers: 1 << 10,
        };
        let mut again = ResponseHead::default();
        http::read_response(&mut io::BufReader::new(&out[..]), &big, &mut again)
            .unwrap_or_else(|e| panic!("our own head does not parse: {}", e.message()));
        assert_eq!(again.status, resp.status);
        let framing_headers = again
            .headers()
            .filter(|(n, _)| {
                n.eq_ignore_ascii_case("content-length")
                    || n.eq_ignore_ascii_case("transfer-encoding")
            })
            .count();
        assert!(framing_headers <= 1, "{}", String::from_utf8_lossy(&out));
        for hop in [
            "keep-alive",
            "upgrade",
            "trailer",
            "te",
            "proxy-authenticate",
        ] {
            assert!(
                again.all(hop).next().is_none(),
                "{hop} passed to the client"
            );
        }
        assert_eq!(again.all("connection").count(), 1);
    }
}

/// Headers we may send upstream, and nothing else.
const UPSTREAM_HEADERS: [&str; 10] = [
    "host",
    "authorization",
    "impersonate-user",
    "user-agent",
    "accept",
    "accept-encoding",
    "content-type",
    "content-encoding",
    "content-length",
    "transfer-encoding",
];

/// The identity and header policy, as an invariant: whatever the client sent, a request we
/// forward carries exactly one `Impersonate-User` equal to the validated identity (none only
/// for `GET /version`), exactly our `Authorization`, one `Host`, and no other header than the
/// allow-list — in particular nothing from the deny list (`Impersonate-Group`, `-Uid`,
/// `-Extra-*`, the client's `Authorization`).
pub fn policy(data: &[u8]) {
    let (Ok(head), _) = parse_request(data, usize::MAX, &LIMITS) else {
        return;
    };
    let Ok(framing) = http::request_framing(&head) else {
        return;
    };
    let checked = policy::check_host(&head)
        .and_then(|_| policy::check_upgrade(&head))
        .and_then(|_| policy::identity(&head));
    let Ok(identity) = checked else { return };
    let mut out = Vec::new();
    policy::upstream_head(&mut out, &head, HOST, TOKEN, &identity, framing);
    let big = HeadLimits {
        max_line: 1 << 16,
        max_header_bytes: 1 << 20,
        max_headers: 1 << 10,
    };
    let (sent, consumed) = parse_request(&out, usize::MAX, &big);
    let sent = sent.unwrap_or_else(|e| panic!("our upstream head does not parse: {e}"));
    assert_eq!(consumed, out.len(), "our upstream head has trailing bytes");
    assert_eq!(sent.method(), head.method());
    assert_eq!(sent.target(), head.target());
    let one = |name: &str| -> Vec<u8> {
        let v: Vec<&[u8]> = sent.all(name).collect();
        assert_eq!(v.len(), 1, "{name}: {v:?}");
        v[0].to_vec()
    };
    assert_eq!(one("host"), HOST.as_bytes());
    assert_eq!(
        one("authorization"),
        [b"Bearer ".as_slice(), TOKEN].concat()
    );
    match identity {
        Identity::User(user) => assert_eq!(one("impersonate-user"), user.as_bytes()),
        Identity::ServiceAccount => {
            assert!(sent.all("impersonate-user").next().is_none());
            assert_eq!((head.method(), head.path()), ("GET", "/version"));
        }
    }
    for (name, _) in sent.headers() {
        let lower = name.to_ascii_lowercase();
        assert!(
            UPSTREAM_HEADERS.contains(&lower.as_str()),
            "{name} forwarded"
        );
    }
    if policy::check_read_only(&head).is_ok() {
        assert!(matches!(head.method(), "GET" | "HEAD" | "POST"));
    }
}

/// Request heads we accept, httparse accepts too, with the same method, target, version and
/// header list, and the same length: two parsers in a chain never disagree on where a head
/// ends or what it says (the root of request smuggling).
pub fn differential(data: &[u8]) {
    let big = HeadLimits {
        max_line: 8192,
        max_header_bytes: 8192,
        max_headers: 64,
    };
    let (Ok(ours), consumed) = parse_request(data, usize::MAX, &big) else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut theirs = httparse::Request::new(&mut headers);
    let status = theirs.parse(data);
    let Ok(httparse::Status::Complete(n)) = status else {
        panic!(
            "httparse says {status:?} to a head we accept: {:?}",
            parsed(&ours)
        );
    };
    assert_eq!(n, consumed, "head length");
    assert_eq!(theirs.method, Some(ours.method()));
    assert_eq!(theirs.path, Some(ours.target()));
    let version = match ours.version {
        Version::Http10 => 0,
        Version::Http11 => 1,
    };
    assert_eq!(theirs.version, Some(version));
    let ours_h: Vec<(&str, &[u8])> = ours.headers().collect();
    let theirs_h: Vec<(&str, &[u8])> = theirs
        .headers
        .iter()
        .map(|h| (h.name, h.value.trim_ascii()))
        .collect();
    assert_eq!(ours_h, theirs_h);
}

/// The Vault's three files (and the activation marker's JSON): never a panic, and a
/// registration that parses keeps its bytes exactly.
pub fn vault(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let m = parts.next().unwrap_or_default().to_vec();
    let r = parts.next().unwrap_or_default().to_vec();
    let f = parts.next().unwrap_or_default().to_vec();
    if let Ok(reg) = eks_connector::state::Registration::from_bytes(
        m.clone(),
        r.clone(),
        f.clone(),
        ("manifest", "regkey", "fingerprint"),
    ) {
        assert_eq!(
            (reg.manifest(), reg.regkey(), reg.fingerprint()),
            (&m[..], &r[..], &f[..])
        );
        assert!(!reg.instance_id().is_empty() && !reg.region().is_empty());
        assert_eq!(reg.private_key_der().first(), Some(&0x30));
    }
    let _ = eks_connector::state::parse_connector_config(data, "connector-config");
}

/// The state Secret as the API server returns it: never a panic; what parses writes back
/// to the same data, labels and type.
pub fn secret(data: &[u8]) {
    use eks_connector::kube::Secret;
    let Ok(s) = Secret::from_json(data) else {
        return;
    };
    let _ = eks_connector::state::from_secret(&s);
    let again = Secret::from_json(&s.to_json()).expect("our own Secret JSON parses");
    assert_eq!(again.data, s.data);
    assert_eq!(again.labels, s.labels);
    assert_eq!(again.type_, s.type_);
}

/// `NO_PROXY` matching: never a panic; loopback is never proxied; `*` and an exact host entry
/// always bypass the proxy.
pub fn no_proxy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{1}');
    let rules = parts.next().unwrap_or_default().to_string();
    let host = parts.next().unwrap_or("example.com").to_string();
    let port = parts.next().map_or(443, |p| {
        p.bytes()
            .fold(0u16, |a, b| a.wrapping_mul(31).wrapping_add(u16::from(b)))
    });
    let egress = eks_connector::ssm::EgressProxy::from_vars(|k| match k {
        "HTTPS_PROXY" => Some("http://proxy.internal:3128".into()),
        "NO_PROXY" => Some(rules.clone()),
        _ => None,
    });
    let via = egress.proxy_for(&host, port);
    for lo in ["localhost", "127.0.0.1", "[::1]", "::1"] {
        assert_eq!(egress.proxy_for(lo, port), None, "{lo} proxied");
    }
    let entries: Vec<&str> = rules.split(',').map(str::trim).collect();
    if entries.contains(&"*") {
        assert_eq!(via, None, "* did not bypass for {host}");
    }
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if plain && entries.contains(&host.as_str()) {
        assert_eq!(via, None, "{host} listed in {rules:?} but proxied");
    }
}
