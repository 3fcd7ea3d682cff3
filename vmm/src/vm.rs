//! Building a VM from a [`VmConfig`] as a recipe of named steps, and running it.

use std::os::fd::FromRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use minivmm_devices::{
    bus::SharedDevice,
    i8042::I8042,
    pci::{config_io::PciConfigIo, ecam::PciEcam, host_bridge::HostBridge, DevFn, PciRoot},
    power::{self, AcpiPower},
    serial::{self, ConsoleOut, SerialPort},
};
use minivmm_firmware::layout::{self, GuestLayout};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::coalesced::CoalescedIo;
use crate::config::{SerialMode, VmConfig};
use crate::console_uart::{self, ConsoleUart};
use crate::cpu::{self, cpuid, msrs, regs};
use crate::event_loop::{ConsoleInput, ExitWatcher, Finish, RunState, SignalFd, StdinForwarder};
use crate::loader::{self, LoadConfig};
use crate::memory::{self, GuestMemory, GuestRam};
use crate::passthrough::{self, Passthrough};
use crate::sandbox::{self, Fault, Sandbox, ThreadKind};
use crate::terminal::RawTerminal;
use crate::vcpu::{Buses, ExitCounters, Outcome, VcpuRunner};

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
    coalesced: Option<Arc<CoalescedIo>>,
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

/// The VM and its devices: everything [`Vm::build`] makes while the kernel loads.
struct Machine {
    // Field order is drop order, as in [`Vm`]: passed-through devices go before the VM.
    passthrough: Option<Passthrough>,
    buses: Arc<Buses>,
    uarts: Uarts,
    vm: Arc<VmFd>,
}

/// The guest's two UARTs: COM1 on ports, the console UART on MMIO.
struct Uarts {
    com1: Arc<Mutex<SerialPort>>,
    console: Arc<Mutex<ConsoleUart>>,
}

