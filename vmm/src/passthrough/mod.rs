//! `--gpu`: host PCI functions (and mediated devices) handed to the guest through VFIO.
//!
//! The order is the design's: check the host ([`host_device`]), open the VFIO container
//! with the KVM-VFIO device, open and reset each device (its group joins the container),
//! build each function's model ([`PassthroughFunction`]) on the PCI root, wire INTx, and
//! DMA-map all guest RAM. BARs are mapped when the guest turns decoding on, MSI/MSI-X
//! when it enables them ([`vfio_function`]). Dropping [`Passthrough`] undoes all of it.

pub mod gpu_arg;
pub mod gsi;
pub mod guest_map;
pub mod host_device;
pub mod vfio_function;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use minivmm_devices::pci::bar::BarWindows;
use minivmm_devices::pci::passthrough::{self, PassthroughFunction, RomSource};
use minivmm_devices::pci::{DevFn, PciRoot};
use minivmm_firmware::acpi::dsdt::intx_gsi;
use minivmm_firmware::layout::{self, GuestLayout};
use minivmm_firmware::option_rom;
use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError};
use vm_allocator::AddressAllocator;
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _};

use crate::memory::GuestMemory;
use crate::vcpu::Buses;
pub use gpu_arg::GpuArg;
use guest_map::GuestMap;
pub use host_device::GpuSpec;
use host_device::HostDevice;
use vfio_function::{SharedFunction, VfioFunction};

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
}

/// A VBIOS image the firmware tables hand to the guest for one function.
#[derive(Clone, Debug)]
pub struct GuestVbios {
    /// The function's guest address (bus 0).
    pub devfn: DevFn,
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
    /// Offer it in the ACPI VFCT table.
    pub vfct: bool,
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
    pub devfn: DevFn,
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
                a.devfn,
                a.trapped.load(Ordering::Relaxed),
                a.rom_reads.load(Ordering::Relaxed)
            )
        })
        .collect()
}

/// The passed-through devices of a VM; dropping it releases them.
pub struct Passthrough {
    functions: Vec<SharedFunction>,
    container: Arc<VfioContainer>,
    dma: Vec<(u64, u64)>,
    /// The devices and where the guest sees them.
    pub attached: Vec<Attached>,
    /// VBIOS images for the firmware tables.
    pub vbios: Vec<GuestVbios>,
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
    /// Bus 0.
    pub root: &'a mut PciRoot,
    /// The guest's address map.
    pub layout: &'a GuestLayout,
    /// Guest RAM (DMA-mapped).
    pub memory: &'a GuestMemory,
    /// KVM memory slots RAM uses (BAR slots follow).
    pub ram_slots: u32,
    /// Most KVM memory slots.
    pub slot_limit: u32,
}

/// Check, open and wire every device in `specs`.
pub fn attach(args: &[GpuArg], at: Attach<'_>) -> Result<Option<Passthrough>, Error> {
    if args.is_empty() {
        return Ok(None);
    }
    let specs: Vec<GpuSpec> = args.iter().map(|a| a.device.clone()).collect();
    let devices = host_device::check_all(Path::new("/sys"), &specs)?;
    let container = open_container(at.vm)?;
    let ram: Vec<_> = at
        .memory
        .iter()
        .map(|r| r.start_addr().0..r.start_addr().0 + r.len())
        .collect();
    let map = Arc::new(GuestMap::new(
        at.vm.clone(),
        at.buses.clone(),
        ram,
        at.ram_slots,
        at.slot_limit,
    ));
    let mut windows = bar_windows(at.layout)?;
    let mut passthrough = Passthrough {
        functions: Vec::new(),
        container: container.clone(),
        dma: Vec::new(),
        attached: Vec::new(),
        vbios: Vec::new(),
    };
    for (device, devfn) in guest_addresses(&devices, at.root)? {
        let arg = args
            .iter()
            .find(|a| a.device == device.spec)
            .ok_or_else(|| Error::Vm(format!("{} lost its --gpu options", device.spec)))?;
        let (function, vbios) = open_function(&device, arg, devfn, &container, &map, &mut windows)?;
        passthrough.vbios.extend(vbios);
        at.root
            .add(devfn, Box::new(function.clone()))
            .map_err(|e| Error::Vm(e.to_string()))?;
        log::info!("{} is {devfn} in the guest", name_of(&device));
        let (trapped, rom_reads) = {
            let function = function.lock().unwrap_or_else(|e| e.into_inner());
            (function.host().trapped(), function.host().rom_reads())
        };
        passthrough.attached.push(Attached {
            name: name_of(&device),
            devfn,
            trapped,
            rom_reads,
        });
        passthrough.functions.push(function);
    }
    passthrough.dma_map(at.memory)?;
    Ok(Some(passthrough))
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

/// The container, with the KVM-VFIO device so KVM knows the VM has assigned devices
/// (coherent DMA, no-snoop handling).
fn open_container(vm: &VmFd) -> Result<Arc<VfioContainer>, Error> {
    let mut request = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let kvm_vfio = vm
        .create_device(&mut request)
        .map_err(|e| Error::Vm(format!("cannot create the KVM-VFIO device: {e}")))?;
    let handle = Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio));
    VfioContainer::new(Some(handle))
        .map(Arc::new)
        .map_err(|e| Error::Vfio(vfio_message(&e, "")))
}

