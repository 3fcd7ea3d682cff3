//! Guest RAM DMA-mapped on a thread of its own while the guest boots.
//!
//! `VFIO_IOMMU_MAP_DMA` pins every page of guest RAM, and guest RAM must be faulted in
//! (allocated and zeroed) first: for a large guest that is the longest step of a start.
//! No device can reach memory before its driver turns bus mastering on, so the mapping
//! runs beside the kernel's loading and the guest's boot, and a guest's first write that
//! sets a function's Bus Master Enable waits at the [`DmaGate`] until all of guest RAM is
//! mapped. A map that fails keeps bus mastering off and ends the run with its reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use vfio_ioctls::VfioContainer;
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _};

use crate::event_loop::{Finish, RunState};
use crate::memory::GuestMemory;
use crate::sandbox::{Sandbox, ThreadKind};

/// Why a mapping that was told to stop did not finish.
const ABANDONED: &str = "DMA mapping abandoned: the VM is going away";

/// Where the mapping of guest RAM stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mapping {
    Running,
    Done,
    Failed(String),
}

#[derive(Debug)]
struct GateState {
    mapping: Mapping,
    /// The running guest's state, told when the mapping fails.
    run: Option<Arc<RunState>>,
}

/// What holds a function's bus mastering until guest RAM is DMA-mapped.
#[derive(Debug)]
pub struct DmaGate {
    state: Mutex<GateState>,
    settled: Condvar,
}

