//! [`HostFunction`] over a VFIO device and the VM: configuration and trapped BAR accesses
//! go to the device's regions; a BAR the guest maps becomes KVM memory slots over the
//! device's mmap (so guest accesses never exit) plus a trap for the rest; MSI, MSI-X and
//! INTx become irqfds, so no interrupt passes through minivmm.

use super::dma_map::{sets_bus_master, without_bus_master, DmaGate};
use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use minivmm_devices::bus::{BusDevice, Effect};
use minivmm_devices::pci::bar::{Bar, BarKind};
use minivmm_devices::pci::msi::{MsiKind, MsiVector};
use minivmm_devices::pci::passthrough::{HostFunction, PassthroughFunction, ROM_INDEX};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guest_map::GuestMap;
use crate::gsi::{GsiRouter, MsiRoute};

/// The passed-through function as the VMM shares it (PCI root and BAR traps).
pub type SharedFunction = Arc<Mutex<PassthroughFunction<VfioFunction>>>;

/// A host page: mmap and memory slots work in whole pages.
const PAGE_SIZE: u64 = 4096;

/// A BAR region mapped into minivmm: the device's mmap-able areas.
#[derive(Debug)]
struct RegionMmap {
    /// (offset in the BAR, host address, length)
    areas: Vec<(u64, *mut libc::c_void, u64)>,
}

// SAFETY: the pointers are mappings owned by this struct and only passed to KVM and munmap.
unsafe impl Send for RegionMmap {}

impl Drop for RegionMmap {
    fn drop(&mut self) {
        for (_, host, len) in &self.areas {
            // SAFETY: each area was mapped by `map_region` with this length and is unmapped once.
            unsafe { libc::munmap(*host, *len as usize) };
        }
    }
}

/// Where a BAR is mapped now.
#[derive(Debug)]
struct BarMapping {
    base: u64,
    io: bool,
    slots: Vec<u32>,
}

/// One interrupt vector: its eventfd (VFIO signals it) and GSI (KVM injects it).
#[derive(Debug)]
struct Vector {
    eventfd: EventFd,
    gsi: u32,
    /// The irqfd is registered: the vector is unmasked.
    live: bool,
}

/// INTx: the level line with its resample eventfd.
#[derive(Debug)]
struct Intx {
    trigger: EventFd,
    resample: EventFd,
    gsi: u32,
    enabled: bool,
}

/// A VFIO device as the passthrough model's host side.
pub struct VfioFunction {
    /// Taken in `drop` (see there): never used after.
    device: ManuallyDrop<Arc<VfioDevice>>,
    /// The name used in messages and traces (`0000:01:00.0`, or the mdev UUID).
    name: String,
    map: Arc<GuestMap>,
    /// The model this host side belongs to, for the BAR traps it puts on the buses.
    function: Weak<Mutex<PassthroughFunction<VfioFunction>>>,
    mmaps: BTreeMap<u8, RegionMmap>,
    mapped: BTreeMap<u8, BarMapping>,
    msi: Option<(MsiKind, Vec<Vector>)>,
    intx: Option<Intx>,
    /// Guest accesses that trapped to a BAR (the rest went straight to the device).
    trapped: Arc<AtomicU64>,
    /// Guest reads of the ROM BAR (always trapped: a ROM is served, never mapped).
    rom_reads: Arc<AtomicU64>,
    /// Bytes of configuration space VFIO offers (256 or 4096).
    config_size: u64,
    /// Holds the guest's bus-master enable until guest RAM is DMA-mapped.
    gate: Arc<DmaGate>,
}

impl std::fmt::Debug for VfioFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioFunction")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The device file is closed here, and the group and container are left to the kernel.
///
/// vfio-ioctls' own clean-up (`VfioDevice`'s drop) detaches the group from KVM and the
/// container as soon as one device of the group goes, assuming one device per group: with a
/// GPU and its audio function in one group that fails with EBUSY while the other device is
/// open, logs errors, and may reopen `/dev/vfio/N` (which the unprivileged VM process cannot
/// do, and whose failure panics there). Closing every device file and letting the process
/// exit release the group and container is the kernel's own, ordered teardown.
impl Drop for VfioFunction {
    fn drop(&mut self) {
        // SAFETY: `device` is taken once, here, and `self` is not used after drop.
        let device = unsafe { ManuallyDrop::take(&mut self.device) };
        match Arc::try_unwrap(device) {
            Ok(device) => {
                let fd = device.as_raw_fd();
                // The container, groups and region records the device refers to stay
                // allocated until the process ends; nothing uses them again.
                std::mem::forget(device);
                // SAFETY: `fd` is the device file's descriptor, owned by the VfioDevice just
                // forgotten, so nothing else closes it or uses it again.
                unsafe { libc::close(fd) };
            }
            // Another holder (there is none once attached) drops it the library's way.
            Err(shared) => drop(shared),
        }
    }
}

