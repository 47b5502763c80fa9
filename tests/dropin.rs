//! The drop-in: our image in place of the original's, in the original's own pod layouts (its raw
//! manifest and its Helm chart 0.0.11, read from the original's source archive at test time),
//! against the real kube-apiserver and AWS's real SSM agent, with exactly the original's RBAC,
//! its service-account token volume at the default path and its security context. Every
//! container is a process in its own mount and pid namespace (tests/support/layout.rs), so the
//! default paths hold. AWS is the only stand-in (tests/support/ssm_stub.rs); the test points
//! init (`--agent.endpoint`) and the agent's config (`Ssm`/`Mgs` endpoints) at it and makes both
//! trust its CA, which are the only changes made to the original's pod spec.

mod common;
#[path = "support/layout.rs"]
mod layout;
#[path = "support/peers.rs"]
mod peers;
#[path = "support/prom.rs"]
mod prom;
#[path = "support/ssm_stub.rs"]
mod ssm_stub;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eks_connector::kube::{KubeError, Secret};
use eks_connector::state::{self, Registration};
use layout::{Image, Pod, Running};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;
use serde_json::{json, Value};
use ssm_stub::{pki, Stub};

const ACT_ID: &str = "3f1e6a52-7c0b-4d8e-9a4f-2b6c8d0e1f23";
const ACT_CODE: &str = "AbCdEfGhIjKlMnOpQrStUv";
const REGION: &str = "us-west-2";
/// The raw manifest's namespace (its `server` takes the default `--state.secretNamespace`).
const ORIGINAL_NS: &str = "eks-connector";
/// Credentials the stand-in hands out live this long: the agent asks again every 3 s, so a
/// forced rotation happens within seconds.
const SHORT_TOKENS: Duration = Duration::from_secs(6);

const OURS: &str = "eks-connector:ours";
const ORIGINAL_IMAGE: &str = "eks-connector:original";
const SSM_AGENT_IMAGE: &str = "amazon-ssm-agent";

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dropin-{tag}-{}-{}",
        std::process::id(),
        eks_connector::random::uuid_v4().unwrap()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The images: ours and the original's at the original's entrypoint, the real SSM agent at its
/// image's paths.
fn images() -> BTreeMap<String, Image> {
    let agent = peers::ssm_agent();
    let original = peers::eks_connector();
    let mut m = BTreeMap::new();
    m.insert(
        OURS.to_string(),
        Image {
            files: vec![(
                "/var/eks/connector".into(),
                PathBuf::from(env!("CARGO_BIN_EXE_eks-connector")),
            )],
            entrypoint: vec!["/var/eks/connector".into()],
        },
    );
    m.insert(
        ORIGINAL_IMAGE.to_string(),
        Image {
            files: vec![(
                "/var/eks/connector".into(),
                original.binary("eks-connector"),
            )],
            entrypoint: vec!["/var/eks/connector".into()],
        },
    );
    m.insert(
        SSM_AGENT_IMAGE.to_string(),
        Image {
            files: ["amazon-ssm-agent", "ssm-agent-worker", "ssm-session-worker"]
                .iter()
                .map(|b| (format!("/usr/bin/{b}"), agent.binary(b)))
                .collect(),
            entrypoint: vec!["/usr/bin/amazon-ssm-agent".into()],
        },
    );
    m
}

/// The original's raw manifest with the user's substitutions, rendered to objects.
fn raw_manifest(image: &str) -> Vec<Value> {
    let path = peers::original_manifest();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the original's manifest {}: {e}", path.display()));
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ACT_CODE);
    let text = text
        .replace("%EKS_CONNECTOR_IMAGE%", image)
        .replace("%SSM_AGENT_IMAGE%", SSM_AGENT_IMAGE)
        .replace("%EKS_ACTIVATION_CODE%", &b64)
        .replace("%EKS_ACTIVATION_ID%", ACT_ID)
        .replace("%AWS_REGION%", REGION);
    layout::to_json(common::cluster().kubectl(), &text)
}

