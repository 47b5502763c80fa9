//! Signals the synchronous way: block them in every thread, then wait for them in one place with
//! `sigtimedwait`. No handlers, so no async-signal-safety traps. Used by the proxy (SIGTERM for a
//! graceful stop) and the launcher (forwarding and SIGCHLD reaping as PID 1).

use std::io;
use std::time::Duration;

pub use libc::{SIGCHLD, SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

/// A set of blocked signals to wait on.
#[derive(Clone, Copy)]
pub struct Blocked {
    set: libc::sigset_t,
}

/// What arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrived {
    pub signal: i32,
    /// The sender's pid (for SIGCHLD: the child's).
    pub pid: i32,
}

/// Blocks `signals` in the calling thread. Call it in `main` before spawning threads, so every
/// thread inherits the mask and the signals queue up for [`Blocked::wait`].
pub fn block(signals: &[i32]) -> io::Result<Blocked> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            if libc::sigaddset(&mut set, s) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Blocked { set })
    }
}

impl Blocked {
    /// Waits for one of the blocked signals, up to `timeout` (`None`: forever). `Ok(None)` on
    /// timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<Option<Arrived>> {
        loop {
            // SAFETY: siginfo_t is plain data filled by the kernel; timespec is initialised.
            let (rc, info) = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let rc = match timeout {
                    None => libc::sigwaitinfo(&self.set, &mut info),
                    Some(t) => {
                        let ts = libc::timespec {
                            // Capped so the value fits a 32-bit time_t too.
                            tv_sec: t.as_secs().min(i32::MAX as u64) as _,
                            tv_nsec: t.subsec_nanos() as libc::c_long,
                        };
                        libc::sigtimedwait(&self.set, &mut info, &ts)
                    }
                };
                (rc, info)
            };
            if rc >= 0 {
                // SAFETY: the kernel filled si_pid for the signals we wait on.
                let pid = unsafe { info.si_pid() };
                return Ok(Some(Arrived { signal: rc, pid }));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(None),
                Some(libc::EINTR) => continue,
                _ => return Err(err),
            }
        }
    }
}

/// Restores an empty signal mask and default dispositions. For a child between fork and exec
/// (`CommandExt::pre_exec`): a blocked mask is inherited across exec and would leave the agent
/// deaf to SIGTERM. Only async-signal-safe calls are made.
pub fn reset_for_child() -> io::Result<()> {
    // SAFETY: sigemptyset/sigprocmask/signal are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        for s in [
            SIGTERM,
            SIGINT,
            SIGHUP,
            SIGQUIT,
            SIGUSR1,
            SIGUSR2,
            SIGCHLD,
            libc::SIGPIPE,
        ] {
            libc::signal(s, libc::SIG_DFL);
        }
    }
    Ok(())
}

/// A short name for logs.
pub fn name(signal: i32) -> String {
    match signal {
        SIGTERM => "SIGTERM".into(),
        SIGINT => "SIGINT".into(),
        SIGHUP => "SIGHUP".into(),
        SIGQUIT => "SIGQUIT".into(),
        SIGUSR1 => "SIGUSR1".into(),
        SIGUSR2 => "SIGUSR2".into(),
        SIGCHLD => "SIGCHLD".into(),
        SIGKILL => "SIGKILL".into(),
        n => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_waited_for_not_delivered() {
        // Run in a dedicated thread so the mask does not leak into other tests' threads.
        std::thread::spawn(|| {
            let blocked = block(&[SIGUSR2]).unwrap();
            assert_eq!(blocked.wait(Some(Duration::from_millis(10))).unwrap(), None);
            // SAFETY: raising a blocked signal at our own thread only queues it.
            unsafe { libc::pthread_kill(libc::pthread_self(), SIGUSR2) };
            let got = blocked.wait(Some(Duration::from_secs(5))).unwrap().unwrap();
            assert_eq!(got.signal, SIGUSR2);
        })
        .join()
        .unwrap();
    }
}