impl Machine {
    fn create(
        kvm: &Kvm,
        config: &VmConfig,
        layout: &GuestLayout,
        memory: &GuestMemory,
    ) -> Result<Machine, Error> {
        let vm = Arc::new(create_vm(kvm)?);
        create_irqchip_and_pit(&vm)?;
        let ram_slots = memory::register_slots(&vm, memory)?;
        log::info!("guest RAM mapped");
        // The console UART's read window takes the last slot; passed-through BARs get the
        // ones between guest RAM and it.
        let window_slot = (kvm.get_nr_memslots() as u32).saturating_sub(1);
        let uarts = create_uarts(kvm, &vm, &config.serial, window_slot)?;
        let (buses, root) = create_buses(&uarts)?;
        let buses = Arc::new(buses);
        let passthrough = passthrough::attach(
            &config.gpus,
            passthrough::Attach {
                vm: &vm,
                buses: &buses,
                root: &mut root.lock().unwrap_or_else(|e| e.into_inner()),
                layout,
                memory,
                ram_slots,
                slot_limit: window_slot,
            },
        )?;
        Ok(Machine {
            passthrough,
            buses,
            uarts,
            vm,
        })
    }
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
        let (mut layout, memory) = memory::create(config.memory, address_bits)?;
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
                    Ok::<_, Error>(loader::load_kernel(&memory, &config.kernel, &abandon)?)
                })
                .map_err(io("cannot start the kernel-loader thread"))?;
            let machine = Machine::create(&kvm, config, &layout, &memory);
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
            vm,
            uarts,
            buses,
            passthrough,
        } = machine;
        log::info!("kernel loaded");
        if let Some(passthrough) = &passthrough {
            layout.pci = passthrough.pci.clone();
        }
        let vbios = passthrough.as_ref().map_or(&[][..], |p| p.vbios.as_slice());
        let boot = load_guest(&memory, &layout, config, vbios, kernel)?;
        log::info!("guest loaded, entry {:#x}", boot.entry);
        regs::write_boot_tables(&memory)?;
        let vcpus = create_vcpus(&kvm, &vm, &supported, config.cpus, boot.entry)?;
        let coalesced = vcpus
            .first()
            .and_then(|vcpu| CoalescedIo::new(&kvm, vm.clone(), vcpu))
            .map(Arc::new);
        if let Some(coalesced) = &coalesced {
            lock(&uarts.console).allow_queued_writes(coalesced.clone());
        }
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
            coalesced,
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
        // Everything that needs root is open or done: the guest runs without it.
        self.sandbox.drop_privileges().map_err(Error::Sandbox)?;
        if sandbox::injected_fault() == Some(Fault::WriteSysfs) {
            sandbox::try_writing_sysfs();
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Each vCPU installs its filter and waits here; the main thread installs its own
        // after starting them (a filter is inherited by threads started later, and filters
        // stack), then lets the guest run its first instruction.
        let start = Arc::new(Barrier::new(self.vcpus.len() + 1));
        let threads = self.spawn_vcpus(&state, &stop, &start)?;
        let confined = self.sandbox.confine(ThreadKind::Main);
        if confined.is_err() {
            stop.store(true, Ordering::Release);
        }
        start.wait();
        if let Err(e) = confined {
            let _ = stop_vcpus(&stop, threads);
            return Err(Error::Sandbox(e));
        }
        log::info!("vCPUs running");
        let finish = loop {
            if let Some(finish) = state.finished() {
                break finish;
            }
            // Input waiting for the guest's FIFO is offered again every millisecond (a
            // 16550 takes 64 bytes per interrupt; the guest drains it that fast).
            let waiting = forwarder.as_ref().is_some_and(|f| {
                let mut forwarder = lock(f);
                forwarder.flush();
                forwarder.has_pending()
            });
            if let Err(e) = events.run_with_timeout(if waiting { 1 } else { 1000 }) {
                log::error!("event loop: {e:?}");
            }
        };
        let stuck = stop_vcpus(&stop, threads);
        if !stuck.is_empty() {
            // Guest RAM, the BAR mappings and the VFIO files stay as they are: the process
            // must end now, and only then may the kernel free them (`--managed` gives the
            // devices back from the supervising process once this one is gone).
            std::mem::forget(self);
            return Err(Error::VcpusStuck(stuck, finish));
        }
        Ok(finish)
    }

    fn spawn_vcpus(
        &mut self,
        state: &Arc<RunState>,
        stop: &Arc<AtomicBool>,
        start: &Arc<Barrier>,
    ) -> Result<Vec<JoinHandle<()>>, Error> {
        install_kick_handler();
        let mut threads = Vec::new();
        for (index, mut fd) in self.vcpus.drain(..).enumerate() {
            let (buses, stop, state) = (self.buses.clone(), stop.clone(), state.clone());
            let counters = self.counters.clone();
            let coalesced = self.coalesced.clone();
            let (sandbox, start) = (self.sandbox, start.clone());
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
                })
                .map_err(io(format!("cannot start vCPU {index}")))?;
            threads.push(thread);
        }
        Ok(threads)
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
    vbios: &[passthrough::GuestVbios],
    kernel: loader::LoadedKernel,
) -> Result<loader::BootInfo, Error> {
    let load = LoadConfig {
        initramfs: config.initramfs.as_deref(),
        cmdline: &config.cmdline,
        cpus: config.cpus,
        vbios,
    };
    Ok(loader::load(memory, layout, &load, kernel)?)
}

fn console_output(mode: &SerialMode) -> Result<ConsoleOut, Error> {
    Ok(match mode {
        SerialMode::Stdio => {
            // Unbuffered: the guest's prompt must show before its newline.
            // SAFETY: dup of stdout; the new descriptor is owned by the File.
            let fd = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, 0) };
            if fd < 0 {
                return Err(Error::Io(
                    "cannot use stdout".into(),
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: `fd` is a fresh descriptor owned by nothing else.
            Box::new(unsafe { std::fs::File::from_raw_fd(fd) })
        }
        SerialMode::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io(format!("cannot open console file {}", path.display())))?,
        ),
        SerialMode::None => Box::new(std::io::sink()),
    })
}

