//! Firmware's resource assignment, done by minivmm before the guest starts: an address for
//! every BAR and ROM BAR of the passed-through functions, and the windows of every root
//! port they sit behind.
//!
//! There is no firmware to do it, and Linux keeps what firmware left when it is valid, so
//! this is what the guest finds. The rules are the ones PCI firmware follows:
//! - three kinds of resource: I/O ports; memory below 4 GiB (non-prefetchable BARs, 32-bit
//!   prefetchable ones, ROM BARs); and 64-bit prefetchable memory (GPU apertures), which
//!   goes above RAM, below the guest's physical address limit;
//! - every BAR naturally aligned (memory BARs at least a page, so each can be a KVM slot);
//! - behind a root port, a slot's resources of one kind are packed into one window
//!   (largest first, so packing leaves no gaps), rounded to the bridge's granule (1 MiB for
//!   memory, 4 KiB for I/O) and aligned to its largest BAR;
//! - windows and the BARs of bus-0 slots are then placed in the root bus's windows,
//!   largest alignment first.

use std::ops::Range;

use vm_allocator::{AddressAllocator, AllocPolicy};

use super::bar::{Bar, BarKind, MIN_MEM_BAR};
use super::root_port::{BridgeWindows, IO_GRANULE, MEMORY_GRANULE};

/// The smallest 64-bit prefetchable window the root bus offers, when the address width
/// allows it (room for the guest to move BARs, as firmware leaves).
pub const MIN_PREFETCHABLE_WINDOW: u64 = 64 << 30;

/// What one function needs placed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionNeeds {
    /// Its BARs.
    pub bars: Vec<Bar>,
    /// Its ROM BAR's size (a power of two of at least 2 KiB), 0 for none.
    pub rom: u64,
}

/// One guest slot: a device's functions, on the root bus or behind a root port of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotNeeds {
    /// A name for errors (the host device).
    pub name: String,
    /// Behind a root port (else on bus 0).
    pub behind_port: bool,
    /// Its functions, in order.
    pub functions: Vec<FunctionNeeds>,
}

/// The root bus's windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootWindows {
    /// I/O ports.
    pub io: Range<u64>,
    /// Memory below 4 GiB.
    pub memory: Range<u64>,
    /// Where 64-bit prefetchable memory starts (above RAM).
    pub prefetchable_start: u64,
    /// The guest's physical address width: nothing may reach `1 << address_bits`.
    pub address_bits: u8,
}

impl RootWindows {
    /// First address past the guest's physical address space.
    pub fn address_limit(&self) -> u64 {
        1u64.checked_shl(u32::from(self.address_bits))
            .unwrap_or(u64::MAX)
    }
}

/// Where one function's BARs and ROM go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Guest address by BAR index.
    pub bars: Vec<(u8, u64)>,
    /// The ROM BAR's address.
    pub rom: Option<u64>,
}

impl Placement {
    /// The address of BAR `index`.
    pub fn bar(&self, index: u8) -> Option<u64> {
        self.bars.iter().find(|b| b.0 == index).map(|b| b.1)
    }
}

/// Where one slot's resources go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotPlacement {
    /// Its root port's windows (`None` on bus 0).
    pub windows: Option<BridgeWindows>,
    /// Per function, in the order of [`SlotNeeds::functions`].
    pub functions: Vec<Placement>,
}

/// The whole assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Per slot, in the order given.
    pub slots: Vec<SlotPlacement>,
    /// The root bus's 64-bit prefetchable window (`None` when the address width leaves no
    /// room above RAM).
    pub prefetchable: Option<Range<u64>>,
}

/// Why the resources do not fit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A 64-bit prefetchable BAR that does not fit below the address limit.
    #[error("{device}: {what} ({}) does not fit below the guest's physical address limit of {} ({bits} address bits, the host's) once RAM and the other BARs are placed: use less --memory or pass fewer devices", human(*size), human(*limit))]
    AboveLimit {
        /// The host device.
        device: String,
        /// "BAR n".
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
        /// The address width.
        bits: u8,
    },
    /// A BAR that does not fit in a window below 4 GiB.
    #[error("{device}: {what} ({}) does not fit in the guest's {window} window ({} in all) with the other devices' BARs: pass fewer devices", human(*size), human(*window_size))]
    NoRoom {
        /// The host device.
        device: String,
        /// "BAR n" or "ROM".
        what: String,
        /// Its size.
        size: u64,
        /// "32-bit PCI memory" or "PCI I/O".
        window: &'static str,
        /// The window's size.
        window_size: u64,
    },
}

