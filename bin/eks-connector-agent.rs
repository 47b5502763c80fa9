//! `eks-connector-agent [flags] [-- AGENT_COMMAND…]`: the launcher, PID 1 of the SSM agent's
//! container. Starts the agent, forwards signals, reaps, and runs the key sync.

use std::path::PathBuf;
use std::time::Duration;

use eks_connector::cli::{self, Flag, Kind, Program, MAX_DURATION};
use eks_connector::keysync::DEFAULT_RECHECK;
use eks_connector::launcher::{self, Config, DEFAULT_AGENT_COMMAND, EXIT_CONFIG};
use eks_connector::state::secret_name;

const PROGRAM: &str = "eks-connector-agent";

const FLAGS: &[Flag] = &[Flag::new(
    "--keysync.recheck",
    "DURATION",
    Kind::Duration {
        min: Duration::from_secs(1),
        max: MAX_DURATION,
    },
    "how often the state Secret is read again to notice drift (deleted or edited)",
)
.default("2m")];

const ABOUT: &str = "Runs the SSM agent as PID 1 of its container and keeps the state Secret in \
step with the agent's Vault (key rotation). Environment: POD_NAME (required), \
KUBERNETES_SERVICE_HOST/PORT.";

pub fn main() {
    let program = Program {
        name: PROGRAM,
        about: ABOUT,
        flags: &[FLAGS, &cli::STATE_FLAGS, &[cli::HEALTH_FLAG]].concat(),
        trailing: Some("the agent to run (default /usr/bin/amazon-ssm-agent)"),
    };
    let p = cli::parse_or_exit(&program, std::env::args_os().skip(1).collect());
    let command = match p.trailing.clone() {
        Some(c) if !c.is_empty() => c,
        Some(_) => cli::usage_exit(
            PROGRAM,
            cli::UsageError {
                message: "nothing after --; give the agent command or leave out --".into(),
                usage: format!("{PROGRAM} [flags] [-- AGENT_COMMAND...]"),
            },
        ),
        None => vec![DEFAULT_AGENT_COMMAND.to_string()],
    };
    cli::init_logging();
    let ordinal = cli::ordinal_from_pod_name(std::env::var("POD_NAME").ok().as_deref())
        .unwrap_or_else(|e| {
            log::error!("{e}; the SSM agent was not started");
            std::process::exit(EXIT_CONFIG);
        });
    let state = cli::StateFlags::from(&p);
    let config = Config {
        base_dir: PathBuf::from(state.base_dir),
        namespace: state.secret_namespace,
        secret_name: secret_name(&state.secret_prefix, &ordinal),
        serviceaccount_dir: PathBuf::from(state.serviceaccount_dir),
        health_addr: p.text(cli::HEALTH_FLAG.name),
        command,
        endpoint: None,
        recheck: p.duration("--keysync.recheck").unwrap_or(DEFAULT_RECHECK),
    };
    match launcher::run(config) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log::error!("{e}");
            std::process::exit(e.exit_code());
        }
    }
}
