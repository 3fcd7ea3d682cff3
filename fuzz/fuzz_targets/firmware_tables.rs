//! The firmware builders with arbitrary inputs: the guest layout (RAM size, address
//! width, buses, the 64-bit window), the ACPI tables (vCPUs, extra tables, ATRM methods), VFCT tables and
//! SETUP_PCI records for arbitrary VBIOS images and device lists, the e820 map that
//! reserves the VFCT table, the zero page; the VFCT reader on arbitrary tables; and the
//! VMM's own composition of them all (`loader::load` with those VBIOS images, in a 16 MiB
//! guest).
//!
//! Input: the description (`arbitrary`), then the bytes left over as a VFCT table to read.
//!
//! Checked: layouts are consistent, every ACPI table the RSDP leads to has a good checksum
//! and the XSDT lists the extra tables, VFCT tables read back as built, SETUP_PCI records
//! chain by guest address, e820 entries are sorted, disjoint, non-empty and RAM only where
//! the guest has RAM, and the zero page holds the map.

#![no_main]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use minivmm::loader::{self, LoadConfig};
use minivmm::memory;
use minivmm::passthrough::GuestVbios;
use minivmm_devices::pci::{DevFn, PciAddress};
use minivmm_firmware::acpi::{self, atrm::AtrmImage, checksum, vfct, AcpiBlob, AcpiConfig};
use minivmm_firmware::e820::{self, E820Entry, E820_RAM};
use minivmm_firmware::layout::{self, GuestLayout};
use minivmm_firmware::{boot_params, setup_data};

/// Images used, at most: a guest has a VBIOS per GPU, and more only slow the target down.
const MAX_IMAGES: usize = 8;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Guest RAM in 4 KiB pages.
    ram_pages: u64,
    address_bits: u8,
    /// PCI buses in use (`% 32 + 1`).
    buses: u8,
    /// Where the 64-bit window ends after placement (inside the address width).
    window_end: Option<u64>,
    cpus: u16,
    /// Tables placed elsewhere that the XSDT must list.
    extra_tables: Vec<u64>,
    images: Vec<Image>,
}

/// One VBIOS image for one guest function.
#[derive(Arbitrary, Debug)]
struct Image {
    bus: u8,
    device: u8,
    function: u8,
    vendor: u16,
    device_id: u16,
    subsystem_vendor: u16,
    subsystem_id: u16,
    /// Its length (at least 1: the VMM serves only images that parsed).
    len: u16,
    fill: u8,
    vfct: bool,
    setup: bool,
    atrm: bool,
    /// The root port it sits behind (its device number on bus 0).
    port: Option<u8>,
}

impl Image {
    fn rom(&self) -> Vec<u8> {
        (0..usize::from(self.len).max(1))
            .map(|i| self.fill.wrapping_add(i as u8))
            .collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mut input) = Input::arbitrary(&mut u) else {
        return;
    };
    input.images.truncate(MAX_IMAGES);
    if minivmm_fuzz::debug() {
        eprintln!("{input:#?}");
    }
    let roms: Vec<Vec<u8>> = input.images.iter().map(Image::rom).collect();
    check_vfct_reader(u.take_rest());
    let reserved = check_vfct(&input, &roms);
    check_setup_data(&input, &roms, reserved);
    if let Some(guest) = check_layout(&input) {
        check_acpi(&input, &guest);
        let area = layout::FIRMWARE_DATA_END - layout::FIRMWARE_DATA_START;
        if reserved <= area {
            check_e820(&guest, reserved);
        }
    }
    check_load(&input, &roms);
});

/// Any bytes as a host's VFCT table: the images found lie inside it.
fn check_vfct_reader(table: &[u8]) {
    for image in vfct::images(table) {
        assert!(!image.rom.is_empty() && image.rom.len() < table.len());
    }
}