impl VfioFunction {
    /// The host side of `device`, before its model exists.
    pub fn new(
        device: Arc<VfioDevice>,
        name: String,
        map: Arc<GuestMap>,
        gate: Arc<DmaGate>,
    ) -> Self {
        VfioFunction {
            config_size: device.get_region_size(VFIO_PCI_CONFIG_REGION_INDEX),
            device: ManuallyDrop::new(device),
            name,
            map,
            function: Weak::new(),
            mmaps: BTreeMap::new(),
            mapped: BTreeMap::new(),
            msi: None,
            intx: None,
            trapped: Arc::default(),
            rom_reads: Arc::default(),
            gate,
        }
    }

    /// The count of guest accesses that trapped to this function's BARs.
    pub fn trapped(&self) -> Arc<AtomicU64> {
        self.trapped.clone()
    }

    /// The count of guest accesses to this function's ROM BAR.
    pub fn rom_reads(&self) -> Arc<AtomicU64> {
        self.rom_reads.clone()
    }

    /// Tell the host side which model it serves (once the model is shared).
    pub fn set_function(&mut self, function: &SharedFunction) {
        self.function = Arc::downgrade(function);
    }

    /// The VFIO device (for resets).
    pub fn device(&self) -> &VfioDevice {
        &self.device
    }

    /// The name used in messages and traces.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wire INTx to GSI `gsi`: VFIO signals an eventfd KVM injects as a level interrupt,
    /// and KVM's resample eventfd (on the guest's EOI) unmasks it in VFIO.
    pub fn enable_intx(&mut self, gsi: u32) -> Result<(), String> {
        let has_intx = self
            .device
            .get_irq_info(VFIO_PCI_INTX_IRQ_INDEX)
            .is_some_and(|irq| irq.count > 0);
        if !has_intx {
            return Ok(());
        }
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"));
        let intx = Intx {
            trigger: eventfd()?,
            resample: eventfd()?,
            gsi,
            enabled: false,
        };
        self.map
            .vm
            .register_irqfd_with_resample(&intx.trigger, &intx.resample, gsi)
            .map_err(|e| format!("KVM_IRQFD with resample for INTx: {e}"))?;
        self.intx = Some(intx);
        self.intx_on();
        log::info!(target: "irq", "{} INTx -> GSI {gsi} (irqfd with resample)", self.name);
        Ok(())
    }

    fn intx_on(&mut self) {
        let Some(intx) = &mut self.intx else { return };
        if intx.enabled {
            return;
        }
        let result = self
            .device
            .enable_irq(VFIO_PCI_INTX_IRQ_INDEX, vec![&intx.trigger])
            .and_then(|()| {
                self.device
                    .set_irq_resample_fd(VFIO_PCI_INTX_IRQ_INDEX, vec![&intx.resample])
            });
        match result {
            Ok(()) => intx.enabled = true,
            Err(e) => log::warn!("{}: cannot enable INTx: {e}", self.name),
        }
    }

    fn intx_off(&mut self) {
        let Some(intx) = &mut self.intx else { return };
        if intx.enabled {
            if let Err(e) = self.device.disable_irq(VFIO_PCI_INTX_IRQ_INDEX) {
                log::warn!("{}: cannot disable INTx: {e}", self.name);
            }
            intx.enabled = false;
        }
    }

    /// After the device was reset: INTx set up in VFIO again (as QEMU does after a reset),
    /// so a level left asserted from before cannot linger.
    pub fn rearm_intx(&mut self) {
        self.intx_off();
        self.intx_on();
    }

