//! `eks-connector-agent`: runs as PID 1 of the SSM agent's container, starts the agent, and keeps
//! the state Secret in step with the agent's Vault.
//!
//! - [`pid1`]: start the agent, forward signals, reap every descendant, exit with its status.
//! - [`crate::keysync`] (started here): copies every settled, complete change of the Vault (a key
//!   rotation) into the state Secret, retrying until it succeeds.
//!
//! [`run`] ties them together: check that the init container left a complete registration,
//! start the sync (which compares the Vault with the Secret at once), the optional health
//! endpoint, then the agent; when the agent exits, stop what it left behind, give the sync a last
//! chance to save a late rotation, and return the agent's exit code.

pub mod pid1;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::kube::{Endpoint, KubeError, ServiceAccountDir};

/// The SSM agent in its own image.
pub const DEFAULT_AGENT_COMMAND: &str = "/usr/bin/amazon-ssm-agent";

/// Exit codes of the launcher itself (otherwise it exits with the agent's code); the table for
/// all programs is [`crate::cli::EXIT_CODES`].
pub const EXIT_NOT_INITIALISED: i32 = 24;
pub const EXIT_CONFIG: i32 = 3;
pub const EXIT_INTERNAL: i32 = 1;
/// As shells do: the command could not be executed / was not found.
pub const EXIT_CANNOT_EXEC: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// How long processes the agent left behind get between SIGTERM and SIGKILL.
const DESCENDANT_GRACE: Duration = Duration::from_secs(2);
/// How long, after the agent exits, a pending Secret update may still be tried. Well within
/// Kubernetes' default 30 s termination grace period.
const FINAL_SYNC: Duration = Duration::from_secs(5);

/// Everything `run` needs; built by the thin main from flags and the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Vault directory (`--state.baseDir`).
    pub base_dir: PathBuf,
    pub namespace: String,
    pub secret_name: String,
    pub serviceaccount_dir: PathBuf,
    /// `--health.addr`: serve `/healthz` and `/readyz` there.
    pub health_addr: Option<String>,
    /// The agent and its arguments.
    pub command: Vec<String>,
    /// The API server; `None`: from `KUBERNETES_SERVICE_HOST`/`_PORT`.
    pub endpoint: Option<Endpoint>,
    /// How often the key sync reads the Secret again (drift).
    pub recheck: Duration,
}

#[derive(Debug)]
pub enum LauncherError {
    /// The Vault holds no complete registration: the init container did not run or failed.
    NotInitialised(crate::state::VaultError),
    /// The Kubernetes client cannot be configured (environment, token, CA).
    Kube(KubeError),
    /// The health address cannot be bound.
    Health {
        addr: String,
        source: std::io::Error,
    },
    /// The agent could not be started.
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// Signal handling or thread creation failed.
    Internal(String),
}

impl LauncherError {
    pub fn exit_code(&self) -> i32 {
        match self {
            LauncherError::NotInitialised(_) => EXIT_NOT_INITIALISED,
            LauncherError::Kube(_) | LauncherError::Health { .. } => EXIT_CONFIG,
            LauncherError::Spawn { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_EXEC,
            },
            LauncherError::Internal(_) => EXIT_INTERNAL,
        }
    }
}

