//! The zero page (`struct boot_params`) of the x86 Linux boot protocol.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use crate::e820::E820Entry;

/// The boot protocol's magic in `setup_header.header`: "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;
/// `setup_header.boot_flag` of a valid header.
const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// `loadflags` bit: the kernel may use the heap between the setup code and `heap_end_ptr`.
const CAN_USE_HEAP: u8 = 0x80;
/// Kernel alignment an ELF vmlinux is assumed to need (16 MiB, the x86 default).
const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// `screen_info.orig_video_isVGA` of a colour VGA text display (`VIDEO_TYPE_VGAC`).
const VIDEO_TYPE_VGAC: u8 = 0x22;

/// Errors building the zero page.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The e820 table of the zero page has room for 128 entries.
    #[error("the guest memory map has {0} entries, more than the zero page holds (128)")]
    TooManyE820Entries(usize),
}

/// What the zero page tells the kernel.
#[derive(Debug)]
pub struct BootParamsConfig<'a> {
    /// The bzImage's own setup header, or `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Length of the command line without the NUL.
    pub cmdline_len: u32,
    /// Guest address and size of the initramfs.
    pub initramfs: Option<(u64, u32)>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// Guest address of the ACPI RSDP (boot protocol 2.14 field; the kernel also scans for it).
    pub rsdp_addr: u64,
    /// Guest address of the first `setup_data` record, 0 for none.
    pub setup_data: u64,
    /// A VGA in 80x25 colour text mode (mode 3) is there, as a BIOS would leave one.
    pub vga_text: bool,
}

