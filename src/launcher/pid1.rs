//! The init-process half of the launcher: start the agent as a child, forward the signals a
//! container runtime sends, reap every exited descendant, and leave with the agent's status.
//!
//! Signals are blocked in `main` before any thread exists and taken with `sigtimedwait`
//! ([`crate::signals`]), so there are no handlers. Blocked signals are queued even for PID 1
//! (the kernel drops default-disposition signals to an init only when they are not blocked).
//! SIGCHLD does not queue per child, so every wake-up reaps with `waitpid(-1, WNOHANG)` until
//! nothing is left; a periodic timeout reaps as well, in case a SIGCHLD was merged or missed.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::signals::{
    self, Blocked, SIGCHLD, SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2,
};

/// What the runtime or a person may send us, passed on to the agent unchanged.
pub const FORWARDED: [i32; 6] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// How often we reap even without a SIGCHLD.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Blocks the forwarded signals and SIGCHLD in the calling thread. Call it first in `main`,
/// before any thread is spawned, so that every thread inherits the mask.
pub fn block_signals() -> io::Result<Blocked> {
    let mut all = FORWARDED.to_vec();
    all.push(SIGCHLD);
    signals::block(&all)
}

/// Makes orphaned descendants re-parent to us rather than to the real init when we are not
/// PID 1 (a local run, the tests), so that we reap them as PID 1 would. A no-op as PID 1.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: getpid has no preconditions; prctl with PR_SET_CHILD_SUBREAPER takes an int.
    unsafe {
        if libc::getpid() == 1 {
            return Ok(());
        }
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts the agent with an empty signal mask and default dispositions; its stdio is ours.
/// Returns its pid. The `Child` handle is dropped on purpose: we reap with `waitpid(-1)`.
pub fn spawn(command: &[String]) -> io::Result<i32> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty agent command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: reset_for_child only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(signals::reset_for_child);
    }
    let child = cmd.spawn()?;
    Ok(child.id() as i32)
}

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    fn from_wait_status(status: libc::c_int) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by {}", signals::name(*s)),
        }
    }
}

/// Reaps every exited child without blocking. Returns the agent's status if it was among them.
fn reap(agent: i32) -> Option<Exit> {
    let mut found = None;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            if pid == agent {
                found = Some(Exit::from_wait_status(status));
            } else {
                log::debug!("reaped descendant {pid}");
            }
            continue;
        }
        if pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // 0: children remain but none has exited; -1/ECHILD: no children at all.
        return found;
    }
}

/// Forwards signals to the agent and reaps until the agent exits; returns how it ended.
pub fn supervise(blocked: &Blocked, agent: i32) -> io::Result<Exit> {
    loop {
        if let Some(exit) = reap(agent) {
            return Ok(exit);
        }
        match blocked.wait(Some(REAP_INTERVAL))? {
            Some(a) if a.signal == SIGCHLD => {}
            Some(a) => {
                log::info!(
                    "forwarding {} to the agent (pid {agent})",
                    signals::name(a.signal)
                );
                // SAFETY: kill has no memory-safety preconditions. The agent is not reaped
                // yet, so its pid cannot have been reused.
                if unsafe { libc::kill(agent, a.signal) } != 0 {
                    log::warn!(
                        "cannot forward {} to the agent: {}",
                        signals::name(a.signal),
                        io::Error::last_os_error()
                    );
                }
            }
            None => {}
        }
    }
}

/// Whether /proc belongs to our pid namespace (it does in a container; it does not when a pid
/// namespace was made without mounting a new /proc). Pids read from a foreign /proc must never
/// be signalled.
fn proc_is_ours() -> bool {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    std::fs::read_link("/proc/self").is_ok_and(|p| p.to_str() == Some(&me.to_string()))
}

/// Our children (re-parented orphans included), from /proc: `(pid, state)`. Empty when /proc
/// is not our pid namespace's.
pub fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    if !proc_is_ours() {
        log::debug!("/proc is not this pid namespace's; not looking for descendants there");
        return out;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, ppid)) = parse_stat(&stat) {
            if ppid == parent {
                out.push((pid, state));
            }
        }
    }
    out
}

/// State and parent pid from a `/proc/<pid>/stat` line; the command name may hold spaces and
/// parentheses, so fields are counted after the last `)`.
pub fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// After the agent has gone: ask the descendants it left behind to stop (SIGTERM), give them
/// `grace`, then SIGKILL what is left, reaping all of them. Nothing is left running or unreaped.
pub fn finish_descendants(blocked: &Blocked, grace: Duration) {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let living = |kids: &[(i32, char)]| kids.iter().filter(|(_, s)| *s != 'Z').count();
    let kids = children_of(me);
    if kids.is_empty() {
        return;
    }
    if living(&kids) > 0 {
        log::info!(
            "stopping {} process(es) the agent left behind",
            living(&kids)
        );
    }
    let mut signal = SIGTERM;
    // Each process gets one SIGTERM (a second one often means "stop now"), then SIGKILL once
    // the grace period is over.
    let mut signalled = std::collections::HashSet::new();
    let start = Instant::now();
    // Bounded: each round signals the current children; a killed child's own children are
    // re-parented to us and caught by the next round.
    for _ in 0..200 {
        reap(0);
        let kids = children_of(me);
        if kids.is_empty() {
            return;
        }
        if signal == SIGTERM && start.elapsed() >= grace {
            signal = SIGKILL;
            signalled.clear();
            log::warn!("descendants still running after {grace:?}; sending SIGKILL");
        }
        for (pid, state) in kids {
            if state != 'Z' && signalled.insert(pid) {
                // SAFETY: the pid is our unreaped child, so it cannot have been reused.
                unsafe { libc::kill(pid, signal) };
            }
        }
        let _ = blocked.wait(Some(Duration::from_millis(50)));
    }
    reap(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let s = "1234 (a) b (c)) S 77 1234 1234 0 -1 4194560 0 0";
        assert_eq!(parse_stat(s), Some(('S', 77)));
        assert_eq!(parse_stat("5 (x) Z 1 5 5"), Some(('Z', 1)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Signal(9).code(), 137);
        assert_eq!(Exit::Signal(15).code(), 143);
    }
}
