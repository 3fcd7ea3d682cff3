//! The guest's PCI tree for the passed-through devices: which guest slot each function
//! takes, where each slot sits (behind a root port of its own, the default, or on bus 0 with
//! `bus=root`), and the addresses, bus numbers and INTx lines that follow from it.
//!
//! Functions of one host slot share a guest slot (a GPU and its HDMI audio stay one
//! multi-function device), keeping their function numbers when function 0 is among them
//! and numbered from 0 otherwise (Linux scans the other functions of a slot only when it
//! finds function 0); other devices, and mediated ones, get a slot each. Slots take bus-0
//! device numbers in order; root ports number their buses 1, 2, … in the same order.

use minivmm_devices::pci::{DevFn, PciAddress};
use minivmm_firmware::acpi::dsdt::intx_gsi;

/// What the tree needs to know of one passed-through function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// The host slot (`DDDD:BB:DD`, or a name of its own for a mediated device).
    pub host_slot: String,
    /// Its host function number.
    pub function: u8,
    /// `bus=root`: on bus 0.
    pub on_root_bus: bool,
}

/// One guest slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSlot {
    /// Indexes into the function list given to [`arrange`], with the guest function number
    /// of each, in function order.
    pub members: Vec<(usize, u8)>,
    /// Device number on bus 0: the slot's own, or its root port's.
    pub device: u8,
    /// The root port's secondary bus (`None`: the slot is on bus 0).
    pub port_bus: Option<u8>,
}

impl GuestSlot {
    /// Where guest function `function` of this slot is.
    pub fn address(&self, function: u8) -> PciAddress {
        match self.port_bus {
            Some(bus) => PciAddress::new(bus, DevFn::new(0, function)),
            None => PciAddress::new(0, DevFn::new(self.device, function)),
        }
    }

    /// The root port's address on bus 0, if the slot is behind one.
    pub fn port(&self) -> Option<DevFn> {
        self.port_bus.map(|_| DevFn::new(self.device, 0))
    }

    /// The GSI of interrupt pin `pin` (1 = INTA … 4 = INTD), 0 for none. Behind a root
    /// port the device is device 0 of the secondary bus, so the standard swizzle keeps its
    /// pin, and the root bus's `_PRT` entry for the port's slot applies, as for the slot's
    /// own on bus 0.
    pub fn intx_gsi(&self, pin: u8) -> u32 {
        if !(1..=4).contains(&pin) {
            return 0;
        }
        intx_gsi(u32::from(self.device), u32::from(pin - 1))
    }

    /// More than one function: function 0's header says multi-function.
    pub fn multifunction(&self) -> bool {
        self.members.len() > 1
    }
}

/// Arrange `functions` into guest slots on the free bus-0 device numbers `free`.
pub fn arrange(functions: &[Function], free: &[u8]) -> Result<Vec<GuestSlot>, String> {
    // Host slots in the order their first function was given.
    let mut order: Vec<&str> = Vec::new();
    for function in functions {
        if !order.contains(&function.host_slot.as_str()) {
            order.push(&function.host_slot);
        }
    }
    let mut free = free.iter().copied();
    let mut next_bus = 1u8;
    let mut slots = Vec::new();
    for host_slot in order {
        let mut members: Vec<(usize, &Function)> = functions
            .iter()
            .enumerate()
            .filter(|(_, f)| f.host_slot == host_slot)
            .collect();
        members.sort_by_key(|(_, f)| f.function);
        let on_root_bus = members.first().is_some_and(|(_, f)| f.on_root_bus);
        if members.iter().any(|(_, f)| f.on_root_bus != on_root_bus) {
            return Err(format!(
                "the functions of {host_slot} share one guest slot: give bus=root to all of them or to none"
            ));
        }
        let keep = members.first().is_some_and(|(_, f)| f.function == 0);
        let device = free
            .next()
            .ok_or("no free PCI slot left in the guest: pass fewer devices")?;
        let port_bus = if on_root_bus {
            None
        } else {
            let bus = next_bus;
            next_bus += 1;
            Some(bus)
        };
        slots.push(GuestSlot {
            members: members
                .iter()
                .enumerate()
                .map(|(n, (i, f))| (*i, if keep { f.function } else { n as u8 }))
                .collect(),
            device,
            port_bus,
        });
    }
    Ok(slots)
}

