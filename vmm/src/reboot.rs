//! A guest reboot in the same process: with every vCPU parked, the machine goes back to its
//! state at hand-off and the guest is loaded again.
//!
//! The steps, in order: passed-through devices quiesced, reset (as at start) and rebuilt as
//! handed off; root ports and UARTs back to their power-on registers; the PICs, IOAPIC and
//! PIT restored; guest RAM cleared (zeroed in place while a device may DMA into it, since
//! its pages stay pinned by VFIO; otherwise given back to the kernel); the kernel,
//! initramfs and firmware tables loaded again by the reloader thread; then each vCPU thread
//! restores its vCPU. The reloader runs under the loader's seccomp filter, reading the files
//! opened before the sandbox (the sandboxed process can open none).

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::VmFd;
use minivmm_devices::bus::Effect;
use minivmm_devices::pci::PciRoot;
use minivmm_devices::serial::SerialPort;
use minivmm_firmware::layout::GuestLayout;
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _, MemoryRegionAddress};

use crate::coalesced::{CoalescedIo, TxZone};
use crate::console_uart::ConsoleUart;
use crate::cpu::regs;
use crate::cpu::snapshot::ChipsSnapshot;
use crate::loader::{self, BootFile, LoadConfig};
use crate::memory::GuestMemory;
use crate::passthrough::{GuestVbios, Passthrough};
use crate::sandbox::{Sandbox, ThreadKind};

/// What the reloader needs to load the guest again.
pub struct Reload {
    /// The kernel, open.
    pub kernel: BootFile,
    /// The initramfs, open.
    pub initramfs: Option<BootFile>,
    /// Guest RAM.
    pub memory: GuestMemory,
    /// The guest's address map.
    pub layout: GuestLayout,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPUs (for the MADT).
    pub cpus: usize,
    /// VBIOS images for the firmware tables.
    pub vbios: Vec<GuestVbios>,
    /// A VGA text display is there (the zero page says so).
    pub vga_text: bool,
    /// The entry point of the first load: a reload must find the same.
    pub entry: u64,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload").finish_non_exhaustive()
    }
}

/// The thread that loads the guest again on request.
struct Reloader {
    requests: Option<Sender<()>>,
    replies: Receiver<Result<(), String>>,
    thread: Option<JoinHandle<()>>,
}

impl Reloader {
    fn start(mut reload: Reload, sandbox: Sandbox) -> std::io::Result<Reloader> {
        let (requests, waiting) = channel::<()>();
        let (answer, replies) = channel();
        let thread = std::thread::Builder::new()
            .name("kernel-reloader".into())
            .spawn(move || {
                if let Err(e) = sandbox.confine(ThreadKind::Loader) {
                    let _ = answer.send(Err(format!("sandbox: {e}")));
                    return;
                }
                while waiting.recv().is_ok() {
                    log::trace!("reloader: request");
                    let result = load_again(&mut reload);
                    log::trace!("reloader: loaded");
                    let _ = answer.send(result);
                    log::trace!("reloader: answered");
                }
            })?;
        Ok(Reloader {
            requests: Some(requests),
            replies,
            thread: Some(thread),
        })
    }

