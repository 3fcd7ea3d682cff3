//! Resetting passed-through devices through VFIO, as [`crate::host::reset`] plans it: a
//! function the kernel can reset alone gets `VFIO_DEVICE_RESET`; one it cannot (no FLR, no
//! PM reset, another function on its bus: many AMD GPUs with their HDMI audio) gets a
//! secondary-bus reset with `VFIO_DEVICE_PCI_HOT_RESET`, which the kernel allows only to a
//! process that hands over the VFIO group file of every function the bus reset reaches.
//!
//! vfio-ioctls keeps its group files to itself, so the ones this process holds are found in
//! `/proc/self/fd` (links to `/dev/vfio/N`) while the VM is built, before the sandbox.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use vfio_bindings::bindings::vfio::{VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET};
use vfio_ioctls::VfioDevice;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ptr, ioctl_with_mut_ref};

use crate::host::reset::{self as plan, ResetPlan};
use crate::host::HostRoot;
use crate::vfio_requests::{
    VFIO_DEVICE_GET_INFO, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO_DEVICE_PCI_HOT_RESET,
    VFIO_DEVICE_RESET,
};

/// Words of the hot-reset structures' headers (argsz, flags, count).
const HEADER_WORDS: usize = 3;
/// Words per dependent device (group id; segment, bus, devfn).
const DEVICE_WORDS: usize = 2;
/// More functions than any bus holds: a count past this is not believed.
const MOST_DEPENDENTS: usize = 256;

/// One device to reset: its name in messages, its VFIO file and (for a PCI function) its
/// address, for naming the method.
pub(super) struct ToReset<'a> {
    pub(super) name: &'a str,
    pub(super) device: &'a VfioDevice,
    pub(super) bdf: Option<&'a str>,
}

/// A function a bus reset reaches: its address and IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Dependent {
    bdf: String,
    group: u32,
}

/// A device file, by its descriptor (owned by the device's `VfioFunction`, which the
/// [`ResetList`]'s owner keeps open for as long as the list lives).
#[derive(Clone, Copy, Debug)]
struct DeviceFd(RawFd);

impl AsRawFd for DeviceFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One device in a [`ResetList`].
#[derive(Debug)]
struct Entry {
    name: String,
    fd: DeviceFd,
    /// The plan sysfs shows for it (PCI functions), read while files could be opened.
    plan: Option<ResetPlan>,
}

/// Everything needed to reset the devices, gathered while the VM is built, so a reset
/// needs only ioctls (a guest reboot happens inside the sandbox).
#[derive(Debug)]
pub(super) struct ResetList {
    entries: Vec<Entry>,
    /// The VFIO group files this process holds.
    groups: BTreeMap<u32, RawFd>,
}

