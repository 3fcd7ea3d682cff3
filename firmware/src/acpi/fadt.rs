//! FADT ("FACP"): a hardware-reduced ACPI platform.
//!
//! Hardware-reduced ACPI needs no PM timer, GPE blocks or SCI: power-off goes through the sleep
//! control register and reboot through the reset register, both small I/O ports the VMM traps.

use acpi_tables::{
    fadt::{FADTBuilder, Flags, FADT},
    gas::{AccessSize, AddressSpace, GAS},
};

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;

/// IA-PC boot architecture flag: VGA is not present (no legacy VGA probing).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IA-PC boot architecture flag: there is no CMOS RTC.
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// An 8-bit I/O port register.
fn io_port(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// Build the FADT pointing at the DSDT at `dsdt_addr`.
pub fn build(dsdt_addr: u64) -> FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = io_port(layout::ACPI_RESET_PORT);
    fadt.reset_value = layout::ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_port(layout::ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port(layout::ACPI_SLEEP_STATUS_PORT);
    fadt.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.finalize()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{blob, find};

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn hardware_reduced_with_reset_and_sleep_registers() {
        let blob = blob(1);
        let fadt = find(&blob, b"FACP");
        assert_eq!(fadt.len(), 276, "ACPI 6.x FADT");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // RESET_REG: system I/O, 8 bits, at the reset port; then RESET_VALUE.
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!(u32_at(fadt, 120), 0x602);
        assert_eq!(fadt[128], 1);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(fadt[244], 1);
        assert_eq!(u32_at(fadt, 248), 0x600);
        assert_eq!(u32_at(fadt, 260), 0x601);
    }
}
