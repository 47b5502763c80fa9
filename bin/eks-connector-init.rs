//! `eks-connector-init`: the init container. Registers this replica with SSM (or reuses its
//! registration) and writes the SSM agent's Vault and the state Secret; or, with
//! `--install-launcher DIR`, copies the agent launcher into a shared volume.

use std::path::PathBuf;
use std::time::Duration;

use eks_connector::cli::{self, Flag, Kind, Parsed, Program, MAX_DURATION};
use eks_connector::init::{self, Config, EXIT_CONFIG, EXIT_INSTALL};
use eks_connector::{kube, ssm, state};

const PROGRAM: &str = "eks-connector-init";

const TIMEOUT: Kind = Kind::Duration {
    min: Duration::from_millis(100),
    max: MAX_DURATION,
};

const FLAGS: &[Flag] = &[
    Flag::new(
        "--activation.id",
        "ID",
        Kind::Text { min: 36, max: 128 },
        "SSM activation id (or env EKS_ACTIVATION_ID)",
    ),
    Flag::new(
        "--activation.code",
        "CODE",
        Kind::Text { min: 20, max: 128 },
        "SSM activation code (or env EKS_ACTIVATION_CODE, which keeps it out of the process list)",
    )
    .secret(),
    Flag::new(
        "--agent.region",
        "REGION",
        Kind::Check(check_region),
        "AWS region of the activation (or env AWS_REGION; default us-west-2)",
    ),
    Flag::new(
        "--agent.endpoint",
        "URL",
        Kind::Check(check_endpoint),
        "SSM endpoint override, e.g. a VPC endpoint (or env AWS_ENDPOINT_URL_SSM; https:// is added when missing)",
    ),
    Flag::new(
        "--ssm.timeout",
        "DURATION",
        TIMEOUT,
        "connect and read timeout of each SSM attempt",
    )
    .default("10s"),
    Flag::new(
        "--ssm.deadline",
        "DURATION",
        TIMEOUT,
        "stop retrying the SSM registration after this long",
    )
    .default("2m"),
    Flag::new(
        "--kube.deadline",
        "DURATION",
        TIMEOUT,
        "stop retrying state Secret reads/writes after this long",
    )
    .default("1m"),
    Flag::new(
        "--install-launcher",
        "DIR",
        Kind::Path,
        "only copy eks-connector-agent (next to this binary) into DIR, mode 0755, and exit",
    ),
];

const ABOUT: &str = "Registers this replica with AWS SSM (or reuses its registration) and writes \
the SSM agent's Vault and the state Secret <prefix>-<ordinal of POD_NAME>.\n\
Environment: POD_NAME (required), EKS_ACTIVATION_ID, EKS_ACTIVATION_CODE, AWS_REGION, \
HTTPS_PROXY/NO_PROXY, AWS_CA_BUNDLE, AWS_USE_FIPS_ENDPOINT, AWS_USE_DUALSTACK_ENDPOINT, \
KUBERNETES_SERVICE_HOST/PORT.";

fn check_region(v: &str) -> Result<(), String> {
    let ok = v.len() <= 32
        && v.starts_with(|c: char| c.is_ascii_lowercase())
        && v.contains('-')
        && !v.ends_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(())
        .ok_or_else(|| "must be an AWS region name such as us-west-2".into())
}

fn check_endpoint(v: &str) -> Result<(), String> {
    if v.len() > 2048 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be a URL of at most 2048 characters without spaces".into());
    }
    let ep = ssm::endpoint::parse_url(v)?;
    let host_ok = !ep.host.starts_with('-')
        && ep.host.len() <= 253
        && ep
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
    host_ok
        .then_some(())
        .ok_or_else(|| "has no valid host name".into())
}

fn fail(code: i32, message: impl std::fmt::Display) -> ! {
    log::error!("{message}");
    std::process::exit(code);
}

/// A flag, else a non-empty environment variable; trimmed (a code pasted from a file or a
/// Secret often carries a trailing newline; AWS ids and codes never contain whitespace).
fn flag_or_env(p: &Parsed, flag: &str, env: &str, what: &str) -> Option<String> {
    let v = p
        .text(flag)
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))?;
    let t = v.trim();
    if t.len() != v.len() {
        log::warn!("the {what} has leading or trailing whitespace; using it without");
    }
    Some(t.to_string())
}

fn required(p: &Parsed, flag: &'static str, value: &str, env: &str) -> String {
    flag_or_env(p, flag, env, flag).unwrap_or_else(|| {
        cli::usage_exit(
            PROGRAM,
            cli::UsageError {
                message: format!("{flag} is required (or set {env})"),
                usage: format!("{PROGRAM} {flag} {value}"),
            },
        )
    })
}

pub fn main() {
    let program = Program {
        name: PROGRAM,
        about: ABOUT,
        flags: &[FLAGS, &cli::STATE_FLAGS].concat(),
        trailing: None,
    };
    let p = cli::parse_or_exit(&program, std::env::args_os().skip(1).collect());
    cli::init_logging();
    if let Some(dir) = p.text("--install-launcher") {
        match init::install_launcher(&PathBuf::from(&dir)) {
            Ok(path) => return log::info!("launcher installed at {}", path.display()),
            Err(e) => fail(EXIT_INSTALL, e),
        }
    }
    let activation_id = required(&p, "--activation.id", "ID", "EKS_ACTIVATION_ID");
    let activation_code = required(&p, "--activation.code", "CODE", "EKS_ACTIVATION_CODE");
    let region = flag_or_env(&p, "--agent.region", "AWS_REGION", "region")
        .unwrap_or_else(|| "us-west-2".into());
    // AWS_ENDPOINT_URL_SSM: the AWS SDKs' name for a service's endpoint, which the egress-proxy
    // component sets for a VPC endpoint (no flag to add or leave out).
    let endpoint = flag_or_env(
        &p,
        "--agent.endpoint",
        "AWS_ENDPOINT_URL_SSM",
        "SSM endpoint",
    );
    let st = cli::StateFlags::from(&p);
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
                let usage = format!("{PROGRAM} {flag}");
                cli::usage_exit(PROGRAM, cli::UsageError { message: e, usage })
            });
    warnings.iter().for_each(|w| log::warn!("{w}"));
    let kube = kube::Client::in_cluster(std::path::Path::new(&st.serviceaccount_dir))
        .unwrap_or_else(|e| fail(EXIT_CONFIG, e));
    let cfg = Config {
        activation_id,
        activation_code,
        region,
        base_dir: PathBuf::from(st.base_dir),
        namespace: st.secret_namespace,
        secret_name: state::secret_name(&st.secret_prefix, &ordinal),
        kube_deadline: p
            .duration("--kube.deadline")
            .unwrap_or(Duration::from_secs(60)),
    };
    let opts = ssm::Options {
        timeout: p
            .duration("--ssm.timeout")
            .unwrap_or(Duration::from_secs(10)),
        deadline: p
            .duration("--ssm.deadline")
            .unwrap_or(Duration::from_secs(120)),
        ..ssm::Options::from_env()
    };
    let make_ssm = Box::new(move || ssm::Client::new(ssm_endpoint, opts));
    match init::run(&cfg, &kube, make_ssm) {
        Ok(outcome) => log::info!("done: {outcome:?}"),
        Err(e) => fail(e.exit_code(), e),
    }
}