/// The helm binary of tests/helm/build-helm.sh, when that step exists in this tree.
fn helm() -> Option<PathBuf> {
    let script = common::repo_root().join("tests/helm/build-helm.sh");
    if !script.exists() {
        return None;
    }
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The original's chart 0.0.11 rendered for release `eks-connector` in `ns` with our image,
/// `secretOverrides.namespace` and `.prefix` set: `helm template` when Helm is available here,
/// else the chart's StatefulSet args and Role names applied by hand to the raw manifest's
/// objects (the two layouts are otherwise the same containers, mounts and security context).
fn chart(ns: &str, prefix: &str, image: &str) -> Vec<Value> {
    let (repo, tag) = image.split_once(':').unwrap();
    if let Some(helm) = helm() {
        let home = tempdir("helm-home");
        let out = Command::new(helm)
            .args(["template", "eks-connector"])
            .arg(peers::original_chart())
            .args(["--namespace", ns])
            .arg(format!("--set=eks.activationCode={ACT_CODE}"))
            .arg(format!("--set=eks.activationId={ACT_ID}"))
            .arg(format!("--set=eks.agentRegion={REGION}"))
            .arg(format!("--set=secretOverrides.namespace={ns}"))
            .arg(format!("--set=secretOverrides.prefix={prefix}"))
            .arg(format!("--set=images.eksConnector.repository={repo}"))
            .arg(format!("--set=images.eksConnector.tag={tag}"))
            .arg(format!(
                "--set=images.ssmAgent.repository={SSM_AGENT_IMAGE}"
            ))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null())
            .output()
            .expect("helm");
        assert!(
            out.status.success(),
            "helm template of the original's chart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut objects = layout::to_json(
            common::cluster().kubectl(),
            &String::from_utf8_lossy(&out.stdout),
        );
        // The SSM agent image is `repository:tag` in the chart.
        let sts = layout::find_mut(&mut objects, "StatefulSet", "eks-connector");
        for c in sts["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
        {
            if c["image"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{SSM_AGENT_IMAGE}:"))
            {
                c["image"] = json!(SSM_AGENT_IMAGE);
            }
        }
        return objects;
    }
    let mut objects = raw_manifest(image);
    let flags = [
        format!("--state.secretNamespace={ns}"),
        format!("--state.secretNamePrefix={prefix}"),
    ];
    let sts = layout::find_mut(&mut objects, "StatefulSet", "eks-connector");
    let spec = &mut sts["spec"]["template"]["spec"];
    spec["initContainers"][0]["args"] = json!([
        "init",
        format!("--activation.code={ACT_CODE}"),
        format!("--activation.id={ACT_ID}"),
        format!("--agent.region={REGION}"),
        flags[0],
        flags[1]
    ]);
    for c in spec["containers"].as_array_mut().unwrap() {
        if c["name"] == "connector-proxy" {
            c["args"] = json!(["server", flags[0], flags[1]]);
        }
    }
    let role = layout::find_mut(&mut objects, "Role", "eks-connector-secret-access");
    role["rules"][0]["resourceNames"] = json!([format!("{prefix}-0"), format!("{prefix}-1")]);
    objects
}

/// Test plumbing only: init's `--agent.endpoint` and the agent's `Ssm`/`Mgs` endpoints point at
/// the stand-in; health servers on free local ports (the pods share this host's network).
fn point_at(objects: &mut [Value], stub: &Stub) {
    let sts = layout::find_mut(objects, "StatefulSet", "eks-connector");
    let spec = &mut sts["spec"]["template"]["spec"];
    for c in spec["initContainers"].as_array_mut().unwrap() {
        if c["name"] == "connector-init" {
            let args = c["args"].as_array_mut().unwrap();
            args.push(json!(format!("--agent.endpoint={}", stub.url())));
        }
    }
    for c in spec["containers"].as_array_mut().unwrap() {
        for a in c["args"].as_array_mut().into_iter().flatten() {
            if a.as_str().is_some_and(|a| a.starts_with("--health.addr=")) {
                *a = json!(format!("--health.addr=127.0.0.1:{}", common::free_port()));
            }
        }
    }
    let cm = objects
        .iter_mut()
        .find(|o| o["kind"] == "ConfigMap" && o["data"]["amazon-ssm-agent.json"].is_string())
        .expect("the agent's ConfigMap");
    let text = cm["data"]["amazon-ssm-agent.json"].as_str().unwrap();
    let mut cfg: Value = serde_json::from_str(text).unwrap();
    cfg["Ssm"]["Endpoint"] = json!(stub.url());
    cfg["Mgs"]["Endpoint"] = json!(stub.url());
    cm["data"]["amazon-ssm-agent.json"] = json!(cfg.to_string());
}

/// The original's namespaced objects (ServiceAccount, Role, RoleBinding) created in `ns` as the
/// user's `kubectl apply` would; cluster-scoped ones, the StatefulSet (we run its pods) and the
/// legacy token Secret are left out: no token controller runs in the test control plane, so the
/// directory returned stands for that Secret's volume (`token` of the same ServiceAccount from
/// TokenRequest, `ca.crt`, `namespace`).
fn apply_original_rbac(objects: &[Value], ns: &str) -> PathBuf {
    let cluster = common::cluster();
    let _ = cluster.admin_request(
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
    );
    for o in objects {
        let (path, resource) = match o["kind"].as_str().unwrap() {
            "ServiceAccount" => ("/api/v1", "serviceaccounts"),
            "Role" => ("/apis/rbac.authorization.k8s.io/v1", "roles"),
            "RoleBinding" => ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
            _ => continue,
        };
        let mut o = o.clone();
        o["metadata"]["namespace"] = json!(ns);
        if let Some(subjects) = o["subjects"].as_array_mut() {
            for s in subjects {
                s["namespace"] = json!(ns);
            }
        }
        let name = o["metadata"]["name"].as_str().unwrap().to_string();
        // Created once per namespace: re-creating the ServiceAccount would void the tokens of
        // tests running beside this one.
        match cluster.admin_request(
            "POST",
            &format!("{path}/namespaces/{ns}/{resource}"),
            Some(&o),
        ) {
            Ok(_) => {}
            Err(e) if e.to_string().contains("already exists") => {}
            Err(e) => panic!("create {resource} {name}: {e}"),
        }
    }
    let dir = tempdir("sa");
    let token = cluster
        .admin_request(
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/eks-connector/token"),
            Some(
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                         "spec": {"expirationSeconds": 3600}}),
            ),
        )
        .unwrap_or_else(|e| panic!("token for eks-connector: {e}"));
    std::fs::write(
        dir.join("token"),
        token["status"]["token"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::copy(cluster.ca_path(), dir.join("ca.crt")).unwrap();
    std::fs::write(dir.join("namespace"), ns).unwrap();
    dir
}

fn secret(ns: &str, name: &str) -> Option<Secret> {
    match common::cluster().admin().get_secret(ns, name) {
        Ok(s) => Some(s),
        Err(KubeError::NotFound { .. }) => None,
        Err(e) => panic!("get secret {ns}/{name}: {e}"),
    }
}

fn spki_of(reg: &Registration) -> Vec<u8> {
    rsa::RsaPrivateKey::from_pkcs1_der(reg.private_key_der())
        .expect("the Vault's privateKey is PKCS#1 DER")
        .to_public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// The raw manifest's names are fixed (namespace `eks-connector`, Secrets `eks-connector-state-0`
/// and `-1`): tests of one ordinal take turns.
fn ordinal_lock(ordinal: u32) -> std::sync::MutexGuard<'static, ()> {
    static LOCKS: [std::sync::Mutex<()>; 3] = [
        std::sync::Mutex::new(()),
        std::sync::Mutex::new(()),
        std::sync::Mutex::new(()),
    ];
    LOCKS[ordinal as usize]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// One replica of an original layout on one cluster's state: its objects, the stand-in, the
/// current pod and its running containers.
struct Replica {
    objects: Vec<Value>,
    ns: String,
    secret: String,
    pod_name: String,
    sa: PathBuf,
    stub: Stub,
    work: PathBuf,
    pod: Pod,
    running: Vec<Running>,
    pods: u32,
    _turn: Option<std::sync::MutexGuard<'static, ()>>,
}

impl Replica {
    /// `objects` rendered for `image`; no pod scheduled yet.
    fn new(tag: &str, mut objects: Vec<Value>, ns: &str, prefix: &str, ordinal: u32) -> Replica {
        let turn = (ns == ORIGINAL_NS).then(|| ordinal_lock(ordinal));
        let stub = Stub::start(ACT_ID, ACT_CODE);
        stub.set_token_lifetime(SHORT_TOKENS);
        point_at(&mut objects, &stub);
        let sa = apply_original_rbac(&objects, ns);
        let secret_name = format!("{prefix}-{ordinal}");
        let _ = common::cluster().admin().delete_secret(ns, &secret_name);
        let work = tempdir(tag);
        let pod_name = format!("eks-connector-{ordinal}");
        let pod = Pod::new(&work.join("pod-0"), &pod_name, ns, &objects, images(), &sa);
        let mut r = Replica {
            objects,
            ns: ns.into(),
            secret: secret_name,
            pod_name,
            sa,
            stub,
            work,
            pod,
            running: Vec::new(),
            pods: 0,
            _turn: turn,
        };
        r.pod.extra_env = r.env();
        r
    }

    fn env(&self) -> Vec<(String, String)> {
        let e = &common::cluster().endpoint;
        let ca = pki().ca.display().to_string();
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), e.host.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), e.port.to_string()),
            ("AWS_CA_BUNDLE".into(), ca.clone()),
            ("SSL_CERT_FILE".into(), ca),
            ("RUST_LOG".into(), "info".into()),
        ]
    }

    /// The pod scheduled anew (new emptyDirs), with the connector image `image`.
    fn reschedule(&mut self, image: &str) {
        self.stop();
        self.pods += 1;
        let sts = layout::find_mut(&mut self.objects, "StatefulSet", "eks-connector");
        let spec = &mut sts["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array_mut().unwrap() {
                if c["image"] != SSM_AGENT_IMAGE {
                    c["image"] = json!(image);
                }
            }
        }
        self.pod = Pod::new(
            &self.work.join(format!("pod-{}", self.pods)),
            &self.pod_name,
            &self.ns,
            &self.objects,
            images(),
            &self.sa,
        );
        self.pod.extra_env = self.env();
    }

    /// Init containers to completion, then every container.
    fn start(&mut self) {
        self.pod.run_init(Duration::from_secs(90));
        for name in self.pod.container_names() {
            let r = self.pod.start(&name);
            self.running.push(r);
        }
    }

    fn stop(&mut self) {
        for r in &mut self.running {
            r.stop(Duration::from_secs(20));
        }
        self.running.clear();
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for r in &self.running {
            s += &format!("--- {} ---\n{}\n", r.name, r.log_text());
        }
        s
    }

    fn log_of(&self, container: &str) -> String {
        self.running
            .iter()
            .find(|r| r.name == container)
            .map(|r| r.log_text())
            .unwrap_or_default()
    }

    /// The Vault volume, wherever the layout names it.
    fn vault_dir(&self) -> PathBuf {
        self.pod
            .volume_at("connector-agent", state::AGENT_VAULT_DIR)
    }

    fn vault(&self) -> Registration {
        state::read_vault(&self.vault_dir())
            .unwrap_or_else(|e| panic!("the Vault: {e}\n{}", self.logs()))
    }

    /// The instance SSM registered (read from the stand-in: the Vault may be mid-rewrite).
    fn instance(&self) -> String {
        self.stub.registrations()[0].instance_id.clone().unwrap()
    }

    fn secret(&self) -> Option<Secret> {
        secret(&self.ns, &self.secret)
    }

    /// Waits for a token request signed with the instance's newest key, granted after the
    /// first `after` grants.
    fn wait_authenticated_with_newest(&self, after: usize) {
        let instance = self.instance();
        let newest = self.stub.instance(&instance).unwrap().keys.len() - 1;
        let seen = common::wait_for(Duration::from_secs(90), || {
            self.stub
                .tokens_granted()
                .into_iter()
                .skip(after)
                .find(|r| r.signed_by == Some((instance.clone(), newest)))
        });
        assert!(
            seen.is_some(),
            "the agent did not authenticate with key #{newest} of {instance}; violations {:#?}\n{}",
            self.stub.violations(),
            self.logs()
        );
    }

    /// Forces rotation `n` (1-based over the stand-in's life) and returns when SSM took the key.
    fn rotate(&self, n: usize) -> Instant {
        self.stub.rotate_on_next_token();
        let update = common::wait_for(Duration::from_secs(60), || {
            self.stub.key_updates().into_iter().nth(n - 1)
        })
        .unwrap_or_else(|| {
            panic!(
                "the agent did not rotate its key (#{n}); violations {:#?}\n{}",
                self.stub.violations(),
                self.logs()
            )
        });
        update.at
    }

    /// When the Secret first held the key SSM holds now, byte for byte as the Vault holds it.
    fn wait_secret_has_newest(&self, timeout: Duration) -> Option<Instant> {
        let instance = self.instance();
        let newest = self
            .stub
            .instance(&instance)
            .unwrap()
            .keys
            .last()
            .cloned()?;
        common::wait_for(timeout, || {
            let vault = state::read_vault(&self.vault_dir()).ok()?;
            if spki_of(&vault) != newest {
                return None;
            }
            let s = self.secret()?;
            (s.data.get(state::KEY_REGKEY) == Some(&vault.regkey().to_vec())).then(Instant::now)
        })
    }

    /// One rotation by the real agent that reaches the Secret within 2 s.
    fn rotation_reaches_the_secret(&self, n: usize) {
        let at = self.rotate(n);
        let reached = self
            .wait_secret_has_newest(Duration::from_secs(10))
            .unwrap_or_else(|| {
                panic!(
                    "rotation #{n}: the new key did not reach Secret {}/{}\n{}",
                    self.ns,
                    self.secret,
                    self.logs()
                )
            });
        let latency = reached.saturating_duration_since(at);
        assert!(
            latency <= Duration::from_secs(2),
            "rotation #{n}: the key reached the Secret after {latency:?}, more than 2 s\n{}",
            self.logs()
        );
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.work);
            let _ = std::fs::remove_dir_all(&self.sa);
        }
    }
}

