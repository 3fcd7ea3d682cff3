//! `--managed` in two processes: this one, still root, moves the devices to vfio-pci and
//! gives them back; a child it forks builds and runs the VM, then drops root like any run
//! (see [`crate::sandbox`]). The parent does nothing else while the guest runs, and gives
//! the devices back once the child is gone, however it ended: a clean stop, a panic (the
//! release build aborts), a seccomp kill, a vCPU that would not stop, SIGKILL. So the
//! restore never depends on the VM process unwinding, and a compromised VM process cannot
//! rebind host devices: it is no longer root, and the binding record lives here.

use std::process::ExitCode;

use crate::event_loop::{block, signal_set, STOP_SIGNALS};

/// Who this process is after [`fork_vm`].
#[derive(Debug)]
pub enum Role {
    /// The parent: supervise this child.
    Parent(libc::pid_t),
    /// The child: build and run the VM, then exit.
    Child,
}

/// How the VM process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildEnd {
    /// It exited with this status.
    Exited(u8),
    /// A signal ended it.
    Killed(i32),
}

impl ChildEnd {
    /// The status minivmm exits with: the child's, or 128 + the signal.
    pub fn exit_code(self) -> ExitCode {
        match self {
            ChildEnd::Exited(code) => ExitCode::from(code),
            ChildEnd::Killed(signal) => ExitCode::from(128u8.saturating_add(signal as u8)),
        }
    }

    /// A line for the user when the VM process died of a signal (it had no chance to say
    /// why itself).
    pub fn message(self) -> Option<String> {
        match self {
            ChildEnd::Exited(_) => None,
            ChildEnd::Killed(signal) => Some(format!(
                "the VM process was killed by signal {signal}{}",
                match signal {
                    libc::SIGABRT => " (it aborted: a panic)",
                    libc::SIGSYS => " (a system call its seccomp filter forbids)",
                    libc::SIGKILL => " (SIGKILL)",
                    libc::SIGSEGV => " (a memory fault)",
                    _ => "",
                }
            )),
        }
    }
}

/// The number of threads of this process (from /proc/self/status).
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// The stop signals and SIGCHLD: blocked before binding (`block_stop_signals`, then
/// [`fork_vm`]), taken by the parent with sigtimedwait.
fn waited_signals() -> libc::sigset_t {
    let mut signals = STOP_SIGNALS.to_vec();
    signals.push(libc::SIGCHLD);
    signal_set(&signals)
}

/// Fork the VM process. Must run while this process has one thread (fork copies only the
/// caller, and the child could inherit a lock another thread held).
pub fn fork_vm() -> Result<Role, String> {
    match thread_count() {
        Some(1) => {}
        Some(n) => {
            return Err(format!(
                "internal error: cannot fork the VM process with {n} threads running"
            ))
        }
        None => return Err("cannot count this process's threads in /proc/self/status".into()),
    }
    // SIGCHLD too, so its arrival waits for the parent's sigtimedwait.
    block(&signal_set(&[libc::SIGCHLD])).map_err(|e| format!("cannot block SIGCHLD: {e}"))?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the process is single-threaded (checked above), so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(format!(
            "cannot fork the VM process: {}",
            std::io::Error::last_os_error()
        )),
        0 => {
            // The VM must not outlive the process that gives its devices back.
            // SAFETY: prctl with plain integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } != parent {
                // The parent died between fork and prctl.
                std::process::exit(1);
            }
            Ok(Role::Child)
        }
        child => Ok(Role::Parent(child)),
    }
}

/// Wait for the VM process to end, passing it every stop signal this process receives,
/// then put the terminal back as it was.
pub fn supervise(child: libc::pid_t) -> ChildEnd {
    // The child may leave the terminal raw if it is killed: keep what it was.
    let terminal = crate::terminal::current_settings();
    let signals = waited_signals();
    let timeout = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    let end = loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let reaped = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if reaped == child {
            break if libc::WIFSIGNALED(status) {
                ChildEnd::Killed(libc::WTERMSIG(status))
            } else {
                ChildEnd::Exited(libc::WEXITSTATUS(status) as u8)
            };
        }
        if reaped == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // Not our child any more (cannot happen): nothing left to wait for.
            break ChildEnd::Exited(1);
        }
        // SAFETY: siginfo_t is plain data for sigtimedwait to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `signals` is initialised and blocked; `info` and `timeout` are valid.
        let signal = unsafe { libc::sigtimedwait(&signals, &mut info, &timeout) };
        if STOP_SIGNALS.contains(&signal) {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(child, signal) };
        }
    };
    if let Some(terminal) = &terminal {
        crate::terminal::restore_settings(terminal);
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_vm_process_is_named_and_exits_with_128_plus_the_signal() {
        let end = ChildEnd::Killed(libc::SIGABRT);
        assert!(end.message().unwrap().contains("a panic"));
        assert_eq!(end.exit_code(), ExitCode::from(134));
        assert_eq!(ChildEnd::Exited(3).message(), None);
        assert_eq!(ChildEnd::Exited(3).exit_code(), ExitCode::from(3));
    }
}
