//! CPUID: what KVM supports, with each vCPU's APIC id and the VM's topology filled in.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: EBX[23:16] holds the logical processor count.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Extended topology level types (leaf 0xb/0x1f ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Physical address width when CPUID has no leaf 0x8000_0008 (the architectural default).
const DEFAULT_ADDRESS_BITS: u8 = 36;

/// The guest's physical address width: CPUID 0x8000_0008 as KVM reports it (EAX[7:0], the
/// host's usable width; EAX[23:16], when KVM sets it, the narrower width its page tables
/// map for guests), and never more than `host_bits`, the host CPU's own. The guest's
/// CPUID carries KVM's leaf unchanged, so its kernel sees at least this width; minivmm keeps
/// guest RAM and every BAR below it.
pub fn address_bits(supported: &CpuId, host_bits: Option<u8>) -> u8 {
    let leaf = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map(|e| e.eax);
    let mut bits = match leaf.map(|eax| (eax & 0xff) as u8) {
        Some(bits) if bits != 0 => bits,
        _ => DEFAULT_ADDRESS_BITS,
    };
    if let Some(guest) = leaf.map(|eax| ((eax >> 16) & 0xff) as u8) {
        if guest != 0 {
            bits = bits.min(guest);
        }
    }
    if let Some(host) = host_bits {
        bits = bits.min(host);
    }
    bits.clamp(32, 64)
}

/// The host CPU's physical address width (CPUID 0x8000_0008 EAX[7:0]), when it has the leaf.
pub fn host_address_bits() -> Option<u8> {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID is available on every x86-64 CPU and only reads identification leaves.
    #[allow(unused_unsafe)]
    let max_extended = unsafe { __cpuid(0x8000_0000) }.eax;
    if max_extended < 0x8000_0008 {
        return None;
    }
    // SAFETY: as above; the leaf exists (checked against the highest extended leaf).
    #[allow(unused_unsafe)]
    let leaf = unsafe { __cpuid(0x8000_0008) };
    Some((leaf.eax & 0xff) as u8)
}

/// Whether the host CPU is AMD's (vendor "AuthenticAMD", or Hygon's licensed copy), where KVM
/// runs guests with SVM.
pub fn host_is_amd() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID leaf 0 exists on every x86-64 CPU and only reads the vendor string.
    #[allow(unused_unsafe)]
    let leaf = unsafe { __cpuid(0) };
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&leaf.ecx.to_le_bytes());
    &vendor == b"AuthenticAMD" || &vendor == b"HygonGenuine"
}

/// CPUID 1 ECX: the local APIC's TSC-deadline mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Offer the TSC-deadline timer (KVM emulates it when it has KVM_CAP_TSC_DEADLINE_TIMER).
/// Linux then programs its timer with one MSR write instead of the APIC's initial-count
/// register (an MMIO access KVM must decode), and skips calibrating the APIC timer.
pub fn offer_tsc_deadline(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == 0x1 {
            entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
        }
    }
}

/// Bits of APIC id needed to number `cpus` vCPUs (all cores of one package, one thread each).
fn core_id_bits(cpus: usize) -> u32 {
    usize::BITS - cpus.saturating_sub(1).leading_zeros()
}

/// Adjust KVM's supported CPUID for vCPU `index` of `cpus`, whose APIC id is `index`.
pub fn for_vcpu(supported: &CpuId, index: usize, cpus: usize) -> CpuId {
    let mut cpuid = supported.clone();
    let apic_id = index as u32;
    let count = cpus as u32;
    for entry in cpuid.as_mut_slice() {
        patch(entry, apic_id, count);
    }
    cpuid
}

fn patch(entry: &mut kvm_cpuid_entry2, apic_id: u32, cpus: u32) {
    match entry.function {
        0x1 => {
            entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((cpus & 0xff) << 16);
            entry.ecx |= LEAF1_ECX_HYPERVISOR;
            if cpus > 1 {
                entry.edx |= LEAF1_EDX_HTT;
            }
        }
        0xb | 0x1f => {
            let (shift, count, level) = match entry.index {
                0 => (0, 1, LEVEL_SMT),
                1 => (core_id_bits(cpus as usize), cpus, LEVEL_CORE),
                _ => (0, 0, 0),
            };
            entry.eax = shift;
            entry.ebx = count;
            entry.ecx = (level << 8) | entry.index;
            entry.edx = apic_id;
        }
        0x8000_0008 => {
            // AMD: number of cores minus one, and how many APIC id bits number them.
            let bits = core_id_bits(cpus as usize);
            entry.ecx = (entry.ecx & !0xf0ff) | (bits << 12) | (cpus - 1);
        }
        0x8000_001e => {
            // AMD extended APIC id; one thread per core, node 0.
            entry.eax = apic_id;
            entry.ebx = apic_id & 0xff;
            entry.ecx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> CpuId {
        let leaf = |function, index| kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        };
        CpuId::from_entries(&[
            leaf(0x1, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0x8000_0008, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_count() {
        let cpuid = for_vcpu(&supported(), 2, 4);
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 2);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(find(&cpuid, 0xb, 0).edx, 2);
        assert_eq!(find(&cpuid, 0xb, 1).ebx, 4);
        assert_eq!(find(&cpuid, 0xb, 1).eax, 2, "two bits number four cores");
        assert_eq!((find(&cpuid, 0xb, 2).ecx >> 8) & 0xff, 0, "end of levels");
        assert_eq!(find(&cpuid, 0x8000_0008, 0).ecx & 0xff, 3);
    }

    #[test]
    fn the_tsc_deadline_timer_is_offered_in_leaf_1() {
        let mut cpuid = supported();
        assert_eq!(find(&cpuid, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        offer_tsc_deadline(&mut cpuid);
        assert_ne!(find(&cpuid, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        let before = find(&supported(), 1, 0);
        let after = find(&cpuid, 1, 0);
        assert_eq!(
            after.ecx & !LEAF1_ECX_TSC_DEADLINE,
            before.ecx,
            "nothing else changes"
        );
    }

    #[test]
    fn the_address_width_is_the_narrowest_kvm_and_the_host_report() {
        let with = |eax: u32| {
            CpuId::from_entries(&[kvm_cpuid_entry2 {
                function: 0x8000_0008,
                eax,
                ..Default::default()
            }])
            .unwrap()
        };
        assert_eq!(address_bits(&with(0x3027), None), 39);
        assert_eq!(
            address_bits(&with(0x3027), Some(36)),
            36,
            "the host's is lower"
        );
        assert_eq!(
            address_bits(&with(0x0030_3034), Some(52)),
            48,
            "KVM's guest width"
        );
        assert_eq!(address_bits(&supported(), Some(40)), 36, "a zero leaf");
        assert_eq!(address_bits(&CpuId::new(0).unwrap(), None), 36, "no leaf");
    }

    #[test]
    fn core_id_bits_round_up() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(8), 3);
        assert_eq!(core_id_bits(9), 4);
    }
}
