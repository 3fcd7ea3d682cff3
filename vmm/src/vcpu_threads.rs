//! The vCPU threads: started once, each confined by its seccomp filter, kicked out of
//! KVM_RUN with a signal, and parked while the machine is reset for a guest reboot. They
//! live as long as the VM: a thread started later would inherit the main thread's filter,
//! which does not allow KVM_RUN (filters only ever narrow).

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;

use crate::coalesced::CoalescedIo;
use crate::cpu::snapshot::VcpuSnapshot;
use crate::event_loop::{Finish, RunState};
use crate::sandbox::{self, Fault, Sandbox, ThreadKind};
use crate::vcpu::{Buses, ExitCounters, Outcome, VcpuRunner};

/// How long vCPU threads get to stop (or park) before minivmm gives up on them.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// What every vCPU thread shares.
pub struct Shared {
    /// Where exits go.
    pub buses: Arc<Buses>,
    /// Exit statistics, per vCPU.
    pub counters: Arc<Vec<ExitCounters>>,
    /// KVM's coalesced ring, when there is one.
    pub coalesced: Option<Arc<CoalescedIo>>,
    /// Where a vCPU reports how its run ended.
    pub state: Arc<RunState>,
    /// The filters to install.
    pub sandbox: Sandbox,
    /// Each thread waits here, confined, until the main thread has confined itself.
    pub start: Arc<Barrier>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Parking: the threads that reached it, and what the main thread decided next.
#[derive(Debug, Default)]
struct Park {
    parked: usize,
    /// Bumped by each release.
    generation: u64,
    /// Set for good: every thread ends instead of running again.
    exit: bool,
}

/// The running (or parked) vCPU threads.
pub struct VcpuThreads {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    park: Arc<(Mutex<Park>, Condvar)>,
}

impl std::fmt::Debug for VcpuThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuThreads")
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

fn lock(park: &Mutex<Park>) -> MutexGuard<'_, Park> {
    park.lock().unwrap_or_else(|e| e.into_inner())
}