/// A size as people write it: "8 GiB", "256 MiB", "4 KiB", "256 bytes".
pub fn human(size: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if size >= 1 << shift && size.is_multiple_of(1 << shift) {
            return format!("{} {unit}", size >> shift);
        }
    }
    format!("{size} bytes")
}

/// The three kinds of resource, each with its own windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Io,
    Memory,
    Prefetchable,
}

const KINDS: [Kind; 3] = [Kind::Io, Kind::Memory, Kind::Prefetchable];

/// A BAR or ROM of one function of one slot.
#[derive(Clone, Copy, Debug)]
struct Item {
    slot: usize,
    function: usize,
    /// BAR index, or `None` for the ROM.
    bar: Option<u8>,
    kind: Kind,
    /// Size as placed (memory at least a page).
    size: u64,
}

impl Item {
    fn what(&self) -> String {
        match self.bar {
            Some(index) => format!("BAR {index}"),
            None => "its ROM".to_string(),
        }
    }
}

/// Something to place in a root window: one item (bus 0), or a port's window of one kind.
#[derive(Clone, Debug)]
struct Request {
    kind: Kind,
    size: u64,
    align: u64,
    /// The items, with their offsets inside the request.
    items: Vec<(Item, u64)>,
    /// A port window (else one BAR on bus 0).
    window_of: Option<usize>,
}

/// Place every resource of `slots` in `root`.
pub fn assign(slots: &[SlotNeeds], root: &RootWindows) -> Result<Plan, Error> {
    let mut plan = Plan {
        slots: slots
            .iter()
            .map(|s| SlotPlacement {
                windows: s.behind_port.then(BridgeWindows::default),
                functions: vec![Placement::default(); s.functions.len()],
            })
            .collect(),
        prefetchable: None,
    };
    let requests = requests(slots);
    let limit = root.address_limit();
    let prefetchable_end = limit.max(root.prefetchable_start);
    let mut highest = root.prefetchable_start;
    for kind in KINDS {
        let range = match kind {
            Kind::Io => root.io.clone(),
            Kind::Memory => root.memory.clone(),
            Kind::Prefetchable => root.prefetchable_start..prefetchable_end,
        };
        let mut allocator = allocator(&range);
        let mut of_kind: Vec<&Request> = requests.iter().filter(|r| r.kind == kind).collect();
        // Largest alignment first: nothing is lost to padding between them.
        of_kind.sort_by(|a, b| b.align.cmp(&a.align).then(b.size.cmp(&a.size)));
        for request in of_kind {
            let start = allocator
                .as_mut()
                .and_then(|a| {
                    a.allocate(request.size, request.align, AllocPolicy::FirstMatch)
                        .ok()
                })
                .map(|r| r.start())
                .ok_or_else(|| too_big(request, slots, root, &range))?;
            highest = highest.max(start + request.size);
            record(&mut plan, request, start);
        }
    }
    if root.prefetchable_start < limit {
        let end = highest
            .max(
                root.prefetchable_start
                    .saturating_add(MIN_PREFETCHABLE_WINDOW),
            )
            .min(limit);
        plan.prefetchable = Some(root.prefetchable_start..end);
    }
    Ok(plan)
}

fn allocator(range: &Range<u64>) -> Option<AddressAllocator> {
    (range.end > range.start)
        .then(|| AddressAllocator::new(range.start, range.end - range.start).ok())
        .flatten()
}

