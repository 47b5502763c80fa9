//! Who a request runs as, and exactly which headers reach the API server. This is the security
//! boundary: everything the client sent is dropped except a short allow-list, and the headers
//! that carry authority (`Authorization`, `Impersonate-User`) are written by us alone.

use std::io::Write as _;

use crate::http::{Framing, RequestHead, ResponseHead};

/// The client header naming the user to impersonate.
pub const IDENTITY_HEADER: &str = "x-aws-eks-identity-arn";
/// Longest identity we accept.
pub const MAX_IDENTITY: usize = 2048;

/// Client headers passed upstream unchanged (any case in, canonical case out).
const FORWARDED: [&str; 4] = [
    "Accept",
    "Accept-Encoding",
    "Content-Type",
    "Content-Encoding",
];

/// Response headers that describe the connection, not the message: never passed back.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "proxy-authenticate",
];

/// Whom the API server should see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity<'a> {
    /// Impersonate this user (the validated header value).
    User(&'a str),
    /// The proxy's own service account: only ever for `GET /version`.
    ServiceAccount,
}

impl<'a> Identity<'a> {
    /// For the audit log.
    pub fn describe(&self) -> &'a str {
        match self {
            Identity::User(u) => u,
            Identity::ServiceAccount => "<serviceaccount:/version>",
        }
    }
}

/// A refusal: the status and a message for a Kubernetes `Status` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// Refuses upgrades (exec, attach, port-forward): keeping an authenticated upstream connection
/// open for another protocol is how CVE-2018-1002105 happened, and we do not support it yet.
pub fn check_upgrade(head: &RequestHead) -> Result<(), Refusal> {
    if head.all("upgrade").next().is_some() || head.lists_token("connection", "upgrade") {
        return Err(Refusal::new(
            501,
            "connection upgrades (exec, attach, port-forward) are not supported by eks-connector",
        ));
    }
    Ok(())
}

/// Checks what RFC 9112 requires of every HTTP/1.1 request: exactly one valid `Host`.
pub fn check_host(head: &RequestHead) -> Result<(), Refusal> {
    match (head.version, head.all("host").count()) {
        (_, n) if n > 1 => Err(Refusal::new(400, "more than one Host header")),
        (crate::http::Version::Http11, 0) => Err(Refusal::new(400, "missing Host header")),
        _ => Ok(()),
    }
}

/// Decides the identity: exactly one non-empty, valid `x-aws-eks-identity-arn`, or — for
/// `GET /version` only — none at all. Fails closed: a missing or empty identity never runs as
/// the proxy's service account anywhere else.
pub fn identity(head: &RequestHead) -> Result<Identity<'_>, Refusal> {
    let mut values = head.all(IDENTITY_HEADER);
    let value = values.next().unwrap_or_default();
    if values.next().is_some() {
        return Err(Refusal::new(
            400,
            format!("more than one {IDENTITY_HEADER} header"),
        ));
    }
    if value.is_empty() {
        if head.method() == "GET" && head.path() == "/version" {
            return Ok(Identity::ServiceAccount);
        }
        return Err(Refusal::new(
            401,
            format!("the {IDENTITY_HEADER} header is missing or empty: requests must name the identity to act as"),
        ));
    }
    if value.len() > MAX_IDENTITY {
        return Err(Refusal::new(
            400,
            format!("the {IDENTITY_HEADER} header is longer than {MAX_IDENTITY} bytes"),
        ));
    }
    if !value.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Refusal::new(
            400,
            format!("the {IDENTITY_HEADER} header must be printable ASCII without spaces"),
        ));
    }
    // All bytes are printable ASCII, so this never fails.
    let user = std::str::from_utf8(value).map_err(|_| Refusal::new(400, "invalid identity"))?;
    Ok(Identity::User(user))
}

/// The POSTs that only ask a question: a UI checking its own permissions. Exact paths, byte for
/// byte: any other spelling (another group or version, a subresource, `..`, `//`, percent
/// escapes, a trailing slash) is refused rather than interpreted.
const QUESTIONS: [&str; 6] = [
    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
    "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
    "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    "/apis/authentication.k8s.io/v1beta1/selfsubjectreviews",
    "/apis/authorization.k8s.io/v1beta1/selfsubjectaccessreviews",
    "/apis/authorization.k8s.io/v1beta1/selfsubjectrulesreviews",
];

