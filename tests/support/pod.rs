//! The connector's pod as `manifests/` lays it out, run on this machine container by container:
//! the StatefulSet is rendered (`kubectl kustomize` + client-side conversion to JSON) and each
//! container runs as its own process tree in a new mount + pid namespace (its command is PID 1),
//! with its volumes bind-mounted at their `mountPath`s, its image's files where the image has
//! them, its user, capabilities and no_new_privs from its `securityContext`, and exactly the
//! environment the kubelet would give it. When the manifests change (a container added, the key
//! sync moved), the tests that use this follow.
//!
//! Images: `eks-connector` is our build (`/usr/local/bin/eks-connector*`); the SSM agent's image
//! is the real agent built by `tests/peers/fetch-build.sh` (`/usr/bin/amazon-ssm-agent` and its
//! workers). The only differences from a cluster, all test plumbing: the health ports are free
//! local ports, the API server is the test one (`KUBERNETES_SERVICE_HOST`), init gets
//! `--agent.endpoint` and the agent's config the `Ssm`/`Mgs` endpoints of the SSM stand-in, and
//! both trust the stand-in's CA (`AWS_CA_BUNDLE`, `SSL_CERT_FILE`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::common::{self, TestNamespace};
use crate::peers;
use crate::ssm_stub::{pki, Stub};

static RUNS: AtomicU32 = AtomicU32::new(0);

/// The rendered objects the pod needs.
pub struct Rendered {
    /// Every object rendered (ConfigMaps and Secrets the pod's env and volumes name).
    pub objects: Vec<Value>,
    pub statefulset: Value,
    /// The activation Secret (from `activation.env`).
    pub activation: Value,
    /// The agent's ConfigMap.
    pub agent_config: Value,
    pub role: Value,
}

/// A copy of manifests/ as an operator prepares it (README, Install): git ignores
/// activation.env, so the example's placeholder activation stands in. Made once per process.
fn prepared_manifests() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "eks-connector-pod-manifests-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new("cp")
            .arg("-r")
            .arg(common::repo_root().join("manifests"))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "copy manifests/ to {}", dir.display());
        std::fs::copy(
            dir.join("activation.env.example"),
            dir.join("activation.env"),
        )
        .unwrap();
        dir
    })
}

/// `kubectl kustomize manifests/` as JSON objects.
pub fn render() -> Rendered {
    render_dir(prepared_manifests())
}

