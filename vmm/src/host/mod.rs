//! The host as minivmm's tools see it: readiness (`doctor`), IOMMU groups, and moving
//! devices to vfio-pci and back (`bind`, `unbind`, `--managed`).
//!
//! Everything reads and writes the host through one [`HostRoot`] — `/` on a real host — so
//! every check and every binding step is unit-tested against a fake tree: sysfs
//! (`sys/`), procfs (`proc/`), device nodes (`dev/`), kernel modules (`lib/modules/`) and
//! minivmm's own records (`run/minivmm/`).

pub mod binding;
pub mod doctor;
pub mod groups;
pub mod pci;
pub mod reset;
pub mod resources;
pub mod vbios_source;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// `CAP_DAC_OVERRIDE`: opens files whatever their mode (root has it).
const CAP_DAC_OVERRIDE: u32 = 1;
/// `CAP_IPC_LOCK`: locks memory beyond RLIMIT_MEMLOCK, which VFIO's DMA mapping counts.
const CAP_IPC_LOCK: u32 = 14;

/// The directory the host's `/` is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoot(PathBuf);

impl HostRoot {
    /// The real host.
    pub fn system() -> HostRoot {
        HostRoot(PathBuf::from("/"))
    }

    /// A tree that stands for the host's `/` (tests).
    pub fn at(path: impl Into<PathBuf>) -> HostRoot {
        HostRoot(path.into())
    }

    /// `relative` (written without the leading slash) under the root.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    /// The sysfs directory.
    pub fn sys(&self) -> PathBuf {
        self.path("sys")
    }

    /// A PCI function's sysfs directory.
    pub fn pci_device(&self, bdf: &str) -> PathBuf {
        self.sys().join("bus/pci/devices").join(bdf)
    }

    /// A file's contents, trimmed; `None` when it cannot be read.
    pub fn read(&self, relative: &str) -> Option<String> {
        read_trimmed(&self.path(relative))
    }
}

/// A file's contents without surrounding white space.
pub fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The names of a directory's entries, sorted; none when it cannot be read.
pub fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Who minivmm runs as, from `/proc/self/status`: enough to predict whether an open of a
/// device node will be allowed, and whether locked memory is limited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id and the supplementary groups.
    pub gids: Vec<u32>,
    /// Effective capabilities (bit N is capability N).
    pub capabilities: u64,
}

impl Credentials {
    /// Read the running process's credentials under `root`.
    pub fn read(root: &HostRoot) -> Option<Credentials> {
        let status = std::fs::read_to_string(root.path("proc/self/status")).ok()?;
        Credentials::parse(&status)
    }

    /// Parse the `Uid:`, `Gid:`, `Groups:` and `CapEff:` lines of a status file.
    pub fn parse(status: &str) -> Option<Credentials> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::split_whitespace)
        };
        // Uid: real effective saved fs — the effective one decides.
        let uid = field("Uid:")?.nth(1)?.parse().ok()?;
        let gid: u32 = field("Gid:")?.nth(1)?.parse().ok()?;
        let mut gids = vec![gid];
        if let Some(groups) = field("Groups:") {
            gids.extend(groups.filter_map(|g| g.parse::<u32>().ok()));
        }
        let capabilities = u64::from_str_radix(field("CapEff:")?.next()?, 16).ok()?;
        Some(Credentials {
            uid,
            gids,
            capabilities,
        })
    }

    fn has(&self, capability: u32) -> bool {
        self.capabilities & (1 << capability) != 0
    }

    /// True when locked memory is not limited for this process.
    pub fn may_lock_any_memory(&self) -> bool {
        self.has(CAP_IPC_LOCK)
    }

    /// True when a file with `metadata` may be opened for reading and writing.
    pub fn may_read_write(&self, metadata: &std::fs::Metadata) -> bool {
        if self.has(CAP_DAC_OVERRIDE) {
            return true;
        }
        let mode = metadata.mode();
        let bits = if metadata.uid() == self.uid {
            mode >> 6
        } else if self.gids.contains(&metadata.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & 0o6 == 0o6
    }
}

