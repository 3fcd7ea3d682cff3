//! The kernel loader on arbitrary kernel files, through the VMM's public API: the bzImage
//! setup header, the payload decoded on the host (xz on two threads, xz through liblzma's
//! stream decoder, gzip) and streamed into guest memory, the fallbacks to linux-loader's
//! bzImage and ELF loaders, the preflight check, and then the rest of the boot recipe
//! (command line, initramfs placement, ACPI tables, e820, zero page) for a kernel that
//! loaded.
//!
//! Input: the kernel file. The guest has 16 MiB of RAM, so nothing loads larger than that;
//! `fuzz/run` also bounds the file size (`-max_len`).
//!
//! Checked: no panic; a kernel that loads passes the preflight check, and its command line
//! is in guest memory after loading.

#![no_main]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use minivmm::loader::{self, LoadConfig};
use minivmm::memory;
use minivmm_firmware::layout::{GuestLayout, CMDLINE_START};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM.
const RAM: u64 = 16 << 20;
const CMDLINE: &str = "console=ttyS0 panic=-1";

/// A file of this process's own for the kernel (the loader reads a path).
fn kernel_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("minivmm-fuzz-kernel-{}", std::process::id()))
    })
}

/// A 64 KiB initramfs, placed below whatever the kernel needs.
fn initramfs_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("minivmm-fuzz-initramfs-{}", std::process::id()));
        std::fs::write(&path, vec![0x07; 64 << 10]).unwrap();
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let path = kernel_path();
    std::fs::write(path, data).unwrap();
    let memory = memory::from_ranges(&[(0, RAM)]).unwrap();
    let file = loader::BootFile::open("kernel", path).unwrap();
    let kernel = loader::load_kernel(&memory, &file, &AtomicBool::new(false));
    let initramfs = initramfs_path();
    let preflight = loader::preflight(path, Some(initramfs), CMDLINE);
    if minivmm_fuzz::debug() {
        eprintln!("{kernel:?}\npreflight: {preflight:?}");
    }
    let Ok(kernel) = kernel else {
        return;
    };
    if let Err(e) = &preflight {
        assert!(
            matches!(e, loader::Error::CmdlineTooLong(..)),
            "a kernel that loads fails preflight: {e}"
        );
        return;
    }
    let guest = GuestLayout::new(RAM, 46).unwrap();
    let mut initramfs_file = loader::BootFile::open("initramfs", initramfs).unwrap();
    let mut config = LoadConfig {
        initramfs: Some(&mut initramfs_file),
        cmdline: CMDLINE,
        cpus: 1,
        vbios: &[],
        vga_text: false,
    };
    if loader::load(&memory, &guest, &mut config, kernel).is_ok() {
        let mut text = [0u8; CMDLINE.len() + 1];
        memory
            .read_slice(&mut text, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&text[..CMDLINE.len()], CMDLINE.as_bytes());
        assert_eq!(text[CMDLINE.len()], 0);
    }
});
