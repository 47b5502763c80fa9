//! `eks-connector-agent` as a real process, supervising a fake SSM agent
//! (tests/fixtures/fake_agent.sh) against the real kube-apiserver: key-rotation sync, RBAC
//! refusals, signals, reaping, exit codes, and the not-initialised Vault.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{free_port, wait_for, TestNamespace};
use eks_connector::state::{self, Registration};
use serde_json::json;

const SECRET: &str = "eks-connector-state-0";
const POD: &str = "eks-connector-0";
const ACTIVATION: &str = "3f1e6a52-7c0b-4d8e-9a4f-2b6c8d0e1f23";

fn fake_agent() -> PathBuf {
    common::repo_root().join("tests/fixtures/fake_agent.sh")
}

fn tempdir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("agent-test-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A registration with a realistically sized (random) key, so the RegistrationKey file is
/// ~1.7 KB as the real one is and is written in several pieces.
fn registration(instance: &str) -> Registration {
    let mut key = vec![0u8; 1190];
    eks_connector::random::fill(&mut key).unwrap();
    key[0] = 0x30;
    let fp = eks_connector::random::uuid_v4().unwrap();
    Registration::new(instance, "us-west-2", &key, SystemTime::now(), &fp)
}

/// The Role the connector ships (manifests/base/role.yaml) when it exists, so that a verb missing
/// there fails these tests; otherwise the spec's rules.
fn grant(ns: &TestNamespace) -> (String, String) {
    let manifest = common::repo_root().join("manifests/base/role.yaml");
    let role = if manifest.exists() {
        ns.apply_role_from_manifest(&manifest)
    } else {
        ns.create_role(
            "eks-connector-agent",
            json!([
                {"apiGroups": [""], "resources": ["secrets"],
                 "resourceNames": ["eks-connector-state-0", "eks-connector-state-1"],
                 "verbs": ["get", "update"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}
            ]),
        );
        "eks-connector-agent".to_string()
    };
    let binding = ns.bind("Role", &role, "ServiceAccount", &ns.sa_name);
    (role, binding)
}

struct Setup {
    work: PathBuf,
    ns: TestNamespace,
    role: String,
    binding: String,
    vault: PathBuf,
    fake: PathBuf,
    /// What the Secret and the Vault hold at the start.
    initial: Registration,
}

/// A namespace with the connector's RBAC, a Vault as the init container leaves it, and the state
/// Secret as the init container writes it.
fn setup(tag: &str) -> Setup {
    let ns = common::cluster().namespace(tag);
    let (role, binding) = grant(&ns);
    let work = tempdir(tag);
    let vault = work.join("vault");
    let fake = work.join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let initial = registration("mi-0123456789abcdef0");
    state::write_vault(&vault, &initial).unwrap();
    state::write_vault_activation(&vault, ACTIVATION).unwrap();
    let secret = state::new_state_secret(&ns.name, SECRET, &initial, ACTIVATION);
    common::cluster().admin().create_secret(&secret).unwrap();
    Setup {
        work,
        ns,
        role,
        binding,
        vault,
        fake,
        initial,
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Kept when the test failed, for its launcher.log.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

struct Launcher {
    child: Child,
    log: PathBuf,
    fake: PathBuf,
    health: u16,
    status: Option<ExitStatus>,
}

impl Launcher {
    fn start(s: &Setup, agent_args: &[&str], env: &[(&str, &str)]) -> Launcher {
        Launcher::start_under(&[], s, agent_args, env)
    }

    /// With extra launcher flags (before `--`).
    fn start_with_flags(s: &Setup, flags: &[&str], agent_args: &[&str]) -> Launcher {
        let env = [("LAUNCHER_TEST_FLAGS", flags.join("\n"))];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Launcher::start_under(&[], s, agent_args, &env)
    }

    /// Runs the launcher as PID 1 of a new pid namespace (with its own /proc), as in a
    /// container: `pid()` is then `unshare`'s, and [`Launcher::host_pid`] the launcher's.
    fn start_as_pid1(s: &Setup, agent_args: &[&str], env: &[(&str, &str)]) -> Launcher {
        let mut prefix = vec!["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            prefix.extend(["--user", "--map-root-user"]);
        }
        Launcher::start_under(&prefix, s, agent_args, env)
    }

    fn start_under(
        prefix: &[&str],
        s: &Setup,
        agent_args: &[&str],
        env: &[(&str, &str)],
    ) -> Launcher {
        let health = free_port();
        let log = s.fake.join("launcher.log");
        // The benchmark may point at another build (the static musl binary that ships).
        let bin = std::env::var("EKS_CONNECTOR_AGENT_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_eks-connector-agent").to_string());
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg(format!("--state.baseDir={}", s.vault.display()))
            .args(["--state.secretNamespace", &s.ns.name])
            .arg("--serviceaccount.dir")
            .arg(&s.ns.sa_dir)
            .arg(format!("--health.addr=127.0.0.1:{health}"))
            .args(
                env.iter()
                    .filter(|(k, _)| *k == "LAUNCHER_TEST_FLAGS")
                    .flat_map(|(_, v)| v.split('\n').filter(|f| !f.is_empty())),
            )
            .arg("--")
            .arg("/bin/sh")
            .arg(fake_agent())
            .args(agent_args)
            .env("POD_NAME", POD)
            .env("RUST_LOG", "info,eks_connector=debug")
            .env("FAKE_DIR", &s.fake)
            .env("FAKE_VAULT", &s.vault)
            .envs(s.ns.kube_env())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Launcher {
            child: cmd.spawn().unwrap(),
            log,
            fake: s.fake.clone(),
            health,
            status: None,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The launcher's stderr, lossily: the fake agent shares it, and one stray non-UTF-8 byte
    /// must not hide every line from the assertions.
    fn log(&self) -> String {
        match std::fs::read(&self.log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log.display()),
        }
    }

    fn agent_pid(&self) -> i32 {
        let p = self.fake.join("agent.pid");
        wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(&p).ok()?.trim().parse().ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "the fake agent did not start; launcher log:\n{}",
                self.log()
            )
        })
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.status = Some(st);
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the launcher did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// `(status code, body)` of GET /readyz.
    fn readyz(&self) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.health)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Some((code, body))
    }

    fn wait_ready(&self) {
        wait_for(Duration::from_secs(30), || {
            self.readyz().filter(|(c, _)| *c == 200)
        })
        .unwrap_or_else(|| {
            panic!(
                "/readyz never became 200 (last {:?}); log:\n{}",
                self.readyz(),
                self.log()
            )
        });
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if self.status.is_none() && self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Whatever the fake agent and its children are still doing, stop it.
        for f in ["agent.pid", "grandchild.pid"] {
            if let Some(pid) = std::fs::read_to_string(self.fake.join(f))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                // SAFETY: plain kill(2); at worst the pid is gone.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn secret_data(ns: &TestNamespace) -> std::collections::BTreeMap<String, Vec<u8>> {
    common::cluster()
        .admin()
        .get_secret(&ns.name, SECRET)
        .unwrap()
        .data
}

/// Asks the fake agent to rotate the key to `new` (bytes of a new Store/RegistrationKey).
fn request_rotation(fake: &Path, new: &[u8]) {
    std::fs::write(fake.join("rotate.tmp"), new).unwrap();
    std::fs::rename(fake.join("rotate.tmp"), fake.join("rotate")).unwrap();
}

fn stat_of(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    Some((f.next()?.chars().next()?, f.next()?.parse().ok()?))
}

/// Children of `parent`: `(pid, state)`.
fn children(parent: i32) -> Vec<(i32, char)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| match stat_of(pid) {
            Some((state, pp)) if pp == parent => Some((pid, state)),
            _ => None,
        })
        .collect()
}

