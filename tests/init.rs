//! `eks-connector-init`, the real binary, against the real kube-apiserver (tests/common) with
//! exactly the RBAC in manifests/base/role.yaml, and the strict SSM stand-in (tests/support).

mod common;
#[path = "support/ssm_stub.rs"]
mod ssm_stub;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use eks_connector::kube::Secret;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;
use serde_json::{json, Value};
use ssm_stub::{pki, Reply, Stub, TEST_HOST};

const ACT_ID: &str = "2f3c8b1a-4d5e-4f60-8a7b-9c0d1e2f3a4b";
const ACT_CODE: &str = "Xy7pQ2rS9tU4vW1xZ8aB3cD6";
const ACT_ID_2: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const ACT_CODE_2: &str = "Nn5mM4lL3kK2jJ1hH0gG9fF8";
const SECRET: &str = "eks-connector-state-0";
const FILES: [&str; 3] = [
    "Manifest",
    "Store/RegistrationKey",
    "Store/InstanceFingerprint",
];

fn fixtures() -> PathBuf {
    common::repo_root().join("tests/fixtures/init")
}

struct Env {
    ns: common::TestNamespace,
    stub: Stub,
    vault: PathBuf,
}

/// A namespace whose `connector` ServiceAccount has exactly the shipped Role (when `rbac`).
fn setup(prefix: &str, rbac: bool) -> Env {
    let ns = common::cluster().namespace(prefix);
    if rbac {
        grant_manifest_role(&ns);
    }
    let vault = std::env::temp_dir().join(format!(
        "init-test-{}-{}",
        std::process::id(),
        eks_connector::random::uuid_v4().unwrap()
    ));
    Env {
        ns,
        stub: Stub::start(ACT_ID, ACT_CODE),
        vault: vault.join("Vault"),
    }
}

fn grant_manifest_role(ns: &common::TestNamespace) {
    let role = ns.apply_role_from_manifest(&common::repo_root().join("manifests/base/role.yaml"));
    ns.bind("Role", &role, "ServiceAccount", "connector");
}

impl Env {
    /// The init binary as a pod would run it (clean environment, activation from env vars).
    fn cmd(&self) -> Command {
        self.cmd_with(&[])
    }

    /// Same, with some `--name=value` flags replaced (or added).
    fn cmd_with(&self, flags: &[&str]) -> Command {
        let base = [
            format!("--agent.endpoint={}", self.stub.url()),
            format!("--state.baseDir={}", self.vault.display()),
            format!("--state.secretNamespace={}", self.ns.name),
            format!("--serviceaccount.dir={}", self.ns.sa_dir.display()),
            "--ssm.timeout=1s".into(),
            "--ssm.deadline=4s".into(),
            "--kube.deadline=3s".into(),
        ];
        let name = |f: &str| f.split('=').next().unwrap().to_string();
        let overridden: Vec<String> = flags.iter().map(|f| name(f)).collect();
        let mut c = Command::new(env!("CARGO_BIN_EXE_eks-connector-init"));
        c.env_clear()
            .envs(self.ns.kube_env())
            .env("POD_NAME", "eks-connector-0")
            .env("EKS_ACTIVATION_ID", ACT_ID)
            .env("EKS_ACTIVATION_CODE", ACT_CODE)
            .env("AWS_CA_BUNDLE", &pki().ca)
            .env("RUST_LOG", "info")
            .args(base.iter().filter(|f| !overridden.contains(&name(f))))
            .args(flags);
        c
    }

    fn secret(&self) -> Option<Secret> {
        match common::cluster().admin().get_secret(&self.ns.name, SECRET) {
            Ok(s) => Some(s),
            Err(eks_connector::kube::KubeError::NotFound { .. }) => None,
            Err(e) => panic!("get secret: {e}"),
        }
    }

    fn vault_file(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.vault.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))
    }

    /// Puts a Secret into the namespace as the admin (e.g. one the original wrote).
    fn put_secret(&self, mut secret: Value) {
        secret["metadata"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| !matches!(k.as_str(), "namespace" | "resourceVersion" | "uid"));
        self.ns.create("/api/v1", "secrets", secret);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(p) = self.vault.parent() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

struct Run {
    code: i32,
    stderr: String,
}

impl Run {
    /// The ERROR line (there must be exactly one on failure).
    fn error_line(&self) -> &str {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.contains("ERROR"))
            .collect();
        assert_eq!(lines.len(), 1, "want one error line:\n{}", self.stderr);
        lines[0]
    }

    fn expect_error(&self, code: i32, wants: &[&str]) -> &str {
        assert_eq!(self.code, code, "exit code; stderr:\n{}", self.stderr);
        let line = self.error_line();
        for w in wants {
            assert!(line.contains(w), "{w:?} missing from: {line}");
        }
        line
    }
}

