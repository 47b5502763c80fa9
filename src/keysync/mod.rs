//! Key sync: keep the state Secret's `manifest`, `regkey` and `fingerprint` equal to the
//! agent's Vault files, so that a rotated key survives the pod.
//!
//! **Watching: a stat poll every 200 ms, not inotify.** The agent rewrites files in place, so we
//! must wait for a write to settle anyway: that is a matter of time, which a poll measures
//! directly. A poll also survives what inotify needs extra code for (files replaced by rename,
//! `Store/` removed and re-created, an emptyDir on a filesystem without inotify events), and
//! costs three `stat` calls per tick while nothing changes. 200 ms plus the quiet period keeps
//! the file-to-Secret latency well under the 2 s budget.
//!
//! **Never a partial file.** A snapshot (stat stamps and the bytes of all three files) is taken
//! on each tick while the files differ from the last one evaluated. Only when the stamps and the
//! bytes have stayed the same for [`QUIET`] *and* the bytes parse as a complete registration
//! ([`Registration::from_bytes`]) does it become the target. A half-written file that sits still
//! (a slow writer) fails the parse and is never copied: the last complete registration stays the
//! target until the write completes.
//!
//! **Never give up.** A failed update is retried with [`Backoff`] capped at one minute until it
//! succeeds, one log line per failure with its cause; a conflict re-reads the Secret at once.
//! `/readyz` says whether the Secret holds the Vault's registration, and why not.
//!
//! **One entry point** for whichever program runs beside the agent (the launcher today, the
//! proxy's `server` tomorrow): [`KeySync::start`], [`KeySync::ready_check`] for `/readyz`, and
//! [`KeySync::last_look`] once the agent has exited.

mod beside;
mod exclusive;
mod repair;
mod settle;

pub use beside::start_if_mounted;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use settle::{read_file, stamp, Settler, Snapshot, Stamp};

use crate::backoff::{deadline_after, Backoff};
use crate::health::ReadyCheck;
use crate::kube::{Client, Endpoint, ServiceAccountDir};
use crate::state::{
    self, Activation, Registration, Saved, StateStore, StoreError, Write, FINGERPRINT_FILE,
    MANIFEST_FILE, REGKEY_FILE,
};

/// How often the Vault files are checked.
pub const POLL: Duration = Duration::from_millis(200);
/// How long stamps and bytes must stay unchanged before a snapshot counts as settled.
pub const QUIET: Duration = Duration::from_millis(400);
/// Backoff bounds for failed Secret updates.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long one save may retry conflicts and transient errors before it counts as a failure
/// (and is tried again after the backoff: the sync never gives up).
const ATTEMPT_WINDOW: Duration = Duration::from_secs(10);
/// Default period of the Secret's re-read (drift: deleted or edited behind our back).
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(120);
/// A changed file that has not settled into a complete registration for this long is logged.
const INCOMPLETE_WARN: Duration = Duration::from_secs(10);
/// How long a caller gives the last look once the agent has stopped (well within Kubernetes'
/// default 30 s termination grace period).
pub const FINAL_LOOK: Duration = Duration::from_secs(5);

/// What the sync thread needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub base_dir: PathBuf,
    pub namespace: String,
    pub secret_name: String,
    /// The API server and the service-account files. A client is made for each attempt and
    /// dropped after it: syncs are rare (a rotation every few days), and a pooled connection
    /// with its TLS state and buffers would otherwise sit in the launcher's memory for good.
    pub endpoint: Endpoint,
    pub serviceaccount: ServiceAccountDir,
    /// How often the Secret is read again while in sync, to notice drift.
    pub recheck: Duration,
}

/// Where the sync stands, for `/readyz` and the final flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not compared with the Secret yet.
    Starting,
    /// The Secret holds the Vault's registration.
    InSync,
    /// The Secret does not (yet) hold the Vault's registration: why.
    Pending(String),
    /// Another process syncs this Vault ([`exclusive`]); this one takes over when it stops.
    Standby(String),
}

struct Shared {
    status: Status,
    stop: bool,
    finished: bool,
}

type SharedState = Arc<(Mutex<Shared>, Condvar)>;

fn lock(shared: &SharedState) -> MutexGuard<'_, Shared> {
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running sync thread.
pub struct KeySync {
    shared: SharedState,
    thread: Option<JoinHandle<()>>,
}

