//! The guest physical address map and the I/O port map, in one place.
//!
//! ```text
//! 0x0000_0000  ┌ real-mode IVT/BDA (RAM, untouched)
//! 0x0000_0500  │ boot GDT; 0x540 boot IDT
//! 0x0000_7000  │ zero page (boot_params)
//! 0x0000_9000  │ boot page tables: PML4, PDPT, 4 × PD (identity map of 4 GiB)
//! 0x0002_0000  │ kernel command line
//! 0x0009_fc00  ├ EBDA (reserved)            ← end of low RAM
//! 0x000e_0000  ├ ACPI tables, RSDP first    (reserved; the kernel scans here for "RSD PTR ")
//! 0x0010_0000  ├ kernel (bzImage protected-mode part), then RAM up to the hole
//!       …      │ initramfs at the top of RAM below the hole
//! 0xc000_0000  ├ 32-bit PCI MMIO window (non-prefetchable BARs)
//! 0xe000_0000  ├ PCI ECAM (1 MiB per bus in use, at most 32 buses)  (reserved in e820)
//! 0xfec0_0000  ├ IOAPIC
//! 0xfee0_0000  ├ LAPIC
//! 0x1_0000_0000├ RAM above 4 GiB, when the guest has more than fits below the hole
//!       …      ├ 64-bit prefetchable PCI window, 1 GiB aligned, above all RAM, ending
//!              │ below the guest's physical address limit (CPUID 0x8000_0008)
//! ```

use std::ops::Range;

/// Real-mode IVT and BIOS data area: left as RAM, Linux reads nothing from it we must fill.
pub const LOW_RAM_START: u64 = 0;
/// Start of the Extended BIOS Data Area; low RAM ends here (the classic 639 KiB).
pub const EBDA_START: u64 = 0x9_fc00;
/// First byte after the legacy VGA/BIOS area; RAM resumes here.
pub const HIGH_RAM_START: u64 = 0x10_0000;

/// Boot-time GDT: the boot protocol's __BOOT_CS (0x10) and __BOOT_DS (0x18), and a TSS (0x20);
/// eight slots at most, so it ends before the IDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot-time IDT: empty; interrupts stay disabled until the kernel installs its own.
pub const BOOT_IDT_START: u64 = 0x540;
/// The zero page (`struct boot_params`) handed to the kernel in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Level-4 page table of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (2 MiB pages) mapping 0..4 GiB.
pub const PDE_START: u64 = 0xb000;
/// Number of page directories: one per GiB of the identity map.
pub const PDE_COUNT: u64 = 4;
/// The kernel command line, NUL terminated.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Room reserved for the command line (the kernel's own limit, `cmdline_size`, is smaller).
pub const CMDLINE_MAX_SIZE: u64 = 0x1_0000;

/// ACPI tables live in the BIOS area, where the kernel scans for the RSDP.
pub const ACPI_START: u64 = 0xe_0000;
/// Firmware data handed to the kernel besides ACPI's fixed tables: a VFCT table (reserved in
/// e820) and SETUP_PCI records (RAM the kernel keeps), packed from here.
pub const FIRMWARE_DATA_START: u64 = 0x3_0000;
/// End of the firmware-data area (below the EBDA).
pub const FIRMWARE_DATA_END: u64 = 0x9_f000;
/// Real mode's reset vector, F000:FFF0: Linux jumps there to reboot through the BIOS, and
/// finds [`crate::reset_stub`]. The last 16 bytes of the first MiB.
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// Size of the ACPI area (up to the reset vector).
pub const ACPI_SIZE: u64 = RESET_VECTOR - ACPI_START;

/// Start of the 32-bit hole: RAM below 4 GiB ends here when the guest is larger.
pub const MEM_32BIT_HOLE_START: u64 = 0xc000_0000;
/// Start of the 32-bit PCI MMIO window (BARs that must sit below 4 GiB).
pub const PCI_MMIO32_START: u64 = MEM_32BIT_HOLE_START;
/// Size of the 32-bit PCI MMIO window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// BARs of minivmm's emulated PCI devices (virtio), fixed at the top of the 32-bit PCI
/// window; passed-through BARs are placed in the rest of it.
pub const EMULATED_MMIO_SIZE: u64 = 0x10_0000;
/// Start of the emulated devices' BARs.
pub const EMULATED_MMIO_START: u64 = PCI_MMIO32_START + PCI_MMIO32_SIZE - EMULATED_MMIO_SIZE;
/// PCI Express enhanced configuration space (ECAM / MMCONFIG).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Buses ECAM can reach: bus 0 and one behind each root port, and bus 0 has 32 device
/// numbers (one taken by the host bridge). The MCFG table and the root bridge's `_CRS` name
/// only the buses in use ([`PciLayout::buses`]): Linux takes the last MCFG bus as the last
/// bus to probe for peer host bridges, 32 configuration reads per bus, and with 256 buses
/// that was 8,160 port exits during every boot, for buses that cannot exist.
pub const PCI_ECAM_MAX_BUSES: u64 = 32;
/// Size of the ECAM region minivmm traps: 32 devices × 8 functions × 4 KiB per bus.
pub const PCI_ECAM_SIZE: u64 = PCI_ECAM_MAX_BUSES << 20;
/// IOAPIC MMIO base (fixed by convention and by the in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// LAPIC MMIO base (architectural default of IA32_APIC_BASE).
pub const LAPIC_START: u64 = 0xfee0_0000;
/// First address above the 32-bit hole.
pub const MEM_4G: u64 = 0x1_0000_0000;
/// Alignment of the 64-bit PCI window: large BARs are naturally aligned to their size.
pub const PCI_MMIO64_ALIGN: u64 = 1 << 30;
/// Size of the 64-bit PCI window before devices are placed (the PCI tree then makes it as
/// large as its BARs need, never past the address limit).
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;