    fn reload(&self) -> Result<(), String> {
        self.requests
            .as_ref()
            .ok_or("the reloader is gone")?
            .send(())
            .map_err(|_| "the reloader thread ended".to_string())?;
        self.replies
            .recv()
            .map_err(|_| "the reloader thread ended".to_string())?
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        // Closing the request channel ends the thread's loop.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The kernel, initramfs, command line, zero page and tables, into cleared guest RAM.
fn load_again(reload: &mut Reload) -> Result<(), String> {
    let kernel = loader::load_kernel(&reload.memory, &reload.kernel, &AtomicBool::new(false))
        .map_err(|e| e.to_string())?;
    let mut load = LoadConfig {
        initramfs: reload.initramfs.as_mut(),
        cmdline: &reload.cmdline,
        cpus: reload.cpus,
        vbios: &reload.vbios,
        vga_text: reload.vga_text,
    };
    let boot = loader::load(&reload.memory, &reload.layout, &mut load, kernel)
        .map_err(|e| e.to_string())?;
    if boot.entry != reload.entry {
        return Err(format!(
            "the kernel's entry point moved from {:#x} to {:#x}",
            reload.entry, boot.entry
        ));
    }
    regs::write_boot_tables(&reload.memory).map_err(|e| e.to_string())
}

/// The machine's parts a reset touches.
pub struct Machine {
    /// The VM (its interrupt chips).
    pub vm: Arc<VmFd>,
    /// The chips as handed off.
    pub chips: ChipsSnapshot,
    /// Guest RAM.
    pub memory: GuestMemory,
    /// COM1.
    pub com1: Arc<Mutex<SerialPort>>,
    /// The console UART.
    pub console: Arc<Mutex<ConsoleUart>>,
    /// The PCI tree (root ports).
    pub root: Arc<Mutex<PciRoot>>,
    /// KVM's coalesced ring, when there is one.
    pub coalesced: Option<Arc<CoalescedIo>>,
    /// The disks.
    pub disks: crate::disks::Resetter,
    /// Guest RAM is DMA-mapped (pinned) for passed-through devices.
    pub pinned: bool,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").finish_non_exhaustive()
    }
}

/// Resets the machine for a guest reboot.
pub struct Rebooter {
    machine: Machine,
    reloader: Reloader,
    /// Reboots so far.
    pub count: u32,
}

impl std::fmt::Debug for Rebooter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebooter")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Rebooter {
    /// Ready for reboots: the reloader thread started (confined as a loader).
    pub fn start(machine: Machine, reload: Reload, sandbox: Sandbox) -> std::io::Result<Self> {
        Ok(Rebooter {
            machine,
            reloader: Reloader::start(reload, sandbox)?,
            count: 0,
        })
    }

    /// Put the machine back to its state at hand-off and load the guest again. Every vCPU
    /// must be parked.
    pub fn reset(&mut self, passthrough: Option<&mut Passthrough>) -> Result<(), String> {
        let machine = &self.machine;
        if let Some(passthrough) = passthrough {
            passthrough.reset().map_err(|e| e.to_string())?;
            log::debug!("reboot: passed-through devices reset");
        }
        lock(&machine.root).reset_ports();
        machine.disks.reset();
        if let Effect::SerialTxPolled(polled) = lock(&machine.com1).reset() {
            if let Some(coalesced) = &machine.coalesced {
                coalesced.set_tx_polled(TxZone::Com1, polled);
            }
        }
        lock(&machine.console).reset();
        machine
            .chips
            .restore(&machine.vm)
            .map_err(|e| e.to_string())?;
        log::debug!("reboot: devices and interrupt chips reset");
        clear(&machine.memory, machine.pinned);
        log::debug!("reboot: guest RAM cleared");
        self.reloader.reload()?;
        log::debug!("reboot: guest loaded again");
        self.count += 1;
        Ok(())
    }
}

/// Zero guest RAM. Pages a device may DMA into stay pinned by VFIO, so they are written in
/// place; otherwise they are given back to the kernel, which hands out zeroed pages on the
/// next touch (far cheaper: nothing is written, and the memory is freed meanwhile; for
/// huge pages a hole is punched in their memfd, whose shared mapping would keep its
/// contents through `MADV_DONTNEED`).
fn clear(memory: &GuestMemory, pinned: bool) {
    for region in memory.iter() {
        if !pinned && region.discard() {
            continue;
        }
        let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len() as usize;
        // SAFETY: `host` is the start of this region's mapping, `len` bytes long and owned
        // by guest RAM, which lives as long as `memory`; every vCPU is parked and every
        // passed-through device quiesced (bus mastering off), so nothing else accesses it.
        unsafe { std::ptr::write_bytes(host, 0, len) };
    }
}
