//! Our Kubernetes client against the real kube-apiserver: Secrets, Status errors, TLS by IP.

mod common;

use std::time::Duration;

use eks_connector::kube::{KubeError, OnConflict, Secret};
use serde_json::json;

fn secret_rules(verbs: &[&str]) -> serde_json::Value {
    json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": verbs}])
}

#[test]
fn server_version_is_1_37_over_tls_to_an_ip_address() {
    let env = common::cluster();
    let ns = env.namespace("version");
    // Nobody granted /version to this ServiceAccount explicitly: system:discovery allows it to
    // every authenticated user, which is what the original's ClusterRole also relies on.
    let v = ns.client().server_version().expect("GET /version");
    assert!(v.starts_with("v1.37."), "server reports {v}");
    assert_eq!(env.endpoint.host, "127.0.0.1");
}

#[test]
fn missing_secret_is_not_found() {
    let env = common::cluster();
    let ns = env.namespace("notfound");
    ns.create_role("secrets", secret_rules(&["get"]));
    ns.bind("Role", "secrets", "ServiceAccount", "connector");
    match ns.client().get_secret(&ns.name, "nope") {
        Err(KubeError::NotFound { message }) => assert!(message.contains("nope"), "{message}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn create_then_get_round_trips_bytes_exactly() {
    let env = common::cluster();
    let ns = env.namespace("roundtrip");
    ns.create_role("secrets", secret_rules(&["get", "create", "update"]));
    ns.bind("Role", "secrets", "ServiceAccount", "connector");
    let client = ns.client();
    let mut s = Secret::new(&ns.name, "state");
    let binary: Vec<u8> = (0..=255u8).chain([0, 0xff, b'\n']).collect();
    s.data.insert("binary".into(), binary.clone());
    s.data.insert("json".into(), br#"{"a":"b"}"#.to_vec());
    s.labels.insert("name".into(), "state".into());
    let created = client.create_secret(&s).expect("create");
    assert!(!created.resource_version.is_empty());
    let got = client.get_secret(&ns.name, "state").expect("get");
    assert_eq!(got.data["binary"], binary);
    assert_eq!(got.data["json"], br#"{"a":"b"}"#.to_vec());
    assert_eq!(got.labels["name"], "state");
    assert_eq!(got.type_, "Opaque");
    // Creating it again is a Conflict that says it already exists.
    match client.create_secret(&s) {
        Err(KubeError::Conflict { already_exists, .. }) => assert!(already_exists),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
}

#[test]
fn stale_resource_version_is_a_conflict_unless_replace_is_chosen() {
    let env = common::cluster();
    let ns = env.namespace("conflict");
    ns.create_role("secrets", secret_rules(&["get", "create", "update"]));
    ns.bind("Role", "secrets", "ServiceAccount", "connector");
    let client = ns.client();
    let mut s = Secret::new(&ns.name, "state");
    s.data.insert("k".into(), b"v1".to_vec());
    let first = client.create_secret(&s).unwrap();
    let mut newer = first.clone();
    newer.data.insert("k".into(), b"v2".to_vec());
    client.update_secret(&newer, OnConflict::Fail).unwrap();

    let mut stale = first.clone();
    stale.data.insert("k".into(), b"v3".to_vec());
    match client.update_secret(&stale, OnConflict::Fail) {
        Err(e @ KubeError::Conflict { .. }) => {
            assert!(e.to_string().contains("modified"), "{e}");
            assert!(e.is_transient());
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(
        client.get_secret(&ns.name, "state").unwrap().data["k"],
        b"v2"
    );
    let replaced = client.update_secret(&stale, OnConflict::Replace).unwrap();
    assert_eq!(replaced.data["k"], b"v3");
    assert_eq!(
        client.get_secret(&ns.name, "state").unwrap().data["k"],
        b"v3"
    );
}

#[test]
fn update_without_the_verb_is_forbidden_with_the_servers_message() {
    let env = common::cluster();
    let ns = env.namespace("forbidden");
    ns.create_role("secrets", secret_rules(&["get", "create"]));
    ns.bind("Role", "secrets", "ServiceAccount", "connector");
    let client = ns.client();
    let mut s = Secret::new(&ns.name, "state");
    s.data.insert("k".into(), b"v".to_vec());
    let created = client.create_secret(&s).unwrap();
    match client.update_secret(&created, OnConflict::Fail) {
        Err(KubeError::Forbidden { message }) => {
            assert!(
                message.contains("cannot update resource \"secrets\""),
                "{message}"
            );
            assert!(message.contains(&format!("system:serviceaccount:{}:connector", ns.name)));
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

#[test]
fn wrong_or_revoked_token_is_unauthorized() {
    let env = common::cluster();
    let ns = env.namespace("unauth");
    let wrong = env.dir.join(format!("wrong-token-{}", ns.name));
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::write(wrong.join("token"), "not-a-token").unwrap();
    std::fs::copy(env.ca_path(), wrong.join("ca.crt")).unwrap();
    match ns.client_for(&wrong).server_version() {
        Err(e @ KubeError::Unauthorized { .. }) => {
            assert!(e.to_string().contains("token"), "{e}")
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    // A token whose ServiceAccount was deleted is revoked at once.
    let dir = ns.create_sa("shortlived");
    ns.client_for(&dir)
        .server_version()
        .expect("valid before deletion");
    env.admin_request(
        "DELETE",
        &format!("/api/v1/namespaces/{}/serviceaccounts/shortlived", ns.name),
        None,
    )
    .unwrap();
    let revoked = common::wait_for(Duration::from_secs(10), || {
        match ns.client_for(&dir).server_version() {
            Err(KubeError::Unauthorized { .. }) => Some(()),
            _ => None,
        }
    });
    assert!(
        revoked.is_some(),
        "token of a deleted ServiceAccount still accepted"
    );
}

#[test]
fn a_rotated_token_file_is_picked_up_without_a_new_client() {
    let env = common::cluster();
    let ns = env.namespace("rotate");
    ns.create_role("secrets", secret_rules(&["get"]));
    ns.bind("Role", "secrets", "ServiceAccount", "reader");
    let reader_dir = ns.create_sa("reader");
    let mut s = Secret::new(&ns.name, "s");
    s.data.insert("k".into(), b"v".to_vec());
    env.admin().create_secret(&s).unwrap();

    let client = ns.client(); // `connector`: no RBAC at all
    assert!(matches!(
        client.get_secret(&ns.name, "s"),
        Err(KubeError::Forbidden { .. })
    ));
    // Rotate as the kubelet does: write elsewhere, rename over.
    let tmp = ns.sa_dir.join("token.tmp");
    std::fs::copy(reader_dir.join("token"), &tmp).unwrap();
    std::fs::rename(&tmp, ns.sa_dir.join("token")).unwrap();
    let ok = common::wait_for(Duration::from_secs(5), || {
        client.get_secret(&ns.name, "s").ok()
    });
    assert_eq!(ok.expect("new token never used").data["k"], b"v");
}

#[test]
fn untrusted_server_certificate_is_refused() {
    let env = common::cluster();
    let ns = env.namespace("tls");
    let dir = env.dir.join(format!("other-ca-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(ns.sa_dir.join("token"), dir.join("token")).unwrap();
    // A CA that did not sign the server's certificate.
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.crt"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    match ns.client_for(&dir).server_version() {
        Err(e @ KubeError::Transport { .. }) => {
            let m = e.to_string();
            assert!(m.contains("127.0.0.1"), "{m}");
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}
