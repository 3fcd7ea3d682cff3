//! PCI option ROM images (a VBIOS is one): parsing and validation.
//!
//! An image is a chain: each entry starts with 0x55 0xAA, points (at 0x18) to its PCI data
//! structure ("PCIR"), which gives the IDs, the class, the entry's length in 512-byte
//! units, its code type and whether it is the last. A legacy x86 entry's bytes sum to 0;
//! an EFI entry carries its own header (0x0EF1 signature, subsystem, machine type).

use crate::le::{u16_at, u32_at};

/// Most bytes minivmm serves as a ROM: a ROM BAR is at most 16 MiB, and no VBIOS is near.
pub const MAX_ROM_SIZE: usize = 16 << 20;

/// Code type of an image in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeType {
    /// Legacy x86 (PC-AT compatible) code.
    X86,
    /// Open Firmware.
    OpenFirmware,
    /// HP PA-RISC.
    PaRisc,
    /// A UEFI driver.
    Efi,
    /// Anything else.
    Other(u8),
}

impl CodeType {
    fn from_byte(byte: u8) -> Self {
        match byte {
            0 => CodeType::X86,
            1 => CodeType::OpenFirmware,
            2 => CodeType::PaRisc,
            3 => CodeType::Efi,
            other => CodeType::Other(other),
        }
    }
}

impl std::fmt::Display for CodeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeType::X86 => f.write_str("x86 (legacy BIOS)"),
            CodeType::OpenFirmware => f.write_str("Open Firmware"),
            CodeType::PaRisc => f.write_str("HP PA-RISC"),
            CodeType::Efi => f.write_str("EFI"),
            CodeType::Other(n) => write!(f, "unknown ({n:#04x})"),
        }
    }
}

/// The UEFI part of an EFI image's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EfiHeader {
    /// EFI subsystem (10 application, 11 boot service driver, 12 runtime driver).
    pub subsystem: u16,
    /// PE machine type (0x8664 x86-64, 0xaa64 AArch64, 0x0ebc EFI byte code).
    pub machine: u16,
    /// 1 when the PE image is compressed.
    pub compressed: bool,
}

/// One image of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RomImage {
    /// Offset of the image in the file.
    pub offset: usize,
    /// Length in bytes (from the PCI data structure).
    pub length: usize,
    /// Vendor and device ID the image is for.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code: base class, subclass, programming interface.
    pub class: [u8; 3],
    /// Code type.
    pub code_type: CodeType,
    /// Revision of the code.
    pub code_revision: u16,
    /// The last image of the chain.
    pub last: bool,
    /// For x86 images: whether the bytes sum to 0 (`None` for other code types).
    pub checksum_ok: Option<bool>,
    /// For EFI images, their header.
    pub efi: Option<EfiHeader>,
    /// Vendor marks found in the first KiB (ATOMBIOS, NVIDIA, ...).
    pub marks: Vec<&'static str>,
}

/// A whole ROM file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionRom {
    /// The images, in chain order.
    pub images: Vec<RomImage>,
    /// Bytes of the file after the last image (padding, usually 0xFF or 0).
    pub trailing: usize,
}