/// Scenario 1 — the original's raw manifest, our image, AWS's agent as is: init registers, the
/// agent rotates, `server` copies the key to the Secret within 2 s, and after a reschedule the
/// agent authenticates with it.
#[test]
fn raw_manifest_keeps_a_rotated_key_across_a_reschedule() {
    let mut r = Replica::new(
        "raw",
        raw_manifest(OURS),
        ORIGINAL_NS,
        "eks-connector-state",
        0,
    );
    r.start();
    assert_eq!(r.stub.registrations().len(), 1, "init registered once");
    r.wait_authenticated_with_newest(0);
    r.rotation_reaches_the_secret(1);
    let server = r.log_of("connector-proxy");
    assert!(
        server.contains("keeps Secret eks-connector/eks-connector-state-0 in step"),
        "server says it syncs the Vault:\n{server}"
    );
    let grants = r.stub.tokens_granted().len();
    r.reschedule(OURS);
    r.start();
    r.wait_authenticated_with_newest(grants);
    assert_eq!(r.stub.registrations().len(), 1, "nothing registered again");
    r.stub.assert_strict();
}

/// Scenario 2 — the original's chart 0.0.11 with `--state.secretNamespace` and a non-default
/// `--state.secretNamePrefix`: the same.
#[test]
fn chart_layout_with_secret_overrides_keeps_a_rotated_key_across_a_reschedule() {
    let ns = common::cluster().namespace("chart");
    let prefix = "edge-state";
    let mut r = Replica::new("chart", chart(&ns.name, prefix, OURS), &ns.name, prefix, 0);
    let server = r.pod.container("connector-proxy");
    assert!(
        server
            .argv
            .contains(&format!("--state.secretNamePrefix={prefix}")),
        "the chart passes the prefix to server: {:?}",
        server.argv
    );
    r.start();
    r.wait_authenticated_with_newest(0);
    r.rotation_reaches_the_secret(1);
    let grants = r.stub.tokens_granted().len();
    r.reschedule(OURS);
    r.start();
    r.wait_authenticated_with_newest(grants);
    assert_eq!(r.stub.registrations().len(), 1, "nothing registered again");
    r.stub.assert_strict();
}

