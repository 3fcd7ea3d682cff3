//! MADT ("APIC"): one local APIC per vCPU and the IOAPIC.
//!
//! Written by hand rather than with acpi_tables' MADT because x86 also needs the interrupt
//! source override and local-APIC NMI entries, which that builder does not offer.

use super::{finish_table, table_header};
use crate::layout;

/// MADT entry type: processor local APIC.
const TYPE_LOCAL_APIC: u8 = 0;
/// MADT entry type: I/O APIC.
const TYPE_IOAPIC: u8 = 1;
/// MADT entry type: local APIC NMI.
const TYPE_LOCAL_APIC_NMI: u8 = 4;
/// Local APIC flag: enabled.
const LAPIC_ENABLED: u32 = 1;
/// The IOAPIC's id: after the vCPUs' APIC ids, so they never collide.
const fn ioapic_id(num_cpus: usize) -> u8 {
    num_cpus as u8
}

/// Build the MADT for `num_cpus` vCPUs with APIC ids `0..num_cpus` (at most 254).
pub fn build(num_cpus: usize) -> Vec<u8> {
    let mut table = table_header(*b"APIC", 3);
    table.extend_from_slice(&(layout::LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // flags: no dual 8259 setup to undo
    for cpu in 0..num_cpus {
        let id = cpu as u8;
        table.extend_from_slice(&[TYPE_LOCAL_APIC, 8, id, id]);
        table.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
    }
    table.extend_from_slice(&[TYPE_IOAPIC, 12, ioapic_id(num_cpus), 0]);
    table.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // GSI base
                                                  // LINT1 of every local APIC is the NMI input.
    table.extend_from_slice(&[TYPE_LOCAL_APIC_NMI, 6, 0xff, 0x00, 0x00, 1]);
    finish_table(table)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{blob, find};
    use super::*;
    use crate::acpi::checksum;

    fn entries(madt: &[u8]) -> Vec<&[u8]> {
        let mut out = vec![];
        let mut rest = &madt[44..];
        while !rest.is_empty() {
            let len = rest[1] as usize;
            out.push(&rest[..len]);
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn one_local_apic_per_vcpu_and_an_ioapic() {
        let blob = blob(4);
        let madt = find(&blob, b"APIC");
        assert_eq!(checksum(madt), 0);
        assert_eq!(&madt[36..40], &0xfee0_0000u32.to_le_bytes());
        let entries = entries(madt);
        let lapics: Vec<_> = entries.iter().filter(|e| e[0] == TYPE_LOCAL_APIC).collect();
        assert_eq!(lapics.len(), 4);
        for (i, lapic) in lapics.iter().enumerate() {
            assert_eq!(lapic[3] as usize, i, "APIC id");
            assert_eq!(lapic[4] & 1, 1, "enabled");
        }
        let ioapic = entries.iter().find(|e| e[0] == TYPE_IOAPIC).unwrap();
        assert_eq!(ioapic[2], 4, "IOAPIC id after the vCPUs");
        assert_eq!(&ioapic[4..8], &0xfec0_0000u32.to_le_bytes());
        assert_eq!(&ioapic[8..12], &0u32.to_le_bytes());
    }
}
