//! The host bridge at 00:00.0.
//!
//! Without a BIOS vouching for configuration mechanism #1, Linux's `pci_sanity_check` looks
//! for a host bridge (class 06/00) on bus 0 before it trusts the 0xCF8/0xCFC ports.

use super::config_space::{reg, ConfigSpace};
use super::PciFunction;

/// Red Hat's PCI vendor id, used for paravirtual and emulated devices.
pub const VENDOR_ID: u16 = 0x1b36;
/// Device id Red Hat assigned to its generic PCIe host bridge.
pub const DEVICE_ID: u16 = 0x0008;
/// Class code: bridge (06), host bridge (00), prog-if 0.
pub const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

/// A host bridge with an identity and a command register, and nothing else.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// Build the bridge's configuration space.
    pub fn new() -> Self {
        let mut config = ConfigSpace::new();
        let id = (u32::from(DEVICE_ID) << 16) | u32::from(VENDOR_ID);
        config.init_dword(reg::VENDOR_DEVICE, id, 0);
        // Memory and I/O decode are hard-wired on; the guest may toggle bus mastering.
        config.init_dword(reg::COMMAND_STATUS, 0x0000_0003, 0x0000_0004);
        config.init_dword(reg::CLASS_REVISION, CLASS_HOST_BRIDGE << 8, 0);
        config.init_dword(reg::HEADER_TYPE, 0, 0);
        config.init_dword(reg::SUBSYSTEM, id, 0);
        Self { config }
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_as_a_host_bridge() {
        let mut bridge = HostBridge::new();
        let mut id = [0u8; 4];
        bridge.config_read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);
        let mut class = [0u8; 4];
        bridge.config_read(8, &mut class);
        assert_eq!(u32::from_le_bytes(class) >> 8, 0x06_00_00);
        let mut header = [0u8; 1];
        bridge.config_read(0x0e, &mut header);
        assert_eq!(header, [0], "type-0 header, single function");
    }

    #[test]
    fn identity_is_read_only() {
        let mut bridge = HostBridge::new();
        bridge.config_write(0, &[0xff; 4]);
        let mut id = [0u8; 4];
        bridge.config_read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);
    }
}
