//! Where a host keeps a display controller's VBIOS when its ROM BAR has none: the ACPI VFCT
//! table (read by `rom extract` and doctor directly), or an ACPI `ATRM` method — laptops
//! with switchable graphics keep the dGPU's image there, and user space cannot call an ACPI
//! method. A host driver that loaded the image keeps a copy: amdgpu shows it in debugfs as
//! `dri/<minor>/amdgpu_vbios` while it is bound. These functions find those; everything is
//! read under a sysfs root so that fake trees test it.

use std::path::{Path, PathBuf};

/// Why amdgpu's copy of a device's VBIOS could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum DebugfsMiss {
    /// debugfs is not mounted at `<sys>/kernel/debug`.
    NotMounted,
    /// No DRM device of debugfs is this function (amdgpu is not bound to it).
    NoDriver,
    /// amdgpu has it but the copy cannot be read.
    Unreadable(String),
}

impl std::fmt::Display for DebugfsMiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DebugfsMiss::NotMounted => write!(
                f,
                "debugfs is not mounted (mount -t debugfs none /sys/kernel/debug)"
            ),
            DebugfsMiss::NoDriver => write!(
                f,
                "amdgpu is not bound to it on the host, so no copy of its VBIOS is in debugfs"
            ),
            DebugfsMiss::Unreadable(why) => write!(f, "amdgpu's copy cannot be read ({why})"),
        }
    }
}

/// The `amdgpu_vbios` file of the DRM device that is PCI function `bdf`. A DRM device's
/// debugfs directory names its function in `name` (`amdgpu dev=0000:03:00.0 unique=…`);
/// newer kernels also name directories by the address itself.
pub fn amdgpu_vbios_file(sys: &Path, bdf: &str) -> Result<PathBuf, DebugfsMiss> {
    let dri = sys.join("kernel/debug/dri");
    let entries = std::fs::read_dir(&dri).map_err(|_| DebugfsMiss::NotMounted)?;
    let wanted = format!("dev={bdf}");
    for entry in entries.flatten() {
        let dir = entry.path();
        let named_so = std::fs::read_to_string(dir.join("name"))
            .is_ok_and(|name| name.split_whitespace().any(|word| word == wanted));
        let is_it = named_so || entry.file_name().to_str() == Some(bdf);
        let file = dir.join("amdgpu_vbios");
        if is_it && file.exists() {
            return Ok(file);
        }
    }
    Err(DebugfsMiss::NoDriver)
}

/// amdgpu's copy of `bdf`'s VBIOS.
pub fn amdgpu_vbios(sys: &Path, bdf: &str) -> Result<Vec<u8>, DebugfsMiss> {
    let file = amdgpu_vbios_file(sys, bdf)?;
    let bytes = std::fs::read(&file).map_err(|e| DebugfsMiss::Unreadable(e.to_string()))?;
    if bytes.is_empty() {
        return Err(DebugfsMiss::Unreadable("it is empty".into()));
    }
    Ok(bytes)
}

/// The host's ACPI tables with an `ATRM` method (DSDT, SSDTn), by file name: firmware that
/// hands a dGPU's VBIOS to the driver that way. A method's name is the four bytes `ATRM`
/// after its MethodOp and package length; looking for the name alone is enough here (it
/// names nothing else in the AML of real firmware).
pub fn acpi_tables_with_atrm(sys: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys.join("firmware/acpi/tables")) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "DSDT" && !name.starts_with("SSDT") {
                return None;
            }
            let bytes = std::fs::read(entry.path()).ok()?;
            bytes.windows(4).any(|w| w == b"ATRM").then_some(name)
        })
        .collect();
    found.sort();
    found
}

/// Where `rom=auto` found a device's VBIOS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutoRom {
    /// Not a display controller, or its own ROM BAR holds a valid image for it: the guest
    /// sees the device's ROM, as with `rom=none`.
    Own,
    /// An image from the host: its bytes and where they came from.
    Found(Vec<u8>, String),
    /// A display controller with no valid image anywhere: why, source by source.
    Missing(String),
}

/// What `rom=auto` knows about the device it looks for.
#[derive(Clone, Copy, Debug)]
pub struct AutoLookup<'a> {
    /// The function, `0000:01:00.0`.
    pub bdf: &'a str,
    /// Vendor and device ID.
    pub ids: (u16, u16),
    /// Class code (class, subclass, programming interface).
    pub class: u32,
    /// The image its own ROM BAR holds (empty: none).
    pub own_rom: &'a [u8],
    /// `romcheck=off`: an image for other IDs will do.
    pub any_ids: bool,
}

