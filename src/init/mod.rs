//! The init container: make sure the Vault holds this replica's SSM registration, and that the
//! state Secret holds the same bytes, without ever losing a registration.
//!
//! Order of the checks ([`plan::decide`], a pure function; `run` carries its plan out):
//! 1. The state Secret holds a registration for the configured activation (its `connector-config`,
//!    else the Vault's activation marker for the same instance; or very old state with neither):
//!    reuse it. If the Vault holds a *newer* key for the same instance (the agent
//!    rotated it and the launcher could not save it), keep the Vault's and save it to the Secret;
//!    otherwise write the Secret's bytes to the Vault.
//! 2. The Vault holds a complete registration made for the configured activation (a previous run
//!    registered, then failed to write the Secret): adopt it and save it to the Secret.
//! 3. Register: RSA-2048 key, UUID v4 fingerprint, one RegisterManagedInstance call; write the
//!    Vault first (local and atomic), then the Secret, retrying conflicts and transient errors.
//!
//! Also `--install-launcher`: copying the agent launcher into a shared volume.

mod install;
pub mod plan;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;

pub use install::{install_launcher, InstallError, LAUNCHER_NAME};
use plan::{Plan, SecretView, VaultView};

use crate::backoff::deadline_after;
use crate::kube::{self, KubeError, Secret};
use crate::ssm::{self, SsmError};
use crate::state::{
    self, Activation, Registration, StateError, StateStore, StoreError, VaultError,
};

/// Exit codes, one per class of error (the table for all programs: [`crate::cli::EXIT_CODES`]).
pub const EXIT_INTERNAL: i32 = 1;
pub const EXIT_USAGE: i32 = crate::cli::EXIT_USAGE;
pub const EXIT_CONFIG: i32 = 3;
pub const EXIT_INVALID_ACTIVATION: i32 = 10;
pub const EXIT_ACTIVATION_EXPIRED: i32 = 11;
pub const EXIT_SSM_REJECTED: i32 = 12;
pub const EXIT_SSM_UNREACHABLE: i32 = 13;
pub const EXIT_SSM_DNS_TLS: i32 = 14;
pub const EXIT_PROXY: i32 = 15;
pub const EXIT_KUBE_FORBIDDEN: i32 = 20;
pub const EXIT_BAD_STATE_SECRET: i32 = 21;
pub const EXIT_KUBE: i32 = 22;
pub const EXIT_VAULT: i32 = 23;
pub const EXIT_INSTALL: i32 = 30;

/// What the init container was asked to do.
#[derive(Clone)]
pub struct Config {
    pub activation_id: String,
    pub activation_code: String,
    pub region: String,
    /// Where the Vault is mounted in our container.
    pub base_dir: PathBuf,
    pub namespace: String,
    pub secret_name: String,
    /// How long to keep retrying transient Kubernetes errors.
    pub kube_deadline: Duration,
}

// The activation code is a credential: never print it.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("activation_id", &self.activation_id)
            .field("region", &self.region)
            .field("base_dir", &self.base_dir)
            .field("namespace", &self.namespace)
            .field("secret_name", &self.secret_name)
            .finish_non_exhaustive()
    }
}

/// What `run` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new registration with SSM.
    Registered {
        instance_id: String,
        request_id: String,
    },
    /// The Secret's registration, written to the Vault.
    Reused { instance_id: String },
    /// The Vault's newer (rotated) key for the Secret's instance, saved to the Secret.
    KeptRotatedKey { instance_id: String },
    /// A registration found in the Vault for this activation, saved to the Secret.
    Adopted { instance_id: String },
}

/// A failed operation on the state Secret.
#[derive(Debug)]
pub struct SecretOpError {
    pub verb: &'static str,
    pub namespace: String,
    pub secret: String,
    pub source: KubeError,
    /// Set when a registration exists only in the Vault: (instance id, Vault directory).
    pub saved_in_vault: Option<(String, PathBuf)>,
}

#[derive(Debug)]
pub enum InitError {
    Ssm(SsmError),
    /// A Kubernetes operation on the state Secret failed (RBAC, API error, unreachable).
    Kube(Box<SecretOpError>),
    /// The state Secret holds something that is not a registration; it was not touched.
    BadSecret {
        namespace: String,
        secret: String,
        error: StateError,
    },
    Vault(VaultError),
    Key(String),
}

