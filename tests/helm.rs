//! The Helm chart (manifests/chart/eks-connector) with real Helm (v3.22, built by
//! tests/helm/build-helm.sh) and the real kube-apiserver: it lints strictly, the README's install
//! line passes a strict server-side dry run, each bug of AWS's chart 0.0.11 is checked on both
//! charts (the check fails on the original and passes on ours), wrong values get one error naming
//! the value, a release of the original upgrades to ours with `--reuse-values` and rolls back, and
//! the chart renders the same pod and RBAC as the Kustomize base (one source of truth).

mod common;
#[path = "support/kubelet_env.rs"]
mod kubelet_env;
#[path = "support/peers.rs"]
mod peers;
#[path = "support/prom.rs"]
mod prom;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Value};

const CODE: &str = "Tq6bW4ZmK2rX9sLp8Y3vActivationCode";
const ID: &str = "2f1a6c2e-5d7b-4c3b-9a55-3f6b1d9e0a7c";
const REGION: &str = "us-west-2";
const CONSOLE_USER: &str = "arn:aws:iam::111122223333:role/EKSConsoleViewer";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn repo() -> PathBuf {
    common::repo_root()
}

fn chart() -> PathBuf {
    repo().join("manifests/chart/eks-connector")
}

/// A scratch directory of this test process, under the control plane's (swept when we are gone).
fn scratch(name: &str) -> PathBuf {
    let d = common::cluster().dir.join("helm").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The helm binary: built once per machine from the Go module proxy, then cached.
fn helm_bin() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    common::go_tool(
        &BIN,
        None,
        "tests/helm/build-helm.sh",
        false,
        "tests/helm/build-helm.sh failed (Go and the Go module proxy are needed for the first build)",
    )
}

/// `helm ARGS` in the repository, with its own config/cache/data directories and the test
/// cluster's admin kubeconfig.
fn helm(args: &[&str]) -> Output {
    let cluster = common::cluster();
    let home = scratch("home");
    Command::new(helm_bin())
        .args(args)
        .current_dir(repo())
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdin(Stdio::null())
        .output()
        .expect("run helm")
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn kubectl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    common::cluster().run_kubectl(args, stdin)
}

fn kubectl_ok(args: &[&str], stdin: Option<&[u8]>) -> String {
    common::cluster().kubectl_ok(args, stdin)
}

/// Rendered YAML as JSON objects.
fn to_json(yaml: &str) -> Vec<Value> {
    common::cluster().objects(yaml)
}

/// The original chart 0.0.11, from the original connector's pinned source (tests/peers/).
fn original_chart() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = peers::original_chart();
        assert!(
            dir.join("Chart.yaml").is_file(),
            "{} has no Chart.yaml",
            dir.display()
        );
        dir
    })
}

/// `helm template eks-connector CHART --namespace NS ARGS…`: the objects, or Helm's error.
fn template(chart: &Path, ns: &str, args: &[&str]) -> Result<Vec<Value>, String> {
    let mut all = vec![
        "template",
        "eks-connector",
        chart.to_str().unwrap(),
        "--namespace",
        ns,
    ];
    all.extend_from_slice(args);
    let out = helm(&all);
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    Ok(to_json(&text(&out.stdout)))
}

/// The activation, as the documentation's install line sets it.
fn activation() -> Vec<String> {
    vec![
        "--set".into(),
        format!("eks.activationCode={CODE}"),
        "--set".into(),
        format!("eks.activationId={ID}"),
        "--set".into(),
        format!("eks.agentRegion={REGION}"),
    ]
}

fn with_activation(extra: &[&str]) -> Vec<String> {
    let mut v = activation();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn render(chart: &Path, ns: &str, args: &[String]) -> Result<Vec<Value>, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    template(chart, ns, &args)
}

fn render_ok(chart: &Path, ns: &str, args: &[String]) -> Vec<Value> {
    render(chart, ns, args).unwrap_or_else(|e| panic!("helm template failed:\n{e}"))
}

fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let all = of_kind(objs, kind);
    assert_eq!(all.len(), 1, "exactly one {kind} expected, got {all:#?}");
    all[0]
}

