//! VFCT: the table through which firmware hands AMD GPU drivers their VBIOS (radeon and
//! amdgpu look here before the PCI ROM BAR). Laptop dGPUs keep their VBIOS only here.
//!
//! Layout (all little-endian): the 36-byte header; a 16-byte table UUID; the offset of the
//! first image block from the table start (0x4c here) and of a second library image (0);
//! 16 reserved bytes. Each image block is bus, device, function (u32 each), vendor, device,
//! subsystem vendor, subsystem (u16 each), revision and image length (u32 each), then the
//! image bytes.

use super::{finish_table, table_header};
use crate::le::{u16_at, u32_at};

/// Offset of the first image block: header (36) + UUID (16) + two offsets (8) + 16 reserved.
pub const FIRST_IMAGE_OFFSET: usize = 0x4c;
/// Size of an image block's header.
pub const IMAGE_HEADER_SIZE: usize = 0x1c;

/// One VBIOS for one PCI function, as the guest addresses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfctImage<'a> {
    /// Guest bus.
    pub bus: u8,
    /// Guest device (slot).
    pub device: u8,
    /// Guest function.
    pub function: u8,
    /// PCI vendor ID of the function.
    pub vendor_id: u16,
    /// PCI device ID of the function.
    pub device_id: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// The image.
    pub rom: &'a [u8],
}

/// Where each image's bytes start in the table [`build`] makes of `images`, from its first
/// byte (an `ATRM` method can read the image there instead of from a copy of its own).
pub fn image_offsets(images: &[VfctImage]) -> Vec<usize> {
    let mut at = FIRST_IMAGE_OFFSET;
    images
        .iter()
        .map(|image| {
            let bytes = at + IMAGE_HEADER_SIZE;
            at = bytes + image.rom.len();
            bytes
        })
        .collect()
}

/// The VFCT table carrying `images`.
pub fn build(images: &[VfctImage]) -> Vec<u8> {
    let mut table = table_header(*b"VFCT", 1);
    table.extend_from_slice(&[0u8; 16]); // table UUID: none
    table.extend_from_slice(&(FIRST_IMAGE_OFFSET as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // no library image
    table.extend_from_slice(&[0u8; 16]);
    for image in images {
        table.extend_from_slice(&u32::from(image.bus).to_le_bytes());
        table.extend_from_slice(&u32::from(image.device).to_le_bytes());
        table.extend_from_slice(&u32::from(image.function).to_le_bytes());
        table.extend_from_slice(&image.vendor_id.to_le_bytes());
        table.extend_from_slice(&image.device_id.to_le_bytes());
        table.extend_from_slice(&image.subsystem_vendor_id.to_le_bytes());
        table.extend_from_slice(&image.subsystem_id.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes()); // revision
        table.extend_from_slice(&(image.rom.len() as u32).to_le_bytes());
        table.extend_from_slice(image.rom);
    }
    finish_table(table)
}

/// One image found in a VFCT table (as read from a host's firmware).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundImage {
    /// Bus, device, function the firmware gave it for.
    pub bdf: (u32, u32, u32),
    /// Vendor and device ID.
    pub ids: (u16, u16),
    /// The image bytes.
    pub rom: Vec<u8>,
}

/// The images of a VFCT table (the host's, from /sys/firmware/acpi/tables/VFCT), walking
/// the blocks from the table's first-image offset; a block that runs past the table ends
/// the walk.
pub fn images(table: &[u8]) -> Vec<FoundImage> {
    let u32_at = |o: usize| u32_at(table, o);
    let u16_at = |o: usize| u16_at(table, o);
    let mut found = Vec::new();
    if table.get(0..4) != Some(b"VFCT".as_slice()) {
        return found;
    }
    let mut at = u32_at(0x34).map_or(FIRST_IMAGE_OFFSET, |o| o as usize);
    while let (Some(bus), Some(dev), Some(func), Some(len)) = (
        u32_at(at),
        u32_at(at + 4),
        u32_at(at + 8),
        u32_at(at + 0x18),
    ) {
        let start = at + IMAGE_HEADER_SIZE;
        let Some(rom) = table.get(start..start + len as usize) else {
            break;
        };
        if len == 0 {
            break;
        }
        found.push(FoundImage {
            bdf: (bus, dev, func),
            ids: (
                u16_at(at + 0x0c).unwrap_or(0),
                u16_at(at + 0x0e).unwrap_or(0),
            ),
            rom: rom.to_vec(),
        });
        at = start + len as usize;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::checksum;

    #[test]
    fn one_image_at_the_documented_offsets() {
        let rom = [0x55, 0xaa, 1, 2, 3];
        let table = build(&[VfctImage {
            bus: 0,
            device: 3,
            function: 0,
            vendor_id: 0x1002,
            device_id: 0x6660,
            subsystem_vendor_id: 0x17aa,
            subsystem_id: 0x3801,
            rom: &rom,
        }]);
        assert_eq!(&table[0..4], b"VFCT");
        assert_eq!(
            u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize,
            table.len()
        );
        assert_eq!(checksum(&table), 0);
        assert_eq!(table.len(), 0x4c + 0x1c + rom.len());
        assert_eq!(
            u32::from_le_bytes(table[0x34..0x38].try_into().unwrap()),
            0x4c
        );
        assert_eq!(
            u32::from_le_bytes(table[0x50..0x54].try_into().unwrap()),
            3,
            "device"
        );
        assert_eq!(
            u16::from_le_bytes(table[0x58..0x5a].try_into().unwrap()),
            0x1002
        );
        assert_eq!(
            u16::from_le_bytes(table[0x5a..0x5c].try_into().unwrap()),
            0x6660
        );
        assert_eq!(
            u32::from_le_bytes(table[0x64..0x68].try_into().unwrap()),
            5,
            "length"
        );
        assert_eq!(&table[0x68..], &rom);
        let found = images(&table);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].bdf, (0, 3, 0));
        assert_eq!(found[0].ids, (0x1002, 0x6660));
        assert_eq!(found[0].rom, rom);
    }

    #[test]
    fn a_truncated_or_foreign_table_yields_what_is_whole() {
        let table = build(&[
            VfctImage {
                bus: 1,
                device: 0,
                function: 0,
                vendor_id: 0x1002,
                device_id: 0x6660,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
                rom: &[1; 8],
            },
            VfctImage {
                bus: 2,
                device: 0,
                function: 0,
                vendor_id: 0x1002,
                device_id: 0x7340,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
                rom: &[2; 8],
            },
        ]);
        assert_eq!(images(&table).len(), 2);
        assert_eq!(images(&table[..table.len() - 1]).len(), 1);
    }

    #[test]
    fn image_offsets_point_at_each_images_bytes() {
        let image = |bus, rom| VfctImage {
            bus,
            device: 0,
            function: 0,
            vendor_id: 0x1002,
            device_id: 0x6660,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            rom,
        };
        let (one, two) = ([1u8; 8], [2u8; 5]);
        let both = [image(1, &one[..]), image(2, &two[..])];
        let table = build(&both);
        let offsets = image_offsets(&both);
        assert_eq!(offsets.len(), 2);
        assert_eq!(&table[offsets[0]..offsets[0] + 8], &[1u8; 8]);
        assert_eq!(&table[offsets[1]..], &[2u8; 5]);
        assert!(images(b"FACP and more bytes than a header has, really").is_empty());
    }
}
