//! The model against a fake host function.
#![allow(clippy::single_range_in_vec_init)]

use super::*;
use crate::pci::bar::{BarKind, BAR0};
use crate::pci::capability::{ext_id, id};
use crate::pci::link::speed;
use crate::pci::resources::{assign, RootWindows, SlotNeeds};
use std::sync::{Arc, Mutex};

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
    /// A window in a BAR that mirrors the host's configuration space, as NVIDIA's and
    /// AMD's do: (BAR, offset, size).
    mirror: Option<(u8, u64, u64)>,
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
        if let Some((bar, start, size)) = self.mirror {
            if bar == index && offset >= start && offset < start + size {
                let config = self.config.lock().unwrap();
                let at = (offset - start) as usize;
                data.copy_from_slice(&config[at..at + data.len()]);
                return;
            }
        }
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
        mirror: None,
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

/// The guest's view of `host` on bus 0, placed as the PCI tree would place it alone.
fn build_with_rom(host: FakeHost, line: u8, rom: RomSource) -> PassthroughFunction<FakeHost> {
    build_with(host, line, rom, false, None)
}

fn build(host: FakeHost, line: u8) -> PassthroughFunction<FakeHost> {
    build_with_rom(host, line, RomSource::None)
}

fn build_with(
    host: FakeHost,
    line: u8,
    rom: RomSource,
    multifunction: bool,
    port_link: Option<PcieLink>,
) -> PassthroughFunction<FakeHost> {
    build_full(host, line, rom, multifunction, port_link, true)
}

fn build_full(
    host: FakeHost,
    line: u8,
    rom: RomSource,
    multifunction: bool,
    port_link: Option<PcieLink>,
    quirks: bool,
) -> PassthroughFunction<FakeHost> {
    let slot = SlotNeeds {
        name: "fake".into(),
        behind_port: port_link.is_some(),
        functions: vec![needs(&host, &rom).unwrap()],
    };
    let root = RootWindows {
        io: 0xc000..0x1_0000,
        memory: 0xc000_0000..0xe000_0000,
        prefetchable_start: 1 << 32,
        address_bits: 46,
    };
    let plan = assign(&[slot], &root).unwrap();
    PassthroughFunction::new(
        host,
        Setup {
            placement: &plan.slots[0].functions[0],
            interrupt_line: line,
            rom,
            multifunction,
            port_link,
            quirks,
        },
    )
    .unwrap()
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
    let mut function = build(radeon(), 17);
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
    let mut function = build(host.clone(), 16);
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
    let mut function = build(host.clone(), 16);
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
    let mut function = build(host.clone(), 16);
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
    let mut function = build(host.clone(), 16);
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
    let mut function = build(host.clone(), 16);
    function.config_write(0x04, &[0x01, 0x00]);
    let maps = host.maps();
    assert_eq!(maps.len(), 1);
    assert_eq!((maps[0].0, maps[0].2), (1, Some(0xc000)));
}

#[test]
fn resizable_bar_is_unlinked_from_the_extended_list() {
    let mut function = build(radeon(), 16);
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
    let mut function = build(host, 16);
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
    let mut function = build(host, 16);
    let ids: Vec<u16> = capability::extended(&guest_view(&mut function))
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec![0, 0x000b]);
}

#[test]
fn msi_programming_is_routed_on_enable_and_on_change_only() {
    let host = radeon();
    let mut function = build(host.clone(), 16);
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
    let mut function = build(host.clone(), 16);
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
    let mut function = build_with_rom(host.clone(), 16, RomSource::Image(image));
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
    let mut function = build_with_rom(host.clone(), 16, RomSource::Device);
    assert_eq!(
        read32(&mut function, 0x30),
        0,
        "a device without a ROM shows none"
    );
    host.rom_size = 64 << 10;
    let mut function = build_with_rom(host.clone(), 16, RomSource::Device);
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
    let rom = RomSource::None;
    let placement = Placement {
        bars: vec![(0, 0xc000_0000), (1, 0xc000)],
        rom: None,
    };
    let setup = Setup {
        placement: &placement,
        interrupt_line: 16,
        rom,
        multifunction: false,
        port_link: None,
        quirks: true,
    };
    assert_eq!(
        PassthroughFunction::new(host, setup).unwrap_err(),
        Error::MsixOutsideBar("table", 0, 0x8000)
    );
}

