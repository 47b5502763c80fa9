//! The scratch image for tests: built once per test binary by `scripts/image.sh` (which installs
//! buildah, qemu-user and the cross toolchain when missing, and fails loudly when it cannot), and
//! containers of it run daemonless with `buildah run --isolation chroot`, sharing the host's
//! network so the binaries inside reach the test API server and SSM stand-in on loopback.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const IMAGE_NAME: &str = "localhost/eks-connector";
/// Where the Dockerfile puts the binaries.
pub const BIN_DIR: &str = "/usr/local/bin";

pub struct Image {
    pub version: String,
    /// The repository's dist/ (binaries per architecture, the OCI archive).
    pub dist: PathBuf,
}

impl Image {
    /// `localhost/eks-connector:<version>-<amd64|arm64>`.
    pub fn reference(&self, oci_arch: &str) -> String {
        format!("{IMAGE_NAME}:{}-{oci_arch}", self.version)
    }

    /// The OCI archive with both architectures.
    pub fn archive(&self) -> PathBuf {
        self.dist
            .join(format!("eks-connector-{}.oci.tar", self.version))
    }

    /// A binary as cross-built for an architecture (`x86_64`, `aarch64`): the bytes in the image.
    pub fn binary(&self, arch: &str, name: &str) -> PathBuf {
        self.dist.join(arch).join(name)
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds (once per test binary) both architectures and the image. Panics with the script's
/// own error when a tool is missing and cannot be installed: a missing tool fails, never skips.
pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = root().join("scripts/image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .current_dir(root())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/image.sh failed ({}); its output:\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 60)
        );
        sweep_stale_containers();
        let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        let version = cargo
            .lines()
            .find_map(|l| l.strip_prefix("version = \""))
            .and_then(|v| v.strip_suffix('"'))
            .expect("version in Cargo.toml")
            .to_string();
        Image {
            version,
            dist: root().join("dist"),
        }
    })
}

/// Removes working containers left by test processes that died before dropping them.
fn sweep_stale_containers() {
    let Ok(out) = buildah()
        .args(["containers", "--format", "{{.ContainerName}}"])
        .output()
    else {
        return;
    };
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rest) = name.strip_prefix("eks-connector-test-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = buildah()
                .args(["rm", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `buildah --storage-driver vfs …`.
pub fn buildah() -> Command {
    let mut c = Command::new("buildah");
    c.args(["--storage-driver", "vfs"]);
    c
}

/// A working container of the image; removed on drop.
pub struct Container {
    pub id: String,
}

/// A bind mount: host path, container path, read-only.
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

impl Mount {
    pub fn rw(host: &Path, container: &str) -> Mount {
        Mount {
            host: host.to_path_buf(),
            container: container.into(),
            read_only: false,
        }
    }
    pub fn ro(host: &Path, container: &str) -> Mount {
        Mount {
            read_only: true,
            ..Mount::rw(host, container)
        }
    }
}

/// How to run one command in a container.
#[derive(Default)]
pub struct Run {
    pub mounts: Vec<Mount>,
    pub env: Vec<(String, String)>,
    /// `uid[:gid]`; root when unset.
    pub user: Option<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Container {
    pub fn new(reference: &str) -> Container {
        let name = format!(
            "eks-connector-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let out = buildah()
            .args(["from", "--pull=never", "--name", &name, reference])
            .output()
            .expect("buildah from");
        assert!(
            out.status.success(),
            "buildah from {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Container { id: name }
    }

    fn command(&self, run: &Run, argv: &[&str]) -> Command {
        let mut c = buildah();
        c.args(["run", "--isolation", "chroot", "--network", "host"]);
        for m in &run.mounts {
            let mut spec = format!("{}:{}", m.host.display(), m.container);
            if m.read_only {
                spec.push_str(":ro");
            }
            c.arg("-v").arg(spec);
        }
        for (k, v) in &run.env {
            c.arg("-e").arg(format!("{k}={v}"));
        }
        if let Some(u) = &run.user {
            c.arg("--user").arg(u);
        }
        c.arg(&self.id).arg("--").args(argv);
        c.stdin(Stdio::null());
        c
    }

    /// Runs to completion.
    pub fn run(&self, run: &Run, argv: &[&str]) -> Output {
        self.command(run, argv).output().expect("buildah run")
    }

    /// Starts in the background, in its own process group (buildah and the process inside it),
    /// stderr to `log`. Stopped with SIGTERM on drop.
    pub fn spawn(&self, run: &Run, argv: &[&str], log: &Path) -> Running {
        Running::spawn(self.command(run, argv), log)
    }

    /// The container's root file system on the host (buildah mount).
    pub fn mount_root(&self) -> PathBuf {
        let out = buildah().args(["mount", &self.id]).output().unwrap();
        assert!(out.status.success(), "buildah mount failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = buildah()
            .args(["rm", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A background process (buildah run or qemu); its whole process group gets SIGTERM on drop.
pub struct Running {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Running {
    /// Starts `cmd` in its own process group with stderr to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Running {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .process_group(0);
        // SAFETY: prctl only sets this child's parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Running {
            child: Some(cmd.spawn().expect("spawn")),
            log: log.to_path_buf(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM to the group, then the exit status (SIGKILL after 25 s).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pgid = child.id() as i32;
        // SAFETY: plain kill(2) on the group we created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(25);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "eks-connector-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `curl --unix-socket SOCK` with an optional identity: (HTTP status, body).
pub fn curl_socket(sock: &Path, identity: Option<&str>, path: &str) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--unix-socket")
        .arg(sock);
    if let Some(id) = identity {
        c.arg("-H").arg(format!("x-aws-eks-identity-arn: {id}"));
    }
    c.arg(format!("http://localhost{path}"));
    let out = c.output().expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Waits for a path to exist.
pub fn wait_for_path(p: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
