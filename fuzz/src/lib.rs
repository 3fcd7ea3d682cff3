//! What the fuzz targets share: a fake host function that checks the
//! [`HostFunction`] contract on every call, access widths, and builders of the fixtures
//! (a passed-through function on a PCI tree, placed as the VMM places it).
//!
//! Fuzz code may panic: a panic is how a target reports a broken invariant.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::Range;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use minivmm_devices::pci::bar::Bar;
use minivmm_devices::pci::capability::{self, id};
use minivmm_devices::pci::link::PcieLink;
use minivmm_devices::pci::msi::{MsiKind, MsiVector, MsixCapability};
use minivmm_devices::pci::passthrough::{
    needs, HostFunction, PassthroughFunction, RomSource, Setup, ROM_INDEX,
};
use minivmm_devices::pci::resources::{assign, SlotNeeds};
use minivmm_firmware::layout::GuestLayout;

/// Bytes of PCI Express configuration space.
pub const CONFIG_BYTES: usize = 4096;
/// Host page size: MSI-X traps are whole pages.
const PAGE: u64 = 4096;

/// The operations encoded in `data` (`arbitrary`), one after another until it runs out.
/// With `MINIVMM_FUZZ_DEBUG` set, each is printed as it is decoded (to see what a crash
/// input or a seed does).
pub fn ops<'a, T: Arbitrary<'a> + Debug>(data: &'a [u8]) -> impl Iterator<Item = T> + 'a {
    let mut u = Unstructured::new(data);
    std::iter::from_fn(move || {
        if u.is_empty() {
            return None;
        }
        let op = T::arbitrary(&mut u).ok()?;
        if debug() {
            eprintln!("{op:?}");
        }
        Some(op)
    })
}

/// Whether `MINIVMM_FUZZ_DEBUG` is set.
pub fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("MINIVMM_FUZZ_DEBUG").is_some())
}

/// Width of a configuration access: 1, 2 or 4 bytes.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Width {
    /// A byte.
    Byte,
    /// A word.
    Word,
    /// A dword.
    Dword,
}

impl Width {
    /// Bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            Width::Byte => 1,
            Width::Word => 2,
            Width::Dword => 4,
        }
    }

    /// `offset` inside configuration space, naturally aligned for this width (what
    /// [`minivmm_devices::pci::PciFunction`] callers guarantee).
    pub fn align(self, offset: u16) -> u16 {
        (offset % CONFIG_BYTES as u16) & !(self.len() as u16 - 1)
    }
}

/// A host function for the passthrough model: configuration bytes and region sizes, and
/// what the model asked of it. Every call checks the contract the real VFIO function
/// relies on, and panics (a crash for the fuzzer) when the model breaks it.
#[derive(Debug)]
pub struct FakeHost {
    /// Configuration space (4 KiB).
    pub config: Vec<u8>,
    /// Region sizes of BARs 0..6 (0: unused).
    pub sizes: [u64; 6],
    /// Size of the device's own ROM region.
    pub rom_size: u64,
    /// A guest address `map_bar` refuses, as if it collided with RAM.
    pub refuse: Option<u64>,
    /// Where each BAR is mapped, as the model's `map_bar` calls left it.
    pub mapped: BTreeMap<u8, u64>,
    /// MSI-X table entries of the first MSI-X capability (vectors routed must match).
    pub msix_entries: Option<usize>,
}

impl FakeHost {
    /// A host function with `config` (zero-padded or cut to 4 KiB) and these region sizes.
    pub fn new(config: &[u8], sizes: [u64; 6], rom_size: u64) -> Self {
        let mut bytes = vec![0u8; CONFIG_BYTES];
        let len = config.len().min(CONFIG_BYTES);
        bytes[..len].copy_from_slice(&config[..len]);
        let msix_entries = first_msix(&bytes).map(|m| m.entries());
        FakeHost {
            config: bytes,
            sizes,
            rom_size,
            refuse: None,
            mapped: BTreeMap::new(),
            msix_entries,
        }
    }

