//! Boot values for the MSRs KVM lists; MSRs it does not list are left alone.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use super::Error;

/// IA32_MISC_ENABLE bit 0: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled, write-back by default.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// (index, value) pairs a freshly reset x86 CPU entering Linux should have.
const BOOT_MSRS: &[(u32, u64)] = &[
    (0x174, 0),                       // IA32_SYSENTER_CS
    (0x175, 0),                       // IA32_SYSENTER_ESP
    (0x176, 0),                       // IA32_SYSENTER_EIP
    (0xc000_0081, 0),                 // STAR
    (0xc000_0082, 0),                 // LSTAR
    (0xc000_0083, 0),                 // CSTAR
    (0xc000_0084, 0),                 // SYSCALL_MASK
    (0xc000_0102, 0),                 // KERNEL_GS_BASE
    (0x10, 0),                        // IA32_TSC
    (0x1a0, MISC_ENABLE_FAST_STRING), // IA32_MISC_ENABLE
    (0x2ff, MTRR_ENABLE_WRITEBACK),   // IA32_MTRR_DEF_TYPE
];

/// The boot MSRs that appear in KVM's list of supported MSRs.
pub fn boot_entries(supported: &[u32]) -> Vec<kvm_msr_entry> {
    BOOT_MSRS
        .iter()
        .filter(|(index, _)| supported.contains(index))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

/// Set the boot MSRs on `vcpu`, one at a time so that one KVM refuses (some nested or
/// paravirtual hosts do) does not stop the rest; a refusal is logged, not fatal.
pub fn setup(vcpu: &VcpuFd, index: usize, supported: &[u32]) -> Result<(), Error> {
    for entry in boot_entries(supported) {
        let msrs = Msrs::from_entries(&[entry]).map_err(|_| Error::GuestMemory("MSR list"))?;
        match vcpu.set_msrs(&msrs) {
            Ok(1) => {}
            Ok(_) => log::warn!("vCPU {index}: KVM refused MSR {:#x}", entry.index),
            Err(e) => return Err(Error::Ioctl(index, "KVM_SET_MSRS", e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_msrs_are_set() {
        let entries = boot_entries(&[0x10, 0x2ff, 0x1234]);
        let indices: Vec<u32> = entries.iter().map(|e| e.index).collect();
        assert_eq!(indices, vec![0x10, 0x2ff]);
        assert_eq!(entries[1].data, MTRR_ENABLE_WRITEBACK);
    }
}
