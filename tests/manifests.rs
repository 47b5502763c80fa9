//! The shipped manifests against the real kube-apiserver, at the newest Kubernetes we test and at
//! the oldest that builds here (`common::OLDEST_KUBE`): every Kustomize entry point passes a strict
//! server-side dry run; applied for real in a test namespace, the StatefulSet's containers run as
//! written (their command, args, env and mounts, in the shipped image, with a volume per emptyDir
//! and the projected token), registering with the SSM stand-in and serving the console user's
//! requests through the socket; each console role grants what it says and no Secret; the
//! admission guard refuses what grants impersonation to everyone; a one-node drain completes; the
//! README's install commands are the ones run here.

mod common;
#[path = "support/image_env.rs"]
mod image_env;
#[path = "support/prom.rs"]
mod prom;
#[path = "support/ssm_stub.rs"]
mod ssm_stub;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use common::Cluster;
use image_env::{curl_socket, image, temp_dir, wait_for_path, Container, Mount, Run};
use serde_json::{json, Value};
use ssm_stub::{pki, Stub};

const CONSOLE_USER: &str = "arn:aws:iam::111122223333:role/EKSConsoleViewer";
const AGENT_CONFIG: &str = r#"{"Profile":{"KeyAutoRotateDays":7},"Agent":{"ContainerMode":true},"Identity":{"ConsumptionOrder":["OnPrem"]}}"#;
/// The containers, named as the original's so AWS's troubleshooting commands work.
const CONTAINERS: [&str; 5] = [
    "connector-install-launcher",
    "connector-init",
    "connector-agent",
    "connector-keysync",
    "connector-proxy",
];
/// Components that the dry runs apply to the base one at a time.
const COMPONENTS: [&str; 6] = [
    "admission-policy",
    "network-policy",
    "single-node",
    "three-replicas",
    "openshift",
    "metrics",
];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kubectl_on(env: &Cluster, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    env.run_kubectl(args, stdin)
}

fn kubectl(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    kubectl_on(common::cluster(), args, stdin)
}

fn kubectl_ok_on(env: &Cluster, args: &[&str], stdin: Option<&[u8]>) -> String {
    env.kubectl_ok(args, stdin)
}

fn kubectl_ok(args: &[&str], stdin: Option<&[u8]>) -> String {
    kubectl_ok_on(common::cluster(), args, stdin)
}

/// A copy of the repository's manifests/ as an operator prepares it: the README's install steps
/// that need no AWS (the `<!-- run by tests/manifests.rs: prepare -->` block: the activation file
/// from its example) run in it. `oldest`: also the README's step for Kubernetes 1.29 (the
/// `<!-- run by tests/manifests.rs: 1.29 -->` block). Made once per process.
fn prepared(oldest: bool) -> &'static Path {
    static NEWEST: OnceLock<PathBuf> = OnceLock::new();
    static OLDEST: OnceLock<PathBuf> = OnceLock::new();
    let cell = if oldest { &OLDEST } else { &NEWEST };
    cell.get_or_init(|| {
        let root = temp_dir(if oldest { "operator-1.29" } else { "operator" });
        let status = Command::new("cp")
            .arg("-r")
            .arg(common::repo_root().join("manifests"))
            .arg(&root)
            .status()
            .unwrap();
        assert!(status.success(), "copy manifests/");
        // A real activation.env in the working tree must not leak into the tests (nor exist in git).
        let _ = std::fs::remove_file(root.join("manifests/activation.env"));
        run_readme_block("prepare", &root, None);
        if oldest {
            run_readme_block("1.29", &root, None);
        }
        root.join("manifests")
    })
}

