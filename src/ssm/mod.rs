//! The one AWS call the connector makes: `RegisterManagedInstance` (AWS JSON 1.1, unsigned: the
//! activation code is the credential), hand-written over ureq because the operation is not in the
//! public SDK models. Retries throttling, 5xx, timeouts and connection errors with backoff, each
//! attempt with connect/read timeouts, within an overall deadline.

pub mod egress;
pub mod endpoint;

pub use egress::EgressProxy;
pub use endpoint::Endpoint;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;

pub const TARGET: &str = "AmazonSSM.RegisterManagedInstance";
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// Largest response body read.
const MAX_BODY: u64 = 64 << 10;

/// Codes that mean "slow down": retried.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "TooManyUpdates",
];

/// The request, as SSM wants it.
pub struct RegisterRequest<'a> {
    pub activation_code: &'a str,
    pub activation_id: &'a str,
    /// A random UUID v4.
    pub fingerprint: &'a str,
    /// Standard base64 of the RSA public key as X.509 SubjectPublicKeyInfo DER.
    pub public_key_b64: &'a str,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "ActivationCode")]
    activation_code: &'a str,
    #[serde(rename = "ActivationId")]
    activation_id: &'a str,
    #[serde(rename = "Fingerprint")]
    fingerprint: &'a str,
    #[serde(rename = "PublicKey")]
    public_key: &'a str,
    #[serde(rename = "PublicKeyType")]
    public_key_type: &'a str,
}

#[derive(Deserialize)]
struct Success {
    #[serde(rename = "InstanceId", default)]
    instance_id: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorBody {
    #[serde(rename = "__type")]
    type_: String,
    message: Option<String>,
    #[serde(rename = "Message")]
    message_upper: Option<String>,
}

/// What SSM answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub instance_id: String,
    /// `x-amzn-RequestId`, empty if absent.
    pub request_id: String,
}