fn run(mut c: Command) -> Run {
    let out = c.output().expect("run eks-connector-init");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains(ACT_CODE) && !stderr.contains(ACT_CODE_2),
        "activation code logged:\n{stderr}"
    );
    Run {
        code: out.status.code().unwrap_or(-1),
        stderr,
    }
}

fn ok(c: Command) -> Run {
    let r = run(c);
    assert_eq!(r.code, 0, "init failed:\n{}", r.stderr);
    r
}

fn regkey_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn first_start_registers_once_then_restarts_reuse_the_same_bytes() {
    let env = setup("first", true);
    let r = ok(env.cmd());
    env.stub.assert_strict();
    let regs = env.stub.registrations();
    assert_eq!(regs.len(), 1);
    let instance = regs[0].instance_id.clone().unwrap();
    // Logged: the instance id and the request id; never the private key.
    assert!(r.stderr.contains(&instance), "{}", r.stderr);
    assert!(r.stderr.contains(&regs[0].request_id), "{}", r.stderr);

    // The Vault: the original's formats, modes 0700/0600.
    assert_eq!(
        env.vault_file("Manifest"),
        std::fs::read(fixtures().join("Manifest")).unwrap()
    );
    let rk = regkey_json(&env.vault_file("Store/RegistrationKey"));
    let keys: Vec<&str> = rk.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 7);
    assert_eq!(rk["instanceID"], instance.as_str());
    assert_eq!(rk["region"], "us-west-2");
    assert_eq!(rk["privateKeyType"], "Rsa");
    let raw = String::from_utf8(env.vault_file("Store/RegistrationKey")).unwrap();
    assert!(raw.starts_with(&format!("{{\"instanceID\":\"{instance}\",\"region\":\"us-west-2\",\"InstanceType\":\"\",\"availabilityZone\":\"\",\"privateKey\":\"")), "{raw}");
    assert!(
        !r.stderr.contains(rk["privateKey"].as_str().unwrap()),
        "private key logged"
    );
    let date = rk["privateKeyCreatedDate"].as_str().unwrap();
    assert!(date.ends_with(" +0000 UTC") && date.len() >= 29, "{date}");
    let fp = regkey_json(&env.vault_file("Store/InstanceFingerprint"));
    assert_eq!(fp["fingerprint"], regs[0].body["Fingerprint"]);
    assert_eq!(
        String::from_utf8(env.vault_file("Store/InstanceFingerprint")).unwrap(),
        format!(
            "{{\"fingerprint\":{},\"hardwareHash\":{{}},\"similarityThreshold\":-1}}",
            regs[0].body["Fingerprint"]
        )
    );
    for d in ["", "Store"] {
        let m = std::fs::metadata(env.vault.join(d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o700, "{d}");
    }
    for f in FILES {
        let m = std::fs::metadata(env.vault.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600, "{f}");
    }

    // The private key in the Vault (PKCS#1) is the one whose public half SSM received (SPKI).
    let der = base64::engine::general_purpose::STANDARD
        .decode(rk["privateKey"].as_str().unwrap())
        .unwrap();
    let private = rsa::RsaPrivateKey::from_pkcs1_der(&der).expect("PKCS#1 DER");
    let spki = private.to_public_key().to_public_key_der().unwrap();
    assert_eq!(Some(spki.as_bytes().to_vec()), regs[0].public_key_der);

    // The Secret: the Vault's exact bytes, as the original writes it.
    let s = env.secret().expect("state Secret");
    assert_eq!(s.type_, "Opaque");
    assert_eq!(s.labels.get("name").map(String::as_str), Some(SECRET));
    assert_eq!(s.data.len(), 4);
    assert_eq!(s.data["manifest"], env.vault_file("Manifest"));
    assert_eq!(s.data["regkey"], env.vault_file("Store/RegistrationKey"));
    assert_eq!(
        s.data["fingerprint"],
        env.vault_file("Store/InstanceFingerprint")
    );
    assert_eq!(
        s.data["connector-config"],
        format!("{{\"activationId\":\"{ACT_ID}\"}}").into_bytes()
    );

    // Restart with the Vault intact, then with a fresh (empty) Vault as in a new pod: no
    // registration, same bytes, the Secret not rewritten.
    let before: Vec<Vec<u8>> = FILES.iter().map(|f| env.vault_file(f)).collect();
    ok(env.cmd());
    std::fs::remove_dir_all(&env.vault).unwrap();
    let r = ok(env.cmd());
    assert!(r.stderr.contains("reusing instance"), "{}", r.stderr);
    assert_eq!(env.stub.requests().len(), 1, "a restart registered again");
    let after: Vec<Vec<u8>> = FILES.iter().map(|f| env.vault_file(f)).collect();
    assert_eq!(before, after);
    assert_eq!(env.secret().unwrap().resource_version, s.resource_version);
}

