//! The step that brings the real peers (tests/peers/fetch-build.sh): they build, they run, and
//! when no archive can be had the step fails saying where to get one.

#[path = "support/peers.rs"]
mod peers;

use std::path::Path;
use std::process::Command;

#[test]
fn original_connector_builds_and_ships_its_chart_and_manifest() {
    let out = Command::new(peers::eks_connector().binary("eks-connector"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "eks-connector --help: {out:?}");
    assert!(help.contains("init") && help.contains("server"), "{help}");
    let chart = std::fs::read_to_string(peers::original_chart().join("Chart.yaml")).unwrap();
    assert!(chart.contains("version: 0.0.11"), "{chart}");
    let manifest = std::fs::read_to_string(peers::original_manifest()).unwrap();
    assert!(manifest.contains("kind: StatefulSet"), "{manifest}");
}

#[test]
fn ssm_agent_builds_its_three_binaries_root_owned_and_read_only() {
    use std::os::unix::fs::MetadataExt;
    let agent = peers::ssm_agent();
    for name in ["amazon-ssm-agent", "ssm-agent-worker", "ssm-session-worker"] {
        let meta = std::fs::metadata(agent.binary(name)).unwrap();
        // The agent reads the config beside its binary only when it is like this.
        assert_eq!(meta.mode() & 0o7777, 0o555, "{name}");
        assert_eq!(meta.uid(), 0, "{name}");
    }
    let out = Command::new(agent.binary("amazon-ssm-agent"))
        .arg("-version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SSM Agent version: 3."), "{out:?}");
    assert!(agent
        .src
        .join("agent/managedInstances/vault/fsvault")
        .is_dir());
}

/// A copy of the script where neither the environment nor ../shared/peers has the archive and
/// GitHub cannot be reached: it must fail, naming the variable and the URL.
#[test]
fn without_any_archive_the_step_fails_saying_where_to_get_one() {
    let tmp = std::env::temp_dir().join(format!("peers-missing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("repo/tests/peers")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/fetch-build.sh"),
        tmp.join("repo/tests/peers/fetch-build.sh"),
    )
    .unwrap();
    let out = Command::new("bash")
        .arg(tmp.join("repo/tests/peers/fetch-build.sh"))
        .arg("ssm-agent")
        .env("EKS_CONNECTOR_CACHE", tmp.join("cache"))
        .env_remove("SSM_AGENT_SRC")
        // No route to GitHub, whatever this machine has.
        .env("https_proxy", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "nothing built, no directory printed");
    assert!(err.contains("SSM_AGENT_SRC"), "{err}");
    assert!(
        err.contains("https://github.com/aws/amazon-ssm-agent/archive/1c217c89b42de51d4f4063363d8ec1f2eef56055.tar.gz"),
        "{err}"
    );

    // An archive that is not the pinned commit is refused, not built.
    let wrong = tmp.join("wrong.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&wrong)
        .arg("-C")
        .arg(&tmp)
        .arg("repo")
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("bash")
        .arg(tmp.join("repo/tests/peers/fetch-build.sh"))
        .arg("ssm-agent")
        .env("EKS_CONNECTOR_CACHE", tmp.join("cache"))
        .env("SSM_AGENT_SRC", &wrong)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not amazon-ssm-agent at commit"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
}
