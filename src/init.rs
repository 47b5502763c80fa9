//! The init container: make sure the Vault holds this replica's SSM registration, and that the
//! state Secret holds the same bytes, without ever losing a registration.
//!
//! Order of the checks (`run`):
//! 1. The state Secret holds a registration for the configured activation (or an old one with no
//!    `activationId`): reuse it. If the Vault holds a *newer* key for the same instance (the agent
//!    rotated it and the launcher could not save it), keep the Vault's and save it to the Secret;
//!    otherwise write the Secret's bytes to the Vault.
//! 2. The Vault holds a complete registration made for the configured activation (a previous run
//!    registered, then failed to write the Secret): adopt it and save it to the Secret.
//! 3. Register: RSA-2048 key, UUID v4 fingerprint, one RegisterManagedInstance call; write the
//!    Vault first (local and atomic), then the Secret, retrying conflicts and transient errors.
//!
//! Also `--install-launcher`: copying the agent launcher into a shared volume.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;

use crate::backoff::Backoff;
use crate::kube::{self, KubeError, OnConflict, Secret};
use crate::ssm::{self, SsmError};
use crate::state::{self, Registration, StateError, VaultError};

/// Exit codes, one per class of error (also listed in `eks-connector-init --help`).
pub const EXIT_INTERNAL: i32 = 1;
pub const EXIT_USAGE: i32 = crate::cli::EXIT_USAGE;
pub const EXIT_CONFIG: i32 = 3;
pub const EXIT_INVALID_ACTIVATION: i32 = 10;
pub const EXIT_ACTIVATION_EXPIRED: i32 = 11;
pub const EXIT_SSM_REJECTED: i32 = 12;
pub const EXIT_SSM_UNREACHABLE: i32 = 13;
pub const EXIT_SSM_DNS_TLS: i32 = 14;
pub const EXIT_KUBE_FORBIDDEN: i32 = 20;
pub const EXIT_BAD_STATE_SECRET: i32 = 21;
pub const EXIT_KUBE: i32 = 22;
pub const EXIT_VAULT: i32 = 23;
pub const EXIT_INSTALL: i32 = 30;

/// The exit-code table for `--help`.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0   the Vault and the state Secret hold this replica's registration
  1   internal error (key generation)
  2   missing or malformed flag
  3   configuration: POD_NAME, endpoint, AWS_CA_BUNDLE, proxy URL, Kubernetes environment
  10  SSM: InvalidActivation (wrong id/code pair, deleted activation)
  11  SSM: ActivationExpired
  12  SSM: any other rejection (RegistrationLimitExceeded, InvalidPublicKey, ...)
  13  SSM unreachable: throttling, 5xx, timeouts or connection errors until the deadline
  14  SSM endpoint DNS or TLS failure
  20  Kubernetes RBAC refused an operation on the state Secret
  21  the state Secret holds unparseable content (left untouched)
  22  Kubernetes API error or unreachable
  23  the Vault directory cannot be written
  30  --install-launcher failed";

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