#[test]
fn a_secret_written_by_the_original_is_reused_byte_for_byte() {
    let env = setup("original", true);
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("original-state-secret.json")).unwrap(),
    )
    .unwrap();
    env.put_secret(fixture);
    let rv = env.secret().unwrap().resource_version;
    ok(env.cmd());
    assert!(
        env.stub.requests().is_empty(),
        "registered although the Secret was valid"
    );
    for f in FILES {
        assert_eq!(
            env.vault_file(f),
            std::fs::read(fixtures().join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(
        env.secret().unwrap().resource_version,
        rv,
        "the Secret was rewritten"
    );
}

#[test]
fn very_old_state_without_activation_id_is_reused_with_a_warning() {
    let env = setup("oldstate", true);
    let mut fixture: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("original-state-secret.json")).unwrap(),
    )
    .unwrap();
    fixture["data"]
        .as_object_mut()
        .unwrap()
        .remove("connector-config");
    env.put_secret(fixture);
    let r = ok(env.cmd());
    assert!(
        r.stderr.contains("WARN") && r.stderr.contains("no activationId"),
        "{}",
        r.stderr
    );
    assert!(env.stub.requests().is_empty());
    assert_eq!(
        env.vault_file("Store/RegistrationKey"),
        std::fs::read(fixtures().join("Store/RegistrationKey")).unwrap()
    );
}

/// Issue 14, 2: a Secret that lost `connector-config` (re-created by an older key sync) is not
/// read as "old state, reuse": the Vault's activation marker says which activation it is, so a
/// new activation still registers again.
#[test]
fn a_secret_without_connector_config_is_checked_against_the_vaults_marker() {
    let env = setup("nomarker", true);
    ok(env.cmd());
    let first = env.stub.registrations()[0].instance_id.clone().unwrap();
    let mut s = env.secret().unwrap();
    s.data.remove("connector-config");
    common::cluster()
        .admin()
        .update_secret(&s, eks_connector::kube::OnConflict::Fail)
        .unwrap();
    env.stub.expect_activation(ACT_ID_2, ACT_CODE_2);
    let mut c = env.cmd();
    c.env("EKS_ACTIVATION_ID", ACT_ID_2)
        .env("EKS_ACTIVATION_CODE", ACT_CODE_2);
    let r = ok(c);
    let regs = env.stub.registrations();
    assert_eq!(
        regs.len(),
        2,
        "reused instead of registering:\n{}",
        r.stderr
    );
    assert_ne!(regs[1].instance_id.clone().unwrap(), first);
    assert_eq!(
        env.secret().unwrap().data["connector-config"],
        format!("{{\"activationId\":\"{ACT_ID_2}\"}}").into_bytes()
    );
}

/// Also (issue 14): a Secret of random bytes, or of valid JSON with every field of the wrong
/// type, gets one clear line and is left as it was; the Vault is not touched.
#[test]
fn a_secret_of_random_bytes_or_wrong_types_is_refused_and_left_untouched() {
    let env = setup("badtypes", true);
    let mut random = vec![0u8; 4096];
    eks_connector::random::fill(&mut random).unwrap();
    let wrong = br#"{"instanceID":5,"region":["us"],"privateKey":{"k":1},"privateKeyType":true}"#;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let wrong_manifest = br#"{"InstanceFingerprint":1,"RegistrationKey":[]}"#;
    let cases = [
        (random.as_slice(), random.as_slice()),
        (wrong_manifest.as_slice(), wrong.as_slice()),
    ];
    for (i, (manifest, regkey)) in cases.into_iter().enumerate() {
        let name = format!("eks-connector-state-{i}");
        env.put_secret(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"name": name}},
            "type": "Opaque",
            "data": {
                "manifest": b64(manifest),
                "regkey": b64(regkey),
                "fingerprint": b64(&random[..100]),
                "connector-config": b64(br#"{"activationId":7}"#),
            }
        }));
        let before = common::cluster()
            .admin()
            .get_secret(&env.ns.name, &name)
            .unwrap();
        let mut c = env.cmd();
        c.env("POD_NAME", format!("eks-connector-{i}"));
        let r = run(c);
        r.expect_error(21, &["refusing to touch it"]);
        let after = common::cluster()
            .admin()
            .get_secret(&env.ns.name, &name)
            .unwrap();
        assert_eq!(after.resource_version, before.resource_version);
        assert_eq!(after.data, before.data);
    }
    assert!(env.stub.requests().is_empty());
    assert!(!env.vault.join("Store/RegistrationKey").exists());
}