/// The shell commands of the README block marked `<!-- run by tests/manifests.rs: NAME -->`.
fn readme_block(name: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let marker = format!("<!-- run by tests/manifests.rs: {name} -->");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README.md has no block marked {marker}"));
    let rest = &readme[at + marker.len()..];
    let open = rest
        .find("```sh\n")
        .expect("a ```sh block after the marker")
        + 6;
    let close = rest[open..].find("```").expect("the block ends") + open;
    rest[open..close]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Runs a README block with bash in `dir` (which holds manifests/), `kubectl` being the test
/// cluster's when given. Returns each command's output.
fn run_readme_block(name: &str, dir: &Path, env: Option<&Cluster>) -> Vec<String> {
    let mut outputs = Vec::new();
    for cmd in readme_block(name) {
        let mut c = Command::new("bash");
        c.arg("-euo")
            .arg("pipefail")
            .arg("-c")
            .arg(&cmd)
            .current_dir(dir);
        if let Some(env) = env {
            // `kubectl` in the README is the test cluster's kubectl with its admin kubeconfig.
            let shim = temp_dir("kubectl-shim");
            let kubectl = env.kubectl();
            let program = kubectl.get_program().to_string_lossy().into_owned();
            let args: Vec<String> = kubectl
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            std::fs::write(
                shim.join("kubectl"),
                format!("#!/bin/sh\nexec '{program}' {} \"$@\"\n", args.join(" ")),
            )
            .unwrap();
            std::fs::set_permissions(shim.join("kubectl"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            let path = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{}:{path}", shim.display()));
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "README command `{cmd}` failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        outputs.push(text(&out.stdout));
    }
    outputs
}

/// A kustomization in the prepared copy that applies `components` to `resources` (paths relative
/// to manifests/), as an operator's overlay would.
fn overlay(oldest: bool, name: &str, resources: &[&str], components: &[&str]) -> PathBuf {
    let root = prepared(oldest);
    let dir = root.join("test-overlays").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let list = |items: &[&str]| -> String {
        items
            .iter()
            .map(|i| format!("  - ../../{i}\n"))
            .collect::<String>()
    };
    let mut k = String::from("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n");
    if !resources.is_empty() {
        k += &format!("resources:\n{}", list(resources));
    }
    if !components.is_empty() {
        k += &format!("components:\n{}", list(components));
    }
    std::fs::write(dir.join("kustomization.yaml"), k).unwrap();
    dir
}

/// `kubectl kustomize` of a directory, optionally moved into `namespace` by an overlay (as a user
/// would), as YAML.
fn kustomize(env: &Cluster, target: &Path, namespace: Option<&str>) -> String {
    match namespace {
        None => kubectl_ok_on(env, &["kustomize", target.to_str().unwrap()], None),
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
            kubectl_ok_on(env, &["kustomize", overlay.to_str().unwrap()], None)
        }
    }
}

/// `manifests/<sub>` of the prepared copy (the newest cluster's), rendered.
fn render_yaml(sub: &str, namespace: Option<&str>) -> String {
    kustomize(common::cluster(), &prepared(false).join(sub), namespace)
}

/// The rendered objects as JSON (kubectl's local conversion: no API server, so kinds it does not
/// serve, like OpenShift's, convert too; removing an annotation nobody sets changes nothing).
fn to_json(yaml: &str) -> Vec<Value> {
    to_json_on(common::cluster(), yaml)
}

fn to_json_on(env: &Cluster, yaml: &str) -> Vec<Value> {
    env.objects(yaml)
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

/// Every Kustomize entry point an operator applies, as (name, directory): the default, the base,
/// both console roles, and the base with each component.
fn entry_points(oldest: bool) -> Vec<(String, PathBuf)> {
    let root = prepared(oldest);
    let mut v = vec![
        ("manifests/".to_string(), root.to_path_buf()),
        ("manifests/base".into(), root.join("base")),
        (
            "console-user/minimal".into(),
            root.join("console-user/minimal"),
        ),
        ("console-user/view".into(), root.join("console-user/view")),
    ];
    for c in COMPONENTS {
        let component = format!("components/{c}");
        v.push((
            format!("base + {component}"),
            overlay(oldest, c, &["base"], &[&component]),
        ));
    }
    v
}

/// `kubectl apply --server-side --dry-run=server --validate=strict`: the API server checks every
/// field (unknown or duplicate ones are errors) and runs admission, Pod Security included.
fn strict_dry_run(env: &Cluster, yaml: &str) -> std::process::Output {
    kubectl_on(
        env,
        &[
            "apply",
            "--server-side",
            "--field-manager=eks-connector-test",
            // Other tests own the cluster-scoped objects by now; who owns a field is not tested.
            "--force-conflicts",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            "-",
        ],
        Some(yaml.as_bytes()),
    )
}

fn dry_run_every_entry_point(env: &'static Cluster, oldest: bool) {
    let mut refused = Vec::new();
    for (name, dir) in entry_points(oldest) {
        let ns = env.namespace("dry");
        let yaml = kustomize(env, &dir, Some(&ns.name));
        // Label the namespace as the manifests do, so Pod Security admission judges the pod
        // template (the dry run itself creates nothing).
        for doc in yaml.split("\n---\n") {
            if doc.contains("kind: Namespace") {
                kubectl_ok_on(env, &["apply", "-f", "-"], Some(doc.as_bytes()));
            }
        }
        let out = strict_dry_run(env, &yaml);
        let stderr = text(&out.stderr);
        if oldest && name == "base + components/admission-policy" {
            // Documented: Kubernetes >= 1.30 only.
            assert!(
                !out.status.success()
                    && stderr.contains(r#"no matches for kind "ValidatingAdmissionPolicy""#),
                "{name} on {}: {stderr}",
                common::OLDEST_KUBE
            );
            continue;
        }
        if name == "base + components/openshift" {
            // Vanilla Kubernetes has no SecurityContextConstraints API: everything else in it is
            // checked, and the SCC is compared with the pod in `openshift_scc_grants_exactly_what_the_pod_needs`.
            assert!(
                !out.status.success()
                    && stderr.contains(r#"no matches for kind "SecurityContextConstraints""#),
                "{name}: only the SCC kind is unknown here: {stderr}"
            );
            let without: Vec<&str> = yaml
                .split("\n---\n")
                .filter(|d| !d.contains("kind: SecurityContextConstraints"))
                .collect();
            let out = strict_dry_run(env, &without.join("\n---\n"));
            assert!(out.status.success(), "{name}: {}", text(&out.stderr));
            continue;
        }
        if !out.status.success() || stderr.contains("Warning") {
            refused.push(format!("{name}:\n{stderr}"));
        }
    }
    assert!(
        refused.is_empty(),
        "entry points refused or warned about by the API server:\n{}",
        refused.join("\n")
    );
}

#[test]
fn every_entry_point_passes_a_strict_server_side_dry_run_on_the_newest_kubernetes() {
    dry_run_every_entry_point(common::cluster(), false);
}

#[test]
fn every_entry_point_passes_a_strict_server_side_dry_run_on_the_oldest_kubernetes() {
    let env = common::oldest_cluster();
    // As shipped, manifests/ holds the admission policy, whose API Kubernetes 1.29 lacks: the
    // README says so and gives the one step (run by prepared(true)) that removes it.
    let ns = env.namespace("dry-shipped");
    let root = temp_dir("as-shipped");
    let out = Command::new("cp")
        .arg("-r")
        .arg(prepared(false))
        .arg(&root)
        .status()
        .unwrap();
    assert!(out.success());
    let yaml = kustomize(env, &root.join("manifests"), Some(&ns.name));
    let out = strict_dry_run(env, &yaml);
    assert!(
        !out.status.success()
            && text(&out.stderr).contains(r#"no matches for kind "ValidatingAdmissionPolicy""#),
        "on {} the admission policy's API is missing: {}",
        common::OLDEST_KUBE,
        text(&out.stderr)
    );
    dry_run_every_entry_point(env, true);
}

#[test]
fn statefulset_follows_the_security_and_footprint_rules() {
    let objs = render("", None);
    let sts = one(&objs, "StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 2);
    let names: Vec<&str> = containers(sts)
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names, CONTAINERS,
        "the original's container names, and the key sync's own"
    );
    // The agent's liveness asks our launcher only (never /readyz, which follows the Secret), and
    // gives it minutes: it cannot restart a healthy agent over a slow moment.
    let live = &container(sts, "connector-agent")["livenessProbe"];
    assert_eq!(live["httpGet"]["path"], "/healthz");
    let patience =
        live["periodSeconds"].as_u64().unwrap() * live["failureThreshold"].as_u64().unwrap();
    assert!(patience >= 120, "liveness gives up after {patience} s");
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
            // No token where SSM runs commands as root: the key sync has its own container.
            "connector-agent" => &[
                "launcher",
                "shared",
                "vault",
                "agent-config",
                "agent-config",
            ],
            "connector-keysync" => &["vault", "serviceaccount"],
            "connector-proxy" => &["shared", "serviceaccount"],
            other => panic!("unexpected container {other}"),
        };
        assert_eq!(mounts, expected, "{name}: only the mounts it needs");
        if name != "connector-agent" && name != "connector-keysync" {
            assert!(
                sc["capabilities"]["add"].is_null(),
                "{name}: no added capabilities"
            );
        }
        if name != "connector-agent" {
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
    // The key sync: root to reach the agent's root-owned 0600 Vault, and the one capability
    // Pod Security "baseline" admits that lets it in (DAC_READ_SEARCH is not admitted).
    assert_eq!(
        strings(&container(sts, "connector-keysync")["securityContext"]["capabilities"]["add"]),
        ["DAC_OVERRIDE"]
    );
    // Probes hit the port the binary serves health on.
    for (name, probes) in [
        ("connector-proxy", &["livenessProbe", "readinessProbe"][..]),
        ("connector-agent", &["livenessProbe"][..]),
        ("connector-keysync", &["readinessProbe"][..]),
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
    for variant in ["console-user/minimal", "console-user/view"] {
        let objs = [render("", None), render(variant, None)].concat();
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
        // Every impersonable ARN gets each console binding of the variant, and nobody else.
        let bindings: Vec<&Value> = objs
            .iter()
            .filter(|o| {
                o["kind"] == "ClusterRoleBinding"
                    && o["subjects"]
                        .as_array()
                        .is_some_and(|s| s.iter().all(|s| s["kind"] == "User"))
            })
            .collect();
        let expected: &[&str] = match variant {
            "console-user/minimal" => &["eks-connector-console-read"],
            _ => &[
                "eks-connector-console-read",
                "system:public-info-viewer",
                "view",
            ],
        };
        let mut roles: Vec<&str> = bindings
            .iter()
            .map(|b| b["roleRef"]["name"].as_str().unwrap())
            .collect();
        roles.sort();
        assert_eq!(roles, expected, "{variant}: the console bindings");
        for b in bindings {
            let mut bound: Vec<String> = strings(
                &b["subjects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["name"].clone())
                    .collect(),
            );
            bound.sort();
            assert_eq!(impersonable, bound, "{variant}: {}", b["metadata"]["name"]);
        }
        assert_eq!(impersonable, [CONSOLE_USER]);
    }
}

#[test]
fn each_replica_has_its_secret_in_the_role_and_the_activation_stays_out_of_git() {
    for (name, dir) in [
        ("manifests/", prepared(false).to_path_buf()),
        (
            "three-replicas",
            overlay(
                false,
                "three-replicas",
                &["base"],
                &["components/three-replicas"],
            ),
        ),
    ] {
        let objs = to_json(&kustomize(common::cluster(), &dir, None));
        let replicas = one(&objs, "StatefulSet")["spec"]["replicas"]
            .as_u64()
            .unwrap();
        let role = one(&objs, "Role");
        let names: BTreeSet<String> = role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| strings(&r["resourceNames"]))
            .collect();
        for i in 0..replicas {
            assert!(
                names.contains(&format!("eks-connector-state-{i}")),
                "{name}: replica {i} of {replicas} cannot read its Secret ({names:?})"
            );
        }
        assert_eq!(
            names.len() as u64,
            replicas,
            "{name}: no Secret beyond the replicas"
        );
    }
    let root = common::repo_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .unwrap()
    };
    assert!(
        git(&["check-ignore", "-q", "manifests/activation.env"])
            .status
            .success(),
        "git must ignore manifests/activation.env"
    );
    assert!(
        git(&["ls-files", "manifests/activation.env"])
            .stdout
            .is_empty(),
        "manifests/activation.env must not be tracked"
    );
    assert!(root.join("manifests/activation.env.example").exists());
}

#[test]
fn openshift_scc_grants_exactly_what_the_pod_needs() {
    let objs = to_json(&kustomize(
        common::cluster(),
        &overlay(false, "openshift", &["base"], &["components/openshift"]),
        None,
    ));
    let scc = one(&objs, "SecurityContextConstraints");
    let sts = one(&objs, "StatefulSet");
    let pod = &sts["spec"]["template"]["spec"];
    // Capabilities: exactly the ones a container adds; all others dropped.
    let mut added: Vec<String> = containers(sts)
        .iter()
        .flat_map(|c| strings(&c["securityContext"]["capabilities"]["add"]))
        .collect();
    added.sort();
    added.dedup();
    assert_eq!(strings(&scc["allowedCapabilities"]), added);
    assert_eq!(strings(&scc["requiredDropCapabilities"]), ["ALL"]);
    for c in containers(sts) {
        assert_eq!(
            strings(&c["securityContext"]["capabilities"]["drop"]),
            ["ALL"]
        );
    }
    // Volumes: exactly the kinds the pod uses.
    let mut kinds: Vec<String> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_object()
                .unwrap()
                .keys()
                .find(|k| *k != "name")
                .unwrap()
                .clone()
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    let mut allowed = strings(&scc["volumes"]);
    allowed.sort();
    assert_eq!(allowed, kinds);
    // The fixed fsGroup, and no privilege of any kind.
    let fs_group = pod["securityContext"]["fsGroup"].as_u64().unwrap();
    assert_eq!(scc["fsGroup"]["type"], "MustRunAs");
    assert_eq!(
        scc["fsGroup"]["ranges"],
        json!([{"min": fs_group, "max": fs_group}])
    );
    for flag in [
        "allowPrivilegedContainer",
        "allowPrivilegeEscalation",
        "allowHostDirVolumePlugin",
        "allowHostIPC",
        "allowHostNetwork",
        "allowHostPID",
        "allowHostPorts",
    ] {
        assert_eq!(scc[flag], false, "{flag}");
    }
    assert_eq!(
        strings(&scc["seccompProfiles"]),
        ["runtime/default"],
        "the pod's RuntimeDefault"
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    // Only the connector's ServiceAccount may use it.
    let role = find(&objs, "Role")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "eks-connector-scc")
        .expect("a Role to use the SCC");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["security.openshift.io"], "resources": ["securitycontextconstraints"],
                "resourceNames": [scc["metadata"]["name"]], "verbs": ["use"]}])
    );
    let binding = find(&objs, "RoleBinding")
        .into_iter()
        .find(|b| b["roleRef"]["name"] == "eks-connector-scc")
        .expect("its binding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "eks-connector"}])
    );
    assert_eq!(strings(&scc["users"]), Vec::<String>::new());
    assert_eq!(strings(&scc["groups"]), Vec::<String>::new());
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
fn the_statefulset_runs_as_written_on_the_newest_kubernetes_and_each_console_role_grants_what_it_says(
) {
    runs_as_written(common::cluster(), false);
}

#[test]
fn the_statefulset_runs_as_written_on_the_oldest_kubernetes_and_each_console_role_grants_what_it_says(
) {
    runs_as_written(common::oldest_cluster(), true);
}

/// The console-user variant `sub` (console-user/minimal or /view), its ServiceAccount subject
/// moved into `ns`, applied.
fn apply_console_user(env: &Cluster, oldest: bool, sub: &str, ns: &str) {
    let yaml = kustomize(env, &prepared(oldest).join(sub), None)
        .replace("namespace: eks-connector", &format!("namespace: {ns}"));
    kubectl_ok_on(env, &["apply", "-f", "-"], Some(yaml.as_bytes()));
}

/// Every (group, resource) a ClusterRole lets its subjects list, that the API server serves, as
/// the cluster-wide list path.
fn listable(env: &Cluster, role: &Value) -> BTreeSet<String> {
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let core = env.admin_request("GET", "/api/v1", None).unwrap();
    served.insert("/api/v1".into(), resource_names(&core));
    let groups = env.admin_request("GET", "/apis", None).unwrap();
    let mut preferred = BTreeMap::new();
    for g in groups["groups"].as_array().unwrap() {
        let gv = g["preferredVersion"]["groupVersion"].as_str().unwrap();
        preferred.insert(
            g["name"].as_str().unwrap().to_string(),
            format!("/apis/{gv}"),
        );
    }
    let mut paths = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        let verbs = strings(&rule["verbs"]);
        if !verbs.iter().any(|v| v == "list" || v == "*") || !rule["resourceNames"].is_null() {
            continue;
        }
        for group in strings(&rule["apiGroups"]) {
            let base = if group.is_empty() {
                "/api/v1".to_string()
            } else if let Some(b) = preferred.get(&group) {
                b.clone()
            } else {
                continue; // a group this API server does not serve
            };
            let names = served
                .entry(base.clone())
                .or_insert_with(|| resource_names(&env.admin_request("GET", &base, None).unwrap()));
            for r in strings(&rule["resources"]) {
                if names.contains(&r) {
                    paths.insert(format!("{base}/{r}"));
                }
            }
        }
    }
    paths
}

/// The top-level resources of a discovery document that can be listed (not `bindings`, say).
fn resource_names(discovery: &Value) -> BTreeSet<String> {
    discovery["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| strings(&r["verbs"]).iter().any(|v| v == "list"))
        .filter_map(|r| r["name"].as_str())
        .filter(|n| !n.contains('/'))
        .map(str::to_string)
        .collect()
}

/// The rules of ClusterRole `view` as a running cluster has them. Its rules are aggregated from
/// the ClusterRoles labelled rbac.authorization.k8s.io/aggregate-to-view by kube-controller-manager's
/// clusterrole-aggregation controller; the test control plane runs no controller manager, so this
/// does that controller's one step (the union of their rules, written into `view`).
fn aggregated_view(env: &Cluster) -> Value {
    let view = env
        .admin_request(
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/view",
            None,
        )
        .unwrap();
    let selector = view["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"]
        .as_object()
        .expect("view aggregates by label")
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect::<Vec<_>>()
        .join(",");
    let parts = env
        .admin_request(
            "GET",
            &format!("/apis/rbac.authorization.k8s.io/v1/clusterroles?labelSelector={selector}"),
            None,
        )
        .unwrap();
    let rules: Vec<Value> = parts["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(!rules.is_empty(), "no ClusterRole aggregates into view");
    let mut view = view;
    view["rules"] = Value::Array(rules);
    env.admin_request(
        "PUT",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/view",
        Some(&view),
    )
    .unwrap()
}

/// Lists each path as `user` through the proxy's socket: all must answer 200.
fn lists_through_the_proxy(sock: &Path, user: &str, paths: &BTreeSet<String>, what: &str) {
    assert!(!paths.is_empty(), "{what}: nothing to list");
    let refused: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            let (code, body) = curl_socket(sock, Some(user), p);
            (code != 200)
                .then(|| format!("{p}: {code} {}", body.chars().take(200).collect::<String>()))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "{what}: refused\n{}",
        refused.join("\n")
    );
}

/// Tests that apply the connector's cluster-scoped objects (whose ServiceAccount subject differs
/// per test) take turns on each cluster.
fn cluster_scoped(oldest: bool) -> std::sync::MutexGuard<'static, ()> {
    static NEWEST: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static OLDEST: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let m = if oldest { &OLDEST } else { &NEWEST };
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn runs_as_written(env: &'static Cluster, oldest: bool) {
    let _turn = cluster_scoped(oldest);
    let ns = env.namespace("manifests-run");
    // Apply for real, moved into the test namespace.
    let yaml = kustomize(env, prepared(oldest), Some(&ns.name));
    let out = kubectl_on(env, &["apply", "-f", "-"], Some(yaml.as_bytes()));
    assert!(out.status.success(), "apply: {}", text(&out.stderr));
    let objs = to_json_on(env, &yaml);
    apply_console_user(env, oldest, "console-user/minimal", &ns.name);

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

    // 3. proxy: serves the console user through the shared socket. Its own root file system, as
    // in a pod: the mount point init's Vault volume left in the first one is not the proxy's.
    let c = Container::new(&img.reference("amd64"));
    let spec = container(sts, "connector-proxy");
    let e = container_env(spec, secret, pod, &ns);
    let mut args = argv(spec, &e);
    let health = common::free_port();
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
    // The minimal role: each kind it grants lists through the proxy; Secrets do not.
    let console_objs = to_json_on(
        env,
        &kustomize(env, &prepared(oldest).join("console-user/minimal"), None),
    );
    let minimal = find(&console_objs, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "eks-connector-console-read")
        .expect("the minimal console role");
    let minimal_paths = listable(env, minimal);
    assert_eq!(
        minimal_paths.len(),
        9,
        "AWS's documented console role: 9 kinds ({minimal_paths:?})"
    );
    lists_through_the_proxy(&sock, CONSOLE_USER, &minimal_paths, "minimal console role");
    let (code, _) = curl_socket(
        &sock,
        Some(CONSOLE_USER),
        &format!("/api/v1/namespaces/{}/secrets", ns.name),
    );
    assert_eq!(code, 403, "the minimal console role reads no Secrets");
    for p in ["/api/v1/services", "/api/v1/configmaps"] {
        let (code, _) = curl_socket(&sock, Some(CONSOLE_USER), p);
        assert_eq!(code, 403, "{p} is not in the minimal role");
    }
    // The view-based role (the original chart's): everything `view` and the minimal role grant.
    apply_console_user(env, oldest, "console-user/view", &ns.name);
    let view = aggregated_view(env);
    let view_paths = listable(env, &view);
    for p in [
        "/api/v1/services",
        "/api/v1/configmaps",
        "/apis/batch/v1/cronjobs",
    ] {
        assert!(view_paths.contains(p), "view grants {p}: {view_paths:?}");
    }
    let all: BTreeSet<String> = view_paths.union(&minimal_paths).cloned().collect();
    lists_through_the_proxy(&sock, CONSOLE_USER, &all, "view-based console role");
    let (code, _) = curl_socket(
        &sock,
        Some(CONSOLE_USER),
        &format!("/api/v1/namespaces/{}/secrets", ns.name),
    );
    assert_eq!(code, 403, "view reads no Secrets either");
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

/// Creates `obj` (JSON) with `kubectl create`; the error text when refused.
fn create_refused(env: &Cluster, obj: &Value) -> Option<String> {
    let out = kubectl_on(
        env,
        &["create", "-f", "-"],
        Some(obj.to_string().as_bytes()),
    );
    (!out.status.success()).then(|| text(&out.stderr))
}

fn cluster_role(name: &str, labels: Value, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
           "metadata": {"name": name, "labels": labels}, "rules": rules})
}

#[test]
fn the_guard_refuses_exactly_what_grants_impersonation_of_everyone() {
    let env = common::cluster();
    let guard = overlay(false, "guard", &[], &["components/admission-policy"]);
    kubectl_ok(&["apply", "-k", guard.to_str().unwrap()], None);
    let ours = json!({"app.kubernetes.io/part-of": "eks-connector"});
    let unlimited = json!([{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]}]);
    // The policy takes a moment to be enforced after its creation.
    let probe = cluster_role("eks-connector-probe", json!({}), unlimited.clone());
    common::wait_for(Duration::from_secs(30), || {
        let out = kubectl(
            &["create", "--dry-run=server", "-f", "-"],
            Some(probe.to_string().as_bytes()),
        );
        (!out.status.success()).then_some(())
    })
    .expect("the admission policy is never enforced");

    let impersonation_message = |kind: &str, name: &str, what: &str| {
        format!(
            "{kind} {name}: a rule grants impersonation of {what} without resourceNames, which \
             allows impersonating everyone; list the allowed names (the IAM ARNs of the console \
             users) in resourceNames"
        )
    };
    // Item 5, case 1: another name, unrestricted impersonation — refused when it carries our
    // label ...
    let refused = create_refused(
        env,
        &cluster_role("console-impersonator", ours.clone(), unlimited.clone()),
    )
    .expect("a labelled role with unlimited impersonation is refused");
    assert!(
        refused.contains(&impersonation_message(
            "ClusterRole",
            "console-impersonator",
            "users"
        )),
        "{refused}"
    );
    // ... and, unlabelled, it cannot be given to the connector's ServiceAccount.
    assert_eq!(
        create_refused(
            env,
            &cluster_role("other-impersonator", json!({}), unlimited.clone())
        ),
        None,
        "a role that is not ours is none of our business"
    );
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "connector-impersonates"},
        "subjects": [{"kind": "ServiceAccount", "name": "eks-connector", "namespace": "eks-connector"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "other-impersonator"}});
    let refused = create_refused(env, &binding).expect("binding the connector to it is refused");
    assert!(
        refused.contains(
            "ClusterRoleBinding connector-impersonates gives the eks-connector ServiceAccount \
             ClusterRole other-impersonator: bind the connector only to roles named \
             eks-connector-*, which are checked for impersonation without resourceNames"
        ),
        "{refused}"
    );
    // Wildcards grant impersonation too, and so do groups, service accounts, uids and extras.
    for (name, rules, what) in [
        (
            "eks-connector-everything",
            json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
            "*",
        ),
        (
            "eks-connector-groups",
            json!([{"apiGroups": [""], "resources": ["groups", "serviceaccounts"], "verbs": ["impersonate"]}]),
            "groups, serviceaccounts",
        ),
        (
            "eks-connector-extras",
            json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["userextras/scopes", "uids"], "verbs": ["*"]}]),
            "userextras/scopes, uids",
        ),
    ] {
        let refused = create_refused(env, &cluster_role(name, json!({}), rules))
            .unwrap_or_else(|| panic!("{name} is refused"));
        assert!(
            refused.contains(&impersonation_message("ClusterRole", name, what)),
            "{refused}"
        );
    }
    // Item 5, case 2: "*" on deployments grants no impersonation: accepted.
    assert_eq!(
        create_refused(
            env,
            &cluster_role(
                "eks-connector-deployments",
                ours.clone(),
                json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["*"]}])
            )
        ),
        None
    );
    // The intended case: the console users' impersonation rule without names is refused (a Role
    // as much as a ClusterRole), with names it is accepted.
    for names in [json!([]), Value::Null] {
        let mut rule = json!({"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]});
        if !names.is_null() {
            rule["resourceNames"] = names;
        }
        let refused = create_refused(
            env,
            &cluster_role("eks-connector-impersonate", json!({}), json!([rule])),
        )
        .expect("an impersonation rule without names is refused");
        assert!(
            refused.contains(&impersonation_message(
                "ClusterRole",
                "eks-connector-impersonate",
                "users"
            )),
            "{refused}"
        );
    }
    let ns = env.namespace("guard");
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "eks-connector-ns-impersonate", "namespace": ns.name},
        "rules": [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]}]});
    let refused = create_refused(env, &role).expect("a Role is checked too");
    assert!(
        refused.contains(&impersonation_message(
            "Role",
            "eks-connector-ns-impersonate",
            "serviceaccounts"
        )),
        "{refused}"
    );
    let console_user = kustomize(env, &prepared(false).join("console-user/minimal"), None);
    kubectl_ok(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(console_user.as_bytes()),
    );
}