/// Why bytes are not a usable option ROM. Each names the offset and what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// An empty file.
    #[error("the ROM image is empty")]
    Empty,
    /// Larger than a ROM BAR can be.
    #[error("the ROM image is {0} bytes; at most {MAX_ROM_SIZE} are allowed")]
    TooLarge(usize),
    /// The 0x55AA signature is missing.
    #[error(
        "no ROM signature at offset {offset:#x}: expected 55 aa, found {found:02x} {second:02x}"
    )]
    Signature {
        /// Where.
        offset: usize,
        /// First byte found.
        found: u8,
        /// Second byte found.
        second: u8,
    },
    /// The file ends inside a structure.
    #[error("the ROM image is truncated: {what} at offset {offset:#x} needs {need} bytes, the file has {have}")]
    Truncated {
        /// The structure.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// Bytes needed from the start of the file.
        need: usize,
        /// File size.
        have: usize,
    },
    /// The PCI data structure's signature is wrong.
    #[error("no PCI data structure at offset {offset:#x}: expected \"PCIR\", found {found:?}")]
    Pcir {
        /// Where.
        offset: usize,
        /// What is there.
        found: String,
    },
    /// An image of length 0 would loop forever.
    #[error("the image at offset {0:#x} has length 0 in its PCI data structure")]
    ZeroLength(usize),
    /// A legacy image whose bytes do not sum to 0.
    #[error("the x86 image at offset {offset:#x} has a bad checksum: its {length} bytes sum to {sum:#04x}, expected 0x00")]
    Checksum {
        /// Where.
        offset: usize,
        /// Its length.
        length: usize,
        /// The sum mod 256.
        sum: u8,
    },
    /// The chain never marks a last image.
    #[error(
        "the image chain runs past the end of the file at offset {0:#x} without a last-image mark"
    )]
    Unterminated(usize),
}

fn need(bytes: &[u8], what: &'static str, offset: usize, len: usize) -> Result<(), Error> {
    if offset + len > bytes.len() {
        return Err(Error::Truncated {
            what,
            offset,
            need: offset + len,
            have: bytes.len(),
        });
    }
    Ok(())
}

/// Strings that identify a VBIOS's maker.
const MARKS: [(&[u8], &str); 5] = [
    (b"ATOMBIOS", "ATOMBIOS"),
    (b"761295520", "AMD signature 761295520"),
    (b"NVIDIA", "NVIDIA"),
    (b"Intel", "Intel"),
    (b"IBM", "IBM compatibility mark"),
];

fn marks(image: &[u8]) -> Vec<&'static str> {
    let head = image.get(..image.len().min(1024)).unwrap_or_default();
    MARKS
        .iter()
        .filter(|(needle, _)| head.windows(needle.len()).any(|w| w == *needle))
        .map(|(_, name)| *name)
        .collect()
}

/// Parse and validate a ROM file.
pub fn parse(bytes: &[u8]) -> Result<OptionRom, Error> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    if bytes.len() > MAX_ROM_SIZE {
        return Err(Error::TooLarge(bytes.len()));
    }
    let mut images = Vec::new();
    let mut offset = 0;
    loop {
        need(bytes, "the ROM signature", offset, 2)?;
        let (found, second) = (
            bytes.get(offset).copied().unwrap_or(0),
            bytes.get(offset + 1).copied().unwrap_or(0),
        );
        if (found, second) != (0x55, 0xaa) {
            return Err(Error::Signature {
                offset,
                found,
                second,
            });
        }
        need(bytes, "the ROM header", offset, 0x1a)?;
        let pcir = offset + usize::from(u16_at(bytes, offset + 0x18).unwrap_or(0));
        need(bytes, "the PCI data structure", pcir, 0x18)?;
        let signature = bytes.get(pcir..pcir + 4).unwrap_or_default();
        if signature != b"PCIR" {
            return Err(Error::Pcir {
                offset: pcir,
                found: String::from_utf8_lossy(signature).into_owned(),
            });
        }
        let length = usize::from(u16_at(bytes, pcir + 0x10).unwrap_or(0)) * 512;
        if length == 0 {
            return Err(Error::ZeroLength(offset));
        }
        need(bytes, "an image", offset, length)?;
        let image = bytes.get(offset..offset + length).unwrap_or_default();
        let code_type = CodeType::from_byte(bytes.get(pcir + 0x14).copied().unwrap_or(0));
        let checksum_ok = (code_type == CodeType::X86).then(|| {
            let sum = image.iter().fold(0u8, |a, b| a.wrapping_add(*b));
            sum == 0
        });
        if checksum_ok == Some(false) {
            let sum = image.iter().fold(0u8, |a, b| a.wrapping_add(*b));
            return Err(Error::Checksum {
                offset,
                length,
                sum,
            });
        }
        let efi =
            (code_type == CodeType::Efi && u32_at(bytes, offset + 4) == Some(0x0ef1)).then(|| {
                EfiHeader {
                    subsystem: u16_at(bytes, offset + 8).unwrap_or(0),
                    machine: u16_at(bytes, offset + 0x0a).unwrap_or(0),
                    compressed: u16_at(bytes, offset + 0x0c) == Some(1),
                }
            });
        let class = [
            bytes.get(pcir + 0x0f).copied().unwrap_or(0),
            bytes.get(pcir + 0x0e).copied().unwrap_or(0),
            bytes.get(pcir + 0x0d).copied().unwrap_or(0),
        ];
        let last = bytes.get(pcir + 0x15).copied().unwrap_or(0x80) & 0x80 != 0;
        images.push(RomImage {
            offset,
            length,
            vendor: u16_at(bytes, pcir + 4).unwrap_or(0),
            device: u16_at(bytes, pcir + 6).unwrap_or(0),
            class,
            code_type,
            code_revision: u16_at(bytes, pcir + 0x12).unwrap_or(0),
            last,
            checksum_ok,
            efi,
            marks: marks(image),
        });
        offset += length;
        if last {
            return Ok(OptionRom {
                images,
                trailing: bytes.len() - offset,
            });
        }
        if offset >= bytes.len() {
            return Err(Error::Unterminated(offset));
        }
    }
}

