//! Runs a rendered pod spec (a StatefulSet's template, as `kubectl create --dry-run=client -o json`
//! gives it) as the kubelet would, with processes instead of containers: each container is a
//! process in its own mount and pid namespace (`unshare`, as root) where the pod's volumes are
//! bind-mounted at the spec's `mountPath`s, so programs find their default paths
//! (`/var/lib/amazon/ssm/Vault`, `/var/run/secrets/kubernetes.io/serviceaccount`, …). Its args get
//! the kubelet's `$(VAR)` expansion, its env the spec's `value`/`fieldRef`/`secretKeyRef`/
//! `envFrom`, and it runs with the spec's user and capabilities (`setpriv`: bounding set reduced
//! to `capabilities.add`, no new privileges).
//!
//! An image is a set of host files placed at paths in the container and its entrypoint. `/var`
//! is a tmpfs per container (a container's own writable layer, fresh on each start); any other
//! top-level directory that needs a mount point gets a private overlay, so the host is never
//! written to. Volumes live under the pod's directory and outlive container restarts; a new
//! `Pod` (a reschedule) gets new emptyDirs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

/// What an image holds: host files at container paths, and the entrypoint (ENTRYPOINT).
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub files: Vec<(String, PathBuf)>,
    pub entrypoint: Vec<String>,
}

/// A volume mount as the spec says.
#[derive(Debug, Clone)]
struct VolumeMount {
    volume: String,
    path: String,
    sub_path: Option<String>,
    read_only: bool,
}

/// How a container runs: the parts of its spec we honour.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    mounts: Vec<VolumeMount>,
    pub run_as_user: u32,
    pub run_as_group: u32,
    pub caps: Vec<String>,
    pub supplementary_groups: Vec<u32>,
}

/// One pod: its spec, volumes on disk, images and the objects its env and volumes refer to.
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub dir: PathBuf,
    spec: Value,
    objects: Vec<Value>,
    images: BTreeMap<String, Image>,
    /// Added to every container's environment (the API server's address, test CAs).
    pub extra_env: Vec<(String, String)>,
    /// What a service-account token volume holds: `token`, `ca.crt`, `namespace`.
    sa_dir: PathBuf,
}

/// A running container.
pub struct Running {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The container's main process (PID 1 of its pid namespace), as the host sees it.
    pub fn main_pid(&self) -> Option<i32> {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// SIGTERM to the main process, as the kubelet does; SIGKILL to all after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.main_pid() {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // unshare --kill-child: its death takes the whole pid namespace.
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// The main process's exit, waiting up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The objects of a YAML stream, by kubectl's client-side conversion (needs the test cluster).
pub fn to_json(kubectl: Command, yaml: &str) -> Vec<Value> {
    let mut c = kubectl;
    c.args(["create", "--dry-run=client", "-o", "json", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl create --dry-run=client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut objs = Vec::new();
    for v in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
        let v = v.unwrap();
        match v["kind"].as_str() {
            Some("List") => objs.extend(v["items"].as_array().unwrap().iter().cloned()),
            _ => objs.push(v),
        }
    }
    objs
}

/// The object of `kind` named `name` (any name when `None`).
pub fn find<'a>(objects: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && name.is_none_or(|n| o["metadata"]["name"] == n))
        .unwrap_or_else(|| panic!("no {kind} {name:?} among the rendered objects"))
}

pub fn find_mut<'a>(objects: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the rendered objects"))
}

/// `$(VAR)` as the kubelet expands it in args and env values.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Pod {
    /// A pod of the StatefulSet `sts` (its template), named `name` in `namespace`.
    pub fn new(
        dir: &Path,
        name: &str,
        namespace: &str,
        objects: &[Value],
        images: BTreeMap<String, Image>,
        sa_dir: &Path,
    ) -> Pod {
        let sts = find(objects, "StatefulSet", None);
        let spec = sts["spec"]["template"]["spec"].clone();
        std::fs::create_dir_all(dir).unwrap();
        Pod {
            name: name.into(),
            namespace: namespace.into(),
            dir: dir.into(),
            spec,
            objects: objects.to_vec(),
            images,
            extra_env: Vec::new(),
            sa_dir: sa_dir.into(),
        }
    }

