//! The configuration-space model of a passed-through function over a fake host function
//! with arbitrary configuration contents and region sizes, driven by an arbitrary sequence
//! of guest accesses: configuration reads and writes, BAR sizing and moves, decoding on
//! and off, trapped BAR accesses (the MSI-X table, the ROM), MSI and MSI-X programming.
//!
//! Input: a 16-byte header (hand-written so that seeds can describe real devices), the
//! host's configuration bytes, then the accesses (`arbitrary`):
//! - bytes 0..6: BAR region sizes: 0 unused, 1..=63 `1 << n`, larger `n * 3` (not a power
//!   of two: the device is refused);
//! - byte 6: ROM: bits 0..2 source (0 none, 1 the device's, 2 an image), bits 2..8 the
//!   size exponent (device ROM region size, or image length up to 256 KiB);
//! - byte 7: bit 0 multi-function slot, bit 1 behind a root port, bit 2 the host refuses
//!   to map at the first BAR's placed address;
//! - byte 8: interrupt line; bytes 9..13: the port's link (max speed, max width, speed,
//!   width); bytes 14..16: length of the configuration bytes that follow (LE, <= 4096).
//!
//! Checked after every access: the host saw only accesses within its contract (see
//! `FakeHost`), every BAR is mapped at its address or not at all and the host agrees,
//! reads have no side effects, sizing probes read back the BAR's size mask, ROM reads are
//! the image's, and MSI-X table writes read back. At the end: Resizable BAR and SR-IOV are
//! not in the guest's extended capability list.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use minivmm_devices::pci::bar::{BarKind, BAR0};
use minivmm_devices::pci::capability::{self, ext_id};
use minivmm_devices::pci::link::PcieLink;
use minivmm_devices::pci::msi::MSIX_ENTRY_SIZE;
use minivmm_devices::pci::passthrough::{PassthroughFunction, RomSource, ROM_INDEX};
use minivmm_devices::pci::PciFunction;
use minivmm_fuzz::{build_function, first_msix, ops, FakeHost, Width, Wiring, CONFIG_BYTES};

/// Bytes of the fixed header.
const HEADER: usize = 16;
/// Offset of the ROM BAR register.
const ROM_BAR: u16 = 0x30;

/// Width of a trapped BAR access (the vCPU's MMIO exits carry 1 to 8 bytes).
#[derive(Arbitrary, Clone, Copy, Debug)]
enum BarWidth {
    B1,
    B2,
    B4,
    B8,
}

