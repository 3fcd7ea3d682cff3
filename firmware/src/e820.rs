//! The e820 memory map the kernel reads from the zero page.

use crate::layout::{self, GuestLayout};

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved: firmware tables, ECAM, anything the kernel must not use as RAM.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

impl E820Entry {
    fn ram(addr: u64, end: u64) -> Self {
        E820Entry {
            addr,
            size: end - addr,
            kind: E820_RAM,
        }
    }

    fn reserved(addr: u64, size: u64) -> Self {
        E820Entry {
            addr,
            size,
            kind: E820_RESERVED,
        }
    }
}

/// Build the e820 map for `guest`: low RAM below the EBDA, the ACPI area reserved, RAM from
/// 1 MiB to the hole, ECAM reserved (Linux only trusts MCFG when e820 reserves it), and RAM
/// above 4 GiB.
pub fn e820_map(guest: &GuestLayout) -> Vec<E820Entry> {
    e820_map_reserving(guest, 0)
}

/// [`e820_map`] with the first `reserved` bytes (rounded up to pages) of the firmware-data
/// area reserved: they hold a VFCT table the kernel must not reuse as RAM.
pub fn e820_map_reserving(guest: &GuestLayout, reserved: u64) -> Vec<E820Entry> {
    let low_end = guest.low_ram_end();
    let low_ram_end = layout::EBDA_START.min(low_end);
    // The reservation ends with low RAM: a guest too small for the table still gets a map
    // of only the RAM it has.
    let reserved_end = reserved
        .checked_next_multiple_of(0x1000)
        .and_then(|r| layout::FIRMWARE_DATA_START.checked_add(r))
        .map_or(low_ram_end, |end| end.min(low_ram_end));
    let mut map = if reserved_end > layout::FIRMWARE_DATA_START {
        let start = layout::FIRMWARE_DATA_START;
        let mut low = vec![
            E820Entry::ram(layout::LOW_RAM_START, start),
            E820Entry::reserved(start, reserved_end - start),
        ];
        if low_ram_end > reserved_end {
            low.push(E820Entry::ram(reserved_end, low_ram_end));
        }
        low
    } else {
        vec![E820Entry::ram(layout::LOW_RAM_START, low_ram_end)]
    };
    // The ACPI tables and the reset vector's stub: the rest of the first MiB.
    map.push(E820Entry::reserved(
        layout::ACPI_START,
        layout::HIGH_RAM_START - layout::ACPI_START,
    ));
    if low_end > layout::HIGH_RAM_START {
        map.push(E820Entry::ram(layout::HIGH_RAM_START, low_end));
    }
    map.push(E820Entry::reserved(
        layout::PCI_ECAM_START,
        guest.pci.ecam_size(),
    ));
    map.extend(
        guest
            .ram
            .iter()
            .skip(1)
            .map(|r| E820Entry::ram(r.start, r.end())),
    );
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vfct_table_is_carved_out_of_low_ram() {
        let guest = GuestLayout::new(256 << 20, 46).unwrap();
        let map = e820_map_reserving(&guest, 0x1_0010);
        assert_eq!(
            &map[..3],
            &[
                E820Entry::ram(0, 0x3_0000),
                E820Entry::reserved(0x3_0000, 0x1_1000),
                E820Entry::ram(0x4_1000, 0x9_fc00),
            ]
        );
        assert_eq!(&map[3..], &e820_map(&guest)[1..]);
    }

    #[test]
    fn a_guest_smaller_than_the_reservation_gets_only_the_ram_it_has() {
        // Found by the firmware_tables fuzz target: with less low RAM than the firmware-data
        // area plus the reservation, the map listed RAM the guest lacks, and the entry after
        // the reservation underflowed.
        for pages in [1, 0x2f, 0x30, 0x31, 0x40, 0x41] {
            let guest = GuestLayout::new(pages << 12, 46).unwrap();
            let map = e820_map_reserving(&guest, 0x1_0000);
            for entry in map.iter().filter(|e| e.kind == E820_RAM) {
                assert!(entry.size > 0, "{pages} pages: {entry:x?}");
                assert!(
                    entry.addr + entry.size <= pages << 12,
                    "{pages} pages: {entry:x?}"
                );
            }
        }
        let guest = GuestLayout::new(0x3_8000, 46).unwrap();
        assert_eq!(
            &e820_map_reserving(&guest, 0x1_0000)[..3],
            &[
                E820Entry::ram(0, 0x3_0000),
                E820Entry::reserved(0x3_0000, 0x8000),
                E820Entry::reserved(
                    layout::ACPI_START,
                    layout::HIGH_RAM_START - layout::ACPI_START
                ),
            ]
        );
        let guest = GuestLayout::new(256 << 20, 46).unwrap();
        assert_eq!(
            &e820_map_reserving(&guest, u64::MAX)[..3],
            &[
                E820Entry::ram(0, 0x3_0000),
                E820Entry::reserved(0x3_0000, 0x9_fc00 - 0x3_0000),
                E820Entry::reserved(
                    layout::ACPI_START,
                    layout::HIGH_RAM_START - layout::ACPI_START
                ),
            ],
            "a reservation past the end of low RAM ends there"
        );
    }

    #[test]
    fn small_guest_map() {
        let guest = GuestLayout::new(256 << 20, 46).unwrap();
        let map = e820_map(&guest);
        assert_eq!(
            map,
            vec![
                E820Entry::ram(0, 0x9_fc00),
                E820Entry::reserved(0xe_0000, 0x2_0000),
                E820Entry::ram(0x10_0000, 256 << 20),
                E820Entry::reserved(0xe000_0000, 0x10_0000),
            ]
        );
    }

    #[test]
    fn large_guest_has_ram_above_4g() {
        let guest = GuestLayout::new(6 << 30, 46).unwrap();
        let map = e820_map(&guest);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // All RAM is described except the legacy hole between the EBDA and 1 MiB.
        assert_eq!(ram, (6 << 30) - (0x10_0000 - 0x9_fc00));
        let last = map.last().unwrap();
        assert_eq!(last.addr, 1 << 32);
        assert_eq!(last.size, (6 << 30) - 0xc000_0000);
        assert!(map
            .iter()
            .all(|e| e.kind != E820_RAM || e.addr + e.size <= 0xc000_0000 || e.addr >= 1 << 32));
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        let map = e820_map(&GuestLayout::new(5 << 30, 46).unwrap());
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:x?}");
        }
    }
}