#[test]
fn an_msix_table_in_the_rom_bar_is_refused() {
    // Found by the passthrough_config fuzz target: with BIR 6 (reserved) the table was
    // taken to live in the ROM BAR, where guest writes are dropped, so every vector stayed
    // masked.
    let host = nic();
    put(&mut host.config.lock().unwrap(), 0x74, 0x3006);
    put(&mut host.config.lock().unwrap(), 0x78, 0x3806);
    let placement = Placement {
        bars: vec![(0, 0xc000_0000), (1, 0xc000)],
        rom: Some(0xc001_0000),
    };
    let setup = Setup {
        placement: &placement,
        interrupt_line: 16,
        rom: RomSource::Image(vec![0u8; 64 << 10].into()),
        multifunction: false,
        port_link: None,
        quirks: true,
    };
    assert_eq!(
        PassthroughFunction::new(host, setup).unwrap_err(),
        Error::MsixOutsideBar("table", 6, 0x3000)
    );
}

#[test]
fn hand_off_turns_on_memory_decoding_and_maps_the_bars_as_firmware_leaves_them() {
    let host = radeon();
    let mut function = build(host.clone(), 16);
    assert!(host.maps().is_empty(), "nothing mapped before the hand-off");
    function.hand_off();
    assert_eq!(
        host.seen.lock().unwrap().config_writes.last(),
        Some(&(0x04, vec![0x02])),
        "memory on; no I/O BARs, so no I/O decoding; no bus mastering"
    );
    assert_eq!(
        host.maps(),
        vec![
            (0, None, Some(1 << 32), vec![]),
            (2, None, Some(0xc000_0000), vec![])
        ]
    );
    // The ROM stays disabled until the guest enables it.
    assert!(function.bars().iter().all(|b| b.bar.index != ROM_INDEX));
    let nic = nic();
    let mut function = build(nic.clone(), 16);
    function.hand_off();
    assert_eq!(
        nic.seen.lock().unwrap().config_writes.last(),
        Some(&(0x04, vec![0x03])),
        "an I/O BAR: I/O decoding too"
    );
    assert_eq!(nic.maps().len(), 2);
}

#[test]
fn the_multi_function_bit_is_the_guest_slots_not_the_host_slots() {
    let host = radeon();
    put(&mut host.config.lock().unwrap(), 0x0c, 0x0080_0010); // host: multi-function
    let mut alone = build(host.clone(), 16);
    assert_eq!(
        read32(&mut alone, 0x0c),
        0x0000_0010,
        "passed alone: single"
    );
    let mut byte = [0u8; 1];
    alone.config_read(0x0e, &mut byte);
    assert_eq!(byte, [0x00]);
    let host = radeon();
    let mut together = build_with(host.clone(), 16, RomSource::None, true, None);
    together.config_read(0x0e, &mut byte);
    assert_eq!(byte, [0x80], "with other functions in its guest slot");
    // Cache line size still reaches the device.
    together.config_write(0x0c, &[0x10]);
    assert!(host
        .seen
        .lock()
        .unwrap()
        .config_writes
        .contains(&(0x0c, vec![0x10])));
    together.config_write(0x0e, &[0x00]);
    together.config_read(0x0e, &mut byte);
    assert_eq!(byte, [0x80], "read-only");
}