    /// Undo everything the VM holds of the device: irqfds, slots, traps, mmaps.
    pub fn release(&mut self) {
        self.msi_off();
        self.intx_off();
        if let Some(intx) = self.intx.take() {
            let _ = self.map.vm.unregister_irqfd(&intx.trigger, intx.gsi);
        }
        let indices: Vec<u8> = self.mapped.keys().copied().collect();
        for index in indices {
            self.unmap(index);
        }
        self.mmaps.clear();
    }

    /// mmap the device's mmap-able areas of BAR `index` (once).
    fn region_mmap(&mut self, index: u8) -> Option<&RegionMmap> {
        if !self.mmaps.contains_key(&index) {
            let region = u32::from(index);
            if self.device.get_region_flags(region) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
                return None;
            }
            let size = self.device.get_region_size(region);
            let mut areas: Vec<(u64, u64)> = Vec::new();
            for cap in self.device.get_region_caps(region) {
                if let VfioRegionInfoCap::SparseMmap(sparse) = cap {
                    areas.extend(sparse.areas.iter().map(|a| (a.offset, a.size)));
                }
            }
            if areas.is_empty() {
                areas.push((0, size));
            }
            let offset = self.device.get_region_offset(region);
            let mut mmap = RegionMmap { areas: Vec::new() };
            for (start, len) in areas {
                if len == 0 || start % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
                    continue;
                }
                // SAFETY: a fresh shared mapping of the device fd; the kernel checks the
                // offset and length against the region, and the result is checked below.
                let host = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        self.device.as_raw_fd(),
                        (offset + start) as libc::off_t,
                    )
                };
                if host == libc::MAP_FAILED {
                    log::warn!(
                        "{}: BAR {index} area {start:#x}+{len:#x} cannot be mmapped ({}); it will trap",
                        self.name,
                        std::io::Error::last_os_error()
                    );
                    continue;
                }
                mmap.areas.push((start, host, len));
            }
            self.mmaps.insert(index, mmap);
        }
        self.mmaps.get(&index)
    }

    fn unmap(&mut self, index: u8) {
        let Some(mapping) = self.mapped.remove(&index) else {
            return;
        };
        for slot in mapping.slots {
            self.map.remove_slot(slot);
        }
        // Without buses the VM is gone, and its traps with it.
        if let Some(buses) = self.map.buses() {
            let bus = if mapping.io { &buses.pio } else { &buses.mmio };
            bus.remove(mapping.base);
        }
    }

    fn map(&mut self, bar: &Bar, base: u64, traps: &[Range<u64>]) -> Result<(), String> {
        let io = bar.kind == BarKind::Io;
        if !io {
            self.map.check_free(base, bar.size)?;
        }
        let trap: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(BarTrap {
            function: self.function.clone(),
            index: bar.index,
            trapped: if bar.index == ROM_INDEX {
                self.rom_reads.clone()
            } else {
                self.trapped.clone()
            },
        }));
        let buses = self.map.buses().ok_or("the VM is being torn down")?;
        let bus = if io { &buses.pio } else { &buses.mmio };
        bus.insert(trap, base, bar.size)
            .map_err(|_| format!("{base:#x}+{:#x} overlaps another device", bar.size))?;
        let mut mapping = BarMapping {
            base,
            io,
            slots: Vec::new(),
        };
        if !io {
            let map = self.map.clone();
            let name = self.name.clone();
            if let Some(mmap) = self.region_mmap(bar.index) {
                for &(start, host, len) in &mmap.areas {
                    for piece in subtract(start..start + len.min(bar.size), traps) {
                        let host = host as u64 + (piece.start - start);
                        match map.add_slot(base + piece.start, piece.end - piece.start, host) {
                            Ok(slot) => mapping.slots.push(slot),
                            Err(e) => log::warn!("{name}: BAR {} slot: {e}", bar.index),
                        }
                    }
                }
            }
        }
        log::info!(
            target: "bar",
            "{} BAR {} ({:?}, {:#x} bytes) at {base:#x}: {} memory slot(s), traps {:x?}",
            self.name,
            bar.index,
            bar.kind,
            bar.size,
            mapping.slots.len(),
            traps
        );
        self.mapped.insert(bar.index, mapping);
        Ok(())
    }

    fn msi_off(&mut self) {
        let Some((kind, vectors)) = self.msi.take() else {
            return;
        };
        let mut router = self.map.router();
        for vector in vectors {
            if vector.live {
                let _ = self.map.vm.unregister_irqfd(&vector.eventfd, vector.gsi);
            }
            router.release(vector.gsi);
        }
        if let Err(e) = router.commit() {
            log::warn!("{}: GSI routing: {e}", self.name);
        }
        drop(router);
        if let Err(e) = self.device.disable_irq(irq_index(kind)) {
            log::warn!("{}: cannot disable {kind:?}: {e}", self.name);
        }
        log::info!(target: "irq", "{} {kind:?} off", self.name);
    }

    fn msi_on(&mut self, kind: MsiKind, count: usize) -> Result<(), String> {
        let mut vectors: Vec<Vector> = Vec::with_capacity(count);
        {
            let mut router = self.map.router();
            for _ in 0..count {
                match new_vector(&mut router) {
                    Ok(vector) => vectors.push(vector),
                    Err(e) => {
                        // The GSIs taken so far go back: a failed enable leaks nothing.
                        for vector in &vectors {
                            router.release(vector.gsi);
                        }
                        return Err(e);
                    }
                }
            }
        }
        let fds: Vec<&EventFd> = vectors.iter().map(|v| &v.eventfd).collect();
        let enabled = self.device.enable_irq(irq_index(kind), fds);
        self.msi = Some((kind, vectors));
        enabled.map_err(|e| format!("VFIO cannot enable {kind:?} with {count} vectors: {e}"))
    }

    fn route(&mut self, vectors: &[MsiVector]) {
        let Some((kind, states)) = &mut self.msi else {
            return;
        };
        let mut router = self.map.router();
        for (state, vector) in states.iter().zip(vectors) {
            router.set(
                state.gsi,
                MsiRoute {
                    address: vector.address,
                    data: vector.data,
                },
            );
        }
        if let Err(e) = router.commit() {
            log::warn!("{}: GSI routing: {e}", self.name);
        }
        drop(router);
        for (i, (state, vector)) in states.iter_mut().zip(vectors).enumerate() {
            let live = !vector.masked;
            if live != state.live {
                // A masked vector's irqfd is unregistered: the interrupt stays counted in
                // the eventfd, and KVM delivers it when the irqfd is registered again.
                let result = if live {
                    self.map.vm.register_irqfd(&state.eventfd, state.gsi)
                } else {
                    self.map.vm.unregister_irqfd(&state.eventfd, state.gsi)
                };
                match result {
                    Ok(()) => state.live = live,
                    Err(e) => log::warn!("{}: irqfd for vector {i}: {e}", self.name),
                }
            }
            if state.live || vector.masked {
                log::info!(
                    target: "irq",
                    "{} {kind:?} vector {i} -> GSI {} address {:#x} data {:#x}{}",
                    self.name,
                    state.gsi,
                    vector.address,
                    vector.data,
                    if vector.masked { " (masked)" } else { "" }
                );
            }
        }
    }
}

