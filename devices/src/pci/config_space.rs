//! The configuration-space shadow: `registers` plus `writable_bits`.
//!
//! Reads return `registers`; a write changes only the bits set in `writable_bits`, so
//! read-only identity fields stay what the device model put there.

/// Dwords of PCI Express configuration space (4 KiB).
pub const CONFIG_DWORDS: usize = 1024;

/// Offsets of the type-0 header fields minivmm touches.
pub mod reg {
    /// Vendor ID (low 16 bits) and Device ID.
    pub const VENDOR_DEVICE: u16 = 0x00;
    /// Command (low 16 bits) and Status.
    pub const COMMAND_STATUS: u16 = 0x04;
    /// Revision, prog-if, subclass, class.
    pub const CLASS_REVISION: u16 = 0x08;
    /// Cache line, latency timer, header type, BIST.
    pub const HEADER_TYPE: u16 = 0x0c;
    /// Subsystem vendor and subsystem ID.
    pub const SUBSYSTEM: u16 = 0x2c;
    /// Interrupt line, interrupt pin, min grant, max latency.
    pub const INTERRUPT: u16 = 0x3c;
}

/// The shadow of one function's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    registers: Box<[u32; CONFIG_DWORDS]>,
    writable_bits: Box<[u32; CONFIG_DWORDS]>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("id", &format_args!("{:#010x}", self.read_dword(0)))
            .finish_non_exhaustive()
    }
}

impl Default for ConfigSpace {
    fn default() -> Self {
        ConfigSpace {
            registers: Box::new([0; CONFIG_DWORDS]),
            writable_bits: Box::new([0; CONFIG_DWORDS]),
        }
    }
}

fn index(offset: u16) -> usize {
    usize::from(offset / 4) % CONFIG_DWORDS
}

impl ConfigSpace {
    /// An all-zero, all-read-only configuration space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set a whole dword and which of its bits the guest may change.
    pub fn init_dword(&mut self, offset: u16, value: u32, writable: u32) {
        self.set_dword(offset, value);
        if let Some(bits) = self.writable_bits.get_mut(index(offset)) {
            *bits = writable;
        }
    }

    /// The dword containing `offset`.
    pub fn read_dword(&self, offset: u16) -> u32 {
        self.registers.get(index(offset)).copied().unwrap_or(!0)
    }

    /// Replace a dword regardless of its writable bits (device-model side).
    pub fn set_dword(&mut self, offset: u16, value: u32) {
        if let Some(register) = self.registers.get_mut(index(offset)) {
            *register = value;
        }
    }

    fn writable_bits(&self, offset: u16) -> u32 {
        self.writable_bits.get(index(offset)).copied().unwrap_or(0)
    }

    /// Guest read of 1, 2 or 4 bytes within one dword.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        let shift = u32::from(offset % 4) * 8;
        let bytes = (self.read_dword(offset) >> shift).to_le_bytes();
        for (out, b) in data.iter_mut().zip(bytes) {
            *out = b;
        }
    }

    /// Guest write of 1, 2 or 4 bytes within one dword, masked by the writable bits.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        let shift = u32::from(offset % 4) * 8;
        let mut value = [0u8; 4];
        for (v, b) in value.iter_mut().zip(data) {
            *v = *b;
        }
        let len_mask = match data.len() {
            1 => 0xff,
            2 => 0xffff,
            4 => 0xffff_ffff,
            _ => return,
        };
        let mask = (len_mask << shift) & self.writable_bits(offset);
        let new = u32::from_le_bytes(value) << shift;
        let old = self.read_dword(offset);
        self.set_dword(offset, (old & !mask) | (new & mask));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_slice_the_dword() {
        let mut cs = ConfigSpace::new();
        cs.init_dword(0, 0x1234_5678, 0);
        let mut b = [0u8; 1];
        cs.read(3, &mut b);
        assert_eq!(b, [0x12]);
        let mut w = [0u8; 2];
        cs.read(2, &mut w);
        assert_eq!(w, [0x34, 0x12]);
    }

    #[test]
    fn writes_only_touch_writable_bits() {
        let mut cs = ConfigSpace::new();
        cs.init_dword(4, 0x0010_0000, 0x0000_0547);
        cs.write(4, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(cs.read_dword(4), 0x0010_0547);
        cs.write(5, &[0x00]);
        assert_eq!(cs.read_dword(4), 0x0010_0047);
    }

    #[test]
    fn read_only_fields_ignore_writes() {
        let mut cs = ConfigSpace::new();
        cs.init_dword(0, 0x11e8_1234, 0);
        cs.write(0, &[0, 0, 0, 0]);
        assert_eq!(cs.read_dword(0), 0x11e8_1234);
    }
}
