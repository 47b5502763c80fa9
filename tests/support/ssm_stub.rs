//! A strict local stand-in for AWS SSM, over real TLS (rustls) with a test CA and server
//! certificate made by the `openssl` CLI, plus a tiny HTTP CONNECT proxy.
//!
//! RegisterManagedInstance (our init's call) is described below. The SSM agent's own calls,
//! `RequestManagedInstanceRoleToken` and `UpdateManagedInstancePublicKey`, are checked as AWS
//! checks them: a SigV4-shaped `Authorization` whose signature is RSA-PSS (SHA-256, MGF1-SHA-256,
//! salt 32) over the SigV4 string to sign, verified with the public key SSM holds for the
//! instance named in the credential (the registered one, then each rotated one — never an older
//! one), `X-Amz-Date` within 15 minutes, the body's hash, and the fingerprint the instance
//! registered with; bodies may be chunked, as the agent sends them. A refused call is answered
//! as AWS would and recorded as a violation. The MGS control channel
//! (`/v1/control-channel/<id>`) is answered 500: the worker keeps retrying, harmlessly.
//!
//! Strict the way AWS is: exact `X-Amz-Target` and `Content-Type`, no signing headers, exactly
//! the five body fields with their minimum lengths, a UUID v4 fingerprint, and a `PublicKey` that
//! must parse as an RSA-2048 SubjectPublicKeyInfo. Anything else is answered with a 400
//! `ValidationException` *and* recorded as a violation, which tests assert is empty. The
//! activation pair must be the expected one, or the answer is `InvalidActivation`, as AWS does.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::{Digest, Sha256};
use rsa::traits::PublicKeyParts;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

/// The host name the server certificate also carries, for tests that go through the proxy.
pub const TEST_HOST: &str = "ssm.example.test";

/// Test CA, server certificate and key, made once per test binary.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed to make the test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "ssm-stub-pki-{}-{}",
            std::process::id(),
            eks_connector::random::uuid_v4().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("ext.cnf"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,DNS:{TEST_HOST},IP:127.0.0.1\n"
            ),
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj",
                "/CN=eks-connector test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            &dir,
            &[
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
            ],
        );
        openssl(
            &dir,
            &[
                "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf",
            ],
        );
        Pki {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            dir,
        }
    })
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with a fresh `mi-…` id (or this one).
    Success(Option<String>),
    /// An AWS JSON 1.1 error. `message_key` is `message` or `Message`.
    Error {
        status: u16,
        type_: String,
        message: String,
        message_key: &'static str,
    },
    /// Read the request (it is recorded at once), wait this long, then succeed.
    Delay(Duration),
    /// Read the request and never answer.
    Hang,
    /// Read the request and close the connection without an answer.
    Close,
    /// Answer exactly this status and body (odd answers: random bytes, wrong types, huge).
    Raw { status: u16, body: Vec<u8> },
}

impl Reply {
    /// An error as AWS sends it, with the usual namespace prefix in `__type`.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::Error {
            status,
            type_: format!("com.amazonaws.ssm#{code}"),
            message: message.into(),
            message_key: "message",
        }
    }
    pub fn throttle() -> Reply {
        Reply::error(400, "ThrottlingException", "Rate exceeded")
    }
}

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// The public key SSM received (SPKI DER), when it was valid.
    pub public_key_der: Option<Vec<u8>>,
    /// What the stub answered: the instance id on success.
    pub instance_id: Option<String>,
    pub request_id: String,
    /// The `X-Amz-Target` action without its prefix, or `control-channel`.
    pub action: String,
    /// The HTTP status answered.
    pub status: u16,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// For a signed call that verified: the instance and which of its keys (0 = registered).
    pub signed_by: Option<(String, usize)>,
    /// When the request was read.
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
    violations: Vec<String>,
    activation_id: String,
    activation_code: String,
    /// What SSM holds per managed instance.
    instances: HashMap<String, Instance>,
    /// Make the next successful token answer say `UpdateKeyPair: true`.
    rotate_next: bool,
    /// Lifetime of the credentials a token answer gives (the agent refreshes at half of it).
    token_lifetime: Duration,
}

/// What SSM holds for one managed instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Every public key (SPKI DER) in order: the registered one, then each rotated one. Only the
    /// last one is accepted.
    pub keys: Vec<Vec<u8>>,
    pub fingerprint: String,
}

