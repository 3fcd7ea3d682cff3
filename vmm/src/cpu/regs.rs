//! Registers, segments and the boot page tables for a vCPU entering 64-bit mode.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use minivmm_firmware::layout;
use vm_memory::{Bytes, GuestAddress};

use super::Error;
use crate::memory::GuestMemory;

/// CR0: protection enable.
const CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on modern CPUs).
const CR0_ET: u64 = 1 << 4;
/// CR0: paging.
const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension, required for long mode.
const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable and long mode active.
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Page-table entry flags: present, writable; PS marks a 2 MiB page in a PD.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_PS: u64 = 1 << 7;
/// RFLAGS bit 1 is reserved and must be set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// Boot GDT selectors the Linux 64-bit boot protocol names.
pub const BOOT_CS: u16 = 0x10;
/// Flat data segment selector.
pub const BOOT_DS: u16 = 0x18;
/// Task state segment selector (VMX needs a usable TR).
pub const BOOT_TSS: u16 = 0x20;

/// Boot GDT: null, null, code64 (0x10), data (0x18), TSS (0x20).
const GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Pack a segment descriptor from flags (access byte low, flags nibble high), base, limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// Unpack a descriptor into KVM's segment form.
fn segment(selector: u16, entry: u64) -> kvm_segment {
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: {
            let raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
            // With G set the limit counts 4 KiB pages.
            if (entry >> 55) & 1 == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Write the boot GDT, an empty IDT and the identity page tables (0..4 GiB, 2 MiB pages).
pub fn write_boot_tables(memory: &GuestMemory) -> Result<(), Error> {
    for (i, entry) in GDT.iter().enumerate() {
        let addr = GuestAddress(layout::BOOT_GDT_START + 8 * i as u64);
        memory
            .write_obj(*entry, addr)
            .map_err(|_| Error::GuestMemory("GDT"))?;
    }
    memory
        .write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(|_| Error::GuestMemory("IDT"))?;
    let table = |addr: u64, entry: u64| {
        memory
            .write_obj(entry, GuestAddress(addr))
            .map_err(|_| Error::GuestMemory("page tables"))
    };
    table(layout::PML4_START, layout::PDPTE_START | PTE_PRESENT_RW)?;
    for gib in 0..layout::PDE_COUNT {
        let pd = layout::PDE_START + gib * 0x1000;
        table(layout::PDPTE_START + gib * 8, pd | PTE_PRESENT_RW)?;
        for i in 0..512u64 {
            let page = (gib << 30) | (i << 21);
            table(pd + i * 8, page | PTE_PRESENT_RW | PDE_PS)?;
        }
    }
    Ok(())
}

/// Segment and control registers for 64-bit mode with the boot page tables.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment(BOOT_CS, GDT[2]);
    let data = segment(BOOT_DS, GDT[3]);
    let tss = segment(BOOT_TSS, GDT[4]);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// Put `vcpu` in 64-bit mode at `entry`, with RSI pointing at the zero page.
pub fn setup(vcpu: &VcpuFd, index: usize, entry: u64) -> Result<(), Error> {
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| Error::Ioctl(index, "KVM_GET_SREGS", e))?;
    vcpu.set_sregs(&long_mode_sregs(sregs))
        .map_err(|e| Error::Ioctl(index, "KVM_SET_SREGS", e))?;
    let regs = kvm_regs {
        rip: entry,
        rsi: layout::ZERO_PAGE_START,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| Error::Ioctl(index, "KVM_SET_REGS", e))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| Error::Ioctl(index, "KVM_SET_FPU", e))
}

/// Local APIC: LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a BIOS would leave them.
pub fn setup_lapic(vcpu: &VcpuFd, index: usize) -> Result<(), Error> {
    /// LVT LINT0 and LINT1 register offsets in the APIC page.
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    /// Delivery modes, bits 8..=10.
    const DM_EXTINT: u32 = 0x7 << 8;
    const DM_NMI: u32 = 0x4 << 8;
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| Error::Ioctl(index, "KVM_GET_LAPIC", e))?;
    for (offset, mode) in [(LVT_LINT0, DM_EXTINT), (LVT_LINT1, DM_NMI)] {
        let Some(reg) = lapic.regs.get_mut(offset..offset + 4) else {
            continue;
        };
        let mut bytes = [0u8; 4];
        for (b, r) in bytes.iter_mut().zip(reg.iter()) {
            *b = *r as u8;
        }
        let value = (u32::from_le_bytes(bytes) & !0x700) | mode;
        for (r, b) in reg.iter_mut().zip(value.to_le_bytes()) {
            *r = b as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(|e| Error::Ioctl(index, "KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment(BOOT_CS, GDT[2]);
        assert_eq!((code.base, code.limit), (0, 0xffff_ffff));
        assert_eq!((code.l, code.db, code.present, code.type_), (1, 0, 1, 0xb));
        let data = segment(BOOT_DS, GDT[3]);
        assert_eq!((data.l, data.db, data.type_, data.s), (0, 1, 0x3, 1));
        let tss = segment(BOOT_TSS, GDT[4]);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
    }

    #[test]
    fn sregs_enable_long_mode_with_boot_page_tables() {
        let sregs = long_mode_sregs(kvm_sregs::default());
        assert_eq!(sregs.cr3, layout::PML4_START);
        assert_ne!(sregs.cr0 & CR0_PG, 0);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.selector, 0x10);
        assert_eq!(sregs.ss.selector, 0x18);
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let memory = crate::memory::from_ranges(&[(0, 1 << 20)]).unwrap();
        write_boot_tables(&memory).unwrap();
        let pml4: u64 = memory.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, layout::PDPTE_START);
        // The last 2 MiB page below 4 GiB maps to itself.
        let pdpte3: u64 = memory
            .read_obj(GuestAddress(layout::PDPTE_START + 3 * 8))
            .unwrap();
        let last: u64 = memory
            .read_obj(GuestAddress((pdpte3 & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(last & !0xfff, 0xffe0_0000);
        assert_ne!(last & PDE_PS, 0);
    }
}
