//! `eks-connector-keysync`: the key-sync container. Copies every key the SSM agent rotates into
//! the state Secret, so that the agent's own container holds no Kubernetes credential (SSM Run
//! Command and Session Manager run commands there as root).
//!
//! Least privilege: it runs as root only because the agent hardens the Vault to root-owned 0600
//! directories, with one capability to enter them (`CAP_DAC_READ_SEARCH` would do, but Pod
//! Security "baseline" admits only `CAP_DAC_OVERRIDE` of the two), a read-only root file system,
//! and no listener but the optional health port. Stops on SIGTERM/SIGINT after a last look at
//! the Vault.

use eks_connector::cli::{self, Program};
use eks_connector::keysync;
use eks_connector::kube::{Endpoint, ServiceAccountDir};
use eks_connector::signals;
use eks_connector::state::secret_name;

const PROGRAM: &str = "eks-connector-keysync";

/// Exit codes besides 0 (stopped with the Secret in step) and the usage error.
const EXIT_UNSAVED: i32 = 1;
const EXIT_CONFIG: i32 = 4;

const ABOUT: &str = "Keeps the state Secret in step with the SSM agent's Vault (key rotation), \
from a container of its own so that the agent's container holds no Kubernetes token. \
Environment: POD_NAME (required), KUBERNETES_SERVICE_HOST/PORT.";

fn fail(message: impl std::fmt::Display) -> ! {
    log::error!("{message}");
    std::process::exit(EXIT_CONFIG);
}

pub fn main() {
    // Before any thread exists: every thread inherits the mask, signals queue for the wait below.
    let blocked = match signals::block(&[signals::SIGTERM, signals::SIGINT]) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{PROGRAM}: cannot block signals: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let program = Program {
        name: PROGRAM,
        about: ABOUT,
        flags: &[&cli::STATE_FLAGS[..], &[cli::HEALTH_FLAG]].concat(),
        trailing: None,
    };
    let p = cli::parse_or_exit(&program, std::env::args_os().skip(1).collect());
    cli::init_logging();
    let state = cli::StateFlags::from(&p);
    let ordinal = cli::ordinal_from_pod_name(std::env::var("POD_NAME").ok().as_deref())
        .unwrap_or_else(|e| fail(e));
    let endpoint = Endpoint::from_env().unwrap_or_else(|e| fail(format!("Kubernetes client: {e}")));
    let sync = keysync::KeySync::start(keysync::Config {
        base_dir: state.base_dir.into(),
        namespace: state.secret_namespace,
        secret_name: secret_name(&state.secret_prefix, &ordinal),
        endpoint,
        serviceaccount: ServiceAccountDir::new(&state.serviceaccount_dir),
        recheck: keysync::DEFAULT_RECHECK,
    })
    .unwrap_or_else(|e| fail(format!("cannot start the key-sync thread: {e}")));
    if let Some(addr) = p.text(cli::HEALTH_FLAG.name) {
        let metrics = std::sync::Arc::new(|out: &mut String| {
            eks_connector::metrics::build_info(out, PROGRAM);
            eks_connector::metrics::KEYSYNC.render(out);
        });
        match eks_connector::health::serve(&addr, sync.ready_check(), metrics) {
            Ok(bound) => {
                log::info!(
                    "health checks on http://{bound}/healthz and /readyz, metrics on /metrics"
                )
            }
            Err(e) => fail(format!(
                "cannot serve health checks on --health.addr={addr}: {e}"
            )),
        }
    }
    match blocked.wait(None) {
        Ok(Some(s)) => log::info!("signal {} received: a last look at the Vault", s.signal),
        Ok(None) => {}
        Err(e) => log::error!("waiting for signals failed: {e}; a last look at the Vault"),
    }
    let code = match sync.last_look(keysync::FINAL_LOOK) {
        keysync::Status::InSync | keysync::Status::Standby(_) => 0,
        _ => EXIT_UNSAVED,
    };
    std::process::exit(code);
}
