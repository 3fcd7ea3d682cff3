//! Vendor quirks: windows in a GPU's BARs through which the device reaches its own PCI
//! configuration space. A guest driver that uses one would read the host's real BAR
//! addresses and MSI programming, and could rewrite them behind the model's back, so every
//! access that lands in such a window is sent through the model's configuration space
//! instead ([`super::PassthroughFunction`]'s `config_read`/`config_write`), like an access
//! through CF8/ECAM. Only the pages holding a window trap; the rest of the BAR stays mapped.
//!
//! The table, with the facts each entry rests on (QEMU's hw/vfio/pci-quirks.c, and the
//! envytools documentation of NVIDIA's BAR5 it cites):
//!
//! | vendor | where | what it is |
//! |---|---|---|
//! | NVIDIA (10de), display | BAR 0 + 0x88000, 4 KiB | a mirror of all of config space (PCIe, extended included); the driver acknowledges MSIs by writing the MSI capability's ID byte there, so writes covering the ID and next bytes also reach the device |
//! | NVIDIA, display | BAR 0 + 0x1800, 256 bytes | a mirror of the first 256 bytes (older chips, reached from the VGA ports 0x3d0/0x3d4 too) |
//! | NVIDIA, display | I/O BAR 5: 0x0 master, 0x4 enable, 0x8 address, 0xc data | a window to BAR 0; with bit 0 set in master and enable, an address in 0x88000–0x88fff or 0x1800–0x18ff makes the data register a config-space access |
//! | ATI/AMD (1002), display | 64-bit memory BAR 2 + 0x4000, 4 KiB | a mirror of config space (newer Radeons: HD 5450, HD 7850) |
//! | ATI/AMD, display | I/O BAR 4: 0x0 address, 0x4 data | a window to BAR 2; an address in 0x4000–0x4fff makes the data register a config-space access |
//!
//! QEMU installs most of these only when it also routes the VGA ranges; here they are on for
//! every matching function (they guard the model, whatever the guest does with VGA), and
//! `--gpu ...,quirks=off` turns them off for research. The window registers themselves are
//! still written to the device, as QEMU does, so the hardware keeps its own state.

use std::ops::Range;

use crate::pci::bar::{Bar, BarKind};

use super::PlacedBar;

/// Vendor IDs.
const NVIDIA: u16 = 0x10de;
const ATI: u16 = 0x1002;
/// Base class of display controllers.
const CLASS_DISPLAY: u8 = 0x03;
/// Sizes of configuration space.
const PCI_CONFIG: u64 = 256;
const PCIE_CONFIG: u64 = 4096;
/// A trapped piece of a BAR is whole pages (memory slots cannot be smaller).
const PAGE: u64 = 4096;

/// One window to configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quirk {
    /// `bar` + `offset`, `size` bytes, is config space 0..`size`. `msi_ack`: writes to the
    /// MSI capability's first two bytes also go to the device (NVIDIA's MSI acknowledge).
    Mirror {
        /// BAR index.
        bar: u8,
        /// Where the mirror starts in the BAR.
        offset: u64,
        /// Its size.
        size: u64,
        /// Writes over the MSI capability's ID and next bytes reach the device too.
        msi_ack: bool,
    },
    /// ATI/AMD I/O BAR 4: address register at 0, data register at 4.
    AtiWindow {
        /// The config-space offset the data register reaches, when the address selects the
        /// mirror at 0x4000.
        target: Option<u16>,
    },
    /// NVIDIA I/O BAR 5: master, enable, address and data registers.
    NvidiaWindow {
        /// Bit 0 of the master register.
        master: bool,
        /// Bit 0 of the enable register.
        enable: bool,
        /// The config-space offset the data register reaches, when the address selects a
        /// mirror.
        target: Option<u16>,
    },
}

/// Where a BAR access goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the device's region (as without quirks).
    Device,
    /// To configuration space at this offset instead.
    Config(u16),
    /// To configuration space at this offset, and to the device as well.
    ConfigAndDevice(u16),
}

/// A mirror the table knows: BAR, offset, size, MSI acknowledge, and whether the function's
/// BAR is of the kind that has it.
type MirrorEntry = (u8, u64, u64, bool, fn(&Bar) -> bool);