impl VcpuThreads {
    /// Start one thread per vCPU; each restores its `snapshot` (when given) after every
    /// machine reset.
    pub fn spawn(
        vcpus: Vec<VcpuFd>,
        snapshots: Vec<Option<VcpuSnapshot>>,
        shared: &Shared,
    ) -> std::io::Result<VcpuThreads> {
        install_kick_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let park = Arc::new((Mutex::new(Park::default()), Condvar::new()));
        let mut threads = Vec::new();
        let mut snapshots = snapshots.into_iter();
        for (index, fd) in vcpus.into_iter().enumerate() {
            let snapshot = snapshots.next().flatten();
            let (stop, park) = (stop.clone(), park.clone());
            let (buses, counters, coalesced) = (
                shared.buses.clone(),
                shared.counters.clone(),
                shared.coalesced.clone(),
            );
            let (state, sandbox, start) =
                (shared.state.clone(), shared.sandbox, shared.start.clone());
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let confined = sandbox.confine(ThreadKind::Vcpu);
                    start.wait();
                    if let Err(e) = confined {
                        let reason = format!("vCPU {index}: sandbox: {e}");
                        state.finish(Finish::Vcpu(index, Outcome::Failed(reason)));
                        return;
                    }
                    if index == 0 {
                        inject_vcpu_fault();
                    }
                    let Some(counters) = counters.get(index) else {
                        return;
                    };
                    let mut fd = fd;
                    let mut runnable = true;
                    loop {
                        if runnable {
                            let outcome = VcpuRunner {
                                fd: &mut fd,
                                index,
                                buses: &buses,
                                stop: &stop,
                                counters,
                                coalesced: coalesced.as_deref(),
                            }
                            .run();
                            state.finish(Finish::Vcpu(index, outcome));
                        }
                        if !wait_parked(&park) {
                            return;
                        }
                        // The machine was reset while this thread waited: its vCPU goes back
                        // to the state it had at hand-off.
                        runnable = match snapshot.as_ref().map(|s| s.restore(&fd)) {
                            Some(Ok(())) => true,
                            Some(Err(e)) => {
                                let reason = format!("reboot: {e}");
                                state.finish(Finish::Vcpu(index, Outcome::Failed(reason)));
                                false
                            }
                            None => false,
                        };
                    }
                })?;
            threads.push(thread);
        }
        Ok(VcpuThreads {
            threads,
            stop,
            park,
        })
    }

    /// Stop every vCPU where it is and wait until all are parked (out of KVM_RUN and of
    /// every device). `Err` lists those that did not park within [`STOP_GRACE`].
    pub fn park(&self) -> Result<(), Vec<usize>> {
        self.stop.store(true, Ordering::Release);
        self.kick();
        let (park, changed) = &*self.park;
        let deadline = Instant::now() + STOP_GRACE;
        let mut state = lock(park);
        while state.parked < self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let finished = self.threads.iter().filter(|t| t.is_finished()).count();
                if state.parked + finished >= self.threads.len() {
                    break;
                }
                drop(state);
                return Err(self.unfinished());
            }
            state = changed
                .wait_timeout(state, left)
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        Ok(())
    }

    /// Let the parked vCPUs run again (after the machine was reset).
    pub fn resume(&self) {
        self.stop.store(false, Ordering::Release);
        self.release(false);
    }

    /// Stop every vCPU for good and wait (bounded) for the threads to end. Returns the
    /// indexes of threads still running at the deadline: they may be inside KVM_RUN or a
    /// device, so nothing they use may be freed.
    pub fn stop(self) -> Vec<usize> {
        self.stop.store(true, Ordering::Release);
        self.release(true);
        self.kick();
        let deadline = Instant::now() + STOP_GRACE;
        while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut stuck = Vec::new();
        for (index, thread) in self.threads.into_iter().enumerate() {
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                stuck.push(index);
            }
        }
        stuck
    }

    fn release(&self, exit: bool) {
        let (park, changed) = &*self.park;
        let mut state = lock(park);
        state.parked = 0;
        state.exit |= exit;
        state.generation = state.generation.wrapping_add(1);
        changed.notify_all();
    }

    /// Signal every thread still running, so a KVM_RUN in progress returns.
    fn kick(&self) {
        for thread in self.threads.iter().filter(|t| !t.is_finished()) {
            // SAFETY: the thread has not been joined, so its pthread_t is valid (a finished
            // but unjoined thread ignores the signal).
            unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
        }
    }

    fn unfinished(&self) -> Vec<usize> {
        let (park, _) = &*self.park;
        let parked = lock(park).parked;
        // Which ones parked is not recorded; name those whose threads still run.
        let running: Vec<usize> = self
            .threads
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_finished())
            .map(|(i, _)| i)
            .collect();
        if parked == 0 {
            running
        } else {
            running.into_iter().skip(parked).collect()
        }
    }
}

/// A vCPU thread's side of parking: say it is parked, wait for the next release. Returns
/// whether to run again.
fn wait_parked(park: &(Mutex<Park>, Condvar)) -> bool {
    let (park, changed) = park;
    let mut state = lock(park);
    if state.exit {
        return false;
    }
    state.parked += 1;
    let generation = state.generation;
    changed.notify_all();
    while state.generation == generation {
        state = changed.wait(state).unwrap_or_else(|e| e.into_inner());
    }
    !state.exit
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// The kick handler ([`crate::vcpu::on_kick`]) makes KVM_RUN return EINTR, even when the
/// signal lands just before the thread enters it.
fn install_kick_handler() {
    if let Err(e) =
        vmm_sys_util::signal::register_signal_handler(kick_signal(), crate::vcpu::on_kick)
    {
        log::warn!("cannot install the vCPU kick handler: {e}");
    }
}

/// [`Fault::VcpuPanic`] and [`Fault::VcpuSyscall`], when the test suite asks for them.
fn inject_vcpu_fault() {
    match sandbox::injected_fault() {
        Some(Fault::VcpuPanic) => panic!("test fault: vCPU 0 panics"),
        Some(Fault::VcpuSyscall) => {
            // SAFETY: socket(2) with constant arguments; the descriptor (if any) is closed.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                // SAFETY: `fd` was just returned by socket and is owned here.
                unsafe { libc::close(fd) };
            }
        }
        _ => {}
    }
}