/// The VFCT table for the images the input offers through VFCT: it reads back as built.
/// Returns the bytes the VMM reserves for it (0 without one).
fn check_vfct(input: &Input, roms: &[Vec<u8>]) -> u64 {
    let images: Vec<vfct::VfctImage> = input
        .images
        .iter()
        .zip(roms)
        .filter(|(i, _)| i.vfct)
        .map(|(i, rom)| vfct::VfctImage {
            bus: i.bus,
            device: i.device,
            function: i.function,
            vendor_id: i.vendor,
            device_id: i.device_id,
            subsystem_vendor_id: i.subsystem_vendor,
            subsystem_id: i.subsystem_id,
            rom,
        })
        .collect();
    if images.is_empty() {
        return 0;
    }
    let table = vfct::build(&images);
    assert_eq!(&table[..4], b"VFCT");
    assert_eq!(u32_at(&table, 4) as usize, table.len());
    assert_eq!(checksum(&table), 0);
    let found = vfct::images(&table);
    assert_eq!(found.len(), images.len());
    for (found, built) in found.iter().zip(&images) {
        let bdf = (
            u32::from(built.bus),
            u32::from(built.device),
            u32::from(built.function),
        );
        assert_eq!(found.bdf, bdf);
        assert_eq!(found.ids, (built.vendor_id, built.device_id));
        assert_eq!(found.rom, built.rom);
    }
    (table.len() as u64).next_multiple_of(0x1000)
}

/// SETUP_PCI records after the VFCT table, as the VMM lays them out: a list by guest
/// address, each record with its ROM.
fn check_setup_data(input: &Input, roms: &[Vec<u8>], reserved: u64) {
    let records: Vec<setup_data::PciRom> = input
        .images
        .iter()
        .zip(roms)
        .filter(|(i, _)| i.setup)
        .map(|(i, rom)| setup_data::PciRom {
            vendor: i.vendor,
            device_id: i.device_id,
            bus: i.bus,
            device: i.device,
            function: i.function,
            rom,
        })
        .collect();
    let start = layout::FIRMWARE_DATA_START + reserved;
    let (bytes, first) = setup_data::pci_list(&records, start);
    if records.is_empty() {
        assert_eq!((bytes.len(), first), (0, 0));
        return;
    }
    assert_eq!(first, start);
    let mut at = first;
    for (n, record) in records.iter().enumerate() {
        let offset = usize::try_from(at - start).unwrap();
        assert_eq!(offset % 8, 0, "record {n} unaligned");
        let next = u64_at(&bytes, offset);
        assert_eq!(u32_at(&bytes, offset + 8), setup_data::SETUP_PCI);
        let len = u32_at(&bytes, offset + 12) as usize;
        assert_eq!(len, setup_data::PCI_ROM_OFFSET - 16 + record.rom.len());
        assert_eq!(u64_at(&bytes, offset + 24), record.rom.len() as u64);
        let rom = offset + setup_data::PCI_ROM_OFFSET;
        assert_eq!(&bytes[rom..rom + record.rom.len()], record.rom);
        if n + 1 == records.len() {
            assert_eq!(next, 0, "the last record has a next");
        } else {
            assert!(next > at, "record {n} points back");
        }
        at = next;
    }
}

/// The layout for the input's RAM and address width, with its PCI tree placed.
fn check_layout(input: &Input) -> Option<GuestLayout> {
    let ram_size = input.ram_pages.wrapping_mul(4096);
    let mut guest = GuestLayout::new(ram_size, input.address_bits).ok()?;
    assert_eq!(guest.ram_size(), ram_size);
    assert_eq!(guest.ram[0].start, 0);
    assert!(guest.ram[0].size <= layout::MEM_32BIT_HOLE_START);
    if let Some(high) = guest.ram.get(1) {
        assert_eq!(high.start, layout::MEM_4G);
    }
    let ram_end = guest.ram.last().unwrap().end();
    assert!(guest.mmio64_start >= ram_end.max(layout::MEM_4G));
    assert_eq!(guest.mmio64_start % layout::PCI_MMIO64_ALIGN, 0);
    let limit = 1u64
        .checked_shl(u32::from(input.address_bits))
        .unwrap_or(u64::MAX);
    if let Some(window) = &guest.pci.mmio64 {
        assert!(window.start == guest.mmio64_start && window.start < window.end);
        assert!(window.end <= limit);
    }
    guest.pci.buses = input.buses % layout::PCI_ECAM_MAX_BUSES as u8 + 1;
    // The PCI tree may grow or shrink the window, within the address width.
    if let (Some(window), Some(end)) = (&mut guest.pci.mmio64, input.window_end) {
        window.end = window.start + 1 + end % (limit - window.start);
    }
    Some(guest)
}

