//! PCI: the tree (bus 0, and a bus behind each emulated root port) with its two
//! configuration front ends (mechanism #1 ports and ECAM), the configuration-space shadow,
//! the host bridge at 00:00.0, root ports, the firmware-style placement of BARs and
//! windows, and the model of a passed-through function.

pub mod bar;
pub mod capability;
pub mod config_io;
pub mod config_space;
pub mod ecam;
pub mod host_bridge;
pub mod link;
pub mod msi;
pub mod passthrough;
pub mod resources;
pub mod root;
pub mod root_port;

pub use config_space::ConfigSpace;
pub use root::{PciAddress, PciRoot};

/// One PCI function as seen through configuration space.
pub trait PciFunction: Send {
    /// Read `data.len()` (1, 2 or 4) bytes at `offset`, never crossing a dword.
    fn config_read(&mut self, offset: u16, data: &mut [u8]);
    /// Write `data.len()` (1, 2 or 4) bytes at `offset`, never crossing a dword.
    fn config_write(&mut self, offset: u16, data: &[u8]);
}

/// A device/function address on one bus, as the 8-bit devfn PCI uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevFn(pub u8);

impl DevFn {
    /// Device `device` (0..32), function `function` (0..8).
    pub fn new(device: u8, function: u8) -> Self {
        DevFn(((device & 0x1f) << 3) | (function & 0x7))
    }

    /// The device (slot) number.
    pub fn device(self) -> u8 {
        self.0 >> 3
    }

    /// The function number.
    pub fn function(self) -> u8 {
        self.0 & 7
    }
}

/// The name of the type-0 header register at `offset` (capabilities beyond the header are
/// named by their space).
pub fn register_name(offset: u16) -> &'static str {
    match offset {
        0x00..=0x01 => "VENDOR_ID",
        0x02..=0x03 => "DEVICE_ID",
        0x04..=0x05 => "COMMAND",
        0x06..=0x07 => "STATUS",
        0x08 => "REVISION",
        0x09..=0x0b => "CLASS",
        0x0c => "CACHE_LINE",
        0x0d => "LATENCY",
        0x0e => "HEADER_TYPE",
        0x0f => "BIST",
        0x10..=0x13 => "BAR0",
        0x14..=0x17 => "BAR1",
        0x18..=0x1b => "BAR2",
        0x1c..=0x1f => "BAR3",
        0x20..=0x23 => "BAR4",
        0x24..=0x27 => "BAR5",
        0x28..=0x2b => "CARDBUS_CIS",
        0x2c..=0x2d => "SUBSYSTEM_VENDOR_ID",
        0x2e..=0x2f => "SUBSYSTEM_ID",
        0x30..=0x33 => "ROM_BAR",
        0x34 => "CAP_POINTER",
        0x35..=0x3b => "RESERVED",
        0x3c => "INTERRUPT_LINE",
        0x3d => "INTERRUPT_PIN",
        0x3e => "MIN_GNT",
        0x3f => "MAX_LAT",
        0x40..=0xff => "CAPABILITIES",
        _ => "EXTENDED",
    }
}

/// True for an access PCI configuration space allows: 1, 2 or 4 bytes, naturally aligned.
pub fn is_valid_access(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len as u64)
}

/// A function shared with others that serve it (a passed-through function's BAR traps).
impl<F: PciFunction> PciFunction for std::sync::Arc<std::sync::Mutex<F>> {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_read(offset, data);
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_write(offset, data);
    }
}
