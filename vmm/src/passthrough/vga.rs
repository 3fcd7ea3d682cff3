//! `--gpu BDF,vga=on`: the legacy VGA ranges of the guest go to one passed-through
//! VGA-compatible device through VFIO's VGA region (see `devices`' `passthrough::vga`).
//! The guest RAM slots leave the memory window out (`memory::register_slots`), and the zero
//! page says a colour text display is there, as a BIOS leaves one, so the kernel's vgacon
//! takes it.

use std::sync::{Arc, Mutex};

use minivmm_devices::bus::SharedDevice;
use minivmm_devices::pci::passthrough::vga::{
    LegacyVga, VGA_MEMORY, VGA_PORTS, VGA_REGION_INDEX, VGA_REGION_SIZE,
};
use minivmm_devices::pci::passthrough::HostFunction as _;

use super::{Error, GpuArg, GpuSpec, SharedFunction};
use crate::vcpu::Buses;

/// The class code (base class and subclass) of a VGA-compatible display controller.
const VGA_CLASS: u32 = 0x0300;

/// `vga=on` on one PCI device at most, and on a VGA-compatible one: `class` gives a
/// device's class code (from sysfs), `None` when it cannot be read.
pub fn check_args(args: &[GpuArg], class: impl Fn(&str) -> Option<u32>) -> Result<(), Error> {
    let wanted: Vec<&GpuArg> = args.iter().filter(|a| a.vga).collect();
    if wanted.len() > 1 {
        return Err(Error::Vm(
            "vga=on is given to more than one --gpu: the legacy VGA ranges can go to one device only".into(),
        ));
    }
    let Some(arg) = wanted.first() else {
        return Ok(());
    };
    let GpuSpec::Pci(bdf) = &arg.device else {
        return Err(Error::Vm(format!(
            "vga=on needs a PCI device; {} is a mediated device",
            arg.device
        )));
    };
    match class(bdf) {
        Some(class) if class >> 8 == VGA_CLASS => Ok(()),
        Some(class) => Err(Error::Vm(format!(
            "vga=on: {bdf} is not a VGA-compatible display controller (class {class:06x}, not 0300xx): drop vga=on"
        ))),
        // The device checks that follow say what is wrong with the device itself.
        None => Ok(()),
    }
}

/// Route the legacy ranges to `function` (`name` in messages). VFIO must offer the device's
/// VGA region.
pub fn route(function: &SharedFunction, name: &str, buses: &Buses) -> Result<(), Error> {
    let size = function
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .host()
        .region_size(VGA_REGION_INDEX);
    if size < VGA_REGION_SIZE {
        return Err(Error::Vfio(format!(
            "vga=on: vfio-pci offers no VGA region for {name}: the host kernel needs CONFIG_VFIO_PCI_VGA, and vfio-pci must not have disable_vga=1"
        )));
    }
    let range = |base: u64| -> SharedDevice {
        Arc::new(Mutex::new(LegacyVga::new(Arc::downgrade(function), base)))
    };
    let (start, len) = VGA_MEMORY;
    buses
        .mmio
        .insert(range(start), start, len)
        .map_err(|e| Error::Vm(format!("vga=on: the VGA memory window: {e}")))?;
    for (port, count) in VGA_PORTS {
        let port = u64::from(port);
        buses
            .pio
            .insert(range(port), port, u64::from(count))
            .map_err(|e| Error::Vm(format!("vga=on: the VGA ports: {e}")))?;
    }
    log::info!(
        "{name} gets the legacy VGA ranges (0xa0000-0xbffff, ports 0x3b0-0x3bb, 0x3c0-0x3df)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(values: &[&str]) -> Vec<GpuArg> {
        values.iter().map(|v| v.parse().unwrap()).collect()
    }

    #[test]
    fn vga_goes_to_one_vga_compatible_pci_device() {
        let vga = |_: &str| Some(0x030000);
        assert!(check_args(&args(&["01:00.0,vga=on", "02:00.0"]), vga).is_ok());
        assert!(check_args(&args(&["01:00.0"]), |_| None).is_ok());
        let e = check_args(&args(&["01:00.0,vga=on", "02:00.0,vga=on"]), vga).unwrap_err();
        assert!(e.to_string().contains("more than one --gpu"), "{e}");
        let display = |_: &str| Some(0x038000);
        let e = check_args(&args(&["01:00.0,vga=on"]), display).unwrap_err();
        assert!(e.to_string().contains("not a VGA-compatible"), "{e}");
        let mdev = "/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001,vga=on";
        let e = check_args(&args(&[mdev]), vga).unwrap_err();
        assert!(e.to_string().contains("mediated"), "{e}");
    }
}
