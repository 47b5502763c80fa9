//! `eks-connector-init`: the init container. Registers this replica with SSM (or reuses its
//! registration) and writes the SSM agent's Vault and the state Secret; or, with
//! `--install-launcher DIR`, copies the agent launcher into a shared volume.

use std::path::PathBuf;
use std::time::Duration;

use eks_connector::cli::{self, Flags, Start};
use eks_connector::init::{self, Config, EXIT_CONFIG, EXIT_INSTALL};
use eks_connector::{kube, ssm, state};

const PROGRAM: &str = "eks-connector-init";

const FLAGS: &[(&str, &str)] = &[
    (
        "--activation.id ID",
        "SSM activation id (or env EKS_ACTIVATION_ID)",
    ),
    (
        "--activation.code CODE",
        "SSM activation code (or env EKS_ACTIVATION_CODE, which keeps it out of the process list)",
    ),
    (
        "--agent.region REGION",
        "AWS region of the activation (or env AWS_REGION; default us-west-2)",
    ),
    (
        "--agent.endpoint URL",
        "SSM endpoint override, e.g. a VPC endpoint (https:// is added when missing)",
    ),
    (
        "--ssm.timeout DURATION",
        "connect and read timeout of each SSM attempt (default 10s)",
    ),
    (
        "--ssm.deadline DURATION",
        "stop retrying the SSM registration after this long (default 2m)",
    ),
    (
        "--kube.deadline DURATION",
        "stop retrying state Secret reads/writes after this long (default 1m)",
    ),
    (
        "--install-launcher DIR",
        "only copy eks-connector-agent (next to this binary) into DIR, mode 0755, and exit",
    ),
];

fn about() -> String {
    format!(
        "Registers this replica with AWS SSM (or reuses its registration) and writes the SSM \
         agent's Vault and the state Secret <prefix>-<ordinal of POD_NAME>.\n\
         Environment: POD_NAME (required), EKS_ACTIVATION_ID, EKS_ACTIVATION_CODE, AWS_REGION, \
         HTTPS_PROXY/NO_PROXY, AWS_CA_BUNDLE, AWS_USE_FIPS_ENDPOINT, AWS_USE_DUALSTACK_ENDPOINT, \
         KUBERNETES_SERVICE_HOST/PORT.\n\n{}",
        init::EXIT_CODES_HELP
    )
}

fn usage_exit(e: cli::UsageError) -> ! {
    eprintln!("{PROGRAM}: {e}");
    std::process::exit(cli::EXIT_USAGE);
}

fn fail(code: i32, message: impl std::fmt::Display) -> ! {
    log::error!("{message}");
    std::process::exit(code);
}

/// A flag, else a non-empty environment variable.
fn flag_or_env(flags: &mut Flags, flag: &'static str, env: &str) -> Option<String> {
    flags
        .string(flag)
        .unwrap_or_else(|e| usage_exit(e))
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

fn trimmed(what: &str, v: String) -> String {
    let t = v.trim();
    if t.len() != v.len() {
        log::warn!("the {what} has leading or trailing whitespace; using it without");
    }
    t.to_string()
}

pub fn main() {
    let args = std::env::args_os().skip(1).collect();
    let about = about();
    let lines = [FLAGS, &cli::STATE_FLAGS].concat();
    let mut flags = match Flags::from_args(PROGRAM, &about, &lines, args) {
        Start::Print(s) => {
            println!("{s}");
            return;
        }
        Start::Run(f) => f,
    };
    cli::init_logging();

    let string = |flags: &mut Flags, name| flags.string(name).unwrap_or_else(|e| usage_exit(e));
    let duration = |flags: &mut Flags, name, default| {
        flags
            .duration(name)
            .unwrap_or_else(|e| usage_exit(e))
            .unwrap_or(default)
    };

    let install = string(&mut flags, "--install-launcher");
    let activation_id = flag_or_env(&mut flags, "--activation.id", "EKS_ACTIVATION_ID");
    let activation_code = flag_or_env(&mut flags, "--activation.code", "EKS_ACTIVATION_CODE");
    let region = flag_or_env(&mut flags, "--agent.region", "AWS_REGION")
        .unwrap_or_else(|| "us-west-2".into());
    let endpoint = string(&mut flags, "--agent.endpoint");
    let cli::StateFlags {
        base_dir,
        secret_prefix: prefix,
        secret_namespace: namespace,
        serviceaccount_dir: sa_dir,
    } = cli::StateFlags::parse(&mut flags).unwrap_or_else(|e| usage_exit(e));
    let ssm_timeout = duration(&mut flags, "--ssm.timeout", Duration::from_secs(10));
    let ssm_deadline = duration(&mut flags, "--ssm.deadline", Duration::from_secs(120));
    let kube_deadline = duration(&mut flags, "--kube.deadline", Duration::from_secs(60));
    let rest = flags.finish().unwrap_or_else(|e| usage_exit(e));
    if let Some(word) = rest.first() {
        usage_exit(cli::UsageError {
            message: format!("unexpected argument {word:?}"),
            usage: format!("{PROGRAM} --help"),
        });
    }

    if let Some(dir) = install {
        match init::install_launcher(&PathBuf::from(&dir)) {
            Ok(path) => {
                log::info!("launcher installed at {}", path.display());
                return;
            }
            Err(e) => fail(EXIT_INSTALL, e),
        }
    }

    let missing = |flag: &str, env: &str, line: &str| -> ! {
        usage_exit(cli::UsageError {
            message: format!("{flag} is required (or set {env})"),
            usage: format!("{PROGRAM} {line}"),
        })
    };
    let Some(activation_id) = activation_id else {
        missing("--activation.id", "EKS_ACTIVATION_ID", "--activation.id ID")
    };
    let Some(activation_code) = activation_code else {
        missing(
            "--activation.code",
            "EKS_ACTIVATION_CODE",
            "--activation.code CODE",
        )
    };
    // A code pasted from a file or a Secret often carries a trailing newline; AWS ids and codes
    // never contain whitespace.
    let (activation_id, activation_code) = (
        trimmed("activation id", activation_id),
        trimmed("activation code", activation_code),
    );
    let ordinal = cli::ordinal_from_pod_name(std::env::var("POD_NAME").ok().as_deref())
        .unwrap_or_else(|e| fail(EXIT_CONFIG, e));
    let (ssm_endpoint, warnings) =
        ssm::endpoint::resolve(&region, endpoint.as_deref(), |k| std::env::var(k).ok())
            .unwrap_or_else(|e| {
                let flag = if endpoint.is_some() {
                    "--agent.endpoint URL"
                } else {
                    "--agent.region REGION"
                };
                usage_exit(cli::UsageError {
                    message: e,
                    usage: format!("{PROGRAM} {flag}"),
                })
            });
    for w in warnings {
        log::warn!("{w}");
    }
    let kube = kube::Client::in_cluster(std::path::Path::new(&sa_dir))
        .unwrap_or_else(|e| fail(EXIT_CONFIG, e));
    let cfg = Config {
        activation_id,
        activation_code,
        region,
        base_dir: PathBuf::from(base_dir),
        namespace,
        secret_name: state::secret_name(&prefix, &ordinal),
        kube_deadline,
    };
    let make_ssm = Box::new(move || {
        let opts = ssm::Options {
            timeout: ssm_timeout,
            deadline: ssm_deadline,
            ..ssm::Options::from_env()
        };
        ssm::Client::new(ssm_endpoint, opts)
    });
    match init::run(&cfg, &kube, make_ssm) {
        Ok(outcome) => log::info!("done: {outcome:?}"),
        Err(e) => fail(e.exit_code(), e),
    }
}
