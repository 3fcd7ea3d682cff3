//! Legacy VGA: the ranges every VGA-compatible device decodes besides its BARs — memory
//! 0xa0000–0xbffff (the frame buffer text and planar modes use) and the ports 0x3b0–0x3bb
//! (monochrome) and 0x3c0–0x3df (attribute, sequencer, graphics, DAC, colour CRTC) — routed
//! to a passed-through device. VFIO offers them as one region (index 8) whose offsets are the
//! legacy addresses themselves; the host's VGA arbiter routes them to the device for each
//! access. Every access traps: these ranges are small and slow on real hardware too.

use std::sync::{Mutex, Weak};

use super::quirks::Route;
use super::{HostFunction, PassthroughFunction, PlacedBar};
use crate::bus::{BusDevice, Effect};
use crate::pci::bar::BarKind;
use crate::pci::PciFunction as _;

/// VFIO's index of the VGA region of a PCI device.
pub const VGA_REGION_INDEX: u8 = 8;
/// The region spans the legacy addresses up to the end of the memory window.
pub const VGA_REGION_SIZE: u64 = 0xc_0000;
/// The legacy memory window: start and length.
pub const VGA_MEMORY: (u64, u64) = (0xa_0000, 0x2_0000);
/// The legacy port ranges: start and length of each.
pub const VGA_PORTS: [(u16, u16); 2] = [(0x3b0, 0x0c), (0x3c0, 0x20)];

/// What can serve legacy VGA accesses: the device behind them.
pub trait VgaTarget: Send {
    /// Read `data.len()` bytes at legacy address `address` (a port or a memory address).
    fn vga_read(&mut self, address: u64, data: &mut [u8]);
    /// Write `data` at legacy address `address`.
    fn vga_write(&mut self, address: u64, data: &[u8]);
}

/// Vendor windows to configuration space in the VGA ports, which the guest reaches only with
/// `vga=on` (facts from QEMU's hw/vfio/pci-quirks.c). As with the BAR quirks
/// (`super::quirks`), an access that lands in one goes through the model's configuration
/// space, so the guest sees its own BARs, never the host's.
///
/// | vendor | ports | what it is |
/// |---|---|---|
/// | ATI/AMD (1002), with an I/O BAR 4 of 256 bytes or more | read 0x3c3 | the upper byte of the I/O BAR 4 address (Radeon HD 5450, HD 7850; their VBIOS finds its I/O BAR so) |
/// | NVIDIA (10de), with a BAR 1 | 0x3d4 (16-bit select), 0x3d0 (data) | older chips' (G72) backdoor to BAR 0: 0x338 to 0x3d4, the BAR 0 offset to 0x3d0, then 0x538 (read) or 0x738 (write) to 0x3d4 make 0x3d0 an access at that offset; 0x1800–0x18ff mirrors config space |
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VgaQuirk {
    /// ATI/AMD: 0x3c3 reads the guest's BAR 4, byte 1.
    AtiBar4High,
    /// NVIDIA: the 0x3d4/0x3d0 sequence, where it stands.
    Nvidia3d0 {
        /// The step of the sequence.
        state: Nvidia3d0,
        /// The BAR 0 offset written in the window step.
        offset: u32,
    },
}

/// The steps of NVIDIA's 0x3d4/0x3d0 sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nvidia3d0 {
    /// Nothing under way.
    #[default]
    Idle,
    /// 0x338 written to 0x3d4: the next 0x3d0 write is the offset.
    Select,
    /// The offset is set: 0x538 or 0x738 to 0x3d4 next.
    Window,
    /// The next 0x3d0 read is at the offset.
    Read,
    /// The next 0x3d0 write is at the offset.
    Write,
}

/// NVIDIA's mirror of the first 256 bytes of config space in BAR 0.
const NVIDIA_MIRROR: u32 = 0x1800;

impl VgaQuirk {
    /// The VGA-port quirk of a display function with `vendor`, `class` and `bars`, if any.
    pub fn for_function(vendor: u16, class: u8, bars: &[PlacedBar]) -> Option<VgaQuirk> {
        if class != 0x03 {
            return None;
        }
        let bar = |index: u8| bars.iter().find(|b| b.bar.index == index).map(|b| b.bar);
        match vendor {
            0x1002 if bar(4).is_some_and(|b| b.kind == BarKind::Io && b.size >= 256) => {
                Some(VgaQuirk::AtiBar4High)
            }
            0x10de if bar(1).is_some_and(|b| b.size > 0) => Some(VgaQuirk::Nvidia3d0 {
                state: Nvidia3d0::Idle,
                offset: 0,
            }),
            _ => None,
        }
    }

    /// Where a read of `len` bytes at VGA port or address `address` goes.
    pub fn route_read(&mut self, address: u64, len: usize) -> Route {
        match self {
            VgaQuirk::AtiBar4High if address == 0x3c3 => Route::Config(0x21),
            VgaQuirk::Nvidia3d0 { state, offset } => match address {
                0x3d4 => {
                    *state = Nvidia3d0::Idle;
                    Route::Device
                }
                0x3d0 => {
                    let was = std::mem::take(state);
                    match mirrored(*offset, len) {
                        Some(config) if was == Nvidia3d0::Read => Route::Config(config),
                        _ => Route::Device,
                    }
                }
                _ => Route::Device,
            },
            _ => Route::Device,
        }
    }

