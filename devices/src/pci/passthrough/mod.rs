//! The guest's view of a host PCI function: its configuration space and the parts of its
//! BARs that cannot be mapped straight into the guest.
//!
//! Identity and command go to the host function. BARs, the ROM BAR, the interrupt line,
//! the multi-function bit and the MSI/MSI-X controls are answered from the shadow (they
//! describe the guest's machine, not the host's), and capabilities the guest must not drive
//! (Resizable BAR, SR-IOV) are unlinked. Everything the VMM must act on — a BAR to map,
//! unmap or move, an interrupt route — is asked of the [`HostFunction`], so the whole model
//! is tested against a fake; the real one wraps a VFIO device and the VM.
//!
//! The parts: this file routes configuration accesses between the shadow and the host;
//! [`bars`] places, maps and serves the BARs and the ROM; [`interrupts`] takes over MSI and
//! MSI-X; [`express`] shows the PCI Express link of a function behind a root port;
//! [`quirks`] sends the vendor windows to configuration space in a GPU's BARs through it.

mod bars;
mod express;
mod interrupts;
pub mod quirks;
#[cfg(test)]
mod tests;
pub mod vga;

use std::ops::Range;

pub use bars::needs;

use super::bar::{self, Bar};
use super::capability::{self, ext_id};
use super::config_space::{reg, ConfigSpace, CONFIG_DWORDS};
use super::link::PcieLink;
use super::msi::{MsiCapability, MsiKind, MsiVector, MsixCapability};
use super::resources::Placement;
use super::PciFunction;

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
/// Header type register's multi-function bit, in the header-type dword.
const HEADER_MULTI_FUNCTION: u32 = 0x80 << 16;
/// Extended configuration space size.
const CONFIG_BYTES: usize = CONFIG_DWORDS * 4;

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

/// How the guest's machine shows the function: where the VMM's PCI tree put it.
#[derive(Clone, Debug)]
pub struct Setup<'a> {
    /// Where its BARs and ROM go (from [`super::resources::assign`]).
    pub placement: &'a Placement,
    /// Interrupt Line: the INTx GSI, as firmware would have written it.
    pub interrupt_line: u8,
    /// What the ROM BAR shows.
    pub rom: RomSource,
    /// Its guest slot has other functions: the header type says multi-function (and says
    /// single-function otherwise, whatever the host slot has).
    pub multifunction: bool,
    /// The link of the root port it sits behind (`None`: on bus 0).
    pub port_link: Option<PcieLink>,
    /// Apply the vendor quirks ([`quirks`]); off only for research (`quirks=off`).
    pub quirks: bool,
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
    /// Per dword, the bits answered from the shadow instead of the host.
    emulated: Vec<u32>,
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
    /// Windows to configuration space in its BARs.
    quirks: Vec<quirks::Quirk>,
    /// The window to config space in the VGA ports, if the device has one.
    vga_quirk: Option<vga::VgaQuirk>,
    /// How the guest's machine shows it, kept for a rebuild after a reset.
    setup: KeptSetup,
}

