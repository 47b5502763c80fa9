//! The Vault repair rule. The agent writes its files in place, so a kill mid-write leaves one
//! truncated; init does not run again on a container restart, so the agent would crash-loop on
//! it for as long as the pod lives. The key sync holds the token, so it repairs: when the Vault
//! has held no complete registration for [`REPAIR_AFTER`] (the agent writes a file in
//! milliseconds: this is no write in progress) and the state Secret holds a complete one, the
//! Secret's registration is written back into the Vault, each file atomically.
//!
//! Nothing good is ever overwritten: only a Vault that does not parse is replaced, and only by a
//! registration that does.

use std::fmt;
use std::time::Duration;

use crate::kube::{Client, KubeError};
use crate::state::{self, Registration, StateError, VaultError};

use super::Config;

/// How long the Vault must have stayed incomplete before it is repaired.
pub const REPAIR_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum RepairError {
    /// The Secret could not be read.
    Kube(KubeError),
    /// The Secret holds no registration, or not a complete one: nothing to repair from.
    NothingToRestore(String),
    /// The Vault could not be written.
    Vault(VaultError),
}

impl fmt::Display for RepairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepairError::Kube(e) => write!(f, "cannot read the state Secret: {e}"),
            RepairError::NothingToRestore(why) => write!(f, "{why}"),
            RepairError::Vault(e) => write!(f, "cannot write the Vault: {e}"),
        }
    }
}

/// Writes the Secret's registration into the Vault; returns it.
pub fn restore_from_secret(config: &Config) -> Result<Registration, RepairError> {
    let client = Client::new(config.endpoint.clone(), &config.serviceaccount);
    let secret = client
        .get_secret(&config.namespace, &config.secret_name)
        .map_err(RepairError::Kube)?;
    let stored = state::from_secret(&secret).map_err(|e: StateError| {
        RepairError::NothingToRestore(format!(
            "the state Secret does not hold a complete registration either ({e})"
        ))
    })?;
    let Some(stored) = stored else {
        return Err(RepairError::NothingToRestore(
            "the state Secret holds no registration".into(),
        ));
    };
    state::write_vault(&config.base_dir, &stored.registration).map_err(RepairError::Vault)?;
    if !stored.activation_id.is_empty() {
        state::write_vault_activation(&config.base_dir, &stored.activation_id)
            .map_err(RepairError::Vault)?;
    }
    Ok(stored.registration)
}
