//! `minivmm rom info|dump|extract`: getting a VBIOS image and knowing what is in it.
//!
//! Sysfs is read through a root directory so that the logic is tested on fake trees.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use minivmm_firmware::acpi::vfct;
use minivmm_firmware::option_rom;

use crate::host::vbios_source;
use crate::passthrough::GpuSpec;

/// A `rom` subcommand failure: one line for the user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Error(String);

fn fail(message: impl Into<String>) -> Error {
    Error(message.into())
}

/// `rom info FILE`: what the image holds.
pub fn info(path: &Path) -> Result<String, Error> {
    let bytes =
        std::fs::read(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let rom = option_rom::parse(&bytes).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    Ok(format!(
        "{}: {} bytes, {} image(s)\n{}",
        path.display(),
        bytes.len(),
        rom.images.len(),
        rom.describe()
    ))
}

/// A PCI address in the kernel's form, from `0000:01:00.0` or `01:00.0`.
fn bdf(text: &str) -> Result<String, Error> {
    match text.parse::<GpuSpec>() {
        Ok(GpuSpec::Pci(bdf)) => Ok(bdf),
        _ => Err(fail(format!(
            "'{text}' is not a PCI address; use 0000:01:00.0 or 01:00.0"
        ))),
    }
}

/// `rom dump BDF -o FILE`: the device's ROM through sysfs (enabled for the read, disabled
/// again whatever happens), validated, written to `out`. Returns the summary line.
pub fn dump(sys: &Path, device: &str, out: &Path) -> Result<String, Error> {
    let bdf = bdf(device)?;
    let dir = sys.join("bus/pci/devices").join(&bdf);
    if !dir.exists() {
        return Err(fail(format!(
            "there is no PCI device {bdf}: check the address with lspci -D"
        )));
    }
    let hint = format!(
        "a laptop GPU's VBIOS is usually in the ACPI VFCT table: try minivmm rom extract --device {bdf}"
    );
    let bytes = crate::host::pci::read_rom(&dir).map_err(|e| {
        use crate::host::pci::RomReadError;
        fail(match e {
            RomReadError::Missing => format!("{bdf} has no ROM BAR; {hint}"),
            RomReadError::Enable(e) => format!("cannot enable the ROM of {bdf} ({e}): run as root"),
            RomReadError::Read(e) => {
                format!("cannot read the ROM of {bdf} ({e}): the device has none readable; {hint}")
            }
        })
    })?;
    save(&bytes, out, &format!("the ROM of {bdf}"))
}

/// `rom extract [--device BDF] -o FILE`: a VBIOS the host's firmware hands out. From the
/// ACPI VFCT table; for a given device without a VFCT image, from the copy amdgpu keeps in
/// debugfs while it is bound (the way to an image that firmware hands out only through an
/// ACPI `ATRM` method, which user space cannot call).
pub fn extract(sys: &Path, device: Option<&str>, out: &Path) -> Result<String, Error> {
    let wanted = device.map(bdf).transpose()?;
    let from_vfct = vfct_image(sys, wanted.as_deref());
    let (Some(bdf), Err(vfct_miss)) = (&wanted, &from_vfct) else {
        let (image, what) = from_vfct.map_err(fail)?;
        return save(&image, out, &what);
    };
    match vbios_source::amdgpu_vbios(sys, bdf) {
        Ok(image) => save(
            &image,
            out,
            &format!("amdgpu's copy of the VBIOS of {bdf} (debugfs)"),
        ),
        Err(debugfs_miss) => {
            let atrm = vbios_source::acpi_tables_with_atrm(sys);
            let hint = if atrm.is_empty() {
                "; try minivmm rom dump BDF, or the GPU maker's image with --gpu BDF,rom=FILE"
                    .to_string()
            } else {
                format!(
                    "; this host's firmware has an ACPI ATRM method ({}), where laptops keep a dGPU's VBIOS: bind amdgpu to {bdf} on the host, mount debugfs, and run this again",
                    atrm.join(", ")
                )
            };
            Err(fail(format!(
                "no VBIOS for {bdf}: {vfct_miss}; {debugfs_miss}{hint}"
            )))
        }
    }
}

/// The VFCT image for `wanted` (the first image without one), and what to call it.
fn vfct_image(sys: &Path, wanted: Option<&str>) -> Result<(Vec<u8>, String), String> {
    let table_path = sys.join("firmware/acpi/tables/VFCT");
    let table = std::fs::read(&table_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "this host has no VFCT table ({}): its firmware does not hand out a VBIOS that way; try minivmm rom dump BDF",
            table_path.display()
        ),
        _ => format!("cannot read {} ({e}): run as root", table_path.display()),
    })?;
    let images = vfct::images(&table);
    let image = match wanted {
        None => images.first(),
        Some(wanted) => images.iter().find(|i| {
            let (bus, dev, func) = i.bdf;
            wanted == format!("0000:{bus:02x}:{dev:02x}.{func:x}")
        }),
    };
    let Some(image) = image else {
        let have: Vec<String> = images
            .iter()
            .map(|i| format!("{:02x}:{:02x}.{:x}", i.bdf.0, i.bdf.1, i.bdf.2))
            .collect();
        return Err(match wanted {
            Some(w) => format!(
                "the VFCT table has no image for {w} (it has: {})",
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ),
            None => "the VFCT table holds no image".to_string(),
        });
    };
    let (bus, dev, func) = image.bdf;
    Ok((
        image.rom.clone(),
        format!("the VFCT image for {bus:02x}:{dev:02x}.{func:x}"),
    ))
}

