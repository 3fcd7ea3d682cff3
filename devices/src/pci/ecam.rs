//! PCI Express enhanced configuration access (ECAM): configuration space as MMIO.

use std::sync::{Arc, Mutex};

use super::{is_valid_access, DevFn, PciRoot};
use crate::bus::{BusDevice, Effect};

/// Where an ECAM offset points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamAddress {
    /// Bus number (bits 20..28).
    pub bus: u8,
    /// Device (bits 15..20) and function (bits 12..15).
    pub devfn: DevFn,
    /// Register within the 4 KiB function space.
    pub register: u16,
}

impl EcamAddress {
    /// Decode an offset into the ECAM window.
    pub fn decode(offset: u64) -> Self {
        EcamAddress {
            bus: (offset >> 20) as u8,
            devfn: DevFn((offset >> 12) as u8),
            register: (offset & 0xfff) as u16,
        }
    }
}

/// The ECAM window on the MMIO bus.
#[derive(Debug)]
pub struct PciEcam {
    root: Arc<Mutex<PciRoot>>,
}

impl PciEcam {
    /// A front end for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciEcam { root }
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !is_valid_access(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let a = EcamAddress::decode(offset);
        let mut root = self.root.lock().unwrap_or_else(|e| e.into_inner());
        root.config_read(a.bus, a.devfn, a.register, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        if is_valid_access(offset, data.len()) {
            let a = EcamAddress::decode(offset);
            let mut root = self.root.lock().unwrap_or_else(|e| e.into_inner());
            root.config_write(a.bus, a.devfn, a.register, data);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::host_bridge::HostBridge;

    fn ecam() -> PciEcam {
        let mut root = PciRoot::new();
        root.add(DevFn::new(0, 0), Box::new(HostBridge::new()))
            .unwrap();
        PciEcam::new(Arc::new(Mutex::new(root)))
    }

    #[test]
    fn decodes_bus_device_function_register() {
        let a = EcamAddress::decode((2 << 20) | (5 << 15) | (3 << 12) | 0x104);
        assert_eq!(a.bus, 2);
        assert_eq!(a.devfn, DevFn::new(5, 3));
        assert_eq!(a.register, 0x104);
    }

    #[test]
    fn reads_the_host_bridge_and_empty_slots() {
        let mut ecam = ecam();
        let mut data = [0u8; 4];
        ecam.read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x0008_1b36);
        ecam.read(1 << 15, &mut data);
        assert_eq!(data, [0xff; 4]);
        ecam.read(1 << 20, &mut data);
        assert_eq!(data, [0xff; 4], "bus 1 is empty");
    }

    #[test]
    fn misaligned_accesses_read_all_ones() {
        let mut ecam = ecam();
        let mut data = [0u8; 4];
        ecam.read(2, &mut data);
        assert_eq!(data, [0xff; 4]);
    }
}