impl KeySync {
    /// Starts the sync thread. Its first action is to compare the Vault with the Secret (a
    /// rotation may have happened while no launcher ran).
    pub fn start(config: Config) -> std::io::Result<KeySync> {
        let shared: SharedState = Arc::new((
            Mutex::new(Shared {
                status: Status::Starting,
                stop: false,
                finished: false,
            }),
            Condvar::new(),
        ));
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("key-sync".into())
            .spawn(move || {
                let mut worker = Worker::new(config, s2.clone());
                worker.run();
                let mut g = lock(&s2);
                g.finished = true;
                s2.1.notify_all();
            })?;
        Ok(KeySync {
            shared,
            thread: Some(thread),
        })
    }

    pub fn status(&self) -> Status {
        lock(&self.shared).status.clone()
    }

    /// For `/readyz`: ready when the Secret holds the Vault's registration.
    pub fn ready_check(&self) -> ReadyCheck {
        let shared = self.shared.clone();
        Arc::new(move || match &lock(&shared).status {
            Status::InSync => Ok(()),
            Status::Starting => {
                Err("the state Secret has not been compared with the Vault yet".into())
            }
            Status::Pending(why) => Err(why.clone()),
            Status::Standby(_) => Ok(()),
        })
    }

    /// Asks the thread for a last look at the Vault (the agent has exited, so nothing is being
    /// written) and a last attempt to save it, waiting up to `deadline`. Returns the final
    /// status; if the thread is still busy (an API call hanging) it is left behind.
    pub fn finish(mut self, deadline: Duration) -> Status {
        let end = Instant::now() + deadline;
        let mut g = lock(&self.shared);
        g.stop = true;
        self.shared.1.notify_all();
        while !g.finished {
            let now = Instant::now();
            if now >= end {
                return g.status.clone();
            }
            g = self
                .shared
                .1
                .wait_timeout(g, end - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let status = g.status.clone();
        drop(g);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        status
    }

    /// [`finish`](Self::finish), logging what is left unsaved: the caller's last word on the sync.
    pub fn last_look(self, deadline: Duration) -> Status {
        let status = self.finish(deadline);
        match &status {
            Status::InSync | Status::Standby(_) => {}
            Status::Starting => log::error!("the Vault was never compared with the state Secret"),
            Status::Pending(why) => {
                log::error!("exiting with the state Secret not in sync: {why}")
            }
        }
        status
    }
}

struct Worker {
    config: Config,
    shared: SharedState,
    paths: [PathBuf; 3],
    settler: Settler,
    /// The latest complete, settled registration in the Vault.
    target: Option<Registration>,
    /// What the Secret is known to hold.
    saved: Option<Registration>,
    backoff: Backoff,
    next_attempt: Instant,
    failures: u32,
    /// When the files last changed without (yet) forming a complete registration.
    incomplete_since: Option<Instant>,
    incomplete_warned: bool,
    last_incomplete: Option<String>,
    next_recheck: Instant,
    /// Held while this process is the one that syncs the Vault.
    vault_lock: Option<exclusive::VaultLock>,
    standing_by: bool,
    /// The repair was tried for the current incomplete spell.
    repair_tried: bool,
}

impl Worker {
    fn new(config: Config, shared: SharedState) -> Worker {
        let paths = [
            config.base_dir.join(MANIFEST_FILE),
            config.base_dir.join(REGKEY_FILE),
            config.base_dir.join(FINGERPRINT_FILE),
        ];
        let next_recheck = deadline_after(config.recheck);
        Worker {
            next_recheck,
            config,
            shared,
            paths,
            settler: Settler::default(),
            target: None,
            saved: None,
            backoff: Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX),
            next_attempt: Instant::now(),
            failures: 0,
            incomplete_since: None,
            incomplete_warned: false,
            last_incomplete: None,
            vault_lock: None,
            standing_by: false,
            repair_tried: false,
        }
    }

    fn secret_ref(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.secret_name)
    }

    fn set_status(&self, status: Status) {
        let m = &crate::metrics::KEYSYNC;
        m.in_sync.set(i64::from(matches!(status, Status::InSync)));
        m.standby
            .set(i64::from(matches!(status, Status::Standby(_))));
        lock(&self.shared).status = status;
    }