/// [`Setup`], owned.
#[derive(Clone, Debug)]
struct KeptSetup {
    placement: Placement,
    interrupt_line: u8,
    rom: RomSource,
    multifunction: bool,
    port_link: Option<PcieLink>,
    quirks: bool,
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
    /// BAR decode.
    #[error(transparent)]
    Bar(#[from] bar::Error),
    /// The placement has no address for a BAR the function has.
    #[error("BAR {0} was not placed")]
    Unplaced(u8),
    /// The MSI-X table or PBA lies outside its BAR.
    #[error("the MSI-X {0} at BAR {1} offset {2:#x} lies outside the BAR")]
    MsixOutsideBar(&'static str, u8, u64),
}

impl<H: HostFunction> PassthroughFunction<H> {
    /// Read `host`'s configuration space and build the guest's view of it as `setup` says.
    /// Decoding and bus mastering are off until [`Self::hand_off`] (or the guest) turns
    /// decoding on.
    pub fn new(host: H, setup: Setup<'_>) -> Result<Self, Error> {
        let mut function = PassthroughFunction {
            host,
            shadow: ConfigSpace::new(),
            emulated: vec![0; CONFIG_DWORDS],
            bars: Vec::new(),
            command: 0,
            msi: None,
            msix: None,
            rom: RomSource::None,
            msi_routed: None,
            msix_routed: None,
            quirks: Vec::new(),
            vga_quirk: None,
            setup: KeptSetup {
                placement: setup.placement.clone(),
                interrupt_line: setup.interrupt_line,
                rom: setup.rom,
                multifunction: setup.multifunction,
                port_link: setup.port_link,
                quirks: setup.quirks,
            },
        };
        function.build()?;
        Ok(function)
    }

    /// The guest's view from the host function's configuration space as it is now, placed
    /// as the kept setup says.
    fn build(&mut self) -> Result<(), Error> {
        let config = read_all(&self.host);
        let command = config.get(usize::from(COMMAND)).copied().unwrap_or(0);
        let quiet = command & !(COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER);
        self.host.write_config(COMMAND, &[quiet]);
        self.command = quiet;
        let setup = self.setup.clone();
        self.virtualize_bars(&config, &setup.placement)?;
        if setup.quirks {
            let vendor = u16::from_le_bytes([
                config.first().copied().unwrap_or(0),
                config.get(1).copied().unwrap_or(0),
            ]);
            let class = config.get(0x0b).copied().unwrap_or(0);
            self.quirks = quirks::for_function(vendor, class, &self.bars);
            self.vga_quirk = vga::VgaQuirk::for_function(vendor, class, &self.bars);
        }
        self.virtualize_rom(setup.rom.clone(), &setup.placement);
        let interrupt = dword(&config, usize::from(reg::INTERRUPT));
        let pin = interrupt & 0xff00;
        let line = if pin == 0 {
            0xff
        } else {
            u32::from(setup.interrupt_line)
        };
        self.emulate(reg::INTERRUPT, (interrupt & !0xff) | line, 0xff);
        let header = dword(&config, usize::from(reg::HEADER_TYPE)) & !HEADER_MULTI_FUNCTION;
        let multi = if setup.multifunction {
            HEADER_MULTI_FUNCTION
        } else {
            0
        };
        self.emulate_bits(reg::HEADER_TYPE, header | multi, HEADER_MULTI_FUNCTION, 0);
        self.virtualize_msi(&config)?;
        if let Some(link) = &setup.port_link {
            self.virtualize_express(&config, link);
        }
        // Resizable BAR would resize a BAR behind the guest map; SR-IOV would create host
        // functions from inside the guest.
        self.hide_extended(&config, &[ext_id::RESIZABLE_BAR, ext_id::SRIOV]);
        Ok(())
    }

    /// Before the host function is reset (a guest reboot): its BARs unmapped, MSI and MSI-X
    /// routes gone (INTx is back in use), decoding and bus mastering off.
    pub fn quiesce(&mut self) {
        self.unmap_all();
        if self.msi_routed.take().is_some() {
            self.host.set_msi(MsiKind::Msi, None);
        }
        if self.msix_routed.take().is_some() {
            self.host.set_msi(MsiKind::Msix, None);
        }
        self.command &= !(COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER);
        self.host.write_config(COMMAND, &[self.command]);
    }

    /// After the host function was reset: the guest's view built again as at the start
    /// (from what the device's configuration space holds now), then handed off as firmware
    /// leaves it. Call [`Self::quiesce`] first.
    pub fn rebuild(&mut self) -> Result<(), Error> {
        self.shadow = ConfigSpace::new();
        self.emulated = vec![0; CONFIG_DWORDS];
        self.bars.clear();
        self.msi = None;
        self.msix = None;
        self.rom = RomSource::None;
        self.quirks.clear();
        self.build()?;
        self.hand_off();
        Ok(())
    }

    /// Leave the function as firmware leaves one whose BARs it assigned: memory decoding on
    /// (and I/O decoding, when it has I/O BARs), so its BARs are mapped and its ROM can be
    /// read before a driver binds. Bus mastering stays off.
    pub fn hand_off(&mut self) {
        let mut decode = 0;
        for placed in &self.bars {
            decode |= match placed.bar.kind {
                bar::BarKind::Io => COMMAND_IO,
                _ => COMMAND_MEMORY,
            };
        }
        if decode == 0 {
            return;
        }
        self.command |= decode;
        self.host.write_config(COMMAND, &[self.command]);
        self.sync_bars();
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

    /// The VGA-port quirk, for the legacy VGA ranges to consult.
    pub(super) fn vga_quirk_mut(&mut self) -> Option<&mut vga::VgaQuirk> {
        self.vga_quirk.as_mut()
    }

    /// The vendor quirks in force.
    pub fn quirks(&self) -> &[quirks::Quirk] {
        &self.quirks
    }

    /// True when the function has an interrupt pin (INTx).
    pub fn has_intx(&self) -> bool {
        self.shadow.read_dword(reg::INTERRUPT) & 0xff00 != 0
    }

    /// Answer the whole dword at `offset` from the shadow: `value`, of which the guest may
    /// change the `writable` bits.
    fn emulate(&mut self, offset: u16, value: u32, writable: u32) {
        self.emulate_bits(offset, value, !0, writable);
    }

    /// Answer the `bits` of the dword at `offset` from the shadow (`value`'s), the others
    /// from the host.
    fn emulate_bits(&mut self, offset: u16, value: u32, bits: u32, writable: u32) {
        self.shadow.init_dword(offset, value, writable & bits);
        if let Some(mask) = self.emulated.get_mut(usize::from(offset / 4)) {
            *mask |= bits;
        }
    }

    /// The bits of the dword at `offset` the shadow answers.
    fn emulated_bits(&self, offset: u16) -> u32 {
        self.emulated
            .get(usize::from(offset / 4))
            .copied()
            .unwrap_or(!0)
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

    /// After a shadow write: pick up BAR addresses and interrupt programming.
    fn shadow_written(&mut self, offset: u16) {
        self.bars_written();
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
        match self.emulated_bits(offset) {
            0 => self.host.read_config(offset, data),
            u32::MAX => self.shadow.read(offset, data),
            bits => {
                // Some bits of the dword are the shadow's: merge whole dwords, then slice.
                let aligned = offset & !3;
                let mut host = [0u8; 4];
                self.host.read_config(aligned, &mut host);
                let value =
                    (u32::from_le_bytes(host) & !bits) | (self.shadow.read_dword(aligned) & bits);
                let shift = usize::from(offset % 4);
                for (out, byte) in data.iter_mut().zip(value.to_le_bytes().iter().skip(shift)) {
                    *out = *byte;
                }
            }
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let bits = self.emulated_bits(offset);
        if bits != u32::MAX {
            self.host.write_config(offset, data);
            if offset == COMMAND {
                if let Some(&command) = data.first() {
                    self.command = command;
                    self.sync_bars();
                }
            }
        }
        if bits != 0 {
            self.shadow.write(offset, data);
            self.shadow_written(offset);
        }
    }
}
