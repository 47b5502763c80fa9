//! The state Secret's one reader and writer, used by init and by the key sync alike.
//!
//! - **Merge** ([`merge`], pure): the three file keys come from the registration; every other key
//!   is kept; `connector-config` is set or kept as the caller says ([`Activation`]); the label
//!   `name=<secret>` and type `Opaque` are the same on every path (create, update, re-create).
//! - **One retry rule** ([`StateStore::save`]): a conflict or a Secret that vanished or appeared
//!   meanwhile is re-read and merged again (at once the first time, then with backoff); transient
//!   API errors are retried with backoff; both until the caller's deadline. Other errors (RBAC,
//!   a bad request) return at once. A key not yet in the Secret is never given up on: the key
//!   sync calls `save` again, with its own backoff, until it succeeds; init gives up only once
//!   the key is safe in the Vault (a restart adopts it from there).

use std::time::{Duration, Instant};

use super::{connector_config, new_state_secret, Registration, KEY_CONNECTOR_CONFIG};
use crate::backoff::Backoff;
use crate::kube::{Client, KubeError, OnConflict, Secret};

/// What to do with `connector-config` (the activation the registration belongs to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation<'a> {
    /// Set it to this activation id (a registration made or adopted for it).
    Set(&'a str),
    /// Keep the Secret's; when the Secret has none (re-created, or filled in), use `fallback`
    /// (the Vault's activation marker), so a re-created Secret never loses it.
    Keep { fallback: Option<&'a str> },
}

/// The write [`merge`] decided on.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// The Secret already holds exactly this.
    Unchanged,
    Create(Secret),
    Update(Secret),
}

/// What [`StateStore::save`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Unchanged,
    Updated,
    Created,
}

/// The Secret `current` (or a new one when `None`) with `reg` merged in: see the module docs.
pub fn merge(
    current: Option<&Secret>,
    namespace: &str,
    name: &str,
    reg: &Registration,
    activation: Activation<'_>,
) -> Write {
    let Some(cur) = current else {
        let id = match activation {
            Activation::Set(id) => Some(id),
            Activation::Keep { fallback } => fallback,
        };
        let mut s = new_state_secret(namespace, name, reg, id.unwrap_or(""));
        if id.is_none() {
            s.data.remove(KEY_CONNECTOR_CONFIG);
        }
        return Write::Create(s);
    };
    let mut s = cur.clone();
    reg.apply_to(&mut s.data);
    let has_config = s
        .data
        .get(KEY_CONNECTOR_CONFIG)
        .is_some_and(|v| !v.is_empty());
    let set = match activation {
        Activation::Set(id) => Some(id),
        Activation::Keep { fallback } if !has_config => fallback,
        Activation::Keep { .. } => None,
    };
    if let Some(id) = set {
        s.data
            .insert(KEY_CONNECTOR_CONFIG.to_string(), connector_config(id));
    }
    s.labels.insert("name".into(), name.to_string());
    if s.type_.is_empty() {
        s.type_ = "Opaque".into();
    }
    if s == *cur {
        Write::Unchanged
    } else {
        Write::Update(s)
    }
}

/// A failed store operation: the verb (`get`, `create`, `update`) and the API's answer.
#[derive(Debug)]
pub struct StoreError {
    pub verb: &'static str,
    pub source: KubeError,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.verb, self.source)
    }
}

/// One replica's state Secret.
pub struct StateStore<'a> {
    client: &'a Client,
    namespace: &'a str,
    name: &'a str,
}

/// Backoff of the store's retries.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
}

/// Whether a retry after `delay` still ends before `deadline`.
fn before(deadline: Instant, delay: Duration) -> bool {
    Instant::now()
        .checked_add(delay)
        .is_some_and(|t| t < deadline)
}