/// Does the init container's job; see the module documentation.
pub fn run(
    cfg: &Config,
    kube: &kube::Client,
    make_ssm: Box<SsmFactory<'_>>,
) -> Result<Outcome, InitError> {
    let (ns, name) = (&cfg.namespace, &cfg.secret_name);
    let existing = get_secret(cfg, kube)?;
    let stored = match &existing {
        None => {
            log::info!("state Secret {ns}/{name} does not exist");
            None
        }
        Some(s) => state::from_secret(s).map_err(|error| InitError::BadSecret {
            namespace: ns.clone(),
            secret: name.clone(),
            error,
        })?,
    };
    let vault = state::read_vault(&cfg.base_dir);
    match &vault {
        Ok(v) => log::info!(
            "the Vault {} holds instance {}",
            cfg.base_dir.display(),
            v.instance_id()
        ),
        Err(e) => log::info!("{e}"),
    }

    if let Some(st) = &stored {
        let same = st.activation_id == cfg.activation_id;
        if same || st.activation_id.is_empty() {
            let id = st.registration.instance_id().to_string();
            if st.activation_id.is_empty() {
                log::warn!(
                    "state Secret {ns}/{name} has no activationId (state from an old connector); \
                     reusing instance {id} without checking the activation"
                );
            }
            if let Ok(v) = &vault {
                if v.instance_id() == id && !v.same_files(&st.registration) {
                    log::info!(
                        "the Vault holds a newer key for instance {id} than Secret {ns}/{name} \
                         (rotated by the agent, not yet saved): keeping it and saving it to the \
                         Secret"
                    );
                    save_secret(cfg, kube, existing, v, None, None)?;
                    return Ok(Outcome::KeptRotatedKey { instance_id: id });
                }
            }
            state::write_vault(&cfg.base_dir, &st.registration).map_err(InitError::Vault)?;
            if !st.activation_id.is_empty() {
                state::write_vault_activation(&cfg.base_dir, &st.activation_id)
                    .map_err(InitError::Vault)?;
            }
            log::info!(
                "reusing instance {id} from Secret {ns}/{name}; written to the Vault {}",
                cfg.base_dir.display()
            );
            return Ok(Outcome::Reused { instance_id: id });
        }
        log::info!(
            "Secret {ns}/{name} holds instance {} of activation {}, but the configured activation \
             is {}: a new registration is needed",
            st.registration.instance_id(),
            st.activation_id,
            cfg.activation_id
        );
    } else if existing.is_some() {
        log::info!("state Secret {ns}/{name} holds no registration");
    }

    if let Ok(v) = &vault {
        if state::read_vault_activation(&cfg.base_dir).as_deref() == Some(&cfg.activation_id) {
            let id = v.instance_id().to_string();
            log::info!(
                "adopting instance {id} from the Vault: it was registered for this activation by \
                 an earlier run that could not save it to the Secret"
            );
            let saved = Some((id.clone(), cfg.base_dir.clone()));
            save_secret(cfg, kube, existing, v, Some(&cfg.activation_id), saved)?;
            log::info!("instance {id} saved to Secret {ns}/{name}");
            return Ok(Outcome::Adopted { instance_id: id });
        }
    }

    state::prepare_vault(&cfg.base_dir).map_err(InitError::Vault)?;
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
    let saved = Some((registered.instance_id.clone(), cfg.base_dir.clone()));
    let written = state::write_vault(&cfg.base_dir, &reg)
        .and_then(|()| state::write_vault_activation(&cfg.base_dir, &cfg.activation_id));
    if let Err(e) = written {
        // The key exists only in memory: the Secret is its last chance.
        log::error!(
            "{e}; saving instance {} to the Secret anyway",
            registered.instance_id
        );
        save_secret(cfg, kube, existing, &reg, Some(&cfg.activation_id), None)?;
        log::info!(
            "instance {} saved to Secret {ns}/{name}",
            registered.instance_id
        );
        return Err(InitError::Vault(e));
    }
    log::info!(
        "instance {} saved in the Vault {}",
        registered.instance_id,
        cfg.base_dir.display()
    );
    save_secret(cfg, kube, existing, &reg, Some(&cfg.activation_id), saved)?;
    log::info!(
        "instance {} saved to Secret {ns}/{name}",
        registered.instance_id
    );
    Ok(Outcome::Registered {
        instance_id: registered.instance_id,
        request_id: registered.request_id,
    })
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

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
}

/// Reads the state Secret (`None` when absent), retrying transient errors.
fn get_secret(cfg: &Config, kube: &kube::Client) -> Result<Option<Secret>, InitError> {
    let deadline = Instant::now() + cfg.kube_deadline;
    let mut b = backoff();
    loop {
        match kube.get_secret(&cfg.namespace, &cfg.secret_name) {
            Ok(s) => return Ok(Some(s)),
            Err(KubeError::NotFound { .. }) => return Ok(None),
            Err(e) => {
                let delay = b.next_delay();
                if e.is_transient() && Instant::now() + delay < deadline {
                    log::warn!(
                        "reading Secret {}/{} failed: {e}; retrying in {:.1}s",
                        cfg.namespace,
                        cfg.secret_name,
                        delay.as_secs_f64()
                    );
                    std::thread::sleep(delay);
                    continue;
                }
                return Err(kube_error(cfg, "get", e, None));
            }
        }
    }
}

fn kube_error(
    cfg: &Config,
    verb: &'static str,
    source: KubeError,
    saved_in_vault: Option<(String, PathBuf)>,
) -> InitError {
    InitError::Kube(Box::new(SecretOpError {
        verb,
        namespace: cfg.namespace.clone(),
        secret: cfg.secret_name.clone(),
        source,
        saved_in_vault,
    }))
}