/// The soft RLIMIT_MEMLOCK in bytes from `/proc/self/limits` (`None`: unlimited).
pub fn memlock_limit(root: &HostRoot) -> Option<Option<u64>> {
    let limits = std::fs::read_to_string(root.path("proc/self/limits")).ok()?;
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max locked memory"))?;
    match line.split_whitespace().next()? {
        "unlimited" => Some(None),
        soft => soft.parse().ok().map(Some),
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake host tree for the tests of this module's children.

    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    /// A throwaway host root, removed on drop.
    pub struct FakeHost {
        dir: PathBuf,
    }

    /// One PCI function of a fake host.
    #[derive(Clone, Copy)]
    pub struct FakePci<'a> {
        pub bdf: &'a str,
        pub ids: (u16, u16),
        pub class: u32,
        pub group: Option<u32>,
        pub driver: Option<&'a str>,
    }

    impl FakeHost {
        pub fn new() -> FakeHost {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "minivmm-host-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            FakeHost { dir }
        }

        pub fn root(&self) -> super::HostRoot {
            super::HostRoot::at(&self.dir)
        }

        pub fn path(&self, relative: &str) -> PathBuf {
            self.dir.join(relative)
        }

        /// Write `contents` to `relative`, creating directories.
        pub fn file(&self, relative: &str, contents: &str) -> &Self {
            let path = self.path(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
            self
        }

        pub fn dir(&self, relative: &str) -> &Self {
            std::fs::create_dir_all(self.path(relative)).unwrap();
            self
        }

        /// A PCI function with its IDs, class, IOMMU group and driver, on the root bus.
        pub fn pci(&self, pci: FakePci) -> &Self {
            self.pci_at("sys/devices/pci0000:00", pci)
        }

        /// A PCI function under the device directory `parent` (a bridge's, for a function
        /// behind it).
        pub fn pci_at(&self, parent: &str, pci: FakePci) -> &Self {
            let dev = format!("{parent}/{}", pci.bdf);
            self.file(&format!("{dev}/vendor"), &format!("0x{:04x}\n", pci.ids.0));
            self.file(&format!("{dev}/device"), &format!("0x{:04x}\n", pci.ids.1));
            self.file(&format!("{dev}/class"), &format!("0x{:06x}\n", pci.class));
            self.file(&format!("{dev}/driver_override"), "(null)\n");
            let dev_path = self.path(&dev);
            if let Some(group) = pci.group {
                let group_dir = self.path(&format!("sys/kernel/iommu_groups/{group}"));
                std::fs::create_dir_all(group_dir.join("devices")).unwrap();
                symlink(&group_dir, dev_path.join("iommu_group")).unwrap();
                symlink(&dev_path, group_dir.join("devices").join(pci.bdf)).unwrap();
            }
            self.dir("sys/bus/pci/devices");
            symlink(&dev_path, self.path("sys/bus/pci/devices").join(pci.bdf)).unwrap();
            if let Some(driver) = pci.driver {
                self.bind_link(pci.bdf, driver);
            }
            self
        }

        /// Make `bdf`'s driver link point at `driver` (created if missing).
        pub fn bind_link(&self, bdf: &str, driver: &str) {
            let drv = self.path(&format!("sys/bus/pci/drivers/{driver}"));
            std::fs::create_dir_all(&drv).unwrap();
            let dev = self.path(&format!("sys/bus/pci/devices/{bdf}"));
            let _ = std::fs::remove_file(dev.join("driver"));
            symlink(&drv, dev.join("driver")).unwrap();
        }

        /// Remove `bdf`'s driver link.
        pub fn unbind_link(&self, bdf: &str) {
            let dev = self.path(&format!("sys/bus/pci/devices/{bdf}"));
            let _ = std::fs::remove_file(dev.join("driver"));
        }

        /// A device node (a plain file here) with a mode and owner.
        pub fn node(&self, relative: &str, mode: u32, uid: u32, gid: u32) -> &Self {
            use std::os::unix::fs::PermissionsExt as _;
            self.file(relative, "");
            let path = self.path(relative);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            self
        }

        /// The running process as `uid`/`gid` with `caps` effective capabilities.
        pub fn process(&self, uid: u32, gid: u32, groups: &str, caps: u64) -> &Self {
            self.file(
                "proc/self/status",
                &format!(
                    "Name:\tminivmm\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{gid}\t{gid}\t{gid}\t{gid}\nGroups:\t{groups}\nCapEff:\t{caps:016x}\n"
                ),
            )
        }

        pub fn exists(&self, relative: &str) -> bool {
            Path::new(&self.path(relative)).exists()
        }
    }

    impl Drop for FakeHost {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeHost;
    use super::*;

    #[test]
    fn credentials_come_from_the_status_file() {
        let status = "Name:\tx\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t27 994 \nCapEff:\t0000000000004000\n";
        let creds = Credentials::parse(status).unwrap();
        assert_eq!(creds.uid, 1001, "the effective uid");
        assert_eq!(creds.gids, vec![100, 27, 994]);
        assert!(creds.may_lock_any_memory());
        assert!(Credentials::parse("Uid:\t0\n").is_none());
    }

    #[test]
    fn device_node_access_follows_owner_group_and_other_bits() {
        let host = FakeHost::new();
        host.node("dev/vfio/5", 0o660, 0, 994);
        let meta = std::fs::metadata(host.path("dev/vfio/5")).unwrap();
        let user = |gids: Vec<u32>, caps| Credentials {
            uid: 1000,
            gids,
            capabilities: caps,
        };
        assert!(!user(vec![1000], 0).may_read_write(&meta));
        assert!(user(vec![1000, 994], 0).may_read_write(&meta), "group kvm");
        assert!(user(vec![1000], 1 << CAP_DAC_OVERRIDE).may_read_write(&meta));
    }

    #[test]
    fn the_memlock_limit_is_read_from_limits() {
        let host = FakeHost::new();
        host.file(
            "proc/self/limits",
            "Limit                     Soft Limit           Hard Limit           Units\nMax locked memory         8388608              8388608              bytes\n",
        );
        assert_eq!(memlock_limit(&host.root()), Some(Some(8 << 20)));
        host.file(
            "proc/self/limits",
            "Max locked memory         unlimited            unlimited            bytes\n",
        );
        assert_eq!(memlock_limit(&host.root()), Some(None));
    }
}
