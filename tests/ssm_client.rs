//! The SSM client against the strict local stand-in: wire format, every error class, retries,
//! timeouts, proxies and trust. (The init binary's own tests, with the real API server, are in
//! tests/init.rs.)

#[path = "support/ssm_stub.rs"]
mod ssm_stub;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use eks_connector::ssm::{self, Client, EgressProxy, Options, RegisterRequest, SsmError};
use rsa::pkcs8::EncodePublicKey;
use ssm_stub::{pki, ConnectProxy, Reply, Stub, TEST_HOST};

const ID: &str = "5b6fbd16-8c59-4c4f-9a8b-0c6a1d2e3f40";
const CODE: &str = "AbCdEfGhIjKlMnOpQrSt";

fn public_key_b64() -> &'static str {
    static K: OnceLock<String> = OnceLock::new();
    K.get_or_init(|| {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let der = key.to_public_key().to_public_key_der().unwrap();
        base64::engine::general_purpose::STANDARD.encode(der.as_bytes())
    })
}

fn request(code: &str) -> RegisterRequest<'_> {
    RegisterRequest {
        activation_code: code,
        activation_id: ID,
        fingerprint: "0f8fad5b-d9cb-469f-a165-70867728950e",
        public_key_b64: public_key_b64(),
    }
}

fn opts() -> Options {
    Options {
        timeout: Duration::from_millis(800),
        deadline: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ca_bundle: Some(pki().ca.clone()),
        egress: EgressProxy::default(),
    }
}

fn client(url: &str, opts: Options) -> Client {
    Client::new(ssm::endpoint::parse_url(url).unwrap(), opts).unwrap()
}

#[test]
fn success_sends_exactly_what_ssm_wants() {
    let stub = Stub::start(ID, CODE);
    let got = client(&stub.url(), opts())
        .register(&request(CODE))
        .unwrap();
    stub.assert_strict();
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(Some(got.instance_id.as_str()), r.instance_id.as_deref());
    assert!(got.instance_id.starts_with("mi-"));
    assert_eq!(got.request_id, r.request_id);
    assert_eq!(
        r.header("X-Amz-Target"),
        Some("AmazonSSM.RegisterManagedInstance")
    );
    assert_eq!(r.body["PublicKey"], public_key_b64());
    assert_eq!(r.body["PublicKeyType"], "Rsa");
}

#[test]
fn eks_style_instance_ids_are_opaque() {
    let stub = Stub::start(ID, CODE);
    stub.push(Reply::Success(Some(
        "eks_c:my-cluster_0123456789abcdef".into(),
    )));
    let got = client(&stub.url(), opts())
        .register(&request(CODE))
        .unwrap();
    assert_eq!(got.instance_id, "eks_c:my-cluster_0123456789abcdef");
}

#[test]
fn wrong_activation_code_is_invalid_activation_without_retry() {
    let stub = Stub::start(ID, CODE);
    let e = client(&stub.url(), opts())
        .register(&request("ZZZZZZZZZZZZZZZZZZZZ"))
        .unwrap_err();
    assert!(matches!(e, SsmError::InvalidActivation { .. }), "{e:?}");
    assert!(e.to_string().contains("base64"), "{e}");
    assert_eq!(stub.requests().len(), 1);
    stub.assert_strict();
}

#[test]
fn non_retryable_errors_keep_code_and_message_verbatim() {
    let cases = [
        (
            Reply::error(400, "ActivationExpired", "Activation has expired"),
            "ActivationExpired",
        ),
        (
            Reply::error(
                400,
                "RegistrationLimitExceeded",
                "Registration limit of 3 reached",
            ),
            "RegistrationLimitExceeded: Registration limit of 3 reached",
        ),
        (
            Reply::Error {
                status: 400,
                type_: "InvalidPublicKey".into(),
                message: "Key is not valid".into(),
                message_key: "Message",
            },
            "InvalidPublicKey: Key is not valid",
        ),
        (
            Reply::error(400, "InstanceAlreadyRegistered", "Already registered"),
            "InstanceAlreadyRegistered: Already registered",
        ),
        (
            Reply::error(403, "AccessDeniedException", "nope"),
            "AccessDeniedException: nope",
        ),
    ];
    for (reply, want) in cases {
        let stub = Stub::start(ID, CODE);
        stub.push(reply);
        let e = client(&stub.url(), opts())
            .register(&request(CODE))
            .unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
        assert!(
            e.to_string().contains(&stub.requests()[0].request_id),
            "{e}"
        );
        assert_eq!(stub.requests().len(), 1, "{want} must not be retried");
        stub.assert_strict();
    }
}

