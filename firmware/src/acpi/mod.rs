//! ACPI tables: RSDP → XSDT → {FADT → DSDT, MADT, MCFG}.
//!
//! The tables are laid out back to back in the ACPI area of the layout, RSDP first so the
//! kernel's scan of the BIOS area finds it even without `acpi_rsdp_addr`.

pub mod atrm;
pub mod dsdt;
mod fadt;
mod madt;
pub mod vfct;

use acpi_tables::{mcfg::MCFG, rsdp::Rsdp, xsdt::XSDT, Aml};

use crate::layout::{self, GuestLayout};

/// OEM id stamped into every table.
pub const OEM_ID: [u8; 6] = *b"MINVMM";
/// OEM table id; the XSDT's must match the FADT's per the spec.
pub const OEM_TABLE_ID: [u8; 8] = *b"MINIVMM ";
/// OEM revision.
pub const OEM_REVISION: u32 = 1;

/// Errors building the ACPI tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The tables outgrew the ACPI area of the layout.
    #[error("the ACPI tables need {0} bytes, more than the {1}-byte ACPI area")]
    TooLarge(usize, u64),
    /// The MADT encodes APIC ids in one byte.
    #[error("{0} vCPUs do not fit in the MADT's 8-bit APIC ids (at most 254)")]
    TooManyCpus(usize),
}

/// What the tables describe.
#[derive(Debug)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs; APIC ids are 0..n.
    pub num_cpus: usize,
    /// The guest address map (PCI windows).
    pub layout: &'a GuestLayout,
    /// Addresses of tables placed elsewhere (a VFCT) that the XSDT must list too.
    pub extra_tables: &'a [u64],
    /// Functions whose VBIOS the DSDT offers through an `ATRM` method.
    pub atrm: &'a [atrm::AtrmImage],
}

/// The tables as one blob, ready to copy to `start` in guest memory.
#[derive(Debug, Clone)]
pub struct AcpiBlob {
    /// Guest physical address of the first byte.
    pub start: u64,
    /// The tables.
    pub bytes: Vec<u8>,
    /// Guest physical address of the RSDP.
    pub rsdp_addr: u64,
}

/// Build every table for `config`.
pub fn build(config: &AcpiConfig) -> Result<AcpiBlob, Error> {
    if config.num_cpus > 254 {
        return Err(Error::TooManyCpus(config.num_cpus));
    }
    let mut writer = BlobWriter::new(layout::ACPI_START);
    // The RSDP points at the XSDT, which points at the rest: reserve the head, fill it last.
    let rsdp_addr = writer.reserve(Rsdp::len());
    let dsdt = writer.push(&to_bytes(&dsdt::build(config.layout, config.atrm)));
    let fadt = writer.push(&to_bytes(&fadt::build(dsdt)));
    let madt = writer.push(&madt::build(config.num_cpus));
    let mcfg = writer.push(&to_bytes(&mcfg(config.layout)));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for table in [fadt, madt, mcfg]
        .into_iter()
        .chain(config.extra_tables.iter().copied())
    {
        xsdt.add_entry(table);
    }
    let xsdt = writer.push(&to_bytes(&xsdt));
    writer.write_at(rsdp_addr, &to_bytes(&Rsdp::new(OEM_ID, xsdt)));
    let bytes = writer.finish();
    if bytes.len() as u64 > layout::ACPI_SIZE {
        return Err(Error::TooLarge(bytes.len(), layout::ACPI_SIZE));
    }
    Ok(AcpiBlob {
        start: layout::ACPI_START,
        bytes,
        rsdp_addr,
    })
}

/// MCFG: one ECAM segment covering the buses in use.
fn mcfg(guest: &GuestLayout) -> MCFG {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(
        layout::PCI_ECAM_START,
        0,
        0,
        guest.pci.buses.saturating_sub(1),
    );
    mcfg
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// The 36-byte header every system description table starts with; length and checksum are
/// filled in by [`finish_table`].
fn table_header(signature: [u8; 4], revision: u8) -> Vec<u8> {
    let mut header = Vec::with_capacity(64);
    header.extend_from_slice(&signature);
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&[revision, 0]);
    header.extend_from_slice(&OEM_ID);
    header.extend_from_slice(&OEM_TABLE_ID);
    header.extend_from_slice(&OEM_REVISION.to_le_bytes());
    header.extend_from_slice(&acpi_tables::CREATOR_ID);
    header.extend_from_slice(&acpi_tables::CREATOR_REVISION);
    header
}

/// Set the length and checksum of a table built in a byte vector.
fn finish_table(mut table: Vec<u8>) -> Vec<u8> {
    let len = (table.len() as u32).to_le_bytes();
    if let Some(field) = table.get_mut(4..8) {
        field.copy_from_slice(&len);
    }
    if let Some(sum) = table.get_mut(9) {
        *sum = 0;
    }
    let sum = 0u8.wrapping_sub(checksum(&table));
    if let Some(field) = table.get_mut(9) {
        *field = sum;
    }
    table
}

