//! The shipped manifests against the real kube-apiserver: they render, pass a server-side dry
//! run, and — applied for real in a test namespace — the StatefulSet's containers run as written
//! (their command, args, env and mounts, in the shipped image, with a volume per emptyDir and
//! the projected token), registering with the SSM stand-in and serving the console user's
//! requests through the socket; the console-user example grants exactly the listed ARNs, and the
//! API server refuses an impersonation rule without names.

mod common;
#[path = "support/image_env.rs"]
mod image_env;
#[path = "support/ssm_stub.rs"]
mod ssm_stub;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use image_env::{curl_socket, image, temp_dir, wait_for_path, Container, Mount, Run};
use serde_json::{json, Value};
use ssm_stub::{pki, Stub};

const CONSOLE_USER: &str = "arn:aws:iam::111122223333:role/EKSConsoleViewer";
const AGENT_CONFIG: &str = r#"{"Profile":{"KeyAutoRotateDays":7},"Agent":{"ContainerMode":true},"Identity":{"ConsumptionOrder":["OnPrem"]}}"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kubectl(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut c = common::cluster().kubectl();
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("kubectl");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn kubectl_ok(args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `kubectl kustomize` of `manifests/<sub>`, optionally moved into `namespace` by an overlay (as a
/// user would), as YAML.
fn render_yaml(sub: &str, namespace: Option<&str>) -> String {
    let target = common::repo_root().join("manifests").join(sub);
    match namespace {
        None => kubectl_ok(&["kustomize", target.to_str().unwrap()], None),
        Some(ns) => {
            let overlay = temp_dir("overlay");
            // Kustomize wants resources relative to the overlay.
            let up = "../".repeat(overlay.components().count() - 1);
            let rel = format!("{up}{}", target.to_str().unwrap().trim_start_matches('/'));
            std::fs::write(
                overlay.join("kustomization.yaml"),
                format!("resources:\n  - {rel}\nnamespace: {ns}\n"),
            )
            .unwrap();
            kubectl_ok(&["kustomize", overlay.to_str().unwrap()], None)
        }
    }
}

/// The rendered objects as JSON (kubectl's client-side conversion).
fn to_json(yaml: &str) -> Vec<Value> {
    let out = kubectl_ok(
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        Some(yaml.as_bytes()),
    );
    // One JSON document per object (or a List).
    let mut objs = Vec::new();
    for v in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
        let v = v.unwrap();
        match v["kind"].as_str() {
            Some("List") => objs.extend(v["items"].as_array().unwrap().iter().cloned()),
            _ => objs.push(v),
        }
    }
    objs
}

fn render(sub: &str, namespace: Option<&str>) -> Vec<Value> {
    to_json(&render_yaml(sub, namespace))
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let all = find(objs, kind);
    assert_eq!(all.len(), 1, "exactly one {kind}");
    all[0]
}

fn containers(sts: &Value) -> Vec<&Value> {
    let spec = &sts["spec"]["template"]["spec"];
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .collect()
}

fn container<'a>(sts: &'a Value, name: &str) -> &'a Value {
    containers(sts)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn rendered_manifests_pass_a_server_side_dry_run() {
    let env = common::cluster();
    let ns = env.namespace("manifests-dry");
    let yaml = render_yaml("", Some(&ns.name));
    let objs = to_json(&yaml);
    let mut kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Namespace",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "ServiceAccount",
            "StatefulSet",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
    );
    // Label the namespace as the manifests do, so Pod Security admission judges the pod template.
    let namespace = one(&objs, "Namespace").to_string();
    kubectl_ok(&["apply", "-f", "-"], Some(namespace.as_bytes()));
    let out = kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(yaml.as_bytes()),
    );
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "server-side dry run refused the manifests:\n{stderr}"
    );
    assert!(
        !stderr.contains("PodSecurity"),
        "the pod template violates the namespace's Pod Security level:\n{stderr}"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("statefulset.apps/eks-connector created (server dry run)"));
    // The console-user example too.
    let example = render_yaml("console-user", None);
    let out = kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(example.as_bytes()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn statefulset_follows_the_security_and_footprint_rules() {
    let objs = render("", None);
    let sts = one(&objs, "StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 2);
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sa = one(&objs, "ServiceAccount");
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert!(
        !objs
            .iter()
            .any(|o| o["type"] == "kubernetes.io/service-account-token"),
        "no long-lived token Secret"
    );
    // The token: projected, expiring, with ca.crt and namespace, as the kubelet's default.
    let vols = pod["volumes"].as_array().unwrap();
    let token_vol = vols.iter().find(|v| v["name"] == "serviceaccount").unwrap();
    let sources = token_vol["projected"]["sources"].as_array().unwrap();
    assert!(sources
        .iter()
        .any(|s| s["serviceAccountToken"]["path"] == "token"
            && s["serviceAccountToken"]["expirationSeconds"]
                .as_u64()
                .unwrap()
                <= 3600));
    assert!(sources
        .iter()
        .any(|s| s["configMap"]["items"][0]["path"] == "ca.crt"));
    assert!(sources
        .iter()
        .any(|s| s["downwardAPI"]["items"][0]["path"] == "namespace"));

    let pdb = one(&objs, "PodDisruptionBudget");
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the PDB selects the connector's pods");
    }

    let activation = one(&objs, "Secret");
    let code = base64::engine::general_purpose::STANDARD
        .decode(activation["data"]["EKS_ACTIVATION_CODE"].as_str().unwrap())
        .unwrap();
    let code = text(&code);
    for c in containers(sts) {
        let name = c["name"].as_str().unwrap();
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_ne!(sc["privileged"], true, "{name}");
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
        for key in ["requests", "limits"] {
            for r in ["cpu", "memory"] {
                assert!(
                    c["resources"][key][r].is_string(),
                    "{name}: resources.{key}.{r} is set"
                );
            }
        }
        // The activation code never travels in args.
        let argv = [strings(&c["command"]), strings(&c["args"])].concat();
        for a in &argv {
            assert!(
                !a.contains(&code)
                    && !a.contains("activation.code")
                    && !a.contains("EKS_ACTIVATION_CODE"),
                "{name}: the activation code must not be in args ({a})"
            );
        }
        let mounts: Vec<String> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        let expected: &[&str] = match name {
            "connector-install-launcher" => &["launcher"],
            "connector-init" => &["vault", "serviceaccount"],
            "connector-agent" => &[
                "launcher",
                "shared",
                "vault",
                "agent-config",
                "agent-config",
                "serviceaccount",
            ],
            "connector-proxy" => &["shared", "serviceaccount"],
            other => panic!("unexpected container {other}"),
        };
        assert_eq!(mounts, expected, "{name}: only the mounts it needs");
        if name != "connector-agent" {
            assert!(
                sc["capabilities"]["add"].is_null(),
                "{name}: no added capabilities"
            );
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        }
    }
    let proxy = container(sts, "connector-proxy");
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_ne!(sc["runAsUser"], 0);
    // The agent keeps exactly what the SSM agent needs.
    assert_eq!(
        strings(&container(sts, "connector-agent")["securityContext"]["capabilities"]["add"]),
        ["DAC_OVERRIDE"]
    );
    // Probes hit the port the binary serves health on.
    for (name, probes) in [
        ("connector-proxy", &["livenessProbe", "readinessProbe"][..]),
        ("connector-agent", &["readinessProbe"][..]),
    ] {
        let c = container(sts, name);
        let addr = strings(&c["args"])
            .into_iter()
            .find_map(|a| a.strip_prefix("--health.addr=").map(str::to_string))
            .unwrap_or_else(|| panic!("{name} has --health.addr"));
        let port: u64 = addr.rsplit(':').next().unwrap().parse().unwrap();
        for p in probes {
            let probe_port = &c[p]["httpGet"]["port"];
            let probe_port = match probe_port.as_u64() {
                Some(n) => n,
                None => c["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|cp| cp["name"] == *probe_port)
                    .unwrap()["containerPort"]
                    .as_u64()
                    .unwrap(),
            };
            assert_eq!(probe_port, port, "{name} {p} port");
        }
    }
    // The SSM agent's configuration, byte for byte.
    let cm = one(&objs, "ConfigMap");
    assert_eq!(cm["data"]["amazon-ssm-agent.json"], AGENT_CONFIG);
    assert!(cm["data"]["seelog.xml"]
        .as_str()
        .unwrap()
        .starts_with("<seelog"));
}

#[test]
fn impersonation_is_limited_to_the_listed_arns() {
    let objs = [render("", None), render("console-user", None)].concat();
    let mut impersonable = Vec::new();
    for role in objs
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        for rule in role["rules"].as_array().into_iter().flatten() {
            let verbs = strings(&rule["verbs"]);
            if verbs.iter().any(|v| v == "impersonate" || v == "*") {
                let names = strings(&rule["resourceNames"]);
                assert!(
                    !names.is_empty(),
                    "{}: an impersonation rule without resourceNames allows everyone",
                    role["metadata"]["name"]
                );
                impersonable.extend(names);
            }
        }
    }
    impersonable.sort();
    // Every impersonable ARN can read what the console shows, and nobody else is bound.
    let mut bound: Vec<String> = objs
        .iter()
        .filter(|o| {
            o["kind"] == "ClusterRoleBinding"
                && o["roleRef"]["name"] == "eks-connector-console-read"
        })
        .flat_map(|b| b["subjects"].as_array().unwrap().iter())
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    bound.sort();
    assert_eq!(impersonable, bound);
    assert_eq!(impersonable, [CONSOLE_USER]);
}

/// Host directories standing in for the pod's volumes.
struct PodVolumes {
    dirs: BTreeMap<String, PathBuf>,
}

impl PodVolumes {
    fn new(sts: &Value, configmap: &Value, sa_dir: &Path) -> PodVolumes {
        let mut dirs = BTreeMap::new();
        for v in sts["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
        {
            let name = v["name"].as_str().unwrap().to_string();
            let dir = if v.get("emptyDir").is_some() {
                let d = temp_dir(&format!("vol-{name}"));
                // As the kubelet makes an emptyDir: world-writable.
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
                d
            } else if v.get("configMap").is_some() {
                assert_eq!(v["configMap"]["name"], configmap["metadata"]["name"]);
                let d = temp_dir(&format!("vol-{name}"));
                for (k, val) in configmap["data"].as_object().unwrap() {
                    std::fs::write(d.join(k), val.as_str().unwrap()).unwrap();
                }
                d
            } else if v.get("projected").is_some() {
                sa_dir.to_path_buf()
            } else {
                panic!("volume {name}: no stand-in for {v}")
            };
            dirs.insert(name, dir);
        }
        PodVolumes { dirs }
    }

    fn mounts(&self, c: &Value) -> Vec<Mount> {
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let mut host = self.dirs[m["name"].as_str().unwrap()].clone();
                if let Some(sub) = m["subPath"].as_str() {
                    host = host.join(sub);
                }
                Mount {
                    host,
                    container: m["mountPath"].as_str().unwrap().to_string(),
                    read_only: m["readOnly"] == true,
                }
            })
            .collect()
    }
}