/// Also (issue 14): an SSM answer of 100 MiB, of random bytes, or of valid JSON with every field
/// of the wrong type gets one clear printable line, and nothing is written.
#[test]
fn a_huge_random_or_mistyped_ssm_answer_is_one_clear_line_and_nothing_is_written() {
    let env = setup("badanswer", true);
    let mut random = vec![0u8; 4096];
    eks_connector::random::fill(&mut random).unwrap();
    random[10] = b'\n';
    let wrong = br#"{"InstanceId":5,"__type":[1],"message":{"a":"b"}}"#.to_vec();
    let cases = [
        ("huge", 200, vec![b' '; 100 << 20]),
        ("random", 200, random.clone()),
        ("random error", 400, random),
        ("wrong types", 200, wrong.clone()),
        ("wrong types error", 400, wrong),
    ];
    for (what, status, body) in cases {
        env.stub.push(Reply::Raw { status, body });
        let r = run(env.cmd());
        assert_eq!(r.code, 12, "{what}: exit code; stderr:\n{}", r.stderr);
        let line = r.error_line();
        assert!(
            line.contains(&env.stub.url()) || line.contains("SSM"),
            "{what}: {line}"
        );
        assert!(!line.chars().any(|c| c.is_control()), "{what}: {line:?}");
        assert_nothing_written(&env);
    }
}

#[test]
fn a_new_activation_id_registers_again() {
    let env = setup("reactivate", true);
    ok(env.cmd());
    let first = env.stub.registrations()[0].instance_id.clone().unwrap();
    env.stub.expect_activation(ACT_ID_2, ACT_CODE_2);
    let mut c = env.cmd();
    c.env("EKS_ACTIVATION_ID", ACT_ID_2)
        .env("EKS_ACTIVATION_CODE", ACT_CODE_2);
    ok(c);
    let regs = env.stub.registrations();
    assert_eq!(regs.len(), 2);
    let second = regs[1].instance_id.clone().unwrap();
    assert_ne!(first, second);
    let s = env.secret().unwrap();
    assert_eq!(
        s.data["connector-config"],
        format!("{{\"activationId\":\"{ACT_ID_2}\"}}").into_bytes()
    );
    assert_eq!(
        regkey_json(&s.data["regkey"])["instanceID"],
        second.as_str()
    );
    assert_eq!(s.data["regkey"], env.vault_file("Store/RegistrationKey"));
    env.stub.assert_strict();
}

#[test]
fn secret_create_refused_after_registration_then_restart_adopts_the_vault() {
    let env = setup("adopt-create", false);
    // Only get and update: create is missing.
    env.ns.create_role(
        "partial",
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "update"]}]),
    );
    env.ns
        .bind("Role", "partial", "ServiceAccount", "connector");
    let r = run(env.cmd());
    let instance = env.stub.registrations()[0].instance_id.clone().unwrap();
    r.expect_error(
        20,
        &[
            "create",
            &format!("Secret {}/{SECRET}", env.ns.name),
            "cannot be limited",
            &instance,
            "adopts",
        ],
    );
    assert!(env.secret().is_none());
    // The Vault holds the complete registration.
    assert_eq!(
        regkey_json(&env.vault_file("Store/RegistrationKey"))["instanceID"],
        instance.as_str()
    );

    grant_manifest_role(&env.ns);
    let r = ok(env.cmd());
    assert!(r.stderr.contains("adopting instance"), "{}", r.stderr);
    assert_eq!(env.stub.requests().len(), 1, "registered a second instance");
    let s = env.secret().expect("Secret written on adoption");
    for (k, f) in [
        ("manifest", FILES[0]),
        ("regkey", FILES[1]),
        ("fingerprint", FILES[2]),
    ] {
        assert_eq!(s.data[k], env.vault_file(f), "{k}");
    }
    assert_eq!(
        s.data["connector-config"],
        format!("{{\"activationId\":\"{ACT_ID}\"}}").into_bytes()
    );
}

#[test]
fn secret_update_refused_after_reregistration_then_restart_adopts_the_vault() {
    let env = setup("adopt-update", false);
    // The original's state for another activation.
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("original-state-secret.json")).unwrap(),
    )
    .unwrap();
    env.put_secret(fixture);
    env.ns.create_role(
        "no-update",
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]}]),
    );
    env.ns
        .bind("Role", "no-update", "ServiceAccount", "connector");
    env.stub.expect_activation(ACT_ID_2, ACT_CODE_2);
    let cmd = || {
        let mut c = env.cmd();
        c.env("EKS_ACTIVATION_ID", ACT_ID_2)
            .env("EKS_ACTIVATION_CODE", ACT_CODE_2);
        c
    };
    let r = run(cmd());
    r.expect_error(
        20,
        &[
            "update",
            &format!("resourceNames: [\"{SECRET}\"]"),
            "adopts",
        ],
    );
    let old = env.secret().unwrap();
    assert_eq!(
        old.data["regkey"],
        std::fs::read(fixtures().join("Store/RegistrationKey")).unwrap()
    );

    grant_manifest_role(&env.ns);
    ok(cmd());
    assert_eq!(env.stub.registrations().len(), 1);
    let s = env.secret().unwrap();
    assert_eq!(s.data["regkey"], env.vault_file("Store/RegistrationKey"));
    assert_eq!(
        s.data["connector-config"],
        format!("{{\"activationId\":\"{ACT_ID_2}\"}}").into_bytes()
    );
}

