//! One `--gpu` value: the device, then options after commas.
//!
//! `DEVICE[,rom=auto|none|FILE][,rombar=off][,vbios=PATHS][,romcheck=off][,bus=root][,quirks=off][,vga=on]`
//! - `rom=FILE`: serve this image as the device's VBIOS instead of the device's own ROM.
//! - `rom=auto` (the default): a display controller whose own ROM BAR holds no valid image
//!   gets one from the host (its ACPI VFCT entry, else amdgpu's debugfs copy), served as a
//!   `rom=FILE` image; other devices, or none found, keep their own ROM.
//! - `rom=none`: the device's own ROM only, never looked up.
//! - `rombar=off`: show no ROM in the ROM BAR (the image can still go by `vbios=`).
//! - `vbios=PATHS`: where the guest finds the image, `+`-separated: `rombar` (the PCI ROM
//!   BAR), `vfct` (the ACPI VFCT table), `atrm` (an ACPI `ATRM` method under the device's
//!   node, which radeon/amdgpu call before reading the VFCT, as on laptops with switchable
//!   graphics), `setup` (a SETUP_PCI boot record, the kernel's platform ROM), or `none`.
//!   Default with an image (`rom=FILE`, or one `rom=auto` found): all four.
//! - `romcheck=off`: use an image whose vendor/device differ from the device's.
//! - `bus=root`: put the device's guest slot on bus 0, as minivmm did before root ports;
//!   `bus=port` (the default) puts it behind a PCIe root port of its own.
//! - `quirks=off`: leave the vendor windows to config space in the BARs to the device
//!   (research only: the guest can then reach the host's real configuration through them).
//! - `vga=on`: route the legacy VGA ranges (memory 0xa0000–0xbffff, ports 0x3b0–0x3bb and
//!   0x3c0–0x3df) to this VGA-class device through VFIO's VGA region, and tell the guest
//!   kernel a VGA text console is there (vgacon); one device at most.

use std::path::PathBuf;

use super::host_device::GpuSpec;

/// Where a guest driver can find the VBIOS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbiosPaths {
    /// The PCI ROM BAR.
    pub rom_bar: bool,
    /// The ACPI VFCT table.
    pub vfct: bool,
    /// An ACPI `ATRM` method under the device's node.
    pub atrm: bool,
    /// A SETUP_PCI setup_data record.
    pub setup: bool,
}

impl VbiosPaths {
    /// Every path.
    pub const ALL: VbiosPaths = VbiosPaths {
        rom_bar: true,
        vfct: true,
        atrm: true,
        setup: true,
    };

    /// Nowhere.
    pub const NONE: VbiosPaths = VbiosPaths {
        rom_bar: false,
        vfct: false,
        atrm: false,
        setup: false,
    };
}

/// `rom=`: where the VBIOS the guest sees comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RomChoice {
    /// The device's own ROM, or for a display controller without a valid one, an image
    /// the host's firmware or driver holds.
    Auto,
    /// The device's own ROM.
    Own,
    /// This image file.
    File(PathBuf),
}

/// A parsed `--gpu` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuArg {
    /// The device.
    pub device: GpuSpec,
    /// `rom=`.
    pub rom: RomChoice,
    /// Where the guest finds the VBIOS.
    pub vbios: VbiosPaths,
    /// `romcheck=off`.
    pub skip_id_check: bool,
    /// `bus=root`: on bus 0 instead of behind a root port.
    pub on_root_bus: bool,
    /// The vendor quirks apply (`quirks=off` turns them off).
    pub quirks: bool,
    /// `vga=on`: the legacy VGA ranges go to this device.
    pub vga: bool,
}

impl std::str::FromStr for GpuArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',');
        let device: GpuSpec = parts.next().unwrap_or_default().parse()?;
        let mut arg = GpuArg {
            device,
            rom: RomChoice::Auto,
            vbios: VbiosPaths::ALL,
            skip_id_check: false,
            on_root_bus: false,
            quirks: true,
            vga: false,
        };
        let mut rom_bar = true;
        let mut vbios = None;
        for option in parts {
            match option.split_once('=') {
                Some(("rom", "auto")) => arg.rom = RomChoice::Auto,
                Some(("rom", "none")) => arg.rom = RomChoice::Own,
                Some(("rom", path)) if !path.is_empty() => arg.rom = RomChoice::File(path.into()),
                Some(("rombar", "off")) => rom_bar = false,
                Some(("rombar", "on")) => rom_bar = true,
                Some(("romcheck", "off")) => arg.skip_id_check = true,
                Some(("romcheck", "on")) => arg.skip_id_check = false,
                Some(("vbios", paths)) => vbios = Some(parse_paths(paths)?),
                Some(("bus", "root")) => arg.on_root_bus = true,
                Some(("bus", "port")) => arg.on_root_bus = false,
                Some(("quirks", "off")) => arg.quirks = false,
                Some(("quirks", "on")) => arg.quirks = true,
                Some(("vga", "on")) => arg.vga = true,
                Some(("vga", "off")) => arg.vga = false,
                _ => {
                    return Err(format!(
                        "unknown --gpu option '{option}'; use rom=FILE|auto|none, rombar=off, vbios=rombar+vfct+atrm+setup, romcheck=off, bus=root, quirks=off or vga=on"
                    ))
                }
            }
        }
        if vbios.is_some() && arg.rom == RomChoice::Own {
            return Err(
                "vbios= needs an image (rom=FILE, or rom=auto's): it says where the image goes"
                    .into(),
            );
        }
        // With rom=auto the paths apply when an image is found; without one the device's
        // own ROM shows in its ROM BAR only.
        arg.vbios = vbios.unwrap_or(if arg.rom == RomChoice::Own {
            VbiosPaths {
                rom_bar: true,
                ..VbiosPaths::NONE
            }
        } else {
            VbiosPaths::ALL
        });
        arg.vbios.rom_bar &= rom_bar;
        Ok(arg)
    }
}

