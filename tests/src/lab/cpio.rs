//! A file tree for an initramfs, written as a newc cpio archive and gzipped.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Context, Result};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// One entry of the tree.
#[derive(Debug, Clone)]
pub enum Node {
    Dir,
    /// A regular file whose content is read from the host when the archive is written.
    File {
        source: PathBuf,
        mode: u32,
    },
    Data {
        bytes: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
}

/// Paths are relative to the archive's root ("bin/busybox"); parents are added as directories.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_matches('/');
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.and_then(Path::to_str).filter(|d| !d.is_empty()) {
            self.nodes.entry(dir.to_string()).or_insert(Node::Dir);
            parent = Path::new(dir).parent();
        }
        self.nodes.insert(path.to_string(), node);
    }

    /// Adds the host file `source` (symlinks followed) at `path`, keeping its permissions.
    pub fn copy(&mut self, path: &str, source: &Path) -> Result<()> {
        let meta = fs::metadata(source).context(|| format!("cannot read {}", source.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        self.add(
            path,
            Node::File {
                source: source.to_path_buf(),
                mode,
            },
        );
        Ok(())
    }

    /// Writes the tree out as a directory `dest` (emptied first), for tools that take a
    /// directory, such as `mke2fs -d`.
    pub fn write_dir(&self, dest: &Path) -> Result<()> {
        if dest.exists() {
            fs::remove_dir_all(dest).context(|| format!("cannot empty {}", dest.display()))?;
        }
        fs::create_dir_all(dest).context(|| format!("cannot create {}", dest.display()))?;
        for (path, node) in &self.nodes {
            let at = dest.join(path);
            let done = match node {
                Node::Dir => fs::create_dir_all(&at),
                Node::File { source, mode } => fs::copy(source, &at)
                    .and_then(|_| fs::set_permissions(&at, fs::Permissions::from_mode(*mode))),
                Node::Data { bytes, mode } => fs::write(&at, bytes)
                    .and_then(|()| fs::set_permissions(&at, fs::Permissions::from_mode(*mode))),
                Node::Symlink(target) => std::os::unix::fs::symlink(target, &at),
            };
            done.context(|| format!("cannot write {}", at.display()))?;
        }
        Ok(())
    }

    /// Adds the host file at the same absolute path inside the tree.
    pub fn copy_same(&mut self, source: &Path) -> Result<()> {
        let path = source
            .to_str()
            .context(|| format!("non-UTF-8 path {}", source.display()))?;
        self.copy(path, source)
    }

    /// Writes the tree as a newc archive (parents sort before their children in a BTreeMap).
    pub fn write_newc(&self, out: &mut impl Write) -> io::Result<()> {
        for (ino, (path, node)) in (1u32..).zip(&self.nodes) {
            match node {
                Node::Dir => write_entry(out, ino, path, S_IFDIR | 0o755, &[])?,
                Node::Data { bytes, mode } => write_entry(out, ino, path, S_IFREG | mode, bytes)?,
                Node::Symlink(target) => {
                    write_entry(out, ino, path, S_IFLNK | 0o777, target.as_bytes())?
                }
                Node::File { source, mode } => {
                    let bytes = fs::read(source).map_err(|e| {
                        io::Error::new(e.kind(), format!("{}: {e}", source.display()))
                    })?;
                    write_entry(out, ino, path, S_IFREG | mode, &bytes)?
                }
            }
        }
        write_entry(out, 0, "TRAILER!!!", 0, &[])
    }

    /// Writes the tree to `dest` as a gzipped newc archive; returns its size in bytes.
    pub fn write_gz(&self, dest: &Path) -> Result<u64> {
        let file = File::create(dest).context(|| format!("cannot create {}", dest.display()))?;
        let mut gzip = Command::new("gzip")
            .args(["-6", "-n", "-c"])
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .context(|| "cannot run gzip".to_string())?;
        let written = match gzip.stdin.take() {
            Some(stdin) => {
                let mut out = io::BufWriter::new(stdin);
                self.write_newc(&mut out).and_then(|()| out.flush())
            }
            None => Err(io::Error::other("gzip has no stdin")),
        };
        let status = gzip.wait().context(|| "gzip did not finish".to_string())?;
        written.context(|| format!("cannot write {}", dest.display()))?;
        if !status.success() {
            return Err(format!("gzip failed ({status}) writing {}", dest.display()));
        }
        Ok(fs::metadata(dest).map(|m| m.len()).unwrap_or(0))
    }
}

/// One newc record: 110-byte header, name, NUL, padding to 4; data, padding to 4.
fn write_entry(
    out: &mut impl Write,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
) -> io::Result<()> {
    let size =
        u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{name}: too big")))?;
    let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
    let name_size = name.len() + 1;
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        0,
        0,
        name_size as u32,
        0,
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, header.len() + name_size)?;
    out.write_all(data)?;
    pad(out, data.len())
}

fn pad(out: &mut impl Write, len: usize) -> io::Result<()> {
    out.write_all([0u8; 3].get(..(4 - len % 4) % 4).unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn newc_records_are_aligned_and_parents_come_first() {
        let mut tree = Tree::default();
        tree.add(
            "a/b/c",
            Node::Data {
                bytes: b"hello".to_vec(),
                mode: 0o644,
            },
        );
        tree.add("a/link", Node::Symlink("b/c".into()));
        let mut out = Vec::new();
        tree.write_newc(&mut out).expect("write to a Vec");
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let names: Vec<usize> = ["a\0", "a/b\0", "a/b/c\0", "a/link\0", "TRAILER!!!\0"]
            .iter()
            .map(|n| text.find(n).expect("every name is in the archive"))
            .collect();
        assert!(names.is_sorted(), "order: {names:?}");
    }
}