    fn stamps(&self) -> [Option<Stamp>; 3] {
        [
            stamp(&self.paths[0]),
            stamp(&self.paths[1]),
            stamp(&self.paths[2]),
        ]
    }

    /// Stamps, then bytes, then stamps again: a write during the read shows as a change and the
    /// snapshot is not used.
    fn snapshot(&self) -> Option<Snapshot> {
        let stamps = self.stamps();
        let bytes = [
            read_file(&self.paths[0]),
            read_file(&self.paths[1]),
            read_file(&self.paths[2]),
        ];
        (self.stamps() == stamps).then_some(Snapshot { stamps, bytes })
    }

    fn parse(&self, snap: Snapshot) -> Result<Registration, crate::state::StateError> {
        let [m, r, f] = snap.bytes;
        let names: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        Registration::from_bytes(m, r, f, (&names[0], &names[1], &names[2]))
    }

    fn run(&mut self) {
        loop {
            let stop = lock(&self.shared).stop;
            if stop {
                if self.vault_lock.is_some() {
                    self.final_flush();
                }
                return;
            }
            let now = Instant::now();
            if self.may_sync() {
                self.watch_tick(now);
                self.repair_if_stuck(now);
                self.warn_if_stuck(now);
                self.maybe_recheck(now);
                self.maybe_push();
            }
            let g = lock(&self.shared);
            if !g.stop {
                let _ = self.shared.1.wait_timeout(g, POLL);
            }
        }
    }

    /// One poll: read the files if they moved, and take a settled complete snapshot as target.
    fn watch_tick(&mut self, now: Instant) {
        if !self.settler.needs_read(&self.stamps()) {
            return;
        }
        if self.incomplete_since.is_none() {
            self.incomplete_since = Some(now);
        }
        let Some(snap) = self.snapshot() else {
            return; // written while we read: look again next tick
        };
        let Some(settled) = self.settler.observe(snap, now, QUIET) else {
            return;
        };
        match self.parse(settled) {
            Ok(reg) => {
                self.incomplete_since = None;
                self.incomplete_warned = false;
                self.last_incomplete = None;
                self.repair_tried = false;
                if !self.target.as_ref().is_some_and(|t| t.same_files(&reg)) {
                    if self.target.is_some() {
                        crate::metrics::KEYSYNC.rotations.inc();
                        log::info!(
                            "the Vault changed (key rotation?): instance {}; saving it to Secret {}",
                            reg.instance_id(),
                            self.secret_ref()
                        );
                    }
                    self.target = Some(reg);
                    // A new target is tried at once, whatever the backoff said for the old one.
                    self.next_attempt = now;
                }
            }
            Err(e) => {
                // Settled but not complete: a slow writer paused mid-file, or a broken file.
                // Evaluated: looked at again only when the files move.
                log::debug!("Vault not complete yet: {e}");
                self.last_incomplete = Some(e.to_string());
            }
        }
        self.update_status();
    }

    /// Whether this process syncs the Vault: it holds the Vault's lock, or takes it now. A Vault
    /// directory that cannot be opened cannot be read either: the sync goes on and says so.
    fn may_sync(&mut self) -> bool {
        if self.vault_lock.is_some() {
            return true;
        }
        match exclusive::try_lock(&self.config.base_dir) {
            Ok(Some(l)) => {
                if self.standing_by {
                    log::info!(
                        "the other key sync of the Vault {} stopped: this process syncs it now",
                        self.config.base_dir.display()
                    );
                    self.standing_by = false;
                    self.set_status(Status::Starting);
                }
                self.vault_lock = Some(l);
                true
            }
            Ok(None) => {
                let why = format!(
                    "another process (an agent launcher with a token?) already keeps Secret {} in \
                     step with the Vault {}: this one stands by and takes over when it stops",
                    self.secret_ref(),
                    self.config.base_dir.display()
                );
                if !self.standing_by {
                    log::info!("{why}");
                    self.standing_by = true;
                }
                self.set_status(Status::Standby(why));
                false
            }
            Err(e) => {
                log::debug!("cannot lock {}: {e}", self.config.base_dir.display());
                true
            }
        }
    }