#[test]
fn a_key_rotated_in_the_vault_but_not_saved_is_kept_and_saved() {
    let env = setup("rotated", true);
    ok(env.cmd());
    let instance = env.stub.registrations()[0].instance_id.clone().unwrap();
    // The agent rotates the key in place; the launcher never got to save it.
    let mut rk = regkey_json(&env.vault_file("Store/RegistrationKey"));
    rk["privateKey"] = json!("MAMCAQA=");
    rk["privateKeyCreatedDate"] = json!("2026-12-02 15:04:05.5 +0000 UTC");
    let rotated = serde_json::to_vec(&rk).unwrap();
    std::fs::write(env.vault.join("Store/RegistrationKey"), &rotated).unwrap();
    let r = ok(env.cmd());
    assert!(r.stderr.contains("newer key"), "{}", r.stderr);
    assert_eq!(env.stub.requests().len(), 1);
    assert_eq!(
        env.vault_file("Store/RegistrationKey"),
        rotated,
        "the rotated key was overwritten"
    );
    let s = env.secret().unwrap();
    assert_eq!(s.data["regkey"], rotated);
    assert_eq!(
        regkey_json(&s.data["regkey"])["instanceID"],
        instance.as_str()
    );
    assert_eq!(
        s.data["connector-config"],
        format!("{{\"activationId\":\"{ACT_ID}\"}}").into_bytes()
    );
}

#[test]
fn an_empty_secret_is_filled_in_and_a_trailing_newline_in_the_code_is_ignored() {
    let env = setup("emptysecret", true);
    env.put_secret(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": SECRET, "annotations": {"keep": "me"}}}),
    );
    let mut c = env.cmd();
    c.env("EKS_ACTIVATION_CODE", format!("{ACT_CODE}\n"));
    let r = ok(c);
    assert!(r.stderr.contains("whitespace"), "{}", r.stderr);
    assert_eq!(env.stub.registrations().len(), 1);
    env.stub.assert_strict();
    let s = env.secret().unwrap();
    assert_eq!(s.data.len(), 4);
    assert_eq!(s.data["regkey"], env.vault_file("Store/RegistrationKey"));
    assert_eq!(s.labels.get("name").map(String::as_str), Some(SECRET));
    let raw = common::cluster()
        .admin_request(
            "GET",
            &format!("/api/v1/namespaces/{}/secrets/{SECRET}", env.ns.name),
            None,
        )
        .unwrap();
    assert_eq!(raw["metadata"]["annotations"]["keep"], "me");
}

/// Waits until the stand-in has received `n` requests.
fn wait_requests(env: &Env, n: usize) {
    common::wait_for(std::time::Duration::from_secs(20), || {
        (env.stub.requests().len() >= n).then_some(())
    })
    .expect("the registration request never arrived");
}

#[test]
fn a_secret_changed_during_registration_is_reread_not_lost() {
    let env = setup("conflict", true);
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("original-state-secret.json")).unwrap(),
    )
    .unwrap();
    env.put_secret(fixture);
    env.stub.expect_activation(ACT_ID_2, ACT_CODE_2);
    env.stub
        .push(Reply::Delay(std::time::Duration::from_millis(1500)));
    let mut c = env.cmd_with(&["--ssm.timeout=5s", "--ssm.deadline=10s"]);
    c.env("EKS_ACTIVATION_ID", ACT_ID_2)
        .env("EKS_ACTIVATION_CODE", ACT_CODE_2)
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    // While SSM is answering, someone else changes the Secret: init's update will conflict.
    wait_requests(&env, 1);
    let admin = common::cluster().admin();
    let mut s = admin.get_secret(&env.ns.name, SECRET).unwrap();
    s.labels.insert("touched".into(), "yes".into());
    admin
        .update_secret(&s, eks_connector::kube::OnConflict::Fail)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("reading it again"), "{stderr}");
    let s = env.secret().unwrap();
    assert_eq!(s.labels.get("touched").map(String::as_str), Some("yes"));
    assert_eq!(s.data["regkey"], env.vault_file("Store/RegistrationKey"));
    assert_eq!(
        s.data["connector-config"],
        format!("{{\"activationId\":\"{ACT_ID_2}\"}}").into_bytes()
    );
    assert_eq!(env.stub.registrations().len(), 1);
}

