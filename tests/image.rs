//! The shipped image, tested as shipped: `scripts/image.sh` builds both architectures (buildah,
//! daemonless), then the binaries run INSIDE the image (`buildah run --isolation chroot`, host
//! network) against the real kube-apiserver and the strict SSM stand-in, proving nothing outside
//! the image is needed; the arm64 binaries (the same bytes as in the arm64 image) run under
//! qemu-user. A missing buildah or qemu that cannot be installed fails these tests, never skips.

mod common;
#[path = "support/image_env.rs"]
mod image_env;
#[path = "support/ssm_stub.rs"]
mod ssm_stub;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use image_env::{
    curl_socket, image, temp_dir, wait_for_path, Container, Mount, Run, Running, BIN_DIR,
};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePublicKey;
use serde_json::{json, Value};
use ssm_stub::{pki, Stub};

const ACT_ID: &str = "4f1c2d3e-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
const ACT_CODE: &str = "Im4geTestCode0123456789ab";
const USER: &str = "arn:aws:iam::111122223333:user/image-test";
const SA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const VAULT_PATH: &str = "/var/lib/amazon/ssm/Vault";
const BINARIES: [&str; 4] = [
    "eks-connector",
    "eks-connector-init",
    "eks-connector-proxy",
    "eks-connector-agent",
];
const BUDGET: u64 = 5 * 1024 * 1024;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Unpacks the OCI archive and returns (dir, platform "os/arch" → image manifest JSON).
fn unpack_archive() -> (PathBuf, BTreeMap<String, Value>) {
    let img = image();
    let dir = temp_dir("oci");
    let st = Command::new("tar")
        .arg("-xf")
        .arg(img.archive())
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "tar -xf {}", img.archive().display());
    let blob = |digest: &str| -> Value {
        let (algo, hex) = digest.split_once(':').unwrap();
        serde_json::from_slice(&std::fs::read(dir.join("blobs").join(algo).join(hex)).unwrap())
            .unwrap()
    };
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let list = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let mut by_platform = BTreeMap::new();
    for m in list["manifests"].as_array().expect("a manifest list") {
        let p = format!(
            "{}/{}",
            m["platform"]["os"].as_str().unwrap(),
            m["platform"]["architecture"].as_str().unwrap()
        );
        by_platform.insert(p, blob(m["digest"].as_str().unwrap()));
    }
    (dir, by_platform)
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let (algo, hex) = digest.split_once(':').unwrap();
    dir.join("blobs").join(algo).join(hex)
}

