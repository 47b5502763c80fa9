//! The SSM registration as the agent's Vault files and the state Secret hold it, byte for byte
//! compatible with the original connector (see `spec/ssm-and-vault.md`).
//!
//! A [`Registration`] is the three Vault files' exact bytes plus what was parsed out of them; it
//! can only be built from bytes that form a *complete* registration, so holding one means the
//! agent can start with it. Bytes are never re-encoded: reused state is written back exactly as
//! it was stored.
//!
//! - [`read_vault`] / [`write_vault`]: the files under the Vault directory (atomic writes,
//!   directories 0700, files 0600); [`read_vault_activation`] / [`write_vault_activation`]: our
//!   own marker beside them saying which activation the Vault was registered with.
//! - [`from_secret`] / [`Registration::to_secret_data`] / [`new_state_secret`]: the state Secret.
//! - [`StateStore`]: the one reader and writer of the state Secret (init and the key sync), with
//!   its merge rule ([`merge`]) and its one retry rule.

mod gotime;
mod secret;
mod store;
mod vault;

pub use gotime::format_go_utc;
pub use secret::{
    connector_config, from_secret, new_state_secret, parse_connector_config, secret_name,
    StoredState,
};
pub use store::{merge, Activation, Saved, StateStore, StoreError, Write};
pub use vault::{
    prepare_vault, read_vault, read_vault_activation, write_atomic, write_vault,
    write_vault_activation, VaultError,
};

use std::fmt;
use std::time::SystemTime;

use base64::Engine;
use serde::Serialize;

/// Where the agent sees its Vault; the Manifest names files under this path whatever directory
/// we write to.
pub const AGENT_VAULT_DIR: &str = "/var/lib/amazon/ssm/Vault";
/// Vault files, relative to the Vault directory.
pub const MANIFEST_FILE: &str = "Manifest";
pub const STORE_DIR: &str = "Store";
pub const REGKEY_FILE: &str = "Store/RegistrationKey";
pub const FINGERPRINT_FILE: &str = "Store/InstanceFingerprint";
/// Our marker in the Vault directory: the `connector-config` bytes of the activation the Vault
/// was registered with. The agent ignores it.
pub const ACTIVATION_FILE: &str = "connector-config";

/// Largest Vault file or Secret value accepted; real ones are under 2 KiB. Readers read one byte
/// more, so a larger file is refused rather than cut (a cut file may still parse).
pub const MAX_ITEM: usize = 1 << 20;

/// State Secret data keys.
pub const KEY_MANIFEST: &str = "manifest";
pub const KEY_REGKEY: &str = "regkey";
pub const KEY_FINGERPRINT: &str = "fingerprint";
pub const KEY_CONNECTOR_CONFIG: &str = "connector-config";

/// Why some bytes are not (part of) a complete registration. `item` names the file or the
/// Secret key concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The item is absent or empty.
    Missing { item: String },
    /// The item is there but is not what the agent needs (truncated, not JSON, a field missing).
    Garbled { item: String, detail: String },
}

impl StateError {
    /// The file or Secret key concerned.
    pub fn item(&self) -> &str {
        match self {
            StateError::Missing { item } | StateError::Garbled { item, .. } => item,
        }
    }

    fn garbled(item: &str, detail: impl Into<String>) -> StateError {
        StateError::Garbled {
            item: item.to_string(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Missing { item } => write!(f, "{item} is missing or empty"),
            StateError::Garbled { item, detail } => write!(f, "{item} is not valid: {detail}"),
        }
    }
}

impl std::error::Error for StateError {}

/// A complete registration: the three Vault files' exact bytes and what they say.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    manifest: Vec<u8>,
    regkey: Vec<u8>,
    fingerprint: Vec<u8>,
    instance_id: String,
    region: String,
    fingerprint_id: String,
    private_key_der: Vec<u8>,
}

