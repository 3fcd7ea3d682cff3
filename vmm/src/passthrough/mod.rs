//! `--gpu`: host PCI functions (and mediated devices) handed to the guest through VFIO.
//!
//! The order is the design's: check the host ([`host_device`]), arrange the guest's PCI tree
//! ([`topology`]: a root port per slot unless `bus=root`), open the VFIO container with the
//! KVM-VFIO device, open each device (its group joins the container), reset them all
//! ([`reset`]: alone when the kernel can, else through their bus), place every
//! BAR and window as firmware would ([`resources::assign`]), build each function's model
//! ([`PassthroughFunction`]) behind its port or on bus 0, wire INTx, hand the functions
//! over with decoding on (their BARs mapped), and start DMA-mapping all guest RAM
//! ([`dma_map`]: beside the guest's boot, bus mastering held until it is done). MSI/MSI-X
//! are wired when the guest enables them ([`vfio_function`]). Dropping [`Passthrough`]
//! undoes all of it. [`preflight`] runs the placement on what sysfs shows before anything
//! is opened.

pub mod dma_map;
pub mod gpu_arg;
pub mod guest_map;
pub mod host_device;
mod open;
mod reset;
pub mod topology;
pub mod vfio_function;
mod vga;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use minivmm_devices::pci::link::PcieLink;
use minivmm_devices::pci::passthrough::{self, PassthroughFunction, Setup};
use minivmm_devices::pci::resources::{self, FunctionNeeds, Placement, RootWindows, SlotNeeds};
use minivmm_devices::pci::root_port::{RootPort, RootPortConfig};
use minivmm_devices::pci::{PciAddress, PciRoot};
use minivmm_firmware::layout::{self, GuestLayout, PciLayout};
use minivmm_firmware::option_rom;
use vfio_ioctls::VfioContainer;
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _};

use crate::gsi::GsiRouter;
use crate::host::resources::{host_bars, upstream_link};
use crate::memory::GuestMemory;
use crate::vcpu::Buses;
use dma_map::{DmaGate, DmaMapper};
pub use gpu_arg::{GpuArg, RomChoice};
use guest_map::GuestMap;
pub use host_device::GpuSpec;
use host_device::HostDevice;
use open::{open_container, open_device, Opened};
use topology::GuestSlot;
use vfio_function::SharedFunction;

