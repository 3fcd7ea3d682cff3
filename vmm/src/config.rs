//! A validated description of the VM to build, independent of how it was asked for.

use std::path::PathBuf;

use crate::passthrough::GpuArg;

/// Largest guest minivmm lays out: RAM above 4 GiB plus the 64-bit PCI window must stay
/// inside a 46-bit physical address space (the smallest any current x86 host offers KVM).
pub const MAX_MEMORY: u64 = 1 << 45;

/// Where the guest's COM1 goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    /// The terminal (or whatever stdin/stdout are): output to stdout, input from stdin.
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Output discarded; no input.
    None,
}

impl std::str::FromStr for SerialMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdio" => Ok(SerialMode::Stdio),
            "none" => Ok(SerialMode::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialMode::File(path.into())),
                _ => Err("expected stdio, none or file:PATH".into()),
            },
        }
    }
}

/// What `--managed` moves to vfio-pci.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ManagedScope {
    /// The devices named with --gpu.
    Device,
    /// Those and every other member of their IOMMU groups on a host driver.
    Group,
}

/// Everything needed to build and run one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes (page aligned, non-zero).
    pub memory: u64,
    /// `--memory ...,hugepages=on`: guest RAM from the host's pool of pages of this size.
    pub hugepages: Option<crate::hugepages::HugePageSize>,
    /// Number of vCPUs.
    pub cpus: usize,
    /// Console wiring.
    pub serial: SerialMode,
    /// Count exits by address and print the busiest when the VM ends.
    pub exit_stats: bool,
    /// Host devices to pass through.
    pub gpus: Vec<GpuArg>,
    /// Move the devices to vfio-pci for the run (and back afterwards).
    pub managed: Option<ManagedScope>,
    /// How the process confines itself once the VM is built.
    pub sandbox: crate::sandbox::Sandbox,
    /// A guest reboot (or triple fault) restarts the guest; `--no-reboot` ends the run.
    pub reboot: bool,
    /// `--exit-device port=PORT`: where the guest writes its exit status.
    pub exit_port: Option<u16>,
    /// `--disk`: raw images the guest sees as virtio-blk disks.
    pub disks: Vec<DiskArg>,
}

/// `--disk PATH[,readonly=on]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskArg {
    /// The raw image (a file or a block device).
    pub path: PathBuf,
    /// The guest may only read it.
    pub readonly: bool,
}

impl std::str::FromStr for DiskArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("'{text}' names no image; use --disk PATH[,readonly=on]"))?;
        let mut readonly = false;
        for option in parts {
            readonly = match option {
                "readonly=on" | "readonly" => true,
                "readonly=off" => false,
                _ => {
                    return Err(format!(
                        "unknown --disk option '{option}'; the one option is readonly=on"
                    ))
                }
            };
        }
        Ok(DiskArg {
            path: PathBuf::from(path),
            readonly,
        })
    }
}

/// The command line used when none is given: the console on the console UART (MMIO, see
/// `console_uart`; much cheaper than COM1 under virtualization), and a kernel panic ends
/// the VM instead of hanging it.
pub const DEFAULT_CMDLINE: &str = "console=uart8250,mmio,0xfe000000 panic=-1";

/// `--memory SIZE[,hugepages=on|off][,hugepage-size=2M|1G]`: the size, and the huge-page
/// size when huge pages are on.
pub fn parse_memory(text: &str) -> Result<(u64, Option<crate::hugepages::HugePageSize>), String> {
    let mut parts = text.split(',');
    let size = parse_size(parts.next().unwrap_or_default())?;
    let mut on = false;
    let mut page = None;
    for option in parts {
        match option.split_once('=') {
            Some(("hugepages", "on")) => on = true,
            Some(("hugepages", "off")) => on = false,
            Some(("hugepage-size", value)) => page = Some(value.parse()?),
            _ => {
                return Err(format!(
                "unknown --memory option '{option}'; use SIZE[,hugepages=on[,hugepage-size=2M|1G]]"
            ))
            }
        }
    }
    match (on, page) {
        (false, Some(_)) => Err("hugepage-size= needs hugepages=on".into()),
        (false, None) => Ok((size, None)),
        (true, page) => Ok((
            size,
            Some(page.unwrap_or(crate::hugepages::HugePageSize::Size2M)),
        )),
    }
}

/// Parse a size like `512M`, `4G`, `65536K` or a plain byte count.
/// What already answers at I/O port `port` in the guest, if anything does: minivmm's own
/// devices, KVM's in-kernel PIC and PIT (which take their ports before minivmm sees them),
/// the PCI I/O window (BARs may be placed anywhere in it), and with `vga` the VGA ports.
pub fn port_owner(port: u16, vga: bool) -> Option<&'static str> {
    use minivmm_firmware::layout;
    let io_window =
        layout::PCI_IO_START..=layout::PCI_IO_START.saturating_add(layout::PCI_IO_SIZE - 1);
    let taken: [(std::ops::RangeInclusive<u16>, &str); 11] = [
        (0x20..=0x21, "KVM's PIC"),
        (0xa0..=0xa1, "KVM's PIC"),
        (0x4d0..=0x4d1, "KVM's PIC (ELCR)"),
        (0x40..=0x43, "KVM's PIT"),
        (0x61..=0x61, "KVM's PIT (speaker port)"),
        (0x60..=layout::I8042_COMMAND_PORT, "the i8042"),
        (layout::COM1_PORT..=layout::COM1_PORT + 7, "COM1"),
        (
            layout::ACPI_SLEEP_CONTROL_PORT..=layout::ACPI_RESET_PORT,
            "the ACPI registers",
        ),
        (
            layout::PCI_CONFIG_ADDRESS_PORT..=layout::PCI_CONFIG_DATA_PORT + 3,
            "PCI configuration",
        ),
        (io_window, "the PCI I/O window"),
        (0x3b0..=0x3df, "the VGA ports (vga=on)"),
    ];
    taken
        .into_iter()
        .filter(|(_, owner)| vga || !owner.contains("vga=on"))
        .find(|(range, _)| range.contains(&port))
        .map(|(_, owner)| owner)
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M' | 'm')) => (&text[..i], 20),
        Some((i, 'G' | 'g')) => (&text[..i], 30),
        Some((i, 'T' | 't')) => (&text[..i], 40),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size; use a number with K, M or G, like 512M"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_port_must_be_free() {
        assert_eq!(port_owner(0xf4, false), None);
        assert_eq!(port_owner(0x501, false), None);
        assert_eq!(port_owner(0x3f8, false), Some("COM1"));
        assert_eq!(port_owner(0x42, false), Some("KVM's PIT"));
        assert_eq!(port_owner(0xcfc, false), Some("PCI configuration"));
        assert_eq!(port_owner(0xc010, false), Some("the PCI I/O window"));
        assert_eq!(port_owner(0x3d4, false), None);
        assert_eq!(port_owner(0x3d4, true), Some("the VGA ports (vga=on)"));
    }

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn serial_modes() {
        assert_eq!("stdio".parse(), Ok(SerialMode::Stdio));
        assert_eq!("none".parse(), Ok(SerialMode::None));
        assert_eq!("file:/tmp/x".parse(), Ok(SerialMode::File("/tmp/x".into())));
        assert!("file:".parse::<SerialMode>().is_err());
        assert!("tcp:1".parse::<SerialMode>().is_err());
    }
}