/// COM1, the guest console.
pub const COM1_PORT: u16 = 0x3f8;
/// Legacy ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;
/// The console UART: a second 16550 whose registers are MMIO, one page, so the VMM can
/// back reads with a read-only memory slot and the guest polls its line status without an
/// exit. Linux names it `console=uart8250,mmio,0xfe000000`.
pub const CONSOLE_UART_START: u64 = 0xfe00_0000;
/// One page: the size of the read-only slot behind it.
pub const CONSOLE_UART_SIZE: u64 = 0x1000;
/// ISA IRQ of the console UART (COM2's, unused otherwise).
pub const CONSOLE_UART_IRQ: u32 = 3;
/// i8042 command port: a write of 0xfe pulses the CPU reset line (one of Linux's reboot paths).
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// ACPI hardware-reduced sleep control register (SLP_TYPx | SLP_EN → poweroff).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI hardware-reduced sleep status register.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register; writing [`ACPI_RESET_VALUE`] reboots.
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to [`ACPI_RESET_PORT`] to reboot.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// The `_S5_` sleep type minivmm advertises for soft-off.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// PCI configuration mechanism #1: address register.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// PCI configuration mechanism #1: data window (4 bytes).
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
/// Guest I/O port window for PCI I/O BARs.
pub const PCI_IO_START: u16 = 0xc000;
/// Size of the PCI I/O window.
pub const PCI_IO_SIZE: u16 = 0x4000;

/// Number of IOAPIC pins (KVM's in-kernel IOAPIC has 24).
pub const IOAPIC_PINS: u32 = 24;
/// First GSI handed to PCI INTx (the four pins are swizzled over 16..=19).
pub const PCI_INTX_GSI_BASE: u32 = 16;

// The fixed regions must not overlap; checked when the crate compiles.
const _: () = assert!(BOOT_GDT_START + 8 * 8 <= BOOT_IDT_START);
const _: () = assert!(BOOT_IDT_START + 8 <= ZERO_PAGE_START);
const _: () = assert!(ZERO_PAGE_START < PML4_START);
const _: () = assert!(PDE_START + PDE_COUNT * 0x1000 <= CMDLINE_START);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE <= EBDA_START);
const _: () = assert!(ACPI_START + ACPI_SIZE <= HIGH_RAM_START);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE <= FIRMWARE_DATA_START);
const _: () = assert!(FIRMWARE_DATA_END <= EBDA_START);
const _: () = assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_ECAM_START);
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= IOAPIC_START);

/// One region of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest physical start.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

impl RamRegion {
    /// First address after the region.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// The PCI tree's part of the address map, final once the devices are placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciLayout {
    /// Buses in use, 0 to `buses - 1`: what MCFG, the e820 map and PCI0's `_CRS` cover.
    pub buses: u8,
    /// The 64-bit prefetchable window, when the address width leaves room above RAM.
    pub mmio64: Option<Range<u64>>,
}

impl PciLayout {
    /// Bytes of ECAM the buses in use take.
    pub fn ecam_size(&self) -> u64 {
        u64::from(self.buses.max(1)) << 20
    }
}

/// Why a guest cannot be laid out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Zero, not page aligned, or past the end of the address space.
    #[error("{0} bytes is not a non-zero multiple of 4 KiB below the top of the address space")]
    BadSize(u64),
    /// RAM reaching past the guest's physical address width.
    #[error("guest RAM would end at {end:#x}, past the {bits}-bit physical address width of this host: use less --memory")]
    AboveLimit {
        /// First address after RAM.
        end: u64,
        /// The address width.
        bits: u8,
    },
}

