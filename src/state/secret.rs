//! The state Secret: `<prefix>-<ordinal>`, type Opaque, label `name=<secret name>`, data keys
//! `manifest`, `regkey`, `fingerprint` (the Vault files' exact bytes) and `connector-config`
//! (`{"activationId":"<id>"}`).

use std::collections::BTreeMap;

use super::{
    Registration, StateError, KEY_CONNECTOR_CONFIG, KEY_FINGERPRINT, KEY_MANIFEST, KEY_REGKEY,
};
use crate::kube::Secret;

/// `<prefix>-<ordinal>`.
pub fn secret_name(prefix: &str, ordinal: &str) -> String {
    format!("{prefix}-{ordinal}")
}

/// `{"activationId":"<id>"}`, as the original writes it.
pub fn connector_config(activation_id: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct C<'a> {
        #[serde(rename = "activationId")]
        activation_id: &'a str,
    }
    serde_json::to_vec(&C { activation_id }).unwrap_or_default()
}

/// The activation id in `connector-config` bytes; `""` when the key is absent (very old state).
pub fn parse_connector_config(bytes: &[u8], item: &str) -> Result<String, StateError> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(m)) => {
            let v = m.get("activationId").or_else(|| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("activationId"))
                    .map(|(_, v)| v)
            });
            match v {
                None | Some(serde_json::Value::Null) => Ok(String::new()),
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(StateError::Garbled {
                    item: item.to_string(),
                    detail: "activationId is not a string".into(),
                }),
            }
        }
        Ok(_) => Err(StateError::Garbled {
            item: item.to_string(),
            detail: "not a JSON object".into(),
        }),
        Err(e) => Err(StateError::Garbled {
            item: item.to_string(),
            detail: format!("not JSON ({e})"),
        }),
    }
}

/// What a state Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredState {
    pub registration: Registration,
    /// `""` when `connector-config` or its `activationId` is absent or empty (very old state).
    pub activation_id: String,
}

/// Reads a state Secret. `Ok(None)`: the Secret holds no registration (no data, or none of
/// the three file keys), so registering loses nothing. An error names the data key that is not
/// valid: such a Secret must not be touched.
pub fn from_secret(secret: &Secret) -> Result<Option<StoredState>, StateError> {
    let get = |k: &str| secret.data.get(k).filter(|v| !v.is_empty()).cloned();
    let (m, r, f) = (get(KEY_MANIFEST), get(KEY_REGKEY), get(KEY_FINGERPRINT));
    if m.is_none() && r.is_none() && f.is_none() {
        return Ok(None);
    }
    let registration = Registration::from_bytes(
        m.unwrap_or_default(),
        r.unwrap_or_default(),
        f.unwrap_or_default(),
        (KEY_MANIFEST, KEY_REGKEY, KEY_FINGERPRINT),
    )?;
    let activation_id = match get(KEY_CONNECTOR_CONFIG) {
        None => String::new(),
        Some(bytes) => parse_connector_config(&bytes, KEY_CONNECTOR_CONFIG)?,
    };
    Ok(Some(StoredState {
        registration,
        activation_id,
    }))
}

/// A new state Secret exactly as the original creates it.
pub fn new_state_secret(
    namespace: &str,
    name: &str,
    registration: &Registration,
    activation_id: &str,
) -> Secret {
    let mut s = Secret::new(namespace, name);
    s.labels = BTreeMap::from([("name".to_string(), name.to_string())]);
    s.data = registration.to_secret_data(activation_id);
    s
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use base64::Engine;

    /// A Secret exactly as the original writes it (its JSON on the wire).
    fn original_secret_json(instance: &str, config: &str) -> String {
        let b = base64::engine::general_purpose::STANDARD;
        format!(
            r#"{{"kind":"Secret","apiVersion":"v1","metadata":{{"name":"eks-connector-state-0","namespace":"eks-connector","resourceVersion":"42","labels":{{"name":"eks-connector-state-0"}}}},"data":{{"connector-config":"{}","fingerprint":"{}","manifest":"{}","regkey":"{}"}},"type":"Opaque"}}"#,
            b.encode(config),
            b.encode(FINGERPRINT),
            b.encode(MANIFEST),
            b.encode(regkey(instance)),
        )
    }

    #[test]
    fn reads_the_originals_secret() {
        let s =
            Secret::from_json(original_secret_json("mi-1", r#"{"activationId":"a-1"}"#).as_bytes())
                .unwrap();
        let st = from_secret(&s).unwrap().unwrap();
        assert_eq!(st.activation_id, "a-1");
        assert_eq!(st.registration.instance_id(), "mi-1");
        assert_eq!(st.registration.regkey(), regkey("mi-1").as_bytes());
        // And writes the same data back.
        let ours = new_state_secret(
            "eks-connector",
            "eks-connector-state-0",
            &st.registration,
            "a-1",
        );
        assert_eq!(ours.data, s.data);
        assert_eq!(ours.labels, s.labels);
        assert_eq!(ours.type_, "Opaque");
    }

    #[test]
    fn empty_and_old_secrets() {
        let mut s = Secret::new("ns", "x");
        assert_eq!(from_secret(&s).unwrap(), None);
        s.data.insert(
            KEY_CONNECTOR_CONFIG.into(),
            b"{\"activationId\":\"a\"}".to_vec(),
        );
        assert_eq!(from_secret(&s).unwrap(), None);
        for cfg in ["{}", r#"{"activationId":""}"#] {
            let json = original_secret_json("mi-1", cfg);
            let s = Secret::from_json(json.as_bytes()).unwrap();
            assert_eq!(from_secret(&s).unwrap().unwrap().activation_id, "");
        }
        let mut s = Secret::from_json(original_secret_json("mi-1", "{}").as_bytes()).unwrap();
        s.data.remove(KEY_CONNECTOR_CONFIG);
        assert_eq!(from_secret(&s).unwrap().unwrap().activation_id, "");
    }

    #[test]
    fn garbled_secrets_name_the_key() {
        let base = Secret::from_json(original_secret_json("mi-1", "{}").as_bytes()).unwrap();
        let mut s = base.clone();
        s.data
            .insert(KEY_REGKEY.into(), b"{\"instanceID\":".to_vec());
        assert_eq!(from_secret(&s).unwrap_err().item(), "regkey");
        let mut s = base.clone();
        s.data.remove(KEY_FINGERPRINT);
        assert_eq!(
            from_secret(&s).unwrap_err(),
            StateError::Missing {
                item: "fingerprint".into()
            }
        );
        let mut s = base;
        s.data
            .insert(KEY_CONNECTOR_CONFIG.into(), b"activation".to_vec());
        assert_eq!(from_secret(&s).unwrap_err().item(), "connector-config");
    }

    #[test]
    fn connector_config_bytes() {
        assert_eq!(connector_config("abc"), br#"{"activationId":"abc"}"#);
        assert_eq!(
            secret_name("eks-connector-state", "1"),
            "eks-connector-state-1"
        );
    }
}