/// `radeon()` with a PCI Express capability of device/port `kind` at 0x70 (version 2,
/// its link 8 GT/s x16 on the host), after MSI.
fn express(kind: u32) -> FakeHost {
    let host = radeon();
    {
        let mut config = host.config.lock().unwrap();
        put(&mut config, 0x50, 0x0080_7005); // MSI, next 0x70
        put(&mut config, 0x70, 0x0002_0010 | (kind << 20));
        put(&mut config, 0x7c, 0x0000_0103); // LNKCAP 8 GT/s x16
        put(&mut config, 0x80, 0x1103_0000); // LNKSTA 8 GT/s x16
        put(&mut config, 0x9c, 0x0000_000e);
    }
    host
}

#[test]
fn behind_a_port_an_integrated_endpoint_becomes_an_endpoint_with_the_ports_link() {
    let link = PcieLink::new(speed::GT16, 8, speed::GT5, 4).unwrap();
    let mut function = build_with(express(9), 16, RomSource::None, false, Some(link));
    assert_eq!(read32(&mut function, 0x70), 0x0002_0010, "endpoint, v2");
    assert_eq!(read32(&mut function, 0x7c), link.capabilities(0));
    assert_eq!(read32(&mut function, 0x80) >> 16, u32::from(link.status()));
    assert_eq!(read32(&mut function, 0x9c), link.capabilities2());
    let ids: Vec<u8> = capability::standard(&guest_view(&mut function))
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec![id::MSI, id::PCI_EXPRESS]);
}

#[test]
fn an_endpoint_keeps_its_own_link_and_bus_0_changes_nothing() {
    let link = PcieLink::new(speed::GT16, 8, speed::GT5, 4).unwrap();
    let mut behind = build_with(express(0), 16, RomSource::None, false, Some(link));
    assert_eq!(read32(&mut behind, 0x7c), 0x0000_0103, "the host's");
    assert_eq!(read32(&mut behind, 0x80), 0x1103_0000);
    let mut on_root = build(express(9), 16);
    assert_eq!(
        read32(&mut on_root, 0x70),
        0x0092_0010,
        "as the host has it"
    );
}

#[test]
fn needs_lists_the_bars_and_the_rom_the_guest_will_see() {
    let host = radeon();
    let needs = needs(&host, &RomSource::None).unwrap();
    let summary: Vec<_> = needs
        .bars
        .iter()
        .map(|b| (b.index, b.kind, b.size))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, BarKind::Mem64, 256 << 20),
            (2, BarKind::Mem32, 256 << 10)
        ]
    );
    assert_eq!(needs.rom, 0);
    let image: Arc<[u8]> = vec![0x55; 40_000].into();
    assert_eq!(
        super::needs(&host, &RomSource::Image(image)).unwrap().rom,
        64 << 10
    );
    let mut host = radeon();
    host.rom_size = 128 << 10;
    assert_eq!(
        super::needs(&host, &RomSource::Device).unwrap().rom,
        128 << 10
    );
    let _ = BAR0;
}

/// An NVIDIA display controller (10de:1c82, class 0300): 16 MiB BAR 0 whose 0x88000 and
/// 0x1800 windows mirror config space, 64-bit prefetchable BAR 1, I/O BAR 5 (the window
/// to BAR 0), MSI at 0x68.
fn geforce() -> FakeHost {
    let mut config = vec![0u8; CONFIG_BYTES];
    put(&mut config, 0x00, 0x1c82_10de);
    put(&mut config, 0x04, 0x0010_0000);
    put(&mut config, 0x08, 0x0300_00a1);
    put(&mut config, 0x10, 0xf600_0000);
    put(&mut config, 0x14, 0xe000_000c);
    put(&mut config, 0x24, 0x0000_e001);
    put(&mut config, 0x34, 0x68);
    put(&mut config, 0x68, 0x0080_0005); // MSI, 64-bit, end of list
    let mut host = host(config, [16 << 20, 256 << 20, 0, 0, 0, 128]);
    host.mirror = Some((0, 0x88000, 0x1000));
    host
}

