//! `eks-connector`: the image's entrypoint, so the original's argument lists work unchanged.
//!
//! The original image runs one binary as `… init --activation.id=…` (init container) and
//! `… server --proxy.…` (proxy container). A scratch image has no shell, so this tiny binary maps
//! the first word to the sibling binary in the same directory and `exec`s it with the rest:
//! `init` → `eks-connector-init`, `server` (or `proxy`) → `eks-connector-proxy`,
//! `agent` → `eks-connector-agent`.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Same as `eks_connector::cli::EXIT_USAGE`; this binary uses only std so it stays tiny and can
/// be built on its own (`rustc bin/eks-connector.rs`).
const EXIT_USAGE: i32 = 2;
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the binaries live in the image, if neither argv[0] nor /proc says where we are.
const FALLBACK_DIR: &str = "/usr/local/bin";

const USAGE: &str = "usage: eks-connector init|server|agent [FLAGS...]\n  \
init    register with SSM and write the Vault (eks-connector-init)\n  \
server  the Kubernetes API proxy (eks-connector-proxy; `proxy` works too)\n  \
agent   launch and guard the SSM agent (eks-connector-agent)\n\
Each command's flags: eks-connector COMMAND --help";

fn target(word: &OsStr) -> Option<&'static str> {
    match word.to_str()? {
        "init" => Some("eks-connector-init"),
        "server" | "proxy" => Some("eks-connector-proxy"),
        "agent" => Some("eks-connector-agent"),
        _ => None,
    }
}

/// The directory this binary was started from: argv[0] when it names a path, else /proc/self/exe.
fn own_dir(argv0: Option<&OsStr>) -> PathBuf {
    if let Some(a) = argv0 {
        let p = Path::new(a);
        if p.components().count() > 1 {
            if let Some(parent) = p.parent() {
                return parent.to_path_buf();
            }
        }
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(FALLBACK_DIR))
}

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let argv0 = if args.is_empty() {
        None
    } else {
        Some(args.remove(0))
    };
    let Some(first) = args.first().cloned() else {
        eprintln!("eks-connector: missing command\n{USAGE}");
        std::process::exit(EXIT_USAGE);
    };
    match first.to_str() {
        Some("--help") | Some("-h") | Some("help") => {
            println!("eks-connector {}\n{USAGE}", VERSION);
            return;
        }
        Some("--version") => {
            println!("eks-connector {}", VERSION);
            return;
        }
        _ => {}
    }
    let Some(name) = target(&first) else {
        eprintln!(
            "eks-connector: unknown command {:?}; expected init, server or agent\n{USAGE}",
            first.to_string_lossy()
        );
        std::process::exit(EXIT_USAGE);
    };
    let path = own_dir(argv0.as_deref()).join(name);
    // exec only returns on failure.
    let err = Command::new(&path).arg0(name).args(&args[1..]).exec();
    eprintln!("eks-connector: cannot run {}: {err}", path.display());
    std::process::exit(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_original_words() {
        assert_eq!(target(OsStr::new("init")), Some("eks-connector-init"));
        assert_eq!(target(OsStr::new("server")), Some("eks-connector-proxy"));
        assert_eq!(target(OsStr::new("proxy")), Some("eks-connector-proxy"));
        assert_eq!(target(OsStr::new("agent")), Some("eks-connector-agent"));
        assert_eq!(target(OsStr::new("--activation.id=x")), None);
        assert_eq!(target(OsStr::new("Init")), None);
    }

    #[test]
    fn finds_siblings_next_to_argv0() {
        assert_eq!(
            own_dir(Some(OsStr::new("/usr/local/bin/eks-connector"))),
            PathBuf::from("/usr/local/bin")
        );
        assert_eq!(
            own_dir(Some(OsStr::new("./eks-connector"))),
            PathBuf::from(".")
        );
        // A bare name (found through PATH) falls back to where the executable really is.
        assert!(own_dir(Some(OsStr::new("eks-connector"))).is_absolute());
    }
}
