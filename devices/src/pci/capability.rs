//! Walking a function's capability lists, defensively: the bytes come from a device (or a
//! guest-visible shadow), so loops, bad pointers and truncated lists end the walk instead of
//! hanging or panicking.

/// Status register bit: the function has a capability list.
const STATUS_CAP_LIST: u32 = 1 << 20;
/// Offset of the capabilities pointer in a type-0 header.
const CAP_POINTER: usize = 0x34;
/// First offset a standard capability may sit at (after the header).
const FIRST_CAP: usize = 0x40;
/// First offset of PCI Express extended capabilities.
const FIRST_EXT_CAP: usize = 0x100;
/// Standard configuration space size.
const STANDARD_SIZE: usize = 0x100;
/// Extended configuration space size.
const EXTENDED_SIZE: usize = 0x1000;

/// Standard capability ids minivmm deals with.
pub mod id {
    /// Power management.
    pub const POWER_MANAGEMENT: u8 = 0x01;
    /// Message signalled interrupts.
    pub const MSI: u8 = 0x05;
    /// Vendor specific.
    pub const VENDOR: u8 = 0x09;
    /// PCI Express.
    pub const PCI_EXPRESS: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Extended capability ids minivmm deals with.
pub mod ext_id {
    /// Advanced error reporting.
    pub const AER: u16 = 0x0001;
    /// Resizable BAR: the guest must not resize a BAR behind the VMM's back.
    pub const RESIZABLE_BAR: u16 = 0x0015;
    /// Single-root I/O virtualisation.
    pub const SRIOV: u16 = 0x0010;
}

/// A capability: its id and where it sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability<Id> {
    /// Capability id.
    pub id: Id,
    /// Offset of its header in configuration space.
    pub offset: u16,
}

fn byte(config: &[u8], offset: usize) -> Option<u8> {
    config.get(offset).copied()
}

fn dword(config: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        config.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

/// The standard capability list of `config` (at least 256 bytes of configuration space).
pub fn standard(config: &[u8]) -> Vec<Capability<u8>> {
    let mut caps = Vec::new();
    if dword(config, 0x04).is_none_or(|status| status & STATUS_CAP_LIST == 0) {
        return caps;
    }
    let mut next = byte(config, CAP_POINTER).map_or(0, |p| usize::from(p & !0x3));
    // Each capability takes at least 4 bytes, so a longer walk has met a loop.
    for _ in 0..(STANDARD_SIZE - FIRST_CAP) / 4 {
        if !(FIRST_CAP..STANDARD_SIZE).contains(&next) {
            break;
        }
        let (Some(id), Some(pointer)) = (byte(config, next), byte(config, next + 1)) else {
            break;
        };
        caps.push(Capability {
            id,
            offset: next as u16,
        });
        next = usize::from(pointer & !0x3);
    }
    caps
}

/// The PCI Express extended capability list of `config` (4 KiB of configuration space).
pub fn extended(config: &[u8]) -> Vec<Capability<u16>> {
    let mut caps = Vec::new();
    let mut next = FIRST_EXT_CAP;
    for _ in 0..(EXTENDED_SIZE - FIRST_EXT_CAP) / 4 {
        let Some(header) = dword(config, next) else {
            break;
        };
        if header == 0 || header == u32::MAX {
            break;
        }
        caps.push(Capability {
            id: (header & 0xffff) as u16,
            offset: next as u16,
        });
        next = (header >> 20) as usize & !0x3;
        if next < FIRST_EXT_CAP {
            break;
        }
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Configuration space with standard capabilities at the given (offset, id, next).
    fn config(caps: &[(usize, u8, u8)]) -> Vec<u8> {
        let mut config = vec![0u8; EXTENDED_SIZE];
        config[0x06] = 0x10; // status: capability list
        config[CAP_POINTER] = caps.first().map_or(0, |c| c.0 as u8);
        for &(offset, id, next) in caps {
            config[offset] = id;
            config[offset + 1] = next;
        }
        config
    }

    fn ext_header(config: &mut [u8], offset: usize, id: u16, next: usize) {
        let header = u32::from(id) | (1 << 16) | ((next as u32) << 20);
        config[offset..offset + 4].copy_from_slice(&header.to_le_bytes());
    }

    #[test]
    fn walks_a_gpu_like_standard_list() {
        let config = config(&[
            (0x50, id::POWER_MANAGEMENT, 0x58),
            (0x58, id::PCI_EXPRESS, 0xa0),
            (0xa0, id::MSI, 0),
        ]);
        let ids: Vec<_> = standard(&config).iter().map(|c| (c.id, c.offset)).collect();
        assert_eq!(ids, vec![(0x01, 0x50), (0x10, 0x58), (0x05, 0xa0)]);
    }

    #[test]
    fn no_list_when_the_status_bit_is_clear() {
        let mut config = config(&[(0x50, id::MSI, 0)]);
        config[0x06] = 0;
        assert!(standard(&config).is_empty());
    }

    #[test]
    fn loops_and_pointers_into_the_header_end_the_walk() {
        let looped = config(&[(0x50, id::MSI, 0x60), (0x60, id::MSIX, 0x50)]);
        assert_eq!(standard(&looped).len(), (STANDARD_SIZE - FIRST_CAP) / 4);
        let into_header = config(&[(0x50, id::MSI, 0x10)]);
        assert_eq!(standard(&into_header).len(), 1);
        let truncated = config(&[(0x50, id::MSI, 0x60)]);
        assert_eq!(standard(&truncated[..0x55]).len(), 1);
    }

    #[test]
    fn walks_extended_capabilities_and_finds_resizable_bar() {
        let mut config = config(&[]);
        ext_header(&mut config, 0x100, ext_id::AER, 0x150);
        ext_header(&mut config, 0x150, ext_id::RESIZABLE_BAR, 0);
        let caps = extended(&config);
        assert_eq!(
            caps,
            vec![
                Capability {
                    id: ext_id::AER,
                    offset: 0x100
                },
                Capability {
                    id: ext_id::RESIZABLE_BAR,
                    offset: 0x150
                }
            ]
        );
    }

    #[test]
    fn conventional_functions_have_no_extended_list() {
        let mut config = config(&[]);
        assert!(extended(&config).is_empty());
        config[0x100..0x104].copy_from_slice(&[0xff; 4]);
        assert!(extended(&config).is_empty(), "all ones: no extended space");
        assert!(extended(&config[..0x100]).is_empty(), "only 256 bytes");
    }

    #[test]
    fn an_extended_loop_ends() {
        let mut config = config(&[]);
        ext_header(&mut config, 0x100, ext_id::AER, 0x100);
        assert_eq!(extended(&config).len(), (EXTENDED_SIZE - FIRST_EXT_CAP) / 4);
    }
}