/// An AMD display controller (1002:6798, class 0300): 64-bit BAR 0 and BAR 2 (config
/// mirror at 0x4000), I/O BAR 4 (the window to BAR 2).
fn tahiti() -> FakeHost {
    let mut config = vec![0u8; CONFIG_BYTES];
    put(&mut config, 0x00, 0x6798_1002);
    put(&mut config, 0x04, 0x0010_0000);
    put(&mut config, 0x08, 0x0300_0000);
    put(&mut config, 0x10, 0xe000_000c);
    put(&mut config, 0x18, 0xf7e0_0004);
    put(&mut config, 0x20, 0x0000_e001);
    let mut host = host(config, [256 << 20, 0, 256 << 10, 0, 256, 0]);
    host.mirror = Some((2, 0x4000, 0x1000));
    host
}

fn bar_read32(function: &mut PassthroughFunction<FakeHost>, bar: u8, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    function.bar_read(bar, offset, &mut data);
    u32::from_le_bytes(data)
}

#[test]
fn nvidia_bar0_mirrors_are_answered_by_the_model_and_trap_only_their_pages() {
    let host = geforce();
    let mut function = build(host.clone(), 16);
    assert_eq!(
        function.traps(0),
        vec![0x1000..0x2000, 0x88000..0x89000],
        "the pages of both mirrors trap, nothing else"
    );
    // Through the mirror the guest sees its own BAR 0, not the host's 0xf6000000.
    let guest_bar0 = read32(&mut function, 0x10);
    assert_ne!(guest_bar0, 0xf600_0000);
    assert_eq!(bar_read32(&mut function, 0, 0x88010), guest_bar0);
    assert_eq!(bar_read32(&mut function, 0, 0x1810), guest_bar0);
    // The identity is still the device's.
    assert_eq!(bar_read32(&mut function, 0, 0x88000), 0x1c82_10de);
    // A BAR written through the mirror moves the model's BAR, and never reaches the device.
    function.bar_write(0, 0x88014, &0xd000_000cu32.to_le_bytes());
    assert_eq!(read32(&mut function, 0x14), 0xd000_000c);
    assert!(host.seen.lock().unwrap().region_writes.is_empty());
    assert!(!host
        .seen
        .lock()
        .unwrap()
        .config_writes
        .iter()
        .any(|(offset, _)| *offset == 0x14));
    // The rest of the trapped page below 0x1800 is the device's.
    assert_eq!(bar_read32(&mut function, 0, 0x1000), 0x0000_0000);
}

#[test]
fn nvidia_msi_acknowledge_through_the_mirror_also_reaches_the_device() {
    let host = geforce();
    let mut function = build(host.clone(), 16);
    function.bar_write(0, 0x88068, &[0xff]);
    assert_eq!(
        host.seen.lock().unwrap().region_writes,
        vec![(0, 0x88068, vec![0xff])],
        "the MSI ID byte write goes to the device"
    );
    // A write to the MSI address goes to the model only.
    function.bar_write(0, 0x8806c, &0xfee0_0000u32.to_le_bytes());
    assert_eq!(host.seen.lock().unwrap().region_writes.len(), 1);
}

#[test]
fn the_nvidia_bar5_window_reaches_config_space_only_when_set_up() {
    let host = geforce();
    let mut function = build(host.clone(), 16);
    let guest_bar0 = read32(&mut function, 0x10);
    // Not enabled: the data register is the device's.
    function.bar_write(5, 0x8, &0x88010u32.to_le_bytes());
    assert_eq!(bar_read32(&mut function, 5, 0xc), 0x1111_1111);
    // Master, enable, then the address of BAR 0's register in the 0x88000 mirror.
    function.bar_write(5, 0x0, &1u32.to_le_bytes());
    function.bar_write(5, 0x4, &1u32.to_le_bytes());
    function.bar_write(5, 0x8, &0x88010u32.to_le_bytes());
    assert_eq!(bar_read32(&mut function, 5, 0xc), guest_bar0);
    // The 256-byte mirror at 0x1800 too.
    function.bar_write(5, 0x8, &0x1800u32.to_le_bytes());
    assert_eq!(bar_read32(&mut function, 5, 0xc), 0x1c82_10de);
    // An address elsewhere in BAR 0: the device again.
    function.bar_write(5, 0x8, &0x2000u32.to_le_bytes());
    assert_eq!(bar_read32(&mut function, 5, 0xc), 0x1111_1111);
    // Every window register write reached the device (it keeps its own state).
    assert_eq!(host.seen.lock().unwrap().region_writes.len(), 6);
}

