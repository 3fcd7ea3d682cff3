//! CPUID: what KVM supports, with each vCPU's APIC id and the VM's topology filled in.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: EBX[23:16] holds the logical processor count.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Extended topology level types (leaf 0xb/0x1f ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

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
    fn core_id_bits_round_up() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(8), 3);
        assert_eq!(core_id_bits(9), 4);
    }
}
