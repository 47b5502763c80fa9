//! `eks-connector`: one static binary for the whole image (multi-call), so the three programs
//! share one copy of std, rustls, ring, ureq and the Mozilla roots (the image is ~2.6 MiB instead
//! of ~6.5 MiB with four separate binaries).
//!
//! - Called as `eks-connector-init`, `eks-connector-proxy` or `eks-connector-agent` (the image's
//!   symlinks, or the launcher copied into the agent's volume): runs that program.
//! - Called as `eks-connector WORD …` (the image's entrypoint, the original's argument lists):
//!   `init` → init, `server` (or `proxy`) → proxy, `agent` → agent. The program is re-executed
//!   with its own name as argv[0] and the rest of the arguments, so each main sees exactly the
//!   argument list it would as its own binary.
//!
//! The three mains stay in their own files and binaries (tests use those); this file includes
//! them as modules, which needs each to be `pub fn main`.

#[path = "eks-connector-init.rs"]
mod init;
#[path = "eks-connector-keysync.rs"]
mod keysync;
#[path = "eks-connector-agent.rs"]
mod launcher;
#[path = "eks-connector-proxy.rs"]
mod proxy;

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

use eks_connector::cli::EXIT_USAGE;

const USAGE: &str = "usage: eks-connector init|server|agent|keysync [FLAGS...]\n  \
init    register with SSM and write the Vault (eks-connector-init)\n  \
server  the Kubernetes API proxy (eks-connector-proxy; `proxy` works too)\n  \
agent   the launcher: PID 1 guarding the SSM agent (eks-connector-agent)\n  \
keysync copy rotated keys from the Vault to the state Secret (eks-connector-keysync)\n\
Each command's flags: eks-connector COMMAND --help";

/// The program for a first word of the original's argument lists.
fn program_for_word(word: &OsStr) -> Option<&'static str> {
    match word.to_str()? {
        "init" => Some("eks-connector-init"),
        "server" | "proxy" => Some("eks-connector-proxy"),
        "agent" => Some("eks-connector-agent"),
        "keysync" => Some("eks-connector-keysync"),
        _ => None,
    }
}

/// The program named by argv[0], if it is one of ours.
fn program_for_argv0(argv0: &OsStr) -> Option<&'static str> {
    match Path::new(argv0).file_name()?.to_str()? {
        "eks-connector-init" => Some("eks-connector-init"),
        "eks-connector-proxy" => Some("eks-connector-proxy"),
        "eks-connector-agent" => Some("eks-connector-agent"),
        "eks-connector-keysync" => Some("eks-connector-keysync"),
        _ => None,
    }
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let argv0 = if args.is_empty() {
        OsString::new()
    } else {
        args.remove(0)
    };
    match program_for_argv0(&argv0) {
        Some("eks-connector-init") => {
            init::main();
            return ExitCode::SUCCESS;
        }
        Some("eks-connector-proxy") => return proxy::main(),
        Some("eks-connector-agent") => {
            launcher::main();
            return ExitCode::SUCCESS;
        }
        Some("eks-connector-keysync") => {
            keysync::main();
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let Some(first) = args.first().cloned() else {
        eprintln!("eks-connector: missing command\n{USAGE}");
        std::process::exit(EXIT_USAGE);
    };
    match first.to_str() {
        Some("--help") | Some("-h") | Some("help") => {
            println!("eks-connector {}\n{USAGE}", eks_connector::VERSION);
            return ExitCode::SUCCESS;
        }
        Some("--version") => {
            println!("eks-connector {}", eks_connector::VERSION);
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let Some(name) = program_for_word(&first) else {
        eprintln!(
            "eks-connector: unknown command {:?}; expected init, server, agent or keysync\n{USAGE}",
            first.to_string_lossy()
        );
        std::process::exit(EXIT_USAGE);
    };
    // Re-execute ourselves under the program's name: exec only returns on failure.
    // /proc/self/exe first: it names this very file even when the path we were started by is
    // gone or replaced (an image layer swapped, a bind mount of a rebuilt binary).
    let mut exe = std::path::PathBuf::from("/proc/self/exe");
    let mut err = Command::new(&exe).arg0(name).args(&args[1..]).exec();
    if let Ok(path) = std::env::current_exe() {
        exe = path;
        err = Command::new(&exe).arg0(name).args(&args[1..]).exec();
    }
    eprintln!(
        "eks-connector: cannot run {} as {name}: {err}",
        exe.display()
    );
    ExitCode::from(126)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_original_words_and_our_names() {
        assert_eq!(
            program_for_word(OsStr::new("init")),
            Some("eks-connector-init")
        );
        assert_eq!(
            program_for_word(OsStr::new("server")),
            Some("eks-connector-proxy")
        );
        assert_eq!(
            program_for_word(OsStr::new("proxy")),
            Some("eks-connector-proxy")
        );
        assert_eq!(
            program_for_word(OsStr::new("agent")),
            Some("eks-connector-agent")
        );
        assert_eq!(program_for_word(OsStr::new("--activation.id=x")), None);
        assert_eq!(
            program_for_argv0(OsStr::new("/var/eks/launcher/eks-connector-agent")),
            Some("eks-connector-agent")
        );
        assert_eq!(
            program_for_argv0(OsStr::new("eks-connector-init")),
            Some("eks-connector-init")
        );
        assert_eq!(
            program_for_argv0(OsStr::new("/usr/local/bin/eks-connector")),
            None
        );
    }
}