/// Why the registration failed, each with a one-line message a person can act on.
#[derive(Debug)]
pub enum SsmError {
    /// Wrong id/code pair, deleted activation, or a code that is not the one AWS returned.
    InvalidActivation { message: String, request_id: String },
    /// The activation is past its expiry.
    ActivationExpired { message: String, request_id: String },
    /// Any other answer that is not worth retrying: code and AWS's message verbatim.
    Rejected {
        status: u16,
        code: String,
        message: String,
        request_id: String,
    },
    /// Throttling, 5xx, timeouts or connection errors until the deadline.
    Unreachable {
        endpoint: String,
        proxy: Option<String>,
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
    /// The endpoint's (or proxy's) name does not resolve.
    Dns {
        host: String,
        via_proxy: bool,
        proxy: Option<String>,
        cause: String,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, …).
    Tls {
        host: String,
        proxy: Option<String>,
        cause: String,
        /// The certificate does not chain to a trusted CA (through a proxy: it intercepts TLS).
        untrusted: bool,
    },
    /// The proxy answered CONNECT with 407: it wants credentials, or refused the given ones.
    ProxyAuth {
        proxy: String,
        endpoint: String,
        /// `407 Proxy Authentication Required` (or 401, which some proxies send for bad ones).
        status: String,
        with_credentials: bool,
    },
    /// The proxy refused to open the tunnel (403, 405, …).
    ProxyRefused {
        proxy: String,
        endpoint: String,
        target: String,
        status: String,
    },
    /// A 200 answer without an instance id.
    BadResponse { detail: String, request_id: String },
    /// Local configuration: CA bundle, proxy URL.
    Config(String),
}

fn rid(request_id: &str) -> String {
    if request_id.is_empty() {
        String::new()
    } else {
        format!(" [request id {request_id}]")
    }
}

fn via(proxy: &Option<String>) -> String {
    match proxy {
        Some(p) => format!("through proxy {p}"),
        None => "directly (no proxy)".into(),
    }
}

impl fmt::Display for SsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SsmError::InvalidActivation { message, request_id } => write!(
                f,
                "SSM rejected the activation (InvalidActivation: {message}): the activation id/code \
                 pair is wrong or the activation was deleted; the code must be exactly the one AWS \
                 returned with the activation id (if you pass it through a Secret, base64-encode \
                 it there), or create a new activation{}",
                rid(request_id)
            ),
            SsmError::ActivationExpired { message, request_id } => write!(
                f,
                "SSM says the activation has expired (ActivationExpired: {message}): activations \
                 expire (those EKS creates after 3 days); register the cluster again to get a new \
                 activation id and code{}",
                rid(request_id)
            ),
            SsmError::Rejected {
                status,
                code,
                message,
                request_id,
            } => write!(
                f,
                "SSM rejected the registration: {code}: {message} (HTTP {status}){}",
                rid(request_id)
            ),
            SsmError::Unreachable {
                endpoint,
                proxy,
                attempts,
                elapsed,
                last,
            } => write!(
                f,
                "could not register with SSM at {endpoint} {} after {attempts} attempts in {:.1}s; \
                 last error: {last}; check egress to the endpoint, HTTPS_PROXY/NO_PROXY, or set \
                 --agent.endpoint",
                via(proxy),
                elapsed.as_secs_f64()
            ),
            SsmError::Dns {
                host,
                via_proxy,
                proxy,
                cause,
            } => {
                if *via_proxy {
                    write!(
                        f,
                        "cannot resolve the proxy host {host} (from HTTPS_PROXY {}): {cause}; \
                         check HTTPS_PROXY and the pod's DNS",
                        proxy.as_deref().unwrap_or("")
                    )
                } else {
                    write!(
                        f,
                        "cannot resolve the SSM endpoint host {host}: {cause}; check \
                         --agent.region/--agent.endpoint and the pod's DNS, and set HTTPS_PROXY if \
                         egress must go through a corporate proxy"
                    )
                }
            }
            SsmError::Tls {
                host,
                proxy: Some(p),
                cause,
                untrusted: true,
            } => write!(
                f,
                "the certificate presented for the SSM endpoint {host} through proxy {p} is not \
                 trusted ({cause}): the proxy intercepts TLS; put its CA certificate in \
                 AWS_CA_BUNDLE (a PEM file, with the public roots if some traffic is not \
                 intercepted)"
            ),
            SsmError::Tls {
                host, proxy, cause, ..
            } => write!(
                f,
                "TLS to the SSM endpoint {host} failed ({}): {cause}; a corporate proxy that \
                 intercepts TLS or a private endpoint needs its CA certificate in AWS_CA_BUNDLE \
                 (a PEM file)",
                via(proxy)
            ),
            SsmError::ProxyAuth {
                proxy,
                endpoint,
                status,
                with_credentials,
            } => {
                let what = if *with_credentials {
                    "refused the credentials in HTTPS_PROXY"
                } else {
                    "wants credentials"
                };
                write!(
                    f,
                    "the proxy {proxy} {what} (HTTP {status}) for the \
                     tunnel to {endpoint}: set HTTPS_PROXY to http://USER:PASSWORD@host:port with \
                     the proxy account's credentials"
                )
            }
            SsmError::ProxyRefused {
                proxy,
                endpoint,
                target,
                status,
            } => write!(
                f,
                "the proxy {proxy} refused CONNECT to {target} (HTTP {status}) for {endpoint}: \
                 have the proxy allow tunnels to {target}, or list the host in NO_PROXY if it is \
                 reachable directly (a VPC endpoint)"
            ),
            SsmError::BadResponse { detail, request_id } => write!(
                f,
                "SSM answered RegisterManagedInstance with something unexpected: {detail}{}",
                rid(request_id)
            ),
            SsmError::Config(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SsmError {}

/// Timeouts, deadline, trust and proxy for the client.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connect timeout, and read timeout for the response head and body, per attempt.
    pub timeout: Duration,
    /// Overall time for all attempts.
    pub deadline: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// `AWS_CA_BUNDLE`: a PEM file that replaces the trusted roots.
    pub ca_bundle: Option<PathBuf>,
    pub egress: EgressProxy,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(120),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            ca_bundle: None,
            egress: EgressProxy::default(),
        }
    }
}