    fn region_len(&self, index: u8) -> u64 {
        if index == ROM_INDEX {
            self.rom_size
        } else {
            self.sizes[usize::from(index)]
        }
    }

    fn check_region_access(&self, index: u8, offset: u64, len: usize) {
        assert!(
            index < 6 || index == ROM_INDEX,
            "region access to index {index}"
        );
        let end = offset.checked_add(len as u64).expect("region offset wraps");
        assert!(
            end <= self.region_len(index),
            "region {index} access at {offset:#x}+{len} past its {:#x} bytes",
            self.region_len(index)
        );
    }
}

/// A configuration access must be 1, 2 or 4 bytes inside one dword of 4 KiB.
fn check_config_access(offset: u16, len: usize) {
    assert!(matches!(len, 1 | 2 | 4), "config access of {len} bytes");
    assert!(
        usize::from(offset % 4) + len <= 4,
        "config access at {offset:#x}+{len} crosses a dword"
    );
    assert!(
        usize::from(offset) + len <= CONFIG_BYTES,
        "config access at {offset:#x} past 4 KiB"
    );
}

impl HostFunction for FakeHost {
    fn read_config(&self, offset: u16, data: &mut [u8]) {
        check_config_access(offset, data.len());
        let start = usize::from(offset);
        data.copy_from_slice(&self.config[start..start + data.len()]);
    }

    fn write_config(&self, offset: u16, data: &[u8]) {
        // The device ignores what the guest writes: what it shows stays the host's.
        check_config_access(offset, data.len());
    }

    fn region_size(&self, index: u8) -> u64 {
        if index == ROM_INDEX || index < 6 {
            self.region_len(index)
        } else {
            0
        }
    }

    fn region_read(&self, index: u8, offset: u64, data: &mut [u8]) {
        self.check_region_access(index, offset, data.len());
        data.fill(index.wrapping_add(offset as u8));
    }

    fn region_write(&self, index: u8, offset: u64, data: &[u8]) {
        assert_ne!(index, ROM_INDEX, "a write reached the ROM");
        self.check_region_access(index, offset, data.len());
    }

