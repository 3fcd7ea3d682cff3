//! The guest's view of a host PCI function: its configuration space and the parts of its
//! BARs that cannot be mapped straight into the guest.
//!
//! Identity and command go to the host function. BARs, the ROM BAR, the interrupt line and
//! the MSI/MSI-X controls are answered from the shadow (they describe the guest's machine,
//! not the host's), and capabilities the guest must not drive (Resizable BAR) are unlinked.
//! Everything the VMM must act on — a BAR to map, unmap or move, an interrupt route — is
//! asked of the [`HostFunction`], so the whole model is tested against a fake; the real one
//! wraps a VFIO device and the VM.

use std::ops::Range;

use super::bar::{self, Bar, BarKind, BarWindows, BAR0, BAR_COUNT};
use super::capability::{self, ext_id, id};
use super::config_space::{reg, ConfigSpace, CONFIG_DWORDS};
use super::msi::{MsiCapability, MsiKind, MsiVector, MsixCapability};
use super::PciFunction;
use minivmm_firmware::option_rom;

/// Expansion ROM BAR of a type-0 header.
const ROM_BAR: u16 = 0x30;
/// ROM BAR bit 0: the ROM decodes (when memory decoding is on too).
const ROM_ENABLE: u32 = 0x1;
/// Address bits of the ROM BAR (2 KiB granularity).
const ROM_ADDRESS_MASK: u32 = 0xffff_f800;
/// The index [`HostFunction::map_bar`] and the BAR accessors use for the ROM (VFIO's ROM
/// region index too).
pub const ROM_INDEX: u8 = 6;
/// Command register.
const COMMAND: u16 = 0x04;
/// Command bits: I/O space and memory space decoding.
const COMMAND_IO: u8 = 0x1;
const COMMAND_MEMORY: u8 = 0x2;
/// Command bit: bus master (DMA).
const COMMAND_MASTER: u8 = 0x4;
/// Extended configuration space size.
const CONFIG_BYTES: usize = CONFIG_DWORDS * 4;
/// Trapped parts of a BAR are whole host pages: a memory slot cannot be smaller.
const PAGE_SIZE: u64 = 4096;

/// What the passthrough model needs from the host function and the VM.
pub trait HostFunction: Send {
    /// Read the host function's configuration space (1, 2 or 4 bytes, within a dword).
    fn read_config(&self, offset: u16, data: &mut [u8]);
    /// Write the host function's configuration space.
    fn write_config(&self, offset: u16, data: &[u8]);
    /// Size of BAR `index`'s region, 0 when the BAR is unused.
    fn region_size(&self, index: u8) -> u64;
    /// Read BAR `index`'s region at `offset` (a trapped access).
    fn region_read(&self, index: u8, offset: u64, data: &mut [u8]);
    /// Write BAR `index`'s region at `offset` (a trapped access).
    fn region_write(&self, index: u8, offset: u64, data: &[u8]);
    /// Make `bar` appear at guest address `to` (`None`: nowhere), leaving `from`. The
    /// BAR-relative `traps` must exit to the VMM (through [`PassthroughFunction::bar_read`]
    /// and [`PassthroughFunction::bar_write`]); the rest may be mapped. An error (the address
    /// collides with RAM or another device) leaves the BAR unmapped.
    fn map_bar(
        &mut self,
        bar: &Bar,
        from: Option<u64>,
        to: Option<u64>,
        traps: &[Range<u64>],
    ) -> Result<(), String>;
    /// Route the function's MSI or MSI-X vectors (`None`: the mechanism is off, so INTx is
    /// back in use).
    fn set_msi(&mut self, kind: MsiKind, vectors: Option<&[MsiVector]>);
}

/// What the guest's ROM BAR shows.
#[derive(Clone, Debug, Default)]
pub enum RomSource {
    /// No ROM: the register reads 0 and ignores writes.
    #[default]
    None,
    /// The device's own ROM (its VFIO ROM region), when it has one.
    Device,
    /// An image from a file: read-only, bytes past it read as 0xFF.
    Image(std::sync::Arc<[u8]>),
}

/// A BAR and where the guest has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacedBar {
    /// The BAR.
    pub bar: Bar,
    /// Its address in the guest's configuration space.
    pub address: u64,
    /// Where the VMM has it mapped now, if anywhere.
    pub mapped: Option<u64>,
}

