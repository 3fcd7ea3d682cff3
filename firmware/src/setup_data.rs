//! `setup_data` records of the x86 boot protocol: a linked list the zero page points to
//! (`hdr.setup_data`). minivmm writes SETUP_PCI records: a PCI function's option ROM, which
//! the kernel attaches to the device as its platform ROM (`pci_platform_rom`), where radeon
//! and amdgpu look for a VBIOS after the ACPI paths and the ROM BAR.
//!
//! A record is `next` (u64, guest address of the next record or 0), `type` (u32), `len`
//! (u32, bytes after this 16-byte header), then the payload. SETUP_PCI's payload: vendor
//! and device (u16 each), 4 bytes of padding, the ROM length, segment, bus, device and
//! function (u64 each), then the ROM.

/// `setup_data.type` of a PCI option ROM (`SETUP_PCI` in the kernel's
/// arch/x86/include/uapi/asm/bootparam.h; 5 would be SETUP_APPLE_PROPERTIES).
pub const SETUP_PCI: u32 = 3;
/// Bytes of the generic header.
pub const HEADER_SIZE: usize = 16;
/// Offset of the ROM in a SETUP_PCI record.
pub const PCI_ROM_OFFSET: usize = 64;

/// A PCI option ROM for one guest function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciRom<'a> {
    /// PCI vendor ID (the kernel matches it).
    pub vendor: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// Guest bus.
    pub bus: u8,
    /// Guest device (slot).
    pub device: u8,
    /// Guest function.
    pub function: u8,
    /// The image.
    pub rom: &'a [u8],
}

/// One SETUP_PCI record whose `next` is `next` (0 ends the list).
pub fn pci_record(rom: &PciRom, next: u64) -> Vec<u8> {
    let mut record = Vec::with_capacity(PCI_ROM_OFFSET + rom.rom.len());
    record.extend_from_slice(&next.to_le_bytes());
    record.extend_from_slice(&SETUP_PCI.to_le_bytes());
    let len = (PCI_ROM_OFFSET - HEADER_SIZE + rom.rom.len()) as u32;
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(&rom.vendor.to_le_bytes());
    record.extend_from_slice(&rom.device_id.to_le_bytes());
    record.extend_from_slice(&[0u8; 4]);
    record.extend_from_slice(&(rom.rom.len() as u64).to_le_bytes());
    for field in [0, rom.bus, rom.device, rom.function] {
        record.extend_from_slice(&u64::from(field).to_le_bytes());
    }
    record.extend_from_slice(rom.rom);
    record
}

/// Lay out `roms` as a list starting at guest address `start`, each record 8-byte aligned.
/// Returns the bytes to write at `start`, and the address of the first record (what the
/// zero page's `setup_data` gets; 0 for none).
pub fn pci_list(roms: &[PciRom], start: u64) -> (Vec<u8>, u64) {
    let mut bytes = Vec::new();
    for (i, rom) in roms.iter().enumerate() {
        let here = bytes.len();
        let size = (PCI_ROM_OFFSET + rom.rom.len()).next_multiple_of(8);
        let next = if i + 1 < roms.len() {
            start + (here + size) as u64
        } else {
            0
        };
        bytes.extend(pci_record(rom, next));
        bytes.resize(here + size, 0);
    }
    let first = if roms.is_empty() { 0 } else { start };
    (bytes, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn a_pci_record_has_the_kernels_layout() {
        let rom = [0x55, 0xaa, 9];
        let record = pci_record(
            &PciRom {
                vendor: 0x1002,
                device_id: 0x5159,
                bus: 0,
                device: 4,
                function: 1,
                rom: &rom,
            },
            0,
        );
        assert_eq!(u64_at(&record, 0), 0, "next");
        assert_eq!(&record[8..12], &[3, 0, 0, 0], "type SETUP_PCI is 3");
        assert_eq!(
            u32::from_le_bytes(record[12..16].try_into().unwrap()) as usize,
            record.len() - HEADER_SIZE
        );
        assert_eq!(
            u16::from_le_bytes(record[16..18].try_into().unwrap()),
            0x1002
        );
        assert_eq!(
            u16::from_le_bytes(record[18..20].try_into().unwrap()),
            0x5159
        );
        assert_eq!(u64_at(&record, 24), 3, "pcilen");
        assert_eq!(u64_at(&record, 32), 0, "segment");
        assert_eq!(u64_at(&record, 40), 0, "bus");
        assert_eq!(u64_at(&record, 48), 4, "device");
        assert_eq!(u64_at(&record, 56), 1, "function");
        assert_eq!(&record[PCI_ROM_OFFSET..], &rom);
    }

    #[test]
    fn records_chain_by_guest_address() {
        let roms = [
            PciRom {
                vendor: 1,
                device_id: 2,
                bus: 0,
                device: 3,
                function: 0,
                rom: &[1; 5],
            },
            PciRom {
                vendor: 1,
                device_id: 2,
                bus: 0,
                device: 4,
                function: 0,
                rom: &[2; 5],
            },
        ];
        let (bytes, first) = pci_list(&roms, 0x3_0000);
        assert_eq!(first, 0x3_0000);
        let second = u64_at(&bytes, 0);
        assert_eq!(second, 0x3_0000 + 72, "64 + 5 rounded up to 8");
        assert_eq!(u64_at(&bytes, 72), 0, "the last record ends the list");
        assert_eq!(u64_at(&bytes, 72 + 48), 4);
        assert_eq!(pci_list(&[], 0x3_0000), (Vec::new(), 0));
    }
}
