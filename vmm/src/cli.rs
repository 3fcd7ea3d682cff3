//! The command line: clap parses, [`Args::into_config`] validates into a [`VmConfig`].

use std::path::PathBuf;

use clap::Parser;

pub use crate::config::ManagedScope;
use crate::config::{parse_size, SerialMode, VmConfig, DEFAULT_CMDLINE, MAX_MEMORY};
use crate::passthrough::GpuArg;
use crate::sandbox::{privileges, Sandbox, SeccompMode};

const EXAMPLES: &str = "\
Examples:
  minivmm --kernel bzImage
  minivmm --kernel bzImage --initramfs initrd.img --memory 1G --cpus 2
  minivmm --kernel vmlinux --cmdline 'console=ttyS0 root=/dev/ram0' --serial file:console.log
  minivmm --gpu 0000:01:00.0 --gpu 0000:01:00.1 --kernel bzImage --initramfs initrd.img
  minivmm --gpu /sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 --kernel bzImage
  minivmm --gpu 01:00.0,rom=vbios.rom --kernel bzImage --initramfs initrd.img

At the console, Ctrl-A x quits and Ctrl-A Ctrl-A sends a Ctrl-A to the guest.

Preparing the host: minivmm doctor [BDF...] | iommu-groups | bind BDF | unbind BDF
VBIOS images: minivmm rom info FILE | rom dump BDF -o FILE | rom extract [--device BDF] -o FILE";

/// minivmm: boot a Linux kernel in a KVM virtual machine.
#[derive(Debug, Parser)]
#[command(
    name = "minivmm",
    version,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    /// A tool instead of a VM.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Kernel to boot: a bzImage or an ELF vmlinux.
    #[arg(long, value_name = "FILE", required = true)]
    pub kernel: Option<PathBuf>,
    /// Initial RAM filesystem (cpio, optionally compressed).
    #[arg(long, value_name = "FILE")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line [default: "console=uart8250,mmio,0xfe000000 panic=-1"].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Guest RAM, like 512M or 4G. hugepages=on takes it from the host's pool of huge
    /// pages (hugepage-size=2M, the default, or 1G), which must hold enough free pages.
    #[arg(
        long,
        value_name = "SIZE[,hugepages=on[,hugepage-size=2M|1G]]",
        default_value = "512M",
        value_parser = crate::config::parse_memory
    )]
    pub memory: (u64, Option<crate::hugepages::HugePageSize>),
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: usize,
    /// Guest console: stdio, none or file:PATH.
    #[arg(long, value_name = "MODE", default_value = "stdio")]
    pub serial: SerialMode,
    /// Pass a host device through with VFIO: a PCI address (0000:01:00.0 or 01:00.0)
    /// bound to vfio-pci, or a mediated device's sysfs path. Repeat for more devices; the
    /// functions of one host slot stay one multi-function device in the guest. Options
    /// after commas: rom=auto|none|FILE (the VBIOS to serve; auto, the default, finds one on
    /// the host for a display controller whose ROM BAR has none: the ACPI VFCT table, then
    /// amdgpu's debugfs copy), rombar=off, vbios=rombar+vfct+atrm+setup (where the guest
    /// finds the image; all four by default with an image), romcheck=off,
    /// bus=root (no root port), quirks=off, vga=on (the legacy VGA ranges to this device).
    #[arg(long, value_name = "DEVICE[,OPTIONS]")]
    pub gpu: Vec<GpuArg>,
    /// Move each --gpu PCI device to vfio-pci for the run and give it back to its driver
    /// afterwards (also after an error or SIGINT/SIGTERM). --managed=group moves the rest
    /// of its IOMMU group too.
    #[arg(
        long,
        value_name = "WHAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "device"
    )]
    pub managed: Option<ManagedScope>,
    /// Trace for research, on stderr: pci (every configuration access: function, offset,
    /// width, value, register), bar (BAR maps and moves), irq (interrupt routes).
    #[arg(long, value_name = "WHAT", value_delimiter = ',')]
    pub trace: Vec<Trace>,
    /// Seccomp filters on every thread: on (a forbidden system call ends minivmm with a line
    /// naming it), log (allowed, logged by the kernel's audit) or off.
    #[arg(long, value_name = "MODE", default_value = "on")]
    pub seccomp: SeccompMode,
    /// When started as root: the user (USER[:GROUP] or UID[:GID]) that runs the guest once
    /// the VM is built. `--user root` keeps root.
    #[arg(long, value_name = "USER", default_value = privileges::DEFAULT_USER)]
    pub user: String,
    /// On exit, print how many exits reached minivmm, by vCPU and by busiest address.
    #[arg(long)]
    pub exit_stats: bool,
    /// End the run when the guest reboots or triple-faults, instead of restarting it (a
    /// guest with panic=-1 then ends minivmm when it panics).
    #[arg(long)]
    pub no_reboot: bool,
    /// A test exit device at I/O port PORT (and the 3 after it): a guest write of value V
    /// at PORT ends the run, and minivmm exits with status V (above 255: 255). For CI jobs
    /// run in a guest.
    #[arg(long, value_name = "port=PORT", value_parser = parse_exit_device)]
    pub exit_device: Option<u16>,
    /// A raw disk image (file or block device) as a virtio-blk disk: /dev/vda for the
    /// first, /dev/vdb for the next. Repeat for more. readonly=on refuses the guest's
    /// writes (and lets other processes read the image too).
    #[arg(long, value_name = "PATH[,readonly=on]")]
    pub disk: Vec<crate::config::DiskArg>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `port=PORT` of `--exit-device`: a port number, decimal or 0x-prefixed hex.
