//! The vCPU run loop: KVM exits go to the port-I/O and MMIO buses until the guest is done.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use minivmm_devices::bus::{Bus, Effect};

use crate::coalesced::{CoalescedIo, TxZone};
use crate::exit_stats::Access;
pub use crate::exit_stats::ExitCounters;

/// The two buses a vCPU's exits are routed to.
#[derive(Debug, Default)]
pub struct Buses {
    /// x86 I/O ports.
    pub pio: Bus,
    /// Trapped MMIO (everything that is not a memory slot).
    pub mmio: Bus,
}

/// How a vCPU's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (ACPI S5 or a KVM shutdown system event).
    PowerOff,
    /// The guest asked to reboot.
    Reboot,
    /// The guest wrote its result to the exit device (`--exit-device`).
    Exit(u8),
    /// A vCPU shut down (a triple fault): what happened, where known. Linux's `reboot=t`
    /// reboots this way; a crash does too.
    Shutdown(String),
    /// HLT reached userspace: only happens without an in-kernel irqchip.
    Halted,
    /// The VMM asked the vCPU to stop.
    Stopped,
    /// The vCPU cannot go on: a fault, a failed entry, a KVM internal error.
    Failed(String),
}

/// One vCPU and what it needs to run.
#[derive(Debug)]
pub struct VcpuRunner<'a> {
    /// The KVM vCPU.
    pub fd: &'a mut VcpuFd,
    /// Its index (and APIC id).
    pub index: usize,
    /// Where exits go.
    pub buses: &'a Buses,
    /// Set by the VMM to stop the vCPU at its next exit.
    pub stop: &'a AtomicBool,
    /// Exit statistics.
    pub counters: &'a ExitCounters,
    /// Queued writes to replay before each exit, when KVM coalesces port I/O.
    pub coalesced: Option<&'a CoalescedIo>,
}

/// The result of handling one exit.
enum Step {
    Continue,
    Done(Outcome),
    Fault(String),
}

fn effect_outcome(effect: Option<Effect>, coalesced: Option<&CoalescedIo>) -> Step {
    match effect {
        Some(Effect::PowerOff) => Step::Done(Outcome::PowerOff),
        Some(Effect::Reboot) => Step::Done(Outcome::Reboot),
        Some(Effect::Exit(status)) => Step::Done(Outcome::Exit(status)),
        Some(Effect::SerialTxPolled(polled)) => {
            if let Some(coalesced) = coalesced {
                coalesced.set_tx_polled(TxZone::Com1, polled);
            }
            Step::Continue
        }
        None => Step::Continue,
    }
}