impl<'a> StateStore<'a> {
    pub fn new(client: &'a Client, namespace: &'a str, name: &'a str) -> StateStore<'a> {
        StateStore {
            client,
            namespace,
            name,
        }
    }

    /// `namespace/name`, for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The Secret, `None` when absent; transient errors retried until `deadline`.
    pub fn load(&self, deadline: Instant) -> Result<Option<Secret>, StoreError> {
        let mut b = backoff();
        loop {
            match self.client.get_secret(self.namespace, self.name) {
                Ok(s) => return Ok(Some(s)),
                Err(KubeError::NotFound { .. }) => return Ok(None),
                Err(e) => {
                    let delay = b.next_delay();
                    if !(e.is_transient() && before(deadline, delay)) {
                        return Err(StoreError {
                            verb: "get",
                            source: e,
                        });
                    }
                    log::warn!(
                        "reading Secret {} failed: {e}; retrying in {:.1}s",
                        self.describe(),
                        delay.as_secs_f64()
                    );
                    std::thread::sleep(delay);
                }
            }
        }
    }

    /// Merges `reg` into the Secret (`current` as last read; `None`: absent) and writes it, with
    /// the module's one retry rule until `deadline`.
    pub fn save(
        &self,
        mut current: Option<Secret>,
        reg: &Registration,
        activation: Activation<'_>,
        deadline: Instant,
    ) -> Result<Saved, StoreError> {
        let mut b = backoff();
        loop {
            let (verb, result) =
                match merge(current.as_ref(), self.namespace, self.name, reg, activation) {
                    Write::Unchanged => return Ok(Saved::Unchanged),
                    Write::Create(s) => (
                        "create",
                        self.client.create_secret(&s).map(|_| Saved::Created),
                    ),
                    Write::Update(s) => (
                        "update",
                        self.client
                            .update_secret(&s, OnConflict::Fail)
                            .map(|_| Saved::Updated),
                    ),
                };
            let e = match result {
                Ok(saved) => return Ok(saved),
                Err(e) => e,
            };
            let delay = b.next_delay();
            let stale = matches!(e, KubeError::Conflict { .. } | KubeError::NotFound { .. });
            if !((stale || e.is_transient()) && before(deadline, delay)) {
                return Err(StoreError { verb, source: e });
            }
            if stale {
                // Someone else created, changed or deleted it: read it again and merge again.
                log::warn!("{verb} Secret {}: {e}; reading it again", self.describe());
                if b.attempts() > 1 {
                    std::thread::sleep(delay);
                }
                current = self.load(deadline)?;
            } else {
                log::warn!(
                    "{verb} Secret {} failed: {e}; retrying in {:.1}s",
                    self.describe(),
                    delay.as_secs_f64()
                );
                std::thread::sleep(delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::state::{KEY_MANIFEST, KEY_REGKEY};

    fn reg(instance: &str) -> Registration {
        registration(instance)
    }

    fn stored(instance: &str, activation: Option<&str>) -> Secret {
        let mut s = new_state_secret("ns", "s-0", &reg(instance), activation.unwrap_or(""));
        if activation.is_none() {
            s.data.remove(KEY_CONNECTOR_CONFIG);
        }
        s.resource_version = "7".into();
        s
    }

    fn config_of(w: &Write) -> Option<Vec<u8>> {
        match w {
            Write::Create(s) | Write::Update(s) => s.data.get(KEY_CONNECTOR_CONFIG).cloned(),
            Write::Unchanged => None,
        }
    }

    #[test]
    fn a_new_secret_has_label_type_and_the_activation_or_the_fallback() {
        let w = merge(None, "ns", "s-0", &reg("mi-1"), Activation::Set("a-1"));
        let Write::Create(s) = &w else {
            panic!("{w:?}")
        };
        assert_eq!(s.labels.get("name").map(String::as_str), Some("s-0"));
        assert_eq!(s.type_, "Opaque");
        assert_eq!(config_of(&w), Some(connector_config("a-1")));
        // Re-created by the key sync: the Vault's marker keeps connector-config.
        let w = merge(
            None,
            "ns",
            "s-0",
            &reg("mi-1"),
            Activation::Keep {
                fallback: Some("a-2"),
            },
        );
        assert_eq!(config_of(&w), Some(connector_config("a-2")));
        let w = merge(
            None,
            "ns",
            "s-0",
            &reg("mi-1"),
            Activation::Keep { fallback: None },
        );
        assert!(matches!(&w, Write::Create(_)));
        assert_eq!(config_of(&w), None);
    }

    #[test]
    fn an_update_keeps_other_keys_and_sets_label_and_type() {
        let mut cur = stored("mi-1", Some("a-1"));
        cur.labels.clear();
        cur.type_.clear();
        cur.data.insert("extra".into(), b"kept".to_vec());
        let w = merge(
            Some(&cur),
            "ns",
            "s-0",
            &reg("mi-2"),
            Activation::Keep {
                fallback: Some("a-9"),
            },
        );
        let Write::Update(s) = &w else {
            panic!("{w:?}")
        };
        assert_eq!(s.data.get("extra").unwrap(), b"kept");
        assert_eq!(s.data.get(KEY_REGKEY).unwrap(), regkey("mi-2").as_bytes());
        assert_eq!(s.data.get(KEY_MANIFEST).unwrap(), MANIFEST.as_bytes());
        // The Secret's own activation wins over the fallback.
        assert_eq!(config_of(&w), Some(connector_config("a-1")));
        assert_eq!(s.labels.get("name").map(String::as_str), Some("s-0"));
        assert_eq!(s.type_, "Opaque");
        assert_eq!(s.resource_version, "7", "the update carries what was read");
    }

    #[test]
    fn set_replaces_the_activation_and_a_missing_one_takes_the_fallback() {
        let cur = stored("mi-1", Some("a-1"));
        let w = merge(
            Some(&cur),
            "ns",
            "s-0",
            &reg("mi-1"),
            Activation::Set("a-2"),
        );
        assert_eq!(config_of(&w), Some(connector_config("a-2")));
        let cur = stored("mi-1", None);
        let w = merge(
            Some(&cur),
            "ns",
            "s-0",
            &reg("mi-1"),
            Activation::Keep {
                fallback: Some("a-3"),
            },
        );
        assert_eq!(config_of(&w), Some(connector_config("a-3")));
    }

    #[test]
    fn the_same_content_is_not_written_again() {
        let cur = stored("mi-1", Some("a-1"));
        for act in [
            Activation::Set("a-1"),
            Activation::Keep { fallback: None },
            Activation::Keep {
                fallback: Some("a-2"),
            },
        ] {
            assert_eq!(
                merge(Some(&cur), "ns", "s-0", &reg("mi-1"), act),
                Write::Unchanged,
                "{act:?}"
            );
        }
    }

    #[test]
    fn deadlines_never_overflow() {
        assert!(!before(Instant::now(), Duration::MAX));
        assert!(before(
            Instant::now() + Duration::from_secs(60),
            Duration::from_millis(1)
        ));
    }
}