impl ResetList {
    /// The list for `devices`, which stay open while it is used.
    pub(super) fn new(devices: &[ToReset<'_>]) -> ResetList {
        ResetList {
            entries: devices
                .iter()
                .map(|d| Entry {
                    name: d.name.to_string(),
                    fd: DeviceFd(d.device.as_raw_fd()),
                    plan: d.bdf.map(|bdf| plan::plan(&HostRoot::system(), bdf)),
                })
                .collect(),
            groups: held_groups(Path::new("/proc/self/fd")),
        }
    }

    /// Reset every device, each the way it can be; what could not be done is a warning
    /// (the device then keeps the state it was left in).
    pub(super) fn run(&self) {
        let mut buses_reset: BTreeSet<Vec<Dependent>> = BTreeSet::new();
        for entry in &self.entries {
            let flags = match device_flags(&entry.fd) {
                Ok(flags) => flags,
                Err(e) => {
                    log::warn!(
                        "{}: not reset: VFIO_DEVICE_GET_INFO failed: {e}",
                        entry.name
                    );
                    continue;
                }
            };
            if flags & VFIO_DEVICE_FLAGS_RESET != 0 {
                function_reset(entry);
            } else if flags & VFIO_DEVICE_FLAGS_PCI != 0 {
                bus_reset(entry, &self.groups, &mut buses_reset);
            } else {
                log::info!("{}: no reset offered by its VFIO driver", entry.name);
            }
        }
    }
}

fn function_reset(entry: &Entry) {
    let how = entry.plan.as_ref().map_or_else(
        || "the kernel's function reset".to_string(),
        ResetPlan::describe,
    );
    // SAFETY: the device file is open (see `DeviceFd`); the ioctl takes no argument.
    let ret = unsafe { ioctl(&entry.fd, VFIO_DEVICE_RESET()) };
    if ret < 0 {
        log::warn!(
            "{}: reset failed ({}); it keeps the state it was left in",
            entry.name,
            std::io::Error::last_os_error()
        );
    } else {
        log::info!("{}: reset: {how}", entry.name);
    }
}

fn bus_reset(entry: &Entry, groups: &BTreeMap<u32, RawFd>, done: &mut BTreeSet<Vec<Dependent>>) {
    let dependents = match hot_reset_info(&entry.fd) {
        Ok(dependents) => dependents,
        Err(e) => {
            // A function with no reset at all (doctor warns of it) is not worth a warning on
            // every run; a bus reset VFIO refuses where sysfs shows a bridge is.
            match &entry.plan {
                Some(ResetPlan::None(why)) => {
                    log::info!("{}: not reset: {why}", entry.name);
                }
                _ => log::warn!(
                    "{}: not reset: VFIO offers no bus reset ({e}); it keeps the state it was left in",
                    entry.name
                ),
            }
            return;
        }
    };
    if done.contains(&dependents) {
        return;
    }
    let missing: Vec<String> = dependents
        .iter()
        .filter(|d| !groups.contains_key(&d.group))
        .map(|d| format!("{} (IOMMU group {})", d.bdf, d.group))
        .collect();
    if !missing.is_empty() {
        log::warn!(
            "{}: not reset: it has no function reset, and a bus reset would also reset {}, which minivmm does not hold: pass them with --gpu too",
            entry.name,
            missing.join(", ")
        );
        return;
    }
    let fds: BTreeSet<RawFd> = dependents
        .iter()
        .filter_map(|d| groups.get(&d.group).copied())
        .collect();
    match hot_reset(&entry.fd, &fds.into_iter().collect::<Vec<_>>()) {
        Ok(()) => {
            let all: Vec<&str> = dependents.iter().map(|d| d.bdf.as_str()).collect();
            log::info!(
                "{}: reset: a bus reset (VFIO hot reset of {})",
                entry.name,
                all.join(", ")
            );
            done.insert(dependents);
        }
        Err(e) => log::warn!(
            "{}: not reset: the bus reset failed ({e}); it keeps the state it was left in",
            entry.name
        ),
    }
}

/// The VFIO device's flags (`VFIO_DEVICE_GET_INFO`).
fn device_flags(device: &impl AsRawFd) -> std::io::Result<u32> {
    let mut info = vfio_bindings::bindings::vfio::vfio_device_info {
        argsz: std::mem::size_of::<vfio_bindings::bindings::vfio::vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: `info` is a vfio_device_info the kernel fills within its argsz.
    let ret = unsafe { ioctl_with_mut_ref(device, VFIO_DEVICE_GET_INFO(), &mut info) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.flags)
}

/// The functions a bus reset of `device` reaches, sorted (`VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`:
/// asked once for the count, then for the list).
fn hot_reset_info(device: &impl AsRawFd) -> std::io::Result<Vec<Dependent>> {
    let mut count = 0usize;
    for _ in 0..2 {
        let words = HEADER_WORDS + count * DEVICE_WORDS;
        let mut buffer = vec![0u32; words];
        if let Some(argsz) = buffer.first_mut() {
            *argsz = (words * 4) as u32;
        }
        // SAFETY: `buffer` is `argsz` bytes, 4-aligned, a vfio_pci_hot_reset_info header
        // followed by room for `count` dependent devices; the kernel writes within argsz.
        let ret = unsafe {
            ioctl_with_mut_ptr(
                device,
                VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
                buffer.as_mut_ptr(),
            )
        };
        let reported = buffer.get(2).map_or(0, |&c| c as usize);
        if ret < 0 {
            let error = std::io::Error::last_os_error();
            // ENOSPC: the count is filled in; ask again with room for it.
            if error.raw_os_error() == Some(libc::ENOSPC)
                && reported > count
                && reported <= MOST_DEPENDENTS
            {
                count = reported;
                continue;
            }
            return Err(error);
        }
        return Ok(parse_dependents(&buffer, reported));
    }
    Err(std::io::Error::other(
        "the count of affected devices kept changing",
    ))
}

/// The dependent devices in a filled hot-reset-info buffer.
fn parse_dependents(buffer: &[u32], count: usize) -> Vec<Dependent> {
    let mut dependents: Vec<Dependent> = buffer
        .get(HEADER_WORDS..)
        .unwrap_or_default()
        .chunks_exact(DEVICE_WORDS)
        .take(count)
        .filter_map(|d| {
            let (&group, &location) = (d.first()?, d.get(1)?);
            let segment = location & 0xffff;
            let bus = (location >> 16) & 0xff;
            let devfn = location >> 24;
            Some(Dependent {
                bdf: format!("{segment:04x}:{bus:02x}:{:02x}.{}", devfn >> 3, devfn & 7),
                group,
            })
        })
        .collect();
    dependents.sort();
    dependents
}

/// `VFIO_DEVICE_PCI_HOT_RESET` of `device`'s bus, with the group files of every function
/// it reaches.
fn hot_reset(device: &impl AsRawFd, group_fds: &[RawFd]) -> std::io::Result<()> {
    let words = HEADER_WORDS + group_fds.len();
    let mut buffer = vec![(words * 4) as i32, 0, group_fds.len() as i32];
    buffer.extend_from_slice(group_fds);
    // SAFETY: `buffer` is a vfio_pci_hot_reset of `argsz` bytes: the header and `count`
    // group fds, which are open (held by the VFIO container for the process's life).
    let ret =
        unsafe { ioctl_with_mut_ptr(device, VFIO_DEVICE_PCI_HOT_RESET(), buffer.as_mut_ptr()) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The VFIO group files this process holds, by group number, from a `/proc/PID/fd`
/// directory.
fn held_groups(fd_dir: &Path) -> BTreeMap<u32, RawFd> {
    let mut groups = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(fd_dir) else {
        return groups;
    };
    for entry in entries.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let group = target
            .to_str()
            .and_then(|t| t.strip_prefix("/dev/vfio/"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(group) = group {
            groups.insert(group, fd);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependents_are_read_as_the_kernel_writes_them() {
        // Two functions of bus 3 (devfn 0x00 and 0x01) in group 14, one of bus 4 in group 15.
        let buffer = [
            36,
            0,
            3, //
            14,
            0x0003_0000, //
            14,
            0x0103_0000, //
            15,
            0x0804_0000,
        ];
        assert_eq!(
            parse_dependents(&buffer, 3),
            vec![
                Dependent {
                    bdf: "0000:03:00.0".into(),
                    group: 14
                },
                Dependent {
                    bdf: "0000:03:00.1".into(),
                    group: 14
                },
                Dependent {
                    bdf: "0000:04:01.0".into(),
                    group: 15
                },
            ]
        );
        // A count larger than the buffer reads only what is there.
        assert_eq!(parse_dependents(&buffer[..5], 3).len(), 1);
    }

    #[test]
    fn held_groups_are_the_links_to_dev_vfio_numbers() {
        let dir = std::env::temp_dir().join(format!("minivmm-fds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/dev/vfio/12", dir.join("7")).unwrap();
        std::os::unix::fs::symlink("/dev/vfio/vfio", dir.join("8")).unwrap();
        std::os::unix::fs::symlink("/dev/kvm", dir.join("9")).unwrap();
        std::os::unix::fs::symlink("/dev/vfio/3", dir.join("not-a-number")).unwrap();
        let groups = held_groups(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(groups, BTreeMap::from([(12, 7)]));
    }
}
