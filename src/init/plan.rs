//! Init's choice, as a pure function of what the state Secret and the Vault hold and of the
//! configured activation: [`decide`] returns a [`Plan`]; `super::run` carries it out.

use crate::state::{Registration, StateError, StoredState};

/// What reading the state Secret gave.
#[derive(Debug, Clone)]
pub enum SecretView {
    Absent,
    /// The Secret exists but holds none of the three file keys: registering loses nothing.
    NoRegistration,
    Holds(StoredState),
    /// Something that is not a registration: never touched.
    Unparseable(StateError),
}

/// What the Vault directory holds.
#[derive(Debug, Clone, Default)]
pub struct VaultView {
    /// A complete registration, if any.
    pub registration: Option<Registration>,
    /// Our activation marker beside it, if any.
    pub activation: Option<String>,
}

/// What init will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Refuse to touch an unparseable Secret.
    Refuse(StateError),
    /// Write the Secret's registration to the Vault. `activation` (may be empty: unknown) is
    /// written as the Vault's marker when known; `unchecked`: very old state whose activation
    /// nobody recorded, reused as the original does, with a warning.
    Reuse {
        registration: Registration,
        activation: String,
        unchecked: bool,
    },
    /// The Vault holds a newer key for the Secret's instance (rotated by the agent, not saved
    /// yet): keep it and save it to the Secret. `activation` fills in `connector-config` when
    /// the Secret lacks it.
    KeepRotated {
        registration: Registration,
        activation: Option<String>,
    },
    /// The Vault holds a registration made for this activation by a run that could not save it
    /// to the Secret: save it now.
    Adopt { registration: Registration },
    /// Register anew; `why` for the log.
    Register { why: String },
}

/// The activation the Secret's registration belongs to: its `connector-config`, else the Vault's
/// marker when the Vault holds the same instance (a Secret re-created without the key), else
/// unknown (`""`: very old state).
fn activation_of(st: &StoredState, vault: &VaultView) -> String {
    if !st.activation_id.is_empty() {
        return st.activation_id.clone();
    }
    match (&vault.registration, &vault.activation) {
        (Some(v), Some(a)) if v.instance_id() == st.registration.instance_id() => a.clone(),
        _ => String::new(),
    }
}

/// Init's choice; see the module documentation of `init` for the order of the checks.
pub fn decide(secret: &SecretView, vault: &VaultView, configured: &str) -> Plan {
    let why = match secret {
        SecretView::Unparseable(e) => return Plan::Refuse(e.clone()),
        SecretView::Absent => "the state Secret does not exist".to_string(),
        SecretView::NoRegistration => "the state Secret holds no registration".to_string(),
        SecretView::Holds(st) => {
            let activation = activation_of(st, vault);
            if activation.is_empty() || activation == configured {
                return reuse_or_keep(st, vault, activation);
            }
            format!(
                "the state Secret holds instance {} of activation {activation}, but the \
                 configured activation is {configured}: a new registration is needed",
                st.registration.instance_id()
            )
        }
    };
    match (&vault.registration, &vault.activation) {
        (Some(v), Some(a)) if a == configured => Plan::Adopt {
            registration: v.clone(),
        },
        _ => Plan::Register { why },
    }
}

