//! Guest RAM from hugetlbfs: `--memory SIZE,hugepages=on[,hugepage-size=2M|1G]`.
//!
//! The host's huge pages are a pool the administrator reserves (`nr_hugepages`); a guest
//! backed by them has no page faults to take on the host after the first touch, 2 MiB or
//! 1 GiB stage-2 mappings whatever transparent huge pages do, and for passthrough far fewer
//! pages to pin. minivmm takes them through a memfd (`MFD_HUGETLB`) per RAM region, mapped
//! shared, and checks first that the pool has enough free pages, so the error says how many
//! to reserve instead of the guest dying of SIGBUS later.

use std::fmt;
use std::path::Path;

/// A huge-page size x86-64 offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePageSize {
    /// 2 MiB.
    Size2M,
    /// 1 GiB.
    Size1G,
}

impl HugePageSize {
    /// Bytes per page.
    pub fn bytes(self) -> u64 {
        match self {
            HugePageSize::Size2M => 2 << 20,
            HugePageSize::Size1G => 1 << 30,
        }
    }

    /// `memfd_create`'s size flag (log2 of the size, shifted by MFD_HUGE_SHIFT).
    pub fn memfd_flag(self) -> libc::c_uint {
        let log2 = self.bytes().trailing_zeros();
        log2 << libc::MFD_HUGE_SHIFT
    }

    /// The pool's directory under /sys/kernel/mm/hugepages.
    pub fn sysfs_dir(self) -> String {
        format!("hugepages-{}kB", self.bytes() >> 10)
    }
}

impl fmt::Display for HugePageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HugePageSize::Size2M => "2M",
            HugePageSize::Size1G => "1G",
        })
    }
}

impl std::str::FromStr for HugePageSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "2M" | "2m" => Ok(HugePageSize::Size2M),
            "1G" | "1g" => Ok(HugePageSize::Size1G),
            _ => Err(format!(
                "hugepage-size={text} is not a huge-page size of x86-64; use 2M or 1G"
            )),
        }
    }
}

/// One pool of huge pages as sysfs shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// The page size.
    pub size: HugePageSize,
    /// Pages reserved (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use (`free_hugepages`, less `resv_hugepages`: promised to mappings).
    pub free: u64,
}

/// The pool of `size` under `sysfs` (normally `/sys`), `None` when the kernel has none.
pub fn pool(sysfs: &Path, size: HugePageSize) -> Option<Pool> {
    let dir = sysfs.join("kernel/mm/hugepages").join(size.sysfs_dir());
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let total = read("nr_hugepages")?;
    let free = read("free_hugepages")?;
    let reserved = read("resv_hugepages").unwrap_or(0);
    Some(Pool {
        size,
        total,
        free: free.saturating_sub(reserved),
    })
}

/// What to do so that `bytes` of guest RAM fit the pool of `size`: `Ok` when they do, else
/// the one-line error.
pub fn check_pool(sysfs: &Path, bytes: u64, size: HugePageSize) -> Result<(), String> {
    let page = size.bytes();
    if !bytes.is_multiple_of(page) {
        return Err(format!(
            "--memory {} MiB is not a whole number of {size} huge pages; use a multiple of {size}",
            bytes >> 20
        ));
    }
    let needed = bytes / page;
    let Some(pool) = pool(sysfs, size) else {
        return Err(format!(
            "this host's kernel offers no {size} huge pages (no {}); use another hugepage-size, \
             or leave hugepages off",
            Path::new("/sys/kernel/mm/hugepages")
                .join(size.sysfs_dir())
                .display()
        ));
    };
    if pool.free >= needed {
        return Ok(());
    }
    Err(format!(
        "--memory {} MiB with hugepages=on needs {needed} free {size} huge pages and this host \
         has {} free of {}; reserve them as root: echo {} > /sys/kernel/mm/hugepages/{}/nr_hugepages",
        bytes >> 20,
        pool.free,
        pool.total,
        pool.total + (needed - pool.free),
        size.sysfs_dir()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs(
        name: &str,
        size: HugePageSize,
        total: u64,
        free: u64,
        resv: u64,
    ) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("minivmm-huge-{name}-{}", std::process::id()));
        let dir = root.join("kernel/mm/hugepages").join(size.sysfs_dir());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("nr_hugepages"), format!("{total}\n")).unwrap();
        std::fs::write(dir.join("free_hugepages"), format!("{free}\n")).unwrap();
        std::fs::write(dir.join("resv_hugepages"), format!("{resv}\n")).unwrap();
        root
    }

    #[test]
    fn sizes_parse_and_name_their_pools() {
        assert_eq!("2M".parse(), Ok(HugePageSize::Size2M));
        assert_eq!("1G".parse(), Ok(HugePageSize::Size1G));
        assert!("4K"
            .parse::<HugePageSize>()
            .unwrap_err()
            .contains("use 2M or 1G"));
        assert_eq!(HugePageSize::Size2M.sysfs_dir(), "hugepages-2048kB");
        assert_eq!(HugePageSize::Size1G.sysfs_dir(), "hugepages-1048576kB");
        assert_eq!(HugePageSize::Size2M.memfd_flag(), libc::MFD_HUGE_2MB);
        assert_eq!(HugePageSize::Size1G.memfd_flag(), libc::MFD_HUGE_1GB);
    }

    #[test]
    fn too_few_free_pages_say_how_many_to_reserve() {
        // 100 reserved, 30 free of which 10 promised: 20 usable; 3 GiB needs 1536.
        let sysfs = fake_sysfs("few", HugePageSize::Size2M, 100, 30, 10);
        let e = check_pool(&sysfs, 3 << 30, HugePageSize::Size2M).unwrap_err();
        assert!(e.contains("needs 1536 free 2M huge pages"), "{e}");
        assert!(e.contains("has 20 free of 100"), "{e}");
        assert!(
            e.contains("echo 1616 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
            "{e}"
        );
        assert!(check_pool(&sysfs, 40 << 20, HugePageSize::Size2M).is_ok());
        std::fs::remove_dir_all(sysfs).unwrap();
    }

    #[test]
    fn sizes_that_are_no_whole_number_of_pages_or_pools_that_do_not_exist_are_refused() {
        let sysfs = fake_sysfs("odd", HugePageSize::Size2M, 4096, 4096, 0);
        let e = check_pool(&sysfs, (1 << 30) + (1 << 20), HugePageSize::Size2M).unwrap_err();
        assert!(e.contains("not a whole number of 2M huge pages"), "{e}");
        let e = check_pool(&sysfs, 1 << 30, HugePageSize::Size1G).unwrap_err();
        assert!(e.contains("offers no 1G huge pages"), "{e}");
        std::fs::remove_dir_all(sysfs).unwrap();
    }
}
