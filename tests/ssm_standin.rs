//! The SSM stand-in refuses what AWS refuses, for the SSM agent's own calls: a signature by
//! another key, the old key after a rotation, an instance it does not know or a signature by
//! another instance's key, a stale `X-Amz-Date`, a fingerprint that is not the registered one, a
//! body that is not the signed one. Requests are sent by real curl, signed here the way the
//! agent signs (`agent/ssm/rsaauth/` in aws/amazon-ssm-agent); that the agent's own requests
//! verify is shown by tests/real_agent.rs.

#[path = "support/ssm_stub.rs"]
mod ssm_stub;

use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine;
use rsa::pkcs8::EncodePublicKey;
use rsa::sha2::{Digest, Sha256};
use serde_json::{json, Value};
use ssm_stub::{amz_date, pki, Stub};

const ACTIVATION_ID: &str = "3f1e6a52-7c0b-4d8e-9a4f-2b6c8d0e1f23";
const ACTIVATION_CODE: &str = "abcdefghijklmnopqrstuvwxyz";
const INSTANCE: &str = "mi-0123456789abcdef0";
const FINGERPRINT: &str = "8a4e2c1d-5b3f-4e6a-9c7d-0f1e2d3c4b5a";

fn new_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap()
}

fn spki(key: &rsa::RsaPrivateKey) -> Vec<u8> {
    key.to_public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One call as the agent makes it.
struct Call<'a> {
    target: &'a str,
    body: String,
    /// The body actually sent, when it is not the signed one.
    sent_body: Option<String>,
    instance: &'a str,
    key: &'a rsa::RsaPrivateKey,
    date: SystemTime,
    chunked: bool,
}

impl<'a> Call<'a> {
    fn token(instance: &'a str, key: &'a rsa::RsaPrivateKey, fingerprint: &str) -> Call<'a> {
        Call {
            target: "AmazonSSM.RequestManagedInstanceRoleToken",
            body: json!({ "Fingerprint": fingerprint }).to_string(),
            sent_body: None,
            instance,
            key,
            date: SystemTime::now(),
            chunked: true,
        }
    }

    fn new_key(instance: &'a str, key: &'a rsa::RsaPrivateKey, new: &rsa::RsaPrivateKey) -> Self {
        Call {
            target: "AmazonSSM.UpdateManagedInstancePublicKey",
            body: json!({
                "NewPublicKey": base64::engine::general_purpose::STANDARD.encode(spki(new)),
                "NewPublicKeyType": "Rsa"
            })
            .to_string(),
            ..Call::token(instance, key, "")
        }
    }

    /// Sends it with curl; returns the status and the answer.
    fn send(&self, stub: &Stub) -> (u16, Value) {
        let host = format!("127.0.0.1:{}", stub.port);
        let date = amz_date(self.date);
        let scope = format!("{}/us-west-2/ssm/aws4_request", &date[..8]);
        let ctype = "application/x-amz-json-1.1";
        let body_hash = hex(&Sha256::digest(self.body.as_bytes()));
        let canonical = format!(
            "POST\n/\n\ncontent-type:{ctype}\nhost:{host}\nx-amz-date:{date}\nx-amz-target:{}\n\n\
             content-type;host;x-amz-date;x-amz-target\n{body_hash}",
            self.target
        );
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let sig = self
            .key
            .sign_with_rng(
                &mut rsa::rand_core::OsRng,
                rsa::Pss::new_with_salt::<Sha256>(32),
                &Sha256::digest(to_sign.as_bytes()),
            )
            .unwrap();
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={}",
            self.instance,
            base64::engine::general_purpose::STANDARD.encode(sig)
        );
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(&pki().ca)
        .args(["-H", &format!("Content-Type: {ctype}")])
        .args(["-H", &format!("X-Amz-Date: {date}")])
        .args(["-H", &format!("X-Amz-Target: {}", self.target)])
        .args(["-H", &format!("X-Amz-Content-Sha256: {body_hash}")])
        .args(["-H", &format!("Authorization: {auth}")])
        .args(["-H", "Expect:"]);
        if self.chunked {
            c.args(["-H", "Transfer-Encoding: chunked"]);
        }
        c.arg("--data-binary")
            .arg(self.sent_body.as_deref().unwrap_or(&self.body))
            .arg(stub.url() + "/");
        let out = c.output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (
            code.parse().unwrap_or_else(|_| panic!("curl: {out:?}")),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }
}

fn setup() -> (Stub, rsa::RsaPrivateKey) {
    let stub = Stub::start(ACTIVATION_ID, ACTIVATION_CODE);
    let key = new_key();
    stub.add_instance(INSTANCE, &spki(&key), FINGERPRINT);
    (stub, key)
}

/// The refusal: status 400, the error code, one violation recorded.
fn assert_refused(stub: &Stub, answer: (u16, Value), code: &str, before: usize) {
    assert_eq!(answer.0, 400, "{answer:?}");
    assert_eq!(
        answer.1["__type"],
        format!("com.amazonaws.ssm#{code}"),
        "{answer:?}"
    );
    assert_eq!(
        stub.violations().len(),
        before + 1,
        "{:?}",
        stub.violations()
    );
}