fn named<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
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

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// A strict server-side dry run of every object (unknown or duplicate fields are errors).
fn server_dry_run(objs: &[Value]) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objs});
    let out = kubectl(
        &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
        Some(list.to_string().as_bytes()),
    );
    assert!(
        out.status.success(),
        "the API server refused the rendered chart:\n{}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        objs.len(),
        "one line per object expected:\n{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// The original chart's bugs: each check passes on ours and fails on the original.

/// Runs `check` on both charts: it must pass on ours and fail on the original 0.0.11 (so the
/// check does test the bug). The original's failure is printed, for the record.
fn fixed_bug(what: &str, check: impl Fn(&Path) -> Result<(), String>) {
    if let Err(e) = check(&chart()) {
        panic!("our chart: {what}: {e}");
    }
    match check(original_chart()) {
        Ok(()) => panic!("the check for '{what}' passes on the original chart 0.0.11 too: it does not test the bug"),
        Err(e) => eprintln!("original chart 0.0.11, as expected: {what}: {e}"),
    }
}

#[test]
fn bug1_replicas_render_and_match_the_role() {
    let ns = common::cluster().namespace("helm-bug1");
    fixed_bug(
        "replicas render and the Role covers each replica's Secret",
        |c| {
            let objs = render(c, &ns.name, &activation())?;
            let sts = one(&objs, "StatefulSet");
            let replicas = sts["spec"]["replicas"]
                .as_u64()
                .ok_or_else(|| format!("spec.replicas is {}", sts["spec"]["replicas"]))?;
            let role = one(&objs, "Role");
            let names = strings(&role["rules"][0]["resourceNames"]);
            if replicas != 2 || names != ["eks-connector-state-0", "eks-connector-state-1"] {
                return Err(format!("replicas {replicas}, Role names {names:?}"));
            }
            Ok(())
        },
    );
}

#[test]
fn bug2_a_missing_activation_code_is_refused() {
    let ns = common::cluster().namespace("helm-bug2");
    fixed_bug("a missing eks.activationCode is refused", |c| {
        let args = vec![
            "--set".into(),
            format!("eks.activationId={ID}"),
            "--set".into(),
            format!("eks.agentRegion={REGION}"),
        ];
        match render(c, &ns.name, &args) {
            Ok(objs) => {
                let secrets: Vec<String> = of_kind(&objs, "Secret")
                    .iter()
                    .map(|s| s["data"].to_string())
                    .collect();
                Err(format!("rendered anyway; Secret data {secrets:?}"))
            }
            Err(e) if e.contains("eks.activationCode") => Ok(()),
            Err(e) => Err(format!("refused without naming eks.activationCode: {e}")),
        }
    });
}

#[test]
fn bug3_no_impersonation_rule_without_names_and_notes_say_so() {
    let ns = common::cluster().namespace("helm-bug3");
    fixed_bug("an empty allowedUserARNs grants no impersonation", |c| {
        let objs = render(c, &ns.name, &activation())?;
        for o in objs
            .iter()
            .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        {
            for r in o["rules"].as_array().into_iter().flatten() {
                let verbs = strings(&r["verbs"]);
                if verbs.iter().any(|v| v == "impersonate" || v == "*")
                    && strings(&r["resourceNames"]).is_empty()
                {
                    return Err(format!(
                        "{} {} may impersonate anyone: {r}",
                        o["kind"], o["metadata"]["name"]
                    ));
                }
            }
        }
        Ok(())
    });
    // With names: exactly those.
    let objs = render_ok(
        &chart(),
        &ns.name,
        &with_activation(&[
            "--set",
            &format!("authentication.allowedUserARNs={{{CONSOLE_USER}}}"),
        ]),
    );
    let role = named(&objs, "ClusterRole", "eks-connector-impersonate").expect("impersonate role");
    assert_eq!(strings(&role["rules"][0]["resourceNames"]), [CONSOLE_USER]);
    // And the NOTES tell the installer nobody can use the console yet.
    let mut args = vec!["install", "eks-connector", "manifests/chart/eks-connector"];
    args.extend(["--dry-run=client", "--namespace", &ns.name]);
    // A client dry run still refuses cluster-scoped objects another release owns (the upgrade
    // test's, running beside this one): names of this test's own.
    let own_names = format!("fullnameOverride=ec-{}", ns.name);
    args.extend(["--set", &own_names]);
    let act = activation();
    args.extend(act.iter().map(String::as_str));
    let notes = helm_ok(&args);
    assert!(
        notes.contains("Nobody can use the EKS console on this cluster yet"),
        "NOTES:\n{notes}"
    );
}

/// Every ServiceAccount subject of a binding names a ServiceAccount the chart renders, in its
/// namespace.
fn subjects_are_the_service_account(objs: &[Value]) -> Result<(), String> {
    let sas: Vec<(String, String)> = of_kind(objs, "ServiceAccount")
        .iter()
        .map(|s| {
            (
                s["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                s["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut seen = 0;
    for b in objs
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
    {
        for s in b["subjects"].as_array().into_iter().flatten() {
            if s["kind"] != "ServiceAccount" {
                continue;
            }
            seen += 1;
            let key = (
                s["namespace"].as_str().unwrap_or("").to_string(),
                s["name"].as_str().unwrap_or("").to_string(),
            );
            if !sas.contains(&key) {
                return Err(format!(
                    "{} {} binds ServiceAccount {}/{}, but the ServiceAccount is {sas:?}",
                    b["kind"], b["metadata"]["name"], key.0, key.1
                ));
            }
        }
    }
    if seen < 2 {
        return Err(format!("only {seen} ServiceAccount subjects"));
    }
    Ok(())
}

#[test]
fn bug4_cluster_bindings_follow_the_release_namespace() {
    let ns = common::cluster().namespace("helm-bug4");
    fixed_bug(
        "bindings name the ServiceAccount in the release namespace",
        |c| subjects_are_the_service_account(&render(c, &ns.name, &activation())?),
    );
}

#[test]
fn bug5_secret_namespace_override_keeps_the_subject_where_the_service_account_is() {
    let ns = common::cluster().namespace("helm-bug5");
    let state = common::cluster().namespace("helm-bug5-state");
    fixed_bug(
        "secretOverrides.namespace keeps the RoleBinding's subject right",
        |c| {
            let objs = render(
                c,
                &ns.name,
                &with_activation(&[
                    "--set",
                    &format!("secretOverrides.namespace={}", state.name),
                ]),
            )?;
            let rb = one(&objs, "RoleBinding");
            if rb["metadata"]["namespace"] != state.name.as_str() {
                return Err(format!("RoleBinding in {}", rb["metadata"]["namespace"]));
            }
            // The ServiceAccount stays in the release namespace: the subject must say so.
            let subject = &rb["subjects"][0];
            if subject["namespace"] != ns.name.as_str() {
                return Err(format!(
                    "the RoleBinding's subject is ServiceAccount {}/{}, but the ServiceAccount is in {}",
                    subject["namespace"], subject["name"], ns.name
                ));
            }
            Ok(())
        },
    );
    // Ours, for real: the Role and binding land in the state namespace, and the dry run passes.
    let objs = render_ok(
        &chart(),
        &ns.name,
        &with_activation(&[
            "--set",
            &format!("secretOverrides.namespace={}", state.name),
        ]),
    );
    assert_eq!(
        one(&objs, "Role")["metadata"]["namespace"],
        state.name.as_str()
    );
    let sts = one(&objs, "StatefulSet");
    for c in containers(sts) {
        if c["name"] == "connector-init" || c["name"] == "connector-keysync" {
            assert!(
                strings(&c["args"]).contains(&format!("--state.secretNamespace={}", state.name)),
                "{c}"
            );
        }
    }
    server_dry_run(&objs);
}

#[test]
fn bug6_the_activation_code_is_in_no_container_spec() {
    let ns = common::cluster().namespace("helm-bug6");
    fixed_bug("the activation code is in no pod spec", |c| {
        let objs = render(c, &ns.name, &activation())?;
        let sts = one(&objs, "StatefulSet");
        let pod = sts["spec"]["template"].to_string();
        if pod.contains(CODE) {
            let hits: Vec<String> = containers(sts)
                .iter()
                .filter(|c| c.to_string().contains(CODE))
                .map(|c| format!("{}: args {}", c["name"], c["args"]))
                .collect();
            return Err(format!("the code is in the pod spec: {hits:?}"));
        }
        Ok(())
    });
}

#[test]
fn no_long_lived_token_secret() {
    let ns = common::cluster().namespace("helm-token");
    fixed_bug("no legacy service-account token Secret", |c| {
        let objs = render(c, &ns.name, &activation())?;
        let legacy: Vec<&Value> = of_kind(&objs, "Secret")
            .into_iter()
            .filter(|s| s["type"] == "kubernetes.io/service-account-token")
            .collect();
        if !legacy.is_empty() {
            return Err(format!(
                "long-lived token Secret {}",
                legacy[0]["metadata"]["name"]
            ));
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------

#[test]
fn lint_strict_and_the_package_renders_as_the_directory() {
    let ns = common::cluster().namespace("helm-lint");
    let mut args = vec!["lint", "--strict", "manifests/chart/eks-connector"];
    let act = activation();
    args.extend(act.iter().map(String::as_str));
    let out = helm_ok(&args);
    assert!(
        out.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{out}"
    );

    // What `./build.sh chart` ships renders exactly as the directory.
    let dist = scratch("package");
    let out = helm_ok(&[
        "package",
        "manifests/chart/eks-connector",
        "--destination",
        dist.to_str().unwrap(),
    ]);
    let tgz = dist.join("eks-connector-0.1.0.tgz");
    assert!(
        tgz.is_file(),
        "helm package wrote no {}: {out}",
        tgz.display()
    );
    assert_eq!(
        render_ok(&tgz, &ns.name, &activation()),
        render_ok(&chart(), &ns.name, &activation())
    );
}

/// Shell lines of a README block: `\` continuations joined, each split into words as a shell
/// would (single quotes group), comments and blank lines left out.
fn shell_lines(block: &str) -> Vec<Vec<String>> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for l in block.lines() {
        let l = l.trim();
        match l.strip_suffix('\\') {
            Some(head) => {
                line.push_str(head);
                line.push(' ');
            }
            None => {
                line.push_str(l);
                lines.push(std::mem::take(&mut line));
            }
        }
    }
    lines
        .iter()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = Vec::new();
            let mut cur = String::new();
            let mut quoted = false;
            for ch in l.chars() {
                match ch {
                    '\'' => quoted = !quoted,
                    c if c.is_whitespace() && !quoted => {
                        if !cur.is_empty() {
                            words.push(std::mem::take(&mut cur));
                        }
                    }
                    c => cur.push(c),
                }
            }
            if !cur.is_empty() {
                words.push(cur);
            }
            words
        })
        .collect()
}

/// A README `helm install eks-connector …` line as `helm template` arguments into namespace `ns`,
/// placeholders filled in.
fn install_as_template(words: &[String], ns: &str) -> Vec<String> {
    assert_eq!(
        &words[..3],
        ["helm", "install", "eks-connector"],
        "{words:?}"
    );
    let mut args: Vec<String> = words[1..]
        .iter()
        .filter(|a| *a != "--create-namespace")
        .map(|a| {
            a.replace("CODE", CODE)
                .replace("ID", ID)
                .replace("REGION", REGION)
                .replace("REGISTRY", "registry.example.com")
                .replace("ACCOUNT", "111122223333")
                .replace("NAME", "EKSConsoleViewer")
        })
        .collect();
    args[0] = "template".into();
    if let Some(i) = args.iter().position(|a| a == "--namespace") {
        args[i + 1] = ns.to_string();
    }
    args
}

/// The README's install line, as a user would paste it (placeholders filled in), as `helm
/// template` arguments.
fn readme_install_args(ns: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("helm install eks-connector ")
        .expect("the README shows a `helm install eks-connector …` line");
    let line = shell_lines(&readme[start..]).remove(0);
    install_as_template(&line, ns)
}

#[test]
fn the_documented_install_line_passes_a_strict_server_side_dry_run() {
    let ns = common::cluster().namespace("helm-install");
    let args = readme_install_args(&ns.name);
    let t: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helm_ok(&t);
    let objs = to_json(&out);
    let kinds: Vec<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    for k in [
        "StatefulSet",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "Role",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let sts = one(&objs, "StatefulSet");
    assert_eq!(sts["metadata"]["namespace"], ns.name.as_str());
    for c in containers(sts) {
        if c["name"] != "connector-agent" {
            assert_eq!(c["image"], "registry.example.com/eks-connector:0.1.0");
        }
    }
    server_dry_run(&objs);
}

#[test]
fn replica_count_three_renders_three_replicas_and_three_state_secrets() {
    let ns = common::cluster().namespace("helm-three");
    let objs = render_ok(
        &chart(),
        &ns.name,
        &with_activation(&["--set", "replicaCount=3"]),
    );
    assert_eq!(one(&objs, "StatefulSet")["spec"]["replicas"], 3);
    let role = one(&objs, "Role");
    assert_eq!(
        strings(&role["rules"][0]["resourceNames"]),
        [
            "eks-connector-state-0",
            "eks-connector-state-1",
            "eks-connector-state-2"
        ]
    );
    assert_eq!(strings(&role["rules"][0]["verbs"]), ["get", "update"]);
    server_dry_run(&objs);
}

#[test]
fn wrong_values_get_one_error_naming_the_value() {
    let ns = common::cluster().namespace("helm-wrong");
    let code = format!("eks.activationCode={CODE}");
    let id = format!("eks.activationId={ID}");
    let region = format!("eks.agentRegion={REGION}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![&id, &region], "eks.activationCode"),
        (vec![&code, &region], "eks.activationId"),
        (vec![&code, &id], "eks.agentRegion"),
        (
            vec![&code, "eks.activationId=not-a-uuid", &region],
            "eks.activationId",
        ),
        (
            vec![&code, &id, "eks.agentRegion=Oregon"],
            "eks.agentRegion",
        ),
        (
            vec![
                &code,
                &id,
                &region,
                "authentication.allowedUserARNs={alice}",
            ],
            "authentication.allowedUserARNs",
        ),
        (
            vec![
                &code,
                &id,
                &region,
                "authentication.allowedUserARNs={arn:aws:iam::1:user/a}",
            ],
            "authentication.allowedUserARNs",
        ),
        (vec![&code, &id, &region, "replicaCount=0"], "replicaCount"),
        (vec![&code, &id, &region, "replicaCount=-1"], "replicaCount"),
        (
            vec![&code, &id, &region, "replicaCount=two"],
            "replicaCount",
        ),
        (
            vec![&code, &id, &region, "authentication.consoleAccess=admin"],
            "authentication.consoleAccess",
        ),
        (
            vec![&code, &id, &region, "ssmAgent.keyAutoRotateDays=0"],
            "ssmAgent.keyAutoRotateDays",
        ),
        (
            vec![&code, &id, &region, "metrics.annotationPort=9090"],
            "metrics.annotationPort",
        ),
        (
            vec![&code, &id, &region, "metrics.scrapers=monitoring"],
            "metrics.scrapers",
        ),
        (
            vec![
                &code,
                &id,
                &region,
                "metrics.prometheusRule.labels=monitoring",
            ],
            "metrics.prometheusRule.labels",
        ),
        // A label value must be a string (--set makes 1 a number).
        (
            vec![&code, &id, &region, "metrics.prometheusRule.labels.team=1"],
            "metrics.prometheusRule.labels",
        ),
        (
            vec![
                &code,
                &id,
                &region,
                "metrics.podMonitor.labels.release=true",
            ],
            "metrics.podMonitor.labels",
        ),
        (
            vec![
                &code,
                &id,
                &region,
                "egress.httpsProxy=http://proxy:3128",
                "egress.httpsProxySecret=corp-proxy",
            ],
            "egress.httpsProxy",
        ),
        // Without a scheme (and with credentials, which the error must not show).
        (
            vec![
                &code,
                &id,
                &region,
                "egress.httpsProxy=user:S3cret-pw@proxy:3128",
            ],
            "egress.httpsProxy",
        ),
        (
            vec![
                &code,
                &id,
                &region,
                "egress.httpsProxySecret=corp-proxy",
                "egress.serviceCIDR=all",
            ],
            "egress.serviceCIDR",
        ),
        (
            vec![
                &code,
                &id,
                &region,
                "egress.caBundle.configMap=a",
                "egress.caBundle.secret=b",
            ],
            "egress.caBundle",
        ),
        (
            vec![&code, &id, &region, "egress.caBundle.pem=not a certificate"],
            "egress.caBundle.pem",
        ),
    ];
    for (sets, value) in cases {
        let mut args = Vec::new();
        for s in &sets {
            args.extend(["--set", s]);
        }
        match template(&chart(), &ns.name, &args) {
            Ok(_) => panic!("{sets:?} rendered; it should be refused naming {value}"),
            Err(e) => {
                let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("Error:")).collect();
                assert_eq!(errors.len(), 1, "{sets:?}: one error line expected:\n{e}");
                assert!(!e.contains("S3cret-pw"), "a credential in the error: {e}");
                assert!(
                    errors[0].contains(value),
                    "{sets:?}: the error does not name {value}: {}",
                    errors[0]
                );
            }
        }
    }
}

#[test]
fn an_existing_secret_replaces_the_activation_values() {
    let ns = common::cluster().namespace("helm-existing");
    let objs = render_ok(
        &chart(),
        &ns.name,
        &["--set".into(), "eks.existingSecret=my-activation".into()],
    );
    assert!(
        of_kind(&objs, "Secret").is_empty(),
        "no Secret of ours expected"
    );
    let sts = one(&objs, "StatefulSet");
    let init = containers(sts)
        .into_iter()
        .find(|c| c["name"] == "connector-init")
        .unwrap();
    assert_eq!(init["envFrom"][0]["secretRef"]["name"], "my-activation");
    server_dry_run(&objs);
}

/// What `--reuse-values` from the original renders with: the original's values.yaml as the
/// chart's defaults, the user's settings on top. Ours must fill in its own defaults then.
#[test]
fn with_the_original_values_file_our_defaults_still_apply() {
    let ns = common::cluster().namespace("helm-defaults");
    let copy = scratch("chart-with-original-values").join("eks-connector");
    let _ = std::fs::remove_dir_all(&copy);
    let out = Command::new("cp")
        .arg("-r")
        .arg(chart())
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::copy(
        original_chart().join("values.yaml"),
        copy.join("values.yaml"),
    )
    .unwrap();
    let ours = [
        "--set",
        "images.eksConnector.repository=localhost/eks-connector",
    ];
    assert_eq!(
        render_ok(&copy, &ns.name, &with_activation(&ours)),
        render_ok(&chart(), &ns.name, &with_activation(&ours)),
        "rendered with the original's values.yaml, the chart must give what its own defaults give \
         (templates/_defaults.tpl and values.yaml disagree)"
    );
}

// ---------------------------------------------------------------------------------------------
// One source of truth: the chart and the Kustomize base render the same objects.

/// Strips kustomize's content-hash suffix from generated ConfigMap and Secret names (ten
/// characters of its vowel-free alphabet, so "-activation" stays).
fn unhash(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((head, tail))
            if tail.len() == 10 && tail.chars().all(|c| "2456789bcdfghkmt".contains(c)) =>
        {
            head.to_string()
        }
        _ => name.to_string(),
    }
}

/// Where two JSON values differ, as paths (list items named by their `name` when they have one).
fn json_diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                json_diff(va, vb, &format!("{path}.{k}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                let label = va["name"].as_str().map_or(i.to_string(), str::to_string);
                json_diff(va, vb, &format!("{path}[{label}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: kustomize {a} / chart {b}")),
        _ => {}
    }
}

/// The StatefulSet's spec without pod metadata (labels, annotations differ by design), with
/// generated names un-hashed.
fn comparable_sts(sts: &Value) -> Value {
    let mut spec = sts["spec"].clone();
    spec["template"].as_object_mut().unwrap().remove("metadata");
    let pod = &mut spec["template"]["spec"];
    for v in pod["volumes"].as_array_mut().unwrap() {
        if let Some(n) = v["configMap"]["name"].as_str() {
            v["configMap"]["name"] = json!(unhash(n));
        }
    }
    for list in ["initContainers", "containers"] {
        for c in pod[list].as_array_mut().unwrap() {
            for e in c["envFrom"].as_array_mut().into_iter().flatten() {
                if let Some(n) = e["secretRef"]["name"].as_str() {
                    e["secretRef"]["name"] = json!(unhash(n));
                }
            }
        }
    }
    spec
}

/// Every string with its whitespace runs made one space.
fn squash_whitespace(v: &Value) -> Value {
    match v {
        Value::String(s) => json!(s.split_whitespace().collect::<Vec<_>>().join(" ")),
        Value::Array(a) => Value::Array(a.iter().map(squash_whitespace).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), squash_whitespace(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// kind/name → the parts of an object that must agree.
fn comparable(objs: &[Value]) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for o in objs {
        let kind = o["kind"].as_str().unwrap_or("");
        let name = unhash(o["metadata"]["name"].as_str().unwrap_or(""));
        let body = match kind {
            "StatefulSet" => comparable_sts(o),
            "ConfigMap" => {
                let d = &o["data"];
                let cfg: Value =
                    serde_json::from_str(d["amazon-ssm-agent.json"].as_str().unwrap_or("null"))
                        .unwrap_or(Value::Null);
                json!({"amazon-ssm-agent.json": cfg, "seelog.xml": d["seelog.xml"].as_str().map(str::trim_end)})
            }
            "Secret" => json!({"type": o["type"], "data": o["data"]}),
            "ServiceAccount" => json!({"automount": o["automountServiceAccountToken"]}),
            "Role" | "ClusterRole" => o["rules"].clone(),
            "RoleBinding" | "ClusterRoleBinding" => {
                json!({"subjects": o["subjects"], "roleRef": o["roleRef"]})
            }
            // Kustomize re-folds `>-` CEL blocks with blank lines; the expressions are the same.
            "ValidatingAdmissionPolicy" => squash_whitespace(&o["spec"]),
            _ => o.get("spec").cloned().unwrap_or(Value::Null),
        };
        let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
        m.insert(format!("{kind} {ns}/{name}"), body);
    }
    m
}

/// Values of an `activation.env`, the Kustomize example's activation.
fn kustomize_activation(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A copy of manifests/ (in scratch directory `name`) as an operator prepares it: the activation
/// file from its example.
fn prepared_manifests(name: &str) -> PathBuf {
    let prepared = scratch(name);
    let out = Command::new("cp")
        .arg("-r")
        .arg(repo().join("manifests"))
        .arg(&prepared)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = prepared.join("manifests");
    let example = dir.join("activation.env.example");
    if example.is_file() {
        std::fs::copy(&example, dir.join("activation.env")).unwrap();
    }
    dir
}

#[test]
fn chart_and_kustomize_render_the_same_pod_and_rbac() {
    let base_dir = prepared_manifests("kustomize");
    let base = to_json(&kubectl_ok(
        &["kustomize", base_dir.to_str().unwrap()],
        None,
    ));
    let act = kustomize_activation(&base_dir.join("activation.env"));
    let ns = one(&base, "StatefulSet")["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    let image = one(&base, "StatefulSet")["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            one(&base, "StatefulSet")["spec"]["template"]["spec"]["initContainers"]
                .as_array()
                .unwrap(),
        )
        .filter_map(|c| c["image"].as_str())
        .find(|i| !i.contains("amazon-ssm-agent"))
        .unwrap()
        .to_string();
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let args = vec![
        "--set".to_string(),
        format!("eks.activationCode={}", act["EKS_ACTIVATION_CODE"]),
        "--set".into(),
        format!("eks.activationId={}", act["EKS_ACTIVATION_ID"]),
        "--set".into(),
        format!("eks.agentRegion={}", act["AWS_REGION"]),
        "--set".into(),
        format!("images.eksConnector.repository={repository}"),
        "--set".into(),
        format!("images.eksConnector.tag={tag}"),
    ];
    let ours = render_ok(&chart(), &ns, &args);
    let (b, o) = (comparable(&base), comparable(&ours));

    // What the base has that the chart leaves to Helm (`helm install --create-namespace`).
    let base_only = |k: &str| k.starts_with("Namespace ");
    let mut diffs = Vec::new();
    for (k, v) in &b {
        if base_only(k) {
            continue;
        }
        match o.get(k) {
            None => diffs.push(format!("the chart renders no {k}")),
            Some(ov) if ov != v => {
                let mut paths = Vec::new();
                json_diff(v, ov, "", &mut paths);
                diffs.push(format!("{k} differs:\n  {}", paths.join("\n  ")));
            }
            Some(_) => {}
        }
    }
    for k in o.keys() {
        if !b.contains_key(k) {
            diffs.push(format!("only the chart renders {k}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "chart and Kustomize base drifted:\n{}",
        diffs.join("\n")
    );

    // The console users' RBAC, as manifests/console-user/<access>/ renders it.
    for access in ["view", "minimal"] {
        let dir = repo().join("manifests/console-user").join(access);
        let cu = comparable(&to_json(&kubectl_ok(
            &["kustomize", dir.to_str().unwrap()],
            None,
        )));
        let mut args = args.clone();
        args.extend([
            "--set".into(),
            format!("authentication.allowedUserARNs={{{CONSOLE_USER}}}"),
            "--set".into(),
            format!("authentication.consoleAccess={access}"),
        ]);
        let o = comparable(&render_ok(&chart(), &ns, &args));
        let o: BTreeMap<&String, &Value> = o
            .iter()
            // What the ARNs add to the pod's objects.
            .filter(|(k, _)| !b.contains_key(*k))
            .collect();
        let cu: BTreeMap<&String, &Value> = cu.iter().collect();
        assert_eq!(
            o, cu,
            "consoleAccess={access}: chart vs manifests/console-user/{access}"
        );
    }
}

// ---------------------------------------------------------------------------------------------

fn get(path: &str) -> Option<Value> {
    common::cluster().admin_request("GET", path, None).ok()
}

#[test]
fn a_release_of_the_original_upgrades_to_ours_with_reuse_values_and_rolls_back() {
    let cluster = common::cluster();
    let ns = cluster.namespace("helm-upgrade");
    let n = ns.name.as_str();
    let original = original_chart().to_str().unwrap().to_string();
    let mut install = vec!["install", "eks-connector", &original, "--namespace", n];
    let act = activation();
    install.extend(act.iter().map(String::as_str));
    let arn_set = format!("authentication.allowedUserARNs={{{CONSOLE_USER}}}");
    install.extend(["--set", &arn_set]);
    helm_ok(&install);
    let sts_path = format!("/apis/apps/v1/namespaces/{n}/statefulsets/eks-connector");
    let sts = get(&sts_path).expect("the original's StatefulSet");
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][1]["args"][0],
        "server"
    );

    // A state Secret, as the original's init writes it.
    let state = ns.create(
        "/api/v1",
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "eks-connector-state-0", "labels": {"name": "eks-connector-state-0"}},
               "data": {"instanceId": "bWktMDEyMzQ1Njc4OWFiY2RlZjA="}}),
    );
    let state_path = format!("/api/v1/namespaces/{n}/secrets/eks-connector-state-0");

    let out = helm_ok(&[
        "upgrade",
        "eks-connector",
        "manifests/chart/eks-connector",
        "--namespace",
        n,
        "--reuse-values",
        "--set",
        "images.eksConnector.repository=localhost/eks-connector",
    ]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    let after = get(&state_path).expect("the state Secret after the upgrade");
    assert_eq!(
        after["metadata"]["resourceVersion"],
        state["metadata"]["resourceVersion"]
    );
    assert_eq!(after["data"], state["data"]);

    // The objects are ours.
    let sts = get(&sts_path).expect("StatefulSet after the upgrade");
    let names: Vec<String> = containers(&sts)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "connector-install-launcher",
            "connector-init",
            "connector-agent",
            "connector-keysync",
            "connector-proxy"
        ]
    );
    assert_eq!(sts["spec"]["replicas"], 2);
    assert_eq!(
        sts["metadata"]["labels"]["helm.sh/chart"],
        "eks-connector-0.1.0"
    );
    assert!(!sts["spec"]["template"].to_string().contains(CODE));
    assert!(
        get(&format!(
            "/api/v1/namespaces/{n}/secrets/eks-connector-token"
        ))
        .is_none(),
        "the original's long-lived token Secret is gone"
    );
    let crb = get(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/eks-connector-cluster-meta-access",
    )
    .expect("meta-access binding");
    assert_eq!(crb["subjects"][0]["namespace"], n);
    let imp = get("/apis/rbac.authorization.k8s.io/v1/clusterroles/eks-connector-impersonate")
        .expect("impersonate ClusterRole");
    assert_eq!(strings(&imp["rules"][0]["resourceNames"]), [CONSOLE_USER]);
    assert!(get("/apis/rbac.authorization.k8s.io/v1/clusterroles/eks-connector-service").is_none());
    // Our defaults, though --reuse-values rendered with the original's values.yaml.
    let tolerations = sts["spec"]["template"]["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node-role.kubernetes.io/control-plane"),
        "{tolerations}"
    );

    // Back to the original.
    helm_ok(&["rollback", "eks-connector", "1", "--namespace", n]);
    let sts = get(&sts_path).expect("StatefulSet after the rollback");
    let names: Vec<String> = containers(&sts)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["connector-init", "connector-agent", "connector-proxy"]
    );
    assert!(get(&format!(
        "/api/v1/namespaces/{n}/secrets/eks-connector-token"
    ))
    .is_some());
    let after = get(&state_path).expect("the state Secret after the rollback");
    assert_eq!(
        after["metadata"]["resourceVersion"],
        state["metadata"]["resourceVersion"]
    );
    let history = helm_ok(&["history", "eks-connector", "--namespace", n]);
    assert_eq!(history.lines().count(), 4, "{history}");

    helm_ok(&["uninstall", "eks-connector", "--namespace", n]);
    assert!(
        get(&state_path).is_some(),
        "uninstall keeps the state Secret"
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics: scrape annotations, the PodMonitor (off by default) and the NetworkPolicy.

#[test]
fn metrics_off_by_default_no_podmonitor_no_rules_no_scrape_annotations_no_ingress() {
    let ns = common::cluster().namespace("helm-metrics-off");
    let objs = render_ok(&chart(), &ns.name, &activation());
    for kind in ["PodMonitor", "PrometheusRule"] {
        assert!(of_kind(&objs, kind).is_empty(), "no {kind} by default");
    }
    let sts = one(&objs, "StatefulSet");
    assert_eq!(prom::declared_ports(sts), prom::health_ports());
    let annotations = sts["spec"]["template"]["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        annotations.keys().all(|k| !k.starts_with("prometheus.io/")),
        "{annotations:?}"
    );
    let np = one(&objs, "NetworkPolicy");
    assert_eq!(np["spec"]["ingress"], json!([]), "{np}");
}

#[test]
fn metrics_on_annotates_renders_a_podmonitor_and_opens_only_the_health_ports_to_the_scrapers() {
    let ns = common::cluster().namespace("helm-metrics-on");
    let scrapers = "metrics.scrapers[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring";
    let objs = render_ok(
        &chart(),
        &ns.name,
        &with_activation(&[
            "--set",
            "metrics.enabled=true",
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "metrics.podMonitor.labels.release=kube-prometheus-stack",
            "--set",
            scrapers,
        ]),
    );
    let sts = one(&objs, "StatefulSet");
    assert_eq!(prom::declared_ports(sts), prom::health_ports());
    prom::assert_scrape_annotations(sts, None);

    let pm = one(&objs, "PodMonitor");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["metadata"]["namespace"], ns.name.as_str());
    assert_eq!(pm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"], sts["spec"]["selector"]["matchLabels"],
        "the PodMonitor selects the StatefulSet's pods"
    );
    let mut endpoints: Vec<(String, String)> = pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["interval"], "30s", "{e}");
            (
                e["port"].as_str().unwrap().into(),
                e["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = prom::HEALTH_PORTS
        .iter()
        .map(|(p, _, _)| (p.to_string(), "/metrics".to_string()))
        .collect();
    endpoints.sort();
    assert_eq!(endpoints, want);

    let np = one(&objs, "NetworkPolicy");
    let (ports, from) = prom::opened_ports(np);
    let want: Vec<String> = prom::HEALTH_PORTS
        .iter()
        .map(|(p, _, _)| p.to_string())
        .collect();
    assert_eq!(ports, want, "{np}");
    assert_eq!(
        from,
        vec![
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
        ],
        "{np}"
    );

    // The API server takes everything but the PodMonitor (its CRD is not installed here).
    let rest: Vec<Value> = objs
        .iter()
        .filter(|o| o["kind"] != "PodMonitor")
        .cloned()
        .collect();
    server_dry_run(&rest);

    // One port annotated when a scraper takes one; the PodMonitor alone opens the ports too.
    let objs = render_ok(
        &chart(),
        &ns.name,
        &with_activation(&[
            "--set",
            "metrics.enabled=true",
            "--set",
            "metrics.annotationPort=8083",
        ]),
    );
    prom::assert_scrape_annotations(one(&objs, "StatefulSet"), Some("8083"));
    assert!(of_kind(&objs, "PodMonitor").is_empty());
    let (ports, from) = prom::opened_ports(one(&objs, "NetworkPolicy"));
    assert_eq!(ports, want);
    assert_eq!(
        from,
        vec![Value::Null],
        "no scrapers given: from anywhere, to these ports only"
    );
    let objs = render_ok(
        &chart(),
        &ns.name,
        &with_activation(&["--set", "metrics.podMonitor.enabled=true"]),
    );
    assert_eq!(prom::opened_ports(one(&objs, "NetworkPolicy")).0, want);
    let annotations = &one(&objs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"];
    assert!(
        annotations.get("prometheus.io/scrape").is_none(),
        "{annotations}"
    );
}

/// The example alert rules, where the Kustomize side, the README and alerts.test.yaml have them.
const ALERTS: &str = "manifests/monitoring/alerts.yaml";
/// The chart's copy of them: Helm reads no file outside the chart directory.
const CHART_ALERTS: &str = "manifests/chart/eks-connector/files/alerts.yaml";

/// A rule file's `groups` as the README used to tell prometheus-operator users to wrap them: the
/// `spec` of a PrometheusRule, as JSON.
fn rule_file_as_spec(rules: &str) -> Value {
    let mut yaml = String::from(
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: wrapped\nspec:\n",
    );
    for line in rules.lines() {
        yaml.push_str(&format!("  {line}\n"));
    }
    to_json(&yaml).swap_remove(0)["spec"].take()
}

/// metrics.prometheusRule: a PrometheusRule in the release namespace, with the chart's labels and
/// the ones given, whose spec is exactly alerts.yaml's groups; they pass `promtool check rules` and
/// `promtool test rules alerts.test.yaml` as alerts.yaml does (tests/metrics.rs).
#[test]
fn the_prometheus_rule_holds_alerts_yaml_and_passes_promtool_as_it_does() {
    let alerts = std::fs::read_to_string(repo().join(ALERTS)).unwrap();
    let copy = std::fs::read_to_string(repo().join(CHART_ALERTS))
        .unwrap_or_else(|e| panic!("{CHART_ALERTS}: {e}"));
    assert!(
        copy == alerts,
        "{CHART_ALERTS} differs from {ALERTS}: edit {ALERTS}, then cp {ALERTS} {CHART_ALERTS}"
    );

    let ns = common::cluster().namespace("helm-rules");
    let objs = render_ok(
        &chart(),
        &ns.name,
        &with_activation(&[
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.prometheusRule.labels.release=kube-prometheus-stack",
        ]),
    );
    let rule = one(&objs, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["name"], "eks-connector");
    assert_eq!(rule["metadata"]["namespace"], ns.name.as_str());
    let labels = &rule["metadata"]["labels"];
    assert_eq!(labels["release"], "kube-prometheus-stack", "{labels}");
    assert_eq!(
        labels["app.kubernetes.io/name"], "eks-connector",
        "{labels}"
    );
    assert_eq!(
        rule["spec"],
        rule_file_as_spec(&alerts),
        "the PrometheusRule's spec is not {ALERTS}'s groups"
    );
    assert!(
        of_kind(&objs, "PodMonitor").is_empty(),
        "the rules alone scrape nothing"
    );

    // promtool on the rendered groups, beside alerts.test.yaml (its rule_files: alerts.yaml).
    let groups = rule["spec"]["groups"].as_array().expect("spec.groups");
    let count: usize = groups
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(count > 0, "no rules in {groups:?}");
    let dir = scratch("prometheus-rule");
    // JSON is YAML: promtool reads it as a rule file.
    std::fs::write(
        dir.join("alerts.yaml"),
        json!({"groups": groups}).to_string(),
    )
    .unwrap();
    std::fs::copy(
        repo().join("manifests/monitoring/alerts.test.yaml"),
        dir.join("alerts.test.yaml"),
    )
    .unwrap();
    let said = prom::run_ok(&dir, &["check", "rules", "alerts.yaml"]);
    assert!(
        said.contains(&format!("SUCCESS: {count} rules found")),
        "{said}"
    );
    let said = prom::run_ok(&dir, &["test", "rules", "alerts.test.yaml"]);
    assert!(said.contains("SUCCESS"), "{said}");
}

// ---------------------------------------------------------------------------------------------
// Air-gapped install (README "Air-gapped install", step 2'): the chart's egress values set, for
// init and the SSM agent, what manifests/components/egress-proxy/ (and private-ca) set.

const AIRGAP: &str = "Air-gapped install";

fn container<'a>(sts: &'a Value, name: &str) -> &'a Value {
    containers(sts)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The CA bundle a container sees at /etc/eks-connector/ca/ca-bundle.pem, from the volume's
/// ConfigMap or Secret among `objs`; None without the volume.
fn mounted_ca_bundle(objs: &[Value], sts: &Value, c: &str) -> Option<String> {
    let mount = container(sts, c)["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["mountPath"] == "/etc/eks-connector/ca")?
        .clone();
    let volume = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])?;
    let (kind, source, name) = if volume["secret"].is_object() {
        ("Secret", &volume["secret"], &volume["secret"]["secretName"])
    } else {
        (
            "ConfigMap",
            &volume["configMap"],
            &volume["configMap"]["name"],
        )
    };
    let item = source["items"]
        .as_array()?
        .iter()
        .find(|i| i["path"] == "ca-bundle.pem")?;
    kubelet_env::key(objs, kind, name.as_str()?, item["key"].as_str()?)
}

/// What steers one container's traffic to AWS: its egress variables (the endpoint init is given
/// as `--agent.endpoint` counted as AWS_ENDPOINT_URL_SSM, which it equals) and the CA bundle it
/// sees.
fn egress_of(objs: &[Value], c: &str, base: &[(String, String)]) -> BTreeMap<String, String> {
    let sts = one(objs, "StatefulSet");
    let spec = container(sts, c);
    let mut m: BTreeMap<String, String> =
        kubelet_env::egress(kubelet_env::resolve(objs, spec, base))
            .into_iter()
            .collect();
    if let Some(e) = strings(&spec["args"])
        .iter()
        .find_map(|a| a.strip_prefix("--agent.endpoint="))
    {
        m.insert("AWS_ENDPOINT_URL_SSM".into(), e.to_string());
    }
    if let Some(ca) = mounted_ca_bundle(objs, sts, c) {
        m.insert("ca-bundle.pem (mounted)".into(), ca);
    }
    m
}

/// The SSM agent's configuration file, parsed.
fn agent_config(objs: &[Value]) -> Value {
    let cm = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["data"]["amazon-ssm-agent.json"].is_string())
        .expect("the agent's ConfigMap");
    serde_json::from_str(cm["data"]["amazon-ssm-agent.json"].as_str().unwrap()).unwrap()
}

/// The README's Kustomize overlay (step 2) as written, beside a prepared manifests/, with
/// `ca_bundle` as its ca-bundle.pem: the rendered objects.
fn readme_overlay(ca_bundle: &[u8]) -> Vec<Value> {
    let manifests = prepared_manifests("egress-kustomize");
    let overlay = manifests.parent().unwrap().join("overlays/my-cluster");
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        common::readme_block(AIRGAP, "# overlays/my-cluster/kustomization.yaml"),
    )
    .unwrap();
    std::fs::write(
        overlay.join("amazon-ssm-agent.json"),
        common::readme_block(AIRGAP, "{\"Profile\""),
    )
    .unwrap();
    std::fs::write(overlay.join("ca-bundle.pem"), ca_bundle).unwrap();
    to_json(&kubectl_ok(&["kustomize", overlay.to_str().unwrap()], None))
}

/// README step 2': its commands as written (the test's namespace for eks-connector, the
/// placeholders filled in): the kubectl lines run against the real API server, the helm line as
/// `helm template`, whose objects pass a strict server-side dry run. Init and the agent then get
/// from the chart exactly the egress environment, CA bundle and agent endpoints that the README's
/// overlay (same values) gives them, and no other container gets any.
#[test]
fn the_readme_egress_values_pass_a_strict_dry_run_and_set_what_the_overlay_sets() {
    let ns = common::cluster().namespace("helm-egress");
    let dir = scratch("egress-example");
    // Any PEM certificate stands in for the corporate CA: the test API server's.
    let ca = std::fs::read(common::cluster().ca_path()).unwrap();
    std::fs::write(dir.join("ca-bundle.pem"), &ca).unwrap();
    std::fs::write(
        dir.join("egress-values.yaml"),
        common::readme_block(AIRGAP, "# egress-values.yaml"),
    )
    .unwrap();
    let mut objs = None;
    let mut made = Vec::new();
    for words in shell_lines(&common::readme_block(AIRGAP, "kubectl create namespace")) {
        let mut args: Vec<String> = words[1..].to_vec();
        match words[0].as_str() {
            // The test's namespace stands in for eks-connector.
            "kubectl" if args[..2] == ["create", "namespace"] => continue,
            "kubectl" => {
                let i = args.iter().position(|a| a == "--namespace").unwrap();
                args[i + 1] = ns.name.clone();
                let out = common::cluster()
                    .kubectl()
                    .args(&args)
                    .current_dir(&dir)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{words:?}: {}", text(&out.stderr));
                // What it made: `create secret generic NAME …`, `create configmap NAME …`.
                let c = args.iter().position(|a| a == "create").unwrap();
                let kind = args[c + 1].clone();
                let name = args[c + if kind == "secret" { 3 } else { 2 }].clone();
                made.push((kind, name));
            }
            "helm" => {
                let t = install_as_template(&words, &ns.name);
                let t: Vec<String> = t
                    .into_iter()
                    .map(|a| {
                        if a == "egress-values.yaml" {
                            dir.join(&a).display().to_string()
                        } else {
                            a
                        }
                    })
                    .collect();
                let t: Vec<&str> = t.iter().map(String::as_str).collect();
                objs = Some(to_json(&helm_ok(&t)));
            }
            other => panic!("unexpected command {other} in the README's Helm example"),
        }
    }
    let objs = objs.expect("the README's Helm example has a helm install line");
    server_dry_run(&objs);
    assert_eq!(
        made.len(),
        2,
        "a Secret and a ConfigMap made first: {made:?}"
    );
    // The chart's objects and those the kubectl lines made, as a pod would see them.
    let mut seen = objs.clone();
    for (kind, name) in &made {
        seen.push(
            serde_json::from_str(&kubectl_ok(
                &["get", kind, name, "--namespace", &ns.name, "-o", "json"],
                None,
            ))
            .unwrap(),
        );
    }
    let overlay = readme_overlay(&ca);
    let base = ns.kube_env();
    for c in ["connector-init", "connector-agent"] {
        let (chart, kustomize) = (egress_of(&seen, c, &base), egress_of(&overlay, c, &base));
        assert_eq!(
            chart, kustomize,
            "{c}: chart (left) vs the README's overlay (right)"
        );
        for k in [
            "HTTPS_PROXY",
            "NO_PROXY",
            "AWS_CA_BUNDLE",
            "ca-bundle.pem (mounted)",
        ] {
            assert!(chart.contains_key(k), "{c} has no {k}: {chart:?}");
        }
        assert_eq!(
            chart["ca-bundle.pem (mounted)"].as_bytes(),
            ca,
            "{c}: the bundle mounted is not ca-bundle.pem"
        );
        let api = &base[0].1;
        assert!(
            chart["NO_PROXY"].starts_with(&format!("{api},10.96.0.0/12,")),
            "{c}: the API server and the service range lead NO_PROXY: {}",
            chart["NO_PROXY"]
        );
    }
    assert_eq!(agent_config(&objs), agent_config(&overlay));
    for c in containers(one(&objs, "StatefulSet")) {
        let name = c["name"].as_str().unwrap();
        if !["connector-init", "connector-agent"].contains(&name) {
            assert!(
                egress_of(&seen, name, &base).is_empty(),
                "{name} gets egress settings"
            );
        }
    }
    for c in containers(one(&objs, "StatefulSet")) {
        if c["name"] == "connector-agent" {
            assert_eq!(
                c["image"],
                "registry.corp.example:5000/amazon-ssm-agent:3.2.2303.0"
            );
        } else {
            assert_eq!(c["image"], "registry.corp.example:5000/eks-connector:0.1.0");
        }
    }
}

/// The other forms of the same values: the proxy URL in values (the chart keeps it in a Secret,
/// nowhere else), the bundle as PEM text (a ConfigMap of the chart's) or from a Secret, a CA
/// without a proxy; each passes a strict server-side dry run and gives init and the agent what
/// the overlay's form would.
#[test]
fn each_form_of_the_egress_values_renders_and_passes_a_strict_dry_run() {
    let ns = common::cluster().namespace("helm-egress-forms");
    let ca_file = common::cluster().ca_path();
    let ca = std::fs::read_to_string(&ca_file).unwrap();
    let proxy = "http://proxy-user:Pr0xy-S3cret@proxy.corp.example:3128";
    let base = ns.kube_env();
    let pem = format!("egress.caBundle.pem={}", ca_file.display());
    let render_with = |sets: &[&str], files: &[&str]| {
        let mut args = activation();
        for s in sets {
            args.extend(["--set".to_string(), s.to_string()]);
        }
        for f in files {
            args.extend(["--set-file".to_string(), f.to_string()]);
        }
        let objs = render_ok(&chart(), &ns.name, &args);
        server_dry_run(&objs);
        objs
    };
    // Proxy in values, bundle as text.
    let objs = render_with(&[&format!("egress.httpsProxy={proxy}")], &[&pem]);
    for c in ["connector-init", "connector-agent"] {
        let e = egress_of(&objs, c, &base);
        assert_eq!(e["HTTPS_PROXY"], proxy, "{c}");
        assert_eq!(e["ca-bundle.pem (mounted)"], ca, "{c}");
        assert!(
            e["NO_PROXY"].ends_with(",.svc,.cluster.local,"),
            "{c}: {e:?}"
        );
    }
    let agent = egress_of(&objs, "connector-agent", &base);
    for k in ["https_proxy", "no_proxy", "SSL_CERT_FILE"] {
        assert!(agent.contains_key(k), "agent has {k}: {agent:?}");
    }
    for o in &objs {
        if o["kind"] != "Secret" {
            assert!(!o.to_string().contains("Pr0xy-S3cret"), "{o}");
        }
    }
    // The bundle from a Secret, no proxy: only the CA.
    let objs = render_with(
        &[
            "egress.caBundle.secret=corp-ca",
            "egress.caBundle.key=ca.crt",
        ],
        &[],
    );
    let sts = one(&objs, "StatefulSet");
    let volume = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "egress-ca")
        .expect("the CA volume");
    assert_eq!(
        volume["secret"],
        json!({"secretName": "corp-ca", "items": [{"key": "ca.crt", "path": "ca-bundle.pem"}]})
    );
    for c in ["connector-init", "connector-agent"] {
        let e = egress_of(&objs, c, &base);
        assert_eq!(
            e.get("AWS_CA_BUNDLE").map(String::as_str),
            Some("/etc/eks-connector/ca/ca-bundle.pem"),
            "{c}"
        );
        assert!(!e.contains_key("HTTPS_PROXY"), "{c}: {e:?}");
    }
    // Defaults: nothing of the kind.
    let objs = render_with(&[], &[]);
    for c in containers(one(&objs, "StatefulSet")) {
        let name = c["name"].as_str().unwrap();
        assert!(egress_of(&objs, name, &base).is_empty(), "{name}");
    }
}