impl Options {
    /// Defaults, with `AWS_CA_BUNDLE`, `HTTPS_PROXY` and `NO_PROXY` from the environment.
    pub fn from_env() -> Options {
        Options {
            ca_bundle: ca_bundle_from(
                std::env::var_os("AWS_CA_BUNDLE"),
                Path::new(ORIGINAL_CA_BUNDLE),
            ),
            egress: EgressProxy::from_env(),
            ..Options::default()
        }
    }
}

/// Where the original image kept its CA bundle (Amazon Linux 2's); users who trusted a private
/// CA with the original mounted their bundle there, so ours honours it too.
pub const ORIGINAL_CA_BUNDLE: &str = "/etc/ssl/certs/ca-bundle.crt";

/// `AWS_CA_BUNDLE` when set; else the original's bundle path when a file is there; else none
/// (the compiled-in public roots).
fn ca_bundle_from(env: Option<std::ffi::OsString>, original: &Path) -> Option<PathBuf> {
    match env.filter(|v| !v.is_empty()) {
        Some(v) => Some(PathBuf::from(v)),
        None => original.is_file().then(|| original.to_path_buf()),
    }
}

/// A client for one endpoint.
pub struct Client {
    endpoint: Endpoint,
    agent: ureq::Agent,
    /// The proxy in use, redacted, for messages.
    proxy: Option<String>,
    proxy_host: Option<String>,
    opts: Options,
}

enum Failure {
    /// Worth another attempt; `dns` when the failure was name resolution.
    Retry {
        cause: String,
        dns: bool,
    },
    Fatal(SsmError),
    /// The overall deadline ran out during the attempt.
    CutShort(String),
}