    /// The directory backing volume `name` (created on first use, as the kubelet does before
    /// the first container).
    pub fn volume(&self, name: &str) -> PathBuf {
        let path = self.dir.join("volumes").join(name);
        if path.exists() {
            return path;
        }
        let vol = self.spec["volumes"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("the pod has no volume {name}"))
            .clone();
        std::fs::create_dir_all(&path).unwrap();
        let fs_group = self.spec["securityContext"]["fsGroup"].as_u64();
        let write = |file: &str, bytes: &[u8], mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = path.join(file);
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            if let Some(g) = fs_group {
                std::os::unix::fs::chown(&p, None, Some(g as u32)).unwrap();
            }
        };
        if vol.get("emptyDir").is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        } else if let Some(cm) = vol.get("configMap") {
            let name = cm["name"].as_str().unwrap();
            let obj = find(&self.objects, "ConfigMap", Some(name));
            for (k, v) in obj["data"].as_object().unwrap() {
                write(k, v.as_str().unwrap().as_bytes(), 0o644);
            }
        } else if let Some(s) = vol.get("secret") {
            // The one Secret volume the original mounts: its legacy service-account token.
            let name = s["secretName"].as_str().unwrap();
            assert_eq!(
                find(&self.objects, "Secret", Some(name))["type"],
                "kubernetes.io/service-account-token",
                "only service-account token Secrets are mounted by these pods"
            );
            for f in ["token", "ca.crt", "namespace"] {
                write(f, &std::fs::read(self.sa_dir.join(f)).unwrap(), 0o644);
            }
        } else if let Some(p) = vol.get("projected") {
            let mode = p["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            for f in ["token", "ca.crt", "namespace"] {
                write(f, &std::fs::read(self.sa_dir.join(f)).unwrap(), mode);
            }
        } else {
            panic!("volume {name}: kind not supported by the test pod runner: {vol}");
        }
        path
    }

    /// The host directory behind `path` in container `name` (a volume mount).
    pub fn volume_at(&self, name: &str, path: &str) -> PathBuf {
        let spec = self.container(name);
        let m = spec
            .mounts
            .iter()
            .find(|m| m.path == path)
            .unwrap_or_else(|| panic!("container {name} mounts nothing at {path}"));
        self.volume(&m.volume)
    }

    fn container_json(&self, name: &str) -> Value {
        for list in ["initContainers", "containers"] {
            if let Some(c) = self.spec[list]
                .as_array()
                .and_then(|a| a.iter().find(|c| c["name"] == name))
            {
                return c.clone();
            }
        }
        panic!("the pod has no container {name}")
    }

    pub fn init_container_names(&self) -> Vec<String> {
        self.names("initContainers")
    }

    pub fn container_names(&self) -> Vec<String> {
        self.names("containers")
    }

    fn names(&self, list: &str) -> Vec<String> {
        self.spec[list]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn secret_value(&self, name: &str, key: &str) -> String {
        let obj = find(&self.objects, "Secret", Some(name));
        if let Some(v) = obj["stringData"][key].as_str() {
            return v.to_string();
        }
        let b64 = obj["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("Secret {name} has no key {key}"));
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    }

    /// The container as it would run: argv, env, mounts, user and capabilities.
    pub fn container(&self, name: &str) -> ContainerSpec {
        let c = self.container_json(name);
        let image_name = c["image"].as_str().unwrap().to_string();
        let image = self
            .images
            .get(&image_name)
            .unwrap_or_else(|| panic!("container {name}: no test image for {image_name:?}"));
        let mut env: Vec<(String, String)> = Vec::new();
        if let Some(from) = c["envFrom"].as_array() {
            for f in from {
                let s = f["secretRef"]["name"].as_str().unwrap();
                let obj = find(&self.objects, "Secret", Some(s));
                let keys: Vec<String> = obj["data"]
                    .as_object()
                    .or(obj["stringData"].as_object())
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                for k in keys {
                    env.push((k.clone(), self.secret_value(s, &k)));
                }
            }
        }
        for e in c["env"].as_array().cloned().unwrap_or_default() {
            let key = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match f {
                    "metadata.name" => self.name.clone(),
                    "metadata.namespace" => self.namespace.clone(),
                    other => panic!("fieldRef {other} not supported"),
                }
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                self.secret_value(r["name"].as_str().unwrap(), r["key"].as_str().unwrap())
            } else {
                panic!("env {key}: source not supported: {e}")
            };
            env.push((key, value));
        }
        let command = strings(&c["command"]);
        let args: Vec<String> = strings(&c["args"])
            .iter()
            .map(|a| expand(a, &env))
            .collect();
        let mut argv = if command.is_empty() {
            image.entrypoint.clone()
        } else {
            command.iter().map(|a| expand(a, &env)).collect()
        };
        argv.extend(args);
        let mounts = c["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| VolumeMount {
                volume: m["name"].as_str().unwrap().into(),
                path: m["mountPath"].as_str().unwrap().into(),
                sub_path: m["subPath"].as_str().map(String::from),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
            })
            .collect();
        let sc = &c["securityContext"];
        let psc = &self.spec["securityContext"];
        let id = |k: &str| sc[k].as_u64().or(psc[k].as_u64()).unwrap_or(0) as u32;
        let caps = strings(&sc["capabilities"]["add"])
            .into_iter()
            .map(|c| c.to_lowercase().trim_start_matches("cap_").to_string())
            .collect();
        let supplementary_groups = psc["fsGroup"]
            .as_u64()
            .map(|g| vec![g as u32])
            .unwrap_or_default();
        ContainerSpec {
            name: name.into(),
            image: image_name,
            argv,
            env,
            mounts,
            run_as_user: id("runAsUser"),
            run_as_group: id("runAsGroup"),
            caps,
            supplementary_groups,
        }
    }

    /// The command that runs `argv` (default: the container's own) inside container `name`.
    pub fn command(&self, name: &str, argv: Option<&[&str]>) -> Command {
        let spec = self.container(name);
        let image = &self.images[&spec.image];
        let mut script = String::from("set -e\nmount -t tmpfs -o mode=755 container-var /var\n");
        // Mount points outside /var: a private writable overlay of their top directory.
        let mut targets: Vec<&str> = spec.mounts.iter().map(|m| m.path.as_str()).collect();
        targets.extend(image.files.iter().map(|(p, _)| p.as_str()));
        let mut tops: Vec<String> = targets
            .iter()
            .filter_map(|p| {
                let top = p.trim_start_matches('/').split('/').next()?;
                (top != "var").then(|| format!("/{top}"))
            })
            .collect();
        tops.sort();
        tops.dedup();
        for top in &tops {
            let t = top.trim_start_matches('/');
            script += &format!(
                "mkdir -p /var/.overlay/{t}/u /var/.overlay/{t}/w\n\
                 mount -t overlay overlay -o lowerdir={top},upperdir=/var/.overlay/{t}/u,workdir=/var/.overlay/{t}/w {top}\n"
            );
        }
        let bind = |script: &mut String, src: &Path, target: &str, ro: bool| {
            let dir = src.is_dir();
            let t = sh_quote(target);
            if dir {
                *script += &format!("mkdir -p {t}\n");
            } else {
                *script += &format!("mkdir -p \"$(dirname {t})\"\n[ -e {t} ] || : > {t}\n");
            }
            *script += &format!("mount --bind {} {t}\n", sh_quote(src.to_str().unwrap()));
            if ro {
                *script += &format!("mount -o remount,bind,ro {t}\n");
            }
        };
        for (path, host) in &image.files {
            bind(&mut script, host, path, true);
        }
        for m in &spec.mounts {
            let mut src = self.volume(&m.volume);
            if let Some(sub) = &m.sub_path {
                src = src.join(sub);
            }
            bind(&mut script, &src, &m.path, m.read_only);
        }
        let caps = if spec.caps.is_empty() {
            "-all".to_string()
        } else {
            format!(
                "-all,{}",
                spec.caps
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let groups = if spec.supplementary_groups.is_empty() {
            "--clear-groups".to_string()
        } else {
            format!(
                "--groups={}",
                spec.supplementary_groups
                    .iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let argv: Vec<String> = match argv {
            Some(a) => a.iter().map(|s| s.to_string()).collect(),
            None => spec.argv.clone(),
        };
        script += &format!(
            "cd /\nexec setpriv --reuid={} --regid={} {groups} --bounding-set={caps} --inh-caps=-all --no-new-privs -- {}\n",
            spec.run_as_user,
            spec.run_as_group,
            argv.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" ")
        );
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ]);
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOSTNAME", &self.name);
        for (k, v) in self.extra_env.iter().chain(spec.env.iter()) {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Starts container `name`; its output goes to `<pod dir>/<name>.log` (appended: restarts
    /// keep the earlier lines, as `kubectl logs --previous` would).
    pub fn start(&self, name: &str) -> Running {
        self.start_logged(name, name, None)
    }

    /// Starts another process in container `name` (its own `argv`, or the container's),
    /// logging to `<pod dir>/<log>.log`.
    pub fn start_logged(&self, name: &str, log: &str, argv: Option<&[&str]>) -> Running {
        let log = self.dir.join(format!("{log}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = self.command(name, argv);
        cmd.stdout(f.try_clone().unwrap()).stderr(f);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start container {name} (unshare, setpriv): {e}"));
        Running {
            name: name.into(),
            child,
            log,
        }
    }

    /// Runs the init containers in order, each to completion; panics with its log if one fails.
    pub fn run_init(&self, timeout: Duration) {
        for name in self.init_container_names() {
            let mut r = self.start(&name);
            match r.wait(timeout) {
                Some(s) if s.success() => {}
                other => panic!(
                    "init container {name} of pod {} did not succeed ({other:?}); its log:\n{}",
                    self.name,
                    r.log_text()
                ),
            }
        }
    }

    /// Runs `argv` to completion in container `name`'s mounts, user and capabilities (what SSM
    /// Run Command does in the agent's container).
    pub fn exec(&self, name: &str, argv: &[&str]) -> Output {
        let mut cmd = self.command(name, Some(argv));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.output().expect("unshare")
    }
}