fn irq_index(kind: MsiKind) -> u32 {
    match kind {
        MsiKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
        MsiKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
    }
}

/// `range` minus `holes`, each piece page aligned (pieces shorter than a page dropped).
fn subtract(range: Range<u64>, holes: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut pieces = vec![range];
    for hole in holes {
        pieces = pieces
            .into_iter()
            .flat_map(|p| {
                let before = p.start..p.end.min(hole.start);
                let after = p.start.max(hole.end)..p.end;
                [before, after]
            })
            .filter(|p| p.start < p.end)
            .collect();
    }
    pieces
        .into_iter()
        .map(|p| p.start.next_multiple_of(PAGE_SIZE)..p.end / PAGE_SIZE * PAGE_SIZE)
        .filter(|p| p.start < p.end)
        .collect()
}

impl HostFunction for VfioFunction {
    fn read_config(&self, offset: u16, data: &mut [u8]) {
        // A conventional PCI function has 256 bytes: its extended space reads as zeros,
        // which ends the extended capability list at once.
        if u64::from(offset) + data.len() as u64 > self.config_size {
            data.fill(0);
            return;
        }
        self.device
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, data, u64::from(offset));
    }

    fn write_config(&self, offset: u16, data: &[u8]) {
        if u64::from(offset) + data.len() as u64 > self.config_size {
            return;
        }
        // No DMA before guest RAM is mapped: the device may master only once it is.
        if sets_bus_master(offset, data) {
            let waits = self.gate.pending().then(|| {
                log::info!("{}: bus mastering waits for guest RAM's DMA map", self.name);
                std::time::Instant::now()
            });
            let mapped = self.gate.wait();
            if let Some(since) = waits {
                let ms = since.elapsed().as_secs_f64() * 1000.0;
                log::info!("{}: bus mastering waited {ms:.1} ms", self.name);
            }
            if let Err(why) = mapped {
                log::error!("{}: bus mastering kept off: {why}", self.name);
                let data = without_bus_master(offset, data);
                self.device
                    .region_write(VFIO_PCI_CONFIG_REGION_INDEX, &data, u64::from(offset));
                return;
            }
        }
        self.device
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, data, u64::from(offset));
    }

    fn region_size(&self, index: u8) -> u64 {
        self.device.get_region_size(u32::from(index))
    }

    fn region_read(&self, index: u8, offset: u64, data: &mut [u8]) {
        self.device.region_read(u32::from(index), data, offset);
    }

    fn region_write(&self, index: u8, offset: u64, data: &[u8]) {
        self.device.region_write(u32::from(index), data, offset);
    }

    fn map_bar(
        &mut self,
        bar: &Bar,
        from: Option<u64>,
        to: Option<u64>,
        traps: &[Range<u64>],
    ) -> Result<(), String> {
        if from.is_some() {
            self.unmap(bar.index);
        }
        match to {
            Some(base) => self.map(bar, base, traps).inspect_err(|e| {
                log::warn!(target: "bar", "{} BAR {} refused at {base:#x}: {e}", self.name, bar.index)
            }),
            None => {
                log::info!(target: "bar", "{} BAR {} unmapped", self.name, bar.index);
                Ok(())
            }
        }
    }

    fn set_msi(&mut self, kind: MsiKind, vectors: Option<&[MsiVector]>) {
        let Some(vectors) = vectors else {
            if self.msi.as_ref().is_some_and(|(k, _)| *k == kind) {
                self.msi_off();
                self.intx_on();
            }
            return;
        };
        let current = self.msi.as_ref().map(|(k, v)| (*k, v.len()));
        if current != Some((kind, vectors.len())) {
            self.msi_off();
            // VFIO takes one interrupt mechanism at a time.
            self.intx_off();
            if let Err(e) = self.msi_on(kind, vectors.len()) {
                log::warn!("{}: {e}", self.name);
                self.msi_off();
                return;
            }
        }
        self.route(vectors);
    }
}

