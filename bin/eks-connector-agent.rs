//! `eks-connector-agent [flags] [-- AGENT_COMMAND…]`: PID 1 of the SSM agent's container. Starts
//! the agent, forwards signals, reaps, and keeps the state Secret in step with the Vault.

use std::ffi::OsString;
use std::path::PathBuf;

use eks_connector::cli::{self, Flags, Start, EXIT_USAGE};
use eks_connector::launcher::{self, Config, DEFAULT_AGENT_COMMAND, EXIT_CONFIG, EXIT_INTERNAL};
use eks_connector::state::secret_name;

const PROGRAM: &str = "eks-connector-agent";

const FLAGS: &[(&str, &str)] = &[
    (
        "--health.addr HOST:PORT",
        "serve /healthz and /readyz (ready: the Secret holds the Vault's key), e.g. 0.0.0.0:8082",
    ),
    (
        "-- AGENT_COMMAND...",
        "the agent to run (default /usr/bin/amazon-ssm-agent)",
    ),
];

fn usage_exit(e: cli::UsageError) -> ! {
    eprintln!("{PROGRAM}: {e}");
    std::process::exit(EXIT_USAGE);
}

pub fn main() {
    // First, before any thread exists: every thread inherits the blocked mask.
    let blocked = match launcher::block_signals() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{PROGRAM}: cannot block signals: {e}");
            std::process::exit(EXIT_INTERNAL);
        }
    };
    // Split at the first `--` ourselves, so that the agent's own flags (`--version`, …) are
    // never taken for ours.
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let command: Option<Vec<String>> = args.iter().position(|a| a == "--").map(|i| {
        let rest = args.split_off(i);
        rest[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    });
    let about = "Runs the SSM agent as PID 1 of its container and keeps the state Secret in step \
                 with the agent's Vault (key rotation).";
    let lines = [FLAGS, &cli::STATE_FLAGS].concat();
    let mut flags = match Flags::from_args(PROGRAM, about, &lines, args) {
        Start::Run(f) => f,
        Start::Print(s) => {
            println!("{s}");
            return;
        }
    };
    let state = cli::StateFlags::parse(&mut flags).unwrap_or_else(|e| usage_exit(e));
    let health_addr = flags
        .string("--health.addr")
        .unwrap_or_else(|e| usage_exit(e));
    let rest = flags.finish().unwrap_or_else(|e| usage_exit(e));
    if !rest.is_empty() {
        usage_exit(cli::UsageError {
            message: format!(
                "unexpected argument {:?}; put the agent command after --",
                rest[0]
            ),
            usage: format!("{PROGRAM} [flags] [-- AGENT_COMMAND...]"),
        });
    }
    let command = match command {
        Some(c) if !c.is_empty() => c,
        Some(_) => usage_exit(cli::UsageError {
            message: "nothing after --; give the agent command or leave out --".into(),
            usage: format!("{PROGRAM} [flags] [-- AGENT_COMMAND...]"),
        }),
        None => vec![DEFAULT_AGENT_COMMAND.to_string()],
    };
    cli::init_logging();
    let ordinal = match cli::ordinal_from_pod_name(std::env::var("POD_NAME").ok().as_deref()) {
        Ok(o) => o,
        Err(e) => {
            log::error!("{e}; the SSM agent was not started");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let config = Config {
        base_dir: PathBuf::from(state.base_dir),
        namespace: state.secret_namespace,
        secret_name: secret_name(&state.secret_prefix, &ordinal),
        serviceaccount_dir: PathBuf::from(state.serviceaccount_dir),
        health_addr: health_addr.map(|a| {
            if a.starts_with(':') {
                format!("0.0.0.0{a}")
            } else {
                a
            }
        }),
        command,
        endpoint: None,
    };
    match launcher::run(config, &blocked) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log::error!("{e}");
            std::process::exit(e.exit_code());
        }
    }
}
