//! The key sync beside another job: the proxy's `server` runs it when the SSM agent's Vault is
//! mounted in its container, as the original's `server` did. That is the original's pod layout
//! (its agent container is AWS's image as is, with no launcher of ours); in ours the Vault is not
//! mounted there and the `connector-keysync` container does the job.

use std::path::Path;

use super::{Config, KeySync};
use crate::kube::{Endpoint, ServiceAccountDir};

/// Starts the sync if `base_dir` is a directory here; `Ok(None)` (and one log line) if not. An
/// error says why a mounted Vault cannot be synced: the caller must not run without it, or
/// rotated keys would be lost silently.
pub fn start_if_mounted(
    base_dir: &Path,
    namespace: &str,
    secret_prefix: &str,
    serviceaccount_dir: &Path,
) -> Result<Option<KeySync>, String> {
    if !base_dir.is_dir() {
        log::info!(
            "no SSM agent Vault at {} (--state.baseDir): key sync off here; the \
             connector-keysync container keeps the state Secret in step",
            base_dir.display()
        );
        return Ok(None);
    }
    let why = |e: String| {
        format!(
            "the SSM agent's Vault {} is mounted here, so this process must copy rotated keys \
             to the state Secret, but {e}",
            base_dir.display()
        )
    };
    let ordinal = crate::cli::ordinal_from_pod_name(std::env::var("POD_NAME").ok().as_deref())
        .map_err(why)?;
    let endpoint = Endpoint::from_env().map_err(|e| why(e.to_string()))?;
    let secret_name = crate::state::secret_name(secret_prefix, &ordinal);
    log::info!(
        "the SSM agent's Vault {} is mounted here: this process also keeps Secret {namespace}/\
         {secret_name} in step with it (key rotation), as the original's server did",
        base_dir.display()
    );
    KeySync::start(Config {
        base_dir: base_dir.to_path_buf(),
        namespace: namespace.to_string(),
        secret_name,
        endpoint,
        serviceaccount: ServiceAccountDir::new(serviceaccount_dir),
        recheck: super::DEFAULT_RECHECK,
    })
    .map(Some)
    .map_err(|e| why(format!("the key-sync thread cannot start: {e}")))
}