/// A host function as the guest sees it.
pub struct PassthroughFunction<H: HostFunction> {
    host: H,
    shadow: ConfigSpace,
    /// Dwords answered from the shadow instead of the host.
    emulated: Vec<bool>,
    bars: Vec<PlacedBar>,
    /// The command register's decode bits, snooped on their way to the host.
    command: u8,
    msi: Option<MsiCapability>,
    msix: Option<MsixCapability>,
    /// The ROM served, if any.
    rom: RomSource,
    /// The vectors last routed, to route again only on a change.
    msi_routed: Option<Vec<MsiVector>>,
    msix_routed: Option<Vec<MsiVector>>,
}

impl<H: HostFunction> std::fmt::Debug for PassthroughFunction<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughFunction")
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

/// Errors building the guest's view of a function.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// BAR decode or placement.
    #[error(transparent)]
    Bar(#[from] bar::Error),
    /// The MSI-X table or PBA lies outside its BAR.
    #[error("the MSI-X {0} at BAR {1} offset {2:#x} lies outside the BAR")]
    MsixOutsideBar(&'static str, u8, u64),
}

impl<H: HostFunction> PassthroughFunction<H> {
    /// Read `host`'s configuration space, place its BARs in `windows` and build the shadow.
    /// `interrupt_line` is what the guest's firmware would have written (the INTx GSI).
    pub fn new(host: H, windows: &mut BarWindows, interrupt_line: u8) -> Result<Self, Error> {
        Self::with_rom(host, windows, interrupt_line, RomSource::None)
    }

    /// [`Self::new`], with the ROM BAR serving `rom`.
    pub fn with_rom(
        host: H,
        windows: &mut BarWindows,
        interrupt_line: u8,
        rom: RomSource,
    ) -> Result<Self, Error> {
        let config = read_all(&host);
        // Decoding and bus mastering start off, as after a reset: the guest turns them on,
        // and that write is when the BARs get mapped.
        let command = config.get(usize::from(COMMAND)).copied().unwrap_or(0);
        let quiet = command & !(COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER);
        host.write_config(COMMAND, &[quiet]);
        let mut function = PassthroughFunction {
            host,
            shadow: ConfigSpace::new(),
            emulated: vec![false; CONFIG_DWORDS],
            bars: Vec::new(),
            command: quiet,
            msi: None,
            msix: None,
            rom: RomSource::None,
            msi_routed: None,
            msix_routed: None,
        };
        function.virtualize_bars(&config, windows)?;
        function.virtualize_rom(rom, windows)?;
        let interrupt = dword(&config, usize::from(reg::INTERRUPT));
        let pin = interrupt & 0xff00;
        let line = if pin == 0 {
            0xff
        } else {
            u32::from(interrupt_line)
        };
        function.emulate(reg::INTERRUPT, (interrupt & !0xff) | line, 0xff);
        function.virtualize_msi(&config)?;
        // Resizable BAR would resize a BAR behind the guest map; SR-IOV would create host
        // functions from inside the guest.
        function.hide_extended(&config, &[ext_id::RESIZABLE_BAR, ext_id::SRIOV]);
        Ok(function)
    }

    /// The BARs, where the guest has them and where they are mapped.
    pub fn bars(&self) -> &[PlacedBar] {
        &self.bars
    }

    /// The host side.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host side, mutably (the VMM finishes wiring it after the model is built).
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// True when the function has an interrupt pin (INTx).
    pub fn has_intx(&self) -> bool {
        self.shadow.read_dword(reg::INTERRUPT) & 0xff00 != 0
    }

    /// The BAR-relative ranges of BAR `index` that must trap: the pages holding the
    /// MSI-X table and PBA.
    pub fn traps(&self, index: u8) -> Vec<Range<u64>> {
        let Some(msix) = &self.msix else {
            return Vec::new();
        };
        let mut traps: Vec<Range<u64>> = Vec::new();
        let areas = [
            (msix.table_bar, msix.table_offset, msix.table_len()),
            (msix.pba_bar, msix.pba_offset, msix.pba_len()),
        ];
        for (bar, offset, len) in areas {
            if bar != index {
                continue;
            }
            let start = offset / PAGE_SIZE * PAGE_SIZE;
            let end = (offset + len).div_ceil(PAGE_SIZE) * PAGE_SIZE;
            match traps.last_mut() {
                Some(last) if start <= last.end && end >= last.start => {
                    last.start = last.start.min(start);
                    last.end = last.end.max(end);
                }
                _ => traps.push(start..end),
            }
        }
        traps.sort_by_key(|r| r.start);
        traps
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

    fn emulate(&mut self, offset: u16, value: u32, writable: u32) {
        self.shadow.init_dword(offset, value, writable);
        if let Some(flag) = self.emulated.get_mut(usize::from(offset / 4)) {
            *flag = true;
        }
    }

    fn is_emulated(&self, offset: u16) -> bool {
        self.emulated
            .get(usize::from(offset / 4))
            .copied()
            .unwrap_or(true)
    }

    fn virtualize_bars(&mut self, config: &[u8], windows: &mut BarWindows) -> Result<(), Error> {
        let mut registers = [0u32; BAR_COUNT as usize];
        for (i, register) in registers.iter_mut().enumerate() {
            *register = dword(config, usize::from(BAR0) + 4 * i);
        }
        // Every BAR register is the shadow's: unused ones read 0 and ignore writes.
        for i in 0..u16::from(BAR_COUNT) {
            self.emulate(BAR0 + 4 * i, 0, 0);
        }
        for bar in bar::decode_bars(registers, |i| self.host.region_size(i))? {
            let address = bar::place(&bar, windows)?;
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
    /// bit) over a ROM placed in the 32-bit window, served read-only through its trap.
    fn virtualize_rom(&mut self, rom: RomSource, windows: &mut BarWindows) -> Result<(), Error> {
        let size = match &rom {
            RomSource::None => 0,
            RomSource::Device => self.host.region_size(ROM_INDEX),
            RomSource::Image(image) => option_rom::bar_size(image.len()),
        };
        if size == 0 || !size.is_power_of_two() || size > 1 << 31 {
            self.emulate(ROM_BAR, 0, 0);
            return Ok(());
        }
        let bar = Bar {
            index: ROM_INDEX,
            kind: BarKind::Mem32,
            prefetchable: false,
            size,
        };
        let address = bar::place(&bar, windows)?;
        let mask = ROM_ADDRESS_MASK & !((size - 1) as u32);
        self.emulate(ROM_BAR, address as u32, mask | ROM_ENABLE);
        self.bars.push(PlacedBar {
            bar,
            address,
            mapped: None,
        });
        self.rom = rom;
        Ok(())
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

    /// Take over the MSI and MSI-X capabilities: the guest's programming lives in the
    /// shadow (and the MSI-X table in the model), and reaches the VMM as vector routes.
    fn virtualize_msi(&mut self, config: &[u8]) -> Result<(), Error> {
        for cap in capability::standard(config) {
            let offset = cap.offset;
            let header = dword(config, usize::from(offset));
            match cap.id {
                id::MSI if self.msi.is_none() => {
                    let msi = MsiCapability::new(offset, header);
                    for at in (offset..offset + msi.len()).step_by(4) {
                        self.emulate(at, 0, 0);
                    }
                    msi.init_shadow(&mut self.shadow, header);
                    self.msi = Some(msi);
                }
                id::MSIX if self.msix.is_none() => {
                    let table = dword(config, usize::from(offset) + 4);
                    let pba = dword(config, usize::from(offset) + 8);
                    let msix = MsixCapability::new(offset, header, table, pba);
                    self.check_in_bar(
                        "table",
                        msix.table_bar,
                        msix.table_offset,
                        msix.table_len(),
                    )?;
                    self.check_in_bar("PBA", msix.pba_bar, msix.pba_offset, msix.pba_len())?;
                    self.emulate(offset, 0, 0);
                    msix.init_shadow(&mut self.shadow, header);
                    self.msix = Some(msix);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_in_bar(
        &self,
        what: &'static str,
        index: u8,
        offset: u64,
        len: u64,
    ) -> Result<(), Error> {
        let fits = self.bars.iter().any(|b| {
            b.bar.index == index && b.bar.kind != BarKind::Io && offset + len <= b.bar.size
        });
        if fits {
            Ok(())
        } else {
            Err(Error::MsixOutsideBar(what, index, offset))
        }
    }

    /// Unlink every extended capability whose id is in `hidden` from the guest's list: each
    /// kept capability (or a null one at 0x100, where the list must start) points past them.
    fn hide_extended(&mut self, config: &[u8], hidden: &[u16]) {
        let caps = capability::extended(config);
        if !caps.iter().any(|c| hidden.contains(&c.id)) {
            return;
        }
        let kept: Vec<_> = caps.iter().filter(|c| !hidden.contains(&c.id)).collect();
        let first_hidden = caps.first().is_some_and(|c| hidden.contains(&c.id));
        // The headers that stay, each with its next pointer set to the next kept one.
        let mut links: Vec<(u16, u32)> = Vec::new();
        if first_hidden {
            links.push((0x100, 0));
        }
        for cap in &kept {
            links.push((
                cap.offset,
                dword(config, usize::from(cap.offset)) & 0x000f_ffff,
            ));
        }
        for i in 0..links.len() {
            let Some(&(offset, header)) = links.get(i) else {
                continue;
            };
            let next = links.get(i + 1).map_or(0, |l| u32::from(l.0) << 20);
            if dword(config, usize::from(offset)) != header | next {
                self.emulate(offset, header | next, 0);
            }
        }
    }

    /// Map or unmap every BAR so that what is mapped matches what the guest decodes: a BAR
    /// is mapped at its register's address while its decode bit is on. Linux sizes BARs with
    /// decoding off, so sizing probes never map anything.
    fn sync_bars(&mut self) {
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

    fn route_msi(&mut self) {
        let vectors = self.msi.as_ref().and_then(|m| m.vectors(&self.shadow));
        if vectors != self.msi_routed {
            self.host.set_msi(MsiKind::Msi, vectors.as_deref());
            self.msi_routed = vectors;
        }
    }

    fn route_msix(&mut self) {
        let vectors = self.msix.as_ref().and_then(|m| m.vectors(&self.shadow));
        if vectors != self.msix_routed {
            self.host.set_msi(MsiKind::Msix, vectors.as_deref());
            self.msix_routed = vectors;
        }
    }

    /// After a shadow write: pick up BAR addresses and interrupt programming.
    fn shadow_written(&mut self, offset: u16) {
        let rom_address = u64::from(self.shadow.read_dword(ROM_BAR) & ROM_ADDRESS_MASK);
        for placed in &mut self.bars {
            placed.address = if placed.bar.index == ROM_INDEX {
                rom_address & !(placed.bar.size - 1)
            } else {
                bar::bar_address(&self.shadow, &placed.bar)
            };
        }
        self.sync_bars();
        if self.msi.as_ref().is_some_and(|m| m.contains(offset)) {
            self.route_msi();
        }
        if self.msix.as_ref().is_some_and(|m| m.is_header(offset)) {
            self.route_msix();
        }
    }
}

/// The host function's whole configuration space, dword by dword.
fn read_all(host: &impl HostFunction) -> Vec<u8> {
    let mut config = vec![0u8; CONFIG_BYTES];
    for (i, chunk) in config.chunks_mut(4).enumerate() {
        host.read_config((i * 4) as u16, chunk);
    }
    config
}

fn dword(config: &[u8], offset: usize) -> u32 {
    config
        .get(offset..offset + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

impl<H: HostFunction> PciFunction for PassthroughFunction<H> {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if self.is_emulated(offset) {
            self.shadow.read(offset, data);
        } else {
            self.host.read_config(offset, data);
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        if !self.is_emulated(offset) {
            self.host.write_config(offset, data);
            if offset == COMMAND {
                if let Some(&command) = data.first() {
                    self.command = command;
                    self.sync_bars();
                }
            }
            return;
        }
        self.shadow.write(offset, data);
        self.shadow_written(offset);
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vm_allocator::AddressAllocator;

    /// A `map_bar` call: BAR index, from, to, traps.
    type MapCall = (u8, Option<u64>, Option<u64>, Vec<Range<u64>>);

    /// What a fake host saw.
    #[derive(Default)]
    struct Seen {
        config_writes: Vec<(u16, Vec<u8>)>,
        region_writes: Vec<(u8, u64, Vec<u8>)>,
        maps: Vec<MapCall>,
        msi: Vec<(MsiKind, Option<Vec<MsiVector>>)>,
    }

    /// A host function: its configuration bytes, region sizes, and what it was asked.
    #[derive(Clone)]
    struct FakeHost {
        config: Arc<Mutex<Vec<u8>>>,
        sizes: [u64; 6],
        seen: Arc<Mutex<Seen>>,
        /// Guest addresses `map_bar` refuses.
        refuse: Option<u64>,
        /// Size of the device's own ROM region.
        rom_size: u64,
    }

    impl HostFunction for FakeHost {
        fn read_config(&self, offset: u16, data: &mut [u8]) {
            let config = self.config.lock().unwrap();
            let start = usize::from(offset);
            data.copy_from_slice(&config[start..start + data.len()]);
        }
        fn write_config(&self, offset: u16, data: &[u8]) {
            self.seen
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn region_size(&self, index: u8) -> u64 {
            if index == ROM_INDEX {
                return self.rom_size;
            }
            self.sizes[usize::from(index)]
        }
        fn region_read(&self, index: u8, offset: u64, data: &mut [u8]) {
            data.fill(index.wrapping_add(offset as u8));
        }
        fn region_write(&self, index: u8, offset: u64, data: &[u8]) {
            self.seen
                .lock()
                .unwrap()
                .region_writes
                .push((index, offset, data.to_vec()));
        }
        fn map_bar(
            &mut self,
            bar: &Bar,
            from: Option<u64>,
            to: Option<u64>,
            traps: &[Range<u64>],
        ) -> Result<(), String> {
            if to.is_some() && to == self.refuse {
                return Err("overlaps RAM".into());
            }
            self.seen
                .lock()
                .unwrap()
                .maps
                .push((bar.index, from, to, traps.to_vec()));
            Ok(())
        }
        fn set_msi(&mut self, kind: MsiKind, vectors: Option<&[MsiVector]>) {
            self.seen
                .lock()
                .unwrap()
                .msi
                .push((kind, vectors.map(<[_]>::to_vec)));
        }
    }

    impl FakeHost {
        fn maps(&self) -> Vec<MapCall> {
            std::mem::take(&mut self.seen.lock().unwrap().maps)
        }
        fn msi(&self) -> Vec<(MsiKind, Option<Vec<MsiVector>>)> {
            std::mem::take(&mut self.seen.lock().unwrap().msi)
        }
    }

    fn put(config: &mut [u8], offset: usize, value: u32) {
        config[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn host(config: Vec<u8>, sizes: [u64; 6]) -> FakeHost {
        FakeHost {
            config: Arc::new(Mutex::new(config)),
            sizes,
            seen: Arc::default(),
            refuse: None,
            rom_size: 0,
        }
    }

    /// A display controller (1002:6660, class 0380) with a 64-bit prefetchable 256 MiB
    /// BAR 0, a 256 KiB BAR 2, a ROM, INTA, MSI, and AER then Resizable BAR in extended
    /// space.
    fn radeon() -> FakeHost {
        let mut config = vec![0u8; CONFIG_BYTES];
        put(&mut config, 0x00, 0x6660_1002);
        put(&mut config, 0x04, 0x0010_0007);
        put(&mut config, 0x08, 0x0380_0000);
        put(&mut config, 0x10, 0xe000_000c);
        put(&mut config, 0x18, 0xfe80_0000);
        put(&mut config, 0x30, 0xfe84_0001);
        put(&mut config, 0x34, 0x50);
        put(&mut config, 0x3c, 0x0000_010b); // INTA, host line 11
        put(&mut config, 0x50, 0x0080_0005); // MSI, 64-bit, 1 message, end of list
        put(&mut config, 0x100, 0x1501_0001); // AER, next 0x150
        put(&mut config, 0x150, 0x2001_0015); // Resizable BAR, next 0x200
        put(&mut config, 0x200, 0x0001_000b); // vendor specific, end
        host(config, [256 << 20, 0, 256 << 10, 0, 0, 0])
    }

    /// A function with MSI-X: 8 vectors, table at BAR 0 + 0x3000, PBA at BAR 0 + 0x3800,
    /// in a 16 KiB BAR, and an I/O BAR 1.
    fn nic() -> FakeHost {
        let mut config = vec![0u8; CONFIG_BYTES];
        put(&mut config, 0x00, 0x10d3_8086);
        put(&mut config, 0x04, 0x0010_0000);
        put(&mut config, 0x10, 0);
        put(&mut config, 0x14, 0x1);
        put(&mut config, 0x34, 0x70);
        put(&mut config, 0x70, 0x0007_0011);
        put(&mut config, 0x74, 0x3000);
        put(&mut config, 0x78, 0x3800);
        host(config, [16 << 10, 32, 0, 0, 0, 0])
    }

    fn windows() -> BarWindows {
        BarWindows {
            io: AddressAllocator::new(0xc000, 0x4000).unwrap(),
            mmio32: AddressAllocator::new(0xc000_0000, 0x2000_0000).unwrap(),
            mmio64: AddressAllocator::new(1 << 32, 64 << 30).unwrap(),
        }
    }

    fn read32(function: &mut PassthroughFunction<FakeHost>, offset: u16) -> u32 {
        let mut data = [0u8; 4];
        function.config_read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn guest_view(function: &mut PassthroughFunction<FakeHost>) -> Vec<u8> {
        let mut config = vec![0u8; CONFIG_BYTES];
        for i in 0..CONFIG_DWORDS {
            let value = read32(function, (i * 4) as u16);
            put(&mut config, i * 4, value);
        }
        config
    }

    #[test]
    fn identity_comes_from_the_host_and_bars_from_the_guest_map() {
        let mut function = PassthroughFunction::new(radeon(), &mut windows(), 17).unwrap();
        assert_eq!(read32(&mut function, 0x00), 0x6660_1002);
        assert_eq!(read32(&mut function, 0x08) >> 16, 0x0380);
        let bars: Vec<_> = function
            .bars()
            .iter()
            .map(|b| (b.bar.index, b.address))
            .collect();
        assert_eq!(bars, vec![(0, 1 << 32), (2, 0xc000_0000)]);
        assert_eq!(
            read32(&mut function, 0x10),
            0x0000_000c,
            "host address not shown"
        );
        assert_eq!(read32(&mut function, 0x14), 0x1);
        assert_eq!(read32(&mut function, 0x18), 0xc000_0000);
        assert_eq!(read32(&mut function, 0x1c), 0, "unused BAR");
        assert_eq!(read32(&mut function, 0x30), 0, "no ROM yet");
        assert_eq!(read32(&mut function, 0x3c), 0x0000_0111, "INTA on GSI 17");
        assert!(function.has_intx());
    }

    #[test]
    fn decoding_starts_off_and_command_writes_reach_the_host_but_bar_writes_do_not() {
        let host = radeon();
        let mut function = PassthroughFunction::new(host.clone(), &mut windows(), 16).unwrap();
        function.config_write(0x04, &[0x06, 0x00]);
        function.config_write(0x18, &[0xff; 4]);
        function.config_write(0x30, &[0xff; 4]);
        assert_eq!(
            host.seen.lock().unwrap().config_writes,
            vec![(0x04, vec![0x00]), (0x04, vec![0x06, 0x00])]
        );
    }

    #[test]
    fn bars_are_mapped_while_memory_decoding_is_on_and_sizing_maps_nothing() {
        let host = radeon();
        let mut function = PassthroughFunction::new(host.clone(), &mut windows(), 16).unwrap();
        // Linux: decoding off, probe, restore, program, decoding on.
        function.config_write(0x18, &[0xff; 4]);
        assert_eq!(
            read32(&mut function, 0x18),
            0xfffc_0000,
            "256 KiB size mask"
        );
        function.config_write(0x18, &0xc000_0000u32.to_le_bytes());
        function.config_write(0x18, &0xc010_0000u32.to_le_bytes());
        assert!(host.maps().is_empty());
        function.config_write(0x04, &[0x02, 0x00]);
        assert_eq!(
            host.maps(),
            vec![
                (0, None, Some(1 << 32), vec![]),
                (2, None, Some(0xc010_0000), vec![])
            ]
        );
        // Decoding off unmaps.
        function.config_write(0x04, &[0x00, 0x00]);
        assert_eq!(
            host.maps(),
            vec![
                (0, Some(1 << 32), None, vec![]),
                (2, Some(0xc010_0000), None, vec![])
            ]
        );
    }

    #[test]
    fn with_decode_on_a_new_address_moves_the_bar_at_once() {
        let host = radeon();
        let mut function = PassthroughFunction::new(host.clone(), &mut windows(), 16).unwrap();
        function.config_write(0x04, &[0x02, 0x00]);
        host.maps();
        function.config_write(0x14, &0x2u32.to_le_bytes());
        assert_eq!(host.maps(), vec![(0, Some(1 << 32), Some(2 << 32), vec![])]);
        assert_eq!(function.bars()[0].mapped, Some(2 << 32));
    }

    #[test]
    fn a_refused_address_leaves_the_bar_unmapped_until_it_moves_again() {
        let mut host = radeon();
        host.refuse = Some(0xc100_0000);
        let mut function = PassthroughFunction::new(host.clone(), &mut windows(), 16).unwrap();
        function.config_write(0x04, &[0x02, 0x00]);
        host.maps();
        function.config_write(0x18, &0xc100_0000u32.to_le_bytes());
        assert_eq!(function.bars()[1].mapped, None);
        function.config_write(0x18, &0xc020_0000u32.to_le_bytes());
        assert_eq!(host.maps(), vec![(2, None, Some(0xc020_0000), vec![])]);
    }

    #[test]
    fn io_bars_follow_io_decoding() {
        let host = nic();
        let mut function = PassthroughFunction::new(host.clone(), &mut windows(), 16).unwrap();
        function.config_write(0x04, &[0x01, 0x00]);
        let maps = host.maps();
        assert_eq!(maps.len(), 1);
        assert_eq!((maps[0].0, maps[0].2), (1, Some(0xc000)));
    }

    #[test]
    fn resizable_bar_is_unlinked_from_the_extended_list() {
        let mut function = PassthroughFunction::new(radeon(), &mut windows(), 16).unwrap();
        let ids: Vec<u16> = capability::extended(&guest_view(&mut function))
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, vec![ext_id::AER, 0x000b]);
    }

    #[test]
    fn sr_iov_is_hidden_too_wherever_it_sits() {
        let host = radeon();
        {
            let mut config = host.config.lock().unwrap();
            put(&mut config, 0x100, 0x1601_0010); // SR-IOV, next 0x160
            put(&mut config, 0x160, 0x1501_0001); // AER, next 0x150
            put(&mut config, 0x150, 0x2001_0015); // Resizable BAR, next 0x200
        }
        let mut function = PassthroughFunction::new(host, &mut windows(), 16).unwrap();
        let ids: Vec<u16> = capability::extended(&guest_view(&mut function))
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, vec![0, ext_id::AER, 0x000b]);
    }

    #[test]
    fn a_resizable_bar_first_in_the_list_becomes_a_null_capability() {
        let host = radeon();
        put(&mut host.config.lock().unwrap(), 0x100, 0x2001_0015);
        let mut function = PassthroughFunction::new(host, &mut windows(), 16).unwrap();
        let ids: Vec<u16> = capability::extended(&guest_view(&mut function))
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, vec![0, 0x000b]);
    }

    #[test]
    fn msi_programming_is_routed_on_enable_and_on_change_only() {
        let host = radeon();
        let mut function = PassthroughFunction::new(host.clone(), &mut windows(), 16).unwrap();
        function.config_write(0x54, &0xfee0_0000u32.to_le_bytes());
        function.config_write(0x5c, &0x0041u16.to_le_bytes());
        assert!(host.msi().is_empty(), "nothing routed while MSI is off");
        function.config_write(0x52, &1u16.to_le_bytes());
        let vector = MsiVector {
            address: 0xfee0_0000,
            data: 0x41,
            masked: false,
        };
        assert_eq!(host.msi(), vec![(MsiKind::Msi, Some(vec![vector]))]);
        function.config_write(0x54, &0xfee0_0000u32.to_le_bytes());
        assert!(host.msi().is_empty(), "same programming, no new route");
        function.config_write(0x52, &0u16.to_le_bytes());
        assert_eq!(host.msi(), vec![(MsiKind::Msi, None)]);
        // The guest reads back its programming, not the host's registers.
        assert_eq!(read32(&mut function, 0x54), 0xfee0_0000);
        assert!(host
            .seen
            .lock()
            .unwrap()
            .config_writes
            .iter()
            .all(|(offset, _)| *offset == 0x04));
    }

    #[test]
    fn msix_table_pages_trap_and_vectors_route_with_their_masks() {
        let host = nic();
        let mut function = PassthroughFunction::new(host.clone(), &mut windows(), 16).unwrap();
        assert_eq!(function.traps(0), vec![0x3000..0x4000]);
        assert!(function.traps(1).is_empty());
        function.config_write(0x04, &[0x02, 0x00]);
        assert_eq!(
            host.maps(),
            vec![(0, None, Some(0xc000_0000), vec![0x3000..0x4000])]
        );

        function.bar_write(0, 0x3010, &0xfee0_0000u32.to_le_bytes());
        function.bar_write(0, 0x3018, &0x51u32.to_le_bytes());
        function.bar_write(0, 0x301c, &0u32.to_le_bytes());
        assert!(host.msi().is_empty(), "MSI-X still off");
        function.config_write(0x72, &0x8000u16.to_le_bytes());
        let routed = host.msi();
        assert_eq!(routed.len(), 1);
        let vectors = routed[0].1.clone().unwrap();
        assert_eq!(vectors.len(), 8);
        assert!(!vectors[1].masked && vectors[1].data == 0x51);
        assert!(vectors[0].masked);
        // Masking vector 1 routes again.
        function.bar_write(0, 0x301c, &1u32.to_le_bytes());
        let routed = host.msi();
        assert!(routed[0].1.as_ref().unwrap()[1].masked);

        // Table reads come from the model, other trapped bytes from the device.
        let mut data = [0u8; 4];
        function.bar_read(0, 0x3018, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x51);
        function.bar_read(0, 0x3800, &mut data);
        assert_eq!(data, [0u8.wrapping_add(0x3800u64 as u8); 4]);
        function.bar_write(0, 0x3804, &[1, 2, 3, 4]);
        function.bar_write(0, 0x3f00, &[9]);
        assert_eq!(
            host.seen.lock().unwrap().region_writes,
            vec![(0, 0x3f00, vec![9])],
            "PBA writes are dropped, others reach the device"
        );
    }

    #[test]
    fn an_image_rom_decodes_like_a_rom_bar_and_reads_back() {
        let host = radeon();
        let image: std::sync::Arc<[u8]> = vec![0x55, 0xaa, 0x10, 0x20].into();
        let mut function = PassthroughFunction::with_rom(
            host.clone(),
            &mut windows(),
            16,
            RomSource::Image(image),
        )
        .unwrap();
        let address = read32(&mut function, 0x30);
        assert_eq!(address & 0x7ff, 0, "placed, disabled");
        assert!(address >= 0xc000_0000);
        // Size probe: 2 KiB minimum, enable bit writable.
        function.config_write(0x30, &0xffff_fffeu32.to_le_bytes());
        assert_eq!(read32(&mut function, 0x30), 0xffff_f800);
        function.config_write(0x30, &(0xc080_0000u32 | 1).to_le_bytes());
        assert!(host.maps().is_empty(), "memory decoding is still off");
        function.config_write(0x04, &[0x02, 0x00]);
        let maps = host.maps();
        assert!(
            maps.contains(&(ROM_INDEX, None, Some(0xc080_0000), vec![])),
            "{maps:?}"
        );
        let mut data = [0u8; 8];
        function.bar_read(ROM_INDEX, 0, &mut data);
        assert_eq!(data, [0x55, 0xaa, 0x10, 0x20, 0xff, 0xff, 0xff, 0xff]);
        function.bar_write(ROM_INDEX, 0, &[0; 4]);
        function.bar_read(ROM_INDEX, 0, &mut data[..2]);
        assert_eq!(&data[..2], &[0x55, 0xaa], "read-only");
        // Clearing the enable bit unmaps it.
        function.config_write(0x30, &0xc080_0000u32.to_le_bytes());
        assert_eq!(
            host.maps(),
            vec![(ROM_INDEX, Some(0xc080_0000), None, vec![])]
        );
    }

    #[test]
    fn the_devices_own_rom_is_read_through_the_host() {
        let mut host = radeon();
        let mut function =
            PassthroughFunction::with_rom(host.clone(), &mut windows(), 16, RomSource::Device)
                .unwrap();
        assert_eq!(
            read32(&mut function, 0x30),
            0,
            "a device without a ROM shows none"
        );
        host.rom_size = 64 << 10;
        let mut function =
            PassthroughFunction::with_rom(host.clone(), &mut windows(), 16, RomSource::Device)
                .unwrap();
        function.config_write(0x30, &0xffff_f800u32.to_le_bytes());
        assert_eq!(read32(&mut function, 0x30), 0xffff_0000, "64 KiB");
        let mut data = [0u8; 2];
        function.bar_read(ROM_INDEX, 0x10, &mut data);
        assert_eq!(
            data,
            [ROM_INDEX + 0x10; 2],
            "read from the host's ROM region"
        );
    }

    #[test]
    fn an_msix_table_outside_its_bar_is_refused() {
        let host = nic();
        put(&mut host.config.lock().unwrap(), 0x74, 0x8000);
        assert_eq!(
            PassthroughFunction::new(host, &mut windows(), 16).unwrap_err(),
            Error::MsixOutsideBar("table", 0, 0x8000)
        );
    }
}