impl<'a> AutoLookup<'a> {
    /// A host function as sysfs shows it, before VFIO opens it: its own ROM is not read
    /// (the host driver may still have it).
    pub fn unopened(info: &'a super::pci::PciInfo, any_ids: bool) -> Self {
        AutoLookup {
            bdf: &info.bdf,
            ids: (info.vendor, info.device),
            class: info.class,
            own_rom: &[],
            any_ids,
        }
    }
}

/// `rom=auto`: for a display controller (class 03xx) whose ROM BAR holds no valid image
/// for it, look where a driver on the host would — the ACPI VFCT table's entry for the
/// device, then the copy amdgpu keeps in debugfs (the way to an image that firmware hands
/// out only through ATRM) — and take the first valid one. An image is valid as a `rom=`
/// image is: it parses, and it is for the device's IDs unless `any_ids`.
pub fn find_auto(sys: &Path, device: &AutoLookup) -> AutoRom {
    if device.class >> 16 != 0x03 {
        return AutoRom::Own;
    }
    let own = if device.own_rom.is_empty() {
        "its ROM BAR holds no image".to_string()
    } else {
        match valid_for(device.own_rom, device) {
            Ok(()) => return AutoRom::Own,
            Err(e) => format!("its ROM BAR's image is unusable ({e})"),
        }
    };
    let vfct = match vfct_image(sys, device) {
        Ok(image) => return AutoRom::Found(image, "the host's ACPI VFCT table".into()),
        Err(e) => e,
    };
    let debugfs = match amdgpu_vbios(sys, device.bdf) {
        Ok(image) => match valid_for(&image, device) {
            Ok(()) => return AutoRom::Found(image, "amdgpu's copy in debugfs".into()),
            Err(e) => format!("amdgpu's copy is unusable ({e})"),
        },
        Err(e) => e.to_string(),
    };
    AutoRom::Missing(format!("{own}; {vfct}; {debugfs}"))
}

/// `image` parses as an option ROM and (unless `any_ids`) is for the device's IDs.
fn valid_for(image: &[u8], device: &AutoLookup) -> Result<(), String> {
    let rom = minivmm_firmware::option_rom::parse(image).map_err(|e| e.to_string())?;
    match rom.ids() {
        Some(ids) if ids != device.ids && !device.any_ids => Err(format!(
            "it is for {:04x}:{:04x}, not {:04x}:{:04x}",
            ids.0, ids.1, device.ids.0, device.ids.1
        )),
        _ => Ok(()),
    }
}