/// A one-line message for a VFIO failure, with what to do.
fn vfio_message(error: &VfioError, device: &str) -> String {
    let errno = |e: &std::io::Error| e.raw_os_error().unwrap_or(0);
    match error {
        VfioError::OpenContainer(e) if errno(e) == libc::ENOENT => {
            "/dev/vfio/vfio does not exist: load VFIO with modprobe vfio-pci".into()
        }
        VfioError::OpenContainer(e) if matches!(errno(e), libc::EACCES | libc::EPERM) => {
            "no permission to open /dev/vfio/vfio: run as root".into()
        }
        VfioError::OpenGroup(e, group) if matches!(errno(e), libc::EACCES | libc::EPERM) => {
            format!("no permission to open /dev/vfio/{group} for {device}: run as root or chown the group file to your user")
        }
        VfioError::OpenGroup(e, group) if errno(e) == libc::EBUSY => {
            format!("IOMMU group {group} of {device} is in use by another process (another VM?): stop it first")
        }
        VfioError::OpenGroup(e, group) if errno(e) == libc::ENOENT => {
            format!("/dev/vfio/{group} does not exist: bind {device} to vfio-pci")
        }
        VfioError::GroupViable => format!(
            "the IOMMU group of {device} is not viable: bind every device in it to vfio-pci"
        ),
        other => format!("VFIO cannot open {device}: {other}"),
    }
}

fn bar_windows(layout: &GuestLayout) -> Result<BarWindows, Error> {
    let allocator = |start: u64, size: u64| {
        AddressAllocator::new(start, size).map_err(|e| Error::Vm(format!("BAR window: {e:?}")))
    };
    Ok(BarWindows {
        io: allocator(
            u64::from(layout::PCI_IO_START),
            u64::from(layout::PCI_IO_SIZE),
        )?,
        mmio32: allocator(layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE)?,
        mmio64: allocator(layout.mmio64_start, layout.mmio64_size)?,
    })
}

/// Guest slot and function for each device: functions of one host slot share a guest slot
/// (a GPU and its HDMI audio stay one multi-function device), keeping their function
/// numbers when function 0 is among them, numbered from 0 otherwise; other devices (and
/// mediated ones) get a slot each.
fn guest_addresses(
    devices: &[HostDevice],
    root: &PciRoot,
) -> Result<Vec<(HostDevice, DevFn)>, Error> {
    let mut first_free = root.free_device().unwrap_or(32);
    let mut by_slot: BTreeMap<String, Vec<(usize, u8)>> = BTreeMap::new();
    for (i, device) in devices.iter().enumerate() {
        let (key, function) = match device.bdf() {
            Some(bdf) => {
                let (slot, function) = bdf.rsplit_once('.').unwrap_or((bdf, "0"));
                (slot.to_string(), function.parse().unwrap_or(0))
            }
            None => (format!("mdev{i}"), 0),
        };
        by_slot.entry(key).or_default().push((i, function));
    }
    let mut placed = vec![None; devices.len()];
    let mut keys: Vec<_> = by_slot.into_iter().collect();
    keys.sort_by_key(|(_, members)| members.first().map(|m| m.0));
    for (_, mut members) in keys {
        if first_free >= 32 {
            return Err(Error::Vm("no free PCI slot left in the guest".into()));
        }
        members.sort_by_key(|m| m.1);
        let keep = members.first().is_some_and(|m| m.1 == 0);
        for (n, (i, function)) in members.iter().enumerate() {
            let function = if keep { *function } else { n as u8 };
            if let Some(slot) = placed.get_mut(*i) {
                *slot = Some(DevFn::new(first_free, function));
            }
        }
        first_free += 1;
    }
    Ok(devices
        .iter()
        .cloned()
        .zip(placed)
        .filter_map(|(d, p)| Some((d, p?)))
        .collect())
}