/// The requests for `slots`: each bus-0 item alone, each port's items per kind as a window.
fn requests(slots: &[SlotNeeds]) -> Vec<Request> {
    let mut requests = Vec::new();
    for (s, slot) in slots.iter().enumerate() {
        let items = items(s, slot);
        if !slot.behind_port {
            requests.extend(items.into_iter().map(|item| Request {
                kind: item.kind,
                size: item.size,
                align: item.size,
                items: vec![(item, 0)],
                window_of: None,
            }));
            continue;
        }
        for kind in KINDS {
            let mut of_kind: Vec<Item> = items.iter().copied().filter(|i| i.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            // Largest first: each item's offset is then a multiple of its (power-of-two) size.
            of_kind.sort_by_key(|i| std::cmp::Reverse(i.size));
            let granule = if kind == Kind::Io {
                IO_GRANULE
            } else {
                MEMORY_GRANULE
            };
            let mut offset: u64 = 0;
            let mut placed = Vec::new();
            for item in &of_kind {
                placed.push((*item, offset));
                // A window past the end of the address space fits nowhere: saturating
                // makes it a request no allocator can satisfy, which names the largest BAR.
                offset = offset.saturating_add(item.size);
            }
            let largest = of_kind.first().map_or(granule, |i| i.size);
            requests.push(Request {
                kind,
                size: offset.checked_next_multiple_of(granule).unwrap_or(u64::MAX),
                align: largest.max(granule),
                items: placed,
                window_of: Some(s),
            });
        }
    }
    requests
}

/// The BARs and ROM of every function of slot `s`.
fn items(s: usize, slot: &SlotNeeds) -> Vec<Item> {
    let mut items = Vec::new();
    for (f, function) in slot.functions.iter().enumerate() {
        for bar in &function.bars {
            let kind = kind_of(bar);
            let size = if kind == Kind::Io {
                bar.size
            } else {
                bar.size.max(MIN_MEM_BAR)
            };
            items.push(Item {
                slot: s,
                function: f,
                bar: Some(bar.index),
                kind,
                size,
            });
        }
        if function.rom != 0 {
            items.push(Item {
                slot: s,
                function: f,
                bar: None,
                kind: Kind::Memory,
                size: function.rom.max(MIN_MEM_BAR),
            });
        }
    }
    items
}

/// 64-bit prefetchable BARs go above RAM; every other memory BAR (and 64-bit
/// non-prefetchable ones, which bridges cannot forward above 4 GiB) below.
fn kind_of(bar: &Bar) -> Kind {
    match bar.kind {
        BarKind::Io => Kind::Io,
        BarKind::Mem64 if bar.prefetchable => Kind::Prefetchable,
        _ => Kind::Memory,
    }
}

fn record(plan: &mut Plan, request: &Request, start: u64) {
    for (item, offset) in &request.items {
        let Some(function) = plan
            .slots
            .get_mut(item.slot)
            .and_then(|s| s.functions.get_mut(item.function))
        else {
            continue;
        };
        match item.bar {
            Some(index) => function.bars.push((index, start + offset)),
            None => function.rom = Some(start + offset),
        }
    }
    let Some(windows) = request
        .window_of
        .and_then(|s| plan.slots.get_mut(s))
        .and_then(|s| s.windows.as_mut())
    else {
        return;
    };
    let range = Some(start..start + request.size);
    match request.kind {
        Kind::Io => windows.io = range,
        Kind::Memory => windows.memory = range,
        Kind::Prefetchable => windows.prefetchable = range,
    }
}

/// The error for a request that found no room: it names the request's largest item.
fn too_big(
    request: &Request,
    slots: &[SlotNeeds],
    root: &RootWindows,
    range: &Range<u64>,
) -> Error {
    let item = request.items.first().map(|(item, _)| *item);
    let device = item
        .and_then(|i| slots.get(i.slot))
        .map_or_else(String::new, |s| s.name.clone());
    let what = item.map_or_else(String::new, |i| i.what());
    let size = item.map_or(request.size, |i| i.size);
    match request.kind {
        Kind::Prefetchable => Error::AboveLimit {
            device,
            what,
            size,
            limit: root.address_limit(),
            bits: root.address_bits,
        },
        kind => Error::NoRoom {
            device,
            what,
            size,
            window: if kind == Kind::Io {
                "PCI I/O"
            } else {
                "32-bit PCI memory"
            },
            window_size: range.end.saturating_sub(range.start),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(index: u8, kind: BarKind, prefetchable: bool, size: u64) -> Bar {
        Bar {
            index,
            kind,
            prefetchable,
            size,
        }
    }

    /// A GPU: 256 MiB 64-bit prefetchable BAR 0, 2 MiB BAR 2 (64-bit, non-prefetchable),
    /// 256 I/O ports at BAR 4, 256 KiB BAR 5, a 128 KiB ROM; and its HDMI audio function
    /// with one 16 KiB BAR.
    fn gpu(name: &str, behind_port: bool, aperture: u64) -> SlotNeeds {
        SlotNeeds {
            name: name.into(),
            behind_port,
            functions: vec![
                FunctionNeeds {
                    bars: vec![
                        bar(0, BarKind::Mem64, true, aperture),
                        bar(2, BarKind::Mem64, false, 2 << 20),
                        bar(4, BarKind::Io, false, 256),
                        bar(5, BarKind::Mem32, false, 256 << 10),
                    ],
                    rom: 128 << 10,
                },
                FunctionNeeds {
                    bars: vec![bar(0, BarKind::Mem32, false, 16 << 10)],
                    rom: 0,
                },
            ],
        }
    }

    fn root(bits: u8) -> RootWindows {
        RootWindows {
            io: 0xc000..0x1_0000,
            memory: 0xc000_0000..0xe000_0000,
            prefetchable_start: 1 << 32,
            address_bits: bits,
        }
    }

    #[test]
    fn a_ports_window_holds_its_bars_packed_largest_first_and_aligned() {
        let plan = assign(&[gpu("gpu", true, 256 << 20)], &root(39)).unwrap();
        let slot = &plan.slots[0];
        let windows = slot.windows.clone().unwrap();
        // Memory: 2 MiB + 256 KiB + 128 KiB ROM + 16 KiB, rounded to 1 MiB granules: 3 MiB,
        // aligned to the largest BAR (2 MiB).
        let memory = windows.memory.unwrap();
        assert_eq!(memory.end - memory.start, 3 << 20);
        assert_eq!(memory.start % (2 << 20), 0);
        let gpu = &slot.functions[0];
        assert_eq!(gpu.bar(2), Some(memory.start), "largest first");
        assert_eq!(gpu.bar(5), Some(memory.start + (2 << 20)));
        assert_eq!(gpu.rom, Some(memory.start + (2 << 20) + (256 << 10)));
        assert_eq!(
            slot.functions[1].bar(0),
            Some(memory.start + (2 << 20) + (384 << 10))
        );
        // The aperture: 64-bit window above RAM, naturally aligned.
        let prefetchable = windows.prefetchable.unwrap();
        assert_eq!(prefetchable, (1 << 32)..(1 << 32) + (256 << 20));
        assert_eq!(gpu.bar(0), Some(1 << 32));
        // I/O: one 4 KiB granule.
        assert_eq!(windows.io.unwrap(), 0xc000..0xd000);
        assert_eq!(gpu.bar(4), Some(0xc000));
    }

    #[test]
    fn windows_of_several_ports_do_not_overlap_and_large_bars_stay_aligned() {
        let slots = [
            gpu("small", true, 256 << 20),
            gpu("large", true, 16 << 30),
            gpu("bus0", false, 8 << 30),
        ];
        let plan = assign(&slots, &root(46)).unwrap();
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for slot in &plan.slots[..2] {
            let windows = slot.windows.clone().unwrap();
            ranges.extend(
                [windows.io, windows.memory, windows.prefetchable]
                    .into_iter()
                    .flatten(),
            );
        }
        for (function, needs) in plan.slots[2].functions.iter().zip(&slots[2].functions) {
            for (index, address) in &function.bars {
                let size = needs.bars.iter().find(|b| b.index == *index).unwrap().size;
                assert_eq!(address % size.max(MIN_MEM_BAR), 0);
                ranges.push(*address..address + size.max(MIN_MEM_BAR));
            }
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                assert!(
                    a.end <= b.start || b.end <= a.start,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
        let large = plan.slots[1].functions[0].bar(0).unwrap();
        assert_eq!(large % (16 << 30), 0);
        let window = plan.prefetchable.unwrap();
        assert!(window.start == 1 << 32 && window.end >= large + (16 << 30));
    }

    #[test]
    fn an_8_gib_bar_fits_a_39_bit_guest_and_a_32_gib_one_does_not_fit_35_bits() {
        let plan = assign(&[gpu("gpu", true, 8 << 30)], &root(39)).unwrap();
        assert_eq!(plan.slots[0].functions[0].bar(0), Some(8 << 30));
        let window = plan.prefetchable.unwrap();
        assert!(window.end <= 1 << 39);
        assert!(
            assign(&[gpu("gpu", true, 32 << 30)], &root(36)).is_ok(),
            "32-64 GiB"
        );
        let error = assign(&[gpu("0000:01:00.0", true, 32 << 30)], &root(35)).unwrap_err();
        assert_eq!(
            error,
            Error::AboveLimit {
                device: "0000:01:00.0".into(),
                what: "BAR 0".into(),
                size: 32 << 30,
                limit: 32 << 30,
                bits: 35,
            }
        );
        let text = error.to_string();
        assert!(text.contains("BAR 0 (32 GiB)") && text.contains("32 GiB (35 address bits"));
    }

    #[test]
    fn the_root_window_is_at_least_64_gib_but_never_past_the_limit() {
        let plan = assign(&[gpu("gpu", false, 256 << 20)], &root(39)).unwrap();
        assert_eq!(plan.prefetchable, Some((1 << 32)..(1 << 32) + (64 << 30)));
        let plan = assign(&[gpu("gpu", false, 256 << 20)], &root(36)).unwrap();
        assert_eq!(plan.prefetchable, Some((1 << 32)..(64 << 30)));
        let plan = assign(&[], &root(32)).unwrap();
        assert_eq!(plan.prefetchable, None, "no room above 4 GiB at all");
    }

    #[test]
    fn too_many_32_bit_bars_name_the_one_that_did_not_fit() {
        let big = SlotNeeds {
            name: "0000:03:00.0".into(),
            behind_port: false,
            functions: vec![FunctionNeeds {
                bars: vec![bar(1, BarKind::Mem32, false, 1 << 30)],
                rom: 0,
            }],
        };
        let error = assign(&[big], &root(39)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "0000:03:00.0: BAR 1 (1 GiB) does not fit in the guest's 32-bit PCI memory window (512 MiB in all) with the other devices' BARs: pass fewer devices"
        );
    }

    #[test]
    fn a_window_larger_than_the_address_space_is_refused() {
        // Found by the passthrough_config fuzz target: BARs behind one port whose sizes add
        // up past 2^64 overflowed the window size instead of failing to fit.
        let huge = |index, kind| bar(index, kind, true, 1 << 63);
        for kind in [BarKind::Io, BarKind::Mem32, BarKind::Mem64] {
            let slot = SlotNeeds {
                name: "0000:03:00.0".into(),
                behind_port: true,
                functions: vec![FunctionNeeds {
                    bars: vec![huge(0, kind), huge(2, kind), huge(4, kind)],
                    rom: 0,
                }],
            };
            let error = assign(&[slot], &root(64)).unwrap_err();
            assert!(
                error.to_string().contains("BAR 0 (8388608 TiB)"),
                "{kind:?}: {error}"
            );
        }
    }

    #[test]
    fn bus_0_slots_get_no_windows_and_a_slot_without_io_gets_no_io_window() {
        let mut needs = gpu("gpu", true, 256 << 20);
        needs.functions[0].bars.retain(|b| b.kind != BarKind::Io);
        let plan = assign(&[needs, gpu("other", false, 1 << 30)], &root(39)).unwrap();
        assert_eq!(plan.slots[0].windows.clone().unwrap().io, None);
        assert_eq!(plan.slots[1].windows, None);
        assert!(plan.slots[1].functions[0].bar(4).is_some());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(8 << 30), "8 GiB");
        assert_eq!(human(256 << 20), "256 MiB");
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(256), "256 bytes");
        assert_eq!(human(3 << 19), "1536 KiB");
    }
}