pub struct Stub {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn server_config() -> Arc<rustls::ServerConfig> {
    let p = pki();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&p.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&p.key).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    Arc::new(cfg)
}

impl Stub {
    /// A stub that accepts exactly this activation pair.
    pub fn start(activation_id: &str, activation_code: &str) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            script: VecDeque::new(),
            requests: Vec::new(),
            violations: Vec::new(),
            activation_id: activation_id.into(),
            activation_code: activation_code.into(),
            instances: HashMap::new(),
            rotate_next: false,
            token_lifetime: Duration::from_secs(3600),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let config = server_config();
        {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(tcp) = conn else { continue };
                    let (state, stop, config) = (state.clone(), stop.clone(), config.clone());
                    std::thread::spawn(move || serve(tcp, config, state, stop));
                }
            });
        }
        Stub { port, state, stop }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Queues answers; when the queue is empty the answer is success.
    pub fn push(&self, reply: Reply) {
        self.state.lock().unwrap().script.push_back(reply);
    }

    /// Expect a different activation pair from now on.
    pub fn expect_activation(&self, id: &str, code: &str) {
        let mut s = self.state.lock().unwrap();
        s.activation_id = id.into();
        s.activation_code = code.into();
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests answered with an instance id.
    pub fn registrations(&self) -> Vec<Recorded> {
        self.calls("RegisterManagedInstance")
            .into_iter()
            .filter(|r| r.instance_id.is_some())
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// Makes SSM know an instance registered elsewhere (a Vault made by the test).
    pub fn add_instance(&self, instance_id: &str, public_key_der: &[u8], fingerprint: &str) {
        self.state.lock().unwrap().instances.insert(
            instance_id.into(),
            Instance {
                keys: vec![public_key_der.to_vec()],
                fingerprint: fingerprint.into(),
            },
        );
    }

    /// What SSM holds for an instance.
    pub fn instance(&self, instance_id: &str) -> Option<Instance> {
        self.state
            .lock()
            .unwrap()
            .instances
            .get(instance_id)
            .cloned()
    }

    /// The next successful token answer says `UpdateKeyPair: true`: the agent rotates its key.
    pub fn rotate_on_next_token(&self) {
        self.state.lock().unwrap().rotate_next = true;
    }

    /// Whether a forced rotation is still waiting for a token request.
    pub fn rotation_pending(&self) -> bool {
        self.state.lock().unwrap().rotate_next
    }

    /// Lifetime of the credentials given from now on (the agent asks again at half of it).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap().token_lifetime = lifetime;
    }

    /// Requests for one action (`RequestManagedInstanceRoleToken`, `control-channel`, …).
    pub fn calls(&self, action: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }

    /// Token requests that verified and were answered 200.
    pub fn tokens_granted(&self) -> Vec<Recorded> {
        self.calls("RequestManagedInstanceRoleToken")
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    /// Key rotations SSM accepted.
    pub fn key_updates(&self) -> Vec<Recorded> {
        self.calls("UpdateManagedInstancePublicKey")
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    /// Panics if any request broke the protocol.
    pub fn assert_strict(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "requests the real SSM would reject: {v:#?}");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Method, path, headers, body and whether the body was chunked.
type Request = (String, String, Vec<(String, String)>, Vec<u8>, bool);

/// Reads until `buf` holds at least `n` bytes.
fn fill<S: Read>(s: &mut S, buf: &mut Vec<u8>, n: usize) -> Option<()> {
    let mut chunk = [0u8; 4096];
    while buf.len() < n {
        let got = s.read(&mut chunk).ok()?;
        if got == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Some(())
}

/// Reads a `Transfer-Encoding: chunked` body from `buf` (and the stream); `None` on bad framing.
fn read_chunked<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            let have = buf.len();
            if have > 1024 {
                return None;
            }
            fill(s, buf, have + 1)?;
        };
        let line = String::from_utf8(buf[..line_end].to_vec()).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // No trailers from the agent: the final CRLF.
            fill(s, buf, 2)?;
            if &buf[..2] != b"\r\n" {
                return None;
            }
            buf.drain(..2);
            return Some(body);
        }
        if body.len() + size > 1 << 20 {
            return None;
        }
        fill(s, buf, size + 2)?;
        body.extend(buf.drain(..size));
        if buf.drain(..2).as_slice() != b"\r\n" {
            return None;
        }
    }
}

