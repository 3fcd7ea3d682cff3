//! PCI: the root bus with its two configuration front ends (mechanism #1 ports and ECAM),
//! the configuration-space shadow, and the host bridge at 00:00.0.

pub mod bar;
pub mod capability;
pub mod config_io;
pub mod config_space;
pub mod ecam;
pub mod host_bridge;
pub mod msi;
pub mod passthrough;
pub mod root;

pub use config_space::ConfigSpace;
pub use root::PciRoot;

/// One PCI function as seen through configuration space.
pub trait PciFunction: Send {
    /// Read `data.len()` (1, 2 or 4) bytes at `offset`, never crossing a dword.
    fn config_read(&mut self, offset: u16, data: &mut [u8]);
    /// Write `data.len()` (1, 2 or 4) bytes at `offset`, never crossing a dword.
    fn config_write(&mut self, offset: u16, data: &[u8]);
}

/// A device/function address on bus 0, as the 8-bit devfn PCI uses.
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

impl std::fmt::Display for DevFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00:{:02x}.{}", self.device(), self.function())
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