/// The quirks of a function with `vendor` and base `class`, for the BARs it has.
pub fn for_function(vendor: u16, class: u8, bars: &[PlacedBar]) -> Vec<Quirk> {
    if class != CLASS_DISPLAY {
        return Vec::new();
    }
    let bar = |index: u8| bars.iter().find(|b| b.bar.index == index).map(|b| b.bar);
    let io_bar =
        |index: u8, size: u64| bar(index).is_some_and(|b| b.kind == BarKind::Io && b.size >= size);
    let mirrors: &[MirrorEntry] = match vendor {
        NVIDIA => &[
            (0, 0x88000, PCIE_CONFIG, true, |b| b.kind != BarKind::Io),
            (0, 0x1800, PCI_CONFIG, false, |b| b.kind != BarKind::Io),
        ],
        // Only the newer Radeons, whose BAR 2 is 64-bit, have it.
        ATI => &[(2, 0x4000, PCIE_CONFIG, false, |b| b.kind == BarKind::Mem64)],
        _ => &[],
    };
    let mut quirks: Vec<Quirk> = mirrors
        .iter()
        .filter(|(index, offset, size, _, kind)| {
            bar(*index).is_some_and(|b| kind(&b) && b.size >= offset + size)
        })
        .map(|&(bar, offset, size, msi_ack, _)| Quirk::Mirror {
            bar,
            offset,
            size,
            msi_ack,
        })
        .collect();
    if vendor == NVIDIA && io_bar(5, 16) {
        quirks.push(Quirk::NvidiaWindow {
            master: false,
            enable: false,
            target: None,
        });
    }
    if vendor == ATI && io_bar(4, 8) {
        quirks.push(Quirk::AtiWindow { target: None });
    }
    quirks
}

/// The pages of memory BAR `index` that must trap for `quirks` (I/O BARs always trap).
pub fn traps(quirks: &[Quirk], index: u8) -> Vec<Range<u64>> {
    quirks
        .iter()
        .filter_map(|q| match q {
            Quirk::Mirror {
                bar, offset, size, ..
            } if *bar == index => Some(offset / PAGE * PAGE..(offset + size).div_ceil(PAGE) * PAGE),
            _ => None,
        })
        .collect()
}

/// Where a read of `len` bytes at BAR `index` + `offset` goes.
pub fn route_read(quirks: &[Quirk], index: u8, offset: u64, len: usize) -> Route {
    for quirk in quirks {
        match *quirk {
            Quirk::Mirror {
                bar,
                offset: at,
                size,
                ..
            } if bar == index => {
                if let Some(config) = inside(offset, len, at, size) {
                    return Route::Config(config);
                }
            }
            Quirk::AtiWindow { target: Some(t) } if index == 4 => {
                if let Some(within) = inside(offset, len, 4, 4) {
                    return Route::Config(t + within);
                }
            }
            Quirk::NvidiaWindow {
                master: true,
                enable: true,
                target: Some(t),
            } if index == 5 => {
                if let Some(within) = inside(offset, len, 0xc, 4) {
                    return Route::Config(t + within);
                }
            }
            _ => {}
        }
    }
    Route::Device
}

/// Where a write of `data` at BAR `index` + `offset` goes; a write to a window's address
/// or control register updates the window (and still reaches the device).
/// `msi_header`: the config offset of the MSI capability, when the function has one.
pub fn route_write(
    quirks: &mut [Quirk],
    index: u8,
    offset: u64,
    data: &[u8],
    msi_header: Option<u16>,
) -> Route {
    let value = value_of(data);
    for quirk in quirks.iter_mut() {
        match quirk {
            Quirk::Mirror {
                bar,
                offset: at,
                size,
                msi_ack,
            } if *bar == index => {
                if let Some(config) = inside(offset, data.len(), *at, *size) {
                    let acknowledges = *msi_ack
                        && msi_header.is_some_and(|msi| {
                            u64::from(config) < u64::from(msi) + 2
                                && u64::from(config) + data.len() as u64 > u64::from(msi)
                        });
                    return if acknowledges {
                        Route::ConfigAndDevice(config)
                    } else {
                        Route::Config(config)
                    };
                }
            }
            Quirk::AtiWindow { target } if index == 4 => match offset {
                0 if data.len() == 4 => {
                    *target = (value & !0xfff == 0x4000).then_some((value & 0xfff) as u16);
                }
                _ => {
                    if let (Some(t), Some(within)) = (*target, inside(offset, data.len(), 4, 4)) {
                        return Route::Config(t + within);
                    }
                }
            },
            Quirk::NvidiaWindow {
                master,
                enable,
                target,
            } if index == 5 => match offset {
                0 => *master = value & 1 != 0,
                4 => *enable = value & 1 != 0,
                8 => {
                    if *master {
                        *target = if value & !0xfff == 0x88000 {
                            Some((value & 0xfff) as u16)
                        } else if value & !0xff == 0x1800 {
                            Some((value & 0xff) as u16)
                        } else {
                            None
                        };
                    }
                }
                _ => {
                    if let (true, true, Some(t), Some(within)) = (
                        *master,
                        *enable,
                        *target,
                        inside(offset, data.len(), 0xc, 4),
                    ) {
                        return Route::Config(t + within);
                    }
                }
            },
            _ => {}
        }
    }
    Route::Device
}

/// The offset into a window at `start` of `size` bytes of an access of `len` bytes at
/// `offset`, when the access lies wholly inside it.
fn inside(offset: u64, len: usize, start: u64, size: u64) -> Option<u16> {
    let end = offset.checked_add(len as u64)?;
    (offset >= start && end <= start + size)
        .then(|| u16::try_from(offset - start).ok())
        .flatten()
}

/// A little-endian value of up to 4 bytes.
fn value_of(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    for (slot, byte) in bytes.iter_mut().zip(data) {
        *slot = *byte;
    }
    u32::from_le_bytes(bytes)
}