thread_local! {
    /// The `kvm_run` page of the vCPU this thread is running, for [`on_kick`]; null while
    /// the thread runs none.
    static RUNNING: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The handler of the kick signal: a KVM_RUN already in progress is interrupted by the
/// signal itself; one the thread is about to enter returns EINTR at once because the
/// handler sets `immediate_exit`. Without it a kick that lands between the stop check and
/// the ioctl would be lost until the guest's next exit.
pub extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialised thread-local without a destructor: reading it allocates nothing
    // and takes no lock, so it is fine in a signal handler.
    let run = RUNNING.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is set by `RunningGuard` to the kvm_run page of the VcpuFd this
        // thread is running, and cleared before that run returns, so the page is mapped;
        // immediate_exit is a byte KVM reads at entry.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Publishes a vCPU's `kvm_run` page to [`on_kick`] for as long as it lives.
struct RunningGuard;

impl RunningGuard {
    fn new(fd: &mut VcpuFd) -> RunningGuard {
        RUNNING.with(|cell| cell.set(fd.get_kvm_run()));
        RunningGuard
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        RUNNING.with(|cell| cell.set(std::ptr::null_mut()));
    }
}

/// KVM_SYSTEM_EVENT types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;

impl VcpuRunner<'_> {
    /// Run until the guest powers off, reboots, faults, or the VMM stops it.
    pub fn run(&mut self) -> Outcome {
        // Dropped before `self.fd` can be: the page stays mapped while published.
        let _running = RunningGuard::new(self.fd);
        loop {
            if self.stop.load(Ordering::Acquire) {
                if let Some(coalesced) = self.coalesced {
                    coalesced.drain(self.buses);
                }
                // Where a stopped guest was: the first question about a guest that hung.
                log::info!("{}", self.describe("stopped"));
                return Outcome::Stopped;
            }
            match self.step() {
                Step::Continue => {}
                Step::Done(outcome) => return outcome,
                Step::Fault(reason) => return Outcome::Failed(self.describe(&reason)),
            }
        }
    }

    fn step(&mut self) -> Step {
        let (buses, counters, coalesced) = (self.buses, self.counters, self.coalesced);
        let exit = self.fd.run();
        // Writes KVM queued happened before this exit: replay them first, in order.
        if let Some(coalesced) = coalesced {
            coalesced.drain(buses);
        }
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                counters.record(Access::PortRead, u64::from(port));
                if !buses.pio.read(u64::from(port), data) {
                    counters.unclaimed.fetch_add(1, Ordering::Relaxed);
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                counters.record(Access::PortWrite, u64::from(port));
                let effect = buses.pio.write(u64::from(port), data).unwrap_or_else(|_| {
                    counters.unclaimed.fetch_add(1, Ordering::Relaxed);
                    None
                });
                effect_outcome(effect, coalesced)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                counters.record(Access::MmioRead, addr);
                if !buses.mmio.read(addr, data) {
                    counters.unclaimed.fetch_add(1, Ordering::Relaxed);
                    log::debug!("unclaimed MMIO read at {addr:#x}");
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                counters.record(Access::MmioWrite, addr);
                let effect = buses.mmio.write(addr, data).unwrap_or_else(|_| {
                    counters.unclaimed.fetch_add(1, Ordering::Relaxed);
                    log::debug!("unclaimed MMIO write at {addr:#x}");
                    None
                });
                effect_outcome(effect, coalesced)
            }
            Ok(VcpuExit::Hlt) => Step::Done(Outcome::Halted),
            Ok(VcpuExit::Shutdown) if crate::cpu::cpuid::host_is_amd() => {
                // KVM on SVM reinitialises the VMCB after a SHUTDOWN intercept (the CPU leaves
                // it undefined), so the registers now read as after RESET (RIP 0xfff0): saying
                // that RIP would send whoever reads this to the reset vector.
                Step::Done(Outcome::Shutdown(format!(
                    "vCPU {}: shutdown (triple fault); KVM on AMD resets a vCPU's registers at a \
                     shutdown, so where it faulted is not known",
                    self.index
                )))
            }
            Ok(VcpuExit::Shutdown) => {
                Step::Done(Outcome::Shutdown(self.describe("shutdown (triple fault)")))
            }
            Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, _)) => Step::Done(Outcome::PowerOff),
            Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, _)) => Step::Done(Outcome::Reboot),
            Ok(VcpuExit::SystemEvent(kind, _)) => Step::Fault(format!("system event {kind}")),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Step::Fault(format!(
                "entry failed (hardware reason {reason:#x}, host cpu {cpu})"
            )),
            Ok(VcpuExit::InternalError) => {
                let suberror = {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: KVM filled the `internal` member of the union for this exit.
                    unsafe { run.__bindgen_anon_1.internal.suberror }
                };
                Step::Fault(format!("KVM internal error (suberror {suberror})"))
            }
            Ok(VcpuExit::Intr) => Step::Continue,
            Ok(other) => Step::Fault(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick: the stop flag was set before it was sent, so the next check sees
                // it; a later kick sets the byte again.
                self.fd.set_kvm_immediate_exit(0);
                Step::Continue
            }
            Err(e) => Step::Fault(format!("KVM_RUN failed: {e}")),
        }
    }

    fn describe(&self, reason: &str) -> String {
        match self.fd.get_regs() {
            Ok(regs) => format!("vCPU {}: {reason} at RIP {:#x}", self.index, regs.rip),
            Err(_) => format!("vCPU {}: {reason} (RIP unavailable)", self.index),
        }
    }
}
