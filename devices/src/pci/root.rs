//! The PCI tree: the functions on bus 0 by devfn, and the root ports on bus 0 with the
//! buses behind them. A configuration access for another bus goes to the root port whose
//! secondary bus number (as the guest has it programmed) matches.

use std::collections::BTreeMap;

use super::root_port::RootPort;
use super::{register_name, DevFn, PciFunction};

/// Errors placing a function in the tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The slot/function is taken.
    #[error("PCI address {0} is already in use")]
    InUse(PciAddress),
}

/// A function's address: bus and devfn (segment 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device and function on that bus.
    pub devfn: DevFn,
}

impl PciAddress {
    /// `bus`:`devfn`.
    pub fn new(bus: u8, devfn: DevFn) -> Self {
        PciAddress { bus, devfn }
    }
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus,
            self.devfn.device(),
            self.devfn.function()
        )
    }
}

/// Bus 0, its functions and its root ports (each with its own bus behind it).
#[derive(Default)]
pub struct PciRoot {
    functions: BTreeMap<DevFn, Box<dyn PciFunction>>,
    ports: BTreeMap<DevFn, RootPort>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciRoot")
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .field("ports", &self.ports)
            .finish()
    }
}

impl PciRoot {
    /// An empty root bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Place `function` at `devfn` on bus 0.
    pub fn add(&mut self, devfn: DevFn, function: Box<dyn PciFunction>) -> Result<(), Error> {
        self.check_free(devfn)?;
        self.functions.insert(devfn, function);
        Ok(())
    }

    /// Place a root port (with its children) at `devfn` on bus 0.
    pub fn add_port(&mut self, devfn: DevFn, port: RootPort) -> Result<(), Error> {
        self.check_free(devfn)?;
        self.ports.insert(devfn, port);
        Ok(())
    }

    fn check_free(&self, devfn: DevFn) -> Result<(), Error> {
        if self.functions.contains_key(&devfn) || self.ports.contains_key(&devfn) {
            return Err(Error::InUse(PciAddress::new(0, devfn)));
        }
        Ok(())
    }

    /// A machine reset: every root port back to its registers at hand-off (the functions
    /// are reset by their owners: emulated ones hold no guest-changed state, passed-through
    /// ones are rebuilt by the passthrough layer).
    pub fn reset_ports(&mut self) {
        for port in self.ports.values_mut() {
            port.reset();
        }
    }

    /// The device numbers on bus 0 that hold no function.
    pub fn free_devices(&self) -> Vec<u8> {
        let taken = |d: u8| {
            self.functions
                .keys()
                .chain(self.ports.keys())
                .any(|f| f.device() == d)
        };
        (0..32u8).filter(|d| !taken(*d)).collect()
    }

    /// Configuration read; absent functions read as all ones.
    pub fn config_read(&mut self, bus: u8, devfn: DevFn, offset: u16, data: &mut [u8]) {
        match self.function(bus, devfn) {
            Some(function) => {
                function.config_read(offset, data);
                trace_access(PciAddress::new(bus, devfn), "read ", offset, data);
            }
            None => data.fill(0xff),
        }
    }

    /// Configuration write; absent functions ignore it.
    pub fn config_write(&mut self, bus: u8, devfn: DevFn, offset: u16, data: &[u8]) {
        if let Some(function) = self.function(bus, devfn) {
            trace_access(PciAddress::new(bus, devfn), "write", offset, data);
            function.config_write(offset, data);
        }
    }

    fn function(&mut self, bus: u8, devfn: DevFn) -> Option<&mut dyn PciFunction> {
        if bus == 0 {
            if let Some(port) = self.ports.get_mut(&devfn) {
                return Some(port);
            }
            return self.functions.get_mut(&devfn).map(|f| f.as_mut() as _);
        }
        // A port whose secondary bus the guest set to 0 (while renumbering) forwards nothing.
        self.ports
            .values_mut()
            .find(|p| p.secondary_bus() == bus)
            .and_then(|p| p.child(devfn))
            .map(|f| f.as_mut() as _)
    }
}

/// `--trace pci`: one line per access to a present function, greppable by field.
fn trace_access(address: PciAddress, direction: &str, offset: u16, data: &[u8]) {
    if !log::log_enabled!(target: "pci", log::Level::Trace) {
        return;
    }
    let mut value = [0u8; 4];
    for (dst, src) in value.iter_mut().zip(data) {
        *dst = *src;
    }
    log::trace!(
        target: "pci",
        "{address} {direction} off={offset:#05x} len={} val={:#0width$x} reg={}",
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
    use crate::pci::link::PcieLink;
    use crate::pci::root_port::{BridgeWindows, RootPortConfig};

    fn read32(root: &mut PciRoot, bus: u8, devfn: DevFn, offset: u16) -> u32 {
        let mut data = [0u8; 4];
        root.config_read(bus, devfn, offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn port(secondary_bus: u8) -> RootPort {
        let mut port = RootPort::new(&RootPortConfig {
            secondary_bus,
            windows: BridgeWindows::default(),
            link: PcieLink::UNKNOWN,
            port_number: secondary_bus,
            interrupt_line: 16,
            vga: false,
        });
        port.add(0, Box::new(HostBridge::new())).unwrap();
        port
    }

    #[test]
    fn empty_slots_and_other_buses_read_all_ones() {
        let mut root = PciRoot::new();
        root.add(DevFn::new(0, 0), Box::new(HostBridge::new()))
            .unwrap();
        assert_eq!(read32(&mut root, 0, DevFn::new(1, 0), 0), !0);
        assert_eq!(read32(&mut root, 1, DevFn::new(0, 0), 0), !0);
        assert_eq!(read32(&mut root, 0, DevFn::new(0, 0), 0), 0x0008_1b36);
    }

    #[test]
    fn a_devfn_holds_one_function_or_port() {
        let mut root = PciRoot::new();
        root.add(DevFn::new(0, 0), Box::new(HostBridge::new()))
            .unwrap();
        assert_eq!(
            root.add(DevFn::new(0, 0), Box::new(HostBridge::new())),
            Err(Error::InUse(PciAddress::new(0, DevFn::new(0, 0))))
        );
        root.add_port(DevFn::new(2, 0), port(1)).unwrap();
        assert!(root.add_port(DevFn::new(2, 0), port(2)).is_err());
        assert_eq!(root.free_devices().first(), Some(&1));
        assert!(!root.free_devices().contains(&2));
    }

    #[test]
    fn the_bus_behind_a_port_follows_its_secondary_bus_register() {
        let mut root = PciRoot::new();
        root.add_port(DevFn::new(1, 0), port(1)).unwrap();
        assert_eq!(
            read32(&mut root, 0, DevFn::new(1, 0), 0),
            0x000c_1b36,
            "the port"
        );
        assert_eq!(
            read32(&mut root, 1, DevFn::new(0, 0), 0),
            0x0008_1b36,
            "its child"
        );
        assert_eq!(
            read32(&mut root, 1, DevFn::new(1, 0), 0),
            !0,
            "device 1: none"
        );
        // The guest renumbers the port's bus to 4.
        root.config_write(0, DevFn::new(1, 0), 0x19, &[4]);
        assert_eq!(read32(&mut root, 1, DevFn::new(0, 0), 0), !0);
        assert_eq!(read32(&mut root, 4, DevFn::new(0, 0), 0), 0x0008_1b36);
    }

    #[test]
    fn addresses_print_as_bus_device_function() {
        assert_eq!(
            PciAddress::new(0x1a, DevFn::new(3, 1)).to_string(),
            "1a:03.1"
        );
    }
}