    /// The repair rule ([`repair`]): a Vault incomplete for long is restored from the Secret.
    fn repair_if_stuck(&mut self, now: Instant) {
        let (Some(since), Some(why)) = (self.incomplete_since, self.last_incomplete.clone()) else {
            return;
        };
        if self.repair_tried || now.duration_since(since) < repair::REPAIR_AFTER {
            return;
        }
        self.repair_tried = true;
        match repair::restore_from_secret(&self.config) {
            Ok(reg) => log::warn!(
                "the Vault has held no complete registration for {}s ({why}); restored the Vault \
                 from Secret {} (instance {}) so that the SSM agent can start again",
                repair::REPAIR_AFTER.as_secs(),
                self.secret_ref(),
                reg.instance_id()
            ),
            Err(e) => log::error!(
                "the Vault is incomplete ({why}) and cannot be repaired from Secret {}: {e}; the \
                 SSM agent cannot start on it: delete the pod so that init restores the Vault, \
                 or register again",
                self.secret_ref()
            ),
        }
    }

    /// One warning when changed files stay incomplete for long (a writer died mid-file?).
    fn warn_if_stuck(&mut self, now: Instant) {
        let (Some(since), Some(why)) = (self.incomplete_since, &self.last_incomplete) else {
            return;
        };
        if now.duration_since(since) >= INCOMPLETE_WARN && !self.incomplete_warned {
            log::warn!(
                "the Vault has not held a complete registration for {}s ({why}); the last \
                 complete one stays the one saved: a partial file is never copied",
                INCOMPLETE_WARN.as_secs()
            );
            self.incomplete_warned = true;
        }
    }

    fn update_status(&self) {
        let status = match (&self.target, &self.saved) {
            (None, _) => Status::Pending(format!(
                "the Vault {} holds no complete registration{}",
                self.config.base_dir.display(),
                self.last_incomplete
                    .as_deref()
                    .map(|w| format!(": {w}"))
                    .unwrap_or_default()
            )),
            (Some(t), Some(s)) if t.same_files(s) => match &self.last_incomplete {
                Some(w) => Status::Pending(format!(
                    "the Vault is being rewritten and not complete yet ({w}); the Secret holds \
                     the last complete registration"
                )),
                None => Status::InSync,
            },
            (Some(_), _) if self.failures > 0 => return, // keeps the failure's own message
            (Some(_), _) => Status::Pending(format!(
                "the Vault's registration is not saved to Secret {} yet",
                self.secret_ref()
            )),
        };
        self.set_status(status);
    }

