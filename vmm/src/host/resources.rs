//! What a host PCI function needs from the guest's machine, read from sysfs before anything
//! is opened: its BARs (the `resource` file), its ROM's size, and the PCI Express link it
//! has to the port above it (the kernel's `*_link_*` attributes, readable by any user).

use std::path::Path;

use minivmm_devices::pci::bar::{Bar, BarKind};
use minivmm_devices::pci::link::{speed, PcieLink};

use super::read_trimmed;

/// `struct resource` flags the kernel prints in `resource`.
const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x10_0000;
/// Lines of `resource` that are BARs (then the ROM, then bridge windows).
const BAR_LINES: usize = 6;

/// A function's BARs and ROM size, from its sysfs directory `dir`; `None` when it has no
/// `resource` file (a mediated device).
pub fn host_bars(dir: &Path) -> Option<(Vec<Bar>, u64)> {
    let text = std::fs::read_to_string(dir.join("resource")).ok()?;
    Some(parse_resource(&text))
}

/// BARs from the text of a `resource` file: one line per BAR (start, end, flags in hex),
/// the second half of a 64-bit BAR an empty line, then the ROM.
pub fn parse_resource(text: &str) -> (Vec<Bar>, u64) {
    let mut bars = Vec::new();
    let mut rom = 0;
    for (index, line) in text.lines().enumerate() {
        let numbers: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
            .collect();
        let [start, end, flags] = numbers.as_slice() else {
            continue;
        };
        if *end <= *start || flags & (IORESOURCE_IO | IORESOURCE_MEM) == 0 {
            continue;
        }
        let size = end - start + 1;
        if index == BAR_LINES {
            rom = size;
            break;
        }
        let kind = if flags & IORESOURCE_IO != 0 {
            BarKind::Io
        } else if flags & IORESOURCE_MEM_64 != 0 {
            BarKind::Mem64
        } else {
            BarKind::Mem32
        };
        bars.push(Bar {
            index: index as u8,
            kind,
            prefetchable: kind != BarKind::Io && flags & IORESOURCE_PREFETCH != 0,
            size,
        });
    }
    (bars, rom)
}

/// The link between the host function at `dir` and the port above it, as the kernel
/// reports it: the upstream port's Link Capabilities and Status (what a guest's root port
/// shows). A function on the host's root bus has no port: then its own link, if it has
/// one. `None` when neither reports a link that is up.
pub fn upstream_link(dir: &Path) -> Option<PcieLink> {
    let device = std::fs::canonicalize(dir).ok()?;
    let parent = device.parent()?;
    let parent_is_pci = parent
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_pci_address);
    if parent_is_pci {
        if let Some(link) = link_of(parent) {
            return Some(link);
        }
    }
    link_of(&device)
}

/// The link attributes of one function.
fn link_of(dir: &Path) -> Option<PcieLink> {
    let speed_of = |name: &str| {
        let text = read_trimmed(&dir.join(name))?;
        let gts: f64 = text.split_whitespace().next()?.parse().ok()?;
        speed::from_gts(gts)
    };
    let width_of = |name: &str| read_trimmed(&dir.join(name))?.parse::<u8>().ok();
    PcieLink::new(
        speed_of("max_link_speed")?,
        width_of("max_link_width")?,
        speed_of("current_link_speed")?,
        width_of("current_link_width")?,
    )
}

/// `DDDD:BB:DD.F`.
pub(crate) fn is_pci_address(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() == 12
        && bytes.get(4) == Some(&b':')
        && bytes.get(7) == Some(&b':')
        && bytes.get(10) == Some(&b'.')
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeHost, FakePci};
    use super::*;

    /// A GPU's `resource`: 256 MiB 64-bit prefetchable BAR 0 (BAR 1 its upper half), 2 MiB
    /// 64-bit BAR 2, I/O BAR 4, 256 KiB BAR 5, a 128 KiB ROM, then bridge lines.
    const GPU: &str = "\
0x000000e000000000 0x000000e00fffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe000000 0x00000000fe1fffff 0x0000000000140204
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000000000e000 0x000000000000e0ff 0x0000000000040101
0x00000000fe600000 0x00000000fe63ffff 0x0000000000040200
0x00000000fe640000 0x00000000fe65ffff 0x0000000000046200
0x0000000000000000 0x0000000000000000 0x0000000000000000
";

    #[test]
    fn bars_and_the_rom_come_from_the_resource_file() {
        let (bars, rom) = parse_resource(GPU);
        let summary: Vec<_> = bars
            .iter()
            .map(|b| (b.index, b.kind, b.prefetchable, b.size))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, BarKind::Mem64, true, 256 << 20),
                (2, BarKind::Mem64, false, 2 << 20),
                (4, BarKind::Io, false, 256),
                (5, BarKind::Mem32, false, 256 << 10),
            ]
        );
        assert_eq!(rom, 128 << 10);
        assert_eq!(parse_resource(""), (Vec::new(), 0));
    }

    fn link_files(host: &FakeHost, dir: &str, link: [&str; 4]) {
        for (name, value) in [
            "max_link_speed",
            "max_link_width",
            "current_link_speed",
            "current_link_width",
        ]
        .iter()
        .zip(link)
        {
            host.file(&format!("{dir}/{name}"), &format!("{value}\n"));
        }
    }

    #[test]
    fn the_link_is_the_upstream_ports_when_there_is_one() {
        let host = FakeHost::new();
        let port = "sys/devices/pci0000:00/0000:00:1c.0";
        link_files(&host, port, ["16.0 GT/s PCIe", "16", "8.0 GT/s PCIe", "8"]);
        host.pci_at(
            port,
            FakePci {
                bdf: "0000:01:00.0",
                ids: (0x1002, 0x6660),
                class: 0x038000,
                group: Some(1),
                driver: None,
            },
        );
        link_files(
            &host,
            &format!("{port}/0000:01:00.0"),
            ["8.0 GT/s PCIe", "8", "8.0 GT/s PCIe", "8"],
        );
        let dir = host.path("sys/bus/pci/devices/0000:01:00.0");
        assert_eq!(
            upstream_link(&dir),
            PcieLink::new(speed::GT16, 16, speed::GT8, 8)
        );
    }

    #[test]
    fn on_the_root_bus_the_functions_own_link_or_none() {
        let host = FakeHost::new();
        for bdf in ["0000:00:02.0", "0000:00:03.0"] {
            host.pci(FakePci {
                bdf,
                ids: (0x1234, 0x1111),
                class: 0x030000,
                group: Some(2),
                driver: None,
            });
        }
        link_files(
            &host,
            "sys/devices/pci0000:00/0000:00:02.0",
            ["5.0 GT/s PCIe", "4", "2.5 GT/s PCIe", "1"],
        );
        // An integrated endpoint: the kernel prints an unknown speed and width 0.
        link_files(
            &host,
            "sys/devices/pci0000:00/0000:00:03.0",
            ["Unknown", "255", "Unknown", "0"],
        );
        let dir = |bdf: &str| host.path(&format!("sys/bus/pci/devices/{bdf}"));
        assert_eq!(
            upstream_link(&dir("0000:00:02.0")),
            PcieLink::new(speed::GT5, 4, speed::GT2_5, 1)
        );
        assert_eq!(upstream_link(&dir("0000:00:03.0")), None);
    }
}