/// Reads one request (head and Content-Length or chunked body); `None` on EOF or garbage.
fn read_request<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> Option<Request> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 64 << 10 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path, version) = (
        first.next()?.to_string(),
        first.next()?.to_string(),
        first.next()?,
    );
    if version != "HTTP/1.1" {
        return None;
    }
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    buf.drain(..head_end + 4);
    if headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    }) {
        let body = read_chunked(s, buf)?;
        return Some((method, path, headers, body, true));
    }
    while buf.len() < len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    Some((method, path, headers, body, false))
}

/// The protocol checks; returns the valid public key or the violations.
fn check(
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (Vec<String>, Value, Option<Vec<u8>>) {
    let mut v = Vec::new();
    let h = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    if method != "POST" || path != "/" {
        v.push(format!("request line {method} {path}, want POST /"));
    }
    if h("X-Amz-Target") != Some("AmazonSSM.RegisterManagedInstance") {
        v.push(format!("X-Amz-Target {:?}", h("X-Amz-Target")));
    }
    if h("Content-Type") != Some("application/x-amz-json-1.1") {
        v.push(format!("Content-Type {:?}", h("Content-Type")));
    }
    if h("Content-Length").and_then(|l| l.parse::<usize>().ok()) != Some(body.len()) {
        v.push(format!(
            "Content-Length {:?} for {} bytes",
            h("Content-Length"),
            body.len()
        ));
    }
    for forbidden in ["Authorization", "X-Amz-Date", "X-Amz-Security-Token"] {
        if h(forbidden).is_some() {
            v.push(format!("unsigned call carries {forbidden}"));
        }
    }
    if !h("User-Agent").is_some_and(|u| u.starts_with("eks-connector/")) {
        v.push(format!(
            "User-Agent {:?} does not name the connector",
            h("User-Agent")
        ));
    }
    if h("Host").is_none() {
        v.push("no Host header".into());
    }
    let json: Value = match serde_json::from_slice(body) {
        Ok(j) => j,
        Err(e) => {
            v.push(format!("body is not JSON: {e}"));
            return (v, Value::Null, None);
        }
    };
    let Some(obj) = json.as_object() else {
        v.push("body is not a JSON object".into());
        return (v, json, None);
    };
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    if keys
        != [
            "ActivationCode",
            "ActivationId",
            "Fingerprint",
            "PublicKey",
            "PublicKeyType",
        ]
    {
        v.push(format!("body fields {keys:?}"));
    }
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("");
    if s("ActivationCode").len() < 20 {
        v.push("ActivationCode shorter than 20".into());
    }
    if s("ActivationId").len() < 36 {
        v.push("ActivationId shorter than 36".into());
    }
    let fp = s("Fingerprint");
    let fp_ok = fp.len() == 36
        && fp.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit() && !c.is_ascii_uppercase()
            }
        })
        && &fp[14..15] == "4"
        && "89ab".contains(&fp[19..20]);
    if !fp_ok {
        v.push(format!("Fingerprint {fp:?} is not a UUID v4"));
    }
    if s("PublicKeyType") != "Rsa" {
        v.push(format!("PublicKeyType {:?}", s("PublicKeyType")));
    }
    let pk = s("PublicKey");
    let mut der = None;
    if pk.len() < 392 {
        v.push(format!("PublicKey has {} chars, fewer than 392", pk.len()));
    }
    match base64::engine::general_purpose::STANDARD.decode(pk) {
        Err(e) => v.push(format!("PublicKey is not standard base64: {e}")),
        Ok(bytes) => match rsa::RsaPublicKey::from_public_key_der(&bytes) {
            Err(e) => v.push(format!("PublicKey is not an RSA SubjectPublicKeyInfo: {e}")),
            Ok(k) if k.size() != 256 => v.push(format!("PublicKey is RSA-{}", k.size() * 8)),
            Ok(_) => der = Some(bytes),
        },
    }
    (v, json, der)
}

fn respond<S: Write>(s: &mut S, status: u16, request_id: &str, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nx-amzn-RequestId: {request_id}\r\nContent-Type: \
         application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(msg.as_bytes())?;
    s.flush()
}