/// Validate `bytes` and write them to `out`; the summary names what was saved.
fn save(bytes: &[u8], out: &Path, what: &str) -> Result<String, Error> {
    let rom = option_rom::parse(bytes)
        .map_err(|e| fail(format!("{what} is not a usable ROM image: {e}")))?;
    let mut file = std::fs::File::create(out)
        .map_err(|e| fail(format!("cannot create {}: {e}", out.display())))?;
    file.write_all(bytes)
        .map_err(|e| fail(format!("cannot write {}: {e}", out.display())))?;
    let ids = rom
        .ids()
        .map(|(v, d)| format!("{v:04x}:{d:04x}"))
        .unwrap_or_default();
    Ok(format!(
        "wrote {what} to {}: {} bytes, {} image(s), for {ids}",
        out.display(),
        bytes.len(),
        rom.images.len()
    ))
}

/// Where sysfs is (tests point it elsewhere).
pub fn sys_root() -> PathBuf {
    PathBuf::from("/sys")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("minivmm-rom-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A checksummed 2 KiB legacy image for 1002:6660.
    pub(crate) fn image() -> Vec<u8> {
        crate::host::vbios_source::tests::rom_for((0x1002, 0x6660), 0)
    }

    #[test]
    fn extract_picks_the_image_for_the_device() {
        let sys = temp("vfct");
        let tables = sys.join("firmware/acpi/tables");
        std::fs::create_dir_all(&tables).unwrap();
        let rom = image();
        let table = vfct::build(&[vfct::VfctImage {
            bus: 1,
            device: 0,
            function: 0,
            vendor_id: 0x1002,
            device_id: 0x6660,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            rom: &rom,
        }]);
        std::fs::write(tables.join("VFCT"), table).unwrap();
        let out = sys.join("vbios.rom");
        let said = extract(&sys, Some("01:00.0"), &out).unwrap();
        assert!(said.contains("1002:6660"), "{said}");
        assert_eq!(std::fs::read(&out).unwrap(), rom);
        let e = extract(&sys, Some("02:00.0"), &out).unwrap_err();
        assert!(
            e.0.contains("no image for 0000:02:00.0 (it has: 01:00.0)"),
            "{e}"
        );
        std::fs::remove_file(tables.join("VFCT")).unwrap();
        assert!(extract(&sys, None, &out)
            .unwrap_err()
            .0
            .contains("no VFCT table"));
        let _ = std::fs::remove_dir_all(&sys);
    }

    #[test]
    fn extract_explains_an_atrm_only_host_and_then_reads_amdgpus_copy() {
        let sys = temp("atrm");
        let tables = sys.join("firmware/acpi/tables");
        std::fs::create_dir_all(&tables).unwrap();
        std::fs::write(tables.join("SSDT2"), b"SSDT\x14\x4a\x04ATRM\x0a").unwrap();
        let out = sys.join("vbios.rom");
        // No VFCT, amdgpu not bound: the error says where the image is and what to do.
        let e = extract(&sys, Some("03:00.0"), &out).unwrap_err().0;
        assert!(
            e.starts_with("no VBIOS for 0000:03:00.0: this host has no VFCT table"),
            "{e}"
        );
        assert!(e.contains("debugfs is not mounted"), "{e}");
        assert!(e.contains("ATRM method (SSDT2)"), "{e}");
        assert!(e.contains("bind amdgpu to 0000:03:00.0"), "{e}");
        // amdgpu bound, debugfs mounted: its copy is saved, validated.
        let card = sys.join("kernel/debug/dri/1");
        std::fs::create_dir_all(&card).unwrap();
        std::fs::write(
            card.join("name"),
            "amdgpu dev=0000:03:00.0 unique=0000:03:00.0\n",
        )
        .unwrap();
        std::fs::write(card.join("amdgpu_vbios"), image()).unwrap();
        let said = extract(&sys, Some("03:00.0"), &out).unwrap();
        assert!(
            said.contains("amdgpu's copy") && said.contains("1002:6660"),
            "{said}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), image());
        // A copy that is not an image is refused as any other.
        std::fs::write(card.join("amdgpu_vbios"), [1u8; 64]).unwrap();
        let e = extract(&sys, Some("03:00.0"), &out).unwrap_err().0;
        assert!(e.contains("not a usable ROM image"), "{e}");
        let _ = std::fs::remove_dir_all(&sys);
    }

    #[test]
    fn dump_reads_the_rom_file_and_disables_it_again() {
        let sys = temp("dump");
        let dev = sys.join("bus/pci/devices/0000:00:02.0");
        std::fs::create_dir_all(&dev).unwrap();
        let out = sys.join("out.rom");
        assert!(dump(&sys, "00:02.0", &out)
            .unwrap_err()
            .0
            .contains("no ROM BAR"));
        // A fake sysfs rom file: the "1"/"0" writes replace it, so write the image after.
        std::fs::write(dev.join("rom"), image()).unwrap();
        let e = dump(&sys, "00:02.0", &out).unwrap_err();
        assert!(
            e.0.contains("not a usable ROM image"),
            "the write of 1 replaced it: {e}"
        );
        assert_eq!(
            std::fs::read(dev.join("rom")).unwrap(),
            b"0",
            "disabled again"
        );
        assert!(dump(&sys, "00:09.0", &out).unwrap_err().0.contains("lspci"));
        let _ = std::fs::remove_dir_all(&sys);
    }

    #[test]
    fn info_describes_or_names_the_problem() {
        let dir = temp("info");
        let path = dir.join("v.rom");
        std::fs::write(&path, image()).unwrap();
        let text = info(&path).unwrap();
        assert!(
            text.contains("1 image(s)") && text.contains("vendor 1002 device 6660"),
            "{text}"
        );
        std::fs::write(&path, [0u8; 100]).unwrap();
        assert!(info(&path).unwrap_err().0.contains("expected 55 aa"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