impl InitError {
    pub fn exit_code(&self) -> i32 {
        match self {
            InitError::Ssm(e) => match e {
                SsmError::InvalidActivation { .. } => EXIT_INVALID_ACTIVATION,
                SsmError::ActivationExpired { .. } => EXIT_ACTIVATION_EXPIRED,
                SsmError::Rejected { .. } | SsmError::BadResponse { .. } => EXIT_SSM_REJECTED,
                SsmError::Unreachable { .. } => EXIT_SSM_UNREACHABLE,
                SsmError::Dns { .. } | SsmError::Tls { .. } => EXIT_SSM_DNS_TLS,
                SsmError::ProxyAuth { .. } | SsmError::ProxyRefused { .. } => EXIT_PROXY,
                SsmError::Config(_) => EXIT_CONFIG,
            },
            InitError::Kube(k) => match k.source {
                KubeError::Forbidden { .. } => EXIT_KUBE_FORBIDDEN,
                KubeError::Config(_) => EXIT_CONFIG,
                _ => EXIT_KUBE,
            },
            InitError::BadSecret { .. } => EXIT_BAD_STATE_SECRET,
            InitError::Vault(_) => EXIT_VAULT,
            InitError::Key(_) => EXIT_INTERNAL,
        }
    }
}

fn vault_note(saved: &Option<(String, PathBuf)>) -> String {
    match saved {
        Some((id, dir)) => format!(
            "; instance {id} is registered and saved in the Vault {}: restarting the init \
             container adopts it from there without registering again",
            dir.display()
        ),
        None => String::new(),
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Ssm(e) => write!(f, "{e}"),
            InitError::Kube(k) => {
                let SecretOpError {
                    verb,
                    namespace,
                    secret,
                    source,
                    saved_in_vault,
                } = k.as_ref();
                let note = vault_note(saved_in_vault);
                if let KubeError::Forbidden { message } = source {
                    let names = if *verb == "create" {
                        " (create cannot be limited by resourceNames)".to_string()
                    } else {
                        format!(", resourceNames: [\"{secret}\"]")
                    };
                    write!(
                        f,
                        "Kubernetes refused to {verb} Secret {namespace}/{secret}: {message}; the \
                         ServiceAccount's Role in {namespace} needs the rule apiGroups: [\"\"], \
                         resources: [\"secrets\"], verbs: [\"{verb}\"]{names} (see \
                         manifests/base/role.yaml){note}"
                    )
                } else {
                    write!(
                        f,
                        "cannot {verb} Secret {namespace}/{secret}: {source}{note}"
                    )
                }
            }
            InitError::BadSecret {
                namespace,
                secret,
                error,
            } => write!(
                f,
                "state Secret {namespace}/{secret}: key {error}; refusing to touch it. To force a \
                 new registration, delete the Secret (kubectl -n {namespace} delete secret \
                 {secret}) and then the pod"
            ),
            InitError::Vault(e) => write!(f, "{e}"),
            InitError::Key(e) => write!(f, "cannot generate the RSA key: {e}"),
        }
    }
}

impl std::error::Error for InitError {}

/// Makes the SSM client only when a registration is needed.
pub type SsmFactory<'a> = dyn FnOnce() -> Result<ssm::Client, SsmError> + 'a;

/// Does the init container's job: read, decide ([`plan::decide`]), carry the plan out.
pub fn run(
    cfg: &Config,
    kube: &kube::Client,
    make_ssm: Box<SsmFactory<'_>>,
) -> Result<Outcome, InitError> {
    let store = StateStore::new(kube, &cfg.namespace, &cfg.secret_name);
    let current = store
        .load(deadline_after(cfg.kube_deadline))
        .map_err(|e| kube_error(cfg, e, None))?;
    let secret = view_secret(cfg, current.as_ref());
    let vault = view_vault(&cfg.base_dir);
    match plan::decide(&secret, &vault, &cfg.activation_id) {
        Plan::Refuse(error) => Err(InitError::BadSecret {
            namespace: cfg.namespace.clone(),
            secret: cfg.secret_name.clone(),
            error,
        }),
        Plan::Reuse {
            registration,
            activation,
            unchecked,
        } => reuse(cfg, &registration, &activation, unchecked),
        Plan::KeepRotated {
            registration,
            activation,
        } => keep_rotated(cfg, &store, current, &registration, activation.as_deref()),
        Plan::Adopt { registration } => adopt(cfg, &store, current, &registration),
        Plan::Register { why } => {
            log::info!("{why}");
            register(cfg, &store, current, make_ssm)
        }
    }
}

/// Step 1: what the Secret holds.
fn view_secret(cfg: &Config, current: Option<&Secret>) -> SecretView {
    let Some(s) = current else {
        return SecretView::Absent;
    };
    match state::from_secret(s) {
        Ok(Some(st)) => SecretView::Holds(st),
        Ok(None) => SecretView::NoRegistration,
        Err(e) => {
            log::debug!("Secret {}/{}: {e}", cfg.namespace, cfg.secret_name);
            SecretView::Unparseable(e)
        }
    }
}