// Never print the private key.
impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("instance_id", &self.instance_id)
            .field("region", &self.region)
            .field("fingerprint", &self.fingerprint_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct RegKeyOut<'a> {
    #[serde(rename = "instanceID")]
    instance_id: &'a str,
    region: &'a str,
    #[serde(rename = "InstanceType")]
    instance_type: &'a str,
    #[serde(rename = "availabilityZone")]
    availability_zone: &'a str,
    #[serde(rename = "privateKey")]
    private_key: &'a str,
    #[serde(rename = "privateKeyType")]
    private_key_type: &'a str,
    #[serde(rename = "privateKeyCreatedDate")]
    private_key_created_date: &'a str,
}

#[derive(Serialize)]
struct FingerprintOut<'a> {
    fingerprint: &'a str,
    #[serde(rename = "hardwareHash")]
    hardware_hash: serde_json::Map<String, serde_json::Value>,
    #[serde(rename = "similarityThreshold")]
    similarity_threshold: i32,
}

/// The Manifest the original writes: paths as the agent sees them.
pub fn manifest_bytes() -> Vec<u8> {
    format!(
        "{{\"InstanceFingerprint\":\"{AGENT_VAULT_DIR}/{FINGERPRINT_FILE}\",\"RegistrationKey\":\"{AGENT_VAULT_DIR}/{REGKEY_FILE}\"}}"
    )
    .into_bytes()
}

impl Registration {
    /// A fresh registration in the original's exact format. `private_key_pkcs1_der` is the RSA
    /// private key as PKCS#1 DER; `created` becomes `privateKeyCreatedDate` (Go layout, UTC).
    pub fn new(
        instance_id: &str,
        region: &str,
        private_key_pkcs1_der: &[u8],
        created: SystemTime,
        fingerprint: &str,
    ) -> Registration {
        let b64 = base64::engine::general_purpose::STANDARD.encode(private_key_pkcs1_der);
        let date = format_go_utc(created);
        let regkey = RegKeyOut {
            instance_id,
            region,
            instance_type: "",
            availability_zone: "",
            private_key: &b64,
            private_key_type: "Rsa",
            private_key_created_date: &date,
        };
        let fp = FingerprintOut {
            fingerprint,
            hardware_hash: serde_json::Map::new(),
            similarity_threshold: -1,
        };
        Registration {
            manifest: manifest_bytes(),
            // Serializing structs of strings cannot fail.
            regkey: serde_json::to_vec(&regkey).unwrap_or_default(),
            fingerprint: serde_json::to_vec(&fp).unwrap_or_default(),
            instance_id: instance_id.to_string(),
            region: region.to_string(),
            fingerprint_id: fingerprint.to_string(),
            private_key_der: private_key_pkcs1_der.to_vec(),
        }
    }