impl OptionRom {
    /// The vendor and device the first image is for (what a driver checks).
    pub fn ids(&self) -> Option<(u16, u16)> {
        self.images.first().map(|i| (i.vendor, i.device))
    }

    /// A report for a person: one paragraph per image.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (n, image) in self.images.iter().enumerate() {
            out += &format!(
                "image {n} at {:#x}: {} bytes, {}, vendor {:04x} device {:04x}, class {:02x}{:02x}{:02x}, code revision {}{}\n",
                image.offset,
                image.length,
                image.code_type,
                image.vendor,
                image.device,
                image.class[0],
                image.class[1],
                image.class[2],
                image.code_revision,
                if image.last { ", last" } else { "" }
            );
            match image.checksum_ok {
                Some(true) => out += "  checksum: ok (bytes sum to 0)\n",
                Some(false) => out += "  checksum: BAD\n",
                None => {}
            }
            if let Some(efi) = image.efi {
                out += &format!(
                    "  EFI: subsystem {}, machine {:#06x}, {}\n",
                    efi.subsystem,
                    efi.machine,
                    if efi.compressed {
                        "compressed"
                    } else {
                        "uncompressed"
                    }
                );
            }
            if !image.marks.is_empty() {
                out += &format!("  marks: {}\n", image.marks.join(", "));
            }
        }
        if self.trailing > 0 {
            out += &format!("{} bytes after the last image\n", self.trailing);
        }
        out
    }
}