#[test]
fn throttling_and_server_errors_are_retried_until_success() {
    let stub = Stub::start(ID, CODE);
    for _ in 0..3 {
        stub.push(Reply::throttle());
    }
    stub.push(Reply::error(400, "TooManyUpdates", "slow down"));
    stub.push(Reply::error(500, "InternalServerError", "oops"));
    stub.push(Reply::error(503, "ServiceUnavailable", "later"));
    stub.push(Reply::error(429, "", "busy"));
    stub.push(Reply::Close);
    let got = client(&stub.url(), opts())
        .register(&request(CODE))
        .unwrap();
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 9);
    assert_eq!(
        reqs.last().unwrap().instance_id.as_deref(),
        Some(got.instance_id.as_str())
    );
    assert_eq!(stub.registrations().len(), 1);
    stub.assert_strict();
}

#[test]
fn persistent_throttling_gives_up_at_the_deadline_naming_the_endpoint() {
    let stub = Stub::start(ID, CODE);
    for _ in 0..1000 {
        stub.push(Reply::throttle());
    }
    let mut o = opts();
    o.deadline = Duration::from_secs(1);
    let start = Instant::now();
    let e = client(&stub.url(), o).register(&request(CODE)).unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(e, SsmError::Unreachable { .. }), "{e:?}");
    let s = e.to_string();
    assert!(
        s.contains(&stub.url()) && s.contains("no proxy") && s.contains("ThrottlingException"),
        "{s}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "deadline ignored: {elapsed:?}"
    );
    assert!(stub.requests().len() > 2);
}