impl DmaGate {
    /// A gate that stays shut until [`DmaGate::settle`].
    pub fn new() -> Self {
        DmaGate {
            state: Mutex::new(GateState {
                mapping: Mapping::Running,
                run: None,
            }),
            settled: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the mapping has ended: `Ok` once all of guest RAM is mapped, else why not.
    pub fn wait(&self) -> Result<(), String> {
        let mut state = self.lock();
        loop {
            match &state.mapping {
                Mapping::Running => {
                    state = self.settled.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                Mapping::Done => return Ok(()),
                Mapping::Failed(why) => return Err(why.clone()),
            }
        }
    }

    /// The mapping is still running: a [`DmaGate::wait`] now would block.
    pub fn pending(&self) -> bool {
        self.lock().mapping == Mapping::Running
    }

    /// Record how the mapping ended and wake every waiter; a failure ends the run.
    fn settle(&self, result: Result<(), String>) {
        let mut state = self.lock();
        state.mapping = match result {
            Ok(()) => Mapping::Done,
            Err(why) => Mapping::Failed(why),
        };
        if let (Mapping::Failed(why), Some(run)) = (&state.mapping, &state.run) {
            run.finish(Finish::Host(why.clone()));
        }
        drop(state);
        self.settled.notify_all();
    }

    /// From now on a failed mapping ends the run `run` (at once, if it already failed).
    pub fn watch(&self, run: Arc<RunState>) {
        let mut state = self.lock();
        if let Mapping::Failed(why) = &state.mapping {
            run.finish(Finish::Host(why.clone()));
        }
        state.run = Some(run);
    }
}

impl Default for DmaGate {
    fn default() -> Self {
        Self::new()
    }
}

/// The Command register's offset in configuration space, and its Bus Master Enable bit.
const COMMAND: u16 = 0x04;
const BUS_MASTER: u8 = 0x04;

/// Where the Command register's low byte sits in a write at `offset` (if the write is long
/// enough to reach it).
fn command_byte(offset: u16) -> Option<usize> {
    COMMAND.checked_sub(offset).map(usize::from)
}

/// `data` written at configuration offset `offset` sets Bus Master Enable.
pub fn sets_bus_master(offset: u16, data: &[u8]) -> bool {
    command_byte(offset)
        .and_then(|at| data.get(at))
        .is_some_and(|command| command & BUS_MASTER != 0)
}

/// The same write with Bus Master Enable cleared.
pub fn without_bus_master(offset: u16, data: &[u8]) -> Vec<u8> {
    let mut data = data.to_vec();
    if let Some(command) = command_byte(offset).and_then(|at| data.get_mut(at)) {
        *command &= !BUS_MASTER;
    }
    data
}

/// The thread that maps guest RAM; dropping it without [`DmaMapper::finish`] is not
/// allowed to leave mappings behind, so [`DmaMapper::finish`] is what the owner calls.
#[derive(Debug)]
pub struct DmaMapper {
    gate: Arc<DmaGate>,
    abandon: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<(u64, u64)>>>,
}

impl DmaMapper {
    /// Start prefaulting and mapping all of `memory` into `container` at guest-physical
    /// addresses; `gate` opens when it is done. The thread runs under its own seccomp
    /// filter and below the guest's priority (it only has to be done by the first bus-master
    /// enable, while the kernel's loading and the guest's boot are what a user waits for).
    pub fn start(
        container: Arc<VfioContainer>,
        memory: GuestMemory,
        gate: Arc<DmaGate>,
        sandbox: Sandbox,
    ) -> std::io::Result<Self> {
        allow_locking(&memory);
        let abandon = Arc::new(AtomicBool::new(false));
        let thread = {
            let (gate, abandon) = (gate.clone(), abandon.clone());
            std::thread::Builder::new()
                .name("dma-map".into())
                .spawn(move || {
                    let mut mapped = Vec::new();
                    let result = map_all(&container, &memory, sandbox, &abandon, &mut mapped);
                    gate.settle(result);
                    mapped
                })?
        };
        Ok(DmaMapper {
            gate,
            abandon,
            thread: Some(thread),
        })
    }

    /// Tell the mapping to stop at its next check (between calls), without waiting: the run
    /// is ending, and a vCPU held at the gate must be let go before the vCPUs are stopped.
    pub fn abandon(&self) {
        self.abandon.store(true, Ordering::Relaxed);
    }

    /// Stop the mapping where it is (between calls) and return what was mapped.
    pub fn finish(&mut self) -> Vec<(u64, u64)> {
        self.abandon.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(mapped)) => mapped,
            // A panicked mapper has settled nothing; what it mapped is unknown, and the
            // container's release unmaps everything anyway.
            Some(Err(_)) => {
                self.gate
                    .settle(Err("the DMA-mapping thread panicked".into()));
                Vec::new()
            }
            None => Vec::new(),
        }
    }
}

/// The mapping thread's work: its filter, its priority, prefault, then map region by region
/// (each mapped range recorded in `mapped`, for unmapping).
fn map_all(
    container: &VfioContainer,
    memory: &GuestMemory,
    sandbox: Sandbox,
    abandon: &AtomicBool,
    mapped: &mut Vec<(u64, u64)>,
) -> Result<(), String> {
    // SAFETY: setpriority on the calling thread (who 0) with a plain number; a failure
    // only leaves the thread at the normal priority.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    // Asked before the filter: the standard library reads cgroup files for it.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    sandbox
        .confine(ThreadKind::DmaMap)
        .map_err(|e| format!("the DMA-mapping thread: {e}"))?;
    let start = Instant::now();
    match crate::memory::prefault(memory, cpus, abandon) {
        Ok(threads) => log::info!(
            "prefaulted guest RAM on {threads} thread(s) in {:.1} ms",
            start.elapsed().as_secs_f64() * 1000.0
        ),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Err(ABANDONED.into()),
        Err(e) => log::info!("guest RAM not prefaulted ({e}): VFIO faults it in"),
    }
    let start = Instant::now();
    for region in memory.iter() {
        if abandon.load(Ordering::Relaxed) {
            return Err(ABANDONED.into());
        }
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| format!("guest RAM: {e}"))?;
        let (iova, len) = (region.start_addr().0, region.len());
        // SAFETY: `host..host + len` is guest RAM, which the VM keeps mapped until after the
        // owner of this thread has joined it and unmapped what it recorded; guest RAM is
        // only ever accessed through volatile vm-memory accessors, as DMA-shared memory
        // requires.
        unsafe { container.vfio_dma_map(iova, len as usize, host) }.map_err(|e| {
            format!(
                "cannot DMA-map guest RAM at {iova:#x}+{len:#x}: {e} (raise the locked-memory limit: ulimit -l)"
            )
        })?;
        mapped.push((iova, len));
    }
    log::info!(
        "DMA-mapped {} MiB of guest RAM in {:.1} ms",
        mapped.iter().map(|d| d.1).sum::<u64>() >> 20,
        start.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

/// While still root: let the process lock all of guest RAM (pinning counts against
/// `RLIMIT_MEMLOCK` once root and its CAP_IPC_LOCK are given up, and the mapping may end
/// after that). Without the right to raise the limit it stays as it is: a limit too low
/// then fails the map with a message that says to raise it.
fn allow_locking(memory: &GuestMemory) {
    let ram: u64 = memory.iter().map(|r| r.len()).sum();
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return;
    }
    let wanted = limit.rlim_cur.saturating_add(ram);
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max.max(wanted),
    };
    // SAFETY: setrlimit with a filled struct; refused (EPERM) without CAP_SYS_RESOURCE.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } != 0 {
        log::debug!(
            "locked-memory limit left at {} bytes: {}",
            limit.rlim_cur,
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bus_master_is_seen_and_cleared_in_writes_that_cover_the_command_register() {
        assert!(sets_bus_master(0x04, &[0x06]));
        assert!(sets_bus_master(0x04, &[0x07, 0x00, 0x10, 0x00]));
        assert!(sets_bus_master(0x04, &[0x04, 0x01]));
        assert!(!sets_bus_master(0x04, &[0x03]));
        assert!(!sets_bus_master(0x05, &[0xff]));
        assert!(!sets_bus_master(0x06, &[0xff, 0xff]));
        assert!(!sets_bus_master(0x00, &[0xff, 0xff, 0xff, 0xff]));
        assert!(!sets_bus_master(0x3c, &[0x04]));
        assert_eq!(without_bus_master(0x04, &[0x07, 0x01]), vec![0x03, 0x01]);
        assert_eq!(without_bus_master(0x3c, &[0x07]), vec![0x07]);
    }

    #[test]
    fn a_waiter_is_held_until_the_mapping_is_done() {
        let gate = Arc::new(DmaGate::new());
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.wait())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the gate let a waiter through early");
        assert!(gate.pending());
        gate.settle(Ok(()));
        assert!(!gate.pending());
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(gate.wait(), Ok(()));
    }

    #[test]
    fn a_failed_mapping_ends_the_run_whether_watched_before_or_after() {
        let before = Arc::new(RunState::new().unwrap());
        let gate = DmaGate::new();
        gate.watch(before.clone());
        assert!(before.finished().is_none());
        gate.settle(Err("cannot DMA-map guest RAM".into()));
        assert_eq!(gate.wait(), Err("cannot DMA-map guest RAM".into()));
        assert!(matches!(before.finished(), Some(Finish::Host(why)) if why.contains("DMA-map")));
        let after = Arc::new(RunState::new().unwrap());
        gate.watch(after.clone());
        assert!(matches!(after.finished(), Some(Finish::Host(_))));
    }
}
