//! What goes into the lab's initramfs images: busybox, kernel modules, dynamically linked
//! binaries with their libraries, and QEMU with its firmware.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cpio::{Node, Tree};
use super::{Context, Result};

/// Modules L1 loads; their dependencies are added from modules.dep.
pub const L1_MODULES: &[&str] = &[
    "kvm_amd",
    "vfio",
    "vfio_pci",
    "vfio_iommu_type1",
    "uio",
    "uio_pci_generic",
    "mdev",
];

/// Modules L2 loads to drive passed-through devices (INTx through uio, MSI-X through
/// virtio-rng).
pub const L2_MODULES: &[&str] = &["uio", "uio_pci_generic", "virtio_pci", "virtio_rng"];

/// Modules of the displays and the HD Audio function L2 drives in the `gpu-machine`
/// scenario (fbcon is built into the kernel).
pub const L2_DISPLAY_MODULES: &[&str] = &[
    "bochs",
    "virtio_gpu",
    "snd_hda_intel",
    "snd_hda_codec_generic",
];

/// Modules L2 needs to mount its root filesystem from a virtio-blk disk.
pub const L2_DISK_MODULES: &[&str] = &["virtio_blk", "ext4", "crc32c_generic"];

/// Firmware QEMU reads to boot a Linux guest on q35 with -nodefaults (found by trying).
const QEMU_FIRMWARE: &[&str] = &[
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
];

/// A tree with busybox (every applet linked, except the applet `busybox` itself, which would
/// replace the binary by a link to itself), the usual mount points, and `init` as /init.
pub fn busybox_tree(busybox: &Path, init: &Path) -> Result<Tree> {
    let mut tree = Tree::default();
    tree.copy("bin/busybox", busybox)?;
    for applet in busybox_applets(busybox)? {
        if !applet.ends_with("/busybox") {
            tree.add(&applet, Node::Symlink("/bin/busybox".into()));
        }
    }
    for dir in ["proc", "sys", "dev", "tmp", "run", "root"] {
        tree.add(dir, Node::Dir);
    }
    tree.copy("init", init)?;
    Ok(tree)
}

/// The applets' install paths, such as "usr/bin/awk".
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = run_stdout(Command::new(busybox).arg("--list-full"))?;
    Ok(out
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Adds the `wanted` modules and their dependencies from the unpacked kernel package at
/// `root` (lib/modules/VERSION/...), with a modules.dep listing just those.
pub fn add_modules(tree: &mut Tree, root: &Path, version: &str, wanted: &[&str]) -> Result<()> {
    let moddir = root.join("lib/modules").join(version);
    let dep_path = moddir.join("modules.dep");
    let deps = fs::read_to_string(&dep_path)
        .context(|| format!("cannot read {} (run tests/lab/prepare)", dep_path.display()))?;
    let mut files = BTreeSet::new();
    for name in wanted {
        let line = deps
            .lines()
            .find(|l| module_name(l) == Some(name.replace('-', "_")))
            .context(|| format!("module {name} is not in {}", dep_path.display()))?;
        for file in line.split([':', ' ']).filter(|f| !f.is_empty()) {
            files.insert(file);
        }
    }
    // Each module, dependencies included, gets its line, so modprobe can load any of them.
    let mut lines = Vec::new();
    for file in &files {
        if let Some(line) = deps.lines().find(|l| l.split(':').next() == Some(*file)) {
            lines.push(line);
        }
        let inside = format!("lib/modules/{version}/{file}");
        tree.copy(&inside, &moddir.join(file))?;
    }
    let bytes = (lines.join("\n") + "\n").into_bytes();
    let path = format!("lib/modules/{version}/modules.dep");
    tree.add(&path, Node::Data { bytes, mode: 0o644 });
    Ok(())
}

/// "kernel/arch/x86/kvm/kvm-amd.ko: ..." → "kvm_amd".
fn module_name(dep_line: &str) -> Option<String> {
    let file = dep_line.split(':').next()?;
    let base = Path::new(file).file_name()?.to_str()?;
    Some(base.strip_suffix(".ko")?.replace('-', "_"))
}

/// Adds a dynamically linked binary at `dest` and the shared libraries `ldd` lists, each at
/// the path ldd names.
pub fn add_dynamic(tree: &mut Tree, binary: &Path, dest: &str) -> Result<()> {
    tree.copy(dest, binary)?;
    for lib in shared_libraries(binary)? {
        tree.copy_same(&lib)?;
    }
    Ok(())
}

/// The libraries ldd lists; none for a static binary or a script.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let ldd = Command::new("ldd").arg(binary).output();
    let ldd = ldd.context(|| format!("cannot run ldd {}", binary.display()))?;
    let out = String::from_utf8_lossy(&ldd.stdout);
    let err = String::from_utf8_lossy(&ldd.stderr);
    if err.contains("not a dynamic executable") || out.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !ldd.status.success() {
        return Err(format!("ldd {} failed: {}", binary.display(), err.trim()));
    }
    let mut libs = Vec::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [name, "=>", "not", "found", ..] => {
                return Err(format!("ldd {}: {name} not found", binary.display()))
            }
            [_, "=>", path, ..] if path.starts_with('/') => libs.push(PathBuf::from(path)),
            [path, ..] if path.starts_with('/') => libs.push(PathBuf::from(path)),
            _ => {} // linux-vdso.so.1 and the like: provided by the kernel
        }
    }
    Ok(libs)
}

/// Adds the host's qemu-system-x86_64, its libraries and the firmware it reads, and strace.
pub fn add_qemu(tree: &mut Tree) -> Result<()> {
    let qemu = find_in_path("qemu-system-x86_64")
        .context(|| "qemu-system-x86_64 is not installed (run tests/lab/prepare)".to_string())?;
    add_dynamic(tree, &qemu, "usr/bin/qemu-system-x86_64")?;
    for firmware in QEMU_FIRMWARE {
        tree.copy_same(Path::new(firmware))?;
    }
    // strace times the VMMs' DMA-map ioctls in the passthrough benchmark.
    let strace = find_in_path("strace")
        .context(|| "strace is not installed (run tests/lab/prepare)".to_string())?;
    add_dynamic(tree, &strace, "usr/bin/strace")
}

/// Adds the host's lspci (pciutils), its libraries and the PCI ID database it names devices
/// from.
pub fn add_lspci(tree: &mut Tree) -> Result<()> {
    let lspci = find_in_path("lspci")
        .or_else(|| Some(PathBuf::from("/usr/bin/lspci")).filter(|p| p.is_file()))
        .context(|| "lspci is not installed (run tests/lab/prepare)".to_string())?;
    add_dynamic(tree, &lspci, "usr/bin/lspci")?;
    tree.copy_same(Path::new("/usr/share/misc/pci.ids"))
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn run_stdout(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd.output().context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{what} failed ({}): {}", out.status, err.trim()));
    }
    String::from_utf8(out.stdout).context(|| format!("{what} printed non-UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_use_underscores() {
        let line = "kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko";
        assert_eq!(module_name(line).as_deref(), Some("kvm_amd"));
    }
}