#[test]
fn a_secret_created_during_registration_is_updated_instead() {
    let env = setup("exists", true);
    env.stub
        .push(Reply::Delay(std::time::Duration::from_millis(1500)));
    let mut c = env.cmd_with(&["--ssm.timeout=5s", "--ssm.deadline=10s"]);
    c.stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    wait_requests(&env, 1);
    env.put_secret(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET, "labels": {"made-by": "someone-else"}}}));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("reading it again"), "{stderr}");
    let s = env.secret().unwrap();
    assert_eq!(
        s.labels.get("made-by").map(String::as_str),
        Some("someone-else")
    );
    assert_eq!(s.data["regkey"], env.vault_file("Store/RegistrationKey"));
    assert_eq!(env.stub.registrations().len(), 1);
}

#[test]
fn throttling_is_retried_and_registers_once() {
    let env = setup("throttle", true);
    for _ in 0..3 {
        env.stub.push(Reply::throttle());
    }
    ok(env.cmd());
    assert_eq!(env.stub.requests().len(), 4);
    assert_eq!(env.stub.registrations().len(), 1);
    assert!(env.secret().is_some());
    env.stub.assert_strict();
}

/// Asserts that nothing was written: no Secret, no registration in the Vault.
fn assert_nothing_written(env: &Env) {
    assert!(env.secret().is_none(), "a Secret was written");
    assert!(
        !env.vault.join("Store/RegistrationKey").exists(),
        "a Vault was written"
    );
}

#[test]
fn invalid_activation_explains_the_id_code_pair() {
    let env = setup("invalid", true);
    let mut c = env.cmd();
    c.env("EKS_ACTIVATION_CODE", "WrongWrongWrongWrong00");
    let r = run(c);
    r.expect_error(
        10,
        &[
            "InvalidActivation",
            "id/code",
            "deleted",
            "base64",
            "AWS returned",
        ],
    );
    assert_eq!(
        env.stub.requests().len(),
        1,
        "InvalidActivation must not be retried"
    );
    assert_nothing_written(&env);
}

#[test]
fn expired_activation_says_a_new_registration_is_needed() {
    let env = setup("expired", true);
    env.stub.push(Reply::error(
        400,
        "ActivationExpired",
        "Activation has expired",
    ));
    let r = run(env.cmd());
    r.expect_error(
        11,
        &[
            "ActivationExpired",
            "Activation has expired",
            "3 days",
            "register the cluster again",
        ],
    );
    assert_nothing_written(&env);
}

#[test]
fn other_ssm_rejections_carry_code_and_message_verbatim() {
    let cases = [
        Reply::error(
            400,
            "RegistrationLimitExceeded",
            "Registration limit of 2 instances exceeded",
        ),
        Reply::Error {
            status: 400,
            type_: "com.amazonaws.ssm#InvalidPublicKey".into(),
            message: "The public key is not valid".into(),
            message_key: "Message",
        },
        Reply::error(
            400,
            "InstanceAlreadyRegistered",
            "Instance already registered",
        ),
    ];
    let env = setup("rejected", true);
    for reply in cases {
        let Reply::Error { type_, message, .. } = reply.clone() else {
            unreachable!()
        };
        let code = type_.rsplit('#').next().unwrap().to_string();
        env.stub.push(reply);
        let r = run(env.cmd());
        let rid = env.stub.requests().last().unwrap().request_id.clone();
        r.expect_error(12, &[&format!("{code}: {message}"), &rid]);
        assert_nothing_written(&env);
    }
    assert_eq!(env.stub.requests().len(), 3);
}

#[test]
fn a_hanging_endpoint_times_out_and_names_the_endpoint() {
    let env = setup("hang", true);
    for _ in 0..50 {
        env.stub.push(Reply::Hang);
    }
    let r = run(env.cmd_with(&["--ssm.timeout=300ms", "--ssm.deadline=1s"]));
    r.expect_error(13, &[&env.stub.url(), "no proxy", "timed out"]);
    assert_nothing_written(&env);
}

#[test]
fn a_closed_connection_is_retried() {
    let env = setup("close", true);
    env.stub.push(Reply::Close);
    env.stub
        .push(Reply::error(503, "ServiceUnavailable", "later"));
    ok(env.cmd());
    assert_eq!(env.stub.requests().len(), 3);
    assert_eq!(env.stub.registrations().len(), 1);
}

#[test]
fn an_unreachable_proxy_is_named_with_the_endpoint() {
    let env = setup("proxy", true);
    let proxy = format!("http://127.0.0.1:{}", common::free_port());
    let endpoint = format!("--agent.endpoint=https://{TEST_HOST}:1");
    let mut c = env.cmd_with(&[&endpoint, "--ssm.deadline=1s"]);
    c.env("HTTPS_PROXY", &proxy);
    let r = run(c);
    r.expect_error(
        13,
        &[
            &format!("https://{TEST_HOST}:1/"),
            &format!("through proxy {proxy}"),
        ],
    );
}