#[test]
fn archive_is_a_two_architecture_scratch_image_of_exactly_our_static_binaries() {
    let img = image();
    let (dir, platforms) = unpack_archive();
    assert_eq!(
        platforms.keys().cloned().collect::<Vec<_>>(),
        ["linux/amd64", "linux/arm64"],
        "the archive must be a manifest list of both architectures"
    );
    for (platform, manifest) in &platforms {
        let arch = if platform.ends_with("amd64") {
            "x86_64"
        } else {
            "aarch64"
        };
        let config: Value = serde_json::from_slice(
            &std::fs::read(blob_path(
                &dir,
                manifest["config"]["digest"].as_str().unwrap(),
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            config["config"]["Entrypoint"],
            json!(["/usr/local/bin/eks-connector"]),
            "{platform}: the entrypoint takes the original's `init …`/`server …` args"
        );
        assert_eq!(config["architecture"], platform.split('/').nth(1).unwrap());
        // Unpack every layer: the root file system must hold our four binaries and nothing else.
        let rootfs = temp_dir("rootfs");
        let mut uncompressed = 0u64;
        for layer in manifest["layers"].as_array().unwrap() {
            let path = blob_path(&dir, layer["digest"].as_str().unwrap());
            let st = Command::new("tar")
                .arg("-xf")
                .arg(&path)
                .arg("-C")
                .arg(&rootfs)
                .status()
                .unwrap();
            assert!(st.success(), "unpack layer {}", path.display());
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("gzip -dcf '{}' | wc -c", path.display()))
                .output()
                .unwrap();
            uncompressed += text(&out.stdout).trim().parse::<u64>().unwrap();
        }
        let mut files = Vec::new();
        let mut stack = vec![rootfs.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let rel = e
                    .path()
                    .strip_prefix(&rootfs)
                    .unwrap()
                    .display()
                    .to_string();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    files.push(rel);
                }
            }
        }
        files.sort();
        let mut expected: Vec<String> = BINARIES
            .iter()
            .map(|b| format!("usr/local/bin/{b}"))
            .chain(["var/eks/connector".to_string()])
            .collect();
        expected.sort();
        assert_eq!(files, expected, "{platform}: nothing but the binaries");
        // The original image's entrypoint path, which users' overrides name.
        assert_eq!(
            std::fs::read_link(rootfs.join("var/eks/connector")).unwrap(),
            Path::new("/usr/local/bin/eks-connector"),
            "{platform}: /var/eks/connector is the multi-call binary"
        );
        for b in BINARIES {
            let path = rootfs.join("usr/local/bin").join(b);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            // Four binaries, or the multi-call eks-connector and three symlinks to it.
            let source = if meta.file_type().is_symlink() {
                assert_eq!(
                    std::fs::read_link(&path).unwrap(),
                    Path::new("eks-connector"),
                    "{platform}: {b} links to the multi-call binary"
                );
                "eks-connector"
            } else {
                b
            };
            let in_image = std::fs::read(&path).unwrap();
            let built = std::fs::read(img.binary(arch, source)).unwrap();
            assert!(
                in_image == built,
                "{platform}: {b} in the image differs from dist/{arch}/{source}"
            );
            let desc = text(
                &Command::new("file")
                    .arg("-b")
                    .arg(img.binary(arch, b))
                    .output()
                    .unwrap()
                    .stdout,
            );
            assert!(
                desc.contains("statically linked") || desc.contains("static-pie linked"),
                "{b} ({arch}) is not static: {desc}"
            );
            assert!(
                desc.contains(", stripped") && !desc.contains("not stripped"),
                "{b} ({arch}) is not stripped: {desc}"
            );
        }
        eprintln!(
            "{platform}: image layers {uncompressed} bytes uncompressed ({:.2} MiB; budget 5 MiB)",
            uncompressed as f64 / 1048576.0
        );
        assert!(
            uncompressed <= BUDGET,
            "{platform}: the image is {uncompressed} bytes uncompressed, over the 5 MiB budget"
        );
    }
}

