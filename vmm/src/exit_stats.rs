//! Exits that reached userspace: the cost a guest pays for trapped accesses.
//!
//! Totals are always kept; `--exit-stats` also counts by address and prints the busiest
//! addresses when the VM ends — the quickest way to see what a guest spends its exits on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Most distinct addresses counted one by one; the rest share one bucket.
const MAX_ADDRESSES: usize = 4096;

/// The kind of a trapped access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// IN from an I/O port.
    PortRead,
    /// OUT to an I/O port.
    PortWrite,
    /// Load from trapped MMIO.
    MmioRead,
    /// Store to trapped MMIO.
    MmioWrite,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad` so that width and alignment in format strings apply.
        f.pad(match self {
            Access::PortRead => "port read",
            Access::PortWrite => "port write",
            Access::MmioRead => "mmio read",
            Access::MmioWrite => "mmio write",
        })
    }
}

/// One vCPU's exit counters.
#[derive(Debug, Default)]
pub struct ExitCounters {
    /// Port-I/O exits.
    pub pio: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// Accesses no device claimed.
    pub unclaimed: AtomicU64,
    by_address: Option<Mutex<HashMap<(Access, u64), u64>>>,
}

impl ExitCounters {
    /// Counters; with `by_address`, also per address.
    pub fn new(by_address: bool) -> Self {
        ExitCounters {
            by_address: by_address.then(Mutex::default),
            ..Default::default()
        }
    }

    /// Count one exit.
    pub fn record(&self, access: Access, addr: u64) {
        let total = match access {
            Access::PortRead | Access::PortWrite => &self.pio,
            Access::MmioRead | Access::MmioWrite => &self.mmio,
        };
        total.fetch_add(1, Ordering::Relaxed);
        if let Some(map) = &self.by_address {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            let key = if map.len() < MAX_ADDRESSES || map.contains_key(&(access, addr)) {
                (access, addr)
            } else {
                (access, u64::MAX)
            };
            *map.entry(key).or_default() += 1;
        }
    }

    /// (pio, mmio, unclaimed) as plain numbers.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.pio.load(Ordering::Relaxed),
            self.mmio.load(Ordering::Relaxed),
            self.unclaimed.load(Ordering::Relaxed),
        )
    }

    fn by_address(&self) -> Vec<((Access, u64), u64)> {
        self.by_address.as_ref().map_or_else(Vec::new, |map| {
            let map = map.lock().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(k, v)| (*k, *v)).collect()
        })
    }
}

/// A report over all vCPUs: totals per vCPU, then the `top` busiest addresses.
pub fn report(counters: &[ExitCounters], top: usize) -> String {
    let mut out = String::from("exit statistics\n");
    let mut merged: HashMap<(Access, u64), u64> = HashMap::new();
    for (index, c) in counters.iter().enumerate() {
        let (pio, mmio, unclaimed) = c.snapshot();
        out += &format!("  vCPU {index}: {pio} port, {mmio} mmio, {unclaimed} unclaimed\n");
        for (key, n) in c.by_address() {
            *merged.entry(key).or_default() += n;
        }
    }
    let mut busiest: Vec<_> = merged.into_iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for ((access, addr), n) in busiest.into_iter().take(top) {
        let addr = if addr == u64::MAX {
            "(others)".to_string()
        } else {
            format!("{addr:#x}")
        };
        out += &format!("  {n:>10}  {access:<10}  {addr}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_busiest_addresses() {
        let vcpu0 = ExitCounters::new(true);
        for _ in 0..3 {
            vcpu0.record(Access::PortRead, 0x3fd);
        }
        vcpu0.record(Access::MmioWrite, 0xe000_0000);
        let vcpu1 = ExitCounters::new(true);
        vcpu1.record(Access::PortRead, 0x3fd);
        assert_eq!(vcpu0.snapshot(), (3, 1, 0));
        let text = report(&[vcpu0, vcpu1], 5);
        assert!(text.contains("vCPU 0: 3 port, 1 mmio"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[3].contains("4  port read   0x3fd"), "{text}");
        assert!(lines[4].contains("1  mmio write  0xe0000000"), "{text}");
    }

    #[test]
    fn without_detail_only_totals_are_kept() {
        let c = ExitCounters::new(false);
        c.record(Access::PortWrite, 0x80);
        assert_eq!(c.snapshot(), (1, 0, 0));
        assert_eq!(report(&[c], 5).lines().count(), 2);
    }

    #[test]
    fn address_table_is_bounded() {
        let c = ExitCounters::new(true);
        for port in 0..(MAX_ADDRESSES as u64 + 10) {
            c.record(Access::PortWrite, port);
        }
        assert_eq!(c.by_address().len(), MAX_ADDRESSES + 1);
        assert!(report(&[c], 1).contains("1"));
    }
}