impl BarWidth {
    fn len(self) -> usize {
        match self {
            BarWidth::B1 => 1,
            BarWidth::B2 => 2,
            BarWidth::B4 => 4,
            BarWidth::B8 => 8,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A configuration read.
    Read { offset: u16, width: Width },
    /// A configuration write.
    Write {
        offset: u16,
        width: Width,
        value: u32,
    },
    /// Linux's sizing probe of BAR register `register % 7` (6: the ROM BAR): all ones,
    /// read back, restore.
    SizeBar { register: u8 },
    /// Program BAR register `register % 7` with `value`.
    ProgramBar { register: u8, value: u32 },
    /// Write the command register (decoding, bus mastering).
    Command { value: u16 },
    /// A trapped read of a BAR (`bar % 7`, 6: the ROM) inside its size.
    BarRead {
        bar: u8,
        offset: u64,
        width: BarWidth,
    },
    /// A trapped write of a BAR inside its size.
    BarWrite {
        bar: u8,
        offset: u64,
        width: BarWidth,
        value: u64,
    },
    /// Write one dword of an MSI-X table entry, then read it back.
    MsixEntry { entry: u16, word: u8, value: u32 },
    /// Write the MSI-X message control word (enable, function mask).
    MsixControl { value: u16 },
    /// Write the MSI message control word of the first MSI capability.
    MsiControl { value: u16 },
    /// What the VMM does after building the function.
    HandOff,
    /// What the VMM does when it tears the device down.
    UnmapAll,
}

fuzz_target!(|data: &[u8]| {
    let Some((header, rest)) = data.split_first_chunk::<HEADER>() else {
        return;
    };
    let config_len = usize::from(u16::from_le_bytes([header[14], header[15]])).min(CONFIG_BYTES);
    let config_len = config_len.min(rest.len());
    let (config, accesses) = rest.split_at(config_len);
    let Some(mut fuzz) = Fuzz::new(header, config) else {
        return;
    };
    for op in ops::<Op>(accesses) {
        fuzz.apply(op);
        fuzz.check_mappings();
    }
    fuzz.walk();
});

fn size_from(code: u8) -> u64 {
    match code {
        0 => 0,
        1..=63 => 1 << code,
        n => u64::from(n) * 3,
    }
}

struct Fuzz {
    function: PassthroughFunction<FakeHost>,
    image: Option<std::sync::Arc<[u8]>>,
    host_config: Vec<u8>,
}

impl Fuzz {
    fn new(header: &[u8; HEADER], config: &[u8]) -> Option<Fuzz> {
        let sizes: [u64; 6] = std::array::from_fn(|i| size_from(header[i]));
        let rom_exponent = header[6] >> 2;
        let (rom, rom_size, image) = match header[6] & 3 {
            1 => (RomSource::Device, size_from(rom_exponent), None),
            2 => {
                let len = 1usize << rom_exponent.min(18);
                let image: std::sync::Arc<[u8]> = (0..len).map(|i| (i * 31) as u8).collect();
                (RomSource::Image(image.clone()), 0, Some(image))
            }
            _ => (RomSource::None, 0, None),
        };
        let flags = header[7];
        let link = PcieLink::new(header[9], header[10], header[11], header[12]);
        let wiring = Wiring {
            interrupt_line: header[8],
            rom,
            multifunction: flags & 1 != 0,
            port_link: (flags & 2 != 0).then(|| link.unwrap_or(PcieLink::UNKNOWN)),
        };
        let mut host = FakeHost::new(config, sizes, rom_size);
        let host_config = host.config.clone();
        if flags & 4 != 0 {
            // Refuse the address the first BAR gets; a dry run finds it.
            let probe = build_function(FakeHost::new(config, sizes, rom_size), wiring.clone())?;
            host.refuse = probe.bars().first().map(|b| b.address);
        }
        let function = build_function(host, wiring)?;
        let fuzz = Fuzz {
            function,
            image,
            host_config,
        };
        fuzz.check_mappings();
        Some(fuzz)
    }

    fn read(&mut self, offset: u16, len: usize) -> u32 {
        let mut first = [0u8; 4];
        self.function.config_read(offset, &mut first[..len]);
        let mut again = [0xffu8; 4];
        self.function.config_read(offset, &mut again[..len]);
        assert_eq!(
            first[..len],
            again[..len],
            "a read at {offset:#x} changed it"
        );
        u32::from_le_bytes(first)
    }

    fn write(&mut self, offset: u16, len: usize, value: u32) {
        self.function
            .config_write(offset, &value.to_le_bytes()[..len]);
    }

    fn bar_register(register: u8) -> u16 {
        match register % 7 {
            6 => ROM_BAR,
            n => BAR0 + 4 * u16::from(n),
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Read { offset, width } => {
                self.read(width.align(offset), width.len());
            }
            Op::Write {
                offset,
                width,
                value,
            } => self.write(width.align(offset), width.len(), value),
            Op::SizeBar { register } => self.size_bar(register % 7),
            Op::ProgramBar { register, value } => {
                self.write(Self::bar_register(register), 4, value);
            }
            Op::Command { value } => self.write(0x04, 2, u32::from(value)),
            Op::BarRead { bar, offset, width } => {
                if let Some((index, offset)) = self.in_bar(bar, offset, width.len()) {
                    let mut data = [0u8; 8];
                    self.function
                        .bar_read(index, offset, &mut data[..width.len()]);
                    self.check_rom_read(index, offset, &data[..width.len()]);
                }
            }
            Op::BarWrite {
                bar,
                offset,
                width,
                value,
            } => {
                if let Some((index, offset)) = self.in_bar(bar, offset, width.len()) {
                    self.function
                        .bar_write(index, offset, &value.to_le_bytes()[..width.len()]);
                }
            }
            Op::MsixEntry { entry, word, value } => self.msix_entry(entry, word, value),
            Op::MsixControl { value } => {
                if let Some(msix) = first_msix(&self.host_config) {
                    self.write(msix.offset + 2, 2, u32::from(value));
                }
            }
            Op::MsiControl { value } => {
                let msi = capability::standard(&self.host_config)
                    .into_iter()
                    .find(|c| c.id == capability::id::MSI);
                if let Some(msi) = msi {
                    self.write(msi.offset + 2, 2, u32::from(value));
                }
            }
            Op::HandOff => self.function.hand_off(),
            Op::UnmapAll => {
                self.function.unmap_all();
                assert!(self.function.host().mapped.is_empty());
            }
        }
    }

    /// A BAR the function has (or its ROM), and `offset` brought inside it.
    fn in_bar(&self, bar: u8, offset: u64, len: usize) -> Option<(u8, u64)> {
        let index = bar % 7;
        let placed = self.function.bars().iter().find(|b| b.bar.index == index)?;
        let size = placed.bar.size;
        if (len as u64) > size {
            return None;
        }
        Some((index, offset % (size - len as u64 + 1)))
    }

    fn check_rom_read(&self, index: u8, offset: u64, data: &[u8]) {
        let (ROM_INDEX, Some(image)) = (index, &self.image) else {
            return;
        };
        for (i, byte) in data.iter().enumerate() {
            let expected = usize::try_from(offset)
                .ok()
                .and_then(|o| image.get(o + i))
                .copied()
                .unwrap_or(0xff);
            assert_eq!(*byte, expected, "ROM byte {:#x}", offset + i as u64);
        }
    }

    /// Write all ones to a BAR register, check the size mask it reads back, restore it.
    fn size_bar(&mut self, register: u8) {
        let offset = Self::bar_register(register);
        let old = self.read(offset, 4);
        self.write(offset, 4, !0);
        let mask = self.read(offset, 4);
        let bars = self.function.bars();
        let expected = if register == 6 {
            bars.iter()
                .find(|b| b.bar.index == ROM_INDEX)
                .map_or(0, |b| !(b.bar.size as u32 - 1) & 0xffff_f800 | 1)
        } else if let Some(b) = bars.iter().find(|b| b.bar.index == register) {
            let low_bits = match b.bar.kind {
                BarKind::Io => 0x3,
                _ => 0xf,
            };
            (!(b.bar.size - 1) as u32 & !low_bits) | (mask & low_bits)
        } else if let Some(b) = bars
            .iter()
            .find(|b| b.bar.kind == BarKind::Mem64 && b.bar.index + 1 == register)
        {
            (!(b.bar.size - 1) >> 32) as u32
        } else {
            0
        };
        assert_eq!(
            mask, expected,
            "BAR register {register} sized {mask:#x}, expected {expected:#x}"
        );
        self.write(offset, 4, old);
    }

    /// Write one dword of an MSI-X table entry through its BAR and read it back.
    fn msix_entry(&mut self, entry: u16, word: u8, value: u32) {
        let Some(msix) = first_msix(&self.host_config) else {
            return;
        };
        let entry = u64::from(entry) % msix.entries() as u64;
        let offset = msix.table_offset + entry * MSIX_ENTRY_SIZE + u64::from(word % 4) * 4;
        self.function
            .bar_write(msix.table_bar, offset, &value.to_le_bytes());
        let mut back = [0u8; 4];
        self.function.bar_read(msix.table_bar, offset, &mut back);
        assert_eq!(
            u32::from_le_bytes(back),
            value,
            "MSI-X table at {offset:#x}"
        );
    }

    /// The guest's whole configuration space, and its capability lists.
    fn walk(&mut self) {
        let mut view = vec![0u8; CONFIG_BYTES];
        for (offset, dword) in view.chunks_mut(4).enumerate() {
            self.function.config_read(offset as u16 * 4, dword);
        }
        capability::standard(&view);
        for cap in capability::extended(&view) {
            assert!(
                cap.id != ext_id::RESIZABLE_BAR && cap.id != ext_id::SRIOV,
                "extended capability {:#x} at {:#x} is shown",
                cap.id,
                cap.offset
            );
        }
    }

    /// Every BAR is mapped where its register says, or nowhere; the host agrees.
    fn check_mappings(&self) {
        for placed in self.function.bars() {
            if let Some(at) = placed.mapped {
                assert_eq!(at, placed.address, "BAR {} mapped off", placed.bar.index);
            }
            assert_eq!(
                self.function.host().mapped.get(&placed.bar.index).copied(),
                placed.mapped,
                "host and model disagree on BAR {}",
                placed.bar.index
            );
        }
        assert!(self.function.host().mapped.keys().all(|i| self
            .function
            .bars()
            .iter()
            .any(|b| b.bar.index == *i)));
    }
}
