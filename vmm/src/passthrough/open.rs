//! Opening devices through VFIO: the container with the KVM-VFIO device, each device (its
//! group joins the container; [`super::reset`] resets them once all are open), its `rom=` image, and what its
//! model needs placed; failures become one line with what to do.

use std::sync::Arc;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use minivmm_devices::pci::passthrough::{self, RomSource};
use minivmm_devices::pci::resources::FunctionNeeds;
use minivmm_firmware::option_rom;
use vfio_bindings::bindings::vfio::{VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError};

use super::gpu_arg::RomChoice;
use super::guest_map::GuestMap;
use super::host_device::HostDevice;
use super::vfio_function::VfioFunction;
use super::{name_of, Error, GpuArg};
use crate::host::vbios_source::{self, AutoLookup, AutoRom};

/// A device opened through VFIO, before its model exists.
pub(super) struct Opened {
    pub(super) host: VfioFunction,
    pub(super) name: String,
    /// Vendor and device ID.
    pub(super) ids: (u16, u16),
    /// Subsystem vendor and ID.
    pub(super) subsystem: (u16, u16),
    /// What the ROM BAR shows.
    pub(super) rom: RomSource,
    /// The `rom=` image, for the firmware tables.
    pub(super) image: Option<Arc<[u8]>>,
    /// `vbios=`: the image goes in the VFCT table, behind an ATRM method, in a SETUP_PCI
    /// record.
    pub(super) vfct: bool,
    pub(super) atrm: bool,
    pub(super) setup: bool,
    /// `quirks=`: the vendor quirks apply.
    pub(super) quirks: bool,
    /// `vga=on`: the legacy VGA ranges go to it.
    pub(super) vga: bool,
    /// Its INTx pin (0: none).
    pub(super) pin: u8,
    pub(super) needs: FunctionNeeds,
}

