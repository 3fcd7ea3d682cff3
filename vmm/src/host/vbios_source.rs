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

#[cfg(test)]
mod tests {
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