/// The container's environment as the kubelet would set it (plus the in-cluster API address).
fn container_env(
    c: &Value,
    secret: &Value,
    pod: &str,
    ns: &common::TestNamespace,
) -> Vec<(String, String)> {
    let mut env = ns.kube_env();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        assert_eq!(from["secretRef"]["name"], secret["metadata"]["name"]);
        for (k, v) in secret["data"].as_object().unwrap() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            env.push((k.clone(), text(&bytes)));
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.to_string(),
                Some("metadata.namespace") => ns.name.clone(),
                other => panic!("env {name}: no stand-in for {other:?}"),
            }
        };
        env.push((name, value));
    }
    env
}

/// command + args with the kubelet's `$(VAR)` expansion.
fn argv(c: &Value, env: &[(String, String)]) -> Vec<String> {
    let mut out = strings(&c["command"]);
    out.extend(strings(&c["args"]).into_iter().map(|a| {
        let mut a = a;
        for (k, v) in env {
            a = a.replace(&format!("$({k})"), v);
        }
        assert!(!a.contains("$("), "unexpanded variable in {a}");
        a
    }));
    out
}

fn user_of(c: &Value) -> Option<String> {
    let sc = &c["securityContext"];
    sc["runAsUser"]
        .as_u64()
        .map(|u| match sc["runAsGroup"].as_u64() {
            Some(g) => format!("{u}:{g}"),
            None => u.to_string(),
        })
}

