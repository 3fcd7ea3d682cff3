//! The one piece of BIOS code minivmm has: at the real-mode reset vector (F000:FFF0, see
//! [`layout::RESET_VECTOR`]), a reset request through the ACPI reset register.
//!
//! Why it is needed: with hardware-reduced ACPI, Linux's x86 reboot code
//! (arch/x86/kernel/reboot.c) prefers an EFI reset (`efi_reboot_required()` is true for
//! hardware-reduced ACPI), and without EFI that does nothing and falls through to
//! `BOOT_BIOS`: `machine_real_restart()` drops to real mode and jumps to F000:FFF0, where a
//! PC's firmware would reset the machine. The ACPI reset register and the i8042 are never
//! tried. These nine bytes do what that firmware would, so `reboot` in the guest reaches
//! minivmm as a reset request.

use crate::layout;

/// The code: `mov dx, ACPI_RESET_PORT; mov al, ACPI_RESET_VALUE; out dx, al; hlt; jmp hlt`.
pub fn code() -> [u8; 9] {
    let [port_low, port_high] = layout::ACPI_RESET_PORT.to_le_bytes();
    [
        0xba,
        port_low,
        port_high, // mov dx, port
        0xb0,
        layout::ACPI_RESET_VALUE, // mov al, value
        0xee,                     // out dx, al
        0xf4,                     // hlt
        0xeb,
        0xfd, // jmp back to hlt
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_reset_value_to_the_reset_port_and_stays_put() {
        let code = code();
        assert_eq!(code[0], 0xba, "mov dx, imm16");
        assert_eq!(
            u16::from_le_bytes([code[1], code[2]]),
            layout::ACPI_RESET_PORT
        );
        assert_eq!(code[3..5], [0xb0, layout::ACPI_RESET_VALUE]);
        assert_eq!(code[5], 0xee, "out dx, al");
        // jmp rel8 -3 lands on the hlt before it.
        assert_eq!(code[6..], [0xf4, 0xeb, 0xfd]);
        assert!(layout::RESET_VECTOR + code.len() as u64 <= layout::HIGH_RAM_START);
    }
}