pub fn parse_exit_device(text: &str) -> Result<u16, String> {
    let usage = || format!("'{text}' is not port=PORT; use port=0xf4, for example");
    let port = text.strip_prefix("port=").ok_or_else(usage)?;
    let parsed = match port.strip_prefix("0x").or_else(|| port.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => port.parse(),
    };
    parsed.map_err(|_| usage())
}

/// A PCI address in the kernel's form, from `0000:01:00.0` or `01:00.0`.
pub fn parse_pci_address(text: &str) -> Result<String, String> {
    match text.parse::<crate::passthrough::GpuSpec>() {
        Ok(crate::passthrough::GpuSpec::Pci(bdf)) => Ok(bdf),
        _ => Err(format!(
            "'{text}' is not a PCI address; use 0000:01:00.0 or 01:00.0"
        )),
    }
}

/// The tools besides running a VM.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check this host for passthrough: a verdict and the exact fix for each item.
    /// Exit status 0 only when everything --gpu needs holds.
    Doctor {
        /// Devices to check for --gpu (PCI addresses).
        #[arg(value_name = "BDF", value_parser = parse_pci_address)]
        devices: Vec<String>,
        /// Guest RAM the run will use (VFIO locks all of it for DMA).
        #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
        memory: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List every IOMMU group with its devices: address, names, class, IDs, driver.
    IommuGroups {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Move devices from their host driver to vfio-pci (recorded, so unbind restores them).
    Bind {
        /// The devices (PCI addresses).
        #[arg(value_name = "BDF", required = true, value_parser = parse_pci_address)]
        devices: Vec<String>,
        /// Also move the other members of each device's IOMMU group that are on host drivers.
        #[arg(long)]
        group: bool,
    },
    /// Give devices back from vfio-pci to the driver they had before minivmm bound them
    /// (without a record: to the driver the kernel picks).
    Unbind {
        /// The devices (PCI addresses).
        #[arg(value_name = "BDF", required = true, value_parser = parse_pci_address)]
        devices: Vec<String>,
        /// Also give back the members of each group that minivmm bound with it.
        #[arg(long)]
        group: bool,
    },
    /// VBIOS images: inspect one, dump a device's ROM, extract one from ACPI VFCT.
    #[command(subcommand)]
    Rom(RomCommand),
}

/// `minivmm rom ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RomCommand {
    /// Describe an option ROM image: each image of the chain, code type, IDs, class, size,
    /// checksum, vendor marks (ATOMBIOS, NVIDIA, ...).
    Info {
        /// The image file.
        file: PathBuf,
    },
    /// Read a device's ROM through sysfs (enabled for the read, then disabled) into a file.
    Dump {
        /// The device: 0000:01:00.0 or 01:00.0.
        device: String,
        /// Where to write the image.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Take a VBIOS out of the host's ACPI VFCT table (where laptop AMD GPUs keep it).
    Extract {
        /// The device whose image to take (default: the first in the table).
        #[arg(long, value_name = "BDF")]
        device: Option<String>,
        /// Where to write the image.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

/// What `--trace` can show; each is a log target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Trace {
    /// Configuration-space accesses.
    Pci,
    /// BAR mapping.
    Bar,
    /// Interrupt routing.
    Irq,
}

impl Trace {
    /// The log filter directive that turns it on.
    pub fn directive(self) -> &'static str {
        match self {
            Trace::Pci => "pci=trace",
            Trace::Bar => "bar=info",
            Trace::Irq => "irq=info",
        }
    }
}

/// A command line that parsed but asks for something impossible.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// `--memory 0` or not page aligned.
    #[error("--memory must be a non-zero multiple of 4 KiB, like 512M")]
    BadMemory,
    /// More than minivmm can lay out.
    #[error("--memory {0} MiB is more than minivmm can map (at most {1} GiB)")]
    MemoryTooLarge(u64, u64),
    /// `--cpus 0`.
    #[error("--cpus must be at least 1")]
    NoCpus,
    /// No `--kernel` (clap normally says so first).
    #[error("--kernel is required")]
    NoKernel,
    /// `--managed` without a device.
    #[error("--managed needs a --gpu device to manage")]
    ManagedWithoutGpu,
    /// `--user` names nobody.
    #[error("{0}")]
    User(String),
    /// `--exit-device` on a port something else answers.
    #[error("--exit-device port={0:#x} is taken by {1}: pick a free port, such as 0xf4")]
    ExitPortTaken(u16, &'static str),
}

impl Args {
    /// Check what needs no host access and build the VM description.
    pub fn into_config(self) -> Result<VmConfig, Error> {
        let (memory, hugepages) = self.memory;
        if memory == 0 || !memory.is_multiple_of(4096) {
            return Err(Error::BadMemory);
        }
        if memory > MAX_MEMORY {
            return Err(Error::MemoryTooLarge(memory >> 20, MAX_MEMORY >> 30));
        }
        if self.cpus == 0 {
            return Err(Error::NoCpus);
        }
        if self.managed.is_some() && self.gpu.is_empty() {
            return Err(Error::ManagedWithoutGpu);
        }
        if let Some(port) = self.exit_device {
            let vga = self.gpu.iter().any(|gpu| gpu.vga);
            // The device takes four ports (writes of 1, 2 or 4 bytes).
            let owner =
                (0..4u16).find_map(|i| crate::config::port_owner(port.saturating_add(i), vga));
            if let Some(owner) = owner {
                return Err(Error::ExitPortTaken(port, owner));
            }
        }
        Ok(VmConfig {
            kernel: self.kernel.ok_or(Error::NoKernel)?,
            initramfs: self.initramfs,
            cmdline: self.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.into()),
            memory,
            hugepages,
            cpus: self.cpus,
            serial: self.serial,
            exit_stats: self.exit_stats,
            reboot: !self.no_reboot,
            exit_port: self.exit_device,
            disks: self.disk,
            gpus: self.gpu,
            managed: self.managed,
            sandbox: Sandbox {
                seccomp: self.seccomp,
                user: match self.user.as_str() {
                    "root" | "0" => None,
                    user => Some(privileges::resolve(user).map_err(Error::User)?),
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DiskArg;

    fn parse(args: &[&str]) -> Result<VmConfig, String> {
        let args = Args::try_parse_from(std::iter::once("minivmm").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        args.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let config = parse(&["--kernel", "bzImage"]).unwrap();
        assert_eq!(config.memory, 512 << 20);
        assert_eq!(config.hugepages, None);
        assert_eq!(config.cpus, 1);
        assert_eq!(config.cmdline, DEFAULT_CMDLINE);
        assert_eq!(config.serial, SerialMode::Stdio);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--kernel", "k", "--memory", "0"])
            .unwrap_err()
            .contains("non-zero"));
        assert!(parse(&["--kernel", "k", "--memory", "1000"]).is_err());
        assert!(parse(&["--kernel", "k", "--memory", "64T"])
            .unwrap_err()
            .contains("more than minivmm can map"));
        assert!(parse(&["--kernel", "k", "--cpus", "0"])
            .unwrap_err()
            .contains("at least 1"));
        assert!(parse(&["--kernel", "k", "--cpus", "x"]).is_err());
        assert!(parse(&["--kernel", "k", "--bogus"]).is_err());
        assert!(parse(&[]).is_err(), "--kernel is required");
        assert!(parse(&["--kernel", "k", "--managed"])
            .unwrap_err()
            .contains("needs a --gpu"));
    }

    #[test]
    fn managed_takes_an_optional_scope() {
        let gpu = ["--kernel", "k", "--gpu", "01:00.0"];
        let with = |extra: &[&str]| parse(&[&gpu[..], extra].concat()).map(|c| c.managed);
        assert_eq!(with(&[]), Ok(None));
        assert_eq!(with(&["--managed"]), Ok(Some(ManagedScope::Device)));
        assert_eq!(with(&["--managed=group"]), Ok(Some(ManagedScope::Group)));
        assert!(with(&["--managed=all"]).is_err());
    }

    #[test]
    fn memory_may_come_from_huge_pages() {
        use crate::hugepages::HugePageSize;
        let with = |value: &str| parse(&["--kernel", "k", "--memory", value]);
        let config = with("3G,hugepages=on").unwrap();
        assert_eq!(
            (config.memory, config.hugepages),
            (3 << 30, Some(HugePageSize::Size2M))
        );
        let config = with("4G,hugepages=on,hugepage-size=1G").unwrap();
        assert_eq!(config.hugepages, Some(HugePageSize::Size1G));
        assert_eq!(with("1G,hugepages=off").unwrap().hugepages, None);
        assert!(with("1G,hugepage-size=1G")
            .unwrap_err()
            .contains("hugepage-size= needs hugepages=on"));
        assert!(with("1G,hugepages=on,hugepage-size=4K")
            .unwrap_err()
            .contains("use 2M or 1G"));
        assert!(with("1G,huge")
            .unwrap_err()
            .contains("unknown --memory option"));
    }

    #[test]
    fn disks_are_repeatable_and_may_be_read_only() {
        let config = parse(&[
            "--kernel",
            "k",
            "--disk",
            "root.img",
            "--disk",
            "/data/b.img,readonly=on",
        ])
        .unwrap();
        assert_eq!(
            config.disks,
            [
                DiskArg {
                    path: "root.img".into(),
                    readonly: false
                },
                DiskArg {
                    path: "/data/b.img".into(),
                    readonly: true
                }
            ]
        );
        let refused = |arg: &str| parse(&["--kernel", "k", "--disk", arg]).unwrap_err();
        assert!(refused("a.img,cache=none").contains("the one option is readonly=on"));
        assert!(refused(",readonly=on").contains("names no image"));
    }

    #[test]
    fn host_tools_take_pci_addresses() {
        let args =
            Args::try_parse_from(["minivmm", "doctor", "01:00.0", "--memory", "4G"]).unwrap();
        match args.command {
            Some(Command::Doctor {
                devices,
                memory,
                json,
            }) => {
                assert_eq!(devices, ["0000:01:00.0"]);
                assert_eq!(memory, 4 << 30);
                assert!(!json);
            }
            other => panic!("{other:?}"),
        }
        assert!(Args::try_parse_from(["minivmm", "bind", "gpu"]).is_err());
        assert!(
            Args::try_parse_from(["minivmm", "bind"]).is_err(),
            "a device is required"
        );
    }
}
