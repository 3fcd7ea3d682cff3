//! Loading the guest: kernel, initramfs, command line, zero page and ACPI tables.

mod bcj_x86;
mod payload;
mod xz;

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use linux_loader::loader::{
    bootparam::setup_header, BzImage, Elf, Error as LoaderError, KernelLoader, KernelLoaderResult,
};
use minivmm_firmware::acpi::{atrm, atrm::AtrmImage, vfct};
use minivmm_firmware::{acpi, boot_params, e820, layout, layout::GuestLayout, setup_data};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;
use crate::passthrough::GuestVbios;

/// Offset of the 64-bit entry point (startup_64) from the start of a bzImage's protected-mode
/// code, fixed by the boot protocol.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `xloadflags` bit: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Command line limit for kernels whose header does not say (boot protocol < 2.06).
const DEFAULT_CMDLINE_LIMIT: usize = 255;
/// Command line limit for an ELF vmlinux (x86 COMMAND_LINE_SIZE - 1).
const ELF_CMDLINE_LIMIT: usize = 2047;
/// Highest address an initramfs may end at for kernels that do not say (boot protocol < 2.03).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Guest page size.
const PAGE: u64 = 4096;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file cannot be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Neither loader recognised the kernel.
    #[error("{0} is neither a bzImage nor an ELF vmlinux; pass a Linux kernel to --kernel")]
    NotAKernel(PathBuf),
    /// A recognised kernel that cannot be loaded.
    #[error("cannot load kernel {0}: {1}")]
    Load(PathBuf, String),
    /// The kernel does not fit in guest RAM.
    #[error("kernel {0} does not fit in guest RAM; give the guest more --memory")]
    KernelTooLarge(PathBuf),
    /// A bzImage without a 64-bit entry point.
    #[error("{0} has no 64-bit entry point; minivmm boots x86-64 kernels only")]
    Not64Bit(PathBuf),
    /// The initramfs does not fit.
    #[error("initramfs {path} ({size} MiB) does not fit in guest RAM below {limit:#x} after the kernel; give the guest more --memory")]
    InitramfsTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in MiB.
        size: u64,
        /// The highest address it could end at.
        limit: u64,
    },
    /// Command line too long for this kernel.
    #[error("the kernel command line is {0} bytes; this kernel accepts at most {1}")]
    CmdlineTooLong(usize, usize),
    /// Command line with bytes the kernel cannot take.
    #[error("the kernel command line must be printable ASCII")]
    CmdlineNotAscii,
    /// Building firmware tables failed.
    #[error("{0}")]
    Acpi(#[from] acpi::Error),
    /// Building the zero page failed.
    #[error("{0}")]
    BootParams(#[from] boot_params::Error),
    /// Copying into guest memory failed.
    #[error("cannot write the {0} into guest memory")]
    GuestMemory(&'static str),
    /// The VM stopped being built while the kernel loaded (another step failed).
    #[error("kernel loading abandoned")]
    Abandoned,
    /// VBIOS images for VFCT/ATRM/SETUP_PCI that do not fit below 640 KiB.
    #[error("the VBIOS images need {0} bytes for VFCT, ATRM and SETUP_PCI, more than the {1} bytes of the firmware area: offer fewer paths with vbios= (vfct+atrm share one copy, setup needs its own)")]
    VbiosTooLarge(u64, u64),
}

/// What the vCPUs need to know after loading.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// Guest address the boot vCPU starts at, in 64-bit mode.
    pub entry: u64,
}

/// A file the guest boots from, opened once: a guest reboot loads it again from the open
/// file (the sandboxed VMM can open none, and may no longer be allowed to read the path).
#[derive(Debug)]
pub struct BootFile {
    /// Where it came from, for messages.
    pub path: PathBuf,
    file: File,
}

impl BootFile {
    /// Open the `what` file at `path`.
    pub fn open(what: &'static str, path: &Path) -> Result<BootFile, Error> {
        let file = File::open(path).map_err(read_error(what, path))?;
        Ok(BootFile {
            path: path.into(),
            file,
        })
    }

    /// Its whole contents, read at offsets (no shared file position).
    fn read_all(&self, what: &'static str) -> Result<Vec<u8>, Error> {
        use std::os::unix::fs::FileExt as _;
        let error = read_error(what, &self.path);
        let size = self.file.metadata().map_err(&error)?.len();
        let mut bytes = vec![
            0u8;
            usize::try_from(size)
                .map_err(|_| error(std::io::Error::other("too large")))?
        ];
        self.file.read_exact_at(&mut bytes, 0).map_err(&error)?;
        Ok(bytes)
    }
}

/// The inputs of [`load`].
#[derive(Debug)]
pub struct LoadConfig<'a> {
    /// Initramfs file.
    pub initramfs: Option<&'a mut BootFile>,
    /// Command line.
    pub cmdline: &'a str,
    /// Number of vCPUs (for the MADT).
    pub cpus: usize,
    /// VBIOS images to offer through the VFCT table and SETUP_PCI records.
    pub vbios: &'a [GuestVbios],
    /// A passed-through VGA gets the legacy ranges: say it is in text mode (vgacon).
    pub vga_text: bool,
}

