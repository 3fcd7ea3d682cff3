//! An emulated PCI Express root port: the bridge a passed-through slot sits behind, as a GPU
//! sits behind a root port on a real host.
//!
//! Its type-1 header carries the bus numbers and the three forwarding windows (I/O, memory,
//! 64-bit prefetchable memory) that minivmm assigns the way firmware would, and its PCI
//! Express capability (a root port, version 2) shows the link the device has on the host.
//! The functions on its secondary bus are its children: configuration accesses reach them
//! through the port's bus numbers, whatever the guest programs there. The windows and bus
//! numbers are registers the guest may rewrite; minivmm keeps mapping each BAR where the
//! device's own BAR register says, so the windows describe the tree but do not gate it.

use std::collections::BTreeMap;
use std::ops::Range;

use super::config_space::{reg, ConfigSpace};
use super::link::PcieLink;
use super::{DevFn, PciFunction};

pub use super::host_bridge::VENDOR_ID;
/// Device id Red Hat assigned to its generic PCIe root port (QEMU's `pcie-root-port`).
pub const DEVICE_ID: u16 = 0x000c;
/// Class code: bridge (06), PCI-to-PCI (04), prog-if 0.
const CLASS_PCI_BRIDGE: u32 = 0x06_04_00;

/// Command register bits the guest may change: I/O, memory, bus master, parity, SERR,
/// INTx disable.
const COMMAND_WRITABLE: u32 = 0x0547;
/// Command bits: I/O and memory decoding.
const COMMAND_IO: u32 = 0x1;
const COMMAND_MEMORY: u32 = 0x2;
/// Status register bit: a capability list is present.
const STATUS_CAP_LIST: u32 = 1 << 20;
/// Header type 1 (PCI-to-PCI bridge), in the header-type dword.
const HEADER_TYPE_BRIDGE: u32 = 0x01 << 16;

/// Type-1 header registers.
const BUS_NUMBERS: u16 = 0x18;
const IO_WINDOW: u16 = 0x1c;
const MEMORY_WINDOW: u16 = 0x20;
const PREFETCH_WINDOW: u16 = 0x24;
const PREFETCH_BASE_UPPER: u16 = 0x28;
const PREFETCH_LIMIT_UPPER: u16 = 0x2c;
const CAP_POINTER: u16 = 0x34;
/// Interrupt line, pin, and bridge control.
const INTERRUPT_BRIDGE_CONTROL: u16 = 0x3c;
/// Bridge control bits the guest may change: parity and SERR response, ISA and VGA
/// forwarding, master-abort mode, secondary bus reset.
const BRIDGE_CONTROL_WRITABLE: u32 = 0x007f << 16;
/// Bridge Control's VGA Enable: the port forwards the legacy VGA ranges.
const BRIDGE_CONTROL_VGA: u32 = 0x0008 << 16;

/// Where the PCI Express capability sits, and its registers (offsets from it).
const EXPRESS: u16 = 0x40;
/// PCI Express capability id, next pointer (none), version 2, device/port type 4 (root
/// port), no slot.
const EXPRESS_HEADER: u32 = 0x0042_0010;
const DEVICE_CAPABILITIES: u16 = 0x04;
/// Device Capabilities: Role-Based Error Reporting, 128-byte payloads.
const DEVCAP_ROLE_BASED_ERRORS: u32 = 1 << 15;
const DEVICE_CONTROL: u16 = 0x08;
const LINK_CAPABILITIES: u16 = 0x0c;
const LINK_CONTROL_STATUS: u16 = 0x10;
/// Link Control bits the guest may change (Retrain Link is not kept: it completes at once).
const LINK_CONTROL_WRITABLE: u32 = 0x0fdb;
const ROOT_CONTROL: u16 = 0x1c;
const DEVICE_CONTROL2: u16 = 0x28;
const LINK_CAPABILITIES2: u16 = 0x2c;
const LINK_CONTROL2: u16 = 0x30;

/// Granularity of the memory windows (both): 1 MiB.
pub const MEMORY_GRANULE: u64 = 1 << 20;
/// Granularity of the I/O window: 4 KiB.
pub const IO_GRANULE: u64 = 1 << 12;

/// The address ranges a bridge forwards to its secondary bus; `None` is a closed window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeWindows {
    /// I/O ports (16-bit decode, 4 KiB granules).
    pub io: Option<Range<u64>>,
    /// Memory below 4 GiB (1 MiB granules).
    pub memory: Option<Range<u64>>,
    /// 64-bit prefetchable memory (1 MiB granules).
    pub prefetchable: Option<Range<u64>>,
}