#[test]
fn a_correctly_signed_token_request_gets_credentials_chunked_or_not() {
    let (stub, key) = setup();
    for chunked in [true, false] {
        let (status, answer) = Call {
            chunked,
            ..Call::token(INSTANCE, &key, FINGERPRINT)
        }
        .send(&stub);
        assert_eq!(status, 200, "{answer}");
        for field in ["AccessKeyId", "SecretAccessKey", "SessionToken"] {
            assert!(
                answer[field].as_str().is_some_and(|v| !v.is_empty()),
                "{answer}"
            );
        }
        assert!(answer["TokenExpirationDate"].as_f64().unwrap() > 0.0);
        assert_eq!(answer["UpdateKeyPair"], false);
    }
    let calls = stub.tokens_granted();
    assert_eq!(calls.len(), 2);
    assert!(calls[0].chunked && !calls[1].chunked);
    assert_eq!(calls[0].signed_by, Some((INSTANCE.to_string(), 0)));
    stub.assert_strict();

    // A forced rotation is said once, on the next answer.
    stub.rotate_on_next_token();
    assert_eq!(
        Call::token(INSTANCE, &key, FINGERPRINT).send(&stub).1["UpdateKeyPair"],
        true
    );
    assert_eq!(
        Call::token(INSTANCE, &key, FINGERPRINT).send(&stub).1["UpdateKeyPair"],
        false
    );
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let (stub, _) = setup();
    let other = new_key();
    let answer = Call::token(INSTANCE, &other, FINGERPRINT).send(&stub);
    assert_refused(&stub, answer, "InvalidSignatureException", 0);
    assert!(stub.tokens_granted().is_empty());
}

#[test]
fn after_a_rotation_only_the_new_key_is_accepted() {
    let (stub, old) = setup();
    let new = new_key();
    let (status, answer) = Call::new_key(INSTANCE, &old, &new).send(&stub);
    assert_eq!((status, &answer), (200, &json!({})));
    assert_eq!(
        stub.instance(INSTANCE).unwrap().keys,
        vec![spki(&old), spki(&new)]
    );

    let answer = Call::token(INSTANCE, &old, FINGERPRINT).send(&stub);
    let message = answer.1["message"].as_str().unwrap_or("").to_string();
    assert_refused(&stub, answer, "InvalidSignatureException", 0);
    assert!(message.contains("replaced"), "{message}");
    // Nor can the old key rotate again.
    let answer = Call::new_key(INSTANCE, &old, &new_key()).send(&stub);
    assert_refused(&stub, answer, "InvalidSignatureException", 1);

    let (status, _) = Call::token(INSTANCE, &new, FINGERPRINT).send(&stub);
    assert_eq!(status, 200);
    assert_eq!(
        stub.tokens_granted()[0].signed_by,
        Some((INSTANCE.to_string(), 1))
    );
}

#[test]
fn another_instance_is_refused() {
    let (stub, key) = setup();
    let answer = Call::token("mi-00000000000000000", &key, FINGERPRINT).send(&stub);
    assert_refused(&stub, answer, "InvalidInstanceId", 0);
    // A known instance, signed with this one's key.
    let other = new_key();
    stub.add_instance("mi-0fedcba9876543210", &spki(&other), FINGERPRINT);
    let answer = Call::token("mi-0fedcba9876543210", &key, FINGERPRINT).send(&stub);
    assert_refused(&stub, answer, "InvalidSignatureException", 1);
}

#[test]
fn a_stale_or_future_date_is_refused() {
    let (stub, key) = setup();
    let sixteen = Duration::from_secs(16 * 60);
    let answer = Call {
        date: SystemTime::now() - sixteen,
        ..Call::token(INSTANCE, &key, FINGERPRINT)
    }
    .send(&stub);
    let message = answer.1["message"].as_str().unwrap_or("").to_string();
    assert_refused(&stub, answer, "InvalidSignatureException", 0);
    assert!(message.contains("Signature expired"), "{message}");
    let answer = Call {
        date: SystemTime::now() + sixteen,
        ..Call::token(INSTANCE, &key, FINGERPRINT)
    }
    .send(&stub);
    assert_refused(&stub, answer, "InvalidSignatureException", 1);
    // Within 15 minutes is fine.
    let (status, _) = Call {
        date: SystemTime::now() - Duration::from_secs(14 * 60),
        ..Call::token(INSTANCE, &key, FINGERPRINT)
    }
    .send(&stub);
    assert_eq!(status, 200);
}

#[test]
fn a_fingerprint_that_is_not_the_registered_one_is_refused() {
    let (stub, key) = setup();
    let answer = Call::token(INSTANCE, &key, "0a4e2c1d-5b3f-4e6a-9c7d-0f1e2d3c4b5a").send(&stub);
    assert_refused(&stub, answer, "MachineFingerprintDoesNotMatch", 0);
}

#[test]
fn a_body_that_is_not_the_signed_one_is_refused() {
    let (stub, key) = setup();
    let answer = Call {
        sent_body: Some(json!({ "Fingerprint": FINGERPRINT, "x": 1 }).to_string()),
        ..Call::token(INSTANCE, &key, FINGERPRINT)
    }
    .send(&stub);
    assert_refused(&stub, answer, "InvalidSignatureException", 0);
}

#[test]
fn the_control_channel_is_answered_500() {
    let (stub, _) = setup();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&pki().ca)
        .args(["-X", "POST", "--data", "{}"])
        .arg(format!("{}/v1/control-channel/{INSTANCE}", stub.url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "500");
    assert_eq!(stub.calls("control-channel").len(), 1);
}