/// Load everything else the guest needs into `memory`, around a kernel [`load_kernel`] put
/// there.
pub fn load(
    memory: &GuestMemory,
    guest: &GuestLayout,
    config: &mut LoadConfig,
    kernel: LoadedKernel,
) -> Result<BootInfo, Error> {
    let LoadedKernel {
        result: kernel,
        entry,
    } = kernel;
    let header = kernel.setup_header;
    let cmdline_len = write_cmdline(memory, config.cmdline, header.as_ref())?;
    let initramfs = match config.initramfs.as_deref_mut() {
        Some(file) => Some(load_initramfs(memory, guest, file, &kernel)?),
        None => None,
    };
    let firmware = write_vbios(memory, config.vbios)?;
    let tables = acpi::build(&acpi::AcpiConfig {
        num_cpus: config.cpus,
        layout: guest,
        extra_tables: firmware.vfct.as_slice(),
        atrm: &firmware.atrm,
    })?;
    memory
        .write_slice(&tables.bytes, GuestAddress(tables.start))
        .map_err(|_| Error::GuestMemory("ACPI tables"))?;
    memory
        .write_slice(
            &minivmm_firmware::reset_stub::code(),
            GuestAddress(layout::RESET_VECTOR),
        )
        .map_err(|_| Error::GuestMemory("reset vector"))?;
    let e820 = e820::e820_map_reserving(guest, firmware.reserved);
    let params = boot_params::build(&boot_params::BootParamsConfig {
        setup_header: header,
        cmdline_addr: layout::CMDLINE_START,
        cmdline_len: cmdline_len as u32,
        initramfs,
        e820: &e820,
        rsdp_addr: tables.rsdp_addr,
        setup_data: firmware.setup_data,
        vga_text: config.vga_text,
    })?;
    memory
        .write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(|_| Error::GuestMemory("zero page"))?;
    Ok(BootInfo { entry })
}

/// Where [`write_vbios`] put things.
#[derive(Debug, Default)]
struct FirmwareData {
    /// The VFCT table's address, for the XSDT.
    vfct: Option<u64>,
    /// The images the DSDT offers through `ATRM`, and where they are.
    atrm: Vec<AtrmImage>,
    /// Bytes from the start of the area to reserve in e820 (the VFCT table and the ATRM
    /// images).
    reserved: u64,
    /// The first setup_data record, 0 for none.
    setup_data: u64,
}