/// Writes `reg` into the state Secret: create it, or update the file keys of the existing one.
/// `activation` sets `connector-config` (`None` keeps the Secret's). Conflicts re-read the Secret;
/// transient errors are retried with backoff until the Kubernetes deadline.
fn save_secret(
    cfg: &Config,
    kube: &kube::Client,
    mut current: Option<Secret>,
    reg: &Registration,
    activation: Option<&str>,
    saved_in_vault: Option<(String, PathBuf)>,
) -> Result<(), InitError> {
    let (ns, name) = (&cfg.namespace, &cfg.secret_name);
    let deadline = Instant::now() + cfg.kube_deadline;
    let mut b = backoff();
    loop {
        let (verb, result) = match &current {
            None => {
                let s = state::new_state_secret(
                    ns,
                    name,
                    reg,
                    activation.unwrap_or(&cfg.activation_id),
                );
                ("create", kube.create_secret(&s).map(|_| ()))
            }
            Some(cur) => {
                let mut s = cur.clone();
                reg.apply_to(&mut s.data);
                if let Some(a) = activation {
                    s.data.insert(
                        state::KEY_CONNECTOR_CONFIG.to_string(),
                        state::connector_config(a),
                    );
                }
                s.labels.insert("name".into(), name.clone());
                if s.type_.is_empty() {
                    s.type_ = "Opaque".into();
                }
                (
                    "update",
                    kube.update_secret(&s, OnConflict::Fail).map(|_| ()),
                )
            }
        };
        let e = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let delay = b.next_delay();
        let retry = Instant::now() + delay < deadline;
        match e {
            // Someone else created or changed it: read it again and write over the file keys.
            KubeError::Conflict { .. } | KubeError::NotFound { .. } if retry => {
                log::warn!("{verb} Secret {ns}/{name}: {e}; reading it again");
                current = match kube.get_secret(ns, name) {
                    Ok(s) => Some(s),
                    Err(KubeError::NotFound { .. }) => None,
                    Err(e) if e.is_transient() => {
                        std::thread::sleep(delay);
                        continue;
                    }
                    Err(e) => return Err(kube_error(cfg, "get", e, saved_in_vault)),
                };
                if b.attempts() > 1 {
                    std::thread::sleep(delay);
                }
            }
            e if e.is_transient() && retry => {
                log::warn!(
                    "{verb} Secret {ns}/{name} failed: {e}; retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                std::thread::sleep(delay);
            }
            e => return Err(kube_error(cfg, verb, e, saved_in_vault)),
        }
    }
}

/// Why `--install-launcher` failed.
#[derive(Debug)]
pub enum InstallError {
    /// The launcher binary is not beside this one.
    SourceMissing { path: PathBuf },
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::SourceMissing { path } => write!(
                f,
                "cannot install the launcher: {} does not exist; the image must ship \
                 eks-connector-agent in the same directory as eks-connector-init",
                path.display()
            ),
            InstallError::Io { op, path, source } => write!(
                f,
                "cannot install the launcher: cannot {op} {}: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for InstallError {}

/// The launcher's file name, beside our own executable and in the destination.
pub const LAUNCHER_NAME: &str = "eks-connector-agent";

/// Copies `eks-connector-agent` from our own directory to `dest_dir` (temp file, fsync, rename)
/// with mode 0755. Returns the installed path.
pub fn install_launcher(dest_dir: &Path) -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().map_err(|source| InstallError::Io {
        op: "locate",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let src = exe.parent().unwrap_or(Path::new("/")).join(LAUNCHER_NAME);
    install_from(&src, dest_dir)
}

fn install_from(src: &Path, dest_dir: &Path) -> Result<PathBuf, InstallError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Io { op, path, source }
    };
    if !src.is_file() {
        return Err(InstallError::SourceMissing {
            path: src.to_path_buf(),
        });
    }
    let bytes = std::fs::read(src).map_err(io("read", src))?;
    std::fs::create_dir_all(dest_dir).map_err(io("create directory", dest_dir))?;
    let dest = dest_dir.join(LAUNCHER_NAME);
    let tmp = dest_dir.join(format!(".{LAUNCHER_NAME}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(&bytes).map_err(io("write", &tmp))?;
        // The umask may have removed bits from the creation mode.
        f.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &dest).map_err(io("rename into place", &dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = std::fs::File::open(dest_dir) {
        let _ = d.sync_all();
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
    fn install_copies_with_mode_0755_and_refuses_a_missing_source() {
        let dir = std::env::temp_dir().join(format!(
            "install-test-{}-{}",
            std::process::id(),
            crate::random::uuid_v4().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src-agent");
        std::fs::write(&src, b"#!/bin/sh\nexit 0\n").unwrap();
        let dest = install_from(&src, &dir.join("shared")).unwrap();
        assert_eq!(dest, dir.join("shared").join(LAUNCHER_NAME));
        assert_eq!(std::fs::read(&dest).unwrap(), b"#!/bin/sh\nexit 0\n");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        // Installing again replaces it atomically.
        std::fs::write(&src, b"v2").unwrap();
        install_from(&src, &dir.join("shared")).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"v2");
        let e = install_from(&dir.join("nope"), &dir.join("shared")).unwrap_err();
        assert!(matches!(e, InstallError::SourceMissing { .. }));
        assert!(e.to_string().contains("nope"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
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