fn new_instance_id() -> String {
    let hex = eks_connector::random::uuid_v4().unwrap().replace('-', "");
    format!("mi-{}", &hex[..17])
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `X-Amz-Date` of a time: `YYYYMMDDTHHMMSSZ`, which sorts as the times do.
pub fn amz_date(t: SystemTime) -> String {
    let u = eks_connector::utc::Utc::from(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        u.year, u.month, u.day, u.hour, u.minute, u.second
    )
}

/// Why SSM refused a signed call: status, error code, message.
type Refusal = (u16, &'static str, String);

/// Checks a call signed by the agent as SSM does; returns the instance and which of its keys
/// signed it.
fn verify_signed(
    st: &State,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(String, usize), Refusal> {
    let bad = |code: &'static str, m: String| Err((400, code, m));
    if method != "POST" || path != "/" {
        return bad(
            "ValidationException",
            format!("{method} {path}, want POST /"),
        );
    }
    if header(headers, "Content-Type") != Some("application/x-amz-json-1.1") {
        return bad(
            "ValidationException",
            format!("Content-Type {:?}", header(headers, "Content-Type")),
        );
    }
    let Some(date) = header(headers, "X-Amz-Date") else {
        return bad("IncompleteSignatureException", "no X-Amz-Date".into());
    };
    let shape_ok = date.len() == 16
        && date.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shape_ok {
        return bad(
            "IncompleteSignatureException",
            format!("X-Amz-Date {date:?}"),
        );
    }
    let window = Duration::from_secs(15 * 60);
    let now = SystemTime::now();
    if date < amz_date(now - window).as_str() || date > amz_date(now + window).as_str() {
        return bad(
            "InvalidSignatureException",
            format!("Signature expired: {date} is more than 15 min from the server's time"),
        );
    }
    let Some(auth) = header(headers, "Authorization") else {
        return bad(
            "MissingAuthenticationTokenException",
            "no Authorization".into(),
        );
    };
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return bad(
            "IncompleteSignatureException",
            format!("Authorization {auth:?}"),
        );
    };
    let mut parts = HashMap::new();
    for p in rest.split(',') {
        if let Some((k, v)) = p.trim().split_once('=') {
            parts.insert(k, v);
        }
    }
    let (Some(cred), Some(signed), Some(sig)) = (
        parts.get("Credential"),
        parts.get("SignedHeaders"),
        parts.get("Signature"),
    ) else {
        return bad(
            "IncompleteSignatureException",
            format!("Authorization {auth:?}"),
        );
    };
    let c: Vec<&str> = cred.split('/').collect();
    if c.len() != 5
        || c[1] != &date[..8]
        || c[2].is_empty()
        || c[3] != "ssm"
        || c[4] != "aws4_request"
    {
        return bad(
            "IncompleteSignatureException",
            format!("Credential {cred:?} for date {date}"),
        );
    }
    let names: Vec<&str> = signed.split(';').collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    if sorted != names
        || ["host", "x-amz-date", "x-amz-target"]
            .iter()
            .any(|n| !names.contains(n))
        || names
            .iter()
            .any(|n| n.chars().any(|c| c.is_ascii_uppercase()))
    {
        return bad(
            "IncompleteSignatureException",
            format!("SignedHeaders {signed:?}"),
        );
    }
    let instance_id = c[0];
    let Some(instance) = st.instances.get(instance_id) else {
        return bad(
            "InvalidInstanceId",
            format!("{instance_id} is not a registered managed instance"),
        );
    };
    let body_hash = hex(&Sha256::digest(body));
    if let Some(h) = header(headers, "X-Amz-Content-Sha256") {
        if h != body_hash {
            return bad(
                "InvalidSignatureException",
                "X-Amz-Content-Sha256 is not the body's".into(),
            );
        }
    }
    let mut canonical = format!("{method}\n{path}\n\n");
    for name in &names {
        let values: Vec<String> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return bad(
                "IncompleteSignatureException",
                format!("signed header {name} is absent"),
            );
        }
        canonical += &format!("{name}:{}\n", values.join(","));
    }
    canonical += &format!("\n{signed}\n{body_hash}");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{}/{}/ssm/aws4_request\n{}",
        c[1],
        c[2],
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
        return bad(
            "InvalidSignatureException",
            "Signature is not base64".into(),
        );
    };
    let digest = Sha256::digest(to_sign.as_bytes());
    let verifies = |der: &[u8]| {
        rsa::RsaPublicKey::from_public_key_der(der).is_ok_and(|k| {
            k.verify(rsa::Pss::new_with_salt::<Sha256>(32), &digest, &sig)
                .is_ok()
        })
    };
    let current = instance.keys.len() - 1;
    if verifies(&instance.keys[current]) {
        return Ok((instance_id.to_string(), current));
    }
    match instance.keys[..current].iter().position(|k| verifies(k)) {
        Some(i) => bad(
            "InvalidSignatureException",
            format!(
                "{instance_id}: signed with its key #{i}, replaced since; SSM holds key #{current}"
            ),
        ),
        None => bad(
            "InvalidSignatureException",
            format!("{instance_id}: the signature does not verify with the key SSM holds"),
        ),
    }
}