/// Replaces `--flag=…` in argv (the port of a health address, the API server's address: the
/// only things that differ between a pod and this machine).
fn replace_flag(argv: &mut [String], flag: &str, value: &str) {
    let prefix = format!("{flag}=");
    let a = argv
        .iter_mut()
        .find(|a| a.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{flag} is in the args"));
    *a = format!("{prefix}{value}");
}

#[test]
fn the_statefulset_runs_as_written_and_the_console_user_gets_exactly_its_rights() {
    let env = common::cluster();
    let ns = env.namespace("manifests-run");
    // Apply for real, moved into the test namespace.
    let yaml = render_yaml("", Some(&ns.name));
    let out = kubectl(&["apply", "-f", "-"], Some(yaml.as_bytes()));
    assert!(out.status.success(), "apply: {}", text(&out.stderr));
    let objs = to_json(&yaml);

    // The API server refuses an impersonation grant without names (the policy may take a
    // moment to be enforced after its creation).
    for bad in [json!([]), Value::Null] {
        let mut rule = json!({"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]});
        if !bad.is_null() {
            rule["resourceNames"] = bad.clone();
        }
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                          "metadata": {"name": "eks-connector-everyone"}, "rules": [rule]});
        let refused = common::wait_for(Duration::from_secs(20), || {
            let out = kubectl(
                &["create", "--dry-run=server", "-f", "-"],
                Some(role.to_string().as_bytes()),
            );
            (!out.status.success()).then(|| text(&out.stderr))
        })
        .expect("the API server must refuse an impersonation rule without resourceNames");
        assert!(refused.contains("must list the allowed names"), "{refused}");
    }

    // The console-user example, its ServiceAccount subject moved along.
    let example = render_yaml("console-user", None).replace(
        "namespace: eks-connector",
        &format!("namespace: {}", ns.name),
    );
    let out = kubectl(&["apply", "-f", "-"], Some(example.as_bytes()));
    assert!(
        out.status.success(),
        "apply console-user: {}",
        text(&out.stderr)
    );

    let sts = one(&objs, "StatefulSet");
    let secret = one(&objs, "Secret");
    let configmap = one(&objs, "ConfigMap");
    let activation = |k: &str| {
        text(
            &base64::engine::general_purpose::STANDARD
                .decode(secret["data"][k].as_str().unwrap())
                .unwrap(),
        )
    };
    let stub = Stub::start(
        &activation("EKS_ACTIVATION_ID"),
        &activation("EKS_ACTIVATION_CODE"),
    );

    // The projected token volume of ServiceAccount eks-connector, as the kubelet writes it.
    let sa_dir = temp_dir("sa");
    std::fs::write(sa_dir.join("token"), ns.token_for("eks-connector", 3600)).unwrap();
    std::fs::copy(env.ca_path(), sa_dir.join("ca.crt")).unwrap();
    std::fs::write(sa_dir.join("namespace"), &ns.name).unwrap();
    let volumes = PodVolumes::new(sts, configmap, &sa_dir);
    let pod = "eks-connector-0";
    let img = image();
    let c = Container::new(&img.reference("amd64"));
    let api = format!("{}:{}", env.endpoint.host, env.endpoint.port);

    // 1. install-launcher
    let spec = container(sts, "connector-install-launcher");
    let e = container_env(spec, secret, pod, &ns);
    let args = argv(spec, &e);
    let run = Run {
        mounts: volumes.mounts(spec),
        env: e,
        user: user_of(spec),
    };
    let out = c.run(&run, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "install-launcher {args:?}: {}",
        text(&out.stderr)
    );
    let launcher = volumes.dirs["launcher"].join("eks-connector-agent");
    assert!(launcher.exists(), "the launcher is in the launcher volume");

    // 2. init: registers with the stand-in (the only test-only flag: where SSM is).
    let spec = container(sts, "connector-init");
    let mut e = container_env(spec, secret, pod, &ns);
    e.push(("AWS_CA_BUNDLE".into(), "/etc/test-ca/ca.crt".into()));
    let mut args = argv(spec, &e);
    args.push(format!("--agent.endpoint={}", stub.url()));
    let mut mounts = volumes.mounts(spec);
    mounts.push(Mount::ro(&pki().dir, "/etc/test-ca"));
    let run = Run {
        mounts,
        env: e,
        user: user_of(spec),
    };
    let out = c.run(&run, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "init {args:?}: {}", text(&out.stderr));
    stub.assert_strict();
    assert_eq!(stub.registrations().len(), 1);
    let state = env
        .admin()
        .get_secret(&ns.name, "eks-connector-state-0")
        .expect("init wrote the state Secret with the shipped RBAC");
    assert_eq!(
        state.data.get("regkey"),
        Some(&std::fs::read(volumes.dirs["vault"].join("Store/RegistrationKey")).unwrap())
    );

    // 3. proxy: serves the console user through the shared socket.
    let spec = container(sts, "connector-proxy");
    let e = container_env(spec, secret, pod, &ns);
    let mut args = argv(spec, &e);
    let health = image_env::free_port();
    replace_flag(&mut args, "--health.addr", &format!("127.0.0.1:{health}"));
    args.push(format!("--proxy.targetHost={api}"));
    let run = Run {
        mounts: volumes.mounts(spec),
        env: e,
        user: user_of(spec),
    };
    let mut proxy = c.spawn(
        &run,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &temp_dir("proxy-log").join("proxy.log"),
    );
    let sock = volumes.dirs["shared"].join("connector.sock");
    assert!(
        wait_for_path(&sock, Duration::from_secs(20)),
        "the proxy made no socket; its log:\n{}",
        proxy.log_text()
    );
    let (code, body) = curl_socket(&sock, Some(CONSOLE_USER), "/api/v1/nodes");
    assert_eq!(
        code,
        200,
        "the console user lists nodes: {body}\n{}",
        proxy.log_text()
    );
    let (code, _) = curl_socket(
        &sock,
        Some(CONSOLE_USER),
        &format!("/apis/apps/v1/namespaces/{}/statefulsets", ns.name),
    );
    assert_eq!(code, 200);
    let (code, _) = curl_socket(
        &sock,
        Some(CONSOLE_USER),
        &format!("/api/v1/namespaces/{}/secrets", ns.name),
    );
    assert_eq!(code, 403, "the console role reads no Secrets");
    let (code, _) = curl_socket(
        &sock,
        Some("arn:aws:iam::111122223333:user/mallory"),
        "/api/v1/nodes",
    );
    assert_eq!(code, 403, "an unlisted ARN cannot be impersonated");
    let (code, _) = curl_socket(&sock, None, "/api/v1/nodes");
    assert_eq!(code, 401);
    let ready = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg(format!("http://127.0.0.1:{health}/readyz"))
        .output()
        .unwrap();
    assert_eq!(
        text(&ready.stdout),
        "200",
        "the readiness probe's endpoint answers"
    );

    // 4. agent: our launcher from the launcher volume, with its args; a stand-in agent that
    // exits 0 (the SSM agent's image is not here): the launcher finds the Vault complete,
    // starts it, and exits with its status.
    let spec = container(sts, "connector-agent");
    let e = container_env(spec, secret, pod, &ns);
    let mut args = argv(spec, &e);
    assert_eq!(args[0], "/var/eks/launcher/eks-connector-agent");
    replace_flag(
        &mut args,
        "--health.addr",
        &format!("127.0.0.1:{}", image_env::free_port()),
    );
    args.extend([
        "--".into(),
        "/usr/local/bin/eks-connector-proxy".into(),
        "--version".into(),
    ]);
    let run = Run {
        mounts: volumes.mounts(spec),
        env: e,
        user: user_of(spec),
    };
    let out = c.run(&run, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "agent launcher {args:?}: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("eks-connector-proxy"),
        "the stand-in agent ran"
    );
    assert!(proxy.alive());
}
