//! PCI configuration mechanism #1: the address latch at 0xCF8 and the data window at 0xCFC.

use std::sync::{Arc, Mutex};

use super::{is_valid_access, DevFn, PciRoot};
use crate::bus::{BusDevice, Effect};

/// Ports from 0xCF8: four of address, four of data.
pub const PORT_COUNT: u64 = 8;
/// Bit 31 of the address: configuration cycles enabled.
const ENABLE: u32 = 1 << 31;
/// Offset of the data window from 0xCF8.
const DATA: u64 = 4;

/// Decoded fields of a CONFIG_ADDRESS value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAddress {
    /// Bus number.
    pub bus: u8,
    /// Device and function.
    pub devfn: DevFn,
    /// Dword-aligned register offset.
    pub register: u16,
}

impl ConfigAddress {
    /// Decode a latched address; `None` when the enable bit is clear.
    pub fn decode(value: u32) -> Option<Self> {
        (value & ENABLE != 0).then_some(ConfigAddress {
            bus: (value >> 16) as u8,
            devfn: DevFn((value >> 8) as u8),
            register: (value & 0xfc) as u16,
        })
    }
}

/// The 0xCF8..0xD00 port block.
#[derive(Debug)]
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    /// A front end for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigIo { root, address: 0 }
    }

    fn target(&self, offset: u64, len: usize) -> Option<(ConfigAddress, u16)> {
        let in_data = offset.checked_sub(DATA)?;
        if !is_valid_access(in_data, len) {
            return None;
        }
        let address = ConfigAddress::decode(self.address)?;
        Some((address, address.register + in_data as u16))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        match self.target(offset, data.len()) {
            Some((address, register)) => {
                let mut root = self.root.lock().unwrap_or_else(|e| e.into_inner());
                root.config_read(address.bus, address.devfn, register, data);
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        if offset == 0 {
            // Only a 32-bit write latches the address; Linux's probe pokes a byte at 0xCFB
            // first and then checks that a dword write reads back intact.
            if let Ok(dword) = <[u8; 4]>::try_from(data) {
                self.address = u32::from_le_bytes(dword);
            }
            return None;
        }
        if let Some((address, register)) = self.target(offset, data.len()) {
            let mut root = self.root.lock().unwrap_or_else(|e| e.into_inner());
            root.config_write(address.bus, address.devfn, register, data);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::host_bridge::HostBridge;

    fn config_io() -> PciConfigIo {
        let mut root = PciRoot::new();
        root.add(DevFn::new(0, 0), Box::new(HostBridge::new()))
            .unwrap();
        PciConfigIo::new(Arc::new(Mutex::new(root)))
    }

    fn read32(io: &mut PciConfigIo, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        io.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn dword_writes_latch_and_read_back() {
        let mut io = config_io();
        io.write(3, &[0x01]);
        assert_eq!(read32(&mut io, 0), 0, "byte write does not latch");
        io.write(0, &0x8000_0000u32.to_le_bytes());
        assert_eq!(read32(&mut io, 0), 0x8000_0000);
    }

    #[test]
    fn data_window_reads_the_addressed_register() {
        let mut io = config_io();
        io.write(0, &0x8000_0008u32.to_le_bytes());
        assert_eq!(read32(&mut io, 4) >> 8, 0x06_00_00, "class of 00:00.0");
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut device_id = [0u8; 2];
        io.read(6, &mut device_id);
        assert_eq!(u16::from_le_bytes(device_id), 0x0008);
    }

    #[test]
    fn disabled_or_empty_targets_read_all_ones() {
        let mut io = config_io();
        io.write(0, &0x0000_0000u32.to_le_bytes());
        assert_eq!(read32(&mut io, 4), 0xffff_ffff, "enable bit clear");
        io.write(0, &0x8000_0800u32.to_le_bytes());
        assert_eq!(read32(&mut io, 4), 0xffff_ffff, "00:01.0 is empty");
    }

    #[test]
    fn decodes_bus_device_function_register() {
        let a = ConfigAddress::decode(0x8001_1a3c).unwrap();
        assert_eq!(a.bus, 1);
        assert_eq!(a.devfn, DevFn::new(3, 2));
        assert_eq!(a.register, 0x3c);
    }
}