fn reuse_or_keep(st: &StoredState, vault: &VaultView, activation: String) -> Plan {
    let mine = &st.registration;
    match &vault.registration {
        Some(v) if v.instance_id() == mine.instance_id() && !v.same_files(mine) => {
            Plan::KeepRotated {
                registration: v.clone(),
                activation: (!activation.is_empty()).then_some(activation),
            }
        }
        _ => Plan::Reuse {
            registration: mine.clone(),
            unchecked: activation.is_empty(),
            activation,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::*;

    fn reg(instance: &str, key_date: &str) -> Registration {
        let rk = regkey(instance).replace("2026-11-25", key_date);
        Registration::from_bytes(
            MANIFEST.into(),
            rk.into(),
            FINGERPRINT.into(),
            ("m", "r", "f"),
        )
        .unwrap()
    }

    fn holds(instance: &str, activation: &str) -> SecretView {
        SecretView::Holds(StoredState {
            registration: reg(instance, "2026-11-25"),
            activation_id: activation.into(),
        })
    }

    fn vault(instance: &str, key_date: &str, activation: Option<&str>) -> VaultView {
        VaultView {
            registration: Some(reg(instance, key_date)),
            activation: activation.map(String::from),
        }
    }

    #[test]
    fn fresh_registers() {
        for s in [SecretView::Absent, SecretView::NoRegistration] {
            let p = decide(&s, &VaultView::default(), "a-1");
            assert!(matches!(p, Plan::Register { .. }), "{p:?}");
        }
    }

    #[test]
    fn the_same_activation_reuses_the_secrets_bytes() {
        let p = decide(&holds("mi-1", "a-1"), &VaultView::default(), "a-1");
        assert_eq!(
            p,
            Plan::Reuse {
                registration: reg("mi-1", "2026-11-25"),
                activation: "a-1".into(),
                unchecked: false
            }
        );
        // A Vault with the same bytes changes nothing.
        let p = decide(
            &holds("mi-1", "a-1"),
            &vault("mi-1", "2026-11-25", Some("a-1")),
            "a-1",
        );
        assert!(matches!(p, Plan::Reuse { .. }), "{p:?}");
    }

    #[test]
    fn a_changed_activation_registers_again() {
        let p = decide(&holds("mi-1", "a-1"), &VaultView::default(), "a-2");
        let Plan::Register { why } = p else {
            panic!("{p:?}")
        };
        assert!(why.contains("a-1") && why.contains("a-2"), "{why}");
    }

    #[test]
    fn a_rotated_key_not_yet_synced_is_kept() {
        let p = decide(
            &holds("mi-1", "a-1"),
            &vault("mi-1", "2026-12-01", Some("a-1")),
            "a-1",
        );
        assert_eq!(
            p,
            Plan::KeepRotated {
                registration: reg("mi-1", "2026-12-01"),
                activation: Some("a-1".into())
            }
        );
        // Another instance in the Vault is not a rotation: the Secret's wins.
        let p = decide(
            &holds("mi-1", "a-1"),
            &vault("mi-2", "2026-12-01", Some("a-1")),
            "a-1",
        );
        assert!(matches!(p, Plan::Reuse { .. }), "{p:?}");
    }

    #[test]
    fn after_a_failed_secret_write_the_vault_is_adopted() {
        let v = vault("mi-9", "2026-12-01", Some("a-2"));
        for s in [SecretView::Absent, holds("mi-1", "a-1")] {
            let p = decide(&s, &v, "a-2");
            assert_eq!(
                p,
                Plan::Adopt {
                    registration: reg("mi-9", "2026-12-01")
                }
            );
        }
        // A Vault of another activation is not adopted.
        let p = decide(&SecretView::Absent, &v, "a-3");
        assert!(matches!(p, Plan::Register { .. }), "{p:?}");
        let unmarked = vault("mi-9", "2026-12-01", None);
        let p = decide(&SecretView::Absent, &unmarked, "a-2");
        assert!(matches!(p, Plan::Register { .. }), "{p:?}");
    }

    #[test]
    fn an_unparseable_secret_is_refused() {
        let e = StateError::Missing {
            item: "regkey".into(),
        };
        let p = decide(
            &SecretView::Unparseable(e.clone()),
            &vault("mi-1", "2026-12-01", Some("a-1")),
            "a-1",
        );
        assert_eq!(p, Plan::Refuse(e));
    }

    #[test]
    fn a_missing_activation_is_taken_from_the_vaults_marker_not_read_as_reuse() {
        // Re-created by a key sync without connector-config, then the activation changed.
        let p = decide(
            &holds("mi-1", ""),
            &vault("mi-1", "2026-11-25", Some("a-1")),
            "a-2",
        );
        assert!(matches!(p, Plan::Register { .. }), "{p:?}");
        let p = decide(
            &holds("mi-1", ""),
            &vault("mi-1", "2026-11-25", Some("a-1")),
            "a-1",
        );
        assert!(
            matches!(&p, Plan::Reuse { activation, unchecked: false, .. } if activation == "a-1"),
            "{p:?}"
        );
        // Truly old state (no marker anywhere): reused unchecked, as the original does.
        let p = decide(&holds("mi-1", ""), &VaultView::default(), "a-2");
        assert!(
            matches!(
                p,
                Plan::Reuse {
                    unchecked: true,
                    ..
                }
            ),
            "{p:?}"
        );
    }
}
