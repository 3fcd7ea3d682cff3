//! The VM's GSI routing table: the in-kernel PIC and IOAPIC pins, plus one MSI route per
//! vector of a passed-through or emulated function (one table for the VM: both kinds of
//! device share it). KVM_SET_GSI_ROUTING replaces the whole table, so the irqchip
//! routes KVM installs by default are written back each time.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

/// IOAPIC pins: GSIs below this are irqchip routes.
const IOAPIC_PINS: u32 = 24;
/// The PIC covers GSIs 0..16.
const PIC_PINS: u32 = 16;
/// Most routes KVM accepts.
const MAX_ROUTES: u32 = 4096;

/// An MSI message: the address/data pair the device would write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiRoute {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// GSIs handed out to MSI vectors and the routes behind them.
#[derive(Debug)]
pub struct GsiRouter {
    vm: Arc<VmFd>,
    msi: BTreeMap<u32, MsiRoute>,
    free: Vec<u32>,
    next: u32,
}

impl GsiRouter {
    /// A router with only the irqchip routes.
    pub fn new(vm: Arc<VmFd>) -> Self {
        GsiRouter {
            vm,
            msi: BTreeMap::new(),
            free: Vec::new(),
            next: IOAPIC_PINS,
        }
    }

    /// A GSI for a new MSI vector.
    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(gsi) = self.free.pop() {
            return Some(gsi);
        }
        (self.next < MAX_ROUTES).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Give a GSI back (its route goes at the next commit).
    pub fn release(&mut self, gsi: u32) {
        self.msi.remove(&gsi);
        self.free.push(gsi);
    }

    /// Point `gsi` at `route` (takes effect at the next commit).
    pub fn set(&mut self, gsi: u32, route: MsiRoute) {
        self.msi.insert(gsi, route);
    }

    /// Install the table in KVM.
    pub fn commit(&self) -> Result<(), kvm_ioctls::Error> {
        let entries = self.entries();
        let mut routing =
            KvmIrqRouting::new(entries.len()).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        for (slot, entry) in routing.as_mut_slice().iter_mut().zip(entries) {
            *slot = entry;
        }
        self.vm.set_gsi_routing(&routing)
    }

    fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let mut entries = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            if gsi < PIC_PINS {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(irqchip(gsi, chip, gsi % 8));
            }
            entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (gsi, route) in &self.msi {
            let mut entry = kvm_irq_routing_entry {
                gsi: *gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            entry.u.msi.address_lo = route.address as u32;
            entry.u.msi.address_hi = (route.address >> 32) as u32;
            entry.u.msi.data = route.data;
            entries.push(entry);
        }
        entries
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = chip;
    entry.u.irqchip.pin = pin;
    entry
}
