//! The port-I/O and MMIO buses: address ranges mapped to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// What a guest access asked of the world outside the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The guest powered itself off.
    PowerOff,
    /// The guest asked for a reboot.
    Reboot,
    /// The guest wrote its result to the exit device: end the run with this status.
    Exit(u8),
    /// A UART's transmit-empty interrupt went off (`true`: the guest now polls the line
    /// status before each byte, so transmit writes may be queued) or on (`false`).
    SerialTxPolled(bool),
}

/// A device on a bus. `offset` is relative to the start of the range it was inserted at.
pub trait BusDevice: Send {
    /// Fill `data` with what the guest reads at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Apply a guest write at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect>;
}

/// A device shared between the bus and whoever else drives it (the event loop, say).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors inserting into a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The new range overlaps a device already there.
    #[error("bus range {0:#x}+{1:#x} overlaps another device")]
    Overlap(u64, u64),
    /// A zero-length range.
    #[error("bus range at {0:#x} is empty")]
    Empty(u64),
}

/// No device serves the address of an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no device at this address")]
pub struct Unclaimed;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self.ranges.read().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `[base, base + len)` with `device`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::Empty(base));
        }
        let end = base.checked_add(len).ok_or(Error::Overlap(base, len))?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let before = ranges.range(..end).next_back();
        if before.is_some_and(|(start, e)| start + e.len > base) {
            return Err(Error::Overlap(base, len));
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Stop serving the range that starts at `base`.
    pub fn remove(&self, base: u64) -> bool {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges.remove(&base).is_some()
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (start, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - start;
        (offset + len as u64 <= entry.len).then(|| (offset, entry.device.clone()))
    }

    /// Route a read; returns false (and leaves `data` untouched) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((offset, device)) = self.find(addr, data.len()) else {
            return false;
        };
        device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, data);
        true
    }

    /// Route a write; `Err(Unclaimed)` when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<Option<Effect>, Unclaimed> {
        let (offset, device) = self.find(addr, data.len()).ok_or(Unclaimed)?;
        let effect = device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset, data);
        Ok(effect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last write and answers reads with its offset.
    struct Probe {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
            self.last = Some((offset, data.to_vec()));
            (data == [0xff]).then_some(Effect::PowerOff)
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe { last: None }))
    }

    #[test]
    fn routes_by_offset_within_the_range() {
        let bus = Bus::new();
        let dev = probe();
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x105, &mut data));
        assert_eq!(data, [5, 5]);
        assert_eq!(bus.write(0x10f, &[7]), Ok(None));
        assert_eq!(dev.lock().unwrap().last, Some((0xf, vec![7])));
        assert_eq!(bus.write(0x100, &[0xff]), Ok(Some(Effect::PowerOff)));
    }

    #[test]
    fn misses_outside_and_across_the_end() {
        let bus = Bus::new();
        bus.insert(probe(), 0x100, 0x10).unwrap();
        let mut data = [0xaau8; 4];
        assert!(!bus.read(0xff, &mut data));
        assert!(!bus.read(0x10e, &mut data), "straddles the end");
        assert!(!bus.read(0x110, &mut data));
        assert_eq!(data, [0xaa; 4]);
        assert_eq!(bus.write(0x200, &[1]), Err(Unclaimed));
    }

    #[test]
    fn overlaps_are_refused() {
        let bus = Bus::new();
        bus.insert(probe(), 0x100, 0x10).unwrap();
        assert_eq!(bus.insert(probe(), 0x10f, 1), Err(Error::Overlap(0x10f, 1)));
        assert_eq!(
            bus.insert(probe(), 0xf0, 0x11),
            Err(Error::Overlap(0xf0, 0x11))
        );
        assert!(bus.insert(probe(), 0x110, 1).is_ok());
        assert!(bus.insert(probe(), 0xf0, 0x10).is_ok());
        assert_eq!(bus.insert(probe(), 0x0, 0), Err(Error::Empty(0)));
    }

    #[test]
    fn removed_ranges_stop_answering() {
        let bus = Bus::new();
        bus.insert(probe(), 0x100, 0x10).unwrap();
        assert!(bus.remove(0x100));
        assert!(!bus.read(0x100, &mut [0u8; 1]));
        assert!(!bus.remove(0x100));
    }
}
