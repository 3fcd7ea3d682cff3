//! The BARs and the ROM BAR of a passed-through function: their registers in the shadow at
//! the addresses the PCI tree assigned, kept mapped where the guest decodes them, and the
//! trapped parts (the MSI-X pages, the ROM) served.

use std::ops::Range;

use super::quirks::{self, Route};
use super::{
    dword, Error, HostFunction, PassthroughFunction, PlacedBar, RomSource, COMMAND_IO,
    COMMAND_MEMORY, ROM_INDEX,
};
use crate::pci::bar::{self, Bar, BarKind, BAR0, BAR_COUNT};
use crate::pci::resources::{FunctionNeeds, Placement};
use crate::pci::PciFunction as _;
use minivmm_firmware::option_rom;

/// Expansion ROM BAR of a type-0 header.
const ROM_BAR: u16 = 0x30;
/// ROM BAR bit 0: the ROM decodes (when memory decoding is on too).
const ROM_ENABLE: u32 = 0x1;
/// Address bits of the ROM BAR (2 KiB granularity).
const ROM_ADDRESS_MASK: u32 = 0xffff_f800;
/// Largest ROM BAR a 32-bit register can place.
const ROM_MAX: u64 = 1 << 31;
/// Trapped parts of a BAR are whole host pages: a memory slot cannot be smaller.
const PAGE_SIZE: u64 = 4096;

/// What `host` needs placed: its BARs (from its BAR registers and region sizes) and the ROM
/// BAR that `rom` makes it show.
pub fn needs(host: &impl HostFunction, rom: &RomSource) -> Result<FunctionNeeds, Error> {
    let mut registers = [0u32; BAR_COUNT as usize];
    for (i, register) in registers.iter_mut().enumerate() {
        let mut data = [0u8; 4];
        host.read_config(BAR0 + 4 * i as u16, &mut data);
        *register = u32::from_le_bytes(data);
    }
    Ok(FunctionNeeds {
        bars: bar::decode_bars(registers, |i| host.region_size(i))?,
        rom: rom_size(host, rom),
    })
}

/// The size of the ROM BAR `rom` makes `host` show, 0 for none.
fn rom_size(host: &impl HostFunction, rom: &RomSource) -> u64 {
    let size = match rom {
        RomSource::None => 0,
        RomSource::Device => host.region_size(ROM_INDEX),
        RomSource::Image(image) => option_rom::bar_size(image.len()),
    };
    if size.is_power_of_two() && size <= ROM_MAX {
        size
    } else {
        0
    }
}

impl<H: HostFunction> PassthroughFunction<H> {
    pub(super) fn virtualize_bars(
        &mut self,
        config: &[u8],
        placement: &Placement,
    ) -> Result<(), Error> {
        let mut registers = [0u32; BAR_COUNT as usize];
        for (i, register) in registers.iter_mut().enumerate() {
            *register = dword(config, usize::from(BAR0) + 4 * i);
        }
        // Every BAR register is the shadow's: unused ones read 0 and ignore writes.
        for i in 0..u16::from(BAR_COUNT) {
            self.emulate(BAR0 + 4 * i, 0, 0);
        }
        for bar in bar::decode_bars(registers, |i| self.host.region_size(i))? {
            let address = placement.bar(bar.index).ok_or(Error::Unplaced(bar.index))?;
            bar::init_bar(&mut self.shadow, &bar, address);
            self.bars.push(PlacedBar {
                bar,
                address,
                mapped: None,
            });
        }
        Ok(())
    }

    /// The ROM BAR: a standard decode (2 KiB-aligned address bits for its size, the enable
    /// bit) at its placed address, served read-only through its trap. Disabled, as firmware
    /// leaves it: the guest enables it to read.
    pub(super) fn virtualize_rom(&mut self, rom: RomSource, placement: &Placement) {
        let size = rom_size(&self.host, &rom);
        let Some(address) = placement.rom.filter(|_| size != 0) else {
            self.emulate(ROM_BAR, 0, 0);
            return;
        };
        let bar = Bar {
            index: ROM_INDEX,
            kind: BarKind::Mem32,
            prefetchable: false,
            size,
        };
        let mask = ROM_ADDRESS_MASK & !((size - 1) as u32);
        self.emulate(ROM_BAR, address as u32 & mask, mask | ROM_ENABLE);
        self.bars.push(PlacedBar {
            bar,
            address,
            mapped: None,
        });
        self.rom = rom;
    }

