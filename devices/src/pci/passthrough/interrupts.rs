//! MSI and MSI-X of a passed-through function, taken over: the guest's programming lives in
//! the shadow (MSI) or the model's table (MSI-X), and reaches the VMM as vector routes.

use super::{dword, Error, HostFunction, PassthroughFunction, ROM_INDEX};
use crate::pci::bar::BarKind;
use crate::pci::capability::{self, id};
use crate::pci::msi::{MsiCapability, MsiKind, MsixCapability};

impl<H: HostFunction> PassthroughFunction<H> {
    /// Take over the MSI and MSI-X capabilities (the first of each).
    pub(super) fn virtualize_msi(&mut self, config: &[u8]) -> Result<(), Error> {
        for cap in capability::standard(config) {
            let offset = cap.offset;
            let header = dword(config, usize::from(offset));
            match cap.id {
                id::MSI if self.msi.is_none() => {
                    let msi = MsiCapability::new(offset, header);
                    for at in (offset..offset + msi.len()).step_by(4) {
                        self.emulate(at, 0, 0);
                    }
                    msi.init_shadow(&mut self.shadow, header);
                    self.msi = Some(msi);
                }
                id::MSIX if self.msix.is_none() => {
                    let table = dword(config, usize::from(offset) + 4);
                    let pba = dword(config, usize::from(offset) + 8);
                    let msix = MsixCapability::new(offset, header, table, pba);
                    self.check_in_bar(
                        "table",
                        msix.table_bar,
                        msix.table_offset,
                        msix.table_len(),
                    )?;
                    self.check_in_bar("PBA", msix.pba_bar, msix.pba_offset, msix.pba_len())?;
                    self.emulate(offset, 0, 0);
                    msix.init_shadow(&mut self.shadow, header);
                    self.msix = Some(msix);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_in_bar(
        &self,
        what: &'static str,
        index: u8,
        offset: u64,
        len: u64,
    ) -> Result<(), Error> {
        // A memory BAR: BIR 6 and 7 are reserved, so the ROM BAR (index 6 here) is none.
        let fits = self.bars.iter().any(|b| {
            b.bar.index == index
                && index != ROM_INDEX
                && b.bar.kind != BarKind::Io
                && offset + len <= b.bar.size
        });
        if fits {
            Ok(())
        } else {
            Err(Error::MsixOutsideBar(what, index, offset))
        }
    }

    pub(super) fn route_msi(&mut self) {
        let vectors = self.msi.as_ref().and_then(|m| m.vectors(&self.shadow));
        if vectors != self.msi_routed {
            self.host.set_msi(MsiKind::Msi, vectors.as_deref());
            self.msi_routed = vectors;
        }
    }

    pub(super) fn route_msix(&mut self) {
        let vectors = self.msix.as_ref().and_then(|m| m.vectors(&self.shadow));
        if vectors != self.msix_routed {
            self.host.set_msi(MsiKind::Msix, vectors.as_deref());
            self.msix_routed = vectors;
        }
    }
}