/// The trapped part of a BAR, on the MMIO or port bus: accesses go to the model, which
/// answers the MSI-X table itself and forwards the rest to the device.
struct BarTrap {
    function: Weak<Mutex<PassthroughFunction<VfioFunction>>>,
    index: u8,
    trapped: Arc<AtomicU64>,
}

impl BusDevice for BarTrap {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.trapped.fetch_add(1, Ordering::Relaxed);
        match self.function.upgrade() {
            Some(function) => function
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bar_read(self.index, offset, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        self.trapped.fetch_add(1, Ordering::Relaxed);
        if let Some(function) = self.function.upgrade() {
            function
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bar_write(self.index, offset, data);
        }
        None
    }
}

/// A GSI and an eventfd for one MSI vector (the GSI goes back to `router` if the eventfd
/// cannot be made).
fn new_vector(router: &mut GsiRouter) -> Result<Vector, String> {
    let gsi = router.allocate().ok_or("no GSI left")?;
    match EventFd::new(EFD_NONBLOCK) {
        Ok(eventfd) => Ok(Vector {
            eventfd,
            gsi,
            live: false,
        }),
        Err(e) => {
            router.release(gsi);
            Err(format!("eventfd: {e}"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn slots_skip_the_trapped_pages() {
        assert_eq!(subtract(0..0x10000, &[]), vec![0..0x10000]);
        assert_eq!(
            subtract(0..0x10000, &[0x3000..0x4000]),
            vec![0..0x3000, 0x4000..0x10000]
        );
        assert_eq!(subtract(0..0x1000, &[0..0x1000]), Vec::<Range<u64>>::new());
        assert_eq!(
            subtract(0..0x4000, &[0x1000..0x2000, 0x3000..0x4000]),
            vec![0..0x1000, 0x2000..0x3000]
        );
    }
}
