//! DSDT: the host bridge PCI0 with its resource windows and INTx routing, the nodes of
//! functions that offer their VBIOS through `ATRM`, COM1, the MMIO console UART, and `_S5_`.
//!
//! With ACPI present Linux only scans PCI roots the DSDT describes, so PCI0 carries the
//! windows BARs may be placed in and the `_PRT` that maps INTx pins to IOAPIC inputs.

use acpi_tables::{
    aml::{
        AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Name,
        Package, Path, ResourceTemplate, IO,
    },
    sdt::Sdt,
    Aml,
};

use super::{atrm::AtrmImage, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout::{self, GuestLayout};

/// PCI devices per bus.
const PCI_SLOTS: u32 = 32;

/// The GSI a slot's INTx pin (0 = INTA) is wired to: the usual swizzle over four IOAPIC
/// inputs from [`layout::PCI_INTX_GSI_BASE`]. The PCI root reports the same in Interrupt Line.
pub fn intx_gsi(slot: u32, pin: u32) -> u32 {
    layout::PCI_INTX_GSI_BASE + (slot + pin) % 4
}

/// Build the DSDT, with nodes offering the VBIOS of the `atrm` functions.
pub fn build(guest: &GuestLayout, atrm: &[AtrmImage]) -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = Vec::new();
    sleep_states().to_aml_bytes(&mut body);
    pci_host_bridge(guest, &mut body);
    super::atrm::nodes(atrm, &mut body);
    com1(&mut body);
    console_uart(&mut body);
    dsdt.append_slice(&body);
    dsdt
}

/// `\_S5_`: soft-off with sleep type [`layout::ACPI_S5_SLEEP_TYPE`], the value the VMM's
/// sleep control register watches for.
fn sleep_states() -> Name {
    let s5 = layout::ACPI_S5_SLEEP_TYPE;
    Name::new(Path::new("_S5_"), &Package::new(vec![&s5, &s5, &0u8, &0u8]))
}

fn pci_host_bridge(guest: &GuestLayout, sink: &mut Vec<u8>) {
    let last_bus = u16::from(guest.pci.buses.saturating_sub(1));
    let buses = AddressSpace::new_bus_number(0u16, last_bus);
    let config_ports = IO::new(layout::PCI_CONFIG_ADDRESS_PORT, 0xcf8, 1, 8);
    let io_low = AddressSpace::new_io(0u16, 0x0cf7, None);
    let io_high = AddressSpace::new_io(0x0d00u16, 0xffff, None);
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        layout::PCI_MMIO32_START as u32,
        (layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE - 1) as u32,
        None,
    );
    let mmio64 = guest.pci.mmio64.as_ref().map(|window| {
        AddressSpace::new_memory(
            AddressSpaceCacheable::PreFetchable,
            true,
            window.start,
            window.end - 1,
            None,
        )
    });
    let mut resources: Vec<&dyn Aml> = vec![&buses, &config_ports, &io_low, &io_high, &mmio32];
    if let Some(mmio64) = &mmio64 {
        resources.push(mmio64);
    }
    let crs = ResourceTemplate::new(resources);
    let routes = intx_routes();
    let route_refs: Vec<&dyn Aml> = routes.iter().map(|r| r as &dyn Aml).collect();
    let prt = Package::new(route_refs);
    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    let hid_name = Name::new(Path::new("_HID"), &hid);
    let cid_name = Name::new(Path::new("_CID"), &cid);
    let adr = Name::new(Path::new("_ADR"), &0u8);
    let seg = Name::new(Path::new("_SEG"), &0u8);
    let uid = Name::new(Path::new("_UID"), &0u8);
    let bbn = Name::new(Path::new("_BBN"), &0u8);
    let crs_name = Name::new(Path::new("_CRS"), &crs);
    let prt_name = Name::new(Path::new("_PRT"), &prt);
    Device::new(
        Path::new("_SB_.PCI0"),
        vec![
            &hid_name, &cid_name, &adr, &seg, &uid, &bbn, &crs_name, &prt_name,
        ],
    )
    .to_aml_bytes(sink);
}

/// One `_PRT` entry: Package { address (slot << 16 | 0xffff), pin, source 0, GSI }.
struct IntxRoute {
    address: u32,
    pin: u8,
    gsi: u32,
}

impl Aml for IntxRoute {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        Package::new(vec![&self.address, &self.pin, &0u8, &self.gsi]).to_aml_bytes(sink);
    }
}

fn intx_routes() -> Vec<IntxRoute> {
    (0..PCI_SLOTS)
        .flat_map(|slot| {
            (0..4u32).map(move |pin| IntxRoute {
                address: (slot << 16) | 0xffff,
                pin: pin as u8,
                gsi: intx_gsi(slot, pin),
            })
        })
        .collect()
}

fn com1(sink: &mut Vec<u8>) {
    let ports = IO::new(layout::COM1_PORT, layout::COM1_PORT, 1, 8);
    uart("_SB_.COM1", 0, &ports, layout::COM1_IRQ, sink);
}

/// The MMIO console UART, after COM1 so that Linux keeps ttyS0 for COM1 (its PNP entry
/// matches the legacy 0x3f8 slot) and gives this one the next free line, ttyS1.
fn console_uart(sink: &mut Vec<u8>) {
    // Both constants are below 4 GiB by definition (layout's 32-bit hole).
    let registers = Memory32Fixed::new(
        true,
        layout::CONSOLE_UART_START as u32,
        layout::CONSOLE_UART_SIZE as u32,
    );
    uart("_SB_.CONS", 1, &registers, layout::CONSOLE_UART_IRQ, sink);
}