/// Put the VFCT table and the images read through `ATRM` (reserved: ACPI tables and the
/// memory their methods read must stay), then the SETUP_PCI records (RAM the kernel
/// reserves itself) into the firmware-data area. An `ATRM` image that is also in the VFCT
/// is read from there; others get a copy of their own.
fn write_vbios(memory: &GuestMemory, vbios: &[GuestVbios]) -> Result<FirmwareData, Error> {
    let mut data = FirmwareData::default();
    let area = layout::FIRMWARE_DATA_END - layout::FIRMWARE_DATA_START;
    let too_large = |end: u64| Error::VbiosTooLarge(end - layout::FIRMWARE_DATA_START, area);
    let in_vfct: Vec<&GuestVbios> = vbios.iter().filter(|v| v.vfct).collect();
    let vfct: Vec<vfct::VfctImage> = in_vfct
        .iter()
        .map(|v| vfct::VfctImage {
            bus: v.address.bus,
            device: v.address.devfn.device(),
            function: v.address.devfn.function(),
            vendor_id: v.vendor,
            device_id: v.device_id,
            subsystem_vendor_id: v.subsystem_vendor,
            subsystem_id: v.subsystem_id,
            rom: &v.rom,
        })
        .collect();
    let mut next = layout::FIRMWARE_DATA_START;
    // Everything here is checked against the area before it is written.
    let mut place = |bytes: &[u8], what: &'static str| -> Result<u64, Error> {
        let at = next;
        let end = at + bytes.len() as u64;
        if end > layout::FIRMWARE_DATA_END {
            return Err(too_large(end));
        }
        memory
            .write_slice(bytes, GuestAddress(at))
            .map_err(|_| Error::GuestMemory(what))?;
        next = end;
        Ok(at)
    };
    if !vfct.is_empty() {
        let table = vfct::build(&vfct);
        let at = place(&table, "VFCT table")?;
        data.vfct = Some(at);
        for (v, offset) in in_vfct.iter().zip(vfct::image_offsets(&vfct)) {
            if v.atrm {
                data.atrm.push(atrm_image(v, at + offset as u64));
            }
        }
    }
    for v in vbios.iter().filter(|v| v.atrm && !v.vfct) {
        let at = place(&v.rom, "ATRM image")?;
        data.atrm.push(atrm_image(v, at));
    }
    if !data.atrm.is_empty() {
        // The method's region spans a whole chunk from any offset inside an image.
        let tail = vec![0u8; atrm::CHUNK as usize];
        place(&tail, "ATRM image")?;
    }
    data.reserved = (next - layout::FIRMWARE_DATA_START).next_multiple_of(0x1000);
    if data.reserved > area {
        return Err(too_large(layout::FIRMWARE_DATA_START + data.reserved));
    }
    let roms: Vec<setup_data::PciRom> = vbios
        .iter()
        .filter(|v| v.setup)
        .map(|v| setup_data::PciRom {
            vendor: v.vendor,
            device_id: v.device_id,
            bus: v.address.bus,
            device: v.address.devfn.device(),
            function: v.address.devfn.function(),
            rom: &v.rom,
        })
        .collect();
    let start = layout::FIRMWARE_DATA_START + data.reserved;
    let (records, first) = setup_data::pci_list(&roms, start);
    let end = start + records.len() as u64;
    if end > layout::FIRMWARE_DATA_END {
        return Err(too_large(end));
    }
    memory
        .write_slice(&records, GuestAddress(start))
        .map_err(|_| Error::GuestMemory("SETUP_PCI records"))?;
    data.setup_data = first;
    Ok(data)
}

/// Where the `ATRM` method of `vbios`'s function finds its image: at `base`.
fn atrm_image(vbios: &GuestVbios, base: u64) -> AtrmImage {
    AtrmImage {
        port: vbios.port,
        device: vbios.address.devfn.device(),
        function: vbios.address.devfn.function(),
        base,
        // The firmware area is far smaller than 4 GiB: every image in it fits.
        len: vbios.rom.len() as u32,
    }
}

/// The error for a `what` file at `path` that cannot be read.
fn read_error<'a>(what: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> Error + 'a {
    move |source| Error::Read {
        what,
        path: path.into(),
        source,
    }
}

/// A kernel in guest memory and where to enter it.
#[derive(Debug)]
pub struct LoadedKernel {
    /// Where it was loaded; `setup_header` is the bzImage's, if it came from one.
    result: KernelLoaderResult,
    /// The 64-bit entry point.
    entry: u64,
}