impl Client {
    pub fn new(endpoint: Endpoint, opts: Options) -> Result<Client, SsmError> {
        let roots = match &opts.ca_bundle {
            Some(path) => {
                let certs = crate::tls::load_pem_certs(path).map_err(|e| {
                    SsmError::Config(format!("CA bundle {} (AWS_CA_BUNDLE): {e}", path.display()))
                })?;
                crate::tls::to_ureq_roots(&certs)
            }
            None => ureq::tls::RootCerts::WebPki,
        };
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(roots)
            .build();
        let proxy_url = opts.egress.proxy_for(&endpoint.host, endpoint.port);
        let (proxy, proxy_host, ureq_proxy) = match proxy_url {
            Some(url) => {
                let p = ureq::Proxy::new(url).map_err(|e| {
                    SsmError::Config(format!(
                        "HTTPS_PROXY {} is not a usable proxy URL: {e}",
                        egress::redact(url)
                    ))
                })?;
                (
                    Some(egress::redact(url)),
                    Some(p.host().to_string()),
                    Some(p),
                )
            }
            None => (None, None, None),
        };
        let t = Some(opts.timeout);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .proxy(ureq_proxy)
            .https_only(true)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(t)
            .timeout_send_request(t)
            .timeout_send_body(t)
            .timeout_recv_response(t)
            .timeout_recv_body(t)
            .user_agent(format!("eks-connector/{}", crate::VERSION))
            .build()
            .into();
        Ok(Client {
            endpoint,
            agent,
            proxy,
            proxy_host,
            opts,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The proxy in use (credentials redacted), if any.
    pub fn egress_proxy(&self) -> Option<&str> {
        self.proxy.as_deref()
    }

    /// Registers, retrying what is worth retrying until the deadline.
    pub fn register(&self, req: &RegisterRequest<'_>) -> Result<Registered, SsmError> {
        let body = serde_json::to_vec(&Body {
            activation_code: req.activation_code,
            activation_id: req.activation_id,
            fingerprint: req.fingerprint,
            public_key: req.public_key_b64,
            public_key_type: "Rsa",
        })
        .map_err(|e| SsmError::Config(format!("internal: cannot encode the request: {e}")))?;
        let start = Instant::now();
        let deadline = start + self.opts.deadline;
        let mut backoff = Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        let mut attempts = 0u32;
        // The last failure that was not the deadline cutting an attempt short: it says why.
        let mut telling: Option<(String, bool)> = None;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (cause, dns) = match self.attempt(&body, remaining.max(Duration::from_millis(1))) {
                Ok(r) => return Ok(r),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::CutShort(cause)) => match &telling {
                    Some((before, dns)) => (
                        format!("{before} (then the deadline cut the last attempt short)"),
                        *dns,
                    ),
                    None => (cause, false),
                },
                Err(Failure::Retry { cause, dns }) => {
                    telling = Some((cause.clone(), dns));
                    (cause, dns)
                }
            };
            let delay = backoff.next_delay();
            let now = Instant::now();
            if now + delay >= deadline {
                return Err(if dns {
                    let (host, via_proxy) = match &self.proxy_host {
                        Some(h) => (h.clone(), true),
                        None => (self.endpoint.host.clone(), false),
                    };
                    SsmError::Dns {
                        host,
                        via_proxy,
                        proxy: self.proxy.clone(),
                        cause,
                    }
                } else {
                    SsmError::Unreachable {
                        endpoint: self.endpoint.url.clone(),
                        proxy: self.proxy.clone(),
                        attempts,
                        elapsed: now - start,
                        last: cause,
                    }
                });
            }
            log::warn!(
                "RegisterManagedInstance attempt {attempts} to {} failed: {cause}; retrying in {:.1}s",
                self.endpoint.url,
                delay.as_secs_f64()
            );
            std::thread::sleep(delay);
        }
    }

    fn attempt(&self, body: &[u8], budget: Duration) -> Result<Registered, Failure> {
        let result = self
            .agent
            .post(&self.endpoint.url)
            .config()
            .timeout_global(Some(budget))
            .build()
            .header("X-Amz-Target", TARGET)
            .header("Content-Type", CONTENT_TYPE)
            .send(body);
        let resp = match result {
            Ok(r) => r,
            Err(e) => return Err(self.classify(e)),
        };
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let request_id = header("x-amzn-RequestId");
        let error_type = header("x-amzn-ErrorType");
        let bytes = match resp.into_body().with_config().limit(MAX_BODY).read_to_vec() {
            Ok(b) => b,
            Err(ureq::Error::BodyExceedsLimit(_)) => {
                return Err(Failure::Fatal(SsmError::BadResponse {
                    detail: format!("HTTP {status} body larger than {MAX_BODY} bytes"),
                    request_id,
                }))
            }
            Err(e) => return Err(self.classify(e)),
        };
        interpret(status, &bytes, request_id, &error_type)
    }

    fn tls_error(&self, e: &rustls::Error) -> SsmError {
        SsmError::Tls {
            host: self.endpoint.host.clone(),
            proxy: self.proxy.clone(),
            cause: e.to_string(),
            untrusted: matches!(e, rustls::Error::InvalidCertificate(_)),
        }
    }

    /// The proxy did not open the tunnel. ureq reports the answer as "proxy server responded
    /// <status>/<reason>": 407 and other 4xx are the proxy's policy (retrying cannot help), 5xx
    /// mean it could not reach the endpoint (its DNS or network; worth retrying).
    fn proxy_failure(&self, m: &str) -> Failure {
        let proxy = self.proxy.clone().unwrap_or_default();
        let target = format!("{}:{}", self.endpoint.host, self.endpoint.port);
        let code = m
            .strip_prefix("proxy server responded ")
            .and_then(|s| s.split('/').next())
            .and_then(|c| c.parse::<u16>().ok());
        let status = code.map(|c| {
            let reason = ureq::http::StatusCode::from_u16(c)
                .ok()
                .and_then(|s| s.canonical_reason());
            format!("{c} {}", reason.unwrap_or(""))
                .trim_end()
                .to_string()
        });
        match (code, status) {
            (Some(401 | 407), Some(status)) => Failure::Fatal(SsmError::ProxyAuth {
                with_credentials: proxy.contains("***@"),
                proxy,
                endpoint: self.endpoint.url.clone(),
                status,
            }),
            (Some(c), Some(status)) if (400..500).contains(&c) => {
                Failure::Fatal(SsmError::ProxyRefused {
                    proxy,
                    endpoint: self.endpoint.url.clone(),
                    target,
                    status,
                })
            }
            (Some(_), Some(status)) => Failure::Retry {
                cause: format!(
                    "the proxy could not connect to {target} (HTTP {status}): does the name \
                     resolve, and is it reachable, from the proxy?"
                ),
                dns: false,
            },
            _ => Failure::Retry {
                cause: format!("CONNECT to {target} failed: {m}"),
                dns: false,
            },
        }
    }

    fn classify(&self, e: ureq::Error) -> Failure {
        match e {
            ureq::Error::Timeout(ureq::Timeout::Global) => {
                Failure::CutShort(format!("timed out ({})", ureq::Timeout::Global))
            }
            ureq::Error::Timeout(t) => Failure::Retry {
                cause: format!("timed out ({t})"),
                dns: false,
            },
            ureq::Error::HostNotFound => Failure::Retry {
                cause: "host not found".into(),
                dns: true,
            },
            ureq::Error::Rustls(r) => Failure::Fatal(self.tls_error(&r)),
            ureq::Error::Tls(m) => Failure::Fatal(SsmError::Tls {
                host: self.endpoint.host.clone(),
                proxy: self.proxy.clone(),
                cause: m.to_string(),
                untrusted: false,
            }),
            ureq::Error::Io(io) => {
                if let Some(r) = io
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    return Failure::Fatal(self.tls_error(r));
                }
                let text = io.to_string();
                Failure::Retry {
                    dns: text.contains("lookup address")
                        || text.contains("Name or service not known"),
                    cause: text,
                }
            }
            ureq::Error::ConnectProxyFailed(m) => self.proxy_failure(&m),
            ureq::Error::ConnectionFailed => Failure::Retry {
                cause: "connection failed".into(),
                dns: false,
            },
            ureq::Error::Protocol(p) => Failure::Retry {
                cause: format!("bad HTTP answer or connection closed: {p}"),
                dns: false,
            },
            other => Failure::Fatal(SsmError::Config(format!(
                "RegisterManagedInstance to {} failed: {other}",
                self.endpoint.url
            ))),
        }
    }
}

