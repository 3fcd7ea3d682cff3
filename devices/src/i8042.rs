//! The bare minimum of an i8042 keyboard controller: the CPU reset line.
//!
//! Linux falls back to pulsing the reset line through the i8042 (command 0xfe on port 0x64)
//! when ACPI reboot fails; there is no keyboard behind it.

use crate::bus::{BusDevice, Effect};

/// Command port offset from the data port 0x60 (the device spans 0x60..=0x64).
const COMMAND: u64 = 4;
/// i8042 command: pulse output line 0, the CPU reset.
const CMD_RESET_CPU: u8 = 0xfe;
/// Status register: nothing to read, input buffer empty.
const STATUS_IDLE: u8 = 0;

/// The reset-only i8042.
#[derive(Debug, Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(STATUS_IDLE);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        (offset == COMMAND && data.first() == Some(&CMD_RESET_CPU)).then_some(Effect::Reboot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_reboots_and_nothing_else_does() {
        let mut kbd = I8042;
        assert_eq!(kbd.write(COMMAND, &[CMD_RESET_CPU]), Some(Effect::Reboot));
        assert_eq!(kbd.write(COMMAND, &[0xad]), None);
        assert_eq!(kbd.write(0, &[CMD_RESET_CPU]), None);
        let mut status = [0xffu8];
        kbd.read(COMMAND, &mut status);
        assert_eq!(status, [0]);
    }
}