    fn pending(&self) -> bool {
        match (&self.target, &self.saved) {
            (Some(t), Some(s)) => !t.same_files(s),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn maybe_push(&mut self) {
        if !self.pending() || Instant::now() < self.next_attempt {
            return;
        }
        let Some(target) = self.target.clone() else {
            return;
        };
        let pushed = self.push(&target);
        count_attempt(&pushed);
        match pushed {
            Ok(what) => {
                let after = if self.failures > 0 {
                    format!(" after {} failed attempt(s)", self.failures)
                } else {
                    String::new()
                };
                log::info!(
                    "Secret {} {} (instance {}){after}",
                    self.secret_ref(),
                    describe(what),
                    target.instance_id(),
                );
                self.saved = Some(target);
                self.failures = 0;
                self.backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
                self.update_status();
            }
            Err(e) => {
                self.failures += 1;
                let delay = self.backoff.next_delay();
                self.next_attempt = Instant::now() + delay;
                let why = format!(
                    "cannot save the Vault's registration (instance {}) to Secret {}: {e}",
                    target.instance_id(),
                    self.secret_ref()
                );
                log::error!(
                    "{why}; attempt {}, retrying in {:.1}s (the agent keeps running; the key is \
                     at risk only if the pod is deleted before this succeeds)",
                    self.failures,
                    delay.as_secs_f64()
                );
                self.set_status(Status::Pending(why));
            }
        }
    }

    /// A client for one attempt (see [`Config::endpoint`]).
    fn client(&self) -> Client {
        Client::new(self.config.endpoint.clone(), &self.config.serviceaccount)
    }

    /// What `connector-config` must say when the Secret lacks it: the Vault's activation marker.
    fn activation(&self) -> Option<String> {
        state::read_vault_activation(&self.config.base_dir)
    }

    /// Reads the Secret and saves the registration into it through the state store (which
    /// keeps every other key, and re-reads on conflicts).
    fn push(&self, reg: &Registration) -> Result<Saved, StoreError> {
        let client = self.client();
        let (ns, name) = (&self.config.namespace, &self.config.secret_name);
        let store = StateStore::new(&client, ns, name);
        let deadline = deadline_after(ATTEMPT_WINDOW);
        let current = store.load(deadline)?;
        if current.is_none() {
            log::warn!("Secret {ns}/{name} is gone; re-creating it from the Vault");
        }
        let activation = self.activation();
        let fallback = Activation::Keep {
            fallback: activation.as_deref(),
        };
        store.save(current, reg, fallback, deadline)
    }

    /// On a slow period while in sync: read the Secret again, and if it no longer holds what was
    /// saved (deleted, edited), say so in the log and `/readyz`, and save it again at once.
    fn maybe_recheck(&mut self, now: Instant) {
        if now < self.next_recheck || self.pending() {
            return;
        }
        self.next_recheck = deadline_after(self.config.recheck);
        let Some(saved) = self.saved.clone() else {
            return;
        };
        let client = self.client();
        let (ns, name) = (&self.config.namespace, &self.config.secret_name);
        let current = match StateStore::new(&client, ns, name).load(deadline_after(ATTEMPT_WINDOW))
        {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot re-read Secret {}: {e}", self.secret_ref());
                log::error!("{why}; trying again in {}s", self.config.recheck.as_secs());
                self.set_status(Status::Pending(why));
                return;
            }
        };
        let activation = self.activation();
        let keep = Activation::Keep {
            fallback: activation.as_deref(),
        };
        let merged = state::merge(current.as_ref(), ns, name, &saved, keep);
        if current.is_some() && merged == Write::Unchanged {
            crate::metrics::KEYSYNC.succeeded();
            self.update_status();
            return;
        }
        let what = if current.is_none() {
            "is gone"
        } else {
            "was changed"
        };
        let why = format!(
            "drift: Secret {} {what} and no longer holds the Vault's registration (instance {}); \
             saving it again",
            self.secret_ref(),
            saved.instance_id()
        );
        log::warn!("{why}");
        self.set_status(Status::Pending(why));
        self.saved = None;
        self.next_attempt = now;
    }

    /// The agent has exited: nothing writes the Vault any more, so one look (no quiet period)
    /// and, if it differs, attempts until the caller's deadline (the thread is abandoned then).
    fn final_flush(&mut self) {
        if let Some(snap) = self.snapshot() {
            match self.parse(snap) {
                Ok(reg) => {
                    if !self.target.as_ref().is_some_and(|t| t.same_files(&reg)) {
                        self.target = Some(reg);
                        self.next_attempt = Instant::now();
                    }
                }
                Err(e) => log::warn!(
                    "at exit the Vault is not complete ({e}); the last complete registration \
                     stays the one to save"
                ),
            }
        }
        // Short delays now: the caller stops waiting after a few seconds.
        self.backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        self.next_attempt = Instant::now();
        while self.pending() {
            let now = Instant::now();
            if now < self.next_attempt {
                std::thread::sleep(self.next_attempt - now);
            }
            self.maybe_push();
        }
    }
}

/// Every save attempt passes through here: counted, and its failure by cause.
fn count_attempt(pushed: &Result<Saved, StoreError>) {
    use crate::kube::KubeError;
    use crate::metrics::{SyncFailure, KEYSYNC};
    KEYSYNC.attempts.inc();
    match pushed {
        Ok(_) => KEYSYNC.succeeded(),
        Err(e) => KEYSYNC.failed(match e.source {
            KubeError::Forbidden { .. } | KubeError::Unauthorized { .. } => SyncFailure::Forbidden,
            KubeError::Conflict { .. } => SyncFailure::Conflict,
            KubeError::Transport { .. } => SyncFailure::Unreachable,
            _ => SyncFailure::Other,
        }),
    }
}

fn describe(saved: Saved) -> &'static str {
    match saved {
        Saved::Unchanged => "already holds the Vault's registration",
        Saved::Updated => "updated from the Vault",
        Saved::Created => "re-created from the Vault",
    }
}