/// Load a bzImage — its vmlinux decompressed on the host when the format allows, else the
/// whole image with its own decompressor — or an ELF vmlinux. Runs on its own thread while
/// the rest of the VM is built; `abandon` set means that build failed, so stop early.
pub fn load_kernel(
    memory: &GuestMemory,
    kernel: &BootFile,
    abandon: &AtomicBool,
) -> Result<LoadedKernel, Error> {
    let path = kernel.path.as_path();
    let image = kernel.read_all("kernel")?;
    log::info!("kernel read: {} KiB", image.len() >> 10);
    if let Some(header) = payload::setup_header(&image) {
        if header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(Error::Not64Bit(path.into()));
        }
        if let Some(kernel) = load_payload(memory, &image, header, abandon) {
            return Ok(kernel);
        }
    }
    if abandon.load(Ordering::Relaxed) {
        return Err(Error::Abandoned);
    }
    let start = Some(GuestAddress(layout::HIGH_RAM_START));
    let error = match BzImage::load(memory, None, &mut Cursor::new(&image), start) {
        Ok(result) => {
            let entry = result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET;
            return Ok(LoadedKernel { result, entry });
        }
        Err(e) if is_wrong_format(&e) => {
            match Elf::load(memory, None, &mut Cursor::new(&image), start) {
                // For an ELF the loader reports the entry point as the load address.
                Ok(result) => {
                    let entry = result.kernel_load.0;
                    return Ok(LoadedKernel { result, entry });
                }
                Err(e) if is_wrong_format(&e) => return Err(Error::NotAKernel(path.into())),
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    Err(kernel_error(path, error))
}

/// Decompress a bzImage's vmlinux on the host and load it; `None` means "boot the bzImage
/// the usual way" (the reason is logged).
fn load_payload(
    memory: &GuestMemory,
    image: &[u8],
    header: setup_header,
    abandon: &AtomicBool,
) -> Option<LoadedKernel> {
    let loaded = std::thread::scope(|scope| {
        let mut reader = payload::decoder(scope, image, &header)?;
        payload::load_vmlinux(memory, &mut reader, layout::HIGH_RAM_START, abandon)
    });
    let vmlinux = match loaded {
        Ok(vmlinux) => vmlinux,
        Err(payload::Skip::Abandoned) => return None,
        Err(skip) => {
            log::info!("{skip}; the guest decompresses the kernel itself");
            return None;
        }
    };
    log::info!("booting the bzImage's vmlinux, decompressed on the host");
    let result = KernelLoaderResult {
        kernel_load: GuestAddress(vmlinux.entry),
        kernel_end: vmlinux.end,
        setup_header: Some(header),
        ..Default::default()
    };
    Some(LoadedKernel {
        result,
        entry: vmlinux.entry,
    })
}

/// True when the loader says the file is not of its format at all.
fn is_wrong_format(error: &LoaderError) -> bool {
    use linux_loader::loader::{bzimage::Error as Bz, elf::Error as Elf};
    matches!(
        error,
        LoaderError::Bzimage(
            Bz::InvalidBzImage | Bz::ReadBzImageHeader | Bz::SeekBzImageHeader | Bz::Underflow
        ) | LoaderError::Elf(Elf::InvalidElfMagicNumber | Elf::ReadElfHeader | Elf::SeekElfStart)
    )
}

/// Say what went wrong with a file that is a bzImage or an ELF.
fn kernel_error(path: &Path, error: LoaderError) -> Error {
    use linux_loader::loader::{bzimage::Error as Bz, elf::Error as Elf};
    match error {
        LoaderError::Bzimage(Bz::ReadBzImageCompressedKernel)
        | LoaderError::Elf(Elf::ReadKernelImage)
        | LoaderError::MemoryOverflow => Error::KernelTooLarge(path.into()),
        LoaderError::Elf(_) => Error::NotAKernel(path.into()),
        other => Error::Load(path.into(), other.to_string()),
    }
}

/// Bytes of a kernel file [`preflight`] reads: the setup header, or the ELF header.
const PREFLIGHT_BYTES: u64 = 64 << 10;

/// What can be told about the inputs before anything is built: the kernel is readable and a
/// 64-bit bzImage or an ELF, the initramfs readable, the command line within the kernel's
/// limit. Run first, so a mistyped path costs no VM, no DMA mapping and no device moved to
/// vfio-pci; [`load`] checks all of it again on the real files.
pub fn preflight(kernel: &Path, initramfs: Option<&Path>, cmdline: &str) -> Result<(), Error> {
    use std::io::Read as _;
    let mut head = Vec::new();
    std::fs::File::open(kernel)
        .and_then(|f| f.take(PREFLIGHT_BYTES).read_to_end(&mut head))
        .map_err(read_error("kernel", kernel))?;
    let header = payload::setup_header(&head);
    match &header {
        Some(h) if h.xloadflags & XLF_KERNEL_64 == 0 => return Err(Error::Not64Bit(kernel.into())),
        Some(_) => {}
        None if head.starts_with(payload::ELF_MAGIC) => {}
        None => return Err(Error::NotAKernel(kernel.into())),
    }
    check_cmdline(cmdline, header.as_ref())?;
    if let Some(path) = initramfs {
        std::fs::File::open(path).map_err(read_error("initramfs", path))?;
    }
    Ok(())
}

/// The longest command line `header`'s kernel accepts.
fn cmdline_limit(header: Option<&setup_header>) -> usize {
    match header {
        Some(h) if h.version >= 0x0206 => h.cmdline_size as usize,
        Some(_) => DEFAULT_CMDLINE_LIMIT,
        None => ELF_CMDLINE_LIMIT,
    }
}

/// The command line fits `header`'s kernel and is printable ASCII.
fn check_cmdline(cmdline: &str, header: Option<&setup_header>) -> Result<(), Error> {
    let limit = cmdline_limit(header).min(layout::CMDLINE_MAX_SIZE as usize - 1);
    if cmdline.len() > limit {
        return Err(Error::CmdlineTooLong(cmdline.len(), limit));
    }
    if !cmdline.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(Error::CmdlineNotAscii);
    }
    Ok(())
}

/// Check the command line against the kernel's limit and copy it, NUL terminated.
pub fn write_cmdline(
    memory: &GuestMemory,
    cmdline: &str,
    header: Option<&setup_header>,
) -> Result<usize, Error> {
    check_cmdline(cmdline, header)?;
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    memory
        .write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|_| Error::GuestMemory("command line"))?;
    Ok(cmdline.len())
}