    /// The BAR-relative ranges of BAR `index` that must trap: the pages holding the
    /// MSI-X table and PBA, and those of the vendor windows to config space ([`quirks`]).
    pub fn traps(&self, index: u8) -> Vec<Range<u64>> {
        let mut pages: Vec<Range<u64>> = quirks::traps(&self.quirks, index);
        if let Some(msix) = &self.msix {
            let areas = [
                (msix.table_bar, msix.table_offset, msix.table_len()),
                (msix.pba_bar, msix.pba_offset, msix.pba_len()),
            ];
            for (bar, offset, len) in areas {
                if bar == index {
                    let start = offset / PAGE_SIZE * PAGE_SIZE;
                    pages.push(start..(offset + len).div_ceil(PAGE_SIZE) * PAGE_SIZE);
                }
            }
        }
        pages.sort_by_key(|r| r.start);
        let mut traps: Vec<Range<u64>> = Vec::new();
        for range in pages {
            match traps.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => traps.push(range),
            }
        }
        traps
    }

    /// A vendor window's access to configuration space, in pieces that stay within a dword.
    fn config_span(&mut self, offset: u16, data: &mut [u8], write: bool) {
        let mut done = 0;
        while done < data.len() {
            let at = offset.saturating_add(done as u16);
            let room = 4 - usize::from(at % 4);
            let end = data.len().min(done + room);
            let Some(piece) = data.get_mut(done..end) else {
                return;
            };
            if write {
                self.config_write(at, piece);
            } else {
                self.config_read(at, piece);
            }
            done = end;
        }
    }

    /// A trapped read of BAR `index` at `offset`: the MSI-X table is the model's, the rest
    /// (the PBA included) is the device's.
    pub fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        if index == ROM_INDEX {
            match &self.rom {
                RomSource::Image(image) => {
                    for (i, byte) in data.iter_mut().enumerate() {
                        let at = usize::try_from(offset)
                            .unwrap_or(usize::MAX)
                            .saturating_add(i);
                        *byte = image.get(at).copied().unwrap_or(0xff);
                    }
                }
                RomSource::Device => self.host.region_read(ROM_INDEX, offset, data),
                RomSource::None => data.fill(0xff),
            }
            return;
        }
        if let Route::Config(at) = quirks::route_read(&self.quirks, index, offset, data.len()) {
            self.config_span(at, data, false);
            return;
        }
        match &self.msix {
            Some(msix) if msix.in_table(index, offset) => msix.read_table(offset, data),
            _ => self.host.region_read(index, offset, data),
        }
    }

    /// A trapped write of BAR `index` at `offset`.
    pub fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        if index == ROM_INDEX {
            return; // a ROM ignores writes
        }
        let msi = self.msi.as_ref().map(|m| m.offset);
        match quirks::route_write(&mut self.quirks, index, offset, data, msi) {
            Route::Device => {}
            Route::Config(at) => {
                self.config_span(at, &mut data.to_vec(), true);
                return;
            }
            Route::ConfigAndDevice(at) => {
                self.config_span(at, &mut data.to_vec(), true);
                self.host.region_write(index, offset, data);
                return;
            }
        }
        match &mut self.msix {
            Some(msix) if msix.in_table(index, offset) => {
                if msix.write_table(offset, data) {
                    self.route_msix();
                }
            }
            Some(msix) if msix.in_pba(index, offset) => {} // read-only
            _ => self.host.region_write(index, offset, data),
        }
    }

    /// Unmap every BAR (the VMM is tearing the device down).
    pub fn unmap_all(&mut self) {
        for i in 0..self.bars.len() {
            self.map(i, None);
        }
    }

    /// Where the guest decodes `placed` now, or `None` while its decoding is off.
    fn decoded_at(&self, placed: &PlacedBar) -> Option<u64> {
        let on = match placed.bar.kind {
            BarKind::Io => self.command & COMMAND_IO != 0,
            _ if placed.bar.index == ROM_INDEX => {
                self.command & COMMAND_MEMORY != 0
                    && self.shadow.read_dword(ROM_BAR) & ROM_ENABLE != 0
            }
            _ => self.command & COMMAND_MEMORY != 0,
        };
        on.then_some(placed.address)
    }

    /// After a write to the shadow: the BAR registers may hold new addresses.
    pub(super) fn bars_written(&mut self) {
        let rom_address = u64::from(self.shadow.read_dword(ROM_BAR) & ROM_ADDRESS_MASK);
        for placed in &mut self.bars {
            placed.address = if placed.bar.index == ROM_INDEX {
                rom_address & !(placed.bar.size - 1)
            } else {
                bar::bar_address(&self.shadow, &placed.bar)
            };
        }
        self.sync_bars();
    }

    /// Map or unmap every BAR so that what is mapped matches what the guest decodes: a BAR
    /// is mapped at its register's address while its decode bit is on. Linux sizes BARs with
    /// decoding off, so sizing probes never map anything.
    pub(super) fn sync_bars(&mut self) {
        for i in 0..self.bars.len() {
            let Some(placed) = self.bars.get(i) else {
                continue;
            };
            let wanted = self.decoded_at(placed);
            if wanted != placed.mapped {
                self.map(i, wanted);
            }
        }
    }

    fn map(&mut self, i: usize, to: Option<u64>) {
        let Some(placed) = self.bars.get(i).copied() else {
            return;
        };
        if placed.mapped.is_none() && to.is_none() {
            return;
        }
        let traps = self.traps(placed.bar.index);
        let result = self.host.map_bar(&placed.bar, placed.mapped, to, &traps);
        let mapped = match result {
            Ok(()) => to,
            Err(e) => {
                log::warn!("BAR {} not mapped: {e}", placed.bar.index);
                None
            }
        };
        if let Some(placed) = self.bars.get_mut(i) {
            placed.mapped = mapped;
        }
    }
}
