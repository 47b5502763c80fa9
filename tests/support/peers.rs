//! The real peers the tests run beside ours, built from pinned source by
//! `tests/peers/fetch-build.sh` (archive from `$SSM_AGENT_SRC` / `$EKS_CONNECTOR_SRC`, else
//! `../shared/peers/`, else GitHub; cached under `~/.cache/eks-connector/`). The first call in a
//! test binary builds the peer if no cached build exists; when that fails, every test that needs
//! the peer fails with the script's reason.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// One built peer: its extracted source tree and its binaries.
pub struct Peer {
    /// The peer's cache directory (`src/`, `bin/`).
    pub dir: PathBuf,
    /// The extracted source tree at the pinned commit (read-only).
    pub src: PathBuf,
    /// The directory holding the binaries (root-owned 0555, as the SSM agent requires).
    pub bin: PathBuf,
}

impl Peer {
    /// The path of binary `name`, which the build step guarantees exists.
    pub fn binary(&self, name: &str) -> PathBuf {
        let p = self.bin.join(name);
        assert!(
            p.is_file(),
            "{} is missing: remove {} and rerun to rebuild it",
            p.display(),
            self.dir.display()
        );
        p
    }
}

/// AWS's SSM agent: `amazon-ssm-agent` (core), `ssm-agent-worker`, `ssm-session-worker`.
pub fn ssm_agent() -> &'static Peer {
    static PEER: OnceLock<Result<Peer, String>> = OnceLock::new();
    get(&PEER, "ssm-agent")
}

/// The original Go connector: binary `eks-connector` (commands `init`, `server`).
pub fn eks_connector() -> &'static Peer {
    static PEER: OnceLock<Result<Peer, String>> = OnceLock::new();
    get(&PEER, "eks-connector")
}

/// The original's Helm chart (0.0.11) in its source tree.
pub fn original_chart() -> PathBuf {
    eks_connector().src.join("charts/eks-connector")
}

/// The original's raw manifest in its source tree.
pub fn original_manifest() -> PathBuf {
    eks_connector().src.join("manifests/eks-connector.yaml")
}

fn get(cell: &'static OnceLock<Result<Peer, String>>, name: &str) -> &'static Peer {
    match cell.get_or_init(|| build(name)) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn build(name: &str) -> Result<Peer, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/fetch-build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} with bash: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "tests/peers/fetch-build.sh {name} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(Peer {
        src: dir.join("src"),
        bin: dir.join("bin"),
        dir,
    })
}