/// `kubectl kustomize <root>` (manifests/ prepared, or an overlay of it) as JSON objects.
pub fn render_dir(root: &Path) -> Rendered {
    let cluster = common::cluster();
    let yaml = cluster
        .kubectl()
        .args(["kustomize", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        yaml.status.success(),
        "kubectl kustomize manifests/: {yaml:?}"
    );
    let mut c = cluster
        .kubectl()
        .args(["create", "--dry-run=client", "-o", "json", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(&yaml.stdout).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl create --dry-run: {out:?}");
    let mut objs = Vec::new();
    for v in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>() {
        let v = v.unwrap();
        match v["kind"].as_str() {
            Some("List") => objs.extend(v["items"].as_array().unwrap().iter().cloned()),
            _ => objs.push(v),
        }
    }
    let one = |kind: &str, pred: &dyn Fn(&Value) -> bool| {
        let all: Vec<&Value> = objs
            .iter()
            .filter(|o| o["kind"] == kind && pred(o))
            .collect();
        assert_eq!(all.len(), 1, "exactly one {kind} in manifests/");
        all[0].clone()
    };
    let statefulset = one("StatefulSet", &|_| true);
    let spec = &statefulset["spec"]["template"]["spec"];
    let containers = || {
        spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(spec["containers"].as_array().into_iter().flatten())
    };
    let secret_name = containers()
        .flat_map(|c| c["envFrom"].as_array().into_iter().flatten())
        .find_map(|f| f["secretRef"]["name"].as_str())
        .expect("a container takes the activation from a Secret")
        .to_string();
    let cm_names: Vec<String> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["configMap"]["name"].as_str().map(String::from))
        .collect();
    Rendered {
        activation: one("Secret", &|o| o["metadata"]["name"] == secret_name.as_str()),
        agent_config: one("ConfigMap", &|o| {
            cm_names.iter().any(|n| o["metadata"]["name"] == n.as_str())
                && o["data"]["amazon-ssm-agent.json"].is_string()
        }),
        role: one("Role", &|_| true),
        statefulset,
        objects: objs,
    }
}

impl Rendered {
    /// The data of a rendered ConfigMap or Secret (decoded), by name.
    pub fn data(&self, kind: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let o = self
            .objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)?;
        let mut out = BTreeMap::new();
        for (k, v) in o["data"].as_object().into_iter().flatten() {
            let v = v.as_str().unwrap();
            let bytes = if kind == "Secret" {
                // kustomize folds long base64 values across lines.
                let b64: String = v.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap()
            } else {
                v.as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
        Some(out)
    }
}

/// One replica of the StatefulSet, its volumes as host directories.
pub struct Pod {
    pub name: String,
    pub work: PathBuf,
    pub rendered: Rendered,
    /// Volume name → host directory (an emptyDir, the ConfigMap's files, the token volume).
    pub volumes: BTreeMap<String, PathBuf>,
    namespace: String,
    kube_env: Vec<(String, String)>,
    stub_url: String,
    /// Health port given to each container that serves one.
    ports: BTreeMap<String, u16>,
}

/// A running container.
pub struct Running {
    pub name: String,
    /// `unshare`, our child.
    pub child: Child,
    pub log: PathBuf,
    pub status: Option<std::process::ExitStatus>,
}

fn shq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The directory of our binaries (the image's `/usr/local/bin`): this build, or
/// `$EKS_CONNECTOR_BIN_DIR` (the static build that ships, for benchmarks).
fn our_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("EKS_CONNECTOR_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_BIN_EXE_eks-connector-init"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl Pod {
    /// Replica `name` (e.g. `eks-connector-0`) in `ns`, whose token volume is `sa_dir`, with
    /// SSM at `stub`.
    pub fn new(ns: &TestNamespace, name: &str, sa_dir: &Path, stub: &Stub) -> Pod {
        Pod::new_with(ns, name, sa_dir, &stub.url(), render())
    }

    /// Same, from objects rendered elsewhere (an overlay) and with SSM at `ssm_url` (a name
    /// only a proxy resolves, say).
    pub fn new_with(
        ns: &TestNamespace,
        name: &str,
        sa_dir: &Path,
        ssm_url: &str,
        rendered: Rendered,
    ) -> Pod {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the pod's containers run in their own mount and pid namespaces with their image's \
             files mounted (unshare, mount, setpriv): run these tests as root"
        );
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let work =
            std::env::temp_dir().join(format!("pod-{}-{name}-{}-{n}", ns.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let mut pod = Pod {
            name: name.into(),
            work,
            rendered,
            volumes: BTreeMap::new(),
            namespace: ns.name.clone(),
            kube_env: ns.kube_env(),
            stub_url: ssm_url.to_string(),
            ports: BTreeMap::new(),
        };
        pod.make_volumes(sa_dir);
        pod
    }

    /// The same pod scheduled anew: every emptyDir is new and empty.
    pub fn reschedule(&mut self) {
        let sa = self.volumes_of("projected").into_iter().next();
        self.make_volumes(&sa.expect("a projected token volume"));
    }

    fn volumes_of(&self, kind: &str) -> Vec<PathBuf> {
        let spec = &self.rendered.statefulset["spec"]["template"]["spec"];
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v.get(kind).is_some())
            .map(|v| self.volumes[v["name"].as_str().unwrap()].clone())
            .collect()
    }

    fn make_volumes(&mut self, sa_dir: &Path) {
        let spec = self.rendered.statefulset["spec"]["template"]["spec"].clone();
        let fs_group = spec["securityContext"]["fsGroup"].as_u64();
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        for v in spec["volumes"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap().to_string();
            let dir = self.work.join(format!("vol-{name}-{n}"));
            if v.get("emptyDir").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                // As the kubelet makes an emptyDir: world-writable, group fsGroup.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
                if let Some(g) = fs_group {
                    std::os::unix::fs::chown(&dir, None, Some(g as u32)).unwrap();
                }
            } else if let Some((kind, source)) = self.other_source(v) {
                // Another ConfigMap or Secret (a CA bundle): its keys, or the items listed.
                let data = self
                    .rendered
                    .data(kind, &source)
                    .unwrap_or_else(|| panic!("volume {name}: no {kind} {source} rendered"));
                std::fs::create_dir_all(&dir).unwrap();
                let items = v[kind_key(kind)]["items"].as_array().cloned();
                let files: Vec<(String, String)> = match items {
                    Some(items) => items
                        .iter()
                        .map(|i| {
                            (
                                i["key"].as_str().unwrap().into(),
                                i["path"].as_str().unwrap().into(),
                            )
                        })
                        .collect(),
                    None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
                };
                for (key, path) in files {
                    let bytes = data
                        .get(&key)
                        .unwrap_or_else(|| panic!("{kind} {source} has no key {key}"));
                    std::fs::write(dir.join(path), bytes).unwrap();
                }
            } else if v["configMap"]["name"].is_string() {
                std::fs::create_dir_all(&dir).unwrap();
                for (k, val) in self.rendered.agent_config["data"].as_object().unwrap() {
                    let mut text = val.as_str().unwrap().to_string();
                    if k == "amazon-ssm-agent.json" {
                        text = self.agent_config_for_stub(&text);
                    }
                    std::fs::write(dir.join(k), text).unwrap();
                }
            } else if v.get("projected").is_some() {
                self.volumes.insert(name, sa_dir.to_path_buf());
                continue;
            } else {
                panic!("volume {name}: no stand-in for {v}");
            }
            self.volumes.insert(name, dir);
        }
    }

    /// A volume from a ConfigMap other than the agent's, or from a Secret: (kind, name).
    fn other_source(&self, v: &Value) -> Option<(&'static str, String)> {
        if let Some(name) = v["secret"]["secretName"].as_str() {
            return Some(("Secret", name.to_string()));
        }
        let name = v["configMap"]["name"].as_str()?;
        (self.rendered.agent_config["metadata"]["name"] != name)
            .then(|| ("ConfigMap", name.to_string()))
    }

    /// The shipped agent config with SSM and MGS at the stand-in (test plumbing only).
    fn agent_config_for_stub(&self, shipped: &str) -> String {
        let mut cfg: Value = serde_json::from_str(shipped).expect("amazon-ssm-agent.json is JSON");
        cfg["Ssm"]["Endpoint"] = json!(self.stub_url);
        cfg["Mgs"]["Endpoint"] = json!(self.stub_url);
        cfg.to_string()
    }

    fn spec(&self) -> &Value {
        &self.rendered.statefulset["spec"]["template"]["spec"]
    }

    /// Names of the init containers, in order.
    pub fn init_containers(&self) -> Vec<String> {
        self.spec()["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Names of the long-running containers.
    pub fn containers(&self) -> Vec<String> {
        self.spec()["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn container(&self, name: &str) -> &Value {
        let spec = self.spec();
        spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(spec["containers"].as_array().into_iter().flatten())
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name} in manifests/"))
    }

    /// The container that runs the SSM agent (its image is AWS's).
    pub fn agent_container(&self) -> String {
        self.containers()
            .into_iter()
            .find(|c| self.is_ssm_agent_image(c))
            .expect("a container runs the SSM agent's image")
    }

    /// The long-running container that copies rotated keys into the Secret and reports it on
    /// its `/readyz`: one that reads the Vault (`--state.baseDir`) and serves health checks; the
    /// agent's own container only when no other does (today the launcher syncs; the sync may
    /// move to a container of its own).
    pub fn key_sync_container(&self) -> String {
        let agent = self.agent_container();
        let syncing: Vec<String> = self
            .containers()
            .into_iter()
            .filter(|c| {
                let args = strings(&self.container(c)["args"]);
                args.iter().any(|a| a.starts_with("--state.baseDir"))
                    && args.iter().any(|a| a.starts_with("--health.addr"))
            })
            .collect();
        syncing
            .iter()
            .find(|c| **c != agent)
            .or(syncing.first())
            .cloned()
            .expect("a container syncs the Vault to the Secret (--state.baseDir, --health.addr)")
    }

    /// The init container that registers (it takes the activation from the Secret).
    pub fn registering_container(&self) -> String {
        self.init_containers()
            .into_iter()
            .find(|c| self.container(c)["envFrom"].is_array())
            .expect("an init container takes the activation (envFrom)")
    }

    fn is_ssm_agent_image(&self, name: &str) -> bool {
        self.container(name)["image"]
            .as_str()
            .unwrap()
            .contains("amazon-ssm-agent")
    }

    /// The host directory behind a container path (a volume mount), e.g. the Vault.
    pub fn host_path(&self, container: &str, path: &str) -> PathBuf {
        for m in self.container(container)["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let mp = m["mountPath"].as_str().unwrap();
            if let Ok(rest) = Path::new(path).strip_prefix(mp) {
                let mut host = self.volumes[m["name"].as_str().unwrap()].clone();
                if let Some(sub) = m["subPath"].as_str() {
                    host = host.join(sub);
                }
                return host.join(rest);
            }
        }
        panic!("{path} is not on a volume of container {container}")
    }

    /// The Vault as the agent container sees it, on the host.
    pub fn vault(&self) -> PathBuf {
        self.host_path(&self.agent_container(), "/var/lib/amazon/ssm/Vault")
    }

    /// The local port of a container's health endpoint (its `--health.addr`).
    pub fn health_port(&self, container: &str) -> Option<u16> {
        self.ports.get(container).copied()
    }

    /// The environment the kubelet gives the container (plus the test API server and CA).
    fn env(&self, c: &Value) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            ("HOSTNAME".into(), self.name.clone()),
        ];
        let uid = c["securityContext"]["runAsUser"].as_u64().unwrap_or(0);
        env.push(("HOME".into(), if uid == 0 { "/root" } else { "/" }.into()));
        env.extend(self.kube_env.iter().cloned());
        for from in c["envFrom"].as_array().into_iter().flatten() {
            assert_eq!(
                from["secretRef"]["name"],
                self.rendered.activation["metadata"]["name"]
            );
            for (k, v) in self.rendered.activation["data"].as_object().unwrap() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap();
                env.push((k.clone(), String::from_utf8(bytes).unwrap()));
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap().to_string();
            let from = &e["valueFrom"];
            let value = if let Some(v) = e["value"].as_str() {
                // The kubelet expands $(VAR) from what is defined before.
                let mut v = v.to_string();
                for (k, val) in &env {
                    v = v.replace(&format!("$({k})"), val);
                }
                v
            } else if let Some((kind, r)) =
                [("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")]
                    .into_iter()
                    .find_map(|(kind, key)| from[key].is_object().then(|| (kind, &from[key])))
            {
                let value = self
                    .rendered
                    .data(kind, r["name"].as_str().unwrap())
                    .and_then(|d| d.get(r["key"].as_str().unwrap()).cloned());
                match value {
                    Some(v) => String::from_utf8(v).unwrap(),
                    None if r["optional"] == true => continue,
                    None => panic!("env {name}: {kind} key {r} is missing"),
                }
            } else {
                match from["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => self.name.clone(),
                    Some("metadata.namespace") => self.namespace.clone(),
                    other => panic!("env {name}: no stand-in for {other:?}"),
                }
            };
            env.retain(|(k, _)| *k != name);
            env.push((name, value));
        }
        // The stand-in's CA replaces the roots, for our code and for the agent (whose SDK
        // takes AWS_CA_BUNDLE and whose Go TLS takes SSL_CERT_FILE), unless the manifests give
        // the container a CA bundle of their own (the private-ca component).
        let ca = pki().ca.to_str().unwrap().to_string();
        for k in ["AWS_CA_BUNDLE", "SSL_CERT_FILE"] {
            if !env.iter().any(|(n, _)| n == k) {
                env.push((k.into(), ca.clone()));
            }
        }
        env
    }

    /// command + args with the kubelet's `$(VAR)` expansion, and the test plumbing.
    fn argv(&mut self, name: &str, env: &[(String, String)]) -> Vec<String> {
        let c = self.container(name).clone();
        let mut argv = strings(&c["command"]);
        argv.extend(strings(&c["args"]).into_iter().map(|a| {
            let mut a = a;
            for (k, v) in env {
                a = a.replace(&format!("$({k})"), v);
            }
            assert!(!a.contains("$("), "unexpanded variable in {a}");
            a
        }));
        for a in argv.iter_mut() {
            if a.starts_with("--health.addr=") {
                let port = *self
                    .ports
                    .entry(name.to_string())
                    .or_insert_with(common::free_port);
                *a = format!("--health.addr=127.0.0.1:{port}");
            }
        }
        // The container that registers: the stand-in is SSM.
        if argv.iter().any(|a| a.starts_with("--state.baseDir"))
            && argv[0].ends_with("eks-connector-init")
        {
            argv.push(format!("--agent.endpoint={}", self.stub_url));
        }
        argv
    }

    /// The shell script that lays the container's filesystem out and execs its command as its
    /// user, from inside the new namespaces.
    fn script(&mut self, name: &str, run_dir: &Path) -> String {
        let c = self.container(name).clone();
        let env = self.env(&c);
        let argv = self.argv(name, &env);
        let root_var = run_dir.join("var");
        let root_home = run_dir.join("root");
        let image_etc = run_dir.join("image-etc");
        for d in [&root_var, &root_home, &image_etc] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::set_permissions(&root_home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut sh = vec!["set -e".to_string(), "mount --make-rprivate /".into()];
        // The image's files.
        let image = c["image"].as_str().unwrap();
        let (bin_target, bin_src): (&str, PathBuf) = if self.is_ssm_agent_image(name) {
            ("/usr/bin", peers::ssm_agent().bin.clone())
        } else if image == "eks-connector" || image.contains("/eks-connector") {
            ("/usr/local/bin", our_bin_dir())
        } else {
            panic!("container {name}: no stand-in for image {image}")
        };
        sh.push(format!(
            "mount -t overlay overlay -o lowerdir={}:{bin_target} {bin_target}",
            bin_src.display()
        ));
        // Volume mounts: mount points under /var are made in the container's /var, those
        // under /etc in an image layer over /etc.
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let mp = m["mountPath"].as_str().unwrap().to_string();
            let mut host = self.volumes[m["name"].as_str().unwrap()].clone();
            let file = m["subPath"].as_str().is_some();
            if let Some(sub) = m["subPath"].as_str() {
                host = host.join(sub);
            }
            let (base, rel) = if let Ok(r) = Path::new(&mp).strip_prefix("/var") {
                (&root_var, r)
            } else if let Ok(r) = Path::new(&mp).strip_prefix("/etc") {
                (&image_etc, r)
            } else {
                panic!("container {name}: no stand-in for a mount at {mp}");
            };
            let point = base.join(rel);
            std::fs::create_dir_all(if file {
                point.parent().unwrap()
            } else {
                &point
            })
            .unwrap();
            if file {
                std::fs::write(&point, b"").unwrap();
            }
            mounts.push((host, mp, m["readOnly"] == true));
        }
        sh.push(format!(
            "mount -t overlay overlay -o lowerdir={}:/etc /etc",
            image_etc.display()
        ));
        // The container's own writable /var and /root, after the image layers (which may come
        // from under /root, e.g. ~/.cache), before the volumes mounted under them.
        sh.push(format!(
            "mount --bind {} /var",
            shq(root_var.to_str().unwrap())
        ));
        sh.push(format!(
            "mount --bind {} /root",
            shq(root_home.to_str().unwrap())
        ));
        for (host, mp, ro) in &mounts {
            sh.push(format!(
                "mount --bind {} {}",
                shq(host.to_str().unwrap()),
                shq(mp)
            ));
            if *ro {
                sh.push(format!("mount -o remount,bind,ro {}", shq(mp)));
            }
        }
        let sc = &c["securityContext"];
        if sc["readOnlyRootFilesystem"] == true {
            sh.push("mount -o remount,bind,ro /".into());
        }
        // The user, groups and capabilities.
        let uid = sc["runAsUser"].as_u64().unwrap_or(0);
        let gid = sc["runAsGroup"].as_u64().unwrap_or(0);
        let mut setpriv = vec![
            "setpriv".to_string(),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
        ];
        match self.spec()["securityContext"]["fsGroup"].as_u64() {
            Some(g) => setpriv.push(format!("--groups={g}")),
            None => setpriv.push("--clear-groups".into()),
        }
        let drop_all = strings(&sc["capabilities"]["drop"])
            .iter()
            .any(|d| d == "ALL");
        let add: Vec<String> = strings(&sc["capabilities"]["add"])
            .iter()
            .map(|a| format!("+{}", a.to_lowercase()))
            .collect();
        if drop_all {
            let mut set = vec!["-all".to_string()];
            set.extend(add.iter().cloned());
            setpriv.push(format!("--bounding-set={}", set.join(",")));
            setpriv.push("--inh-caps=-all".into());
            if uid != 0 {
                // A non-root user gets the added capabilities through the ambient set.
                if !add.is_empty() {
                    setpriv.push(format!("--inh-caps=-all,{}", add.join(",")));
                    setpriv.push(format!("--ambient-caps=-all,{}", add.join(",")));
                }
            }
        }
        if sc["allowPrivilegeEscalation"] == false {
            setpriv.push("--no-new-privs".into());
        }
        let mut cmd = setpriv;
        cmd.push("--".into());
        cmd.push("env".into());
        cmd.push("-i".into());
        cmd.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        cmd.extend(argv);
        sh.push(format!(
            "exec {}",
            cmd.iter().map(|a| shq(a)).collect::<Vec<_>>().join(" ")
        ));
        sh.join("\n")
    }

    /// The process that runs a container: `unshare` into new mount and pid namespaces, dying
    /// with the test.
    fn command(&mut self, name: &str) -> (Command, PathBuf) {
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let run_dir = self.work.join(format!("run-{n}-{name}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let script = self.script(name, &run_dir);
        std::fs::write(run_dir.join("container.sh"), &script).unwrap();
        let log = run_dir.join("log");
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "--",
            "/bin/sh",
        ])
        .arg(run_dir.join("container.sh"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl only sets this child's death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        (cmd, log)
    }

    /// Runs a container to completion (an init container); returns its exit status and log.
    pub fn run(&mut self, name: &str) -> (std::process::ExitStatus, String) {
        let (mut cmd, log) = self.command(name);
        let status = cmd
            .status()
            .expect("unshare (util-linux) runs the containers");
        (status, read_lossy(&log))
    }

    /// Runs every init container in order, as the kubelet does; panics with the log of the
    /// first that fails.
    pub fn run_init_containers(&mut self) -> Vec<(String, String)> {
        let mut logs = Vec::new();
        for name in self.init_containers() {
            let (status, log) = self.run(&name);
            assert!(status.success(), "init container {name}: {status}\n{log}");
            logs.push((name, log));
        }
        logs
    }

    /// Starts a long-running container.
    pub fn start(&mut self, name: &str) -> Running {
        let (mut cmd, log) = self.command(name);
        Running {
            name: name.into(),
            child: cmd
                .spawn()
                .expect("unshare (util-linux) runs the containers"),
            log,
            status: None,
        }
    }

    /// The Output of a container run to completion, for tests that inspect stdout.
    pub fn output(&mut self, name: &str) -> Output {
        let (mut cmd, _) = self.command(name);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.output().unwrap()
    }
}

fn kind_key(kind: &str) -> &'static str {
    if kind == "Secret" {
        "secret"
    } else {
        "configMap"
    }
}

pub fn read_lossy(p: &Path) -> String {
    match std::fs::read(p) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", p.display()),
    }
}

/// Children of a process, from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// Every descendant of a process.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo = children(pid);
    while let Some(p) = todo.pop() {
        todo.extend(children(p));
        all.push(p);
    }
    all
}

/// The executable name (`comm`) of a process.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl Running {
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// The container's PID 1 as this machine sees it (the child of `unshare`).
    pub fn pid1(&self) -> Option<u32> {
        // sh execs setpriv execs env execs the command: one process throughout.
        children(self.child.id()).into_iter().next()
    }

    /// Processes in the container, as (host pid, comm).
    pub fn processes(&self) -> Vec<(u32, String)> {
        descendants(self.child.id())
            .into_iter()
            .map(|p| (p, comm(p)))
            .collect()
    }

    /// The host pid of the first process in the container named `name`.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.processes()
            .into_iter()
            .find(|(_, c)| c == name)
            .map(|(p, _)| p)
    }

    /// Sends a signal to the container's PID 1, as the kubelet does.
    pub fn signal(&self, sig: i32) {
        let pid = self.pid1().expect("the container is running");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, sig) };
    }

    /// Waits up to `timeout` for the container to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.status.is_none() {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.status = Some(s);
                break;
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.status
    }

    pub fn alive(&mut self) -> bool {
        self.status.is_none() && self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