    /// Where a write of `data` at VGA port or address `address` goes; the select writes
    /// still reach the device.
    pub fn route_write(&mut self, address: u64, data: &[u8]) -> Route {
        let VgaQuirk::Nvidia3d0 { state, offset } = self else {
            return Route::Device;
        };
        let value = data
            .iter()
            .rev()
            .fold(0u32, |v, b| (v << 8) | u32::from(*b));
        match address {
            0x3d4 => {
                let was = std::mem::take(state);
                *state = match (value, was) {
                    (0x338, Nvidia3d0::Idle) => Nvidia3d0::Select,
                    (0x538, Nvidia3d0::Window) => Nvidia3d0::Read,
                    (0x738, Nvidia3d0::Window) => Nvidia3d0::Write,
                    _ => Nvidia3d0::Idle,
                };
                Route::Device
            }
            0x3d0 => match std::mem::take(state) {
                Nvidia3d0::Select => {
                    *offset = value;
                    *state = Nvidia3d0::Window;
                    Route::Device
                }
                Nvidia3d0::Write => match mirrored(*offset, data.len()) {
                    Some(config) => Route::Config(config),
                    None => Route::Device,
                },
                _ => Route::Device,
            },
            _ => Route::Device,
        }
    }
}

/// The config-space offset BAR 0 offset `offset` mirrors, for an access of `len` bytes.
fn mirrored(offset: u32, len: usize) -> Option<u16> {
    let within = offset.checked_sub(NVIDIA_MIRROR)?;
    (within as usize + len <= 256).then_some(within as u16)
}

/// One legacy range on a bus, forwarding to the device. The device is held weakly: the
/// buses may outlive it at teardown, and then reads float (all ones) and writes go nowhere.
pub struct LegacyVga<T: VgaTarget> {
    target: Weak<Mutex<T>>,
    /// The legacy address of the range's first byte.
    base: u64,
}

impl<T: VgaTarget> std::fmt::Debug for LegacyVga<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyVga")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl<T: VgaTarget> LegacyVga<T> {
    /// The range starting at legacy address `base`, served by `target`.
    pub fn new(target: Weak<Mutex<T>>, base: u64) -> Self {
        LegacyVga { target, base }
    }
}

impl<T: VgaTarget> BusDevice for LegacyVga<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.target.upgrade() {
            Some(target) => target
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .vga_read(self.base + offset, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        if let Some(target) = self.target.upgrade() {
            target
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .vga_write(self.base + offset, data);
        }
        None
    }
}

/// A passed-through function serves them through VFIO's VGA region, its VGA-port quirk
/// aside.
impl<H: HostFunction> VgaTarget for PassthroughFunction<H> {
    fn vga_read(&mut self, address: u64, data: &mut [u8]) {
        let route = match self.vga_quirk_mut() {
            Some(quirk) => quirk.route_read(address, data.len()),
            None => Route::Device,
        };
        match route {
            Route::Config(offset) => self.config_read(offset, data),
            Route::Device | Route::ConfigAndDevice(_) => {
                self.host().region_read(VGA_REGION_INDEX, address, data)
            }
        }
    }

    fn vga_write(&mut self, address: u64, data: &[u8]) {
        let route = match self.vga_quirk_mut() {
            Some(quirk) => quirk.route_write(address, data),
            None => Route::Device,
        };
        match route {
            Route::Config(offset) => self.config_write(offset, data),
            Route::Device | Route::ConfigAndDevice(_) => {
                self.host().region_write(VGA_REGION_INDEX, address, data)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::sync::Arc;

    /// A VGA device as VFIO's region shows it: one flat space of legacy addresses.
    struct FakeVga {
        space: RefCell<Vec<u8>>,
    }

    impl FakeVga {
        fn new(space: Vec<u8>) -> Arc<Mutex<FakeVga>> {
            Arc::new(Mutex::new(FakeVga {
                space: RefCell::new(space),
            }))
        }
    }

    impl VgaTarget for FakeVga {
        fn vga_read(&mut self, address: u64, data: &mut [u8]) {
            let at = address as usize;
            data.copy_from_slice(&self.space.borrow()[at..at + data.len()]);
        }
        fn vga_write(&mut self, address: u64, data: &[u8]) {
            let at = address as usize;
            self.space.borrow_mut()[at..at + data.len()].copy_from_slice(data);
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_legacy_addresses() {
        let mut space = vec![0u8; VGA_REGION_SIZE as usize];
        space[0xb_8000..0xb_8002].copy_from_slice(b"H\x07");
        space[0x3da] = 0x09;
        let vga = FakeVga::new(space);
        let mut memory = LegacyVga::new(Arc::downgrade(&vga), VGA_MEMORY.0);
        let mut text = [0u8; 2];
        memory.read(0x1_8000, &mut text);
        assert_eq!(&text, b"H\x07", "0xb8000 is 0x18000 into the memory window");
        assert_eq!(memory.write(0x1_8002, b"i\x07"), None);
        assert_eq!(
            &vga.lock().unwrap().space.borrow()[0xb_8002..0xb_8004],
            b"i\x07"
        );
        let mut ports = LegacyVga::new(Arc::downgrade(&vga), 0x3c0);
        let mut status = [0u8; 1];
        ports.read(0x1a, &mut status);
        assert_eq!(status, [0x09], "input status 1 at 0x3da");
    }

    #[test]
    fn after_the_device_is_gone_reads_float_and_writes_are_dropped() {
        let vga = FakeVga::new(vec![0; 16]);
        let mut ports = LegacyVga::new(Arc::downgrade(&vga), 0x3c0);
        drop(vga);
        let mut data = [0u8; 2];
        ports.read(0, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(ports.write(0, &[1]), None);
    }
}
