//! The guest's view of a host PCI function's configuration space.
//!
//! Identity, command/status and capabilities the guest may drive are read from and written
//! to the host function. BARs and the ROM BAR are always answered from the shadow (the
//! guest places them in its own address map), and capabilities the guest must not drive
//! (Resizable BAR) are unlinked in the shadow. The host side sits behind [`HostFunction`],
//! so all of this is tested against a fake; the real one wraps a VFIO device.

use super::bar::{self, Bar, BarWindows, BAR0, BAR_COUNT};
use super::capability::{self, ext_id};
use super::config_space::{ConfigSpace, CONFIG_DWORDS};
use super::PciFunction;

/// Expansion ROM BAR of a type-0 header.
const ROM_BAR: u16 = 0x30;
/// Command register.
const COMMAND: u16 = 0x04;
/// Command bits: I/O space and memory space decoding.
const COMMAND_IO: u8 = 0x1;
const COMMAND_MEMORY: u8 = 0x2;
/// Extended configuration space size.
const CONFIG_BYTES: usize = CONFIG_DWORDS * 4;

/// What minivmm needs from the host function.
pub trait HostFunction: Send {
    /// Read the host function's configuration space (1, 2 or 4 bytes, within a dword).
    fn read_config(&self, offset: u16, data: &mut [u8]);
    /// Write the host function's configuration space.
    fn write_config(&self, offset: u16, data: &[u8]);
    /// Size of BAR `index`'s region, 0 when the BAR is unused.
    fn region_size(&self, index: u8) -> u64;
}

/// A BAR the guest moved: the VMM moves its memory slot or trap with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    /// The BAR.
    pub bar: Bar,
    /// Guest address before the write.
    pub from: u64,
    /// Guest address after it.
    pub to: u64,
}

/// A host function as the guest sees it.
pub struct PassthroughFunction<H: HostFunction> {
    host: H,
    shadow: ConfigSpace,
    /// Dwords answered from the shadow instead of the host.
    emulated: Vec<bool>,
    /// BARs and the guest addresses the VMM maps them at.
    bars: Vec<(Bar, u64)>,
    moves: Vec<BarMove>,
    /// The command register's decode bits, snooped on their way to the host.
    command: u8,
}

impl<H: HostFunction> std::fmt::Debug for PassthroughFunction<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughFunction")
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl<H: HostFunction> PassthroughFunction<H> {
    /// Read `host`'s configuration space, place its BARs in `windows` and build the shadow.
    pub fn new(host: H, windows: &mut BarWindows) -> Result<Self, bar::Error> {
        let config = read_all(&host);
        let mut function = PassthroughFunction {
            host,
            shadow: ConfigSpace::new(),
            emulated: vec![false; CONFIG_DWORDS],
            bars: Vec::new(),
            moves: Vec::new(),
            command: config.get(usize::from(COMMAND)).copied().unwrap_or(0),
        };
        function.virtualize_bars(&config, windows)?;
        // No ROM until one is served from an image (issue #4): the ROM BAR reads 0.
        function.emulate(ROM_BAR, 0, 0);
        function.hide_extended(&config, ext_id::RESIZABLE_BAR);
        Ok(function)
    }

    /// BARs and the guest addresses they are at now.
    pub fn bars(&self) -> &[(Bar, u64)] {
        &self.bars
    }

    /// BAR moves since the last call. A BAR moves when the guest changes its address while
    /// decoding is on, or turns decoding on with a new address; sizing probes, which Linux
    /// does with decoding off, are never moves.
    pub fn take_moves(&mut self) -> Vec<BarMove> {
        std::mem::take(&mut self.moves)
    }

    fn emulate(&mut self, offset: u16, value: u32, writable: u32) {
        self.shadow.init_dword(offset, value, writable);
        if let Some(flag) = self.emulated.get_mut(usize::from(offset / 4)) {
            *flag = true;
        }
    }

    fn is_emulated(&self, offset: u16) -> bool {
        self.emulated
            .get(usize::from(offset / 4))
            .copied()
            .unwrap_or(true)
    }

    fn virtualize_bars(
        &mut self,
        config: &[u8],
        windows: &mut BarWindows,
    ) -> Result<(), bar::Error> {
        let mut registers = [0u32; BAR_COUNT as usize];
        for (i, register) in registers.iter_mut().enumerate() {
            *register = dword(config, usize::from(BAR0) + 4 * i);
        }
        // Every BAR register is the shadow's: unused ones read 0 and ignore writes.
        for i in 0..u16::from(BAR_COUNT) {
            self.emulate(BAR0 + 4 * i, 0, 0);
        }
        for bar in bar::decode_bars(registers, |i| self.host.region_size(i))? {
            let address = bar::place(&bar, windows)?;
            bar::init_bar(&mut self.shadow, &bar, address);
            self.bars.push((bar, address));
        }
        Ok(())
    }

    /// Unlink every extended capability with id `hidden` from the guest's list.
    fn hide_extended(&mut self, config: &[u8], hidden: u16) {
        let caps = capability::extended(config);
        for (i, cap) in caps.iter().enumerate() {
            if cap.id != hidden {
                continue;
            }
            let offset = usize::from(cap.offset);
            let next = dword(config, offset) & 0xfff0_0000;
            if i == 0 {
                // The list must start at 0x100: leave a null capability pointing on.
                self.emulate(cap.offset, next, 0);
            } else if let Some(previous) = caps.get(i - 1) {
                let header = dword(config, usize::from(previous.offset)) & 0x000f_ffff;
                self.emulate(previous.offset, header | next, 0);
            }
        }
    }
}