#[test]
fn a_hanging_endpoint_times_out_per_attempt_and_overall() {
    let stub = Stub::start(ID, CODE);
    for _ in 0..100 {
        stub.push(Reply::Hang);
    }
    let mut o = opts();
    o.timeout = Duration::from_millis(300);
    o.deadline = Duration::from_millis(1500);
    let start = Instant::now();
    let e = client(&stub.url(), o).register(&request(CODE)).unwrap_err();
    assert!(matches!(e, SsmError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(
        stub.requests().len() >= 2,
        "each attempt must time out on its own"
    );
}

#[test]
fn untrusted_certificate_is_a_tls_error_naming_the_host() {
    let stub = Stub::start(ID, CODE);
    let mut o = opts();
    o.ca_bundle = None; // Mozilla roots do not trust the test CA.
    let url = format!("https://localhost:{}", stub.port);
    let e = client(&url, o).register(&request(CODE)).unwrap_err();
    assert!(matches!(e, SsmError::Tls { .. }), "{e:?}");
    let s = e.to_string();
    assert!(
        s.contains("localhost") && s.contains("AWS_CA_BUNDLE") && s.contains("certificate"),
        "{s}"
    );
    assert!(stub.requests().is_empty());
}

#[test]
fn unresolvable_host_is_a_dns_error_naming_the_host() {
    let mut o = opts();
    o.deadline = Duration::from_millis(500);
    let e = client("https://ssm.no-such-region.invalid", o)
        .register(&request(CODE))
        .unwrap_err();
    assert!(matches!(e, SsmError::Dns { .. }), "{e:?}");
    assert!(e.to_string().contains("ssm.no-such-region.invalid"), "{e}");
}

#[test]
fn https_proxy_is_used_and_named() {
    let stub = Stub::start(ID, CODE);
    let proxy = ConnectProxy::start(stub.port);
    let url = proxy.url();
    let mut o = opts();
    o.egress = EgressProxy::from_vars(|k| (k == "HTTPS_PROXY").then(|| url.clone()));
    let endpoint = format!("https://{TEST_HOST}:{}", stub.port);
    let c = client(&endpoint, o);
    assert_eq!(c.egress_proxy(), Some(proxy.url().as_str()));
    c.register(&request(CODE)).unwrap();
    assert_eq!(
        *proxy.targets.lock().unwrap(),
        vec![format!("{TEST_HOST}:{}", stub.port)]
    );
    stub.assert_strict();
}

#[test]
fn a_dead_proxy_is_named_in_the_error_and_loopback_bypasses_it() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://127.0.0.1:{}", dead.local_addr().unwrap().port());
    drop(dead);
    let vars = |u: String| move |k: &str| (k == "HTTPS_PROXY").then(|| u.clone());
    let mut o = opts();
    o.deadline = Duration::from_millis(600);
    o.egress = EgressProxy::from_vars(vars(dead_url.clone()));
    let e = client(&format!("https://{TEST_HOST}:1"), o.clone())
        .register(&request(CODE))
        .unwrap_err();
    let s = e.to_string();
    assert!(s.contains(&dead_url) && s.contains(TEST_HOST), "{s}");
    // The same proxy settings, but a loopback endpoint: never proxied.
    let stub = Stub::start(ID, CODE);
    let c = client(&stub.url(), o);
    assert_eq!(c.egress_proxy(), None);
    c.register(&request(CODE)).unwrap();
}

#[test]
fn unreadable_ca_bundle_is_a_config_error() {
    let mut o = opts();
    o.ca_bundle = Some("/nonexistent/ca.pem".into());
    let e = Client::new(ssm::endpoint::parse_url("https://127.0.0.1:1").unwrap(), o)
        .err()
        .unwrap();
    assert!(matches!(e, SsmError::Config(_)), "{e:?}");
    assert!(
        e.to_string().contains("AWS_CA_BUNDLE") && e.to_string().contains("/nonexistent/ca.pem")
    );
}

/// The stand-in itself must refuse what AWS refuses, or the tests above prove nothing.
#[test]
fn the_stand_in_rejects_what_aws_would() {
    let stub = Stub::start(ID, CODE);
    let certs = eks_connector::tls::load_pem_certs(&pki().ca).unwrap();
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(eks_connector::tls::to_ureq_roots(&certs))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .user_agent("eks-connector/test")
        .build()
        .into();
    let good = serde_json::json!({
        "ActivationCode": CODE, "ActivationId": ID,
        "Fingerprint": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "PublicKey": public_key_b64(), "PublicKeyType": "Rsa"
    });
    let short_key = {
        let k = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        base64::engine::general_purpose::STANDARD
            .encode(k.to_public_key().to_public_key_der().unwrap().as_bytes())
    };
    let cases: Vec<(&str, &str, serde_json::Value, &str)> = vec![
        (
            "AmazonSSM.RegisterInstance",
            ssm::CONTENT_TYPE,
            good.clone(),
            "X-Amz-Target",
        ),
        (
            ssm::TARGET,
            "application/json",
            good.clone(),
            "Content-Type",
        ),
        (
            ssm::TARGET,
            ssm::CONTENT_TYPE,
            {
                let mut b = good.clone();
                b["PublicKey"] = short_key.into();
                b
            },
            "PublicKey",
        ),
        (
            ssm::TARGET,
            ssm::CONTENT_TYPE,
            {
                let mut b = good.clone();
                b["Fingerprint"] = "not-a-uuid".into();
                b
            },
            "Fingerprint",
        ),
        (
            ssm::TARGET,
            ssm::CONTENT_TYPE,
            {
                let mut b = good.clone();
                b.as_object_mut().unwrap().remove("PublicKeyType");
                b
            },
            "body fields",
        ),
    ];
    for (i, (target, ctype, body, what)) in cases.into_iter().enumerate() {
        let resp = agent
            .post(&format!("{}/", stub.url()))
            .header("X-Amz-Target", target)
            .header("Content-Type", ctype)
            .send(serde_json::to_vec(&body).unwrap().as_slice())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{what}");
        let v = stub.violations();
        assert!(v.len() > i, "{what} not flagged: {v:?}");
        assert!(v.iter().any(|m| m.contains(what)), "{what}: {v:?}");
    }
    assert!(stub.registrations().is_empty());
}
