//! The VM and its devices, made while the kernel loads: the KVM VM with its interrupt
//! chips, guest RAM's memory slots, the UARTs, the buses with every emulated device, the PCI
//! root, and the passed-through devices.

use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Cap, Kvm, VmFd};
use minivmm_devices::{
    bus::SharedDevice,
    exit_device::{self, ExitDevice},
    i8042::I8042,
    pci::{
        config_io::PciConfigIo, ecam::PciEcam, host_bridge::HostBridge, passthrough::vga, DevFn,
        PciRoot,
    },
    power::{self, AcpiPower},
    serial::{self, ConsoleOut, SerialPort},
};
use minivmm_firmware::layout::{self, GuestLayout};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{create_irqchip_and_pit, create_vm, io, Error};
use crate::config::{SerialMode, VmConfig};
use crate::console_uart::ConsoleUart;
use crate::disks::{self, Disks};
use crate::gsi::GsiRouter;
use crate::memory::{self, GuestMemory};
use crate::passthrough::{self, Passthrough};
use crate::vcpu::Buses;

/// The VM and its devices: everything [`Vm::build`] makes while the kernel loads.
pub(super) struct Machine {
    // Field order is drop order, as in [`Vm`]: disks and passed-through devices go before
    // the VM.
    pub(super) disks: Disks,
    pub(super) passthrough: Option<Passthrough>,
    pub(super) buses: Arc<Buses>,
    pub(super) root: Arc<Mutex<PciRoot>>,
    pub(super) uarts: Uarts,
    pub(super) vm: Arc<VmFd>,
}

/// The guest's two UARTs: COM1 on ports, the console UART on MMIO.
pub(super) struct Uarts {
    pub(super) com1: Arc<Mutex<SerialPort>>,
    pub(super) console: Arc<Mutex<ConsoleUart>>,
}

impl Machine {
    pub(super) fn create(
        kvm: &Kvm,
        config: &VmConfig,
        layout: &GuestLayout,
        memory: &GuestMemory,
        images: Vec<disks::OpenImage>,
    ) -> Result<Machine, Error> {
        let vm = Arc::new(create_vm(kvm)?);
        create_irqchip_and_pit(&vm)?;
        // A passed-through VGA's legacy window must trap, not be RAM.
        let (start, len) = vga::VGA_MEMORY;
        let vga_window = start..start + len;
        let holes = if config.gpus.iter().any(|gpu| gpu.vga) {
            std::slice::from_ref(&vga_window)
        } else {
            &[]
        };
        let ram_slots = memory::register_slots(&vm, memory, holes)?;
        log::info!("guest RAM mapped");
        // The console UART's read window takes the last slot; passed-through BARs get the
        // ones between guest RAM and it.
        let window_slot = (kvm.get_nr_memslots() as u32).saturating_sub(1);
        let uarts = create_uarts(kvm, &vm, &config.serial, window_slot)?;
        let (buses, root) = create_buses(&uarts, config.exit_port)?;
        let buses = Arc::new(buses);
        let router = Arc::new(Mutex::new(GsiRouter::new(vm.clone())));
        let passthrough = passthrough::attach(
            &config.gpus,
            passthrough::Attach {
                vm: &vm,
                buses: &buses,
                router: &router,
                root: &mut root.lock().unwrap_or_else(|e| e.into_inner()),
                layout,
                memory,
                ram_slots,
                slot_limit: window_slot,
                sandbox: config.sandbox,
            },
        )?;
        // Disks take the bus-0 slots the passed-through devices left.
        let disks = disks::attach(
            images,
            disks::Attach {
                vm: &vm,
                buses: &buses,
                root: &mut root.lock().unwrap_or_else(|e| e.into_inner()),
                router: &router,
            },
        )?;
        Ok(Machine {
            disks,
            passthrough,
            buses,
            root,
            uarts,
            vm,
        })
    }
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

fn create_buses(
    uarts: &Uarts,
    exit_port: Option<u16>,
) -> Result<(Buses, Arc<Mutex<PciRoot>>), Error> {
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
    let exit = exit_port.map(|port| -> (SharedDevice, u16, u64) {
        (
            Arc::new(Mutex::new(ExitDevice)),
            port,
            exit_device::PORT_COUNT,
        )
    });
    for (device, port, len) in pio.into_iter().chain(exit) {
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