/// Where an initramfs of `size` bytes goes: as high as possible below both the end of low
/// RAM and the kernel's `initrd_addr_max`, page aligned, above everything the kernel needs
/// while it decompresses itself.
pub fn initramfs_address(
    guest: &GuestLayout,
    kernel: &KernelLoaderResult,
    size: u64,
) -> Option<u64> {
    let (addr_max, kernel_top) = match kernel.setup_header {
        Some(h) => {
            let max = if h.version >= 0x0203 {
                u64::from(h.initrd_addr_max)
            } else {
                DEFAULT_INITRD_ADDR_MAX
            };
            // A malformed kernel's entry can sit at the top of the address space (found by
            // the kernel_loader fuzz target): then nothing fits after it.
            (
                max,
                kernel.kernel_load.0.checked_add(u64::from(h.init_size))?,
            )
        }
        None => (DEFAULT_INITRD_ADDR_MAX, kernel.kernel_end),
    };
    let end = guest.low_ram_end().min(addr_max.saturating_add(1));
    let start = end.checked_sub(size)? & !(PAGE - 1);
    (start >= kernel_top.max(kernel.kernel_end)).then_some(start)
}

fn load_initramfs(
    memory: &GuestMemory,
    guest: &GuestLayout,
    initramfs: &mut BootFile,
    kernel: &KernelLoaderResult,
) -> Result<(u64, u32), Error> {
    use std::io::Seek as _;
    let path = initramfs.path.as_path();
    let read_error = read_error("initramfs", path);
    let file = &mut initramfs.file;
    // From the start: a reboot reads it again.
    file.rewind().map_err(&read_error)?;
    let size = file.metadata().map_err(&read_error)?.len();
    let too_large = || Error::InitramfsTooLarge {
        path: path.into(),
        size: size.div_ceil(1 << 20),
        limit: guest.low_ram_end(),
    };
    let size32 = u32::try_from(size).map_err(|_| too_large())?;
    let addr = initramfs_address(guest, kernel, size).ok_or_else(too_large)?;
    memory
        .read_exact_volatile_from(GuestAddress(addr), file, size as usize)
        .map_err(|e| read_error(std::io::Error::other(e.to_string())))?;
    Ok((addr, size32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage_result(init_size: u32) -> KernelLoaderResult {
        KernelLoaderResult {
            kernel_load: GuestAddress(0x10_0000),
            kernel_end: 0x90_0000,
            setup_header: Some(setup_header {
                version: 0x020f,
                initrd_addr_max: 0x7fff_ffff,
                init_size,
                cmdline_size: 2047,
                xloadflags: 0x1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn initramfs_goes_to_the_top_of_low_ram() {
        let guest = GuestLayout::new(256 << 20, 46).unwrap();
        let addr = initramfs_address(&guest, &bzimage_result(0x200_0000), 0x1800).unwrap();
        assert_eq!(addr, (256 << 20) - 0x2000);
    }

    #[test]
    fn initramfs_never_overlaps_the_decompressing_kernel() {
        let guest = GuestLayout::new(64 << 20, 46).unwrap();
        // The kernel needs 0x10_0000 + 48 MiB while it decompresses; 32 MiB does not fit.
        assert!(initramfs_address(&guest, &bzimage_result(0x300_0000), 32 << 20).is_none());
        assert!(initramfs_address(&guest, &bzimage_result(0x300_0000), 8 << 20).is_some());
    }

    #[test]
    fn a_kernel_entry_at_the_top_of_the_address_space_places_no_initramfs() {
        // fuzz/regressions/kernel_loader: the sum overflowed (a panic in debug builds).
        let guest = GuestLayout::new(64 << 20, 46).unwrap();
        let mut kernel = bzimage_result(0x300_0000);
        kernel.kernel_load = GuestAddress(0xffff_ffff_ffff_f000);
        assert!(initramfs_address(&guest, &kernel, 4096).is_none());
    }

    fn vbios(bus: u8, rom: &[u8], vfct: bool, atrm: bool, setup: bool) -> GuestVbios {
        use minivmm_devices::pci::{DevFn, PciAddress};
        GuestVbios {
            address: PciAddress::new(bus, DevFn::new(0, 0)),
            vendor: 0x1002,
            device_id: 0x5159,
            subsystem_vendor: 0,
            subsystem_id: 0,
            rom: rom.into(),
            port: Some(bus + 2),
            vfct,
            atrm,
            setup,
        }
    }

    fn read(memory: &GuestMemory, at: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        memory.read_slice(&mut bytes, GuestAddress(at)).unwrap();
        bytes
    }

    #[test]
    fn atrm_reads_an_image_in_the_vfct_from_there_and_others_from_a_reserved_copy() {
        let memory = crate::memory::from_ranges(&[(0, 1 << 20)]).unwrap();
        let (shared, own) = ([0x55u8; 300], [0x66u8; 200]);
        let data = write_vbios(
            &memory,
            &[
                vbios(1, &shared, true, true, false),
                vbios(2, &own, false, true, true),
            ],
        )
        .unwrap();
        assert_eq!(data.vfct, Some(layout::FIRMWARE_DATA_START));
        assert_eq!(data.atrm.len(), 2);
        let (in_vfct, copied) = (&data.atrm[0], &data.atrm[1]);
        assert_eq!((in_vfct.port, in_vfct.len), (Some(3), 300));
        assert_eq!(read(&memory, in_vfct.base, 300), shared);
        assert_eq!((copied.port, copied.len), (Some(4), 200));
        assert_eq!(read(&memory, copied.base, 200), own);
        // Reserved: both images and a whole chunk after the last one (the method's region),
        // and the SETUP_PCI record only after that.
        let reserved_end = layout::FIRMWARE_DATA_START + data.reserved;
        assert!(copied.base + 200 + u64::from(atrm::CHUNK) <= reserved_end);
        assert!(data.setup_data >= reserved_end);
    }

    #[test]
    fn without_atrm_nothing_is_copied_and_only_the_vfct_is_reserved() {
        let memory = crate::memory::from_ranges(&[(0, 1 << 20)]).unwrap();
        let data = write_vbios(&memory, &[vbios(1, &[1; 100], true, false, false)]).unwrap();
        assert!(data.atrm.is_empty());
        assert_eq!(data.reserved, 0x1000);
    }

    #[test]
    fn images_beyond_the_firmware_area_are_refused_with_what_to_do() {
        let memory = crate::memory::from_ranges(&[(0, 1 << 20)]).unwrap();
        let big = vec![0x55u8; 300 << 10];
        let e = write_vbios(&memory, &[vbios(1, &big, true, true, true)]).unwrap_err();
        assert!(e.to_string().contains("vbios="), "{e}");
        // One copy for VFCT and ATRM fits.
        assert!(write_vbios(&memory, &[vbios(1, &big, true, true, false)]).is_ok());
    }

    #[test]
    fn command_line_limit_comes_from_the_header() {
        let memory = crate::memory::from_ranges(&[(0, 1 << 20)]).unwrap();
        let header = bzimage_result(0).setup_header.unwrap();
        assert_eq!(
            write_cmdline(&memory, "console=ttyS0", Some(&header)).unwrap(),
            13
        );
        let mut text = [0u8; 14];
        memory
            .read_slice(&mut text, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0\0");
        let long = "x".repeat(2048);
        assert!(matches!(
            write_cmdline(&memory, &long, Some(&header)),
            Err(Error::CmdlineTooLong(2048, 2047))
        ));
        assert!(matches!(
            write_cmdline(&memory, "a\nb", Some(&header)),
            Err(Error::CmdlineNotAscii)
        ));
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("minivmm-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn files_that_are_not_kernels_are_named_as_such() {
        let memory = crate::memory::from_ranges(&[(0, 4 << 20)]).unwrap();
        let text = temp_file("text", b"hello\n");
        let file = BootFile::open("kernel", &text).unwrap();
        assert!(matches!(
            load_kernel(&memory, &file, &AtomicBool::new(false)),
            Err(Error::NotAKernel(_))
        ));
        let missing = Path::new("/nonexistent/bzImage");
        assert!(matches!(
            BootFile::open("kernel", missing),
            Err(Error::Read { .. })
        ));
        std::fs::remove_file(text).unwrap();
    }

    /// A file that is only a bzImage's setup header (with these load flags and command
    /// line limit): enough for the header checks.
    fn header_only_bzimage(name: &str, xloadflags: u16, cmdline_size: u32) -> PathBuf {
        let mut image = vec![0u8; 4096];
        let header = setup_header {
            setup_sects: 1,
            header: 0x5372_6448,
            version: 0x020f,
            loadflags: 1,
            xloadflags,
            cmdline_size,
            ..Default::default()
        };
        let size = std::mem::size_of::<setup_header>();
        image[0x1f1..0x1f1 + size].copy_from_slice(vm_memory::ByteValued::as_slice(&header));
        temp_file(name, &image)
    }

    #[test]
    fn preflight_finds_bad_inputs_before_any_vm_exists() {
        let bz = header_only_bzimage("preflight-bz", XLF_KERNEL_64, 255);
        let text = temp_file("preflight-text", b"hello\n");
        let missing = Path::new("/nonexistent/initrd");
        assert!(preflight(&bz, None, "console=ttyS0").is_ok());
        assert!(matches!(
            preflight(&bz, None, &"x".repeat(256)),
            Err(Error::CmdlineTooLong(256, 255))
        ));
        assert!(matches!(
            preflight(&bz, Some(missing), ""),
            Err(Error::Read {
                what: "initramfs",
                ..
            })
        ));
        assert!(matches!(
            preflight(&text, None, ""),
            Err(Error::NotAKernel(_))
        ));
        assert!(matches!(
            preflight(Path::new("/nonexistent/bzImage"), None, ""),
            Err(Error::Read { what: "kernel", .. })
        ));
        let elf = temp_file("preflight-elf", b"\x7fELF\x02\x01\x01");
        assert!(
            preflight(&elf, None, &"x".repeat(2047)).is_ok(),
            "an ELF takes 2047"
        );
        for path in [bz, text, elf] {
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn a_bzimage_without_a_64_bit_entry_is_refused() {
        let memory = crate::memory::from_ranges(&[(0, 4 << 20)]).unwrap();
        let path = header_only_bzimage("bz32", 0, 0);
        let file = BootFile::open("kernel", &path).unwrap();
        assert!(matches!(
            load_kernel(&memory, &file, &AtomicBool::new(false)),
            Err(Error::Not64Bit(_))
        ));
        assert!(matches!(
            preflight(&path, None, ""),
            Err(Error::Not64Bit(_))
        ));
        std::fs::remove_file(path).unwrap();
    }
}