/// A UART raising `irq`, its output where `mode` says (both UARTs share it).
fn create_serial(
    vm: &VmFd,
    mode: &SerialMode,
    irq: u32,
    name: &'static str,
) -> Result<SerialPort, Error> {
    let event = EventFd::new(EFD_NONBLOCK).map_err(io("cannot create an eventfd"))?;
    vm.register_irqfd(&event, irq)
        .map_err(|e| Error::Kvm(name, e))?;
    Ok(SerialPort::new(event, console_output(mode)?))
}

fn create_uarts(
    kvm: &Kvm,
    vm: &Arc<VmFd>,
    mode: &SerialMode,
    window_slot: u32,
) -> Result<Uarts, Error> {
    let com1 = create_serial(vm, mode, layout::COM1_IRQ, "KVM_IRQFD (COM1)")?;
    let console = create_serial(
        vm,
        mode,
        layout::CONSOLE_UART_IRQ,
        "KVM_IRQFD (console UART)",
    )?;
    let readonly_slots = kvm.check_extension(Cap::ReadonlyMem);
    Ok(Uarts {
        com1: Arc::new(Mutex::new(com1)),
        console: Arc::new(Mutex::new(ConsoleUart::new(
            console,
            vm.clone(),
            window_slot,
            readonly_slots,
        ))),
    })
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn create_buses(uarts: &Uarts) -> Result<(Buses, Arc<Mutex<PciRoot>>), Error> {
    let buses = Buses::default();
    let mut root = PciRoot::new();
    root.add(DevFn::new(0, 0), Box::new(HostBridge::new()))
        .map_err(|e| Error::Device(e.to_string()))?;
    let root = Arc::new(Mutex::new(root));
    let pio: [(SharedDevice, u16, u64); 4] = [
        (uarts.com1.clone(), layout::COM1_PORT, serial::PORT_COUNT),
        (Arc::new(Mutex::new(I8042)), 0x60, 5),
        (
            Arc::new(Mutex::new(AcpiPower)),
            layout::ACPI_SLEEP_CONTROL_PORT,
            power::PORT_COUNT,
        ),
        (
            Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
            layout::PCI_CONFIG_ADDRESS_PORT,
            minivmm_devices::pci::config_io::PORT_COUNT,
        ),
    ];
    for (device, port, len) in pio {
        buses
            .pio
            .insert(device, u64::from(port), len)
            .map_err(|e| Error::Device(e.to_string()))?;
    }
    let mmio: [(SharedDevice, u64, u64); 2] = [
        (
            Arc::new(Mutex::new(PciEcam::new(root.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        ),
        (
            uarts.console.clone(),
            layout::CONSOLE_UART_START,
            layout::CONSOLE_UART_SIZE,
        ),
    ];
    for (device, base, len) in mmio {
        buses
            .mmio
            .insert(device, base, len)
            .map_err(|e| Error::Device(e.to_string()))?;
    }
    Ok((buses, root))
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

/// The signal used to kick a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
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

/// The kick handler ([`crate::vcpu::on_kick`]) makes KVM_RUN return EINTR, even when the
/// signal lands just before the thread enters it.
fn install_kick_handler() {
    if let Err(e) =
        vmm_sys_util::signal::register_signal_handler(kick_signal(), crate::vcpu::on_kick)
    {
        log::warn!("cannot install the vCPU kick handler: {e}");
    }
}

/// How long vCPU threads get to stop before minivmm gives up on them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Ask every vCPU to stop, kick each thread once, and wait (bounded) for them to end.
/// Returns the indexes of threads still running at the deadline: they may be inside
/// KVM_RUN or a device, so nothing they use may be freed.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) -> Vec<usize> {
    stop.store(true, Ordering::Release);
    for thread in threads.iter().filter(|t| !t.is_finished()) {
        // SAFETY: the thread has not been joined, so its pthread_t is valid (a finished but
        // unjoined thread ignores the signal).
        unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
    }
    let deadline = Instant::now() + STOP_GRACE;
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut stuck = Vec::new();
    for (index, thread) in threads.into_iter().enumerate() {
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            stuck.push(index);
        }
    }
    stuck
}