/// What an answer means: the registration, a failure to retry, or a final one. Pure, so the
/// odd answers (random bytes, wrong types) are unit-tested; every message is one line.
fn interpret(
    status: u16,
    bytes: &[u8],
    request_id: String,
    error_type: &str,
) -> Result<Registered, Failure> {
    if (200..300).contains(&status) {
        return success(status, bytes, request_id);
    }
    let eb: ErrorBody = serde_json::from_slice(bytes).unwrap_or_default();
    let raw_type = if eb.type_.is_empty() {
        error_type.split(':').next().unwrap_or("").to_string()
    } else {
        eb.type_
    };
    let code = raw_type.rsplit('#').next().unwrap_or("").trim().to_string();
    let message =
        one_line(&eb.message.or(eb.message_upper).unwrap_or_else(|| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
        }));
    let retry_status = matches!(status, 429 | 500 | 502 | 503 | 504);
    if retry_status || THROTTLING.contains(&code.as_str()) {
        let code_text = if code.is_empty() {
            "no error code".to_string()
        } else {
            code
        };
        return Err(Failure::Retry {
            cause: format!("HTTP {status} {code_text}: {message}{}", rid(&request_id)),
            dns: false,
        });
    }
    Err(Failure::Fatal(match code.as_str() {
        "InvalidActivation" => SsmError::InvalidActivation {
            message,
            request_id,
        },
        "ActivationExpired" => SsmError::ActivationExpired {
            message,
            request_id,
        },
        _ => SsmError::Rejected {
            status,
            code: if code.is_empty() {
                "(no error code)".into()
            } else {
                code
            },
            message,
            request_id,
        },
    }))
}