/// Step 2: what the Vault holds.
fn view_vault(base_dir: &Path) -> VaultView {
    let registration = match state::read_vault(base_dir) {
        Ok(v) => {
            log::info!(
                "the Vault {} holds instance {}",
                base_dir.display(),
                v.instance_id()
            );
            Some(v)
        }
        Err(e) => {
            log::info!("{e}");
            None
        }
    };
    VaultView {
        registration,
        activation: state::read_vault_activation(base_dir),
    }
}

/// Plan: reuse the Secret's registration (written to the Vault).
fn reuse(
    cfg: &Config,
    reg: &Registration,
    activation: &str,
    unchecked: bool,
) -> Result<Outcome, InitError> {
    let id = reg.instance_id().to_string();
    if unchecked {
        log::warn!(
            "state Secret {}/{} has no activationId (state from an old connector); reusing \
             instance {id} without checking the activation",
            cfg.namespace,
            cfg.secret_name
        );
    }
    state::write_vault(&cfg.base_dir, reg).map_err(InitError::Vault)?;
    if !activation.is_empty() {
        state::write_vault_activation(&cfg.base_dir, activation).map_err(InitError::Vault)?;
    }
    log::info!(
        "reusing instance {id} from Secret {}/{}; written to the Vault {}",
        cfg.namespace,
        cfg.secret_name,
        cfg.base_dir.display()
    );
    Ok(Outcome::Reused { instance_id: id })
}

/// Plan: keep the Vault's rotated key and save it to the Secret.
fn keep_rotated(
    cfg: &Config,
    store: &StateStore<'_>,
    current: Option<Secret>,
    reg: &Registration,
    activation: Option<&str>,
) -> Result<Outcome, InitError> {
    let id = reg.instance_id().to_string();
    log::info!(
        "the Vault holds a newer key for instance {id} than Secret {} (rotated by the agent, \
         not yet saved): keeping it and saving it to the Secret",
        store.describe()
    );
    let fallback = Activation::Keep {
        fallback: activation,
    };
    save(cfg, store, current, reg, fallback, None)?;
    Ok(Outcome::KeptRotatedKey { instance_id: id })
}

/// Plan: adopt the Vault's registration for this activation.
fn adopt(
    cfg: &Config,
    store: &StateStore<'_>,
    current: Option<Secret>,
    reg: &Registration,
) -> Result<Outcome, InitError> {
    let id = reg.instance_id().to_string();
    log::info!(
        "adopting instance {id} from the Vault: it was registered for this activation by an \
         earlier run that could not save it to the Secret"
    );
    let saved = Some((id.clone(), cfg.base_dir.clone()));
    save(
        cfg,
        store,
        current,
        reg,
        Activation::Set(&cfg.activation_id),
        saved,
    )?;
    log::info!("instance {id} saved to Secret {}", store.describe());
    Ok(Outcome::Adopted { instance_id: id })
}

/// Plan: register with SSM, then write the Vault first (local, atomic), then the Secret.
fn register(
    cfg: &Config,
    store: &StateStore<'_>,
    current: Option<Secret>,
    make_ssm: Box<SsmFactory<'_>>,
) -> Result<Outcome, InitError> {
    state::prepare_vault(&cfg.base_dir).map_err(InitError::Vault)?;
    let (reg, registered) = register_with_ssm(cfg, make_ssm)?;
    let id = registered.instance_id.clone();
    let written = state::write_vault(&cfg.base_dir, &reg)
        .and_then(|()| state::write_vault_activation(&cfg.base_dir, &cfg.activation_id));
    let set = Activation::Set(&cfg.activation_id);
    if let Err(e) = written {
        // The key exists only in memory: the Secret is its last chance.
        log::error!("{e}; saving instance {id} to the Secret anyway");
        save(cfg, store, current, &reg, set, None)?;
        log::info!("instance {id} saved to Secret {}", store.describe());
        return Err(InitError::Vault(e));
    }
    log::info!(
        "instance {id} saved in the Vault {}",
        cfg.base_dir.display()
    );
    let saved = Some((id.clone(), cfg.base_dir.clone()));
    save(cfg, store, current, &reg, set, saved)?;
    log::info!("instance {id} saved to Secret {}", store.describe());
    Ok(Outcome::Registered {
        instance_id: registered.instance_id,
        request_id: registered.request_id,
    })
}

