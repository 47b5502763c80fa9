//! A container's environment as the kubelet makes it from a rendered pod spec: `value`s with
//! `$(VAR)` expanded from what is defined before them, `configMapKeyRef`/`secretKeyRef` read from
//! the rendered (or fetched) objects, an optional key that is absent leaving the variable out.
//! `fieldRef`s are left out (nothing here needs them).
#![allow(dead_code)]

use base64::Engine;
use serde_json::Value;

/// A key of a ConfigMap or Secret among `objects` (Secret data decoded), if there.
pub fn key(objects: &[Value], kind: &str, name: &str, key: &str) -> Option<String> {
    let o = objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)?;
    let v = o["data"][key].as_str()?;
    Some(if kind == "Secret" {
        let bytes = base64::engine::general_purpose::STANDARD
            // kustomize folds long base64 values across lines.
            .decode(v.split_whitespace().collect::<String>())
            .unwrap_or_else(|e| panic!("{kind} {name} key {key}: {e}: {v:?}"));
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        v.to_string()
    })
}

/// `base` (what the kubelet gives every container: KUBERNETES_SERVICE_HOST…), then `container`'s
/// `env` in order, resolved against `objects`. Panics on a required key that is not there.
pub fn resolve(
    objects: &[Value],
    container: &Value,
    base: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = base.to_vec();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            let mut v = v.to_string();
            for (k, val) in &env {
                v = v.replace(&format!("$({k})"), val);
            }
            Some(v)
        } else {
            let from = &e["valueFrom"];
            let (kind, r) = if from["configMapKeyRef"].is_object() {
                ("ConfigMap", &from["configMapKeyRef"])
            } else if from["secretKeyRef"].is_object() {
                ("Secret", &from["secretKeyRef"])
            } else {
                continue;
            };
            let v = key(
                objects,
                kind,
                r["name"].as_str().unwrap_or_default(),
                r["key"].as_str().unwrap_or_default(),
            );
            assert!(
                v.is_some() || r["optional"] == true,
                "env {name}: {kind} key {r} is missing and not optional"
            );
            v
        };
        if let Some(v) = value {
            env.retain(|(k, _)| *k != name);
            env.push((name, v));
        }
    }
    env
}

/// The variables that steer the traffic to AWS (proxy, CA, endpoint).
pub const EGRESS: [&str; 7] = [
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "AWS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "AWS_ENDPOINT_URL_SSM",
];

/// Only the egress variables of an environment.
pub fn egress(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    env.retain(|(k, _)| EGRESS.contains(&k.as_str()));
    env
}