#[test]
fn amd_bar2_mirror_and_bar4_window_are_answered_by_the_model() {
    let host = tahiti();
    let mut function = build(host.clone(), 16);
    assert_eq!(function.traps(2), vec![0x4000..0x5000]);
    assert!(function.traps(0).is_empty());
    let guest_bar2 = read32(&mut function, 0x18);
    assert_ne!(guest_bar2, 0xf7e0_0004);
    assert_eq!(bar_read32(&mut function, 2, 0x4018), guest_bar2);
    // BAR 4: the address register selects the mirror, the data register reads it.
    function.bar_write(4, 0x0, &0x4018u32.to_le_bytes());
    assert_eq!(bar_read32(&mut function, 4, 0x4), guest_bar2);
    function.bar_write(4, 0x0, &0x5018u32.to_le_bytes());
    assert_eq!(
        bar_read32(&mut function, 4, 0x4),
        0x0808_0808,
        "the device's"
    );
}

#[test]
fn with_quirks_off_the_mirror_shows_the_host() {
    let host = geforce();
    let mut function = build_full(host.clone(), 16, RomSource::None, false, None, false);
    assert!(function.traps(0).is_empty());
    assert!(function.quirks().is_empty());
    assert_eq!(bar_read32(&mut function, 0, 0x88010), 0xf600_0000);
}

#[test]
fn other_functions_get_no_quirks() {
    // A NIC from NVIDIA's vendor ID but not a display controller.
    let mut config = geforce().config.lock().unwrap().clone();
    put(&mut config, 0x08, 0x0200_0000);
    let function = build(host(config, [16 << 20, 256 << 20, 0, 0, 0, 128]), 16);
    assert!(function.quirks().is_empty());
    assert!(
        build(radeon(), 16).quirks().is_empty(),
        "no 64-bit BAR 2, no I/O BAR 4"
    );
}

#[test]
fn a_reset_unmaps_and_silences_the_function_then_rebuilds_it_as_handed_off() {
    let host = radeon();
    let mut function = build(host.clone(), 16);
    function.hand_off();
    host.maps();
    // The guest moves BAR 2 and turns MSI on.
    function.config_write(0x18, &0xd000_0000u32.to_le_bytes());
    function.config_write(0x54, &0xfee0_0000u32.to_le_bytes());
    function.config_write(0x5c, &0x0041u32.to_le_bytes());
    function.config_write(0x52, &[0x01, 0x00]);
    assert!(host.msi().last().is_some_and(|(_, v)| v.is_some()));
    host.maps();
    function.quiesce();
    let unmapped = host.maps();
    assert!(
        unmapped.iter().all(|(_, _, to, _)| to.is_none()) && unmapped.len() == 2,
        "both BARs unmapped: {unmapped:?}"
    );
    assert_eq!(host.msi(), vec![(MsiKind::Msi, None)], "MSI off: INTx back");
    assert_eq!(
        host.seen.lock().unwrap().config_writes.last(),
        Some(&(0x04, vec![0x00])),
        "decoding and bus mastering off on the host"
    );
    function.rebuild().unwrap();
    assert_eq!(
        read32(&mut function, 0x18),
        0xc000_0000,
        "BAR 2 back where it was placed"
    );
    assert_eq!(
        read32(&mut function, 0x50) >> 16 & 1,
        0,
        "MSI disabled in the guest's view"
    );
    assert_eq!(
        host.maps(),
        vec![
            (0, None, Some(1 << 32), vec![]),
            (2, None, Some(0xc000_0000), vec![])
        ],
        "handed off again: decoding on, BARs mapped at their places"
    );
}