/// Errors passing a device through.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host is not ready for this device.
    #[error(transparent)]
    Host(#[from] host_device::Error),
    /// VFIO refused.
    #[error("{0}")]
    Vfio(String),
    /// The device's configuration cannot be modelled.
    #[error("{0}: {1}")]
    Model(String, passthrough::Error),
    /// Wiring into the VM.
    #[error("{0}")]
    Vm(String),
    /// A `rom=` image that cannot be used.
    #[error("{0}")]
    Rom(String),
    /// The guest's PCI tree cannot be built.
    #[error("{0}")]
    Tree(String),
    /// The BARs do not fit the guest's windows.
    #[error("cannot pass {0}")]
    Placement(#[from] resources::Error),
}

/// A VBIOS image the firmware tables hand to the guest for one function.
#[derive(Clone, Debug)]
pub struct GuestVbios {
    /// The function's guest address.
    pub address: PciAddress,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device_id: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// The image.
    pub rom: Arc<[u8]>,
    /// The bus-0 device number of the root port it sits behind (`None`: on bus 0).
    pub port: Option<u8>,
    /// Offer it in the ACPI VFCT table.
    pub vfct: bool,
    /// Offer it through an ACPI `ATRM` method under its device node.
    pub atrm: bool,
    /// Offer it as a SETUP_PCI record.
    pub setup: bool,
}

/// Where one passed-through device is, and how often the guest's accesses to its BARs
/// trapped (a BAR mapped as a memory slot never traps, except for MSI-X pages).
#[derive(Clone, Debug)]
pub struct Attached {
    /// The host device.
    pub name: String,
    /// Its guest address.
    pub address: PciAddress,
    /// Trapped BAR accesses so far.
    pub trapped: Arc<AtomicU64>,
    /// ROM BAR accesses so far (a ROM always traps).
    pub rom_reads: Arc<AtomicU64>,
}

/// One line per device: where it is and how many BAR accesses trapped.
pub fn report(attached: &[Attached]) -> String {
    attached
        .iter()
        .map(|a| {
            format!(
                "  passthrough {} at {}: {} trapped BAR accesses, {} ROM accesses\n",
                a.name,
                a.address,
                a.trapped.load(Ordering::Relaxed),
                a.rom_reads.load(Ordering::Relaxed)
            )
        })
        .collect()
}

/// The passed-through devices of a VM; dropping it releases them.
pub struct Passthrough {
    /// How each device is reset (its descriptors belong to `functions`).
    resets: reset::ResetList,
    functions: Vec<SharedFunction>,
    container: Arc<VfioContainer>,
    /// Shut until guest RAM is DMA-mapped: holds every function's bus mastering.
    gate: Arc<DmaGate>,
    /// The thread mapping guest RAM (`None` until started, and once finished in `drop`).
    dma: Option<DmaMapper>,
    /// The devices and where the guest sees them.
    pub attached: Vec<Attached>,
    /// VBIOS images for the firmware tables.
    pub vbios: Vec<GuestVbios>,
    /// The PCI tree the firmware tables describe: buses and the 64-bit window.
    pub pci: PciLayout,
    /// A device has the legacy VGA ranges (`vga=on`).
    pub vga_routed: bool,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

/// What [`attach`] works on.
#[derive(Debug)]
pub struct Attach<'a> {
    /// The VM.
    pub vm: &'a Arc<VmFd>,
    /// Its buses (traps go there).
    pub buses: &'a Arc<Buses>,
    /// The VM's GSI routing table.
    pub router: &'a Arc<Mutex<GsiRouter>>,
    /// The PCI tree (bus 0; root ports go there).
    pub root: &'a mut PciRoot,
    /// The guest's address map.
    pub layout: &'a GuestLayout,
    /// Guest RAM (DMA-mapped).
    pub memory: &'a GuestMemory,
    /// KVM memory slots RAM uses (BAR slots follow).
    pub ram_slots: u32,
    /// Most KVM memory slots.
    pub slot_limit: u32,
    /// How the DMA-mapping thread confines itself.
    pub sandbox: crate::sandbox::Sandbox,
}

/// Check the placement of every `--gpu` device on what sysfs shows, before anything is
/// opened (or moved by `--managed`): a BAR that cannot fit below the guest's address limit
/// is refused here. Devices sysfs does not show, and mediated devices, are left to
/// [`attach`], which checks everything again on what VFIO reports.
pub fn preflight(args: &[GpuArg], layout: &GuestLayout) -> Result<(), Error> {
    let sys = Path::new("/sys");
    vga::check_args(args, |bdf| {
        crate::host::pci::PciInfo::read(&crate::host::HostRoot::system(), bdf).map(|i| i.class)
    })?;
    let mut functions = Vec::new();
    let mut needs = Vec::new();
    for arg in args {
        let GpuSpec::Pci(bdf) = &arg.device else {
            open::load_rom(arg, "the mediated device", None)?;
            continue;
        };
        // A bad image is refused before `--managed` moves or resets the device.
        let info = match arg.rom {
            RomChoice::Own => None,
            RomChoice::File(_) | RomChoice::Auto => {
                crate::host::pci::PciInfo::read(&crate::host::HostRoot::system(), bdf)
            }
        };
        open::load_rom(arg, bdf, info.as_ref().map(|i| (i.vendor, i.device)))?;
        let Some((bars, device_rom)) = host_bars(&sys.join("bus/pci/devices").join(bdf)) else {
            continue;
        };
        let rom = match (&arg.rom, arg.vbios.rom_bar) {
            (_, false) => 0,
            (RomChoice::File(path), true) => {
                std::fs::metadata(path).map_or(0, |m| option_rom::bar_size(m.len() as usize))
            }
            // What rom=auto may serve is not known before the device is open: room for the
            // larger of its own ROM and the host's image (the plan is made again then).
            (RomChoice::Auto, true) => info
                .as_ref()
                .map_or(0, |i| auto_rom_room(sys, i, arg.skip_id_check))
                .max(device_rom),
            (RomChoice::Own, true) => device_rom,
        };
        functions.push(tree_function(bdf, arg));
        needs.push((bdf.clone(), FunctionNeeds { bars, rom }));
    }
    let slots = topology::arrange(&functions, &first_free_devices()).map_err(Error::Tree)?;
    resources::assign(&slot_needs(&slots, &needs), &root_windows(layout))?;
    Ok(())
}

/// The ROM BAR room for what `rom=auto` could find on the host for the function.
fn auto_rom_room(sys: &Path, info: &crate::host::pci::PciInfo, any_ids: bool) -> u64 {
    let device = crate::host::vbios_source::AutoLookup::unopened(info, any_ids);
    match crate::host::vbios_source::find_auto(sys, &device) {
        crate::host::vbios_source::AutoRom::Found(image, _) => option_rom::bar_size(image.len()),
        _ => 0,
    }
}

/// Bus-0 device numbers a fresh PCI root leaves free (the host bridge has 0).
fn first_free_devices() -> Vec<u8> {
    (1..32).collect()
}

/// The tree's view of `--gpu` function `name` (`DDDD:BB:DD.F`, or a mediated device's).
fn tree_function(name: &str, arg: &GpuArg) -> topology::Function {
    let (host_slot, function) = match &arg.device {
        GpuSpec::Pci(bdf) => {
            let (slot, function) = bdf.rsplit_once('.').unwrap_or((bdf, "0"));
            (slot.to_string(), function.parse().unwrap_or(0))
        }
        GpuSpec::Mdev(_) => (format!("mdev {name}"), 0),
    };
    topology::Function {
        host_slot,
        function,
        on_root_bus: arg.on_root_bus,
    }
}

/// What each slot needs placed, from each function's needs (by function index).
fn slot_needs(slots: &[GuestSlot], needs: &[(String, FunctionNeeds)]) -> Vec<SlotNeeds> {
    slots
        .iter()
        .map(|slot| {
            let members: Vec<&(String, FunctionNeeds)> = slot
                .members
                .iter()
                .filter_map(|(index, _)| needs.get(*index))
                .collect();
            SlotNeeds {
                name: members.first().map_or_else(String::new, |m| m.0.clone()),
                behind_port: slot.port_bus.is_some(),
                functions: members.iter().map(|m| m.1.clone()).collect(),
            }
        })
        .collect()
}

/// The root bus's windows in `layout`.
pub fn root_windows(layout: &GuestLayout) -> RootWindows {
    let io = u64::from(layout::PCI_IO_START);
    RootWindows {
        io: io..io + u64::from(layout::PCI_IO_SIZE),
        // The top of the 32-bit window holds the emulated devices' BARs.
        memory: layout::PCI_MMIO32_START..layout::EMULATED_MMIO_START,
        prefetchable_start: layout.mmio64_start,
        address_bits: layout.address_bits,
    }
}

/// Check, open and wire every device in `args`.
pub fn attach(args: &[GpuArg], at: Attach<'_>) -> Result<Option<Passthrough>, Error> {
    if args.is_empty() {
        return Ok(None);
    }
    let specs: Vec<GpuSpec> = args.iter().map(|a| a.device.clone()).collect();
    let devices = host_device::check_all(Path::new("/sys"), &specs)?;
    let functions: Vec<topology::Function> = devices
        .iter()
        .zip(args)
        .map(|(device, arg)| tree_function(&name_of(device), arg))
        .collect();
    let slots = topology::arrange(&functions, &at.root.free_devices()).map_err(Error::Tree)?;
    let container = open_container(at.vm)?;
    let ram: Vec<_> = at
        .memory
        .iter()
        .map(|r| r.start_addr().0..r.start_addr().0 + r.len())
        .collect();
    let map = Arc::new(GuestMap::new(
        at.vm.clone(),
        at.buses.clone(),
        at.router.clone(),
        ram,
        at.ram_slots,
        at.slot_limit,
    ));
    let gate = Arc::new(DmaGate::new());
    let mut opened = Vec::new();
    for (device, arg) in devices.iter().zip(args) {
        opened.push(Some(open_device(device, arg, &container, &map, &gate)?));
    }
    // Every group is open now: reset each device, through its bus where it must be.
    let to_reset: Vec<reset::ToReset<'_>> = opened
        .iter()
        .flatten()
        .zip(&devices)
        .map(|(o, device)| reset::ToReset {
            name: &o.name,
            device: o.host.device(),
            bdf: device.bdf(),
        })
        .collect();
    let resets = reset::ResetList::new(&to_reset);
    resets.run();
    let needs: Vec<(String, FunctionNeeds)> = opened
        .iter()
        .flatten()
        .map(|o| (o.name.clone(), o.needs.clone()))
        .collect();
    let plan = resources::assign(&slot_needs(&slots, &needs), &root_windows(at.layout))?;
    let mut passthrough = Passthrough {
        resets,
        functions: Vec::new(),
        container: container.clone(),
        gate: gate.clone(),
        dma: None,
        attached: Vec::new(),
        vbios: Vec::new(),
        pci: PciLayout {
            buses: topology::bus_count(&slots),
            mmio64: plan.prefetchable.clone(),
        },
        vga_routed: false,
    };
    for (slot, placement) in slots.iter().zip(&plan.slots) {
        // Behind a port: the link the slot's first function has on the host.
        let link = slot.port_bus.map(|_| {
            slot.members
                .first()
                .and_then(|(index, _)| devices.get(*index))
                .and_then(|device| upstream_link(&device.sysfs))
                .unwrap_or(PcieLink::UNKNOWN)
        });
        let mut port = slot.port_bus.zip(link).map(|(bus, link)| {
            RootPort::new(&RootPortConfig {
                secondary_bus: bus,
                windows: placement.windows.clone().unwrap_or_default(),
                link,
                port_number: bus,
                interrupt_line: slot.intx_gsi(1) as u8,
                vga: slot
                    .members
                    .iter()
                    .any(|(index, _)| args.get(*index).is_some_and(|arg| arg.vga)),
            })
        });
        for ((index, number), function_placement) in slot.members.iter().zip(&placement.functions) {
            let device = opened
                .get_mut(*index)
                .and_then(Option::take)
                .ok_or_else(|| Error::Vm("a device was placed twice".into()))?;
            let address = slot.address(*number);
            let (vga, name) = (device.vga, device.name.clone());
            let (function, vbios) =
                build_function(device, slot, address, function_placement, link)?;
            if vga {
                vga::route(&function, &name, at.buses)?;
                passthrough.vga_routed = true;
            }
            let placed = match &mut port {
                Some(port) => port
                    .add(*number, Box::new(function.clone()))
                    .map_err(|e| Error::Vm(e.to_string())),
                None => at
                    .root
                    .add(address.devfn, Box::new(function.clone()))
                    .map_err(|e| Error::Vm(e.to_string())),
            };
            placed?;
            passthrough.vbios.extend(vbios);
            passthrough.attached.push(attached(&function, address));
            passthrough.functions.push(function);
        }
        if let (Some(port), Some(devfn)) = (port, slot.port()) {
            log::info!(
                "root port at 00:{:02x}.0, bus {:02x} behind it, link {link:?}",
                devfn.device(),
                port.secondary_bus()
            );
            at.root
                .add_port(devfn, port)
                .map_err(|e| Error::Vm(e.to_string()))?;
        }
    }
    // Guest RAM is mapped beside the kernel's loading and the guest's boot; the gate holds
    // bus mastering until it is done.
    let mapper = DmaMapper::start(container, at.memory.clone(), gate, at.sandbox)
        .map_err(|e| Error::Vfio(format!("cannot start the DMA-mapping thread: {e}")))?;
    passthrough.dma = Some(mapper);
    Ok(Some(passthrough))
}

/// How one function shows in `--exit-stats`.
fn attached(function: &SharedFunction, address: PciAddress) -> Attached {
    let function = function.lock().unwrap_or_else(|e| e.into_inner());
    let host = function.host();
    Attached {
        name: host.name().to_string(),
        address,
        trapped: host.trapped(),
        rom_reads: host.rom_reads(),
    }
}

fn name_of(device: &HostDevice) -> String {
    match device.bdf() {
        Some(bdf) => bdf.to_string(),
        None => device
            .sysfs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// The model of `device` at `address` in `slot`, wired (INTx) and handed over with its BARs
/// mapped; and its VBIOS for the firmware tables.
fn build_function(
    device: Opened,
    slot: &GuestSlot,
    address: PciAddress,
    placement: &Placement,
    port_link: Option<PcieLink>,
) -> Result<(SharedFunction, Option<GuestVbios>), Error> {
    let Opened {
        host,
        name,
        ids,
        subsystem,
        rom,
        image,
        vfct,
        atrm,
        setup,
        pin,
        quirks,
        ..
    } = device;
    let gsi = slot.intx_gsi(pin);
    let view = Setup {
        placement,
        interrupt_line: gsi as u8,
        rom,
        multifunction: slot.multifunction(),
        port_link,
        quirks,
    };
    let function =
        PassthroughFunction::new(host, view).map_err(|e| Error::Model(name.clone(), e))?;
    let shared = Arc::new(Mutex::new(function));
    {
        let mut function = shared.lock().unwrap_or_else(|e| e.into_inner());
        function.host_mut().set_function(&shared);
        if gsi != 0 {
            function
                .host_mut()
                .enable_intx(gsi)
                .map_err(|e| Error::Vm(format!("{name}: {e}")))?;
        }
        function.hand_off();
    }
    log::info!("{name} is {address} in the guest");
    let vbios = image.map(|rom| GuestVbios {
        address,
        vendor: ids.0,
        device_id: ids.1,
        subsystem_vendor: subsystem.0,
        subsystem_id: subsystem.1,
        rom,
        port: slot.port().map(|port| port.device()),
        vfct,
        atrm,
        setup,
    });
    Ok((shared, vbios))
}

impl Passthrough {
    /// A machine reset (guest reboot): every function quiesced (BARs unmapped, MSI off,
    /// bus mastering off), the devices reset as at start, then each function's view built
    /// again from its configuration space and handed off as firmware leaves it.
    pub fn reset(&mut self) -> Result<(), Error> {
        // A reboot before guest RAM is mapped waits for it: the restarted guest's devices
        // come back as at start, with RAM mapped.
        self.gate.wait().map_err(Error::Vfio)?;
        for function in &self.functions {
            function.lock().unwrap_or_else(|e| e.into_inner()).quiesce();
        }
        self.resets.run();
        for function in &self.functions {
            let mut function = function.lock().unwrap_or_else(|e| e.into_inner());
            function.host_mut().rearm_intx();
            let name = function.host().name().to_string();
            function.rebuild().map_err(|e| Error::Model(name, e))?;
        }
        Ok(())
    }

    /// The run is ending: stop mapping guest RAM (a vCPU held at the gate then goes on with
    /// bus mastering off); what was mapped is unmapped on drop.
    pub fn stop_dma_map(&self) {
        if let Some(dma) = &self.dma {
            dma.abandon();
        }
    }

    /// The gate that opens once guest RAM is DMA-mapped.
    pub fn dma_gate(&self) -> &DmaGate {
        &self.gate
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        // The mapping stops first: nothing may be mapped after the unmapping below.
        let mapped = self
            .dma
            .take()
            .map(|mut dma| dma.finish())
            .unwrap_or_default();
        for function in &self.functions {
            let mut function = function.lock().unwrap_or_else(|e| e.into_inner());
            function.unmap_all();
            function.host_mut().release();
        }
        for (iova, len) in mapped {
            if let Err(e) = self.container.vfio_dma_unmap(iova, len as usize) {
                log::warn!("cannot DMA-unmap {iova:#x}+{len:#x}: {e}");
            }
        }
    }
}
