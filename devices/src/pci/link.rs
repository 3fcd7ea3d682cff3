//! A PCI Express link as configuration space reports it: what each end supports at most
//! (Link Capabilities, and the speed vector of Link Capabilities 2) and what the link
//! trained to (Link Status).
//!
//! Drivers read these through the kernel: `pcie_bandwidth_available()` (amdgpu, nouveau)
//! takes the slowest Link Status between a device and the root; `pcie_get_speed_cap()`
//! reads Link Capabilities 2 first. minivmm's root ports show the link a passed-through
//! device has on the host, so what the guest computes is what the host has.

/// Link Capabilities: ASPM support bits (none shown: the guest cannot program a real link's
/// power states through an emulated port).
const LNKCAP_DLLLA_CAPABLE: u32 = 1 << 20;
/// Link Status: Slot Clock Configuration (the link uses the platform's reference clock).
const LNKSTA_SLOT_CLOCK: u16 = 1 << 12;
/// Link Status: Data Link Layer Link Active (the link is up).
const LNKSTA_DLL_ACTIVE: u16 = 1 << 13;

/// Link speeds by their configuration-space encoding (Link Capabilities' Max Link Speed,
/// Link Status' Current Link Speed, Link Control 2's Target Link Speed).
pub mod speed {
    /// 2.5 GT/s (PCIe 1).
    pub const GT2_5: u8 = 1;
    /// 5.0 GT/s (PCIe 2).
    pub const GT5: u8 = 2;
    /// 8.0 GT/s (PCIe 3).
    pub const GT8: u8 = 3;
    /// 16.0 GT/s (PCIe 4).
    pub const GT16: u8 = 4;
    /// 32.0 GT/s (PCIe 5).
    pub const GT32: u8 = 5;
    /// 64.0 GT/s (PCIe 6).
    pub const GT64: u8 = 6;

    /// The encoding of a speed in GT/s as the kernel prints it ("8.0 GT/s PCIe" → 8.0).
    pub fn from_gts(gts: f64) -> Option<u8> {
        [
            (2.5, GT2_5),
            (5.0, GT5),
            (8.0, GT8),
            (16.0, GT16),
            (32.0, GT32),
            (64.0, GT64),
        ]
        .iter()
        .find(|(value, _)| (gts - value).abs() < 0.01)
        .map(|&(_, code)| code)
    }
}

/// One link: its ends' highest common capability and its trained state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieLink {
    /// Max Link Speed (encoding, see [`speed`]).
    pub max_speed: u8,
    /// Maximum Link Width (lanes).
    pub max_width: u8,
    /// Current Link Speed.
    pub speed: u8,
    /// Negotiated Link Width.
    pub width: u8,
}

impl PcieLink {
    /// What a port shows when the host has no link to mirror (a function on the host's root
    /// bus, or one without a PCI Express capability): the narrowest, slowest PCIe link.
    pub const UNKNOWN: PcieLink = PcieLink {
        max_speed: speed::GT2_5,
        max_width: 1,
        speed: speed::GT2_5,
        width: 1,
    };

    /// A link from what the kernel reports, when every field is one configuration space
    /// can hold: a known speed and a width of 1 to 32 lanes, trained at or below the
    /// maximum. `None` otherwise (a link that is down reports width 0).
    pub fn new(max_speed: u8, max_width: u8, speed: u8, width: u8) -> Option<PcieLink> {
        let speeds = speed::GT2_5..=speed::GT64;
        let widths = 1..=32;
        let valid = speeds.contains(&max_speed)
            && speeds.contains(&speed)
            && widths.contains(&max_width)
            && widths.contains(&width)
            && speed <= max_speed
            && width <= max_width;
        valid.then_some(PcieLink {
            max_speed,
            max_width,
            speed,
            width,
        })
    }

    /// The Link Capabilities register of a port numbered `port` (no ASPM, Data Link Layer
    /// Link Active reporting, which the kernel uses to wait for a link after a reset).
    pub fn capabilities(&self, port: u8) -> u32 {
        u32::from(self.max_speed)
            | (u32::from(self.max_width) << 4)
            | LNKCAP_DLLLA_CAPABLE
            | (u32::from(port) << 24)
    }

    /// The Link Status register: trained, up, on the common reference clock.
    pub fn status(&self) -> u16 {
        u16::from(self.speed) | (u16::from(self.width) << 4) | LNKSTA_SLOT_CLOCK | LNKSTA_DLL_ACTIVE
    }

    /// Link Capabilities 2: the Supported Link Speeds vector (bit 1 = 2.5 GT/s, …), every
    /// speed up to the maximum.
    pub fn capabilities2(&self) -> u32 {
        ((1u32 << self.max_speed) - 1) << 1
    }

    /// Link Control 2 as firmware leaves it: Target Link Speed = the maximum.
    pub fn control2(&self) -> u16 {
        u16::from(self.max_speed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_encode_speed_width_and_port() {
        let link = PcieLink::new(speed::GT8, 4, speed::GT2_5, 1).unwrap();
        assert_eq!(link.capabilities(2), 0x0210_0043);
        assert_eq!(link.status(), 0x3011);
        assert_eq!(link.capabilities2(), 0b1110, "2.5, 5 and 8 GT/s");
        assert_eq!(link.control2(), 3);
    }

    #[test]
    fn only_links_configuration_space_can_hold_are_made() {
        assert!(PcieLink::new(speed::GT16, 16, speed::GT16, 16).is_some());
        assert_eq!(PcieLink::new(0, 16, 0, 16), None, "unknown speed");
        assert_eq!(
            PcieLink::new(speed::GT8, 255, speed::GT8, 0),
            None,
            "link down"
        );
        assert_eq!(
            PcieLink::new(speed::GT5, 4, speed::GT8, 4),
            None,
            "faster than its maximum"
        );
    }

    #[test]
    fn kernel_speed_strings_map_to_encodings() {
        assert_eq!(speed::from_gts(2.5), Some(speed::GT2_5));
        assert_eq!(speed::from_gts(16.0), Some(speed::GT16));
        assert_eq!(speed::from_gts(3.0), None);
    }
}