#[test]
fn registration_through_an_https_proxy_works() {
    let env = setup("viaproxy", true);
    let proxy = ssm_stub::ConnectProxy::start(env.stub.port);
    let endpoint = format!("--agent.endpoint=https://{TEST_HOST}:{}", env.stub.port);
    let mut c = env.cmd_with(&[&endpoint]);
    c.env("HTTPS_PROXY", proxy.url())
        .env("NO_PROXY", "example.com,.internal");
    ok(c);
    assert_eq!(
        *proxy.targets.lock().unwrap(),
        vec![format!("{TEST_HOST}:{}", env.stub.port)]
    );
    assert_eq!(env.stub.registrations().len(), 1);
    // NO_PROXY naming the host: direct, and the name does not resolve here → DNS error.
    std::fs::remove_dir_all(&env.vault).unwrap();
    common::cluster()
        .admin()
        .delete_secret(&env.ns.name, SECRET)
        .unwrap();
    let mut c = env.cmd_with(&[&endpoint, "--ssm.deadline=500ms"]);
    c.env("HTTPS_PROXY", proxy.url())
        .env("NO_PROXY", "example.test");
    run(c).expect_error(14, &[TEST_HOST, "resolve"]);
    assert_eq!(proxy.targets.lock().unwrap().len(), 1);
}

#[test]
fn untrusted_tls_names_the_host_and_the_ca_bundle() {
    let env = setup("tls", true);
    let endpoint = format!("--agent.endpoint=https://localhost:{}", env.stub.port);
    let mut c = env.cmd_with(&[&endpoint]);
    c.env_remove("AWS_CA_BUNDLE");
    let r = run(c);
    r.expect_error(14, &["TLS", "localhost", "AWS_CA_BUNDLE", "certificate"]);
    assert!(env.stub.requests().is_empty());
    assert_nothing_written(&env);
}

#[test]
fn unresolvable_endpoint_names_the_host() {
    let env = setup("dns", true);
    run(env.cmd_with(&[
        "--agent.endpoint=ssm.nowhere.invalid",
        "--ssm.deadline=500ms",
    ]))
    .expect_error(14, &["ssm.nowhere.invalid", "resolve"]);
    assert_nothing_written(&env);
}

#[test]
fn forbidden_get_names_verb_secret_and_rule() {
    let env = setup("forbidden", false);
    let r = run(env.cmd());
    r.expect_error(
        20,
        &[
            "get",
            &format!("Secret {}/{SECRET}", env.ns.name),
            "verbs: [\"get\"]",
            &format!("resourceNames: [\"{SECRET}\"]"),
            "role.yaml",
        ],
    );
    assert!(env.stub.requests().is_empty());
}

#[test]
fn an_unparseable_secret_is_left_untouched() {
    let env = setup("garbled", true);
    let mut fixture: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("original-state-secret.json")).unwrap(),
    )
    .unwrap();
    let half = &std::fs::read(fixtures().join("Store/RegistrationKey")).unwrap()[..100];
    fixture["data"]["regkey"] = json!(base64::engine::general_purpose::STANDARD.encode(half));
    env.put_secret(fixture);
    let before = env.secret().unwrap();
    let r = run(env.cmd());
    r.expect_error(
        21,
        &[
            &format!("Secret {}/{SECRET}", env.ns.name),
            "regkey",
            "refusing to touch",
            &format!("delete secret {SECRET}"),
        ],
    );
    let after = env.secret().unwrap();
    assert_eq!(after.resource_version, before.resource_version);
    assert_eq!(after.data, before.data);
    assert!(env.stub.requests().is_empty());
    assert!(!env.vault.join("Manifest").exists());
}