/// Children of `parent` in state Z.
fn zombie_children(parent: i32) -> Vec<i32> {
    children(parent)
        .into_iter()
        .filter(|(_, state)| *state == 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn a_slow_rotation_reaches_the_secret_exactly_and_never_half_written() {
    let s = setup("rotate");
    let mut l = Launcher::start(&s, &[], &[]);
    l.wait_ready();
    let old = s.initial.regkey().to_vec();
    let new = registration("mi-0123456789abcdef0").regkey().to_vec();
    assert_ne!(old, new);
    request_rotation(&s.fake, &new);

    // Poll the Secret (and the file) throughout the slow write: the Secret must only ever hold
    // the old bytes or the new ones, while the file is seen half-written on disk.
    let vault_key = s.vault.join("Store/RegistrationKey");
    let mut saw_partial_file = false;
    let mut saw_new = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let data = secret_data(&s.ns);
        let regkey = &data["regkey"];
        assert!(
            *regkey == old || *regkey == new,
            "the Secret holds a partial key ({} bytes of {}): {:?}",
            regkey.len(),
            new.len(),
            String::from_utf8_lossy(regkey)
        );
        let on_disk = std::fs::read(&vault_key).unwrap();
        if on_disk != old && on_disk != new {
            saw_partial_file = true;
        }
        if *regkey == new {
            saw_new = Some(data);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        saw_partial_file,
        "the fake agent never left a half-written file to see"
    );
    // The launcher did look at settled half-written files, and refused them.
    assert!(
        l.log().contains("Vault not complete yet"),
        "the launcher never saw a settled partial file (slow pieces vs quiet period?):\n{}",
        l.log()
    );
    let data = saw_new
        .unwrap_or_else(|| panic!("the new key never reached the Secret; log:\n{}", l.log()));
    assert!(
        s.fake.join("rotated").exists(),
        "the Secret changed before the rotation finished"
    );
    assert_eq!(data["regkey"], new);
    assert_eq!(data["regkey"], std::fs::read(&vault_key).unwrap());
    assert_eq!(data["manifest"], s.initial.manifest());
    assert_eq!(data["fingerprint"], s.initial.fingerprint());
    assert_eq!(
        data["connector-config"],
        state::connector_config(ACTIVATION)
    );
    assert_eq!(data.len(), 4, "{:?}", data.keys());
    let secret = common::cluster()
        .admin()
        .get_secret(&s.ns.name, SECRET)
        .unwrap();
    assert_eq!(secret.labels.get("name").map(String::as_str), Some(SECRET));
    l.wait_ready();
    assert!(l.running());
    assert!(!l.log().contains(" ERROR "), "{}", l.log());
}

#[test]
fn a_launcher_started_after_a_rotation_saves_it_at_start() {
    let s = setup("atstart");
    // The agent rotated while no launcher ran: the Vault is newer than the Secret.
    let rotated = registration("mi-0123456789abcdef0");
    std::fs::write(s.vault.join("Store/RegistrationKey"), rotated.regkey()).unwrap();
    assert_eq!(secret_data(&s.ns)["regkey"], s.initial.regkey());
    let l = Launcher::start(&s, &[], &[]);
    let data = wait_for(Duration::from_secs(30), || {
        let d = secret_data(&s.ns);
        (d["regkey"] == rotated.regkey()).then_some(d)
    })
    .unwrap_or_else(|| panic!("the Secret was not brought up to date; log:\n{}", l.log()));
    assert_eq!(
        data["connector-config"],
        state::connector_config(ACTIVATION)
    );
    assert_eq!(data["manifest"], s.initial.manifest());
    assert_eq!(data["fingerprint"], s.initial.fingerprint());
    l.wait_ready();
}

#[test]
fn refused_updates_are_retried_until_the_key_gets_through_without_a_restart() {
    let s = setup("refused");
    let mut l = Launcher::start(&s, &[], &[("FAKE_DELAY", "0.05")]);
    l.wait_ready();
    s.ns.unbind(&s.binding);
    // RBAC changes reach the authorizer through an informer: wait until the refusal is real.
    let client = s.ns.client();
    wait_for(Duration::from_secs(30), || {
        client.get_secret(&s.ns.name, SECRET).is_err().then_some(())
    })
    .expect("removing the RoleBinding did not take effect");
    let new = registration("mi-0123456789abcdef0").regkey().to_vec();
    request_rotation(&s.fake, &new);

    let (code, body) = wait_for(Duration::from_secs(30), || {
        l.readyz()
            .filter(|(c, b)| *c == 503 && b.contains("forbidden"))
    })
    .unwrap_or_else(|| {
        panic!(
            "/readyz did not report the refusal ({:?}); log:\n{}",
            l.readyz(),
            l.log()
        )
    });
    assert_eq!(code, 503);
    assert!(body.contains(SECRET), "{body}");
    // Refused for longer than the original's one minute (after which it gave up and the key was
    // lost): attempts keep coming, each failure logged once with its cause, never more than a
    // minute apart.
    let refused_from = Instant::now();
    std::thread::sleep(Duration::from_secs(65));
    let log = l.log();
    let failures: Vec<&str> = log
        .lines()
        .filter(|x| x.contains("cannot save the Vault's registration"))
        .collect();
    assert!(
        failures.len() >= 5,
        "too few attempts in {:?}:\n{log}",
        refused_from.elapsed()
    );
    for line in &failures {
        assert!(
            line.contains("forbidden") && line.contains("retrying in"),
            "{line}"
        );
        let secs: f64 = line
            .split("retrying in ")
            .nth(1)
            .and_then(|r| r.split('s').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no delay in {line}"));
        assert!(secs <= 60.0, "backoff above one minute: {line}");
    }
    assert!(
        l.running(),
        "the launcher must keep the agent running meanwhile"
    );
    assert_eq!(secret_data(&s.ns)["regkey"], s.initial.regkey());

    // The API server lets us in again: the key arrives, same launcher, same agent.
    let agent = l.agent_pid();
    s.ns.bind("Role", &s.role, "ServiceAccount", &s.ns.sa_name);
    wait_for(Duration::from_secs(120), || {
        (secret_data(&s.ns)["regkey"] == new).then_some(())
    })
    .unwrap_or_else(|| panic!("the key never reached the Secret; log:\n{}", l.log()));
    assert!(l.running(), "the launcher must not have restarted");
    assert_eq!(l.agent_pid(), agent);
    assert_eq!(
        secret_data(&s.ns)["connector-config"],
        state::connector_config(ACTIVATION)
    );
    l.wait_ready();
    assert!(
        l.log().contains("failed attempt(s)"),
        "success after failures is logged: {}",
        l.log()
    );
}

#[test]
fn a_rotation_just_before_the_agent_exits_is_saved_before_the_launcher_exits() {
    let s = setup("lastlook");
    let new = registration("mi-0123456789abcdef0").regkey().to_vec();
    let mut l = Launcher::start(&s, &["rotate-exit"], &[("FAKE_DELAY", "0")]);
    l.wait_ready();
    request_rotation(&s.fake, &new);
    let st = l.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(3), "{}", l.log());
    // No waiting here: the Secret must hold the key by the time the launcher has exited.
    assert_eq!(secret_data(&s.ns)["regkey"], new, "{}", l.log());
}

#[test]
fn a_deleted_secret_is_recreated_with_the_rotated_key() {
    let s = setup("recreate");
    let l = Launcher::start(&s, &[], &[("FAKE_DELAY", "0.05")]);
    l.wait_ready();
    common::cluster()
        .admin()
        .delete_secret(&s.ns.name, SECRET)
        .unwrap();
    let new = registration("mi-0123456789abcdef0").regkey().to_vec();
    request_rotation(&s.fake, &new);
    let secret = wait_for(Duration::from_secs(30), || {
        let sec = common::cluster()
            .admin()
            .get_secret(&s.ns.name, SECRET)
            .ok()?;
        (sec.data.get("regkey") == Some(&new)).then_some(sec)
    })
    .unwrap_or_else(|| panic!("the Secret was not re-created; log:\n{}", l.log()));
    assert_eq!(secret.data["manifest"], s.initial.manifest());
    assert_eq!(secret.data["fingerprint"], s.initial.fingerprint());
    // Re-created with every key the Secret must hold: the activation from the Vault's marker,
    // so the next init still checks it (issue 14, 2).
    assert_eq!(
        secret.data.get("connector-config"),
        Some(&state::connector_config(ACTIVATION)),
        "{}",
        l.log()
    );
    assert_eq!(secret.type_, "Opaque");
    assert_eq!(secret.labels.get("name").map(String::as_str), Some(SECRET));
    l.wait_ready();
}

/// Issue 14, 3: the Secret is read again on a slow period, so a deleted or edited Secret is
/// noticed (log and `/readyz`) and repaired without any change in the Vault.
#[test]
fn a_deleted_or_edited_secret_is_noticed_and_repaired_by_the_periodic_recheck() {
    let s = setup("recheck");
    let l = Launcher::start_with_flags(&s, &["--keysync.recheck=1s"], &[]);
    l.wait_ready();
    let admin = common::cluster().admin();
    admin.delete_secret(&s.ns.name, SECRET).unwrap();
    let back = wait_for(Duration::from_secs(20), || {
        let sec = admin.get_secret(&s.ns.name, SECRET).ok()?;
        (sec.data.get("regkey").map(Vec::as_slice) == Some(s.initial.regkey())).then_some(sec)
    })
    .unwrap_or_else(|| panic!("the deleted Secret was not re-created; log:\n{}", l.log()));
    assert_eq!(
        back.data.get("connector-config"),
        Some(&state::connector_config(ACTIVATION))
    );
    assert!(l.log().contains("drift"), "no drift logged:\n{}", l.log());
    // Edited behind our back: the Vault's bytes are put back.
    let mut edited = back;
    edited
        .data
        .insert("regkey".into(), registration("mi-1").regkey().to_vec());
    admin
        .update_secret(&edited, eks_connector::kube::OnConflict::Fail)
        .unwrap();
    wait_for(Duration::from_secs(20), || {
        (secret_data(&s.ns)["regkey"] == s.initial.regkey()).then_some(())
    })
    .unwrap_or_else(|| panic!("the edited Secret was not repaired; log:\n{}", l.log()));
    l.wait_ready();
}

/// Also (issue 14): a Vault file of 100 MiB, of random bytes, or of valid JSON with every field
/// of the wrong type: one clear line, no agent started, the Secret as it was.
#[test]
fn a_huge_random_or_mistyped_vault_file_is_one_clear_error_and_the_secret_is_kept() {
    let s = setup("badvault");
    let before = common::cluster()
        .admin()
        .get_secret(&s.ns.name, SECRET)
        .unwrap();
    let mut random = vec![0u8; 4096];
    eks_connector::random::fill(&mut random).unwrap();
    let huge = {
        let mut v = s.initial.regkey().to_vec();
        v.resize(100 << 20, b' ');
        v
    };
    let wrong = br#"{"instanceID":5,"region":["us"],"privateKey":{"k":1}}"#.to_vec();
    for (what, bytes) in [("huge", huge), ("random", random), ("wrong types", wrong)] {
        std::fs::write(s.vault.join("Store/RegistrationKey"), &bytes).unwrap();
        let mut l = Launcher::start(&s, &[], &[]);
        let st = l.wait_exit(Duration::from_secs(20));
        let log = l.log();
        assert_eq!(st.code(), Some(24), "{what}: {st:?}\n{log}");
        let errors: Vec<&str> = log.lines().filter(|x| x.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{what}: want one error line:\n{log}");
        assert!(
            errors[0].contains("RegistrationKey"),
            "{what}: {}",
            errors[0]
        );
        assert!(
            !s.fake.join("agent.pid").exists(),
            "{what}: the agent was started"
        );
        let after = common::cluster()
            .admin()
            .get_secret(&s.ns.name, SECRET)
            .unwrap();
        assert_eq!(after.resource_version, before.resource_version, "{what}");
    }
}

/// Issue 14, 6: processes the agent left behind get one SIGTERM, then SIGKILL at the end of the
/// grace period, not a SIGTERM every few milliseconds.
#[test]
fn descendants_get_one_sigterm_then_sigkill() {
    let s = setup("onesigterm");
    let mut l = Launcher::start(&s, &["stubborn-exit"], &[]);
    let st = l.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(7), "{st:?}; log:\n{}", l.log());
    let g: i32 = std::fs::read_to_string(s.fake.join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(stat_of(g).is_none(), "grandchild {g} survived the launcher");
    let got = std::fs::read_to_string(s.fake.join("grandchild.signals")).unwrap_or_default();
    assert_eq!(got.lines().count(), 1, "SIGTERMs received: {got:?}");
}

#[test]
fn usage_and_environment_errors_start_no_agent() {
    let work = tempdir("usage");
    let fake = work.join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let run = |args: &[&str], pod: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_eks-connector-agent"));
        c.args(args)
            .args(["--", "/bin/sh"])
            .arg(fake_agent())
            .env("FAKE_DIR", &fake)
            .env_remove("POD_NAME");
        if let Some(p) = pod {
            c.env("POD_NAME", p);
        }
        c.output().unwrap()
    };
    let out = run(&["--state.bogus=1"], Some(POD));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state.bogus"));
    let out = run(&["--health.addr"], Some(POD));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--health.addr"));
    let out = run(&[], None);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("POD_NAME") && err.contains("not started"),
        "{err}"
    );
    // The agent's own flags after `--` are not ours.
    let out = Command::new(env!("CARGO_BIN_EXE_eks-connector-agent"))
        .args(["--", "/bin/echo", "--version", "--help"])
        .env_remove("POD_NAME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(!fake.join("agent.pid").exists(), "the agent was started");
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn signals_are_forwarded_and_the_launcher_exits_with_the_agents_code() {
    let s = setup("signals");
    let mut l = Launcher::start(&s, &[], &[("FAKE_TERM_EXIT", "42")]);
    l.agent_pid();
    let signals_file = s.fake.join("signals");
    for (sig, name) in [
        (libc::SIGHUP, "HUP"),
        (libc::SIGINT, "INT"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGUSR2, "USR2"),
    ] {
        l.signal(sig);
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(&signals_file)
                .ok()?
                .lines()
                .any(|x| x == name)
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{name} did not reach the agent; log:\n{}", l.log()));
        assert!(l.running(), "the launcher must survive {name}");
    }
    l.signal(libc::SIGTERM);
    let st = l.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(42), "{st:?}; log:\n{}", l.log());
    let got = std::fs::read_to_string(&signals_file).unwrap();
    assert_eq!(got.lines().last(), Some("TERM"), "{got}");
}

#[test]
fn a_reparented_grandchild_is_reaped_not_left_a_zombie() {
    let s = setup("reap");
    let mut l = Launcher::start(&s, &["reparent"], &[]);
    l.agent_pid();
    let g: i32 = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(s.fake.join("grandchild.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .expect("the fake agent did not start its grandchild");
    // Orphaned by its parent, it now belongs to the launcher (a subreaper, as PID 1 would be).
    wait_for(Duration::from_secs(5), || {
        matches!(stat_of(g), Some((_, pp)) if pp == l.pid()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "grandchild {g} was not re-parented to the launcher: {:?}",
            stat_of(g)
        )
    });
    // It exits after 1 s; the launcher must reap it: no /proc entry, no zombie, ever after.
    wait_for(Duration::from_secs(10), || {
        stat_of(g).is_none().then_some(())
    })
    .unwrap_or_else(|| panic!("grandchild {g} was not reaped: {:?}", stat_of(g)));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(zombie_children(l.pid()), Vec::<i32>::new());
    assert!(l.running());
    l.signal(libc::SIGTERM);
    assert_eq!(l.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn as_pid1_of_a_pid_namespace_it_forwards_reaps_and_exits_with_the_agents_code() {
    let s = setup("pid1");
    let mut l = Launcher::start_as_pid1(&s, &["reparent"], &[("FAKE_TERM_EXIT", "42")]);
    l.agent_pid();
    let launcher = wait_for(Duration::from_secs(10), || {
        let kids = children(l.pid());
        (kids.len() == 1).then(|| kids[0].0)
    })
    .expect("unshare did not start the launcher");
    // Inside its namespace the launcher is PID 1 (NSpid: host pid, then namespace pid).
    let status = std::fs::read_to_string(format!("/proc/{launcher}/status")).unwrap();
    let nspid = status.lines().find(|x| x.starts_with("NSpid:")).unwrap();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "{nspid}");
    // The orphaned grandchild (a re-parented worker) shows up as the launcher's child, then
    // exits after 1 s and must be reaped: PID 1 has no one else to do it.
    wait_for(Duration::from_secs(5), || {
        (children(launcher).len() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("no orphan re-parented to PID 1: {:?}", children(launcher)));
    wait_for(Duration::from_secs(10), || {
        (children(launcher).len() == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("PID 1 left {:?}; log:\n{}", children(launcher), l.log()));
    assert_eq!(zombie_children(launcher), Vec::<i32>::new());
    // Signals from the runtime (outside the namespace) reach the agent.
    // SAFETY: plain kill(2) on a process of ours.
    assert_eq!(unsafe { libc::kill(launcher, libc::SIGUSR1) }, 0);
    wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(s.fake.join("signals"))
            .ok()?
            .contains("USR1")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("SIGUSR1 did not reach the agent; log:\n{}", l.log()));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(launcher, libc::SIGTERM) }, 0);
    let st = l.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(42), "{st:?}; log:\n{}", l.log());
}

#[test]
fn an_agent_that_exits_leaves_no_orphan_running() {
    let s = setup("orphan");
    let mut l = Launcher::start(&s, &["orphan-exit"], &[]);
    let st = l.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(7), "{st:?}; log:\n{}", l.log());
    let g: i32 = std::fs::read_to_string(s.fake.join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The launcher stopped it before leaving (at most a zombie on its way to init's reaping).
    let left = wait_for(Duration::from_secs(5), || match stat_of(g) {
        None | Some(('Z', _)) => Some(()),
        _ => None,
    });
    assert!(
        left.is_some(),
        "grandchild {g} still runs: {:?}",
        stat_of(g)
    );
}

#[test]
fn an_agent_killed_by_sigkill_gives_137() {
    let s = setup("sigkill");
    let mut l = Launcher::start(&s, &["sigkill"], &[]);
    let st = l.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(137), "{st:?}; log:\n{}", l.log());
    assert!(l.log().contains("killed by SIGKILL"), "{}", l.log());
}

#[test]
fn the_agents_exit_code_is_the_launchers() {
    let s = setup("exitcode");
    let mut l = Launcher::start(&s, &["exit", "5"], &[]);
    assert_eq!(
        l.wait_exit(Duration::from_secs(30)).code(),
        Some(5),
        "{}",
        l.log()
    );
}

#[test]
fn a_vault_not_initialised_is_a_clear_error_and_no_agent_is_started() {
    let work = tempdir("noinit");
    let fake = work.join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    let vault = work.join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    let run = |vault: &Path| {
        Command::new(env!("CARGO_BIN_EXE_eks-connector-agent"))
            .arg(format!("--state.baseDir={}", vault.display()))
            .args(["--", "/bin/sh"])
            .arg(fake_agent())
            .env("POD_NAME", POD)
            .env("FAKE_DIR", &fake)
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", "1")
            .output()
            .unwrap()
    };
    // Empty Vault: the init container never ran.
    let out = run(&vault);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(24), "{err}");
    assert!(err.contains("holds no registration"), "{err}");
    assert!(err.contains("init container"), "{err}");
    assert!(err.contains("was not started"), "{err}");
    assert!(!fake.join("agent.pid").exists(), "the agent was started");
    // A half-written Vault (the init container died mid-way): same.
    let reg = registration("mi-0123456789abcdef0");
    state::write_vault(&vault, &reg).unwrap();
    std::fs::write(vault.join("Store/RegistrationKey"), &reg.regkey()[..100]).unwrap();
    let out = run(&vault);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(24), "{err}");
    assert!(err.contains("RegistrationKey"), "{err}");
    assert!(err.contains("init container"), "{err}");
    assert!(!fake.join("agent.pid").exists(), "the agent was started");
    std::fs::remove_dir_all(&work).unwrap();
}

/// A `kB` field of /proc/<pid>/status.
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Ten rotations in a row each reach the Secret (the test), and the footprint figures are
/// printed: the launcher's RSS while supervising and syncing, and the latency from the fake
/// agent's last write of a rotated key to the Secret holding it. The figures are a benchmark, not
/// asserted: bench/agent.sh runs this with release builds (`EKS_CONNECTOR_AGENT_BIN` selects the
/// binary) against the budgets, 2 MiB and 2 s.
#[test]
fn repeated_rotations_all_reach_the_secret_and_footprint_is_reported() {
    const ROTATIONS: usize = 10;
    let s = setup("bench");
    let mut l = Launcher::start(&s, &[], &[("FAKE_DELAY", "0.05")]);
    l.wait_ready();
    let admin = common::cluster().admin();
    let mut latencies = Vec::new();
    for i in 0..ROTATIONS {
        let new = registration("mi-0123456789abcdef0").regkey().to_vec();
        let _ = std::fs::remove_file(s.fake.join("rotated"));
        let log_before = l.log().len();
        request_rotation(&s.fake, &new);
        // Poll the Secret every 10 ms: the figure is at most that much (plus one GET) late.
        let deadline = Instant::now() + Duration::from_secs(30);
        let synced_at = loop {
            let d = admin.get_secret(&s.ns.name, SECRET).unwrap().data;
            if d["regkey"] == new {
                break SystemTime::now();
            }
            assert!(
                Instant::now() < deadline,
                "rotation {i} never synced:\n{}",
                l.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let last_write: f64 = std::fs::read_to_string(s.fake.join("rotated"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let synced = synced_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        latencies.push(synced - last_write);
        if synced - last_write > 1.0 {
            // Slow: show when the launcher saw the change and saved it (machine busy?).
            println!(
                "launcher: rotation {i} took {:.0} ms:",
                (synced - last_write) * 1000.0
            );
            for line in l.log()[log_before..].lines() {
                println!("launcher: {line}");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Supervising at rest.
    std::thread::sleep(Duration::from_secs(5));
    let pid = l.pid();
    let (rss, anon, file, hwm) = (
        status_kib(pid, "VmRSS"),
        status_kib(pid, "RssAnon"),
        status_kib(pid, "RssFile"),
        status_kib(pid, "VmHWM"),
    );
    let each: Vec<String> = latencies
        .iter()
        .map(|x| format!("{:.0}", x * 1000.0))
        .collect();
    println!("sync latencies in order (ms): {}", each.join(" "));
    for line in l
        .log()
        .lines()
        .filter(|x| x.contains(" ERROR ") || x.contains(" WARN "))
    {
        println!("launcher: {line}");
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "launcher VmRSS at rest: {rss} KiB ({anon} KiB anonymous + {file} KiB file-backed binary \
         pages); peak (VmHWM) over {ROTATIONS} syncs: {hwm} KiB; budget 2048 KiB"
    );
    println!(
        "sync latency, last write -> Secret updated, {ROTATIONS} rotations: median {:.0} ms, \
         max {:.0} ms (budget 2000 ms)",
        latencies[ROTATIONS / 2] * 1000.0,
        latencies[ROTATIONS - 1] * 1000.0
    );
    l.signal(libc::SIGTERM);
    l.wait_exit(Duration::from_secs(20));
}