#[test]
fn a_one_node_drain_completes_with_the_single_node_component() {
    let env = common::cluster();
    let ns = env.namespace("drain");
    let dir = overlay(false, "single-node", &["base"], &["components/single-node"]);
    let yaml = kustomize(env, &dir, Some(&ns.name));
    let objs = to_json(&yaml);
    assert!(
        find(&objs, "PodDisruptionBudget").is_empty(),
        "single-node removes the budget"
    );
    kubectl_ok(&["apply", "-f", "-"], Some(yaml.as_bytes()));
    let sts = env
        .admin_request(
            "GET",
            &format!(
                "/apis/apps/v1/namespaces/{}/statefulsets/eks-connector",
                ns.name
            ),
            None,
        )
        .unwrap();
    // The one node, and the replicas the StatefulSet controller would make, bound to it (the test
    // control plane has no controller manager, scheduler or kubelet).
    let node = format!("{}-node", ns.name);
    env.admin_request(
        "POST",
        "/api/v1/nodes",
        Some(&json!({"apiVersion": "v1", "kind": "Node",
                     "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}})),
    )
    .unwrap();
    let template = &sts["spec"]["template"];
    for i in 0..sts["spec"]["replicas"].as_u64().unwrap() {
        let mut spec = template["spec"].clone();
        spec["nodeName"] = json!(node);
        ns.create(
            "/api/v1",
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("eks-connector-{i}"), "labels": template["metadata"]["labels"],
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                    "name": "eks-connector", "uid": sts["metadata"]["uid"],
                                    "controller": true, "blockOwnerDeletion": true}]},
                   "spec": spec}),
        );
    }
    // The kubelet's part of a deletion: once a pod on its node is marked for deletion, it stops
    // the containers and removes the pod (grace 0).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kubelet = {
        let stop = stop.clone();
        let (ns_name, node) = (ns.name.clone(), node.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let pods = env
                    .admin_request(
                        "GET",
                        &format!(
                            "/api/v1/namespaces/{ns_name}/pods?fieldSelector=spec.nodeName={node}"
                        ),
                        None,
                    )
                    .unwrap();
                for p in pods["items"].as_array().into_iter().flatten() {
                    if !p["metadata"]["deletionTimestamp"].is_null() {
                        let name = p["metadata"]["name"].as_str().unwrap();
                        if let Err(e) = env.admin_request(
                            "DELETE",
                            &format!(
                                "/api/v1/namespaces/{ns_name}/pods/{name}?gracePeriodSeconds=0"
                            ),
                            None,
                        ) {
                            eprintln!("kubelet stand-in: delete {name}: {e}");
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let out = kubectl(
        &[
            "drain",
            &node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=60s",
        ],
        None,
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    kubelet.join().unwrap();
    assert!(
        out.status.success(),
        "kubectl drain: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    assert!(said.contains("evicting pod") || text(&out.stderr).contains("evicting pod"));
    assert!(said.contains(&format!("node/{node} drained")), "{said}");
    let left = env
        .admin_request("GET", &format!("/api/v1/namespaces/{}/pods", ns.name), None)
        .unwrap();
    assert_eq!(
        left["items"].as_array().unwrap().len(),
        0,
        "both replicas evicted"
    );
}

fn readme_install(env: &'static Cluster, oldest: bool) {
    let _turn = cluster_scoped(oldest);
    // prepared() ran the "prepare" block (and on the oldest the "1.29" one) in this directory.
    let dir = prepared(oldest).parent().unwrap();
    let out = run_readme_block("apply", dir, Some(env));
    let listed = out.last().unwrap();
    assert!(
        listed.contains("statefulset.apps/eks-connector")
            && listed.contains("eks-connector-activation"),
        "the README's last step shows the StatefulSet and the activation Secret: {listed}"
    );
    let sts = env
        .admin_request(
            "GET",
            "/apis/apps/v1/namespaces/eks-connector/statefulsets/eks-connector",
            None,
        )
        .expect("the README's commands created the StatefulSet");
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["name"],
        "connector-agent"
    );
}

#[test]
fn the_readme_install_commands_apply_on_the_newest_kubernetes() {
    readme_install(common::cluster(), false);
}

#[test]
fn the_readme_install_commands_apply_on_the_oldest_kubernetes() {
    readme_install(common::oldest_cluster(), true);
}

#[test]
fn the_metrics_component_annotates_the_pod_and_opens_only_the_three_health_ports() {
    let dir = overlay(
        false,
        "metrics-with-policy",
        &["base"],
        &["components/network-policy", "components/metrics"],
    );
    let objs = to_json(&kustomize(common::cluster(), &dir, None));
    let sts = one(&objs, "StatefulSet");
    // No port: every declared port (the three health ports) is scraped.
    prom::assert_scrape_annotations(sts, None);
    assert_eq!(prom::declared_ports(sts), prom::health_ports());
    // What the policies admit, together: the health ports by name, nothing else, TCP.
    let mut opened = Vec::new();
    for np in find(&objs, "NetworkPolicy") {
        opened.extend(prom::opened_ports(np).0);
    }
    opened.sort();
    let want: Vec<String> = prom::HEALTH_PORTS
        .iter()
        .map(|(p, _, _)| p.to_string())
        .collect();
    assert_eq!(opened, want);
    // The proxy's API socket is a unix socket, not a port anything could open.
    let proxy = container(sts, "connector-proxy");
    assert!(
        strings(&proxy["args"]).contains(&"--proxy.socketType=unix".to_string()),
        "{proxy}"
    );
}