    fn map_bar(
        &mut self,
        bar: &Bar,
        from: Option<u64>,
        to: Option<u64>,
        traps: &[Range<u64>],
    ) -> Result<(), String> {
        assert_eq!(
            self.mapped.get(&bar.index).copied(),
            from,
            "BAR {} moved from where it is not",
            bar.index
        );
        assert!(bar.size.is_power_of_two(), "BAR size {:#x}", bar.size);
        if let Some(to) = to {
            assert_eq!(to % bar.size, 0, "BAR {} at {to:#x} misaligned", bar.index);
        }
        let mut last_end = 0;
        for trap in traps {
            assert!(trap.start < trap.end, "empty trap {trap:x?}");
            assert!(trap.start >= last_end, "traps unsorted {traps:x?}");
            assert!(trap.start % PAGE == 0 && trap.end % PAGE == 0, "{trap:x?}");
            last_end = trap.end;
        }
        self.mapped.remove(&bar.index);
        match to {
            Some(to) if Some(to) == self.refuse => Err("overlaps RAM".into()),
            Some(to) => {
                self.mapped.insert(bar.index, to);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn set_msi(&mut self, kind: MsiKind, vectors: Option<&[MsiVector]>) {
        let Some(vectors) = vectors else {
            return;
        };
        match kind {
            MsiKind::Msi => assert!(
                vectors.len().is_power_of_two() && vectors.len() <= 32,
                "{} MSI vectors",
                vectors.len()
            ),
            MsiKind::Msix => assert_eq!(Some(vectors.len()), self.msix_entries),
        }
    }
}

/// The first MSI-X capability of `config`, as the model takes it over.
pub fn first_msix(config: &[u8]) -> Option<MsixCapability> {
    let cap = capability::standard(config)
        .into_iter()
        .find(|c| c.id == id::MSIX)?;
    let at = usize::from(cap.offset);
    let dword = |o: usize| {
        config
            .get(o..o + 4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    Some(MsixCapability::new(
        cap.offset,
        dword(at),
        dword(at + 4),
        dword(at + 8),
    ))
}

/// How the guest's machine shows a function (the parts of [`Setup`] that are not the
/// placement).
#[derive(Clone, Debug)]
pub struct Wiring {
    /// Interrupt Line.
    pub interrupt_line: u8,
    /// What the ROM BAR shows.
    pub rom: RomSource,
    /// Other functions share its guest slot.
    pub multifunction: bool,
    /// Behind a root port with this link (else on bus 0).
    pub port_link: Option<PcieLink>,
}

/// The guest's view of `host`, placed alone in a 1 GiB guest as the VMM places a slot.
/// `None` when the VMM would refuse the device (bad BARs, no room, MSI-X outside a BAR).
pub fn build_function(host: FakeHost, wiring: Wiring) -> Option<PassthroughFunction<FakeHost>> {
    let guest = GuestLayout::new(1 << 30, 46).unwrap();
    let root = minivmm::passthrough::root_windows(&guest);
    let slot = SlotNeeds {
        name: "fuzz".into(),
        behind_port: wiring.port_link.is_some(),
        functions: vec![needs(&host, &wiring.rom).ok()?],
    };
    let plan = assign(&[slot], &root).ok()?;
    let setup = Setup {
        placement: &plan.slots[0].functions[0],
        interrupt_line: wiring.interrupt_line,
        rom: wiring.rom,
        multifunction: wiring.multifunction,
        port_link: wiring.port_link,
        quirks: true,
    };
    PassthroughFunction::new(host, setup).ok()
}

/// Little-endian helpers for building configuration spaces.
pub fn put32(config: &mut [u8], offset: usize, value: u32) {
    config[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

/// A display controller (1002:6660): 256 MiB 64-bit prefetchable BAR 0, 256 KiB BAR 2,
/// INTA, MSI, a PCI Express endpoint, AER then Resizable BAR in extended space.
pub fn display_function() -> FakeHost {
    let mut config = vec![0u8; CONFIG_BYTES];
    put32(&mut config, 0x00, 0x6660_1002);
    put32(&mut config, 0x04, 0x0010_0007);
    put32(&mut config, 0x08, 0x0380_0000);
    put32(&mut config, 0x10, 0xe000_000c);
    put32(&mut config, 0x18, 0xfe80_0000);
    put32(&mut config, 0x34, 0x50);
    put32(&mut config, 0x3c, 0x0000_010b);
    put32(&mut config, 0x50, 0x0080_7005); // MSI, 64-bit, next 0x70
    put32(&mut config, 0x70, 0x0002_0010); // PCI Express v2 endpoint
    put32(&mut config, 0x100, 0x1501_0001); // AER, next 0x150
    put32(&mut config, 0x150, 0x0001_0015); // Resizable BAR, end
    FakeHost::new(&config, [256 << 20, 0, 256 << 10, 0, 0, 0], 0)
}

/// A function with MSI-X (8 vectors, table at BAR 0 + 0x3000, PBA at + 0x3800 of a
/// 16 KiB BAR) and a 32-port I/O BAR 1.
pub fn msix_function() -> FakeHost {
    let mut config = vec![0u8; CONFIG_BYTES];
    put32(&mut config, 0x00, 0x10d3_8086);
    put32(&mut config, 0x04, 0x0010_0000);
    put32(&mut config, 0x14, 0x1);
    put32(&mut config, 0x34, 0x70);
    put32(&mut config, 0x3c, 0x0000_0100);
    put32(&mut config, 0x70, 0x0007_0011);
    put32(&mut config, 0x74, 0x3000);
    put32(&mut config, 0x78, 0x3800);
    FakeHost::new(&config, [16 << 10, 32, 0, 0, 0, 0], 0)
}