#[test]
fn legacy_vga_accesses_go_to_vfios_vga_region_at_their_own_addresses() {
    use super::vga::{VgaTarget, VGA_REGION_INDEX};
    let host = radeon();
    let seen = host.seen.clone();
    let mut function = build(host, 11);
    function.vga_write(0x3d4, &[0x0e]);
    function.vga_write(0xb_8000, b"M\x07");
    let writes = std::mem::take(&mut seen.lock().unwrap().region_writes);
    assert_eq!(
        writes,
        vec![
            (VGA_REGION_INDEX, 0x3d4, vec![0x0e]),
            (VGA_REGION_INDEX, 0xb_8000, b"M\x07".to_vec())
        ]
    );
}

#[test]
fn ati_vga_port_0x3c3_reads_the_guests_io_bar_4() {
    use super::vga::VgaTarget;
    let mut function = build(tahiti(), 16);
    let guest_bar4 = read32(&mut function, 0x20);
    assert_eq!(guest_bar4 & 1, 1, "an I/O BAR");
    let mut byte = [0u8];
    function.vga_read(0x3c3, &mut byte);
    assert_eq!(byte[0], (guest_bar4 >> 8) as u8);
    // quirks=off: the device answers (the fake's regions read as index + offset).
    let mut function = build_with_quirks_off(tahiti());
    let mut byte = [0xaau8];
    function.vga_read(0x3c3, &mut byte);
    assert_eq!(byte[0], 8 + 0xc3);
}

#[test]
fn nvidias_vga_port_backdoor_reaches_the_model_not_the_host() {
    use super::vga::VgaTarget;
    let host = geforce();
    let mut function = build(host.clone(), 16);
    let guest_bar0 = read32(&mut function, 0x10);
    // Read: 0x338 to 0x3d4, the BAR 0 offset (the mirror's BAR 0 register) to 0x3d0, 0x538.
    let read16 = |function: &mut PassthroughFunction<FakeHost>, offset: u16| {
        function.vga_write(0x3d4, &0x338u16.to_le_bytes());
        function.vga_write(0x3d0, &offset.to_le_bytes());
        function.vga_write(0x3d4, &0x538u16.to_le_bytes());
        let mut data = [0u8; 2];
        function.vga_read(0x3d0, &mut data);
        u16::from_le_bytes(data)
    };
    let low = read16(&mut function, 0x1810);
    let high = read16(&mut function, 0x1812);
    assert_eq!(u32::from(low) | u32::from(high) << 16, guest_bar0);
    assert_ne!(guest_bar0, 0xf600_0000, "not the host's BAR 0");
    // Write: 0x738 instead; BAR 1's upper half moves in the model, not on the device.
    host.seen.lock().unwrap().region_writes.clear();
    function.vga_write(0x3d4, &0x338u16.to_le_bytes());
    function.vga_write(0x3d0, &0x1816u16.to_le_bytes());
    function.vga_write(0x3d4, &0x738u16.to_le_bytes());
    function.vga_write(0x3d0, &0xd000u16.to_le_bytes());
    assert_eq!(read32(&mut function, 0x14) >> 16, 0xd000);
    let writes = std::mem::take(&mut host.seen.lock().unwrap().region_writes);
    assert_eq!(
        writes,
        vec![
            (8, 0x3d4, vec![0x38, 0x03]),
            (8, 0x3d0, vec![0x16, 0x18]),
            (8, 0x3d4, vec![0x38, 0x07]),
        ],
        "the select steps reach the device, the data write does not"
    );
    // Out of order, the sequence is nothing: 0x538 with no window reads the device.
    function.vga_write(0x3d4, &0x538u16.to_le_bytes());
    let mut data = [0xaau8; 2];
    function.vga_read(0x3d0, &mut data);
    assert_eq!(
        data,
        [8 + 0xd0; 2],
        "the device's own (index + offset in the fake)"
    );
}

fn build_with_quirks_off(host: FakeHost) -> PassthroughFunction<FakeHost> {
    build_full(host, 16, RomSource::None, false, None, false)
}