/// A 16550 (PNP0501) with its registers at `registers` and an edge ISA interrupt.
fn uart(path: &str, uid: u8, registers: &dyn Aml, irq: u32, sink: &mut Vec<u8>) {
    let hid = EISAName::new("PNP0501");
    let irq = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![registers, &irq]);
    let hid_name = Name::new(Path::new("_HID"), &hid);
    let uid = Name::new(Path::new("_UID"), &uid);
    let crs_name = Name::new(Path::new("_CRS"), &crs);
    Device::new(Path::new(path), vec![&hid_name, &uid, &crs_name]).to_aml_bytes(sink);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{blob, find};
    use super::*;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn describes_pci0_as_a_pcie_host_bridge() {
        let blob = blob(1);
        let dsdt = find(&blob, b"DSDT");
        assert!(contains(dsdt, b"PCI0"));
        // EISAID("PNP0A08") encodes to 41 d0 0a 08.
        assert!(contains(dsdt, &[0x41, 0xd0, 0x0a, 0x08]));
        assert!(contains(dsdt, b"_CRS"));
        assert!(contains(dsdt, b"_PRT"));
    }

    #[test]
    fn crs_carries_both_mmio_windows() {
        let guest = GuestLayout::new(256 << 20, 46).unwrap();
        let mut bytes = Vec::new();
        pci_host_bridge(&guest, &mut bytes);
        // DWordMemory min/max of the 32-bit window, little endian.
        assert!(contains(&bytes, &0xc000_0000u32.to_le_bytes()));
        assert!(contains(&bytes, &0xdfff_ffffu32.to_le_bytes()));
        // QWordMemory of the 64-bit window.
        let window = guest.pci.mmio64.clone().unwrap();
        assert!(contains(&bytes, &window.start.to_le_bytes()));
        assert!(contains(&bytes, &(window.end - 1).to_le_bytes()));
    }

    /// The WordBusNumber descriptor's min, max and length fields in PCI0's `_CRS`.
    fn bus_range(guest: &GuestLayout) -> Vec<u8> {
        let mut bytes = Vec::new();
        pci_host_bridge(guest, &mut bytes);
        // WordBusNumber: tag 0x88, length 13, resource type 2 (bus), general and type
        // flags, granularity, min, max, translation, length.
        let word_bus = [0x88, 0x0d, 0x00, 0x02];
        let at = bytes
            .windows(4)
            .position(|w| w == word_bus)
            .expect("a WordBusNumber descriptor");
        bytes[at + 6..at + 16].to_vec()
    }

    #[test]
    fn crs_gives_the_root_bridge_the_buses_in_use() {
        let mut guest = GuestLayout::new(256 << 20, 46).unwrap();
        assert_eq!(
            bus_range(&guest),
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            "bus 0 only"
        );
        guest.pci.buses = 3;
        assert_eq!(
            bus_range(&guest),
            [0, 0, 0, 0, 2, 0, 0, 0, 3, 0],
            "buses 0-2"
        );
    }

    #[test]
    fn crs_has_no_64_bit_window_when_there_is_no_room() {
        let mut guest = GuestLayout::new(256 << 20, 46).unwrap();
        guest.pci.mmio64 = None;
        let mut bytes = Vec::new();
        pci_host_bridge(&guest, &mut bytes);
        // QWordMemory descriptors start with tag 0x8a.
        assert!(!contains(&bytes, &[0x8a, 0x2b, 0x00, 0x00]));
        guest.pci.mmio64 = Some((8 << 30)..(16 << 30));
        let mut bytes = Vec::new();
        pci_host_bridge(&guest, &mut bytes);
        assert!(contains(&bytes, &[0x8a, 0x2b, 0x00, 0x00]));
        assert!(contains(&bytes, &((16u64 << 30) - 1).to_le_bytes()));
    }

    #[test]
    fn s5_names_the_sleep_type_the_vmm_expects() {
        let mut bytes = Vec::new();
        sleep_states().to_aml_bytes(&mut bytes);
        // NameOp "_S5_" PackageOp len count=4, BytePrefix 5, BytePrefix 5, Zero, Zero.
        assert_eq!(
            bytes,
            vec![0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 5, 0x0a, 5, 0, 0]
        );
    }

    #[test]
    fn the_console_uart_is_a_16550_at_its_mmio_page_after_com1() {
        let mut bytes = Vec::new();
        console_uart(&mut bytes);
        // Memory32Fixed descriptor: 0x86, length 9, read-write, base, length (LE).
        let mut descriptor = vec![0x86, 0x09, 0x00, 0x01];
        descriptor.extend_from_slice(&(layout::CONSOLE_UART_START as u32).to_le_bytes());
        descriptor.extend_from_slice(&(layout::CONSOLE_UART_SIZE as u32).to_le_bytes());
        assert!(contains(&bytes, &descriptor), "register page in _CRS");
        assert!(contains(&bytes, b"CONS"));
        let pnp0501 = [0x41, 0xd0, 0x05, 0x01]; // EISA id of PNP0501
        assert!(contains(&bytes, &pnp0501));
        let dsdt = build(&GuestLayout::new(256 << 20, 46).unwrap(), &[]);
        let table = dsdt.as_slice();
        let com1_at = table.windows(4).position(|w| w == b"COM1");
        let cons_at = table.windows(4).position(|w| w == b"CONS");
        assert!(com1_at < cons_at && cons_at.is_some(), "COM1 first");
    }

    #[test]
    fn intx_swizzle_spreads_pins_over_four_gsis() {
        assert_eq!(intx_gsi(0, 0), 16);
        assert_eq!(intx_gsi(1, 0), 17);
        assert_eq!(intx_gsi(3, 1), 16);
        assert_eq!(intx_routes().len(), 128);
    }
}
