//! The test exit device (`--exit-device port=PORT`), for guests whose result is the run's
//! result (CI jobs): a write of value V to the port ends the run, and minivmm exits with
//! status V. The width of the write (1, 2 or 4 bytes, so the device takes 4 ports) does not
//! matter; a value above 255
//! counts as 255, so a failure never wraps to success. Reads return zero. QEMU's
//! isa-debug-exit does the same job but exits with `(V << 1) | 1`; here the guest's own
//! number is the status, so `exit 3` in the guest is status 3.

use crate::bus::{BusDevice, Effect};

/// The ports it takes: a write of up to 4 bytes at the first.
pub const PORT_COUNT: u64 = 4;

/// The exit port.
#[derive(Debug, Default)]
pub struct ExitDevice;

/// The status a written `value` ends the run with.
pub fn status_of(data: &[u8]) -> u8 {
    let value = data
        .iter()
        .take(4)
        .rev()
        .fold(0u32, |v, b| (v << 8) | u32::from(*b));
    u8::try_from(value).unwrap_or(u8::MAX)
}

impl BusDevice for ExitDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        (offset == 0).then(|| Effect::Exit(status_of(data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_value_is_the_exit_status_whatever_the_width() {
        let mut device = ExitDevice;
        assert_eq!(device.write(0, &[3]), Some(Effect::Exit(3)));
        assert_eq!(device.write(0, &[0]), Some(Effect::Exit(0)));
        assert_eq!(device.write(0, &7u16.to_le_bytes()), Some(Effect::Exit(7)));
        assert_eq!(
            device.write(0, &200u32.to_le_bytes()),
            Some(Effect::Exit(200))
        );
    }

    #[test]
    fn a_value_above_255_never_wraps_to_success() {
        let mut device = ExitDevice;
        assert_eq!(
            device.write(0, &256u16.to_le_bytes()),
            Some(Effect::Exit(255))
        );
        assert_eq!(
            device.write(0, &0x100u32.to_le_bytes()),
            Some(Effect::Exit(255))
        );
        let mut data = [0xffu8; 2];
        device.read(0, &mut data);
        assert_eq!(data, [0, 0]);
        assert_eq!(
            device.write(1, &[3]),
            None,
            "only the first port ends the run"
        );
    }
}