/// Scenario 3 — ours → the original (built from its archive) → ours on one cluster's state, a
/// rotation in each phase: every key rotated under either image survives the switch.
#[test]
fn ours_then_original_then_ours_keeps_every_rotated_key() {
    let mut r = Replica::new(
        "switch",
        raw_manifest(OURS),
        ORIGINAL_NS,
        "eks-connector-state",
        1,
    );
    r.start();
    r.wait_authenticated_with_newest(0);
    r.rotation_reaches_the_secret(1);
    for (phase, image) in [(2, ORIGINAL_IMAGE), (3, OURS)] {
        let grants = r.stub.tokens_granted().len();
        r.reschedule(image);
        r.start();
        r.wait_authenticated_with_newest(grants);
        r.rotation_reaches_the_secret(phase);
    }
    let grants = r.stub.tokens_granted().len();
    r.reschedule(OURS);
    r.start();
    r.wait_authenticated_with_newest(grants);
    assert_eq!(r.stub.registrations().len(), 1, "nothing registered again");
    r.stub.assert_strict();
}

/// A new registration for the same instance with a new key, as a rotation makes it.
fn rotated(old: &Registration) -> Registration {
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let der = rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_der(&key).unwrap();
    Registration::new(
        old.instance_id(),
        old.region(),
        der.as_bytes(),
        std::time::SystemTime::now(),
        old.fingerprint_id(),
    )
}