#[test]
fn entrypoint_takes_the_original_argument_lists_inside_the_image() {
    let c = Container::new(&image().reference("amd64"));
    let entry = format!("{BIN_DIR}/eks-connector");
    // Ours, and the original's entrypoint path (users' overrides name it).
    for entry in [entry.as_str(), "/var/eks/connector"] {
        for (word, program) in [
            ("init", "eks-connector-init"),
            ("server", "eks-connector-proxy"),
            ("agent", "eks-connector-agent"),
        ] {
            let out = c.run(&Run::default(), &[entry, word, "--version"]);
            assert!(
                out.status.success(),
                "`{entry} {word} --version` in the image: {}",
                text(&out.stderr)
            );
            assert!(
                text(&out.stdout).contains(program),
                "`{entry} {word}` must run {program}; it printed {:?}",
                text(&out.stdout)
            );
        }
    }
    let out = c.run(&Run::default(), &[&entry, "serve"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown word is a usage error"
    );
    assert!(text(&out.stderr).contains("unknown command \"serve\""));
    // The word's flags go to the binary, which rejects what it does not know.
    let out = c.run(&Run::default(), &[&entry, "server", "--no-such-flag=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--no-such-flag"),
        "{}",
        text(&out.stderr)
    );
}

/// A namespace where the `connector` ServiceAccount may impersonate [`USER`], who may view.
fn proxy_namespace(prefix: &str) -> common::TestNamespace {
    let ns = common::cluster().namespace(prefix);
    ns.bind_cluster(
        "impersonate",
        Some(
            json!([{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"],
                      "resourceNames": [USER]}]),
        ),
        "ServiceAccount",
        "connector",
    );
    // (The built-in `view` is an aggregated role, filled by a controller this test cluster
    // does not run: grant what the checks read explicitly.)
    ns.create_role(
        "pod-reader",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
    );
    ns.bind("Role", "pod-reader", "User", USER);
    ns
}

fn api_target() -> String {
    let e = &common::cluster().endpoint;
    format!("{}:{}", e.host, e.port)
}

/// Requests through a running proxy's socket, as the SSM agent's curl makes them.
fn check_proxy(sock: &Path, ns: &str, proxy: &mut Running) {
    assert!(
        wait_for_path(sock, Duration::from_secs(20)),
        "the proxy did not create {}; its log:\n{}",
        sock.display(),
        proxy.log_text()
    );
    let (code, body) = curl_socket(sock, Some(USER), &format!("/api/v1/namespaces/{ns}/pods"));
    assert_eq!(
        code,
        200,
        "list pods as {USER}: {body}\nproxy log:\n{}",
        proxy.log_text()
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "PodList");
    let (code, _) = curl_socket(sock, Some(USER), "/api/v1/secrets");
    assert_eq!(
        code, 403,
        "the impersonated viewer cannot list secrets cluster-wide"
    );
    let (code, _) = curl_socket(sock, None, &format!("/api/v1/namespaces/{ns}/pods"));
    assert_eq!(code, 401, "no identity, no request (fail closed)");
    let (code, body) = curl_socket(sock, None, "/version");
    assert_eq!(code, 200, "GET /version works without an identity: {body}");
    assert!(body.contains("gitVersion"));
    assert!(proxy.alive(), "the proxy exited: {}", proxy.log_text());
}

#[test]
fn proxy_inside_the_image_serves_requests_from_the_socket() {
    let ns = proxy_namespace("img-proxy");
    let shared = temp_dir("shared");
    let c = Container::new(&image().reference("amd64"));
    let run = Run {
        mounts: vec![
            Mount::ro(&ns.sa_dir, SA_PATH),
            Mount::rw(&shared, "/var/eks/shared"),
        ],
        env: vec![("RUST_LOG".into(), "info".into())],
        user: None,
    };
    let target = format!("--proxy.targetHost={}", api_target());
    // The original's argument list: the `server` word through the entrypoint, its flags
    // (plus where the API server is, which a pod would find at kubernetes.default.svc).
    let mut proxy = c.spawn(
        &run,
        &[
            &format!("{BIN_DIR}/eks-connector"),
            "server",
            // What the original Helm chart passes to `server`.
            "--state.secretNamespace=eks-connector",
            "--proxy.socketType=unix",
            &target,
        ],
        &temp_dir("img-proxy-log").join("proxy.log"),
    );
    check_proxy(&shared.join("connector.sock"), &ns.name, &mut proxy);
}

struct InitEnv {
    ns: common::TestNamespace,
    stub: Stub,
    vault: PathBuf,
}

fn init_env(prefix: &str) -> InitEnv {
    let ns = common::cluster().namespace(prefix);
    let role = ns.apply_role_from_manifest(&common::repo_root().join("manifests/base/role.yaml"));
    ns.bind("Role", &role, "ServiceAccount", "connector");
    let vault = temp_dir("vault");
    InitEnv {
        ns,
        stub: Stub::start(ACT_ID, ACT_CODE),
        vault,
    }
}

impl InitEnv {
    /// Exactly the original's init argument list through `entry`, plus the test endpoint and
    /// namespace.
    fn original_init_args(&self, entry: &str) -> Vec<String> {
        vec![
            entry.to_string(),
            "init".into(),
            format!("--activation.id={ACT_ID}"),
            format!("--activation.code={ACT_CODE}"),
            "--agent.region=us-west-2".into(),
            format!("--state.secretNamespace={}", self.ns.name),
            format!("--agent.endpoint={}", self.stub.url()),
        ]
    }

    /// After one successful first start: exactly one strict registration, the Vault's files,
    /// and a state Secret holding the same bytes.
    fn check_registered(&self) {
        self.stub.assert_strict();
        let regs = self.stub.registrations();
        assert_eq!(regs.len(), 1, "exactly one registration");
        let secret = common::cluster()
            .admin()
            .get_secret(&self.ns.name, "eks-connector-state-0")
            .expect("the state Secret was written");
        for (file, key) in [
            ("Manifest", "manifest"),
            ("Store/RegistrationKey", "regkey"),
            ("Store/InstanceFingerprint", "fingerprint"),
        ] {
            let bytes = std::fs::read(self.vault.join(file))
                .unwrap_or_else(|e| panic!("Vault {file}: {e}"));
            assert_eq!(
                secret.data.get(key),
                Some(&bytes),
                "Secret key {key} = Vault {file}"
            );
        }
        // The private key in the Vault is the one whose public half SSM received.
        let regkey: Value = serde_json::from_slice(
            &std::fs::read(self.vault.join("Store/RegistrationKey")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            regkey["instanceID"],
            json!(regs[0].instance_id.clone().unwrap())
        );
        let der = base64::engine::general_purpose::STANDARD
            .decode(regkey["privateKey"].as_str().unwrap())
            .unwrap();
        let private = rsa::RsaPrivateKey::from_pkcs1_der(&der).expect("PKCS#1 private key");
        let public =
            rsa::RsaPublicKey::from_public_key_der(regs[0].public_key_der.as_ref().unwrap())
                .unwrap();
        assert_eq!(rsa::RsaPublicKey::from(&private), public);
    }
}

#[test]
fn init_inside_the_image_registers_with_the_ssm_stand_in_and_writes_the_state() {
    let env = init_env("img-init");
    let c = Container::new(&image().reference("amd64"));
    let run = Run {
        mounts: vec![
            Mount::ro(&env.ns.sa_dir, SA_PATH),
            Mount::rw(&env.vault, VAULT_PATH),
            Mount::ro(&pki().dir, "/etc/test-ca"),
        ],
        env: {
            let mut e = env.ns.kube_env();
            e.push(("POD_NAME".into(), "eks-connector-0".into()));
            e.push(("AWS_CA_BUNDLE".into(), "/etc/test-ca/ca.crt".into()));
            e
        },
        user: None,
    };
    let args = env.original_init_args(&format!("{BIN_DIR}/eks-connector"));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.run(&run, &argv);
    assert!(
        out.status.success(),
        "init in the image failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    env.check_registered();
    // A second start (a restarted pod) reuses the registration: nothing new at SSM.
    let out = c.run(&run, &argv);
    assert!(out.status.success(), "second start: {}", text(&out.stderr));
    assert_eq!(env.stub.registrations().len(), 1, "no second registration");
    // A closed endpoint (for the other replica, which has no state yet) fails with a clear
    // message, not a usage error.
    let mut other_env = run.env.clone();
    other_env.retain(|(k, _)| k != "POD_NAME");
    other_env.push(("POD_NAME".into(), "eks-connector-1".into()));
    let out = c.run(
        &Run {
            mounts: vec![
                Mount::ro(&env.ns.sa_dir, SA_PATH),
                Mount::rw(&temp_dir("v"), VAULT_PATH),
                Mount::ro(&pki().dir, "/etc/test-ca"),
            ],
            env: other_env,
            user: None,
        },
        &[
            &format!("{BIN_DIR}/eks-connector-init"),
            &format!("--activation.id={ACT_ID}"),
            &format!("--activation.code={ACT_CODE}"),
            &format!("--state.secretNamespace={}", env.ns.name),
            "--agent.endpoint=https://127.0.0.1:1",
            "--ssm.timeout=1s",
            "--ssm.deadline=2s",
        ],
    );
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(2), "not a usage error");
    assert!(
        text(&out.stderr).contains("127.0.0.1:1"),
        "the error names the endpoint: {}",
        text(&out.stderr)
    );
}

#[test]
fn init_installs_the_launcher_from_inside_the_image() {
    let shared = temp_dir("launcher");
    // World-writable, as the kubelet makes an emptyDir.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let c = Container::new(&image().reference("amd64"));
    let out = c.run(
        &Run {
            mounts: vec![Mount::rw(&shared, "/var/eks/launcher")],
            env: vec![],
            user: Some("65532:65532".into()),
        },
        &[
            &format!("{BIN_DIR}/eks-connector-init"),
            "--install-launcher",
            "/var/eks/launcher",
        ],
    );
    assert!(out.status.success(), "install: {}", text(&out.stderr));
    let installed = std::fs::read(shared.join("eks-connector-agent")).unwrap();
    let in_image = std::fs::read(c.mount_root().join("usr/local/bin/eks-connector-agent")).unwrap();
    assert!(
        installed == in_image,
        "the installed launcher is the image's eks-connector-agent"
    );
    let out = Command::new(shared.join("eks-connector-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("eks-connector-agent"));
}

/// `qemu-aarch64 dist/aarch64/NAME`.
fn arm64(name: &str) -> Command {
    let mut c = Command::new("qemu-aarch64");
    c.arg(image().binary("aarch64", name));
    c
}

#[test]
fn arm64_init_generates_its_key_and_writes_vault_and_secret_under_qemu() {
    let env = init_env("arm-init");
    let mut c = arm64("eks-connector-init");
    c.env_clear()
        .envs(env.ns.kube_env())
        .env("POD_NAME", "eks-connector-0")
        .env("EKS_ACTIVATION_ID", ACT_ID)
        .env("EKS_ACTIVATION_CODE", ACT_CODE)
        .env("AWS_CA_BUNDLE", &pki().ca)
        .arg(format!("--agent.endpoint={}", env.stub.url()))
        .arg(format!("--state.baseDir={}", env.vault.display()))
        .arg(format!("--state.secretNamespace={}", env.ns.name))
        .arg(format!("--serviceaccount.dir={}", env.ns.sa_dir.display()));
    let out = c
        .output()
        .expect("qemu-aarch64 (apt-get install qemu-user)");
    assert!(
        out.status.success(),
        "arm64 init under qemu failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    env.check_registered();
    let file = text(
        &Command::new("file")
            .arg("-b")
            .arg(image().binary("aarch64", "eks-connector-init"))
            .output()
            .unwrap()
            .stdout,
    );
    assert!(file.contains("ARM aarch64"), "{file}");
}

#[test]
fn arm64_proxy_forwards_a_request_under_qemu() {
    let ns = proxy_namespace("arm-proxy");
    let dir = temp_dir("arm-proxy");
    let sock = dir.join("connector.sock");
    let mut c = arm64("eks-connector-proxy");
    c.env("RUST_LOG", "info")
        .arg("--proxy.socketAddr")
        .arg(&sock)
        .arg(format!("--proxy.targetHost={}", api_target()))
        .arg(format!("--serviceaccount.dir={}", ns.sa_dir.display()));
    let mut proxy = Running::spawn(c, &dir.join("proxy.log"));
    check_proxy(&sock, &ns.name, &mut proxy);
    let status = proxy.stop().expect("status");
    assert!(status.success(), "arm64 proxy exit on SIGTERM: {status}");
}

/// The original's image is run through `/var/eks/connector` and trusts the bundle at
/// `/etc/ssl/certs/ca-bundle.crt`; users who needed a private CA mounted theirs there. Ours,
/// run the same way with no AWS_CA_BUNDLE, registers through that bundle.
#[test]
fn init_through_the_originals_entrypoint_trusts_a_bundle_at_the_originals_ca_path() {
    let env = init_env("img-orig-ca");
    let certs = temp_dir("certs");
    std::fs::copy(&pki().ca, certs.join("ca-bundle.crt")).unwrap();
    let c = Container::new(&image().reference("amd64"));
    let mut kube_env = env.ns.kube_env();
    kube_env.push(("POD_NAME".into(), "eks-connector-0".into()));
    let run = Run {
        mounts: vec![
            Mount::ro(&env.ns.sa_dir, SA_PATH),
            Mount::rw(&env.vault, VAULT_PATH),
            Mount::ro(&certs, "/etc/ssl/certs"),
        ],
        env: kube_env,
        user: None,
    };
    let args = env.original_init_args("/var/eks/connector");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.run(&run, &argv);
    assert!(
        out.status.success(),
        "init through /var/eks/connector with the CA at /etc/ssl/certs/ca-bundle.crt failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    env.check_registered();
}