fn success(status: u16, bytes: &[u8], request_id: String) -> Result<Registered, Failure> {
    let s: Success = serde_json::from_slice(bytes).map_err(|e| {
        Failure::Fatal(SsmError::BadResponse {
            detail: format!("HTTP {status} body is not the expected JSON: {e}"),
            request_id: request_id.clone(),
        })
    })?;
    if s.instance_id.is_empty() {
        return Err(Failure::Fatal(SsmError::BadResponse {
            detail: format!("HTTP {status} without an InstanceId"),
            request_id,
        }));
    }
    Ok(Registered {
        instance_id: s.instance_id,
        request_id,
    })
}

/// Text from the wire as one printable line (an answer of random bytes must not break the log).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS_CA_BUNDLE wins; without it the original image's bundle path is honoured when a file
    /// is there (users who trusted a private CA with the original mounted it there).
    #[test]
    fn ca_bundle_is_the_env_then_the_originals_path() {
        let dir = std::env::temp_dir().join(format!("ca-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let original = dir.join("ca-bundle.crt");
        let env = Some(std::ffi::OsString::from("/env/ca.pem"));
        assert_eq!(
            ca_bundle_from(None, &original),
            None,
            "no file, no env: public roots"
        );
        std::fs::write(&original, "pem").unwrap();
        assert_eq!(ca_bundle_from(None, &original), Some(original.clone()));
        assert_eq!(
            ca_bundle_from(Some("".into()), &original),
            Some(original.clone()),
            "an empty AWS_CA_BUNDLE counts as unset"
        );
        assert_eq!(ca_bundle_from(env, &original), Some("/env/ca.pem".into()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Also (issue 14): random bytes and valid JSON of the wrong types, as a success or as an
    /// error answer: one clear printable line each, never a registration.
    #[test]
    fn odd_answers_are_one_clear_line() {
        let mut random = vec![0u8; 4096];
        crate::random::fill(&mut random).unwrap();
        random[7] = b'\n';
        let wrong = br#"{"InstanceId":5,"__type":[1],"message":{"a":"b\nc"}}"#.to_vec();
        for status in [200, 400, 503] {
            for body in [&random, &wrong] {
                let text = match interpret(status, body, "r-1".into(), "") {
                    Ok(r) => panic!("{status}: registered {r:?}"),
                    Err(Failure::Fatal(e)) => e.to_string(),
                    Err(Failure::Retry { cause, .. } | Failure::CutShort(cause)) => cause,
                };
                assert!(!text.chars().any(char::is_control), "{status}: {text:?}");
                assert!(
                    text.contains(&status.to_string()) || status == 400,
                    "{text}"
                );
            }
        }
        let e = interpret(200, &wrong, String::new(), "").err().unwrap();
        assert!(matches!(e, Failure::Fatal(SsmError::BadResponse { .. })));
    }

    #[test]
    fn messages_carry_the_advice_the_user_needs() {
        let e = SsmError::InvalidActivation {
            message: "Activation ID not found".into(),
            request_id: "r-1".into(),
        };
        let s = e.to_string();
        for want in [
            "InvalidActivation",
            "wrong",
            "deleted",
            "base64",
            "r-1",
            "Activation ID not found",
        ] {
            assert!(s.contains(want), "{want} in {s}");
        }
        let s = SsmError::ActivationExpired {
            message: "m".into(),
            request_id: String::new(),
        }
        .to_string();
        assert!(s.contains("3 days") && s.contains("expire"), "{s}");
        assert!(!s.contains("request id"), "{s}");
        let s = SsmError::Unreachable {
            endpoint: "https://ssm.us-west-2.amazonaws.com/".into(),
            proxy: Some("http://p:3128".into()),
            attempts: 3,
            elapsed: Duration::from_secs(2),
            last: "timed out".into(),
        }
        .to_string();
        assert!(
            s.contains("https://ssm.us-west-2.amazonaws.com/") && s.contains("http://p:3128"),
            "{s}"
        );
        assert!(!s.contains('\n'));
    }
}
