//! The root bus: functions on bus 0 addressed by devfn. Other buses are empty.

use std::collections::BTreeMap;

use super::{register_name, DevFn, PciFunction};

/// Errors placing a function on the root bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The slot/function is taken.
    #[error("PCI address {0} is already in use")]
    InUse(DevFn),
}

/// Bus 0 and the functions on it.
#[derive(Default)]
pub struct PciRoot {
    functions: BTreeMap<DevFn, Box<dyn PciFunction>>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.functions.keys()).finish()
    }
}

impl PciRoot {
    /// An empty root bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Place `function` at `devfn`.
    pub fn add(&mut self, devfn: DevFn, function: Box<dyn PciFunction>) -> Result<(), Error> {
        if self.functions.contains_key(&devfn) {
            return Err(Error::InUse(devfn));
        }
        self.functions.insert(devfn, function);
        Ok(())
    }

    /// The first device number with no function on it.
    pub fn free_device(&self) -> Option<u8> {
        (0..32u8).find(|d| !self.functions.keys().any(|f| f.device() == *d))
    }

    /// Configuration read; absent functions and other buses read as all ones.
    pub fn config_read(&mut self, bus: u8, devfn: DevFn, offset: u16, data: &mut [u8]) {
        match self.function(bus, devfn) {
            Some(function) => {
                function.config_read(offset, data);
                trace_access(devfn, "read ", offset, data);
            }
            None => data.fill(0xff),
        }
    }

    /// Configuration write; absent functions ignore it.
    pub fn config_write(&mut self, bus: u8, devfn: DevFn, offset: u16, data: &[u8]) {
        if let Some(function) = self.function(bus, devfn) {
            trace_access(devfn, "write", offset, data);
            function.config_write(offset, data);
        }
    }

    fn function(&mut self, bus: u8, devfn: DevFn) -> Option<&mut Box<dyn PciFunction>> {
        if bus != 0 {
            return None;
        }
        self.functions.get_mut(&devfn)
    }
}

/// `--trace pci`: one line per access to a present function, greppable by field.
fn trace_access(devfn: DevFn, direction: &str, offset: u16, data: &[u8]) {
    if !log::log_enabled!(target: "pci", log::Level::Trace) {
        return;
    }
    let mut value = [0u8; 4];
    for (dst, src) in value.iter_mut().zip(data) {
        *dst = *src;
    }
    log::trace!(
        target: "pci",
        "{devfn} {direction} off={offset:#05x} len={} val={:#0width$x} reg={}",
        data.len(),
        u32::from_le_bytes(value),
        register_name(offset),
        width = data.len() * 2 + 2
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::host_bridge::HostBridge;

    #[test]
    fn empty_slots_and_other_buses_read_all_ones() {
        let mut root = PciRoot::new();
        root.add(DevFn::new(0, 0), Box::new(HostBridge::new()))
            .unwrap();
        let mut data = [0u8; 4];
        root.config_read(0, DevFn::new(1, 0), 0, &mut data);
        assert_eq!(data, [0xff; 4]);
        root.config_read(1, DevFn::new(0, 0), 0, &mut data);
        assert_eq!(data, [0xff; 4]);
        root.config_read(0, DevFn::new(0, 0), 0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x0008_1b36);
    }

    #[test]
    fn a_devfn_holds_one_function() {
        let mut root = PciRoot::new();
        root.add(DevFn::new(0, 0), Box::new(HostBridge::new()))
            .unwrap();
        assert_eq!(
            root.add(DevFn::new(0, 0), Box::new(HostBridge::new())),
            Err(Error::InUse(DevFn::new(0, 0)))
        );
        assert_eq!(root.free_device(), Some(1));
    }
}