impl<H: HostFunction> PassthroughFunction<H> {
    /// Record a move for every decoded BAR whose shadow address differs from where it is
    /// mapped.
    fn sync_bars(&mut self) {
        for (bar, mapped) in &mut self.bars {
            let decode = match bar.kind {
                bar::BarKind::Io => COMMAND_IO,
                _ => COMMAND_MEMORY,
            };
            if self.command & decode == 0 {
                continue;
            }
            let now = bar::bar_address(&self.shadow, bar);
            if now != *mapped {
                self.moves.push(BarMove {
                    bar: *bar,
                    from: *mapped,
                    to: now,
                });
                *mapped = now;
            }
        }
    }
}

/// The host function's whole configuration space, dword by dword.
fn read_all(host: &impl HostFunction) -> Vec<u8> {
    let mut config = vec![0u8; CONFIG_BYTES];
    for (i, chunk) in config.chunks_mut(4).enumerate() {
        host.read_config((i * 4) as u16, chunk);
    }
    config
}

fn dword(config: &[u8], offset: usize) -> u32 {
    config
        .get(offset..offset + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

impl<H: HostFunction> PciFunction for PassthroughFunction<H> {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if self.is_emulated(offset) {
            self.shadow.read(offset, data);
        } else {
            self.host.read_config(offset, data);
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        if !self.is_emulated(offset) {
            self.host.write_config(offset, data);
            if offset == COMMAND {
                if let Some(&command) = data.first() {
                    self.command = command;
                    self.sync_bars();
                }
            }
            return;
        }
        self.shadow.write(offset, data);
        self.sync_bars();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vm_allocator::AddressAllocator;

    /// Configuration writes a fake host received: offset and bytes.
    type Writes = Arc<Mutex<Vec<(u16, Vec<u8>)>>>;

    /// A host function: its configuration bytes, region sizes, and the writes it received.
    #[derive(Clone)]
    struct FakeHost {
        config: Arc<Mutex<Vec<u8>>>,
        sizes: [u64; 6],
        writes: Writes,
    }

    impl HostFunction for FakeHost {
        fn read_config(&self, offset: u16, data: &mut [u8]) {
            let config = self.config.lock().unwrap();
            let start = usize::from(offset);
            data.copy_from_slice(&config[start..start + data.len()]);
        }
        fn write_config(&self, offset: u16, data: &[u8]) {
            self.writes.lock().unwrap().push((offset, data.to_vec()));
        }
        fn region_size(&self, index: u8) -> u64 {
            self.sizes[usize::from(index)]
        }
    }

    fn put(config: &mut [u8], offset: usize, value: u32) {
        config[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// A display controller (1002:6660, class 0380) with a 64-bit prefetchable 256 MiB
    /// BAR 0, a 256 KiB BAR 2, an ROM, and AER then Resizable BAR in extended space.
    fn radeon() -> FakeHost {
        let mut config = vec![0u8; CONFIG_BYTES];
        put(&mut config, 0x00, 0x6660_1002);
        put(&mut config, 0x04, 0x0010_0007);
        put(&mut config, 0x08, 0x0380_0000);
        put(&mut config, 0x10, 0xe000_000c);
        put(&mut config, 0x18, 0xfe80_0000);
        put(&mut config, 0x30, 0xfe84_0001);
        put(&mut config, 0x100, 0x1501_0001); // AER, next 0x150
        put(&mut config, 0x150, 0x2001_0015); // Resizable BAR, next 0x200
        put(&mut config, 0x200, 0x0001_000b); // vendor specific, end
        FakeHost {
            config: Arc::new(Mutex::new(config)),
            sizes: [256 << 20, 0, 256 << 10, 0, 0, 0],
            writes: Arc::default(),
        }
    }

    fn windows() -> BarWindows {
        BarWindows {
            io: AddressAllocator::new(0xc000, 0x4000).unwrap(),
            mmio32: AddressAllocator::new(0xc000_0000, 0x2000_0000).unwrap(),
            mmio64: AddressAllocator::new(1 << 32, 64 << 30).unwrap(),
        }
    }

    fn read32(function: &mut PassthroughFunction<FakeHost>, offset: u16) -> u32 {
        let mut data = [0u8; 4];
        function.config_read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn guest_view(function: &mut PassthroughFunction<FakeHost>) -> Vec<u8> {
        let mut config = vec![0u8; CONFIG_BYTES];
        for i in 0..CONFIG_DWORDS {
            let value = read32(function, (i * 4) as u16);
            put(&mut config, i * 4, value);
        }
        config
    }

    #[test]
    fn identity_comes_from_the_host_and_bars_from_the_guest_map() {
        let mut function = PassthroughFunction::new(radeon(), &mut windows()).unwrap();
        assert_eq!(read32(&mut function, 0x00), 0x6660_1002);
        assert_eq!(read32(&mut function, 0x08) >> 16, 0x0380);
        let bars: Vec<_> = function.bars().iter().map(|(b, a)| (b.index, *a)).collect();
        assert_eq!(bars, vec![(0, 1 << 32), (2, 0xc000_0000)]);
        assert_eq!(
            read32(&mut function, 0x10),
            0x0000_000c,
            "host address not shown"
        );
        assert_eq!(read32(&mut function, 0x14), 0x1);
        assert_eq!(read32(&mut function, 0x18), 0xc000_0000);
        assert_eq!(read32(&mut function, 0x1c), 0, "unused BAR");
        assert_eq!(read32(&mut function, 0x30), 0, "no ROM yet");
    }

    #[test]
    fn command_writes_reach_the_host_and_bar_writes_do_not() {
        let host = radeon();
        let mut function = PassthroughFunction::new(host.clone(), &mut windows()).unwrap();
        function.config_write(0x04, &[0x06, 0x00]);
        function.config_write(0x18, &[0xff; 4]);
        function.config_write(0x30, &[0xff; 4]);
        assert_eq!(*host.writes.lock().unwrap(), vec![(0x04, vec![0x06, 0x00])]);
    }

    #[test]
    fn sizing_with_decode_off_is_not_a_move_and_enabling_decode_applies_the_new_address() {
        let mut function = PassthroughFunction::new(radeon(), &mut windows()).unwrap();
        // Linux: decoding off, probe, restore, program, decoding on.
        function.config_write(0x04, &[0x04, 0x00]);
        function.config_write(0x18, &[0xff; 4]);
        assert_eq!(
            read32(&mut function, 0x18),
            0xfffc_0000,
            "256 KiB size mask"
        );
        function.config_write(0x18, &0xc000_0000u32.to_le_bytes());
        function.config_write(0x18, &0xc010_0000u32.to_le_bytes());
        assert!(function.take_moves().is_empty());
        function.config_write(0x04, &[0x06, 0x00]);
        let moves = function.take_moves();
        assert_eq!(moves.len(), 1);
        assert_eq!(
            (moves[0].bar.index, moves[0].from, moves[0].to),
            (2, 0xc000_0000, 0xc010_0000)
        );
        assert_eq!(function.bars()[1].1, 0xc010_0000);
    }

    #[test]
    fn with_decode_on_a_new_address_moves_the_bar_at_once() {
        let mut function = PassthroughFunction::new(radeon(), &mut windows()).unwrap();
        function.config_write(0x14, &0x2u32.to_le_bytes());
        let moves = function.take_moves();
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].from, moves[0].to), (1 << 32, 2 << 32));
    }

    #[test]
    fn resizable_bar_is_unlinked_from_the_extended_list() {
        let mut function = PassthroughFunction::new(radeon(), &mut windows()).unwrap();
        let ids: Vec<u16> = capability::extended(&guest_view(&mut function))
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, vec![ext_id::AER, 0x000b]);
    }

    #[test]
    fn a_resizable_bar_first_in_the_list_becomes_a_null_capability() {
        let host = radeon();
        put(&mut host.config.lock().unwrap(), 0x100, 0x2001_0015);
        let mut function = PassthroughFunction::new(host, &mut windows()).unwrap();
        let ids: Vec<u16> = capability::extended(&guest_view(&mut function))
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, vec![0, 0x000b]);
    }
}