fn parse_paths(text: &str) -> Result<VbiosPaths, String> {
    let mut paths = VbiosPaths::NONE;
    for path in text.split('+') {
        match path {
            "rombar" => paths.rom_bar = true,
            "vfct" => paths.vfct = true,
            "atrm" => paths.atrm = true,
            "setup" => paths.setup = true,
            "none" => {}
            other => {
                return Err(format!(
                    "unknown vbios path '{other}'; use rombar, vfct, atrm, setup (joined with +) or none"
                ))
            }
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_device_looks_for_a_vbios_and_rom_none_keeps_its_own() {
        let arg: GpuArg = "01:00.0".parse().unwrap();
        assert_eq!(arg.device, GpuSpec::Pci("0000:01:00.0".into()));
        assert_eq!(arg.rom, RomChoice::Auto);
        assert_eq!(arg.vbios, VbiosPaths::ALL, "an image found goes everywhere");
        let arg: GpuArg = "01:00.0,rom=none".parse().unwrap();
        assert_eq!(arg.rom, RomChoice::Own);
        assert!(arg.vbios.rom_bar && !arg.vbios.vfct && !arg.vbios.atrm && !arg.vbios.setup);
        let arg: GpuArg = "01:00.0,rom=none,rom=auto,vbios=vfct".parse().unwrap();
        assert_eq!(arg.rom, RomChoice::Auto);
        assert!(arg.vbios.vfct && !arg.vbios.rom_bar);
    }

    #[test]
    fn rom_options() {
        let arg: GpuArg = "0000:01:00.0,rom=/tmp/vbios.rom".parse().unwrap();
        assert_eq!(arg.rom, RomChoice::File("/tmp/vbios.rom".into()));
        assert_eq!(arg.vbios, VbiosPaths::ALL);
        let arg: GpuArg = "01:00.0,rom=v.rom,vbios=vfct,romcheck=off".parse().unwrap();
        assert!(!arg.vbios.rom_bar && arg.vbios.vfct && !arg.vbios.setup);
        assert!(arg.skip_id_check);
        let arg: GpuArg = "01:00.0,rom=v.rom,rombar=off".parse().unwrap();
        assert!(!arg.vbios.rom_bar && arg.vbios.vfct && arg.vbios.atrm && arg.vbios.setup);
        let arg: GpuArg = "01:00.0,rom=v.rom,vbios=atrm".parse().unwrap();
        assert_eq!(
            arg.vbios,
            VbiosPaths {
                atrm: true,
                ..VbiosPaths::NONE
            }
        );
        let arg: GpuArg = "01:00.0,rombar=off".parse().unwrap();
        assert!(!arg.vbios.rom_bar);
    }

    #[test]
    fn a_device_sits_behind_a_root_port_unless_bus_root_is_given() {
        let arg: GpuArg = "01:00.0".parse().unwrap();
        assert!(!arg.on_root_bus);
        let arg: GpuArg = "01:00.0,bus=root".parse().unwrap();
        assert!(arg.on_root_bus);
        let arg: GpuArg = "01:00.0,bus=root,bus=port".parse().unwrap();
        assert!(!arg.on_root_bus);
        let e = "01:00.0,bus=1".parse::<GpuArg>().unwrap_err();
        assert!(e.contains("bus=root"), "{e}");
    }

    #[test]
    fn vga_is_off_unless_turned_on() {
        assert!(!"01:00.0".parse::<GpuArg>().unwrap().vga);
        assert!("01:00.0,vga=on".parse::<GpuArg>().unwrap().vga);
        assert!(!"01:00.0,vga=on,vga=off".parse::<GpuArg>().unwrap().vga);
        let e = "01:00.0,vga=1".parse::<GpuArg>().unwrap_err();
        assert!(e.contains("vga=on"), "{e}");
    }

    #[test]
    fn quirks_are_on_unless_turned_off() {
        assert!("01:00.0".parse::<GpuArg>().unwrap().quirks);
        assert!(!"01:00.0,quirks=off".parse::<GpuArg>().unwrap().quirks);
        assert!(
            "01:00.0,quirks=off,quirks=on"
                .parse::<GpuArg>()
                .unwrap()
                .quirks
        );
        let e = "01:00.0,quirks=no".parse::<GpuArg>().unwrap_err();
        assert!(e.contains("quirks=off"), "{e}");
    }

    #[test]
    fn bad_options_say_what_is_accepted() {
        for (text, says) in [
            ("01:00.0,rom=", "unknown --gpu option"),
            ("01:00.0,colour=red", "rom=FILE|auto|none"),
            ("01:00.0,rom=none,vbios=vfct", "needs an image"),
            ("01:00.0,rom=x,vbios=bios", "unknown vbios path"),
            ("01:00.9,rom=x", "not a PCI address"),
        ] {
            let e = text.parse::<GpuArg>().unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
