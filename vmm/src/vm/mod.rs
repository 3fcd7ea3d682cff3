//! Building a VM from a [`VmConfig`] as a recipe of named steps, and running it.

mod machine;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use minivmm_firmware::layout::GuestLayout;

use crate::coalesced::CoalescedIo;
use crate::config::{SerialMode, VmConfig};
use crate::console_uart;
use crate::cpu::snapshot::{ChipsSnapshot, VcpuSnapshot};
use crate::cpu::{self, cpuid, msrs, regs};
use crate::disks::{self, Disks};
use crate::event_loop::{ConsoleInput, ExitWatcher, Finish, RunState, SignalFd, StdinForwarder};
use crate::loader::{self, LoadConfig};
use crate::memory::{self, GuestMemory, GuestRam};
use crate::passthrough::{self, Passthrough};
use crate::reboot::{self, Rebooter};
use crate::sandbox::{self, Fault, Sandbox, ThreadKind};
use crate::terminal::RawTerminal;
use crate::vcpu::{Buses, ExitCounters, Outcome};
use crate::vcpu_threads::{self, VcpuThreads, STOP_GRACE};
use machine::Machine;

/// Most vCPUs the MADT can number (8-bit APIC ids, one left for the IOAPIC).
pub const MAX_CPUS: usize = 254;
/// Where KVM puts the three pages of its real-mode TSS (needed on Intel; harmless on AMD).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm is missing.
    #[error("/dev/kvm does not exist: enable virtualization in the firmware and load kvm_intel or kvm_amd")]
    NoKvm,
    /// /dev/kvm is not accessible.
    #[error("no permission to open /dev/kvm: run as root or add your user to the kvm group")]
    KvmPermission,
    /// Other KVM failures.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// Too many vCPUs.
    #[error("--cpus {0} is more than minivmm can run here (at most {1})")]
    TooManyCpus(usize, usize),
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// Kernel, initramfs, command line, firmware tables.
    #[error(transparent)]
    Load(#[from] loader::Error),
    /// vCPU setup.
    #[error(transparent)]
    Cpu(#[from] cpu::Error),
    /// Opening the console file, eventfds, threads.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Giving up root, seccomp.
    #[error("sandbox: {0} (--seccomp off or --user root run without it)")]
    Sandbox(String),
    /// Device placement.
    #[error("cannot place a device: {0}")]
    Device(String),
    /// `--gpu`.
    #[error(transparent)]
    Passthrough(#[from] passthrough::Error),
    /// `--disk`.
    #[error(transparent)]
    Disk(#[from] crate::disks::Error),
    /// vCPU threads that did not stop: the VM was leaked, and the process must end.
    #[error("vCPU thread(s) {stuck:?} did not stop within {grace} s of the end of the run ({finish:?}); ending the process without freeing what they use", stuck = .0, finish = .1, grace = STOP_GRACE.as_secs())]
    VcpusStuck(Vec<usize>, Finish),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io(what, e)
}

/// A VM ready to run.
pub struct Vm {
    // Field order is drop order: vCPUs before the VM, the VM before guest memory. While the
    // VM runs, each vCPU is owned by its thread.
    vcpus: Vec<VcpuFd>,
    /// Each vCPU's state at hand-off (empty with `--no-reboot`).
    snapshots: Vec<VcpuSnapshot>,
    /// What a guest reboot needs (`None` with `--no-reboot`).
    reboot: Option<RebootParts>,
    coalesced: Option<Arc<CoalescedIo>>,
    /// Disks: their I/O threads stop before guest RAM goes.
    disks: Disks,
    /// Passed-through devices: released (DMA unmapped) before guest RAM goes.
    passthrough: Option<Passthrough>,
    _vm: Arc<VmFd>,
    _memory: GuestRam,
    /// The guest's address map.
    pub layout: GuestLayout,
    buses: Arc<Buses>,
    /// The UART host input goes to: the one the command line's console names.
    console_input: Arc<Mutex<dyn ConsoleInput>>,
    attach_stdin: bool,
    /// Exit statistics, per vCPU.
    pub counters: Arc<Vec<ExitCounters>>,
    sandbox: Sandbox,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// The machine's parts a reboot resets, and what it loads again.
struct RebootParts {
    machine: reboot::Machine,
    reload: reboot::Reload,
}

impl Vm {
    /// Build the VM `config` describes, ready to run.
    pub fn build(config: &VmConfig) -> Result<Vm, Error> {
        preflight(config)?;
        log::info!("inputs checked");
        config.sandbox.prepare().map_err(Error::Sandbox)?;
        let kvm = open_kvm()?;
        check_cpu_count(&kvm, config.cpus)?;
        let supported = supported_cpuid(&kvm)?;
        let address_bits = cpuid::address_bits(&supported, cpuid::host_address_bits());
        let (mut layout, memory) = memory::create(config.memory, address_bits, config.hugepages)?;
        // Opened once, before the sandbox: a reboot loads them again from these.
        let kernel_file = loader::BootFile::open("kernel", &config.kernel)?;
        let mut initramfs_file = config
            .initramfs
            .as_deref()
            .map(|path| loader::BootFile::open("initramfs", path))
            .transpose()?;
        let images = disks::open(&config.disks)?;
        // Decompressing the kernel is the longest step (seconds under nested virtualization):
        // it runs on its own thread while the VM and its devices, passthrough included, are
        // built; if they fail, the loader is told to stop.
        let abandon = AtomicBool::new(false);
        let (machine, kernel) = std::thread::scope(|scope| {
            let loading = std::thread::Builder::new()
                .name("kernel-loader".into())
                .spawn_scoped(scope, || {
                    config
                        .sandbox
                        .confine(ThreadKind::Loader)
                        .map_err(Error::Sandbox)?;
                    Ok::<_, Error>(loader::load_kernel(&memory, &kernel_file, &abandon)?)
                })
                .map_err(io("cannot start the kernel-loader thread"))?;
            let machine = Machine::create(&kvm, config, &layout, &memory, images);
            if machine.is_err() {
                abandon.store(true, Ordering::Relaxed);
            }
            let kernel = loading.join().map_err(|_| {
                Error::Io(
                    "kernel-loader thread".into(),
                    std::io::Error::other("panicked"),
                )
            })?;
            Ok::<_, Error>((machine?, kernel?))
        })?;
        let Machine {
            disks,
            vm,
            uarts,
            buses,
            root,
            passthrough,
        } = machine;
        log::info!("kernel loaded");
        if let Some(passthrough) = &passthrough {
            layout.pci = passthrough.pci.clone();
        }
        let vbios = passthrough.as_ref().map_or(&[][..], |p| p.vbios.as_slice());
        let vga_text = passthrough.as_ref().is_some_and(|p| p.vga_routed);
        let boot = load_guest(
            &memory,
            &layout,
            config,
            (vbios, vga_text),
            initramfs_file.as_mut(),
            kernel,
        )?;
        log::info!("guest loaded, entry {:#x}", boot.entry);
        regs::write_boot_tables(&memory)?;
        let vcpus = create_vcpus(&kvm, &vm, &supported, config.cpus, boot.entry)?;
        // The state a reboot goes back to, read before the guest runs.
        let snapshots = if config.reboot {
            let msr_list = kvm
                .get_msr_index_list()
                .map_err(|e| Error::Kvm("KVM_GET_MSR_INDEX_LIST", e))?;
            vcpus
                .iter()
                .enumerate()
                .map(|(i, fd)| VcpuSnapshot::take(fd, i, msr_list.as_slice()))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let coalesced = vcpus
            .first()
            .and_then(|vcpu| CoalescedIo::new(&kvm, vm.clone(), vcpu))
            .map(Arc::new);
        if let Some(coalesced) = &coalesced {
            lock(&uarts.console).allow_queued_writes(coalesced.clone());
        }
        let reboot = if config.reboot {
            Some(RebootParts {
                machine: reboot::Machine {
                    vm: vm.clone(),
                    chips: ChipsSnapshot::take(&vm)?,
                    memory: memory.clone(),
                    com1: uarts.com1.clone(),
                    console: uarts.console.clone(),
                    root: root.clone(),
                    coalesced: coalesced.clone(),
                    disks: disks.resetter(),
                    pinned: passthrough.is_some(),
                },
                reload: reboot::Reload {
                    kernel: kernel_file,
                    initramfs: initramfs_file,
                    memory: memory.clone(),
                    layout: layout.clone(),
                    cmdline: config.cmdline.clone(),
                    cpus: config.cpus,
                    vbios: vbios.to_vec(),
                    vga_text,
                    entry: boot.entry,
                },
            })
        } else {
            None
        };
        let console_input: Arc<Mutex<dyn ConsoleInput>> =
            if console_uart::is_the_console(&config.cmdline) {
                uarts.console
            } else {
                uarts.com1
            };
        log::info!(
            "VM built: {} MiB, {} vCPUs",
            config.memory >> 20,
            config.cpus
        );
        let counters = Arc::new(
            (0..config.cpus)
                .map(|_| ExitCounters::new(config.exit_stats))
                .collect(),
        );
        Ok(Vm {
            vcpus,
            snapshots,
            reboot,
            coalesced,
            disks,
            passthrough,
            _vm: vm,
            _memory: memory,
            layout,
            buses,
            console_input,
            attach_stdin: config.serial == SerialMode::Stdio,
            counters,
            sandbox: config.sandbox,
        })
    }

    /// The passed-through devices (empty without `--gpu`).
    pub fn attached(&self) -> Vec<passthrough::Attached> {
        self.passthrough
            .as_ref()
            .map(|p| p.attached.clone())
            .unwrap_or_default()
    }

    /// Run until the guest powers off, a vCPU fails, the user quits or a signal arrives.
    pub fn run(mut self) -> Result<Finish, Error> {
        let state = Arc::new(RunState::new().map_err(io("cannot create an eventfd"))?);
        // Block the stop signals before any vCPU thread exists, so only the signalfd sees them.
        let signals = SignalFd::new().map_err(io("cannot set up signal handling"))?;
        let mut events =
            EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().map_err(|e| {
                Error::Io(
                    "cannot create the event loop".into(),
                    std::io::Error::other(format!("{e:?}")),
                )
            })?;
        events.add_subscriber(Arc::new(Mutex::new(ExitWatcher::new(
            state.clone(),
            signals,
        ))));
        let forwarder = self.attach_stdin.then(|| {
            Arc::new(Mutex::new(StdinForwarder::new(
                self.console_input.clone(),
                state.clone(),
            )))
        });
        let _raw_terminal = forwarder.as_ref().and_then(|forwarder| {
            events.add_subscriber(forwarder.clone());
            RawTerminal::enter()
        });
        // A failed DMA mapping of guest RAM ends the run (it continues once the guest runs).
        if let Some(passthrough) = &self.passthrough {
            passthrough.dma_gate().watch(state.clone());
        }
        // Everything that needs root is open or done: the guest runs without it.
        self.sandbox.drop_privileges().map_err(Error::Sandbox)?;
        self.disks
            .start(&self._memory, self.sandbox)
            .map_err(io("cannot start a disk's I/O thread"))?;
        if sandbox::injected_fault() == Some(Fault::WriteSysfs) {
            sandbox::try_writing_sysfs();
        }
        let mut rebooter = match self.reboot.take() {
            Some(parts) => Some(
                Rebooter::start(parts.machine, parts.reload, self.sandbox)
                    .map_err(io("cannot start the kernel-reloader thread"))?,
            ),
            None => None,
        };
        // Each vCPU installs its filter and waits here; the main thread installs its own
        // after starting them (a filter is inherited by threads started later, and filters
        // stack), then lets the guest run its first instruction.
        let start = Arc::new(Barrier::new(self.vcpus.len() + 1));
        let shared = vcpu_threads::Shared {
            buses: self.buses.clone(),
            counters: self.counters.clone(),
            coalesced: self.coalesced.clone(),
            state: state.clone(),
            sandbox: self.sandbox,
            start: start.clone(),
        };
        let snapshots = std::mem::take(&mut self.snapshots)
            .into_iter()
            .map(Some)
            .collect();
        let threads = VcpuThreads::spawn(std::mem::take(&mut self.vcpus), snapshots, &shared)
            .map_err(io("cannot start the vCPU threads"))?;
        let confined = self.sandbox.confine(ThreadKind::Main);
        start.wait();
        if let Err(e) = confined {
            let _ = threads.stop();
            return Err(Error::Sandbox(e));
        }
        log::info!("vCPUs running");
        let finish = loop {
            let finish = wait_for_finish(&state, &mut events, forwarder.as_ref());
            let (Some(resetter), Some(why)) = (rebooter.as_mut(), reboot_reason(&finish)) else {
                break finish;
            };
            // A vCPU held at the DMA gate parks only once the mapping is done, which the
            // reset waits for anyway.
            if let Some(passthrough) = &self.passthrough {
                let _ = passthrough.dma_gate().wait();
            }
            let parked = threads.park();
            if let Err(stuck) = parked {
                // As below: the stuck threads may still use the VM and guest RAM.
                std::mem::forget(rebooter);
                std::mem::forget(threads);
                std::mem::forget(self);
                return Err(Error::VcpusStuck(stuck, finish));
            }
            match resetter.reset(self.passthrough.as_mut()) {
                Ok(()) => {
                    if why.is_fault {
                        log::warn!(
                            "{}; restarting the guest (--no-reboot stops instead)",
                            why.text
                        );
                    } else {
                        // Said on stderr: a restarted guest is news (one that panics with
                        // panic=-1 restarts too).
                        log::warn!("the guest rebooted ({}); starting it again", why.text);
                    }
                    state.clear_reboot();
                    threads.resume();
                }
                Err(e) => {
                    let reason = format!("the guest rebooted, and starting it again failed: {e}");
                    break Finish::Vcpu(0, Outcome::Failed(reason));
                }
            }
        };
        if let Some(passthrough) = &self.passthrough {
            passthrough.stop_dma_map();
        }
        let stuck = threads.stop();
        if !stuck.is_empty() {
            // Guest RAM, the BAR mappings and the VFIO files stay as they are: the process
            // must end now, and only then may the kernel free them (`--managed` gives the
            // devices back from the supervising process once this one is gone).
            std::mem::forget(rebooter);
            std::mem::forget(self);
            return Err(Error::VcpusStuck(stuck, finish));
        }
        drop(rebooter);
        Ok(finish)
    }
}

/// Why a finished run is a reboot, and whether the guest chose it or faulted.
struct RebootReason {
    text: String,
    is_fault: bool,
}

/// A run that ended in a reboot request or a triple fault restarts (unless `--no-reboot`).
fn reboot_reason(finish: &Finish) -> Option<RebootReason> {
    match finish {
        Finish::Vcpu(_, Outcome::Reboot) => Some(RebootReason {
            text: "a reset request".into(),
            is_fault: false,
        }),
        Finish::Vcpu(_, Outcome::Shutdown(what)) => Some(RebootReason {
            text: what.clone(),
            is_fault: true,
        }),
        _ => None,
    }
}

/// Serve the event loop until the run has a finish reason.
fn wait_for_finish(
    state: &RunState,
    events: &mut EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    forwarder: Option<&Arc<Mutex<StdinForwarder>>>,
) -> Finish {
    loop {
        if let Some(finish) = state.finished() {
            return finish;
        }
        // Input waiting for the guest's FIFO is offered again every millisecond (a 16550
        // takes 64 bytes per interrupt; the guest drains it that fast).
        let waiting = forwarder.is_some_and(|f| {
            let mut forwarder = lock(f);
            forwarder.flush();
            forwarder.has_pending()
        });
        if let Err(e) = events.run_with_timeout(if waiting { 1 } else { 1000 }) {
            log::error!("event loop: {e:?}");
        }
    }
}

/// The checks that need no VM, before anything is built or (with `--managed`) moved: the
/// files, the command line, and whether the `--gpu` devices' BARs fit the guest.
pub fn preflight(config: &VmConfig) -> Result<(), Error> {
    let initramfs = config.initramfs.as_deref();
    loader::preflight(&config.kernel, initramfs, &config.cmdline)?;
    if !config.gpus.is_empty() {
        let bits = probe_address_bits();
        let layout = GuestLayout::new(config.memory, bits)
            .map_err(|e| memory::Error::Layout(config.memory >> 20, e))?;
        passthrough::preflight(&config.gpus, &layout)?;
    }
    Ok(())
}

/// The guest's physical address width, from KVM when /dev/kvm opens (else the host CPU's:
/// the build reports what is wrong with /dev/kvm).
fn probe_address_bits() -> u8 {
    let host = cpuid::host_address_bits();
    Kvm::new()
        .ok()
        .and_then(|kvm| kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).ok())
        .map_or(host.unwrap_or(36), |supported| {
            cpuid::address_bits(&supported, host)
        })
}

fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, Error> {
    let mut supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    // KVM emulates the TSC-deadline timer but leaves it out of the supported CPUID.
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        cpuid::offer_tsc_deadline(&mut supported);
    }
    Ok(supported)
}

fn open_kvm() -> Result<Kvm, Error> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => Error::NoKvm,
        libc::EACCES | libc::EPERM => Error::KvmPermission,
        _ => Error::Kvm("opening /dev/kvm", e),
    })
}