/// The body fields of a signed call, exactly.
fn body_fields(json: &Value, want: &[&str]) -> Result<(), Refusal> {
    let mut keys: Vec<&str> = json
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort();
    if keys != want {
        return Err((
            400,
            "ValidationException",
            format!("body fields {keys:?}, want {want:?}"),
        ));
    }
    Ok(())
}

/// `RequestManagedInstanceRoleToken` or `UpdateManagedInstancePublicKey`: verified, then answered.
fn signed_call(
    state: &Mutex<State>,
    action: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (Result<Value, Refusal>, Option<(String, usize)>) {
    let mut st = state.lock().unwrap();
    let (id, key) = match verify_signed(&st, method, path, headers, body) {
        Ok(v) => v,
        Err(e) => return (Err(e), None),
    };
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let signer = Some((id.clone(), key));
    let result = if action == "RequestManagedInstanceRoleToken" {
        body_fields(&json, &["Fingerprint"]).and_then(|()| {
            let instance = &st.instances[&id];
            if json["Fingerprint"] != instance.fingerprint.as_str() {
                return Err((
                    400,
                    "MachineFingerprintDoesNotMatch",
                    format!(
                        "{id}: fingerprint {} is not the registered one",
                        json["Fingerprint"]
                    ),
                ));
            }
            let update = std::mem::take(&mut st.rotate_next);
            let expires = SystemTime::now() + st.token_lifetime;
            let secs = expires
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let token = eks_connector::random::uuid_v4().unwrap();
            Ok(serde_json::json!({
                "AccessKeyId": format!("ASIA{}", &token.replace('-', "")[..16].to_uppercase()),
                "SecretAccessKey": format!("stand-in-secret-{token}"),
                "SessionToken": format!("stand-in-session-{token}"),
                "TokenExpirationDate": secs,
                "UpdateKeyPair": update,
            }))
        })
    } else {
        body_fields(&json, &["NewPublicKey", "NewPublicKeyType"]).and_then(|()| {
            if json["NewPublicKeyType"] != "Rsa" {
                return Err((
                    400,
                    "ValidationException",
                    "NewPublicKeyType is not Rsa".into(),
                ));
            }
            let der = json["NewPublicKey"]
                .as_str()
                .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
                .filter(|d| {
                    rsa::RsaPublicKey::from_public_key_der(d).is_ok_and(|k| k.size() == 256)
                })
                .ok_or((
                    400,
                    "ValidationException",
                    "NewPublicKey is not an RSA-2048 SubjectPublicKeyInfo in base64".to_string(),
                ))?;
            st.instances.get_mut(&id).unwrap().keys.push(der);
            Ok(serde_json::json!({}))
        })
    };
    (result, signer)
}

fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"__type": format!("com.amazonaws.ssm#{code}"), "message": message})
        .to_string()
}

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    while let Some((method, path, headers, body, chunked)) = read_request(&mut tls, &mut buf) {
        let at = Instant::now();
        let request_id = eks_connector::random::uuid_v4().unwrap();
        let target = header(&headers, "X-Amz-Target").unwrap_or("").to_string();
        let record = |action: &str, status: u16, signed_by, json: Value| Recorded {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: json,
            public_key_der: None,
            instance_id: None,
            request_id: request_id.clone(),
            action: action.into(),
            status,
            chunked,
            signed_by,
            at,
        };
        // The session worker's control channel: refused, so that it keeps retrying harmlessly.
        if path.starts_with("/v1/control-channel/") {
            state
                .lock()
                .unwrap()
                .requests
                .push(record("control-channel", 500, None, Value::Null));
            let body = error_body("InternalServerException", "stand-in: no control channel");
            if respond(&mut tls, 500, &request_id, &body).is_err() {
                return;
            }
            continue;
        }
        if let Some(
            action @ ("RequestManagedInstanceRoleToken" | "UpdateManagedInstancePublicKey"),
        ) = target.strip_prefix("AmazonSSM.")
        {
            let (result, signed_by) = signed_call(&state, action, &method, &path, &headers, &body);
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let (status, answer) = match result {
                Ok(v) => (200, v.to_string()),
                Err((status, code, message)) => {
                    state
                        .lock()
                        .unwrap()
                        .violations
                        .push(format!("{action} refused: {code}: {message}"));
                    (status, error_body(code, &message))
                }
            };
            state
                .lock()
                .unwrap()
                .requests
                .push(record(action, status, signed_by, json));
            if respond(&mut tls, status, &request_id, &answer).is_err() {
                return;
            }
            continue;
        }
        let (violations, json, der) = check(&method, &path, &headers, &body);
        let reply = {
            let mut st = state.lock().unwrap();
            if !violations.is_empty() {
                st.violations.extend(violations.iter().cloned());
                Reply::error(400, "ValidationException", &violations.join("; "))
            } else if json["ActivationId"] != st.activation_id.as_str()
                || json["ActivationCode"] != st.activation_code.as_str()
            {
                Reply::error(
                    400,
                    "InvalidActivation",
                    "Activation ID not found or code mismatch",
                )
            } else {
                st.script.pop_front().unwrap_or(Reply::Success(None))
            }
        };
        let instance_id = match &reply {
            Reply::Delay(_) => Some(new_instance_id()),
            Reply::Success(id) => Some(id.clone().unwrap_or_else(new_instance_id)),
            _ => None,
        };
        let status = match &reply {
            Reply::Error { status, .. } | Reply::Raw { status, .. } => *status,
            Reply::Hang | Reply::Close => 0,
            _ => 200,
        };
        {
            let mut st = state.lock().unwrap();
            // SSM now holds the instance's key and fingerprint.
            if let (Some(id), Some(key)) = (&instance_id, &der) {
                st.instances.insert(
                    id.clone(),
                    Instance {
                        keys: vec![key.clone()],
                        fingerprint: json["Fingerprint"].as_str().unwrap_or("").into(),
                    },
                );
            }
            let mut r = record("RegisterManagedInstance", status, None, json);
            r.public_key_der = der;
            r.instance_id = instance_id.clone();
            st.requests.push(r);
        }
        let ok = match reply {
            Reply::Delay(d) => {
                std::thread::sleep(d);
                let body = serde_json::json!({ "InstanceId": instance_id.unwrap() }).to_string();
                respond(&mut tls, 200, &request_id, &body)
            }
            Reply::Success(_) => {
                let body = serde_json::json!({ "InstanceId": instance_id.unwrap() }).to_string();
                respond(&mut tls, 200, &request_id, &body)
            }
            Reply::Error {
                status,
                type_,
                message,
                message_key,
            } => {
                let mut m = serde_json::Map::new();
                m.insert("__type".into(), type_.into());
                m.insert(message_key.into(), message.into());
                respond(&mut tls, status, &request_id, &Value::Object(m).to_string())
            }
            Reply::Hang => {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Reply::Close => {
                let _ = tls.sock.shutdown(Shutdown::Both);
                return;
            }
            Reply::Raw { status, body } => {
                let head = format!(
                    "HTTP/1.1 {status} Status\r\nx-amzn-RequestId: {request_id}\r\nContent-Type: \
                     application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                tls.write_all(head.as_bytes())
                    .and_then(|()| tls.write_all(&body))
                    .and_then(|()| tls.flush())
            }
        };
        if ok.is_err() {
            return;
        }
    }
}

/// A minimal HTTP CONNECT proxy that sends every tunnel to `127.0.0.1:<target_port>` whatever
/// host was asked for, and records the CONNECT targets.
pub struct ConnectProxy {
    pub port: u16,
    pub targets: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    pub fn start(target_port: u16) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let t = targets.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while find(&buf, b"\r\n\r\n").is_none() {
                        match client.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let mut words = head.split_whitespace();
                    if words.next() != Some("CONNECT") {
                        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
                        return;
                    }
                    t.lock()
                        .unwrap()
                        .push(words.next().unwrap_or("").to_string());
                    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                        return;
                    };
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    let (mut c2, mut u2) =
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    let (mut c1, mut u1) = (client, upstream);
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut u2, &mut c2);
                        let _ = c2.shutdown(Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut c1, &mut u1);
                    let _ = u1.shutdown(Shutdown::Write);
                });
            }
        });
        ConnectProxy { port, targets }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