/// The ACPI tables: RSDP → XSDT → every table, each with a good checksum; the XSDT lists
/// the extra tables; MCFG covers the buses in use; the DSDT has an `ATRM` method when an
/// image is offered that way.
fn check_acpi(input: &Input, guest: &GuestLayout) {
    let atrm: Vec<AtrmImage> = input
        .images
        .iter()
        .filter(|i| i.atrm)
        .map(|i| AtrmImage {
            port: i.port,
            device: i.device,
            function: i.function,
            base: layout::FIRMWARE_DATA_START,
            len: u32::from(i.len),
        })
        .collect();
    let config = AcpiConfig {
        num_cpus: usize::from(input.cpus),
        layout: guest,
        extra_tables: &input.extra_tables,
        atrm: &atrm,
    };
    let blob = match acpi::build(&config) {
        Ok(blob) => blob,
        Err(acpi::Error::TooManyCpus(n)) => {
            assert!(n > 254);
            return;
        }
        Err(acpi::Error::TooLarge(len, area)) => {
            assert!(len as u64 > area);
            return;
        }
    };
    assert!(input.cpus <= 254);
    assert!(blob.bytes.len() as u64 <= layout::ACPI_SIZE);
    let rsdp = table_at(&blob, blob.rsdp_addr, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(checksum(&rsdp[..20]), 0);
    assert_eq!(checksum(rsdp), 0);
    let xsdt = sdt_at(&blob, u64_at(rsdp, 24));
    assert_eq!(&xsdt[..4], b"XSDT");
    let entries: Vec<u64> = xsdt[36..].chunks(8).map(|e| u64_at(e, 0)).collect();
    assert_eq!(entries.len(), 3 + input.extra_tables.len());
    assert_eq!(&entries[3..], &input.extra_tables[..]);
    let fadt = sdt_at(&blob, entries[0]);
    assert_eq!(&fadt[..4], b"FACP");
    let dsdt = sdt_at(&blob, u64_at(fadt, 140));
    assert_eq!(&dsdt[..4], b"DSDT");
    let methods = dsdt.windows(4).filter(|w| w == b"ATRM").count();
    assert_eq!(
        methods,
        atrm.len(),
        "one ATRM method per image offered that way"
    );
    assert_eq!(&sdt_at(&blob, entries[1])[..4], b"APIC");
    let mcfg = sdt_at(&blob, entries[2]);
    assert_eq!(&mcfg[..4], b"MCFG");
    assert_eq!(mcfg[55], guest.pci.buses - 1, "MCFG end bus");
}

/// The e820 map reserving the VFCT table: sorted, disjoint, non-empty entries, RAM only
/// where the guest has RAM; and the zero page that carries it.
fn check_e820(guest: &GuestLayout, reserved: u64) {
    let map = e820::e820_map_reserving(guest, reserved);
    for entry in &map {
        assert!(entry.size > 0, "empty e820 entry {entry:x?}");
        if entry.kind == E820_RAM {
            let end = entry.addr + entry.size;
            assert!(
                guest
                    .ram
                    .iter()
                    .any(|r| r.start <= entry.addr && end <= r.end()),
                "e820 RAM {entry:x?} outside guest RAM {:x?}",
                guest.ram
            );
        }
    }
    for pair in map.windows(2) {
        assert!(
            pair[0].addr + pair[0].size <= pair[1].addr,
            "e820 entries overlap or are unsorted: {pair:x?}"
        );
    }
    let low_ram_end = guest.low_ram_end().min(layout::EBDA_START);
    if reserved > 0 && layout::FIRMWARE_DATA_START + reserved <= low_ram_end {
        let table = E820Entry {
            addr: layout::FIRMWARE_DATA_START,
            size: reserved,
            kind: e820::E820_RESERVED,
        };
        assert!(
            map.contains(&table),
            "the VFCT table is not reserved: {map:x?}"
        );
    }
    let params = boot_params::build(&boot_params::BootParamsConfig {
        setup_header: None,
        cmdline_addr: layout::CMDLINE_START,
        cmdline_len: 0,
        initramfs: None,
        e820: &map,
        rsdp_addr: layout::ACPI_START,
        setup_data: 0,
        vga_text: guest.pci.buses.is_multiple_of(2),
    })
    .unwrap();
    assert_eq!(usize::from(params.e820_entries), map.len());
}

/// A minimal x86-64 ELF kernel: one 16-byte segment at 1 MiB.
fn tiny_kernel() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let mut elf = vec![0u8; 0x1010];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[6] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // executable
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // entry
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers
        elf[52..54].copy_from_slice(&64u16.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
        elf[ph + 24..ph + 32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // paddr
        elf[ph + 32..ph + 40].copy_from_slice(&16u64.to_le_bytes()); // filesz
        elf[ph + 40..ph + 48].copy_from_slice(&16u64.to_le_bytes()); // memsz
        elf[0x1000..].fill(0xf4); // hlt
        let path = std::env::temp_dir().join(format!("minivmm-fuzz-elf-{}", std::process::id()));
        std::fs::write(&path, elf).unwrap();
        path
    })
}