/// The container, with the KVM-VFIO device so KVM knows the VM has assigned devices
/// (coherent DMA, no-snoop handling).
pub(super) fn open_container(vm: &VmFd) -> Result<Arc<VfioContainer>, Error> {
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
pub(super) fn vfio_message(error: &VfioError, device: &str) -> String {
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

/// The `rom=` image of `arg`, read and validated against the device's IDs (when known).
pub(super) fn load_rom(
    arg: &GpuArg,
    name: &str,
    ids: Option<(u16, u16)>,
) -> Result<Option<Arc<[u8]>>, Error> {
    let RomChoice::File(path) = &arg.rom else {
        return Ok(None);
    };
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Rom(format!("cannot read the ROM image {}: {e}", path.display())))?;
    let rom =
        option_rom::parse(&bytes).map_err(|e| Error::Rom(format!("{}: {e}", path.display())))?;
    if let (Some(image_ids), Some(ids)) = (rom.ids(), ids) {
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

/// `rom=auto`: the image the host holds for a display controller whose own ROM BAR has
/// no valid one (see [`vbios_source::find_auto`]), with one line saying where it came from
/// or, when there is none, one warning saying what to do. The guest boots either way.
fn auto_rom(
    vfio: &VfioDevice,
    arg: &GpuArg,
    bdf: &str,
    ids: (u16, u16),
    own_rom: &[u8],
) -> Option<Arc<[u8]>> {
    let class = config_dword(vfio, 0x08) >> 8;
    let device = AutoLookup {
        bdf,
        ids,
        class,
        own_rom,
        any_ids: arg.skip_id_check,
    };
    match vbios_source::find_auto(std::path::Path::new("/sys"), &device) {
        AutoRom::Own => None,
        AutoRom::Found(image, source) => {
            log::info!("{bdf}: VBIOS from {source} ({} bytes)", image.len());
            Some(image.into())
        }
        AutoRom::Missing(why) => {
            log::warn!(
                "{bdf}: no VBIOS for this display controller ({why}); its guest driver may not find one: give one with --gpu {bdf},rom=FILE (minivmm rom extract --device {bdf} -o FILE)"
            );
            None
        }
    }
}

/// The vendor of the image in a ROM BAR when it is not the device's vendor. The host
/// kernel shows the boot display's shadowed BIOS (from 0xc0000) as the ROM of a display
/// controller it takes for the boot device; that is no image for it. (Another device ID
/// of the same vendor is common in real VBIOS images and is left alone.)
fn foreign_vendor(rom: &[u8], ids: (u16, u16)) -> Option<u16> {
    let (vendor, _) = option_rom::parse(rom).ok()?.ids()?;
    (vendor != ids.0).then_some(vendor)
}

/// The image in the device's ROM BAR (empty when it has none or it cannot be read).
fn own_rom(vfio: &VfioDevice) -> Vec<u8> {
    let size = vfio.get_region_size(VFIO_PCI_ROM_REGION_INDEX);
    // Larger than any ROM BAR a display controller has: not read.
    if size == 0 || size > 16 << 20 {
        return Vec::new();
    }
    let mut rom = vec![0u8; size as usize];
    vfio.region_read(VFIO_PCI_ROM_REGION_INDEX, &mut rom, 0);
    rom
}

fn config_dword(vfio: &VfioDevice, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    vfio.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut data, offset);
    u32::from_le_bytes(data)
}

/// Open `device` through VFIO and read what its model needs.
pub(super) fn open_device(
    device: &HostDevice,
    arg: &GpuArg,
    container: &Arc<VfioContainer>,
    map: &Arc<GuestMap>,
    gate: &Arc<super::dma_map::DmaGate>,
) -> Result<Opened, Error> {
    let name = name_of(device);
    let vfio = VfioDevice::new(&device.sysfs, container.clone(), false)
        .map_err(|e| Error::Vfio(vfio_message(&e, &name)))?;
    // Reset later, once every device is open (a bus reset needs all their groups).
    let vfio = Arc::new(vfio);
    let id = config_dword(&vfio, 0);
    let subsystem = config_dword(&vfio, 0x2c);
    let ids = (id as u16, (id >> 16) as u16);
    // The device's own ROM matters unless a file replaces it: rom=auto judges it, and an
    // image of another vendor is not shown (a VFIO ROM read of a GPU takes a while).
    let own = match arg.rom {
        RomChoice::File(_) => Vec::new(),
        RomChoice::Auto | RomChoice::Own => own_rom(&vfio),
    };
    let image = match (&arg.rom, device.bdf()) {
        (RomChoice::Auto, Some(bdf)) => auto_rom(&vfio, arg, bdf, ids, &own),
        _ => load_rom(arg, &name, Some(ids))?,
    };
    let rom = match (&image, arg.vbios.rom_bar) {
        (_, false) => RomSource::None,
        (Some(image), true) => RomSource::Image(image.clone()),
        (None, true) => match foreign_vendor(&own, ids) {
            Some(vendor) if !arg.skip_id_check => {
                log::info!(
                    "{name}: its ROM BAR holds another vendor's image ({vendor:04x}: the host's shadow copy of its boot display's BIOS), so the guest's ROM BAR shows none (romcheck=off shows it)"
                );
                RomSource::None
            }
            _ => RomSource::Device,
        },
    };
    let pin = (config_dword(&vfio, 0x3c) >> 8) as u8;
    let served = image.is_some();
    let host = VfioFunction::new(vfio, name.clone(), map.clone(), gate.clone());
    let needs = passthrough::needs(&host, &rom).map_err(|e| Error::Model(name.clone(), e))?;
    Ok(Opened {
        host,
        name,
        ids,
        subsystem: (subsystem as u16, (subsystem >> 16) as u16),
        rom,
        image,
        vfct: served && arg.vbios.vfct,
        atrm: served && arg.vbios.atrm,
        quirks: arg.quirks,
        vga: arg.vga,
        setup: served && arg.vbios.setup,
        pin,
        needs,
    })
}