/// Everything a root port is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootPortConfig {
    /// The bus behind it (primary is 0, subordinate = secondary: no bridges below).
    pub secondary_bus: u8,
    /// Its forwarding windows.
    pub windows: BridgeWindows,
    /// The link to show (Link Capabilities and Status).
    pub link: PcieLink,
    /// Port Number in Link Capabilities.
    pub port_number: u8,
    /// Interrupt Line as firmware would have written it (the INTA GSI).
    pub interrupt_line: u8,
    /// The legacy VGA ranges are routed to the device behind it: VGA Enable set in Bridge
    /// Control, as firmware leaves the path to the boot display.
    pub vga: bool,
}

/// Errors placing a function behind a port.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A function number is taken, or not 0..8.
    #[error("function {0} behind the root port is taken or out of range")]
    BadFunction(u8),
}

/// A root port and the functions on its secondary bus (device 0: a PCI Express link has
/// one device on its far end).
pub struct RootPort {
    config: ConfigSpace,
    children: BTreeMap<u8, Box<dyn PciFunction>>,
    /// What it was made from, for a reset.
    made_from: RootPortConfig,
}

impl std::fmt::Debug for RootPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPort")
            .field("secondary_bus", &self.secondary_bus())
            .field("children", &self.children.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RootPort {
    /// A root port as firmware leaves it: bus numbers and windows assigned, decoding on for
    /// the windows that are open.
    pub fn new(port: &RootPortConfig) -> Self {
        let mut config = ConfigSpace::new();
        let id = (u32::from(DEVICE_ID) << 16) | u32::from(VENDOR_ID);
        config.init_dword(reg::VENDOR_DEVICE, id, 0);
        let windows = &port.windows;
        let mut command = 0;
        if windows.io.is_some() {
            command |= COMMAND_IO;
        }
        if windows.memory.is_some() || windows.prefetchable.is_some() {
            command |= COMMAND_MEMORY;
        }
        config.init_dword(
            reg::COMMAND_STATUS,
            STATUS_CAP_LIST | command,
            COMMAND_WRITABLE,
        );
        config.init_dword(reg::CLASS_REVISION, CLASS_PCI_BRIDGE << 8, 0);
        config.init_dword(reg::HEADER_TYPE, HEADER_TYPE_BRIDGE, 0xff);
        let bus = u32::from(port.secondary_bus);
        config.init_dword(BUS_NUMBERS, (bus << 16) | (bus << 8), 0x00ff_ffff);
        let (io_base, io_limit) = io_registers(windows.io.as_ref());
        config.init_dword(
            IO_WINDOW,
            u32::from(io_base) | (u32::from(io_limit) << 8),
            0xf0f0,
        );
        let (base, limit) = memory_registers(windows.memory.as_ref());
        config.init_dword(
            MEMORY_WINDOW,
            u32::from(base) | (u32::from(limit) << 16),
            0xfff0_fff0,
        );
        let (base, limit) = memory_registers(windows.prefetchable.as_ref());
        // Low nibbles 1: the prefetchable window decodes 64-bit addresses.
        config.init_dword(
            PREFETCH_WINDOW,
            u32::from(base) | (u32::from(limit) << 16) | 0x0001_0001,
            0xfff0_fff0,
        );
        let (upper_base, upper_limit) = match &windows.prefetchable {
            Some(range) => ((range.start >> 32) as u32, ((range.end - 1) >> 32) as u32),
            None => (0, 0),
        };
        config.init_dword(PREFETCH_BASE_UPPER, upper_base, !0);
        config.init_dword(PREFETCH_LIMIT_UPPER, upper_limit, !0);
        config.init_dword(CAP_POINTER, u32::from(EXPRESS), 0);
        // INTA: a root port signals its own events (none here) on a pin like any function.
        let vga_enable = if port.vga { BRIDGE_CONTROL_VGA } else { 0 };
        config.init_dword(
            INTERRUPT_BRIDGE_CONTROL,
            u32::from(port.interrupt_line) | 0x0100 | vga_enable,
            0xff | BRIDGE_CONTROL_WRITABLE,
        );
        init_express(&mut config, port);
        RootPort {
            config,
            children: BTreeMap::new(),
            made_from: port.clone(),
        }
    }

    /// Back to the registers it was made with (a machine reset); its functions are reset
    /// by their owners.
    pub fn reset(&mut self) {
        let children = std::mem::take(&mut self.children);
        *self = RootPort::new(&self.made_from);
        self.children = children;
    }

    /// Put `function` at device 0, function `number`, of the secondary bus.
    pub fn add(&mut self, number: u8, function: Box<dyn PciFunction>) -> Result<(), Error> {
        if number > 7 || self.children.contains_key(&number) {
            return Err(Error::BadFunction(number));
        }
        self.children.insert(number, function);
        Ok(())
    }

    /// The secondary bus number the guest has programmed.
    pub fn secondary_bus(&self) -> u8 {
        (self.config.read_dword(BUS_NUMBERS) >> 8) as u8
    }

    /// The function at `devfn` on the secondary bus, if there is one.
    pub fn child(&mut self, devfn: DevFn) -> Option<&mut Box<dyn PciFunction>> {
        if devfn.device() != 0 {
            return None;
        }
        self.children.get_mut(&devfn.function())
    }
}

/// The PCI Express capability of a root port (version 2, no slot), with `port`'s link.
fn init_express(config: &mut ConfigSpace, port: &RootPortConfig) {
    let link = &port.link;
    config.init_dword(EXPRESS, EXPRESS_HEADER, 0);
    config.init_dword(EXPRESS + DEVICE_CAPABILITIES, DEVCAP_ROLE_BASED_ERRORS, 0);
    config.init_dword(EXPRESS + DEVICE_CONTROL, 0, 0x7fff);
    config.init_dword(
        EXPRESS + LINK_CAPABILITIES,
        link.capabilities(port.port_number),
        0,
    );
    config.init_dword(
        EXPRESS + LINK_CONTROL_STATUS,
        u32::from(link.status()) << 16,
        LINK_CONTROL_WRITABLE,
    );
    config.init_dword(EXPRESS + ROOT_CONTROL, 0, 0x000f);
    config.init_dword(EXPRESS + DEVICE_CONTROL2, 0, 0x001f);
    config.init_dword(EXPRESS + LINK_CAPABILITIES2, link.capabilities2(), 0);
    config.init_dword(EXPRESS + LINK_CONTROL2, u32::from(link.control2()), 0x000f);
}

/// I/O Base and I/O Limit bytes for `window` (16-bit decode: address bits 15:12).
fn io_registers(window: Option<&Range<u64>>) -> (u8, u8) {
    match window {
        Some(range) if range.end > range.start => (
            ((range.start >> 8) & 0xf0) as u8,
            (((range.end - 1) >> 8) & 0xf0) as u8,
        ),
        _ => (0xf0, 0x00), // base above limit: closed
    }
}

/// Memory Base and Memory Limit words for `window` (address bits 31:20).
fn memory_registers(window: Option<&Range<u64>>) -> (u16, u16) {
    match window {
        Some(range) if range.end > range.start => (
            ((range.start >> 16) & 0xfff0) as u16,
            (((range.end - 1) >> 16) & 0xfff0) as u16,
        ),
        _ => (0xfff0, 0x0000), // base above limit: closed
    }
}

impl PciFunction for RootPort {
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
    use crate::pci::link::speed;

    fn port() -> RootPort {
        RootPort::new(&RootPortConfig {
            secondary_bus: 2,
            windows: BridgeWindows {
                io: Some(0xc000..0xd000),
                memory: Some(0xc010_0000..0xc030_0000),
                prefetchable: Some(0x4_0000_0000..0x6_0000_0000),
            },
            link: PcieLink::new(speed::GT16, 16, speed::GT8, 8).unwrap(),
            port_number: 2,
            interrupt_line: 18,
            vga: false,
        })
    }

    fn read32(port: &mut RootPort, offset: u16) -> u32 {
        let mut data = [0u8; 4];
        port.config_read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn vga_enable_is_set_only_on_the_path_to_a_routed_vga() {
        const VGA_ENABLE: u32 = 0x0008_0000;
        assert_eq!(read32(&mut port(), 0x3c) & VGA_ENABLE, 0);
        let mut config = port().made_from;
        config.vga = true;
        let mut vga = RootPort::new(&config);
        assert_eq!(read32(&mut vga, 0x3c) & VGA_ENABLE, VGA_ENABLE);
        vga.config_write(0x3e, &[0]);
        assert_eq!(
            read32(&mut vga, 0x3c) & VGA_ENABLE,
            0,
            "the guest may turn it off"
        );
        vga.reset();
        assert_eq!(
            read32(&mut vga, 0x3c) & VGA_ENABLE,
            VGA_ENABLE,
            "and a reset back on"
        );
    }

    #[test]
    fn is_a_type_1_bridge_with_decoding_on_and_a_capability_list() {
        let mut port = port();
        assert_eq!(read32(&mut port, 0x00), 0x000c_1b36);
        assert_eq!(
            read32(&mut port, 0x04),
            0x0010_0003,
            "I/O + memory, cap list"
        );
        assert_eq!(read32(&mut port, 0x08) >> 8, 0x06_04_00);
        assert_eq!((read32(&mut port, 0x0c) >> 16) & 0xff, 0x01, "type 1");
        assert_eq!(read32(&mut port, 0x10), 0, "no BARs");
        assert_eq!(read32(&mut port, 0x34), 0x40);
        assert_eq!(read32(&mut port, 0x3c) & 0xffff, 0x0112, "INTA on GSI 18");
    }

    #[test]
    fn bus_numbers_say_primary_0_and_one_bus_behind() {
        let mut port = port();
        assert_eq!(read32(&mut port, 0x18) & 0x00ff_ffff, 0x0002_0200);
        assert_eq!(port.secondary_bus(), 2);
        // The guest may renumber; the children follow the register.
        port.config_write(0x19, &[5]);
        assert_eq!(port.secondary_bus(), 5);
    }

    #[test]
    fn a_reset_restores_bus_numbers_windows_and_command_and_keeps_the_children() {
        let mut port = port();
        let before: Vec<u32> = (0..0x40).step_by(4).map(|o| read32(&mut port, o)).collect();
        port.add(0, Box::new(RootPort::new(&port.made_from.clone())))
            .unwrap();
        port.config_write(0x19, &[5]);
        port.config_write(0x04, &[0x00, 0x00]);
        port.config_write(0x20, &0xd000_d000u32.to_le_bytes());
        port.reset();
        let after: Vec<u32> = (0..0x40).step_by(4).map(|o| read32(&mut port, o)).collect();
        assert_eq!(after, before);
        assert_eq!(port.secondary_bus(), 2);
        assert!(
            port.child(DevFn::new(0, 0)).is_some(),
            "the child is still there"
        );
    }

    #[test]
    fn windows_are_encoded_in_their_granules() {
        let mut port = port();
        assert_eq!(
            read32(&mut port, 0x1c) & 0xffff,
            0xc0c0,
            "I/O 0xc000-0xcfff"
        );
        assert_eq!(
            read32(&mut port, 0x20),
            0xc020_c010,
            "memory 0xc0100000-0xc02fffff"
        );
        assert_eq!(
            read32(&mut port, 0x24),
            0xfff1_0001,
            "prefetchable low bits, 64-bit"
        );
        assert_eq!(read32(&mut port, 0x28), 0x4, "base 16 GiB");
        assert_eq!(read32(&mut port, 0x2c), 0x5, "limit just below 24 GiB");
    }

    #[test]
    fn closed_windows_read_base_above_limit_and_leave_decoding_off() {
        let mut port = RootPort::new(&RootPortConfig {
            secondary_bus: 1,
            windows: BridgeWindows::default(),
            link: PcieLink::UNKNOWN,
            port_number: 1,
            interrupt_line: 17,
            vga: false,
        });
        assert_eq!(read32(&mut port, 0x04) & 0x3, 0);
        assert_eq!(read32(&mut port, 0x1c) & 0xffff, 0x00f0);
        assert_eq!(read32(&mut port, 0x20), 0x0000_fff0);
        assert_eq!(read32(&mut port, 0x24), 0x0001_fff1);
    }

    #[test]
    fn windows_size_like_hardware() {
        let mut port = port();
        port.config_write(0x20, &[0xff; 4]);
        assert_eq!(read32(&mut port, 0x20), 0xfff0_fff0);
        port.config_write(0x1c, &[0xff, 0xff]);
        assert_eq!(read32(&mut port, 0x1c) & 0xffff, 0xf0f0);
    }

    #[test]
    fn the_express_capability_is_a_root_port_with_the_hosts_link() {
        let mut port = port();
        assert_eq!(
            read32(&mut port, 0x40),
            0x0042_0010,
            "v2 root port, end of list"
        );
        // Link Capabilities: 16 GT/s, x16, DLL active reporting, port 2, no ASPM.
        assert_eq!(read32(&mut port, 0x4c), 0x0210_0104);
        // Link Status (upper half): 8 GT/s x8, slot clock, link active.
        assert_eq!(read32(&mut port, 0x50) >> 16, 0x3083);
        assert_eq!(read32(&mut port, 0x6c), 0b11110, "2.5 to 16 GT/s supported");
        assert_eq!(read32(&mut port, 0x70) & 0xf, u32::from(speed::GT16));
        // Retrain Link does not stick, ASPM control does; status is read-only.
        port.config_write(0x50, &[0x23, 0x00, 0xff, 0xff]);
        assert_eq!(read32(&mut port, 0x50), 0x3083_0003);
        assert_eq!(read32(&mut port, 0x100), 0, "no extended capabilities");
    }

    #[test]
    fn children_sit_at_device_0_only() {
        let mut port = port();
        port.add(
            0,
            Box::new(RootPort::new(&RootPortConfig {
                secondary_bus: 9,
                windows: BridgeWindows::default(),
                link: PcieLink::UNKNOWN,
                port_number: 9,
                interrupt_line: 0,
                vga: false,
            })),
        )
        .unwrap();
        assert!(port.child(DevFn::new(0, 0)).is_some());
        assert!(port.child(DevFn::new(1, 0)).is_none());
        assert!(port.child(DevFn::new(0, 1)).is_none());
        assert_eq!(
            port.add(8, Box::new(crate::pci::host_bridge::HostBridge::new())),
            Err(Error::BadFunction(8))
        );
    }
}