/// Fill in a zero page.
pub fn build(config: &BootParamsConfig) -> Result<boot_params, Error> {
    let mut params = boot_params::default();
    if config.e820.len() > params.e820_table.len() {
        return Err(Error::TooManyE820Entries(config.e820.len()));
    }
    params.hdr = config.setup_header.unwrap_or_else(elf_setup_header);
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = config.cmdline_addr as u32;
    params.ext_cmd_line_ptr = (config.cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = config.cmdline_len;
    if let Some((addr, size)) = config.initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size;
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(config.e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = config.e820.len() as u8;
    params.acpi_rsdp_addr = config.rsdp_addr;
    params.hdr.setup_data = config.setup_data;
    if config.vga_text {
        vga_text_mode(&mut params);
    }
    Ok(params)
}

/// What the real-mode setup code would have read from a VGA BIOS in mode 3 (int 10h): the
/// kernel's vgacon takes the display only when these say colour text (a zeroed
/// `screen_info` means no display). The cursor starts at the top left.
fn vga_text_mode(params: &mut boot_params) {
    // A copy: the zero page is a packed structure.
    let mut screen = params.screen_info;
    screen.orig_video_mode = 3;
    screen.orig_video_cols = 80;
    screen.orig_video_lines = 25;
    screen.orig_video_isVGA = VIDEO_TYPE_VGAC;
    // int 10h AH=12h BL=10h: BH 0 (colour), BL 3 (256 KiB); 0x10 would mean "no EGA".
    screen.orig_video_ega_bx = 0x0003;
    screen.orig_video_points = 16;
    params.screen_info = screen;
}

/// A setup header for an ELF vmlinux, which carries none of its own.
fn elf_setup_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: HDR_MAGIC,
        kernel_alignment: ELF_KERNEL_ALIGNMENT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820::{e820_map, E820_RAM};
    use crate::layout::GuestLayout;

    fn config<'a>(e820: &'a [E820Entry]) -> BootParamsConfig<'a> {
        BootParamsConfig {
            setup_header: None,
            cmdline_addr: 0x2_0000,
            cmdline_len: 11,
            initramfs: Some((0x0f00_0000, 0x1234)),
            e820,
            rsdp_addr: 0xe_0000,
            setup_data: 0x3_0000,
            vga_text: false,
        }
    }

    #[test]
    fn a_vga_text_display_is_described_as_a_bios_leaves_it_and_none_otherwise() {
        let e820 = e820_map(&GuestLayout::new(256 << 20, 46).unwrap());
        let params = build(&config(&e820)).unwrap();
        let screen = params.screen_info;
        assert_eq!((screen.orig_video_isVGA, screen.orig_video_lines), (0, 0));
        let params = build(&BootParamsConfig {
            vga_text: true,
            ..config(&e820)
        })
        .unwrap();
        let screen = params.screen_info;
        let (mode, cols, lines) = (
            screen.orig_video_mode,
            screen.orig_video_cols,
            screen.orig_video_lines,
        );
        assert_eq!((mode, cols, lines), (3, 80, 25));
        assert_eq!(screen.orig_video_isVGA, 0x22);
        let bx = screen.orig_video_ega_bx;
        assert_ne!(bx & 0xff, 0x10, "vgacon takes BL 0x10 for CGA");
    }

    #[test]
    fn fields_land_where_the_kernel_reads_them() {
        let e820 = e820_map(&GuestLayout::new(256 << 20, 46).unwrap());
        let params = build(&config(&e820)).unwrap();
        let (cmd_line_ptr, cmdline_size) = (params.hdr.cmd_line_ptr, params.hdr.cmdline_size);
        assert_eq!((cmd_line_ptr, cmdline_size), (0x2_0000, 11));
        let (image, size) = (params.hdr.ramdisk_image, params.hdr.ramdisk_size);
        assert_eq!((image, size), (0x0f00_0000, 0x1234));
        assert_eq!(params.hdr.type_of_loader, 0xff);
        assert_eq!({ params.hdr.header }, HDR_MAGIC);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!({ params.hdr.setup_data }, 0x3_0000);
        assert_eq!(params.e820_entries as usize, e820.len());
        let last = params.e820_table[e820.len() - 1];
        assert_eq!({ last.addr }, 0xe000_0000);
        assert_eq!({ params.e820_table[0].r#type }, E820_RAM);
    }

    #[test]
    fn zero_page_offsets_match_the_boot_protocol() {
        // Documentation/arch/x86/zero-page.rst: e820_entries at 0x1e8, hdr at 0x1f1,
        // acpi_rsdp_addr at 0x070, e820_table at 0x2d0.
        let e820 = e820_map(&GuestLayout::new(256 << 20, 46).unwrap());
        let params = build(&config(&e820)).unwrap();
        // SAFETY: boot_params is plain old data; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&params as *const boot_params).cast::<u8>(),
                std::mem::size_of::<boot_params>(),
            )
        };
        assert_eq!(bytes.len(), 4096);
        assert_eq!(bytes[0x1e8] as usize, e820.len());
        // hdr.setup_data at 0x250.
        assert_eq!(&bytes[0x250..0x258], &0x3_0000u64.to_le_bytes());
        assert_eq!(&bytes[0x202..0x206], b"HdrS");
        assert_eq!(&bytes[0x070..0x078], &0xe_0000u64.to_le_bytes());
        assert_eq!(&bytes[0x228..0x22c], &0x2_0000u32.to_le_bytes());
        assert_eq!(&bytes[0x2d0..0x2d8], &0u64.to_le_bytes());
        assert_eq!(&bytes[0x2d0 + 16..0x2d0 + 20], &E820_RAM.to_le_bytes());
    }

    #[test]
    fn bzimage_header_is_kept() {
        let header = setup_header {
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            header: HDR_MAGIC,
            ..Default::default()
        };
        let e820 = e820_map(&GuestLayout::new(256 << 20, 46).unwrap());
        let params = build(&BootParamsConfig {
            setup_header: Some(header),
            ..config(&e820)
        })
        .unwrap();
        assert_eq!({ params.hdr.version }, 0x020f);
        assert_eq!({ params.hdr.kernel_alignment }, 0x20_0000);
    }

    #[test]
    fn too_many_e820_entries_is_an_error() {
        let many = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: E820_RAM
            };
            129
        ];
        assert_eq!(
            build(&config(&many)).unwrap_err(),
            Error::TooManyE820Entries(129)
        );
    }
}
