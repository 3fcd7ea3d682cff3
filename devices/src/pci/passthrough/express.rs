//! The PCI Express capability of a function behind a root port.
//!
//! A function with a link on the host (an endpoint, a legacy endpoint, a switch's upstream
//! port) keeps its capability as it is: its Link Capabilities and Status describe the very
//! link the root port mirrors. A root-complex integrated endpoint has no link on the host;
//! behind a port it is shown as an endpoint whose link fields are the port's, so the two
//! ends of the guest's link agree (the way QEMU turns endpoints on a root bus into
//! integrated ones, the other way round).

use super::{dword, HostFunction, PassthroughFunction};
use crate::pci::capability::{self, id};
use crate::pci::link::PcieLink;

/// Device/Port Type field of the PCI Express Capabilities register, in the capability's
/// first dword.
const TYPE_BITS: u32 = 0x00f0_0000;
const TYPE_SHIFT: u32 = 20;
/// Device/Port Types.
const TYPE_ENDPOINT: u32 = 0x0;
const TYPE_INTEGRATED_ENDPOINT: u32 = 0x9;
/// Capability version field.
const VERSION_BITS: u32 = 0x000f_0000;
const VERSION_SHIFT: u32 = 16;
/// Registers, as offsets from the capability.
const LINK_CAPABILITIES: u16 = 0x0c;
const LINK_CONTROL_STATUS: u16 = 0x10;
const LINK_CAPABILITIES2: u16 = 0x2c;
const LINK_CONTROL2: u16 = 0x30;
/// Link Control bits an endpoint's driver may set (ASPM, RCB, common clock, extended sync,
/// clock PM, autonomous width, bandwidth interrupts): kept in the shadow, the device has no
/// link to apply them to.
const LINK_CONTROL_WRITABLE: u32 = 0x0fdb;

impl<H: HostFunction> PassthroughFunction<H> {
    /// Behind a port with `link`: an integrated endpoint becomes an endpoint with that link.
    pub(super) fn virtualize_express(&mut self, config: &[u8], link: &PcieLink) {
        let Some(cap) = capability::standard(config)
            .into_iter()
            .find(|c| c.id == id::PCI_EXPRESS)
        else {
            return;
        };
        let at = cap.offset;
        let header = dword(config, usize::from(at));
        if (header & TYPE_BITS) >> TYPE_SHIFT != TYPE_INTEGRATED_ENDPOINT {
            return;
        }
        let endpoint = (header & !TYPE_BITS) | (TYPE_ENDPOINT << TYPE_SHIFT);
        self.emulate_bits(at, endpoint, TYPE_BITS, 0);
        self.emulate(at + LINK_CAPABILITIES, link.capabilities(0), 0);
        self.emulate(
            at + LINK_CONTROL_STATUS,
            u32::from(link.status()) << 16,
            LINK_CONTROL_WRITABLE,
        );
        if (header & VERSION_BITS) >> VERSION_SHIFT >= 2 {
            self.emulate(at + LINK_CAPABILITIES2, link.capabilities2(), 0);
            self.emulate(at + LINK_CONTROL2, u32::from(link.control2()), 0x000f);
        }
    }
}