/// The address map of one guest, derived from its RAM size and physical address width.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// RAM regions, ascending: below the 32-bit hole, then above 4 GiB.
    pub ram: Vec<RamRegion>,
    /// Where 64-bit prefetchable BARs may start: above RAM, 1 GiB aligned.
    pub mmio64_start: u64,
    /// The guest's physical address width (CPUID 0x8000_0008): nothing reaches
    /// `1 << address_bits`.
    pub address_bits: u8,
    /// The PCI tree: buses and the 64-bit window.
    pub pci: PciLayout,
}

impl GuestLayout {
    /// Lay out `ram_size` bytes of RAM around the 32-bit hole, in a guest whose physical
    /// addresses have `address_bits` bits. Until devices are placed, the PCI tree is bus 0
    /// and a 64 GiB window above RAM (cut at the address limit).
    pub fn new(ram_size: u64, address_bits: u8) -> Result<GuestLayout, LayoutError> {
        if ram_size == 0 || !ram_size.is_multiple_of(4096) {
            return Err(LayoutError::BadSize(ram_size));
        }
        let low = ram_size.min(MEM_32BIT_HOLE_START);
        let mut ram = vec![RamRegion {
            start: 0,
            size: low,
        }];
        let high = ram_size - low;
        if high > 0 {
            MEM_4G
                .checked_add(high)
                .ok_or(LayoutError::BadSize(ram_size))?;
            ram.push(RamRegion {
                start: MEM_4G,
                size: high,
            });
        }
        let top = ram.last().map_or(0, RamRegion::end).max(MEM_4G);
        let limit = 1u64
            .checked_shl(u32::from(address_bits))
            .unwrap_or(u64::MAX);
        let ram_end = ram.last().map_or(0, RamRegion::end);
        if ram_end > limit {
            return Err(LayoutError::AboveLimit {
                end: ram_end,
                bits: address_bits,
            });
        }
        let mmio64_start = top
            .checked_next_multiple_of(PCI_MMIO64_ALIGN)
            .ok_or(LayoutError::BadSize(ram_size))?;
        let mmio64_end = mmio64_start.saturating_add(PCI_MMIO64_SIZE).min(limit);
        Ok(GuestLayout {
            ram,
            mmio64_start,
            address_bits,
            pci: PciLayout {
                buses: 1,
                mmio64: (mmio64_end > mmio64_start).then_some(mmio64_start..mmio64_end),
            },
        })
    }

    /// Total RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram.iter().map(|r| r.size).sum()
    }

    /// End of RAM below the 32-bit hole (where the initramfs goes at the top).
    pub fn low_ram_end(&self) -> u64 {
        self.ram.first().map_or(0, RamRegion::end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region_below_the_hole() {
        let layout = GuestLayout::new(256 << 20, 46).unwrap();
        assert_eq!(
            layout.ram,
            vec![RamRegion {
                start: 0,
                size: 256 << 20
            }]
        );
        assert_eq!(layout.mmio64_start, MEM_4G);
        assert_eq!(layout.pci.mmio64, Some(MEM_4G..MEM_4G + (64 << 30)));
        assert_eq!(layout.pci.buses, 1);
        assert_eq!(layout.low_ram_end(), 256 << 20);
    }

    #[test]
    fn large_guest_is_split_around_the_hole() {
        let layout = GuestLayout::new(4 << 30, 46).unwrap();
        assert_eq!(layout.ram.len(), 2);
        assert_eq!(layout.ram[0].end(), MEM_32BIT_HOLE_START);
        assert_eq!(layout.ram[1].start, MEM_4G);
        assert_eq!(layout.ram_size(), 4 << 30);
        assert_eq!(layout.ram[1].end(), MEM_4G + (1 << 30));
        assert_eq!(layout.mmio64_start, 5 << 30);
    }

    #[test]
    fn zero_and_unaligned_sizes_are_refused() {
        assert_eq!(GuestLayout::new(0, 46), Err(LayoutError::BadSize(0)));
        assert_eq!(GuestLayout::new(4097, 46), Err(LayoutError::BadSize(4097)));
        assert!(GuestLayout::new(!0xfff, 64).is_err());
    }

    #[test]
    fn ram_and_the_64_bit_window_stay_below_the_address_limit() {
        // 36 bits: 64 GiB of addresses; the window ends there.
        let layout = GuestLayout::new(8 << 30, 36).unwrap();
        assert_eq!(
            layout.pci.mmio64,
            Some((9 << 30)..(64 << 30)),
            "3 GiB low, 5 GiB above 4 GiB"
        );
        assert_eq!(
            GuestLayout::new(64 << 30, 36),
            Err(LayoutError::AboveLimit {
                end: (64 << 30) + (1 << 30),
                bits: 36
            })
        );
        // RAM right up to the limit leaves no 64-bit window.
        let layout = GuestLayout::new(63 << 30, 36).unwrap();
        assert_eq!(layout.pci.mmio64, None);
    }
}