#[test]
fn missing_or_malformed_flags_print_the_flag_usage() {
    let env = setup("flags", true);
    let mut c = env.cmd();
    c.env_remove("EKS_ACTIVATION_ID");
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--activation.id is required")
            && r.stderr
                .contains("usage: eks-connector-init --activation.id ID"),
        "{}",
        r.stderr
    );

    let mut c = env.cmd();
    c.env_remove("EKS_ACTIVATION_CODE");
    let r = run(c);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--activation.code"), "{}", r.stderr);

    let r = run(env.cmd_with(&["--ssm.timeout=soon"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--ssm.timeout DURATION"), "{}", r.stderr);

    let mut c = env.cmd();
    c.arg("--agent.region");
    let r = run(c);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("needs a value") && r.stderr.contains("--agent.region REGION"),
        "{}",
        r.stderr
    );

    let mut c = env.cmd();
    c.arg("--bogus=1");
    let r = run(c);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unknown flag --bogus"), "{}", r.stderr);

    let r = run(env.cmd_with(&["--agent.endpoint=http://plain.example"]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("only https://") && r.stderr.contains("--agent.endpoint URL"),
        "{}",
        r.stderr
    );
    assert!(env.stub.requests().is_empty());
    assert_nothing_written(&env);
}

#[test]
fn flags_win_over_the_environment_and_the_originals_flags_work() {
    let env = setup("origflags", true);
    let mut c = env.cmd();
    c.env_remove("EKS_ACTIVATION_ID")
        .env_remove("EKS_ACTIVATION_CODE")
        .env("AWS_REGION", "eu-west-1")
        .arg(format!("--activation.id={ACT_ID}"))
        .args([
            "--activation.code",
            ACT_CODE,
            "--agent.region",
            "ap-south-1",
        ])
        .arg("--state.secretNamePrefix=eks-connector-state");
    ok(c);
    assert_eq!(
        regkey_json(&env.vault_file("Store/RegistrationKey"))["region"],
        "ap-south-1"
    );
}

#[test]
fn pod_name_must_carry_an_ordinal() {
    let env = setup("podname", true);
    let mut c = env.cmd();
    c.env_remove("POD_NAME");
    run(c).expect_error(3, &["POD_NAME is not set"]);
    let mut c = env.cmd();
    c.env("POD_NAME", "eks-connector");
    run(c).expect_error(3, &["POD_NAME=\"eks-connector\"", "-<ordinal>"]);
    // The ordinal picks the Secret: eks-connector-1 uses eks-connector-state-1.
    let mut c = env.cmd();
    c.env("POD_NAME", "eks-connector-1");
    ok(c);
    assert!(common::cluster()
        .admin()
        .get_secret(&env.ns.name, "eks-connector-state-1")
        .is_ok());
    assert!(env.secret().is_none());
}

#[test]
fn an_unreadable_ca_bundle_is_a_configuration_error() {
    let env = setup("cabundle", true);
    let mut c = env.cmd();
    c.env("AWS_CA_BUNDLE", "/nonexistent/bundle.pem");
    run(c).expect_error(3, &["AWS_CA_BUNDLE", "/nonexistent/bundle.pem"]);
    assert!(env.stub.requests().is_empty());
}

#[test]
fn an_unreachable_api_server_is_a_kubernetes_error() {
    let env = setup("nokube", true);
    let port = common::free_port();
    let mut c = env.cmd_with(&["--kube.deadline=1s"]);
    c.env("KUBERNETES_SERVICE_PORT", port.to_string());
    run(c).expect_error(22, &["cannot get Secret", &format!("127.0.0.1:{port}")]);
    assert!(env.stub.requests().is_empty());
    let mut c = env.cmd();
    c.env_remove("KUBERNETES_SERVICE_HOST");
    run(c).expect_error(3, &["KUBERNETES_SERVICE_HOST"]);
}

#[test]
fn an_unwritable_vault_fails_before_registering() {
    let env = setup("vaultro", true);
    std::fs::create_dir_all(env.vault.parent().unwrap()).unwrap();
    std::fs::write(&env.vault, b"a file, not a directory").unwrap();
    run(env.cmd()).expect_error(23, &[&env.vault.display().to_string()]);
    assert!(
        env.stub.requests().is_empty(),
        "registered although the Vault cannot be written"
    );
    assert!(env.secret().is_none());
}

#[test]
fn install_launcher_copies_the_sibling_binary() {
    let dir = std::env::temp_dir().join(format!(
        "install-launcher-{}-{}",
        std::process::id(),
        eks_connector::random::uuid_v4().unwrap()
    ));
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eks-connector-init"))
        .env_clear()
        .arg("--install-launcher")
        .arg(&shared)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = shared.join("eks-connector-agent");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_eks-connector-agent")).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // The copy runs.
    let v = output_of_copied(Command::new(&installed).arg("--version"));
    assert!(String::from_utf8_lossy(&v.stdout).contains("eks-connector-agent"));

    // An init binary without the launcher beside it: a clear error, exit 30.
    let lonely = dir.join("lonely");
    std::fs::create_dir_all(&lonely).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_eks-connector-init"),
        lonely.join("eks-connector-init"),
    )
    .unwrap();
    let out = output_of_copied(
        Command::new(lonely.join("eks-connector-init"))
            .env_clear()
            .arg("--install-launcher")
            .arg(dir.join("other")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(30), "{stderr}");
    assert!(
        stderr.contains(&lonely.join("eks-connector-agent").display().to_string()),
        "{stderr}"
    );
    assert!(!dir.join("other").join("eks-connector-agent").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs a binary this process has just copied. Another test thread forking meanwhile can hold the
/// copy's write descriptor for a moment (Linux then refuses the exec with ETXTBSY): retried.
fn output_of_copied(cmd: &mut Command) -> std::process::Output {
    for _ in 0..50 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r.unwrap(),
        }
    }
    panic!("{cmd:?}: text file still busy after 1 s")
}