/// The `rom=` image of `arg`, read and validated against the device's IDs.
fn load_rom(arg: &GpuArg, name: &str, ids: (u16, u16)) -> Result<Option<Arc<[u8]>>, Error> {
    let Some(path) = &arg.rom else {
        return Ok(None);
    };
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Rom(format!("cannot read the ROM image {}: {e}", path.display())))?;
    let rom =
        option_rom::parse(&bytes).map_err(|e| Error::Rom(format!("{}: {e}", path.display())))?;
    if let Some(image_ids) = rom.ids() {
        if image_ids != ids && !arg.skip_id_check {
            return Err(Error::Rom(format!(
                "the ROM image {} is for {:04x}:{:04x} but {name} is {:04x}:{:04x}: use the right image, or add romcheck=off to --gpu to use it anyway",
                path.display(),
                image_ids.0,
                image_ids.1,
                ids.0,
                ids.1
            )));
        }
    }
    log::info!(
        "{name}: ROM image {} ({} bytes)",
        path.display(),
        bytes.len()
    );
    Ok(Some(bytes.into()))
}

fn config_dword(vfio: &VfioDevice, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    vfio.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut data, offset);
    u32::from_le_bytes(data)
}

fn open_function(
    device: &HostDevice,
    arg: &GpuArg,
    devfn: DevFn,
    container: &Arc<VfioContainer>,
    map: &Arc<GuestMap>,
    windows: &mut BarWindows,
) -> Result<(SharedFunction, Option<GuestVbios>), Error> {
    let name = name_of(device);
    let vfio = VfioDevice::new(&device.sysfs, container.clone(), false)
        .map_err(|e| Error::Vfio(vfio_message(&e, &name)))?;
    // Start from a known state when the device can be reset.
    vfio.reset();
    let vfio = Arc::new(vfio);
    let id = config_dword(&vfio, 0);
    let subsystem = config_dword(&vfio, 0x2c);
    let ids = (id as u16, (id >> 16) as u16);
    let image = load_rom(arg, &name, ids)?;
    let rom = match (&image, arg.vbios.rom_bar) {
        (_, false) => RomSource::None,
        (Some(image), true) => RomSource::Image(image.clone()),
        (None, true) => RomSource::Device,
    };
    let vbios = image.map(|rom| GuestVbios {
        devfn,
        vendor: ids.0,
        device_id: ids.1,
        subsystem_vendor: subsystem as u16,
        subsystem_id: (subsystem >> 16) as u16,
        rom,
        vfct: arg.vbios.vfct,
        setup: arg.vbios.setup,
    });
    let pin = (config_dword(&vfio, 0x3c) >> 8) as u8;
    let gsi = intx_gsi(u32::from(devfn.device()), u32::from(pin.saturating_sub(1)));
    let host = VfioFunction::new(vfio, name.clone(), map.clone());
    let function = PassthroughFunction::with_rom(host, windows, gsi as u8, rom)
        .map_err(|e| Error::Model(name.clone(), e))?;
    let shared = Arc::new(Mutex::new(function));
    {
        let mut function = shared.lock().unwrap_or_else(|e| e.into_inner());
        function.host_mut().set_function(&shared);
        if pin != 0 {
            function
                .host_mut()
                .enable_intx(gsi)
                .map_err(|e| Error::Vm(format!("{name}: {e}")))?;
        }
    }
    Ok((shared, vbios))
}

impl Passthrough {
    /// Give the devices' DMA all of guest RAM, at guest-physical addresses.
    fn dma_map(&mut self, memory: &GuestMemory) -> Result<(), Error> {
        let start = Instant::now();
        for region in memory.iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| Error::Vm(format!("guest RAM: {e}")))?;
            let (iova, len) = (region.start_addr().0, region.len());
            // SAFETY: `host..host + len` is guest RAM, which the VM keeps mapped until after
            // this struct (and so the DMA mapping) is gone; guest RAM is only ever accessed
            // through volatile vm-memory accessors, as DMA-shared memory requires.
            unsafe { self.container.vfio_dma_map(iova, len as usize, host) }.map_err(|e| {
                Error::Vfio(format!(
                    "cannot DMA-map guest RAM at {iova:#x}+{len:#x}: {e} (raise the locked-memory limit: ulimit -l)"
                ))
            })?;
            self.dma.push((iova, len));
        }
        log::info!(
            "DMA-mapped {} MiB of guest RAM in {:.1} ms",
            self.dma.iter().map(|d| d.1).sum::<u64>() >> 20,
            start.elapsed().as_secs_f64() * 1000.0
        );
        Ok(())
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        for function in &self.functions {
            let mut function = function.lock().unwrap_or_else(|e| e.into_inner());
            function.unmap_all();
            function.host_mut().release();
        }
        for (iova, len) in self.dma.drain(..) {
            if let Err(e) = self.container.vfio_dma_unmap(iova, len as usize) {
                log::warn!("cannot DMA-unmap {iova:#x}+{len:#x}: {e}");
            }
        }
    }
}