/// Read-only mode (`--proxy.readOnly`): `GET` and `HEAD` (watches included) and the POSTs in
/// [`QUESTIONS`]; everything else is refused with 403 — a second line of defence should the
/// console's identities be bound to more than viewing. `GET`s through a `proxy` subresource are
/// refused too: they reach arbitrary servers in the cluster, where a GET may change things.
pub fn check_read_only(head: &RequestHead) -> Result<(), Refusal> {
    let path = head.path();
    let allowed = match head.method() {
        "GET" | "HEAD" => !is_proxy_subresource(path),
        "POST" => QUESTIONS.contains(&path),
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    Err(Refusal::new(
        403,
        format!(
            "eks-connector-proxy is read-only (--proxy.readOnly): {} {} is not forwarded; only reads and self-access reviews are",
            head.method(),
            &path[..path.len().min(256)]
        ),
    ))
}

/// `/api/v1/nodes/N/proxy…`, `/api/v1/namespaces/NS/{pods,services}/N/proxy…` and the old
/// `/api/v1/proxy/…` form.
fn is_proxy_subresource(path: &str) -> bool {
    let seg: Vec<&str> = path.split('/').collect();
    matches!(
        seg.as_slice(),
        ["", "api", "v1", "proxy", ..]
            | ["", "api", "v1", "nodes", _, "proxy", ..]
            | [
                "",
                "api",
                "v1",
                "namespaces",
                _,
                "pods" | "services",
                _,
                "proxy",
                ..
            ]
    )
}

/// The `Expect` header: `Ok(true)` for `100-continue`, an error for anything else.
pub fn expects_continue(head: &RequestHead) -> Result<bool, Refusal> {
    let mut want = false;
    for v in head.all("expect") {
        if v.eq_ignore_ascii_case(b"100-continue") {
            want = true;
        } else {
            return Err(Refusal::new(417, "only Expect: 100-continue is supported"));
        }
    }
    Ok(want && head.version == crate::http::Version::Http11)
}

/// Whether a token is safe to put in a header line (no CR/LF/control bytes, no spaces).
pub fn valid_token(token: &[u8]) -> bool {
    !token.is_empty() && token.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Writes the request head sent upstream into `out` (cleared first). Only our headers and the
/// allow-listed client headers; the body framing is ours (`Content-Length` or chunked),
/// whatever the client used.
pub fn upstream_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    host: &str,
    token: &[u8],
    identity: &Identity,
    framing: Framing,
) {
    out.clear();
    out.extend_from_slice(head.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nAuthorization: Bearer ");
    out.extend_from_slice(token);
    out.extend_from_slice(b"\r\n");
    if let Identity::User(user) = identity {
        out.extend_from_slice(b"Impersonate-User: ");
        out.extend_from_slice(user.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"User-Agent: eks-connector/");
    out.extend_from_slice(crate::VERSION.as_bytes());
    out.extend_from_slice(b"\r\n");
    for name in FORWARDED {
        for v in head.all(name) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Empty => {
            // A body-less method needs no framing; others say so explicitly.
            if !matches!(head.method(), "GET" | "HEAD" | "DELETE" | "OPTIONS") {
                out.extend_from_slice(b"Content-Length: 0\r\n");
            }
        }
        Framing::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        Framing::Chunked | Framing::UntilClose => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the response head sent to the client to `out`: the API server's status and
/// end-to-end headers, with our own framing and connection handling.
pub fn client_head(out: &mut Vec<u8>, resp: &ResponseHead, framing: ClientFraming, close: bool) {
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, resp.reason());
    for (name, value) in resp.headers() {
        let hop = HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
            // Headers the API server lists in its Connection header are hop-by-hop too.
            || resp.lists_token("connection", name);
        if hop {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ClientFraming::None => {}
        ClientFraming::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How we frame a response body towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// No framing header: no body, or a body delimited by closing (HTTP/1.0 clients).
    None,
    Length(u64),
    Chunked,
}

/// The original connector's 502 body, byte for byte (clients may match on it).
pub const BODY_502: &str = "{\"status\": 502, \"message\": \"eks connector failed to proxy the request to kubernetes api. check eks connector logs for details.\"}";

/// The standard reason phrase.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        408 => "Request Timeout",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A Kubernetes `Status` object (what kubectl and client-go understand) for our own refusals.
pub fn status_body(status: u16, message: &str) -> String {
    let reason = match status {
        400 | 417 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        408 => "Timeout",
        414 | 431 => "RequestEntityTooLarge",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": status,
    })
    .to_string()
}

/// A complete response of ours (a refusal or the 502), with `Content-Length`.
pub fn simple_response(status: u16, body: &str, close: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Version;

    fn req(method: &str, target: &str, headers: &[(&str, &[u8])]) -> RequestHead {
        RequestHead::from_parts(method, target, Version::Http11, headers)
    }

    fn up_head(r: &RequestHead, host: &str, token: &[u8], id: &Identity, f: Framing) -> String {
        let mut out = Vec::new();
        upstream_head(&mut out, r, host, token, id, f);
        String::from_utf8(out).unwrap()
    }

    const ARN: &[u8] = b"arn:aws:iam::123456789012:user/alice";

    #[test]
    fn identity_is_required_except_for_get_version() {
        let r = req("GET", "/api/v1/pods", &[]);
        assert_eq!(identity(&r).unwrap_err().status, 401);
        let r = req("GET", "/api/v1/pods", &[("X-AWS-EKS-Identity-ARN", b"")]);
        assert_eq!(identity(&r).unwrap_err().status, 401);
        assert_eq!(
            identity(&req("GET", "/version", &[])),
            Ok(Identity::ServiceAccount)
        );
        assert_eq!(
            identity(&req("GET", "/version?timeout=32s", &[])),
            Ok(Identity::ServiceAccount)
        );
        assert_eq!(
            identity(&req("POST", "/version", &[])).unwrap_err().status,
            401
        );
        assert_eq!(
            identity(&req("GET", "/version/x", &[])).unwrap_err().status,
            401
        );
        assert_eq!(
            identity(&req("GET", "/versions", &[])).unwrap_err().status,
            401
        );
        let r = req("GET", "/version", &[("x-aws-eks-identity-arn", ARN)]);
        assert_eq!(
            identity(&r),
            Ok(Identity::User(std::str::from_utf8(ARN).unwrap()))
        );
    }

    #[test]
    fn identity_must_be_single_printable_and_bounded() {
        let two = req(
            "GET",
            "/",
            &[
                ("x-aws-eks-identity-arn", ARN),
                ("X-Aws-Eks-Identity-Arn", ARN),
            ],
        );
        assert_eq!(identity(&two).unwrap_err().status, 400);
        for bad in [
            &b"a b"[..],
            b"a\tb",
            b"a\x00b",
            b"a\rb",
            b"a\nb",
            b"a\x7fb",
            "é".as_bytes(),
        ] {
            let r = req("GET", "/", &[("x-aws-eks-identity-arn", bad)]);
            assert_eq!(identity(&r).unwrap_err().status, 400, "{bad:?}");
        }
        let long = vec![b'a'; MAX_IDENTITY + 1];
        assert_eq!(
            identity(&req("GET", "/", &[("x-aws-eks-identity-arn", &long)]))
                .unwrap_err()
                .status,
            400
        );
        let max = vec![b'a'; MAX_IDENTITY];
        assert!(identity(&req("GET", "/", &[("x-aws-eks-identity-arn", &max)])).is_ok());
    }

    #[test]
    fn only_allow_listed_headers_reach_upstream() {
        let r = req(
            "POST",
            "/api/v1/namespaces/a/configmaps?x=1",
            &[
                ("Host", b"localhost"),
                ("x-aws-eks-identity-arn", ARN),
                ("Impersonate-Group", b"system:masters"),
                ("impersonate-user", b"admin"),
                ("IMPERSONATE-UID", b"1"),
                ("Impersonate-Extra-Scopes", b"x"),
                ("Authorization", b"Bearer stolen"),
                ("Proxy-Authorization", b"Basic x"),
                ("Cookie", b"a=b"),
                ("X-Forwarded-For", b"1.2.3.4"),
                ("Connection", b"Impersonate-User, Authorization"),
                ("accept", b"application/json;as=Table;v=v1;g=meta.k8s.io"),
                ("Content-Type", b"application/json"),
                ("Content-Length", b"2"),
                ("Transfer-Encoding", b"chunked"),
            ],
        );
        let text = up_head(
            &r,
            "kubernetes.default.svc:443",
            b"tok",
            &identity(&r).unwrap(),
            Framing::Length(2),
        );
        assert_eq!(
            text,
            format!(
                "POST /api/v1/namespaces/a/configmaps?x=1 HTTP/1.1\r\nHost: kubernetes.default.svc:443\r\n\
                 Authorization: Bearer tok\r\nImpersonate-User: arn:aws:iam::123456789012:user/alice\r\n\
                 User-Agent: eks-connector/{}\r\nAccept: application/json;as=Table;v=v1;g=meta.k8s.io\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\n\r\n",
                crate::VERSION
            )
        );
    }

    #[test]
    fn version_as_service_account_has_no_impersonation_and_chunked_is_ours() {
        let r = req("GET", "/version", &[("Host", b"x")]);
        let text = up_head(&r, "h", b"t", &Identity::ServiceAccount, Framing::Empty);
        assert!(!text.to_ascii_lowercase().contains("impersonate"));
        assert!(!text.contains("Content-Length"));
        let r = req("PUT", "/x", &[]);
        let text = up_head(&r, "h", b"t", &Identity::ServiceAccount, Framing::Chunked);
        assert!(text.contains("Transfer-Encoding: chunked\r\n"));
        let text = up_head(&r, "h", b"t", &Identity::ServiceAccount, Framing::Empty);
        assert!(text.contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn upgrades_and_expectations() {
        assert_eq!(
            check_upgrade(&req("GET", "/", &[("Upgrade", b"SPDY/3.1")]))
                .unwrap_err()
                .status,
            501
        );
        assert_eq!(
            check_upgrade(&req("GET", "/", &[("Connection", b"keep-alive, Upgrade")]))
                .unwrap_err()
                .status,
            501
        );
        assert!(check_upgrade(&req("GET", "/", &[("Connection", b"keep-alive")])).is_ok());
        assert_eq!(
            expects_continue(&req("POST", "/", &[("Expect", b"100-Continue")])),
            Ok(true)
        );
        assert_eq!(
            expects_continue(&req("POST", "/", &[("Expect", b"magic")]))
                .unwrap_err()
                .status,
            417
        );
        assert_eq!(check_host(&req("GET", "/", &[])).unwrap_err().status, 400);
        assert_eq!(
            check_host(&req("GET", "/", &[("Host", b"a"), ("host", b"b")]))
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn response_headers_lose_hop_by_hop_ones() {
        let resp = ResponseHead::from_parts(
            200,
            "OK",
            &[
                ("Content-Type", b"application/json"),
                ("Audit-Id", b"abc"),
                ("Connection", b"X-Secret"),
                ("X-Secret", b"1"),
                ("Transfer-Encoding", b"chunked"),
                ("Content-Length", b"5"),
            ],
        );
        let mut out = Vec::new();
        client_head(&mut out, &resp, ClientFraming::Chunked, true);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nAudit-Id: abc\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn status_bodies_are_kubernetes_status_objects() {
        let v: serde_json::Value =
            serde_json::from_str(&status_body(401, "no \"identity\"")).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["code"], 401);
        assert_eq!(v["reason"], "Unauthorized");
        assert_eq!(v["message"], "no \"identity\"");
        let r = String::from_utf8(simple_response(502, BODY_502, true, &[])).unwrap();
        assert!(r.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(r.ends_with(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{BODY_502}",
            BODY_502.len()
        )));
    }

    #[test]
    fn read_only_allows_reads_and_exact_self_reviews() {
        let ok = |m: &str, t: &str| check_read_only(&req(m, t, &[])).is_ok();
        assert!(ok("GET", "/api/v1/pods?watch=1"));
        assert!(ok("HEAD", "/api/v1/namespaces/x/configmaps/y"));
        assert!(ok(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        ));
        assert!(ok(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews?x=1"
        ));
        assert!(ok(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews"
        ));
        for (m, t) in [
            ("POST", "/api/v1/namespaces/x/configmaps"),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/",
            ),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/../x",
            ),
            ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews"),
            ("PUT", "/api/v1/namespaces/x/configmaps/y"),
            ("DELETE", "/api/v1/namespaces/x/configmaps/y"),
            ("OPTIONS", "/api"),
            ("get", "/api"),
            ("GET", "/api/v1/namespaces/x/pods/p/proxy"),
            ("GET", "/api/v1/namespaces/x/services/s:80/proxy/a"),
            ("GET", "/api/v1/nodes/n/proxy/run"),
            ("GET", "/api/v1/proxy/namespaces/x/services/s"),
        ] {
            let r = check_read_only(&req(m, t, &[])).unwrap_err();
            assert_eq!(r.status, 403, "{m} {t}");
            assert!(r.message.contains("read-only"), "{}", r.message);
        }
        // A namespace or object named "proxy" is not a proxy subresource.
        assert!(ok("GET", "/api/v1/namespaces/proxy/pods/proxy"));
    }
}