/// Buses in use: bus 0 and one behind each root port.
pub fn bus_count(slots: &[GuestSlot]) -> u8 {
    1 + slots.iter().filter(|s| s.port_bus.is_some()).count() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(host_slot: &str, function: u8, on_root_bus: bool) -> Function {
        Function {
            host_slot: host_slot.into(),
            function,
            on_root_bus,
        }
    }

    const FREE: [u8; 4] = [1, 2, 3, 4];

    #[test]
    fn each_slot_gets_a_root_port_and_a_bus_of_its_own() {
        let slots = arrange(
            &[
                function("0000:00:01", 0, false),
                function("0000:00:02", 0, false),
            ],
            &FREE,
        )
        .unwrap();
        assert_eq!(slots[0].address(0).to_string(), "01:00.0");
        assert_eq!(slots[0].port(), Some(DevFn::new(1, 0)));
        assert_eq!(slots[1].address(0).to_string(), "02:00.0");
        assert_eq!(slots[1].port(), Some(DevFn::new(2, 0)));
        assert_eq!(bus_count(&slots), 3);
    }

    #[test]
    fn bus_root_keeps_the_slot_on_bus_0_and_ports_number_their_buses_apart() {
        let slots = arrange(
            &[
                function("0000:00:01", 0, true),
                function("0000:00:02", 0, false),
            ],
            &FREE,
        )
        .unwrap();
        assert_eq!(slots[0].address(0).to_string(), "00:01.0");
        assert_eq!(slots[0].port(), None);
        assert_eq!(slots[1].address(0).to_string(), "01:00.0");
        assert_eq!(slots[1].port(), Some(DevFn::new(2, 0)));
        assert_eq!(bus_count(&slots), 2);
    }

    #[test]
    fn a_gpu_and_its_audio_share_a_slot_and_functions_without_0_are_renumbered() {
        let slots = arrange(
            &[
                function("0000:03:00", 1, false),
                function("0000:03:00", 0, false),
                function("0000:05:00", 2, false),
                function("0000:05:00", 1, false),
            ],
            &FREE,
        )
        .unwrap();
        assert_eq!(slots[0].members, vec![(1, 0), (0, 1)], "numbers kept");
        assert!(slots[0].multifunction());
        assert_eq!(
            slots[1].members,
            vec![(3, 0), (2, 1)],
            ".1 and .2 become .0 and .1"
        );
        assert!(slots[1].multifunction());
        let single = arrange(&[function("0000:05:00", 1, false)], &FREE).unwrap();
        assert_eq!(single[0].members, vec![(0, 0)]);
        assert!(!single[0].multifunction());
    }

    #[test]
    fn mixed_bus_options_in_one_host_slot_and_a_full_bus_are_errors() {
        let e = arrange(
            &[
                function("0000:03:00", 0, false),
                function("0000:03:00", 1, true),
            ],
            &FREE,
        )
        .unwrap_err();
        assert!(e.contains("bus=root to all of them"), "{e}");
        let e = arrange(&[function("a", 0, false), function("b", 0, false)], &[7]).unwrap_err();
        assert!(e.contains("no free PCI slot"), "{e}");
    }

    #[test]
    fn intx_follows_the_bus_0_slot_or_port_with_the_standard_swizzle() {
        let slots = arrange(&[function("a", 0, false), function("b", 0, true)], &FREE).unwrap();
        assert_eq!(slots[0].intx_gsi(1), 17, "port at 00:01: INTA -> 16 + 1");
        assert_eq!(slots[1].intx_gsi(2), 19, "00:02, INTB -> 16 + 3");
        assert_eq!(slots[0].intx_gsi(0), 0, "no pin");
    }
}
