//! Secrets: get, create, update, and update-or-replace on conflict.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Client, KubeError};

/// A Secret as we read and write it. Fields we do not use (annotations, owner references, …)
/// are carried through `other` untouched, so an update never drops what someone else put there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Secret {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Values are raw bytes (base64 only on the wire).
    pub data: BTreeMap<String, Vec<u8>>,
    pub type_: String,
    /// Empty for a Secret not yet created.
    pub resource_version: String,
    other_metadata: serde_json::Map<String, serde_json::Value>,
}

/// What an update does when the server says the Secret changed since we read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Return the Conflict error.
    Fail,
    /// Re-read the Secret, keep its metadata, and write our data over it.
    Replace,
}

#[derive(Serialize, Deserialize, Default)]
struct Wire {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: WireMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    data: BTreeMap<String, String>,
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    type_: String,
}

#[derive(Serialize, Deserialize, Default)]
struct WireMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(
        rename = "resourceVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    resource_version: String,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl Secret {
    /// A new Opaque Secret.
    pub fn new(namespace: &str, name: &str) -> Secret {
        Secret {
            name: name.to_string(),
            namespace: namespace.to_string(),
            type_: "Opaque".into(),
            ..Secret::default()
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let wire = Wire {
            api_version: "v1".into(),
            kind: "Secret".into(),
            metadata: WireMeta {
                name: self.name.clone(),
                namespace: self.namespace.clone(),
                labels: self.labels.clone(),
                resource_version: self.resource_version.clone(),
                other: self.other_metadata.clone(),
            },
            data: self
                .data
                .iter()
                .map(|(k, v)| (k.clone(), b64.encode(v)))
                .collect(),
            type_: self.type_.clone(),
        };
        // Serializing maps of strings cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Secret, String> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if wire.kind != "Secret" {
            return Err(format!("expected kind Secret, got {:?}", wire.kind));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut data = BTreeMap::new();
        for (k, v) in wire.data {
            let bytes = b64
                .decode(v.as_bytes())
                .map_err(|e| format!("data key {k:?} is not base64: {e}"))?;
            data.insert(k, bytes);
        }
        Ok(Secret {
            name: wire.metadata.name,
            namespace: wire.metadata.namespace,
            labels: wire.metadata.labels,
            data,
            type_: wire.type_,
            resource_version: wire.metadata.resource_version,
            other_metadata: wire.metadata.other,
        })
    }
}

fn collection_path(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/secrets")
}

fn object_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/secrets/{name}")
}

fn decode(what: &str, bytes: &[u8]) -> Result<Secret, KubeError> {
    Secret::from_json(bytes).map_err(|detail| KubeError::BadResponse {
        what: what.to_string(),
        detail,
    })
}

impl Client {
    pub fn get_secret(&self, namespace: &str, name: &str) -> Result<Secret, KubeError> {
        let path = object_path(namespace, name);
        let body = self.request("GET", &path, None)?;
        decode(&format!("GET {path}"), &body)
    }

    /// Creates the Secret; `AlreadyExists` comes back as a Conflict.
    pub fn create_secret(&self, secret: &Secret) -> Result<Secret, KubeError> {
        let path = collection_path(&secret.namespace);
        let mut s = secret.clone();
        s.resource_version.clear();
        let body = self.request("POST", &path, Some(&s.to_json()))?;
        decode(&format!("POST {path}"), &body)
    }

    /// Updates the Secret at its `resource_version` (optimistic concurrency); on a conflict
    /// either fails or replaces, as the caller chooses.
    pub fn update_secret(
        &self,
        secret: &Secret,
        on_conflict: OnConflict,
    ) -> Result<Secret, KubeError> {
        let path = object_path(&secret.namespace, &secret.name);
        match self.request("PUT", &path, Some(&secret.to_json())) {
            Ok(body) => decode(&format!("PUT {path}"), &body),
            Err(KubeError::Conflict { .. }) if on_conflict == OnConflict::Replace => {
                let current = self.get_secret(&secret.namespace, &secret.name)?;
                let mut merged = secret.clone();
                merged.resource_version = current.resource_version;
                merged.other_metadata = current.other_metadata;
                let body = self.request("PUT", &path, Some(&merged.to_json()))?;
                decode(&format!("PUT {path}"), &body)
            }
            Err(e) => Err(e),
        }
    }

    pub fn delete_secret(&self, namespace: &str, name: &str) -> Result<(), KubeError> {
        self.request("DELETE", &object_path(namespace, name), None)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bytes_and_keeps_unknown_metadata() {
        let json = br#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s","namespace":"n","resourceVersion":"7","annotations":{"a":"b"},"labels":{"name":"s"}},"type":"Opaque","data":{"k":"AP8A"}}"#;
        let s = Secret::from_json(json).unwrap();
        assert_eq!(s.data["k"], vec![0u8, 0xff, 0]);
        assert_eq!(s.resource_version, "7");
        let out: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(out["metadata"]["annotations"]["a"], "b");
        assert_eq!(out["data"]["k"], "AP8A");
        assert_eq!(out["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn rejects_bad_base64_and_wrong_kind() {
        assert!(Secret::from_json(br#"{"kind":"Secret","data":{"k":"!!"}}"#).is_err());
        assert!(Secret::from_json(br#"{"kind":"ConfigMap"}"#).is_err());
        assert!(Secret::from_json(b"not json").is_err());
    }
}