/// Rewrites `Store/RegistrationKey` in place (truncate, then write) from a process in the agent's
/// container, with its mounts, user and capabilities: the way the agent saves a rotated key.
fn rewrite_in_place(pod: &Pod, bytes: &[u8]) {
    let staged = pod.dir.join("staged-regkey");
    std::fs::write(&staged, bytes).unwrap();
    let out = pod.exec(
        "connector-agent",
        &[
            "/bin/sh",
            "-c",
            &format!(
                "cat {} > /var/lib/amazon/ssm/Vault/Store/RegistrationKey",
                staged.display()
            ),
        ],
    );
    assert!(
        out.status.success(),
        "rewrite in the agent's container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The raw manifest, our image, no agent started: `server` (no flags, the Vault mounted) copies
/// a key rewritten in place to the state Secret within 2 s, as the original's `server` does.
#[test]
fn raw_manifest_server_saves_a_key_rewritten_in_place() {
    let mut r = Replica::new(
        "inplace",
        raw_manifest(OURS),
        ORIGINAL_NS,
        "eks-connector-state",
        1,
    );
    r.pod.run_init(Duration::from_secs(90));
    let first = r.vault();
    let server = r.pod.start("connector-proxy");
    r.running.push(server);
    std::thread::sleep(Duration::from_secs(1));
    let new = rotated(&first);
    rewrite_in_place(&r.pod, new.regkey());
    let saved = common::wait_for(Duration::from_secs(2), || {
        r.secret()
            .filter(|s| s.data.get(state::KEY_REGKEY).map(Vec::as_slice) == Some(new.regkey()))
    });
    assert!(
        saved.is_some(),
        "the rewritten key did not reach Secret {}/{} within 2 s\n{}",
        r.ns,
        r.secret,
        r.logs()
    );
    let s = saved.unwrap();
    assert_eq!(
        s.data.get(state::KEY_CONNECTOR_CONFIG).map(Vec::as_slice),
        Some(state::connector_config(ACT_ID).as_slice()),
        "the activation id stays"
    );
}

/// Scenario 4a — bad input on the sync path: an unparseable Vault file. Nothing reaches the
/// Secret, one clear line says why, and the process with the token repairs the Vault from the
/// Secret (so the agent would not crash-loop on it).
#[test]
fn an_unparseable_vault_file_is_never_copied_and_is_repaired_from_the_secret() {
    let ns = common::cluster().namespace("badvault");
    let mut r = Replica::new(
        "badvault",
        chart(&ns.name, "bad-state", OURS),
        &ns.name,
        "bad-state",
        0,
    );
    r.pod.run_init(Duration::from_secs(90));
    let good = r.vault();
    let server = r.pod.start("connector-proxy");
    r.running.push(server);
    assert!(
        common::wait_for(Duration::from_secs(10), || r
            .log_of("connector-proxy")
            .contains("already holds the Vault's registration")
            .then_some(()))
        .is_some(),
        "server compared the Vault with the Secret\n{}",
        r.logs()
    );
    // Cut off mid-write, as a kill during the agent's in-place rewrite leaves it.
    let cut = &good.regkey()[..good.regkey().len() / 2];
    rewrite_in_place(&r.pod, cut);
    assert!(
        state::read_vault(&r.vault_dir()).is_err(),
        "the Vault is incomplete now"
    );
    let repaired = common::wait_for(Duration::from_secs(20), || {
        state::read_vault(&r.vault_dir())
            .ok()
            .filter(|v| v.same_files(&good))
    });
    // The line comes right after the files (the test may look in between).
    let _ = common::wait_for(Duration::from_secs(5), || {
        r.log_of("connector-proxy")
            .contains("restored the Vault")
            .then_some(())
    });
    let log = r.log_of("connector-proxy");
    assert!(
        repaired.is_some(),
        "the Vault was not repaired from the Secret\n{log}"
    );
    let secret = r.secret().unwrap();
    assert_eq!(
        secret.data.get(state::KEY_REGKEY).map(Vec::as_slice),
        Some(good.regkey()),
        "the Secret kept the complete key"
    );
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("restored the Vault"))
        .collect();
    assert_eq!(lines.len(), 1, "one clear line for the repair:\n{log}");
    assert!(
        lines[0].contains("RegistrationKey") && lines[0].contains(&r.secret),
        "the line names the broken file and the Secret: {}",
        lines[0]
    );
}

/// Scenario 4b — a Secret someone else changed in the meantime: the rotated key is saved and
/// their change is kept (the sync re-reads the Secret and changes only the three file keys).
#[test]
fn a_secret_changed_by_someone_else_keeps_their_change_and_gets_the_key() {
    let ns = common::cluster().namespace("theirs");
    let mut r = Replica::new(
        "theirs",
        chart(&ns.name, "their-state", OURS),
        &ns.name,
        "their-state",
        0,
    );
    r.start();
    r.wait_authenticated_with_newest(0);
    let mut s = r.secret().expect("init created the Secret");
    s.data
        .insert("note".into(), b"kept by someone else".to_vec());
    common::cluster()
        .admin()
        .update_secret(&s, eks_connector::kube::OnConflict::Fail)
        .unwrap();
    r.rotation_reaches_the_secret(1);
    let after = r.secret().unwrap();
    assert_eq!(
        after.data.get("note").map(Vec::as_slice),
        Some(&b"kept by someone else"[..]),
        "their key survived the sync"
    );
    assert_eq!(
        after
            .data
            .get(state::KEY_CONNECTOR_CONFIG)
            .map(Vec::as_slice),
        Some(state::connector_config(ACT_ID).as_slice())
    );
    r.stub.assert_strict();
}

/// Scenario 4c — RBAC that forbids the update: one clear error line per attempt, the Secret keeps
/// the old complete key, and the new key is saved as soon as the update is allowed again.
#[test]
fn a_forbidden_update_loses_nothing_and_is_retried_until_allowed() {
    let ns = common::cluster().namespace("forbid");
    let mut r = Replica::new(
        "forbid",
        chart(&ns.name, "forbid-state", OURS),
        &ns.name,
        "forbid-state",
        0,
    );
    r.start();
    r.wait_authenticated_with_newest(0);
    let before = r.secret().unwrap();
    // The original's Role without `update`: reads and creates still allowed.
    let path = format!(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/{}/roles/eks-connector-secret-access",
        r.ns
    );
    let admin = |method: &str, body: Option<&Value>| {
        common::cluster()
            .admin_request(method, &path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    };
    let original_role = admin("GET", None);
    let mut no_update = original_role.clone();
    no_update["rules"][0]["verbs"] = json!(["get"]);
    admin("PUT", Some(&no_update));
    r.rotate(1);
    let refused = common::wait_for(Duration::from_secs(20), || {
        let log = r.log_of("connector-proxy");
        log.lines()
            .find(|l| l.contains("ERROR") && l.contains("forbidden") && l.contains(&r.secret))
            .map(String::from)
    });
    assert!(
        refused.is_some(),
        "no clear error line for the refused update\n{}",
        r.logs()
    );
    assert_eq!(
        r.secret().unwrap().data,
        before.data,
        "the Secret keeps its complete registration while the update is refused"
    );
    let mut restored = admin("GET", None);
    restored["rules"] = original_role["rules"].clone();
    admin("PUT", Some(&restored));
    assert!(
        r.wait_secret_has_newest(Duration::from_secs(90)).is_some(),
        "the key was not saved once the update was allowed again\n{}",
        r.logs()
    );
    r.stub.assert_strict();
}

/// Waits until `series` reads `want` on the `/metrics` of health port `port`, which must pass
/// `promtool check metrics` (the proxy's families and the key sync's beside them): the text.
fn wait_keysync(port: u16, series: &str, want: f64) -> String {
    let text = common::wait_for(Duration::from_secs(20), || {
        let m = prom::scrape(port);
        (prom::value(&m, series) == Some(want)).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "{series} is not {want} on port {port}:\n{}",
            prom::scrape(port)
        )
    });
    prom::check_metrics(&format!("the server on port {port}"), &text);
    text
}

/// Two syncs of one Vault do not fight: a second `server` beside the first stands by, and takes
/// over when the first stops; each key reaches the Secret once, from the one that holds the lock.
#[test]
fn two_syncs_of_one_vault_take_turns() {
    let ns = common::cluster().namespace("twosyncs");
    let mut r = Replica::new(
        "twosyncs",
        chart(&ns.name, "two-state", OURS),
        &ns.name,
        "two-state",
        0,
    );
    r.pod.run_init(Duration::from_secs(90));
    // Each server with a health port (the original's layout has none): /metrics shows which one
    // syncs and which stands by.
    let with_health = |port: u16| {
        let mut argv = r.pod.container("connector-proxy").argv;
        argv.push(format!("--health.addr=127.0.0.1:{port}"));
        argv
    };
    let (health1, health2) = (common::free_port(), common::free_port());
    let argv1 = with_health(health1);
    let argv1: Vec<&str> = argv1.iter().map(String::as_str).collect();
    let first = r
        .pod
        .start_logged("connector-proxy", "connector-proxy", Some(&argv1));
    r.running.push(first);
    assert!(
        common::wait_for(Duration::from_secs(10), || r
            .log_of("connector-proxy")
            .contains("already holds the Vault's registration")
            .then_some(()))
        .is_some(),
        "the first server syncs\n{}",
        r.logs()
    );
    let synced = wait_keysync(health1, "eks_connector_keysync_in_sync", 1.0);
    assert_eq!(
        prom::value(&synced, "eks_connector_keysync_standby"),
        Some(0.0)
    );
    assert!(
        synced.contains(&prom::build_info("eks-connector-proxy")),
        "{synced}"
    );
    let mut argv = with_health(health2);
    argv.push("--proxy.socketAddr=/var/eks/shared/second.sock".into());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut second = r
        .pod
        .start_logged("connector-proxy", "second-server", Some(&argv));
    let standby = common::wait_for(Duration::from_secs(10), || {
        second.log_text().contains("stands by").then_some(())
    });
    assert!(
        standby.is_some(),
        "the second server stands by:\n{}",
        second.log_text()
    );
    let waiting = wait_keysync(health2, "eks_connector_keysync_standby", 1.0);
    assert_eq!(
        prom::value(&waiting, "eks_connector_keysync_in_sync"),
        Some(0.0)
    );
    let key1 = rotated(&r.vault());
    rewrite_in_place(&r.pod, key1.regkey());
    let (ns, name) = (r.ns.clone(), r.secret.clone());
    let has = |reg: &Registration| {
        common::wait_for(Duration::from_secs(2), || {
            secret(&ns, &name)
                .filter(|s| s.data.get(state::KEY_REGKEY).map(Vec::as_slice) == Some(reg.regkey()))
        })
        .is_some()
    };
    assert!(has(&key1), "key 1 reached the Secret\n{}", r.logs());
    assert!(
        !second.log_text().contains("updated from the Vault"),
        "the standing-by server wrote nothing:\n{}",
        second.log_text()
    );
    r.stop();
    let took_over = common::wait_for(Duration::from_secs(10), || {
        second.log_text().contains("syncs it now").then_some(())
    });
    assert!(
        took_over.is_some(),
        "the second server takes over when the first stops:\n{}",
        second.log_text()
    );
    // In step with key 1 before key 2 comes: key 2 is then a rotation it sees.
    wait_keysync(health2, "eks_connector_keysync_in_sync", 1.0);
    let key2 = rotated(&key1);
    rewrite_in_place(&r.pod, key2.regkey());
    assert!(
        has(&key2),
        "key 2 reached the Secret from the second server:\n{}",
        second.log_text()
    );
    let now = wait_keysync(health2, "eks_connector_keysync_in_sync", 1.0);
    assert_eq!(
        prom::value(&now, "eks_connector_keysync_standby"),
        Some(0.0)
    );
    let rotations = prom::value(&now, "eks_connector_keysync_rotations_total");
    assert_eq!(
        rotations,
        Some(1.0),
        "key 2, seen by the second server:\n{now}"
    );
    second.stop(Duration::from_secs(10));
}

/// Our manifests, the real agent under our launcher: the agent's container holds no Kubernetes
/// token (a process there, as Run Command would start it, finds none and the API server refuses
/// it a Secret read), the key still reaches the Secret after a rotation, through the
/// connector-keysync container (root with CAP_DAC_OVERRIDE only), and the proxy runs as
/// non-root.
#[test]
fn our_manifests_keep_the_token_out_of_the_agent_container() {
    let ns = common::cluster().namespace("ours");
    // A copy of manifests/ as an operator prepares it: activation.env from its example (git
    // ignores the real one); the test sets its own activation below.
    let dir = tempdir("manifests");
    let status = Command::new("cp")
        .arg("-r")
        .arg(common::repo_root().join("manifests"))
        .arg(dir.join("m"))
        .status()
        .unwrap();
    assert!(status.success(), "copy manifests/");
    std::fs::copy(
        dir.join("m/activation.env.example"),
        dir.join("m/activation.env"),
    )
    .unwrap();
    let yaml = common::cluster()
        .kubectl()
        .args(["kustomize"])
        .arg(dir.join("m"))
        .output()
        .unwrap();
    assert!(yaml.status.success(), "kubectl kustomize manifests/");
    let mut objects = layout::to_json(
        common::cluster().kubectl(),
        &String::from_utf8_lossy(&yaml.stdout),
    );
    // The user's activation.env: the stand-in's activation.
    let act = objects
        .iter_mut()
        .find(|o| {
            o["kind"] == "Secret"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("eks-connector-activation"))
        })
        .expect("the activation Secret of manifests/");
    let b64 = |v: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v);
    act["data"]["EKS_ACTIVATION_ID"] = json!(b64(ACT_ID));
    act["data"]["EKS_ACTIVATION_CODE"] = json!(b64(ACT_CODE));
    let sts = layout::find(&objects, "StatefulSet", None);
    let spec = &sts["spec"]["template"]["spec"];
    let mut image_names = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array().unwrap() {
            image_names.push(c["image"].as_str().unwrap().to_string());
        }
    }
    let mut r = Replica::new("ours", objects, &ns.name, "eks-connector-state", 0);
    // Our image at its own paths; AWS's agent image as is.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_eks-connector"));
    let ours = Image {
        files: [
            "eks-connector",
            "eks-connector-init",
            "eks-connector-proxy",
            "eks-connector-agent",
        ]
        .iter()
        .map(|b| (format!("/usr/local/bin/{b}"), bin.clone()))
        .collect(),
        entrypoint: vec!["/usr/local/bin/eks-connector".into()],
    };
    let agent = images()[SSM_AGENT_IMAGE].clone();
    let mut map = BTreeMap::new();
    for i in image_names {
        let img = if i.contains("amazon-ssm-agent") {
            agent.clone()
        } else {
            ours.clone()
        };
        map.insert(i, img);
    }
    r.pod = Pod::new(
        &r.work.join("pod-ours"),
        &r.pod_name,
        &r.ns,
        &r.objects,
        map,
        &r.sa,
    );
    r.pod.extra_env = r.env();
    r.start();
    r.wait_authenticated_with_newest(0);
    r.rotation_reaches_the_secret(1);
    assert!(
        r.log_of("connector-agent").contains("no key sync here"),
        "the launcher syncs nothing\n{}",
        r.logs()
    );

    // A command in the agent's container, as SSM Run Command runs it (root, DAC_OVERRIDE).
    let e = &common::cluster().endpoint;
    let script = format!(
        "ls -la /var/run/secrets/kubernetes.io/serviceaccount 2>&1; env | grep -ci token; \
         curl -sk -o /dev/null -w 'api:%{{http_code}}' \
         https://{}:{}/api/v1/namespaces/{}/secrets/{}",
        e.host, e.port, r.ns, r.secret
    );
    let out = r.pod.exec("connector-agent", &["/bin/sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("No such file or directory"),
        "no service-account directory in the agent's container: {text}"
    );
    assert!(
        text.contains("\n0\n"),
        "no token in the agent's environment: {text}"
    );
    assert!(
        text.contains("api:401") || text.contains("api:403"),
        "the API server refuses a Secret read from the agent's container: {text}"
    );

    let status = |container: &str| {
        let c = r.running.iter().find(|c| c.name == container).unwrap();
        let pid = c.main_pid().expect("the container's main process");
        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
    };
    let field = |status: &str, key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let proxy = status("connector-proxy");
    assert_eq!(field(&proxy, "Uid:"), "65532", "the proxy runs as non-root");
    assert_eq!(field(&proxy, "CapEff:"), "0000000000000000");
    let keysync = status("connector-keysync");
    assert_eq!(field(&keysync, "Uid:"), "0");
    assert_eq!(
        field(&keysync, "CapEff:"),
        "0000000000000002",
        "the key sync holds CAP_DAC_OVERRIDE and nothing else"
    );
    r.stub.assert_strict();
}