/// The SSM call: a new RSA-2048 key and fingerprint, one RegisterManagedInstance.
fn register_with_ssm(
    cfg: &Config,
    make_ssm: Box<SsmFactory<'_>>,
) -> Result<(Registration, ssm::Registered), InitError> {
    let client = make_ssm().map_err(InitError::Ssm)?;
    log::info!(
        "registering with SSM at {} ({}) for activation {} in {}",
        client.endpoint(),
        client
            .egress_proxy()
            .map(|p| format!("through proxy {p}"))
            .unwrap_or_else(|| "no proxy".into()),
        cfg.activation_id,
        cfg.region
    );
    let t0 = Instant::now();
    let key = generate_key()?;
    log::debug!("RSA-2048 key generated in {:?}", t0.elapsed());
    let fingerprint =
        crate::random::uuid_v4().map_err(|e| InitError::Key(format!("no randomness: {e}")))?;
    let registered = client
        .register(&ssm::RegisterRequest {
            activation_code: &cfg.activation_code,
            activation_id: &cfg.activation_id,
            fingerprint: &fingerprint,
            public_key_b64: &key.public_b64,
        })
        .map_err(InitError::Ssm)?;
    log::info!(
        "registered instance {} (request id {})",
        registered.instance_id,
        if registered.request_id.is_empty() {
            "none"
        } else {
            &registered.request_id
        }
    );
    let reg = Registration::new(
        &registered.instance_id,
        &cfg.region,
        &key.private_pkcs1_der,
        SystemTime::now(),
        &fingerprint,
    );
    Ok((reg, registered))
}

/// Saves `reg` to the Secret through the store, until the Kubernetes deadline.
fn save(
    cfg: &Config,
    store: &StateStore<'_>,
    current: Option<Secret>,
    reg: &Registration,
    activation: Activation<'_>,
    saved_in_vault: Option<(String, PathBuf)>,
) -> Result<(), InitError> {
    store
        .save(current, reg, activation, deadline_after(cfg.kube_deadline))
        .map(|_| ())
        .map_err(|e| kube_error(cfg, e, saved_in_vault))
}

fn kube_error(cfg: &Config, e: StoreError, saved_in_vault: Option<(String, PathBuf)>) -> InitError {
    InitError::Kube(Box::new(SecretOpError {
        verb: e.verb,
        namespace: cfg.namespace.clone(),
        secret: cfg.secret_name.clone(),
        source: e.source,
        saved_in_vault,
    }))
}

struct Key {
    private_pkcs1_der: Vec<u8>,
    public_b64: String,
}

impl Drop for Key {
    fn drop(&mut self) {
        self.private_pkcs1_der.iter_mut().for_each(|b| *b = 0);
    }
}

fn generate_key() -> Result<Key, InitError> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::EncodePublicKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .map_err(|e| InitError::Key(e.to_string()))?;
    let private = key
        .to_pkcs1_der()
        .map_err(|e| InitError::Key(e.to_string()))?;
    let public = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| InitError::Key(e.to_string()))?;
    Ok(Key {
        private_pkcs1_der: private.as_bytes().to_vec(),
        public_b64: base64::engine::general_purpose::STANDARD.encode(public.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_pkcs1_and_spki_of_the_same_rsa_2048_key() {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let k = generate_key().unwrap();
        let private = rsa::RsaPrivateKey::from_pkcs1_der(&k.private_pkcs1_der).unwrap();
        let spki = base64::engine::general_purpose::STANDARD
            .decode(&k.public_b64)
            .unwrap();
        let public = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
        assert_eq!(private.to_public_key(), public);
        assert_eq!(public.size(), 256);
        assert!(k.public_b64.len() >= 392);
    }

    #[test]
    fn errors_have_distinct_exit_codes_and_actionable_messages() {
        let forbidden = InitError::Kube(Box::new(SecretOpError {
            verb: "update",
            namespace: "eks-connector".into(),
            secret: "eks-connector-state-0".into(),
            source: KubeError::Forbidden {
                message: "secrets \"eks-connector-state-0\" is forbidden".into(),
            },
            saved_in_vault: Some(("mi-1".into(), "/vault".into())),
        }));
        let s = forbidden.to_string();
        for want in [
            "update",
            "eks-connector/eks-connector-state-0",
            "resourceNames",
            "mi-1",
            "adopts",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
        let bad = InitError::BadSecret {
            namespace: "ns".into(),
            secret: "s-0".into(),
            error: StateError::Missing {
                item: "regkey".into(),
            },
        };
        assert!(bad.to_string().contains("delete secret s-0"), "{bad}");
        let codes = [
            forbidden.exit_code(),
            bad.exit_code(),
            InitError::Vault(VaultError::Empty { dir: "/v".into() }).exit_code(),
            InitError::Key("x".into()).exit_code(),
            InitError::Ssm(SsmError::Config("x".into())).exit_code(),
        ];
        let mut uniq = codes.to_vec();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), codes.len(), "{codes:?}");
        assert!(!codes.contains(&0));
    }
}
