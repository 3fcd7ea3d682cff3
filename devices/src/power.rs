//! The ACPI hardware-reduced sleep control, sleep status and reset registers.
//!
//! The FADT points the guest here: a write of `SLP_EN | SLP_TYP(5)` to sleep control is
//! soft-off (S5), and the reset value written to the reset register is a reboot.

use minivmm_firmware::layout;

use crate::bus::{BusDevice, Effect};

/// SLP_EN: the guest commits the sleep state in SLP_TYP.
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP occupies bits 2..=4 of the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
/// Mask of SLP_TYP after shifting.
const SLP_TYP_MASK: u8 = 0x7;
/// Register offsets from the block's base port (the sleep control register).
const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = (layout::ACPI_SLEEP_STATUS_PORT - layout::ACPI_SLEEP_CONTROL_PORT) as u64;
const RESET: u64 = (layout::ACPI_RESET_PORT - layout::ACPI_SLEEP_CONTROL_PORT) as u64;

/// Number of ports in the block.
pub const PORT_COUNT: u64 = RESET + 1;

/// The power-management register block.
#[derive(Debug, Default)]
pub struct AcpiPower;

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status reads as "not waking"; nothing else has state worth reading.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        let value = *data.first()?;
        match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == layout::ACPI_S5_SLEEP_TYPE {
                    return Some(Effect::PowerOff);
                }
                log::warn!("guest asked for unsupported ACPI sleep type {sleep_type}; ignored");
                None
            }
            RESET if value == layout::ACPI_RESET_VALUE => Some(Effect::Reboot),
            SLEEP_STATUS | SLEEP_CONTROL | RESET => None,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut pm = AcpiPower;
        assert_eq!(
            pm.write(SLEEP_CONTROL, &[(5 << 2) | SLP_EN]),
            Some(Effect::PowerOff)
        );
    }

    #[test]
    fn other_sleep_states_and_missing_slp_en_are_ignored() {
        let mut pm = AcpiPower;
        assert_eq!(pm.write(SLEEP_CONTROL, &[5 << 2]), None);
        assert_eq!(pm.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]), None);
        assert_eq!(pm.write(SLEEP_STATUS, &[0xff]), None);
    }

    #[test]
    fn reset_value_reboots() {
        let mut pm = AcpiPower;
        assert_eq!(
            pm.write(RESET, &[layout::ACPI_RESET_VALUE]),
            Some(Effect::Reboot)
        );
        assert_eq!(pm.write(RESET, &[0x42]), None);
        assert_eq!(pm.write(RESET, &[]), None);
    }
}