    /// Validates the three files' bytes as a complete registration, keeping them unchanged.
    /// `names` are what to call the items in errors: (manifest, regkey, fingerprint), e.g. the
    /// file paths or the Secret keys.
    pub fn from_bytes(
        manifest: Vec<u8>,
        regkey: Vec<u8>,
        fingerprint: Vec<u8>,
        names: (&str, &str, &str),
    ) -> Result<Registration, StateError> {
        let (mname, rname, fname) = names;
        for (bytes, name) in [(&manifest, mname), (&regkey, rname), (&fingerprint, fname)] {
            if bytes.len() > MAX_ITEM {
                return Err(StateError::garbled(name, "larger than 1 MiB"));
            }
        }
        let m = parse_object(&manifest, mname)?;
        for field in ["InstanceFingerprint", "RegistrationKey"] {
            non_empty_string(&m, field, mname)?;
        }
        let r = parse_object(&regkey, rname)?;
        let instance_id = non_empty_string(&r, "instanceID", rname)?;
        let region = non_empty_string(&r, "region", rname)?;
        let key_b64 = non_empty_string(&r, "privateKey", rname)?;
        let private_key_der = base64::engine::general_purpose::STANDARD
            .decode(key_b64.as_bytes())
            .map_err(|e| StateError::garbled(rname, format!("privateKey is not base64: {e}")))?;
        if private_key_der.first() != Some(&0x30) {
            return Err(StateError::garbled(
                rname,
                "privateKey is not a DER-encoded key",
            ));
        }
        let f = parse_object(&fingerprint, fname)?;
        let fingerprint_id = non_empty_string(&f, "fingerprint", fname)?;
        Ok(Registration {
            manifest,
            regkey,
            fingerprint,
            instance_id,
            region,
            fingerprint_id,
            private_key_der,
        })
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
    pub fn region(&self) -> &str {
        &self.region
    }
    /// The `fingerprint` value of `Store/InstanceFingerprint`.
    pub fn fingerprint_id(&self) -> &str {
        &self.fingerprint_id
    }
    /// The private key as stored (PKCS#1 DER for keys we or the original made).
    pub fn private_key_der(&self) -> &[u8] {
        &self.private_key_der
    }
    /// Exact bytes of `Manifest`.
    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }
    /// Exact bytes of `Store/RegistrationKey`.
    pub fn regkey(&self) -> &[u8] {
        &self.regkey
    }
    /// Exact bytes of `Store/InstanceFingerprint`.
    pub fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }

    /// Same bytes in all three files.
    pub fn same_files(&self, other: &Registration) -> bool {
        self.manifest == other.manifest
            && self.regkey == other.regkey
            && self.fingerprint == other.fingerprint
    }

    /// The four Secret data keys, as the original writes them.
    pub fn to_secret_data(
        &self,
        activation_id: &str,
    ) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut data = std::collections::BTreeMap::new();
        self.apply_to(&mut data);
        data.insert(
            KEY_CONNECTOR_CONFIG.to_string(),
            connector_config(activation_id),
        );
        data
    }

    /// Sets the three file keys (`manifest`, `regkey`, `fingerprint`) in `data`, leaving every
    /// other key (`connector-config` in particular) as it is.
    pub fn apply_to(&self, data: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        data.insert(KEY_MANIFEST.to_string(), self.manifest.clone());
        data.insert(KEY_REGKEY.to_string(), self.regkey.clone());
        data.insert(KEY_FINGERPRINT.to_string(), self.fingerprint.clone());
    }
}

fn parse_object(
    bytes: &[u8],
    item: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, StateError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(StateError::Missing {
            item: item.to_string(),
        });
    }
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(StateError::garbled(item, "not a JSON object")),
        Err(e) => Err(StateError::garbled(
            item,
            format!("not JSON ({e}); a truncated or half-written file?"),
        )),
    }
}