impl fmt::Display for LauncherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LauncherError::NotInitialised(e @ crate::state::VaultError::Io { .. }) => {
                write!(f, "{e}; the SSM agent was not started")
            }
            LauncherError::NotInitialised(e) => write!(
                f,
                "{e}: the init container (eks-connector-init) did not run or did not complete; \
                 the SSM agent was not started (check the init container's log)"
            ),
            LauncherError::Kube(e) => {
                write!(f, "Kubernetes client: {e}; the SSM agent was not started")
            }
            LauncherError::Health { addr, source } => {
                write!(
                    f,
                    "cannot serve health checks on --health.addr={addr}: {source}"
                )
            }
            LauncherError::Spawn { command, source } => {
                write!(f, "cannot start the SSM agent {command:?}: {source}")
            }
            LauncherError::Internal(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for LauncherError {}

/// Runs the launcher; returns the agent's exit code (128 + signal if it was killed). Call from
/// `main` before any other thread is started: signals are blocked here, first thing, and every
/// thread inherits the mask (as the proxy's `run` does).
pub fn run(config: Config) -> Result<i32, LauncherError> {
    let blocked = pid1::block_signals()
        .map_err(|e| LauncherError::Internal(format!("cannot block signals: {e}")))?;
    let blocked = &blocked;
    let registration =
        crate::state::read_vault(&config.base_dir).map_err(LauncherError::NotInitialised)?;
    log::info!(
        "the Vault {} holds instance {}",
        config.base_dir.display(),
        registration.instance_id()
    );
    // Our manifests give this container no token (SSM runs commands in it as root): the
    // connector-keysync container syncs. A token here (an older manifest) means the sync runs
    // here too; the Vault lock keeps two syncs from fighting.
    let sa = ServiceAccountDir::new(&config.serviceaccount_dir);
    let key_sync = if sa.token().exists() {
        let endpoint = match &config.endpoint {
            Some(e) => e.clone(),
            None => Endpoint::from_env().map_err(LauncherError::Kube)?,
        };
        let sync = crate::keysync::KeySync::start(crate::keysync::Config {
            base_dir: config.base_dir.clone(),
            namespace: config.namespace.clone(),
            secret_name: config.secret_name.clone(),
            endpoint,
            serviceaccount: sa,
            recheck: config.recheck,
        })
        .map_err(|e| LauncherError::Internal(format!("cannot start the key-sync thread: {e}")))?;
        Some(sync)
    } else {
        log::info!(
            "no service-account token at {}: no key sync here (the connector-keysync container \
             does it); this launcher starts and guards the agent",
            sa.token().display()
        );
        None
    };
    if let Some(addr) = &config.health_addr {
        let ready = match &key_sync {
            Some(k) => k.ready_check(),
            None => std::sync::Arc::new(|| Ok(())),
        };
        // The key sync's families only where it runs: elsewhere its `in_sync` would read 0
        // and set off the alert on it (manifests/monitoring/alerts.yaml) for nothing.
        let syncs_here = key_sync.is_some();
        let metrics = std::sync::Arc::new(move |out: &mut String| {
            crate::metrics::LAUNCHER.render(out);
            if syncs_here {
                crate::metrics::KEYSYNC.render(out);
            }
        });
        let bound =
            crate::health::serve(addr, ready, metrics).map_err(|source| LauncherError::Health {
                addr: addr.clone(),
                source,
            })?;
        log::info!("health checks on http://{bound}/healthz and /readyz, metrics on /metrics");
    }
    if let Err(e) = pid1::become_subreaper() {
        log::warn!("cannot become a child subreaper ({e}); orphans will go to the real init");
    }
    let agent = pid1::spawn(&config.command).map_err(|source| LauncherError::Spawn {
        command: config.command.join(" "),
        source,
    })?;
    crate::metrics::LAUNCHER.agent_running.set(1);
    log::info!(
        "started the SSM agent {:?} as pid {agent}",
        config.command.join(" ")
    );
    let exit = pid1::supervise(blocked, agent)
        .map_err(|e| LauncherError::Internal(format!("waiting for signals failed: {e}")))?;
    log::info!("the SSM agent exited: {exit}");
    crate::metrics::LAUNCHER.agent_running.set(0);
    crate::metrics::LAUNCHER
        .last_exit_code
        .set(i64::from(exit.code()));
    pid1::finish_descendants(blocked, DESCENDANT_GRACE);
    if let Some(k) = key_sync {
        k.last_look(FINAL_SYNC);
    }
    Ok(exit.code())
}