/// The VMM's composition: `loader::load` with the VBIOS images in a 16 MiB guest. It
/// refuses only images that do not fit the firmware area, or vCPUs the MADT cannot hold.
fn check_load(input: &Input, roms: &[Vec<u8>]) {
    const RAM: u64 = 16 << 20;
    let memory = memory::from_ranges(&[(0, RAM)]).unwrap();
    let guest = GuestLayout::new(RAM, 46).unwrap();
    let file = loader::BootFile::open("kernel", tiny_kernel()).unwrap();
    let kernel = loader::load_kernel(&memory, &file, &AtomicBool::new(false)).unwrap();
    let vbios: Vec<GuestVbios> = input
        .images
        .iter()
        .zip(roms)
        .map(|(i, rom)| GuestVbios {
            address: PciAddress::new(i.bus, DevFn::new(i.device, i.function)),
            vendor: i.vendor,
            device_id: i.device_id,
            subsystem_vendor: i.subsystem_vendor,
            subsystem_id: i.subsystem_id,
            rom: Arc::from(rom.as_slice()),
            port: i.port,
            vfct: i.vfct,
            atrm: i.atrm,
            setup: i.setup,
        })
        .collect();
    let mut config = LoadConfig {
        initramfs: None,
        cmdline: "console=ttyS0",
        cpus: usize::from(input.cpus),
        vbios: &vbios,
        vga_text: input.cpus % 2 == 1,
    };
    match loader::load(&memory, &guest, &mut config, kernel) {
        Ok(_) => assert!(input.cpus <= 254),
        Err(loader::Error::VbiosTooLarge(need, area)) => {
            assert!(need > area, "{need} bytes refused for an area of {area}");
        }
        Err(loader::Error::Acpi(e)) => assert!(input.cpus > 254, "{e}"),
        Err(e) => panic!("load failed: {e}"),
    }
}

fn table_at(blob: &AcpiBlob, addr: u64, len: usize) -> &[u8] {
    let offset = usize::try_from(addr - blob.start).unwrap();
    &blob.bytes[offset..offset + len]
}

/// A system description table in the blob, its checksum checked.
fn sdt_at(blob: &AcpiBlob, addr: u64) -> &[u8] {
    let len = u32_at(table_at(blob, addr, 8), 4) as usize;
    let table = table_at(blob, addr, len);
    assert_eq!(
        checksum(table),
        0,
        "{} checksum",
        String::from_utf8_lossy(&table[..4])
    );
    table
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}