/// Sum of all bytes, which is 0 for a table with a correct checksum.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// Appends tables at 16-byte aligned guest addresses.
struct BlobWriter {
    start: u64,
    bytes: Vec<u8>,
}

impl BlobWriter {
    fn new(start: u64) -> Self {
        BlobWriter {
            start,
            bytes: Vec::new(),
        }
    }

    fn reserve(&mut self, len: usize) -> u64 {
        let aligned = self.bytes.len().next_multiple_of(16);
        self.bytes.resize(aligned + len, 0);
        self.start + aligned as u64
    }

    fn push(&mut self, table: &[u8]) -> u64 {
        let addr = self.reserve(table.len());
        self.write_at(addr, table);
        addr
    }

    /// Copy `data` over space [`reserve`](Self::reserve) handed out.
    fn write_at(&mut self, addr: u64, data: &[u8]) {
        let offset = (addr - self.start) as usize;
        if let Some(dst) = self.bytes.get_mut(offset..offset + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A table found in a blob: its signature and bytes.
    pub(crate) fn table_at(blob: &AcpiBlob, addr: u64) -> &[u8] {
        let offset = (addr - blob.start) as usize;
        let len = u32::from_le_bytes(blob.bytes[offset + 4..offset + 8].try_into().unwrap());
        &blob.bytes[offset..offset + len as usize]
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    /// Follow RSDP → XSDT and return every table it lists, checking each checksum.
    pub(crate) fn tables(blob: &AcpiBlob) -> Vec<&[u8]> {
        let offset = (blob.rsdp_addr - blob.start) as usize;
        let rsdp = &blob.bytes[offset..offset + 36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(checksum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(checksum(rsdp), 0, "RSDP extended checksum");
        let xsdt = table_at(blob, u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(checksum(xsdt), 0, "XSDT checksum");
        let mut found = vec![];
        for entry in xsdt[36..].chunks(8) {
            let table = table_at(blob, u64::from_le_bytes(entry.try_into().unwrap()));
            assert_eq!(
                checksum(table),
                0,
                "{} checksum",
                String::from_utf8_lossy(&table[..4])
            );
            found.push(table);
        }
        found
    }

    pub(crate) fn find<'a>(blob: &'a AcpiBlob, signature: &[u8; 4]) -> &'a [u8] {
        if signature == b"DSDT" {
            let fadt = find(blob, b"FACP");
            return table_at(blob, u64_at(fadt, 140));
        }
        tables(blob)
            .into_iter()
            .find(|t| &t[..4] == signature)
            .unwrap_or_else(|| panic!("no {} table", String::from_utf8_lossy(signature)))
    }

    pub(crate) fn blob(num_cpus: usize) -> AcpiBlob {
        let layout = GuestLayout::new(256 << 20, 46).unwrap();
        build(&AcpiConfig {
            extra_tables: &[],
            atrm: &[],
            num_cpus,
            layout: &layout,
        })
        .unwrap()
    }

    #[test]
    fn rsdp_is_first_and_where_the_kernel_scans() {
        let blob = blob(1);
        assert_eq!(blob.rsdp_addr, layout::ACPI_START);
        assert_eq!(blob.rsdp_addr % 16, 0);
        assert_eq!(&blob.bytes[..8], b"RSD PTR ");
        assert_eq!(blob.bytes[15], 2, "ACPI 2.0+ RSDP, so the XSDT is used");
    }

    #[test]
    fn xsdt_lists_fadt_madt_mcfg_with_valid_checksums() {
        let blob = blob(2);
        let signatures: Vec<&[u8]> = tables(&blob).iter().map(|t| &t[..4]).collect();
        assert_eq!(signatures, vec![&b"FACP"[..], b"APIC", b"MCFG"]);
    }

    #[test]
    fn dsdt_checksum_is_valid() {
        let blob = blob(1);
        let dsdt = find(&blob, b"DSDT");
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(checksum(dsdt), 0);
    }

    #[test]
    fn mcfg_describes_ecam() {
        let blob = blob(1);
        let mcfg = find(&blob, b"MCFG");
        // Header (36) + reserved (8), then base, segment, start bus, end bus.
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(u64_at(mcfg, 44), layout::PCI_ECAM_START);
        // Bus 0 only: a larger range makes Linux probe every bus for peer host bridges.
        assert_eq!(&mcfg[52..56], &[0, 0, 0, 0]);
        // With two root ports, buses 0-2.
        let mut layout = GuestLayout::new(256 << 20, 46).unwrap();
        layout.pci.buses = 3;
        let blob = build(&AcpiConfig {
            num_cpus: 1,
            layout: &layout,
            extra_tables: &[],
            atrm: &[],
        })
        .unwrap();
        let mcfg = find(&blob, b"MCFG");
        assert_eq!(&mcfg[52..56], &[0, 0, 0, 2]);
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        let layout = GuestLayout::new(256 << 20, 46).unwrap();
        let err = build(&AcpiConfig {
            extra_tables: &[],
            atrm: &[],
            num_cpus: 300,
            layout: &layout,
        })
        .unwrap_err();
        assert_eq!(err, Error::TooManyCpus(300));
    }
}