/// The host VFCT table's valid image for the device: an entry at its address, for its IDs.
fn vfct_image(sys: &Path, device: &AutoLookup) -> Result<Vec<u8>, String> {
    let path = sys.join("firmware/acpi/tables/VFCT");
    let table = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "the host has no ACPI VFCT table".to_string(),
        _ => format!("cannot read {} ({e})", path.display()),
    })?;
    let mut misses = Vec::new();
    for image in minivmm_firmware::acpi::vfct::images(&table) {
        let (bus, dev, func) = image.bdf;
        if device.bdf != format!("0000:{bus:02x}:{dev:02x}.{func:x}") {
            continue;
        }
        if image.ids != device.ids && !device.any_ids {
            misses.push(format!(
                "its VFCT entry is for {:04x}:{:04x}",
                image.ids.0, image.ids.1
            ));
            continue;
        }
        match valid_for(&image.rom, device) {
            Ok(()) => return Ok(image.rom),
            Err(e) => misses.push(format!("its VFCT image is unusable ({e})")),
        }
    }
    Err(if misses.is_empty() {
        "the host's VFCT table has no entry for it".into()
    } else {
        misses.join("; ")
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("minivmm-vsrc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn amdgpus_copy_is_found_by_the_name_of_its_drm_device() {
        let sys = temp("dri");
        assert_eq!(
            amdgpu_vbios(&sys, "0000:03:00.0"),
            Err(DebugfsMiss::NotMounted)
        );
        let card0 = sys.join("kernel/debug/dri/0");
        let card1 = sys.join("kernel/debug/dri/1");
        std::fs::create_dir_all(&card0).unwrap();
        std::fs::create_dir_all(&card1).unwrap();
        std::fs::write(
            card0.join("name"),
            "i915 dev=0000:00:02.0 unique=0000:00:02.0\n",
        )
        .unwrap();
        assert_eq!(
            amdgpu_vbios(&sys, "0000:03:00.0"),
            Err(DebugfsMiss::NoDriver)
        );
        std::fs::write(
            card1.join("name"),
            "amdgpu dev=0000:03:00.0 unique=0000:03:00.0\n",
        )
        .unwrap();
        std::fs::write(card1.join("amdgpu_vbios"), [0x55, 0xaa, 1]).unwrap();
        assert_eq!(amdgpu_vbios(&sys, "0000:03:00.0"), Ok(vec![0x55, 0xaa, 1]));
        // Another function's name does not match by prefix.
        assert_eq!(
            amdgpu_vbios(&sys, "0000:03:00.1"),
            Err(DebugfsMiss::NoDriver)
        );
        let _ = std::fs::remove_dir_all(&sys);
    }

    #[test]
    fn a_directory_named_by_the_address_is_the_device_too() {
        let sys = temp("bdf");
        let dir = sys.join("kernel/debug/dri/0000:03:00.0");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("amdgpu_vbios"), []).unwrap();
        assert!(matches!(
            amdgpu_vbios(&sys, "0000:03:00.0"),
            Err(DebugfsMiss::Unreadable(_))
        ));
        let _ = std::fs::remove_dir_all(&sys);
    }

    /// A valid option ROM for `ids`, `tag` in a byte that does not matter.
    pub(crate) fn rom_for(ids: (u16, u16), tag: u8) -> Vec<u8> {
        let mut image = vec![0u8; 2048];
        image[0] = 0x55;
        image[1] = 0xaa;
        image[2] = 4;
        image[0x10] = tag;
        image[0x18] = 0x40;
        image[0x40..0x44].copy_from_slice(b"PCIR");
        image[0x44..0x46].copy_from_slice(&ids.0.to_le_bytes());
        image[0x46..0x48].copy_from_slice(&ids.1.to_le_bytes());
        image[0x4f] = 0x03;
        image[0x50] = 4;
        image[0x55] = 0x80;
        let sum = image.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        image[2047] = 0u8.wrapping_sub(sum);
        image
    }

    /// One VFCT entry: address (bus, device, function), IDs, image.
    type Entry<'a> = ((u8, u8, u8), (u16, u16), &'a [u8]);

    /// Host firmware with a VFCT table of `entries`.
    fn vfct(sys: &Path, entries: &[Entry]) {
        use minivmm_firmware::acpi::vfct::{build, VfctImage};
        let images: Vec<VfctImage> = entries
            .iter()
            .map(|&((bus, device, function), ids, rom)| VfctImage {
                bus,
                device,
                function,
                vendor_id: ids.0,
                device_id: ids.1,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
                rom,
            })
            .collect();
        let tables = sys.join("firmware/acpi/tables");
        std::fs::create_dir_all(&tables).unwrap();
        std::fs::write(tables.join("VFCT"), build(&images)).unwrap();
    }

    /// amdgpu bound on the host, its copy of `image` in debugfs.
    fn debugfs(sys: &Path, bdf: &str, image: &[u8]) {
        let card = sys.join("kernel/debug/dri/1");
        std::fs::create_dir_all(&card).unwrap();
        std::fs::write(
            card.join("name"),
            format!("amdgpu dev={bdf} unique={bdf}\n"),
        )
        .unwrap();
        std::fs::write(card.join("amdgpu_vbios"), image).unwrap();
    }

    const GPU: (u16, u16) = (0x1002, 0x73ff);

    fn laptop_gpu(own_rom: &[u8]) -> AutoLookup<'_> {
        AutoLookup {
            bdf: "0000:03:00.0",
            ids: GPU,
            class: 0x03_0000,
            own_rom,
            any_ids: false,
        }
    }

    #[test]
    fn auto_keeps_a_valid_own_rom_and_leaves_other_classes_alone() {
        let sys = temp("auto-own");
        let from_vfct = rom_for(GPU, 1);
        vfct(&sys, &[((3, 0, 0), GPU, &from_vfct)]);
        let own = rom_for(GPU, 2);
        assert_eq!(find_auto(&sys, &laptop_gpu(&own)), AutoRom::Own);
        // A network card: never looked up, even with nothing in its ROM BAR.
        let nic = AutoLookup {
            class: 0x02_0000,
            ..laptop_gpu(&[])
        };
        assert_eq!(find_auto(&sys, &nic), AutoRom::Own);
        let _ = std::fs::remove_dir_all(&sys);
    }

    #[test]
    fn auto_looks_in_vfct_first_then_amdgpus_copy() {
        let sys = temp("auto-order");
        let (from_vfct, from_debugfs) = (rom_for(GPU, 1), rom_for(GPU, 2));
        vfct(&sys, &[((3, 0, 0), GPU, &from_vfct)]);
        debugfs(&sys, "0000:03:00.0", &from_debugfs);
        assert_eq!(
            find_auto(&sys, &laptop_gpu(&[])),
            AutoRom::Found(from_vfct.clone(), "the host's ACPI VFCT table".into())
        );
        // An own ROM for other IDs is no image for it: the VFCT's is used.
        let wrong = rom_for((0x10de, 0x1234), 3);
        assert_eq!(
            find_auto(&sys, &laptop_gpu(&wrong)),
            AutoRom::Found(from_vfct, "the host's ACPI VFCT table".into())
        );
        // With romcheck=off, the device's own image will do.
        let any = AutoLookup {
            any_ids: true,
            ..laptop_gpu(&wrong)
        };
        assert_eq!(find_auto(&sys, &any), AutoRom::Own);
        // No VFCT: amdgpu's copy.
        std::fs::remove_file(sys.join("firmware/acpi/tables/VFCT")).unwrap();
        assert_eq!(
            find_auto(&sys, &laptop_gpu(&[])),
            AutoRom::Found(from_debugfs, "amdgpu's copy in debugfs".into())
        );
        let _ = std::fs::remove_dir_all(&sys);
    }

    #[test]
    fn auto_skips_vfct_entries_for_other_devices_and_says_why_nothing_was_found() {
        let sys = temp("auto-miss");
        let other = rom_for((0x1002, 0x6660), 1);
        let mine = rom_for(GPU, 2);
        // Another address, and this address with other IDs: neither is its image.
        vfct(
            &sys,
            &[
                ((4, 0, 0), GPU, &mine),
                ((3, 0, 0), (0x1002, 0x6660), &other),
            ],
        );
        let AutoRom::Missing(why) = find_auto(&sys, &laptop_gpu(&[])) else {
            panic!("found an image that is not the device's");
        };
        assert!(why.contains("its ROM BAR holds no image"), "{why}");
        assert!(why.contains("its VFCT entry is for 1002:6660"), "{why}");
        assert!(why.contains("debugfs is not mounted"), "{why}");
        // An entry at its address whose image is for other IDs is refused too.
        vfct(&sys, &[((3, 0, 0), GPU, &other)]);
        let AutoRom::Missing(why) = find_auto(&sys, &laptop_gpu(&[])) else {
            panic!("took an image for other IDs");
        };
        assert!(why.contains("it is for 1002:6660, not 1002:73ff"), "{why}");
        std::fs::remove_dir_all(sys.join("firmware")).unwrap();
        let AutoRom::Missing(why) = find_auto(&sys, &laptop_gpu(&[])) else {
            panic!("found an image in nothing");
        };
        assert!(why.contains("the host has no ACPI VFCT table"), "{why}");
        let _ = std::fs::remove_dir_all(&sys);
    }

    #[test]
    fn atrm_is_found_in_the_dsdt_or_an_ssdt_only() {
        let sys = temp("acpi");
        let tables = sys.join("firmware/acpi/tables");
        std::fs::create_dir_all(&tables).unwrap();
        assert!(acpi_tables_with_atrm(&sys).is_empty());
        std::fs::write(tables.join("DSDT"), b"DSDT....no such method").unwrap();
        std::fs::write(tables.join("SSDT3"), b"SSDT....\x14\x4a\x04ATRM\x0a").unwrap();
        std::fs::write(tables.join("FACP"), b"FACP ATRM").unwrap();
        assert_eq!(acpi_tables_with_atrm(&sys), vec!["SSDT3".to_string()]);
        let _ = std::fs::remove_dir_all(&sys);
    }
}
