//! The machine's CPU state at hand-off, kept so a guest reboot can put it back: each vCPU's
//! registers, FPU, MSRs, local APIC, events and run state, and the VM's PIC, IOAPIC and PIT.
//! Taken once, after the vCPUs are set up and before the guest runs; restored by each vCPU
//! thread on its own vCPU (KVM's per-vCPU calls belong to the thread that runs it) and by
//! the main thread for the VM-wide chips. Restoring the MSRs KVM lists brings back the TSC,
//! turns kvmclock and the paravirtual features off, and clears what the guest programmed,
//! as a power cycle would; the boot CPU's registers are the boot protocol's again and the
//! others wait for INIT and SIPI.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_pit_state2, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};

use super::Error;

/// One vCPU's state.
pub struct VcpuSnapshot {
    index: usize,
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    lapic: kvm_lapic_state,
    msrs: Msrs,
    mp_state: kvm_mp_state,
    events: kvm_vcpu_events,
    xcrs: Option<kvm_xcrs>,
    debug: kvm_debugregs,
}

impl std::fmt::Debug for VcpuSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuSnapshot")
            .field("index", &self.index)
            .field("msrs", &self.msrs.as_slice().len())
            .finish_non_exhaustive()
    }
}

impl VcpuSnapshot {
    /// Read vCPU `index`'s state, with the MSRs of `msr_list` that it can read.
    pub fn take(vcpu: &VcpuFd, index: usize, msr_list: &[u32]) -> Result<Self, Error> {
        let ioctl = |name| move |e| Error::Ioctl(index, name, e);
        Ok(VcpuSnapshot {
            index,
            regs: vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(ioctl("KVM_GET_FPU"))?,
            lapic: vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?,
            msrs: readable_msrs(vcpu, index, msr_list)?,
            mp_state: vcpu.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?,
            events: vcpu
                .get_vcpu_events()
                .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
            // Without XSAVE support KVM has no XCRs to give.
            xcrs: vcpu.get_xcrs().ok(),
            debug: vcpu.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?,
        })
    }

    /// Put the state back on `vcpu`. The MSRs go last but one (the TSC among them), the run
    /// state last, so the vCPU starts (or waits for SIPI) from all of it.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), Error> {
        let index = self.index;
        let ioctl = |name| move |e| Error::Ioctl(index, name, e);
        vcpu.set_sregs(&self.sregs)
            .map_err(ioctl("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs).map_err(ioctl("KVM_SET_REGS"))?;
        vcpu.set_fpu(&self.fpu).map_err(ioctl("KVM_SET_FPU"))?;
        if let Some(xcrs) = &self.xcrs {
            vcpu.set_xcrs(xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
        }
        vcpu.set_debug_regs(&self.debug)
            .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic)
            .map_err(ioctl("KVM_SET_LAPIC"))?;
        set_all_msrs(vcpu, index, &self.msrs)?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(ioctl("KVM_SET_MP_STATE"))?;
        Ok(())
    }
}

/// The MSRs of `list` that KVM reads for this vCPU, with their values. KVM_GET_MSRS stops
/// at the first MSR it cannot read, so the list is read in passes that skip each such one.
fn readable_msrs(vcpu: &VcpuFd, index: usize, list: &[u32]) -> Result<Msrs, Error> {
    let mut kept = Vec::with_capacity(list.len());
    let mut rest: &[u32] = list;
    while !rest.is_empty() {
        let entries: Vec<_> = rest
            .iter()
            .map(|&i| kvm_bindings::kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::GuestMemory("MSR list"))?;
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(|e| Error::Ioctl(index, "KVM_GET_MSRS", e))?;
        kept.extend(msrs.as_slice().iter().take(read).copied());
        // Skip the one KVM stopped at.
        rest = rest.get(read + 1..).unwrap_or_default();
    }
    Msrs::from_entries(&kept).map_err(|_| Error::GuestMemory("MSR list"))
}

/// Write every MSR of `msrs`, skipping (and logging) any KVM refuses: KVM_SET_MSRS, too,
/// stops at the first.
fn set_all_msrs(vcpu: &VcpuFd, index: usize, msrs: &Msrs) -> Result<(), Error> {
    let mut rest = msrs.as_slice();
    while !rest.is_empty() {
        let batch = Msrs::from_entries(rest).map_err(|_| Error::GuestMemory("MSR list"))?;
        let written = vcpu
            .set_msrs(&batch)
            .map_err(|e| Error::Ioctl(index, "KVM_SET_MSRS", e))?;
        if let Some(refused) = rest.get(written) {
            log::debug!(
                "vCPU {index}: KVM refused MSR {:#x} on reset",
                refused.index
            );
        }
        rest = rest.get(written + 1..).unwrap_or_default();
    }
    Ok(())
}

/// The VM's interrupt controllers and timer.
pub struct ChipsSnapshot {
    chips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
}

impl std::fmt::Debug for ChipsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChipsSnapshot").finish_non_exhaustive()
    }
}

impl ChipsSnapshot {
    /// Read the two PICs, the IOAPIC and the PIT.
    pub fn take(vm: &VmFd) -> Result<Self, Error> {
        let mut chips = Vec::new();
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip)
                .map_err(|e| Error::Vm("KVM_GET_IRQCHIP", e))?;
            chips.push(chip);
        }
        let pit = vm.get_pit2().map_err(|e| Error::Vm("KVM_GET_PIT2", e))?;
        Ok(ChipsSnapshot { chips, pit })
    }

    /// Put them back.
    pub fn restore(&self, vm: &VmFd) -> Result<(), Error> {
        for chip in &self.chips {
            vm.set_irqchip(chip)
                .map_err(|e| Error::Vm("KVM_SET_IRQCHIP", e))?;
        }
        vm.set_pit2(&self.pit)
            .map_err(|e| Error::Vm("KVM_SET_PIT2", e))
    }
}
