//! The two configuration front ends, ECAM (MMIO) and mechanism #1 (the 0xCF8 address latch
//! and the 0xCFC data window), decoding arbitrary accesses into a PCI tree like the VMM's:
//! the host bridge at 00:00.0, a root port at 00:01.0 with a passed-through display
//! function behind it (on bus 1, or wherever the guest renumbers it), and a passed-through
//! MSI-X function at 00:02.0.
//!
//! Input: the accesses (`arbitrary`): ECAM reads and writes of 1 to 8 bytes anywhere in the
//! 32-bus window, port reads and writes of 1 to 4 bytes at 0xCF8..0xD00, and address-latch
//! selections (so that the fuzzer need not find the enable bit).
//!
//! Checked: every read fills its whole buffer (done twice over different fillings: the
//! results must agree, so no byte is left as it was) and changes nothing; accesses ECAM
//! cannot decode (misaligned, or not 1, 2 or 4 bytes) read all ones; a dword written to
//! 0xCF8 reads back; and an ECAM read of the first 256 bytes of a function equals the same
//! read through 0xCF8/0xCFC.

#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use minivmm_devices::bus::BusDevice;
use minivmm_devices::pci::config_io::PciConfigIo;
use minivmm_devices::pci::ecam::{EcamAddress, PciEcam};
use minivmm_devices::pci::host_bridge::HostBridge;
use minivmm_devices::pci::link::{speed, PcieLink};
use minivmm_devices::pci::passthrough::RomSource;
use minivmm_devices::pci::root_port::{BridgeWindows, RootPort, RootPortConfig};
use minivmm_devices::pci::{is_valid_access, DevFn, PciRoot};
use minivmm_firmware::layout::PCI_ECAM_SIZE;
use minivmm_fuzz::{build_function, display_function, msix_function, ops, Wiring};

#[derive(Arbitrary, Debug)]
enum Op {
    /// An ECAM read of `len % 8 + 1` bytes.
    EcamRead { offset: u32, len: u8 },
    /// An ECAM write of `len % 8 + 1` bytes of `value`.
    EcamWrite { offset: u32, len: u8, value: u64 },
    /// A read of `len % 4 + 1` bytes at 0xCF8 + `port % 8`.
    PortRead { port: u8, len: u8 },
    /// A write of `len % 4 + 1` bytes of `value` at 0xCF8 + `port % 8`.
    PortWrite { port: u8, len: u8, value: u32 },
    /// Latch an enabled address for bus/device/function/register.
    Select {
        bus: u8,
        device: u8,
        function: u8,
        register: u8,
    },
}

fn tree() -> Arc<Mutex<PciRoot>> {
    let mut root = PciRoot::new();
    root.add(DevFn::new(0, 0), Box::new(HostBridge::new()))
        .unwrap();
    let link = PcieLink::new(speed::GT16, 16, speed::GT8, 8).unwrap();
    let mut port = RootPort::new(&RootPortConfig {
        secondary_bus: 1,
        windows: BridgeWindows {
            io: None,
            memory: Some(0xc000_0000..0xc010_0000),
            prefetchable: Some(0x1_0000_0000..0x2_0000_0000),
        },
        link,
        port_number: 1,
        interrupt_line: 17,
        vga: false,
    });
    let display = build_function(
        display_function(),
        Wiring {
            interrupt_line: 17,
            rom: RomSource::None,
            multifunction: false,
            port_link: Some(link),
        },
    )
    .unwrap();
    port.add(0, Box::new(display)).unwrap();
    root.add_port(DevFn::new(1, 0), port).unwrap();
    let nic = build_function(
        msix_function(),
        Wiring {
            interrupt_line: 18,
            rom: RomSource::None,
            multifunction: false,
            port_link: None,
        },
    )
    .unwrap();
    root.add(DevFn::new(2, 0), Box::new(nic)).unwrap();
    Arc::new(Mutex::new(root))
}

/// Read twice over different fillings: the read must fill every byte, the same way.
fn read(device: &mut dyn BusDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut zeros = vec![0u8; len];
    device.read(offset, &mut zeros);
    let mut ones = vec![0xffu8; len];
    device.read(offset, &mut ones);
    assert_eq!(
        zeros, ones,
        "read at {offset:#x}+{len} left bytes or changed state"
    );
    zeros
}

fn latch(io: &mut PciConfigIo) -> u32 {
    u32::from_le_bytes(read(io, 0, 4).try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let root = tree();
    let mut ecam = PciEcam::new(root.clone());
    let mut io = PciConfigIo::new(root);
    for op in ops::<Op>(data) {
        match op {
            Op::EcamRead { offset, len } => {
                let offset = u64::from(offset) % PCI_ECAM_SIZE;
                let len = usize::from(len % 8) + 1;
                let value = read(&mut ecam, offset, len);
                if !is_valid_access(offset, len) {
                    assert!(value.iter().all(|b| *b == 0xff), "{offset:#x}+{len}");
                } else if offset & 0xfff < 0x100 {
                    // The same function and register through 0xCF8/0xCFC.
                    let a = EcamAddress::decode(offset);
                    let saved = latch(&mut io);
                    let address = (1 << 31)
                        | (u32::from(a.bus) << 16)
                        | (u32::from(a.devfn.0) << 8)
                        | u32::from(a.register & 0xfc);
                    io.write(0, &address.to_le_bytes());
                    let through_ports = read(&mut io, 4 + u64::from(a.register & 3), len);
                    assert_eq!(value, through_ports, "ECAM and CF8 differ at {offset:#x}");
                    io.write(0, &saved.to_le_bytes());
                    assert_eq!(latch(&mut io), saved);
                }
            }
            Op::EcamWrite { offset, len, value } => {
                let offset = u64::from(offset) % PCI_ECAM_SIZE;
                let len = usize::from(len % 8) + 1;
                assert!(ecam.write(offset, &value.to_le_bytes()[..len]).is_none());
            }
            Op::PortRead { port, len } => {
                read(&mut io, u64::from(port % 8), usize::from(len % 4) + 1);
            }
            Op::PortWrite { port, len, value } => {
                let (port, len) = (u64::from(port % 8), usize::from(len % 4) + 1);
                assert!(io.write(port, &value.to_le_bytes()[..len]).is_none());
                if port == 0 && len == 4 {
                    assert_eq!(latch(&mut io), value, "0xCF8 does not read back");
                }
            }
            Op::Select {
                bus,
                device,
                function,
                register,
            } => {
                let devfn = DevFn::new(device, function);
                let address = (1 << 31)
                    | (u32::from(bus) << 16)
                    | (u32::from(devfn.0) << 8)
                    | u32::from(register & 0xfc);
                io.write(0, &address.to_le_bytes());
            }
        }
    }
});