fn check_cpu_count(kvm: &Kvm, cpus: usize) -> Result<(), Error> {
    let max = kvm.get_max_vcpus().min(MAX_CPUS);
    if cpus > max {
        return Err(Error::TooManyCpus(cpus, max));
    }
    Ok(())
}

fn create_vm(kvm: &Kvm) -> Result<VmFd, Error> {
    let vm = kvm
        .create_vm()
        .map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
    Ok(vm)
}

/// The in-kernel PIC, IOAPIC and LAPICs, and the PIT, so timer and interrupt traffic never
/// leaves the kernel.
fn create_irqchip_and_pit(vm: &VmFd) -> Result<(), Error> {
    vm.create_irq_chip()
        .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::Kvm("KVM_CREATE_PIT2", e))
}

fn load_guest(
    memory: &GuestMemory,
    layout: &GuestLayout,
    config: &VmConfig,
    (vbios, vga_text): (&[passthrough::GuestVbios], bool),
    initramfs: Option<&mut loader::BootFile>,
    kernel: loader::LoadedKernel,
) -> Result<loader::BootInfo, Error> {
    let mut load = LoadConfig {
        initramfs,
        cmdline: &config.cmdline,
        cpus: config.cpus,
        vbios,
        vga_text,
    };
    Ok(loader::load(memory, layout, &mut load, kernel)?)
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    supported: &CpuId,
    cpus: usize,
    entry: u64,
) -> Result<Vec<VcpuFd>, Error> {
    let msr_list = kvm
        .get_msr_index_list()
        .map_err(|e| Error::Kvm("KVM_GET_MSR_INDEX_LIST", e))?;
    let mut vcpus = Vec::with_capacity(cpus);
    for index in 0..cpus {
        let vcpu = vm
            .create_vcpu(index as u64)
            .map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
        vcpu.set_cpuid2(&cpuid::for_vcpu(supported, index, cpus))
            .map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))?;
        msrs::setup(&vcpu, index, msr_list.as_slice())?;
        regs::setup_lapic(&vcpu, index)?;
        if index == 0 {
            regs::setup(&vcpu, index, entry)?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}
