//! The vCPU run loop: KVM exits go to the port-I/O and MMIO buses until the guest is done.

use std::sync::atomic::{AtomicBool, Ordering};

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
        Some(Effect::SerialTxPolled(polled)) => {
            if let Some(coalesced) = coalesced {
                coalesced.set_tx_polled(TxZone::Com1, polled);
            }
            Step::Continue
        }
        None => Step::Continue,
    }
}

/// KVM_SYSTEM_EVENT types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;

impl VcpuRunner<'_> {
    /// Run until the guest powers off, reboots, faults, or the VMM stops it.
    pub fn run(&mut self) -> Outcome {
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
            Ok(VcpuExit::Shutdown) => Step::Fault("shutdown (triple fault)".into()),
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
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Continue,
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