/// A field looked up the way Go's encoding/json does: exact name first, then ignoring case.
fn get_ci<'a>(
    m: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Option<&'a serde_json::Value> {
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn non_empty_string(
    m: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    item: &str,
) -> Result<String, StateError> {
    match get_ci(m, key) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(serde_json::Value::String(_)) | None | Some(serde_json::Value::Null) => Err(
            StateError::garbled(item, format!("{key} is missing or empty")),
        ),
        Some(_) => Err(StateError::garbled(item, format!("{key} is not a string"))),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Files exactly as the original writes them (built from the spec's examples).
    pub const MANIFEST: &str = r#"{"InstanceFingerprint":"/var/lib/amazon/ssm/Vault/Store/InstanceFingerprint","RegistrationKey":"/var/lib/amazon/ssm/Vault/Store/RegistrationKey"}"#;
    /// A 2048-bit PKCS#1 key would be long; a short DER SEQUENCE is enough for format tests.
    pub const KEY_B64: &str = "MAMCAQA=";
    pub fn regkey(instance: &str) -> String {
        format!(
            r#"{{"instanceID":"{instance}","region":"us-west-2","InstanceType":"","availabilityZone":"","privateKey":"{KEY_B64}","privateKeyType":"Rsa","privateKeyCreatedDate":"2026-11-25 15:04:05.123456789 +0000 UTC"}}"#
        )
    }
    pub const FINGERPRINT: &str = r#"{"fingerprint":"0f8fad5b-d9cb-469f-a165-70867728950e","hardwareHash":{},"similarityThreshold":-1}"#;

    /// A complete registration of these files for `instance`.
    pub fn registration(instance: &str) -> super::Registration {
        super::Registration::from_bytes(
            MANIFEST.into(),
            regkey(instance).into(),
            FINGERPRINT.into(),
            ("m", "r", "f"),
        )
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const NAMES: (&str, &str, &str) = ("manifest", "regkey", "fingerprint");

    #[test]
    fn new_writes_the_original_bytes() {
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY_B64)
            .unwrap();
        let created = UNIX_EPOCH + Duration::new(1_795_619_045, 123_456_789);
        let r = Registration::new(
            "mi-0123456789abcdef0",
            "us-west-2",
            &key,
            created,
            "0f8fad5b-d9cb-469f-a165-70867728950e",
        );
        assert_eq!(r.manifest(), MANIFEST.as_bytes());
        assert_eq!(
            std::str::from_utf8(r.regkey()).unwrap(),
            regkey("mi-0123456789abcdef0")
        );
        assert_eq!(r.fingerprint(), FINGERPRINT.as_bytes());
        assert_eq!(r.private_key_der(), &key[..]);
    }

    #[test]
    fn parses_original_files_and_keeps_bytes() {
        let rk = regkey("eks_c:my-cluster_0123abcd");
        let r = Registration::from_bytes(
            MANIFEST.into(),
            rk.clone().into(),
            FINGERPRINT.into(),
            NAMES,
        )
        .unwrap();
        assert_eq!(r.instance_id(), "eks_c:my-cluster_0123abcd");
        assert_eq!(r.region(), "us-west-2");
        assert_eq!(r.fingerprint_id(), "0f8fad5b-d9cb-469f-a165-70867728950e");
        assert_eq!(r.regkey(), rk.as_bytes());
        // Keys are matched case-insensitively, as the agent does; bytes kept as they were.
        let odd = r#"{"InstanceId":"mi-1","Region":"eu-west-1","PrivateKey":"MAMCAQA="}"#;
        let r2 = Registration::from_bytes(MANIFEST.into(), odd.into(), FINGERPRINT.into(), NAMES)
            .unwrap();
        assert_eq!(r2.instance_id(), "mi-1");
        assert_eq!(r2.regkey(), odd.as_bytes());
        assert!(format!("{r2:?}").contains("mi-1"));
        assert!(!format!("{r2:?}").contains("MAMCAQA"));
    }

    #[test]
    fn partial_or_garbled_files_are_refused() {
        let rk = regkey("mi-1");
        // Every strict prefix of a file (a half-written rotation) is refused.
        for cut in 0..rk.len() {
            let e = Registration::from_bytes(
                MANIFEST.into(),
                rk.as_bytes()[..cut].to_vec(),
                FINGERPRINT.into(),
                NAMES,
            )
            .unwrap_err();
            assert_eq!(e.item(), "regkey", "cut {cut}: {e}");
        }
        for cut in 0..FINGERPRINT.len() {
            assert!(Registration::from_bytes(
                MANIFEST.into(),
                rk.clone().into(),
                FINGERPRINT[..cut].into(),
                NAMES
            )
            .is_err());
        }
        let cases: [(&str, &str); 5] = [
            (
                r#"{"instanceID":"","region":"r","privateKey":"MAMCAQA="}"#,
                "instanceID",
            ),
            (r#"{"instanceID":"i","privateKey":"MAMCAQA="}"#, "region"),
            (
                r#"{"instanceID":"i","region":"r","privateKey":"***"}"#,
                "base64",
            ),
            (
                r#"{"instanceID":"i","region":"r","privateKey":"aGVsbG8="}"#,
                "DER",
            ),
            (r#"["instanceID"]"#, "object"),
        ];
        for (rk, why) in cases {
            let e = Registration::from_bytes(MANIFEST.into(), rk.into(), FINGERPRINT.into(), NAMES)
                .unwrap_err();
            assert!(e.to_string().contains(why), "{rk}: {e}");
        }
        let e = Registration::from_bytes(Vec::new(), regkey("i").into(), FINGERPRINT.into(), NAMES)
            .unwrap_err();
        assert_eq!(
            e,
            StateError::Missing {
                item: "manifest".into()
            }
        );
    }
}