/// The size of a ROM BAR serving `len` bytes: the next power of two, at least 2 KiB.
pub fn bar_size(len: usize) -> u64 {
    (len.max(2048) as u64).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal legacy image of `blocks` × 512 bytes for vendor/device, checksummed.
    pub(crate) fn legacy_image(vendor: u16, device: u16, blocks: u16, last: bool) -> Vec<u8> {
        let mut image = vec![0u8; usize::from(blocks) * 512];
        image[0] = 0x55;
        image[1] = 0xaa;
        image[2] = blocks as u8;
        image[0x18..0x1a].copy_from_slice(&0x40u16.to_le_bytes());
        image[0x40..0x44].copy_from_slice(b"PCIR");
        image[0x44..0x46].copy_from_slice(&vendor.to_le_bytes());
        image[0x46..0x48].copy_from_slice(&device.to_le_bytes());
        image[0x4d..0x50].copy_from_slice(&[0x00, 0x00, 0x03]);
        image[0x50..0x52].copy_from_slice(&blocks.to_le_bytes());
        image[0x55] = if last { 0x80 } else { 0 };
        let sum = image.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        let end = image.len() - 1;
        image[end] = 0u8.wrapping_sub(sum);
        image
    }

    #[test]
    fn a_legacy_image_parses() {
        let rom = parse(&legacy_image(0x1002, 0x6660, 4, true)).unwrap();
        assert_eq!(rom.images.len(), 1);
        let image = &rom.images[0];
        assert_eq!((image.vendor, image.device), (0x1002, 0x6660));
        assert_eq!(image.length, 2048);
        assert_eq!(image.class, [0x03, 0x00, 0x00]);
        assert_eq!(image.code_type, CodeType::X86);
        assert_eq!(image.checksum_ok, Some(true));
        assert!(rom.describe().contains("vendor 1002 device 6660"));
    }

    #[test]
    fn broken_images_are_refused_with_the_offset() {
        assert_eq!(parse(&[]), Err(Error::Empty));
        assert!(matches!(
            parse(&vec![0u8; MAX_ROM_SIZE + 1]),
            Err(Error::TooLarge(_))
        ));
        let good = legacy_image(0x1234, 0x1111, 4, true);
        let mut unsigned = good.clone();
        unsigned[0] = 0;
        assert_eq!(
            parse(&unsigned),
            Err(Error::Signature {
                offset: 0,
                found: 0,
                second: 0xaa
            })
        );
        assert!(matches!(
            parse(&good[..1000]),
            Err(Error::Truncated { need: 2048, .. })
        ));
        let mut bad_sum = good.clone();
        bad_sum[100] ^= 1;
        let e = parse(&bad_sum).unwrap_err();
        assert!(matches!(e, Error::Checksum { offset: 0, .. }), "{e}");
        let mut no_pcir = good.clone();
        no_pcir[0x40] = b'X';
        assert!(matches!(
            parse(&no_pcir),
            Err(Error::Pcir { offset: 0x40, .. })
        ));
        let unterminated = legacy_image(0x1234, 0x1111, 4, false);
        assert_eq!(parse(&unterminated), Err(Error::Unterminated(2048)));
        let mut chained = legacy_image(0x1234, 0x1111, 4, false);
        chained.extend(&unsigned);
        assert!(matches!(
            parse(&chained),
            Err(Error::Signature { offset: 2048, .. })
        ));
    }

    #[test]
    fn bar_sizes_are_powers_of_two_from_2k() {
        assert_eq!(bar_size(1), 2048);
        assert_eq!(bar_size(2048), 2048);
        assert_eq!(bar_size(39936), 65536);
        assert_eq!(bar_size(65537), 131072);
    }

    /// Real images from Debian's seabios and ipxe-qemu packages (installed with QEMU by the
    /// lab's prepare step).
    fn real(path: &str) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| {
            panic!("{path}: {e} (install seabios and ipxe-qemu: apt-get install qemu-system-x86)")
        })
    }

    #[test]
    fn seabios_vga_images_are_one_x86_image_each() {
        let rom = parse(&real("/usr/share/seabios/vgabios-ati.bin")).unwrap();
        assert_eq!(rom.images.len(), 1);
        assert_eq!(rom.ids(), Some((0x1002, 0x5159)));
        assert_eq!(rom.images[0].class[0], 0x03, "display controller");
        assert_eq!(rom.images[0].checksum_ok, Some(true));
        let rom = parse(&real("/usr/share/seabios/vgabios-stdvga.bin")).unwrap();
        assert_eq!(rom.ids(), Some((0x1234, 0x1111)));
    }

    #[test]
    fn ipxe_efi_roms_chain_a_legacy_and_an_efi_image() {
        let rom = parse(&real("/usr/lib/ipxe/qemu/efi-e1000.rom")).unwrap();
        assert_eq!(rom.images.len(), 2);
        assert_eq!(rom.images[0].code_type, CodeType::X86);
        assert!(!rom.images[0].last);
        assert_eq!(rom.images[1].code_type, CodeType::Efi);
        assert!(rom.images[1].last);
        let efi = rom.images[1].efi.unwrap();
        assert_eq!(efi.machine, 0x8664);
        assert_eq!(rom.ids(), Some((0x8086, 0x100e)));
        assert!(rom.describe().contains("EFI: subsystem"));
    }
}
