//! `--disk`: raw disk images as virtio-blk devices on bus 0, each with an I/O thread.
//!
//! The steps: [`open`] checks and opens every image (and locks it, so two VMMs never
//! write one image) before anything else is made; [`attach`] places each device at the
//! next free bus-0 slot with its BAR in the emulated devices' window, gives each MSI-X
//! vector a GSI and an irqfd, and turns the queue's notify address into an ioeventfd;
//! [`Disks::start`] starts the I/O threads once the guest is about to run (after the
//! process gave up root: a thread that exists then would have to be allowed `setuid`).
//! The I/O thread sleeps in `poll` on its queue's eventfd, completes every request the
//! guest made available, and interrupts the guest through the irqfd.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use minivmm_devices::pci::msi::MsiVector;
use minivmm_devices::pci::{DevFn, PciAddress, PciRoot};
use minivmm_devices::virtio::block::{self, DiskImage};
use minivmm_devices::virtio::block_io::IoHelper;
use minivmm_devices::virtio::interrupts::{Interrupts, MsiSink, NO_VECTOR};
use minivmm_devices::virtio::pci::{
    self as virtio_pci, BarMover, Parts, QueueState, SharedQueue, VirtioPci,
};
use minivmm_firmware::layout;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::DiskArg;
use crate::gsi::{GsiRouter, MsiRoute};
use crate::memory::GuestMemory;
use crate::sandbox::{Sandbox, ThreadKind};
use crate::vcpu::Buses;

/// Most disks: the emulated devices' window holds this many BARs.
pub const MAX_DISKS: usize = (layout::EMULATED_MMIO_SIZE / virtio_pci::BAR_SIZE) as usize;

/// Errors setting up the disks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image cannot be used.
    #[error("--disk {0}: {1}")]
    Image(String, String),
    /// Too many.
    #[error("--disk: at most {MAX_DISKS} disks")]
    TooMany,
    /// Wiring into the VM.
    #[error("--disk {0}: {1}")]
    Vm(String, String),
}

/// An image, checked and open.
#[derive(Debug)]
pub struct OpenImage {
    name: String,
    image: DiskImage,
}

/// Open and check every image: a regular file (or block device) of at least one sector,
/// writable unless `readonly=on`, not in use by another process (an exclusive lock, or a
/// shared one for read-only disks, held until the process ends).
pub fn open(args: &[DiskArg]) -> Result<Vec<OpenImage>, Error> {
    if args.len() > MAX_DISKS {
        return Err(Error::TooMany);
    }
    args.iter()
        .enumerate()
        .map(|(i, arg)| open_one(arg, i))
        .collect()
}

fn open_one(arg: &DiskArg, index: usize) -> Result<OpenImage, Error> {
    let name = arg.path.display().to_string();
    let fail = |why: String| Error::Image(name.clone(), why);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!arg.readonly)
        .open(&arg.path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                fail("no such file: give the path of a raw disk image".into())
            }
            _ if e.raw_os_error() == Some(libc::EISDIR) => {
                fail("is a directory: give the path of a raw disk image".into())
            }
            std::io::ErrorKind::PermissionDenied if !arg.readonly => fail(format!(
                "{e}: make it writable for this user, or add ,readonly=on"
            )),
            _ => fail(format!("cannot open it: {e}")),
        })?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if meta.is_dir() {
        return Err(fail(
            "is a directory: give the path of a raw disk image".into(),
        ));
    }
    lock(&file, arg.readonly).map_err(fail)?;
    let image = DiskImage::new(file, arg.readonly, &format!("minivmm-disk-{index}"))
        .map_err(|e| fail(e.to_string()))?;
    if image.sectors() == 0 {
        return Err(fail(
            "is smaller than one 512-byte sector: a raw image needs a size, e.g. truncate -s 1G"
                .into(),
        ));
    }
    Ok(OpenImage { name, image })
}

/// Lock the image for this process: exclusive to write it, shared to read it.
fn lock(file: &File, readonly: bool) -> Result<(), String> {
    let how = if readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor this function borrows; it changes no memory.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        "is in use by another process (it holds a lock on the image): stop that one first \
         (several may share an image only when each has readonly=on)"
            .into()
    } else {
        format!("cannot lock it: {e}")
    })
}

/// One disk's device, its queue and the thread serving it.
struct Disk {
    name: String,
    function: Arc<Mutex<VirtioPci>>,
    image: Arc<DiskImage>,
    queue: SharedQueue,
    kick: EventFd,
    interrupts: Arc<Interrupts>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// The VM's disks; dropping it stops their threads.
pub struct Disks {
    disks: Vec<Disk>,
}

impl std::fmt::Debug for Disks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disks")
            .field("count", &self.disks.len())
            .finish()
    }
}

/// What [`attach`] wires the disks into.
#[derive(Debug)]
pub struct Attach<'a> {
    /// The VM.
    pub vm: &'a Arc<VmFd>,
    /// Its buses (BAR 0 goes on the MMIO bus).
    pub buses: &'a Arc<Buses>,
    /// Bus 0.
    pub root: &'a mut PciRoot,
    /// The VM's GSI routing table.
    pub router: &'a Arc<Mutex<GsiRouter>>,
}

/// Put each image on bus 0 as a virtio-blk function.
pub fn attach(images: Vec<OpenImage>, at: Attach<'_>) -> Result<Disks, Error> {
    let mut disks = Vec::new();
    for (i, OpenImage { name, image }) in images.into_iter().enumerate() {
        let label = name.clone();
        let vm_error = |why: String| Error::Vm(label.clone(), why);
        let device =
            *at.root.free_devices().first().ok_or_else(|| {
                vm_error("no free device number on bus 0: pass fewer devices".into())
            })?;
        let address = PciAddress::new(0, DevFn::new(device, 0));
        let bar = layout::EMULATED_MMIO_START + i as u64 * virtio_pci::BAR_SIZE;
        let image = Arc::new(image);
        let queue: SharedQueue = Arc::new(Mutex::new(QueueState {
            queue: Queue::new(block::QUEUE_SIZE).map_err(|e| vm_error(e.to_string()))?,
            vector: NO_VECTOR,
            active: false,
        }));
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(|e| vm_error(e.to_string()));
        let kick = eventfd()?;
        let sink = KvmMsi::new(
            at.vm.clone(),
            at.router.clone(),
            virtio_pci::vector_count(1),
        )
        .map_err(vm_error)?;
        let interrupts = Arc::new(Interrupts::new(Box::new(sink), virtio_pci::vector_count(1)));
        let kicks = vec![kick.try_clone().map_err(|e| vm_error(e.to_string()))?];
        let notify: Arc<[EventFd]> =
            Arc::from([kick.try_clone().map_err(|e| vm_error(e.to_string()))?]);
        // One mover: the function keeps it for the guest's BAR moves, and a clone of it
        // maps BAR 0 where it was placed, as firmware hands it over.
        let mut placed = None;
        let function = Arc::new_cyclic(|me: &Weak<Mutex<VirtioPci>>| {
            let mover = KvmBar {
                vm: at.vm.clone(),
                buses: Arc::downgrade(at.buses),
                function: me.clone(),
                kicks: notify,
            };
            placed = Some(mover.clone());
            Mutex::new(VirtioPci::new(
                Parts {
                    device: image.clone(),
                    queues: vec![queue.clone()],
                    kicks,
                    interrupts: interrupts.clone(),
                    mover: Box::new(mover),
                },
                bar,
            ))
        });
        if let Some(mover) = placed {
            mover.map(bar).map_err(vm_error)?;
        }
        at.root
            .add(DevFn::new(device, 0), Box::new(function.clone()))
            .map_err(|e| vm_error(e.to_string()))?;
        log::info!(
            "disk {name} at {address}: {} sectors{}",
            image.sectors(),
            if image.readonly() { ", read-only" } else { "" }
        );
        disks.push(Disk {
            name,
            function,
            image,
            queue,
            kick,
            interrupts,
            stop: eventfd()?,
            thread: None,
        });
    }
    Ok(Disks { disks })
}

impl Disks {
    /// Start each disk's I/O thread, confined to its seccomp filter.
    pub fn start(&mut self, memory: &GuestMemory, sandbox: Sandbox) -> std::io::Result<()> {
        for (i, disk) in self.disks.iter_mut().enumerate() {
            // Started here, after root is given up, under the I/O thread's own filter.
            let helper = IoHelper::spawn(format!("disk{i}-io"), move || {
                sandbox.confine(ThreadKind::Disk).map_err(|e| e.to_string())
            })?;
            let io = Io {
                kick: disk.kick.try_clone()?,
                stop: disk.stop.try_clone()?,
                queue: disk.queue.clone(),
                image: disk.image.clone(),
                interrupts: disk.interrupts.clone(),
                memory: memory.clone(),
                helper,
            };
            disk.thread = Some(std::thread::Builder::new().name(format!("disk{i}")).spawn(
                move || {
                    if let Err(e) = sandbox.confine(ThreadKind::Disk) {
                        log::error!("disk I/O thread: sandbox: {e}");
                        return;
                    }
                    io.serve();
                },
            )?);
        }
        Ok(())
    }

    /// A handle that resets the disks from another thread (the rebooter).
    pub fn resetter(&self) -> Resetter {
        Resetter(self.disks.iter().map(|d| d.function.clone()).collect())
    }
}

/// Resets the disks' functions for a guest reboot (every queue stopped, the configuration
/// as placed), from the thread that reboots.
#[derive(Clone, Default)]
pub struct Resetter(Vec<Arc<Mutex<VirtioPci>>>);

impl std::fmt::Debug for Resetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resetter").finish_non_exhaustive()
    }
}

impl Resetter {
    /// Reset every disk.
    pub fn reset(&self) {
        for function in &self.0 {
            function.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        for disk in &mut self.disks {
            let Some(thread) = disk.thread.take() else {
                continue;
            };
            if let Err(e) = disk.stop.write(1) {
                log::warn!("cannot stop the I/O thread of {}: {e}", disk.name);
                continue;
            }
            if thread.join().is_err() {
                log::warn!("the I/O thread of {} panicked", disk.name);
            }
        }
    }
}

/// What one I/O thread works with.
struct Io {
    kick: EventFd,
    stop: EventFd,
    queue: SharedQueue,
    image: Arc<DiskImage>,
    interrupts: Arc<Interrupts>,
    memory: GuestMemory,
    /// Takes half of each large request (see `block_io`).
    helper: IoHelper,
}

impl Io {
    fn serve(self) {
        let mut fds = [
            libc::pollfd {
                fd: self.kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a live array of two pollfds owned by this frame.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if ready < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("disk I/O thread: poll: {}", std::io::Error::last_os_error());
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            // Nonblocking: a kick already consumed reads EAGAIN.
            let _ = self.kick.read();
            self.work();
        }
    }

    fn work(&self) {
        let mut state = virtio_pci::lock(&self.queue);
        if !state.active {
            return;
        }
        match block::process_queue(
            &mut state.queue,
            &self.memory,
            &self.image,
            Some(&self.helper),
        ) {
            Ok(true) => {
                let vector = state.vector;
                drop(state);
                self.interrupts.signal(vector);
            }
            Ok(false) => {}
            Err(e) => {
                // The rings themselves are out of guest RAM: the driver broke the queue.
                log::warn!("virtio-blk: the queue cannot be used ({e}); it stops until reset");
                state.active = false;
            }
        }
    }
}

/// A disk's MSI-X vectors as KVM routes: a GSI and an irqfd each.
struct KvmMsi {
    router: Arc<Mutex<GsiRouter>>,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
}

impl KvmMsi {
    fn new(vm: Arc<VmFd>, router: Arc<Mutex<GsiRouter>>, count: usize) -> Result<KvmMsi, String> {
        let mut gsis = Vec::new();
        let mut irqfds = Vec::new();
        {
            let mut table = router.lock().unwrap_or_else(|e| e.into_inner());
            for _ in 0..count {
                let gsi = table.allocate().ok_or("no GSI left for its interrupts")?;
                let irqfd = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
                vm.register_irqfd(&irqfd, gsi)
                    .map_err(|e| format!("KVM_IRQFD: {e}"))?;
                gsis.push(gsi);
                irqfds.push(irqfd);
            }
        }
        Ok(KvmMsi {
            router,
            gsis,
            irqfds,
        })
    }
}

impl MsiSink for KvmMsi {
    fn route(&self, index: u16, message: MsiVector) {
        let Some(&gsi) = self.gsis.get(usize::from(index)) else {
            return;
        };
        let mut router = self.router.lock().unwrap_or_else(|e| e.into_inner());
        router.set(
            gsi,
            MsiRoute {
                address: message.address,
                data: message.data,
            },
        );
        if let Err(e) = router.commit() {
            log::warn!("virtio: KVM_SET_GSI_ROUTING: {e}");
        }
        log::info!(target: "irq", "virtio vector {index}: GSI {gsi} -> {:#x}/{:#x}", message.address, message.data);
    }

    fn trigger(&self, index: u16) {
        if let Some(irqfd) = self.irqfds.get(usize::from(index)) {
            if let Err(e) = irqfd.write(1) {
                log::warn!("virtio: cannot signal vector {index}: {e}");
            }
        }
    }
}

/// Moves a disk's BAR 0: its MMIO bus entry and its notify ioeventfd.
#[derive(Clone)]
struct KvmBar {
    vm: Arc<VmFd>,
    buses: Weak<Buses>,
    function: Weak<Mutex<VirtioPci>>,
    kicks: Arc<[EventFd]>,
}

impl KvmBar {
    fn notify_address(base: u64, queue: usize) -> IoEventAddress {
        IoEventAddress::Mmio(
            base + virtio_pci::NOTIFY + queue as u64 * u64::from(virtio_pci::NOTIFY_MULTIPLIER),
        )
    }

    fn map(&self, base: u64) -> Result<(), String> {
        let (Some(buses), Some(function)) = (self.buses.upgrade(), self.function.upgrade()) else {
            return Ok(());
        };
        buses
            .mmio
            .insert(function, base, virtio_pci::BAR_SIZE)
            .map_err(|e| format!("BAR 0 at {base:#x}: {e}"))?;
        for (i, kick) in self.kicks.iter().enumerate() {
            self.vm
                .register_ioevent(kick, &Self::notify_address(base, i), NoDatamatch)
                .map_err(|e| format!("KVM_IOEVENTFD at {base:#x}: {e}"))?;
        }
        log::info!(target: "bar", "virtio BAR 0 mapped at {base:#x}");
        Ok(())
    }

    fn unmap(&self, base: u64) {
        if let Some(buses) = self.buses.upgrade() {
            buses.mmio.remove(base);
        }
        for (i, kick) in self.kicks.iter().enumerate() {
            if let Err(e) =
                self.vm
                    .unregister_ioevent(kick, &Self::notify_address(base, i), NoDatamatch)
            {
                log::warn!("virtio: KVM_IOEVENTFD (remove) at {base:#x}: {e}");
            }
        }
        log::info!(target: "bar", "virtio BAR 0 unmapped from {base:#x}");
    }
}

impl BarMover for KvmBar {
    fn moved(&self, from: Option<u64>, to: Option<u64>) {
        if let Some(from) = from {
            self.unmap(from);
        }
        if let Some(to) = to {
            // A BAR over another device's range stays unmapped: its accesses go nowhere,
            // as on a real bus with a conflict.
            if let Err(e) = self.map(to) {
                log::warn!("virtio: the guest moved BAR 0 where it cannot go: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, size: u64) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("minivmm-disks-{name}-{}.img", std::process::id()));
        let file = File::create(&path).unwrap();
        file.set_len(size).unwrap();
        path
    }

    fn arg(path: &std::path::Path, readonly: bool) -> DiskArg {
        DiskArg {
            path: path.to_path_buf(),
            readonly,
        }
    }

    fn refused(args: &[DiskArg]) -> String {
        open(args).unwrap_err().to_string()
    }

    #[test]
    fn images_that_cannot_be_disks_are_refused_with_what_to_do() {
        let missing = std::path::Path::new("/nonexistent/minivmm.img");
        assert!(refused(&[arg(missing, false)]).contains("no such file"));
        assert!(refused(&[arg(&std::env::temp_dir(), true)]).contains("is a directory"));
        assert!(refused(&[arg(&std::env::temp_dir(), false)]).contains("is a directory"));
        let empty = temp("empty", 100);
        assert!(refused(&[arg(&empty, false)]).contains("smaller than one 512-byte sector"));
        std::fs::remove_file(empty).unwrap();
        let many: Vec<DiskArg> = (0..=MAX_DISKS).map(|_| arg(missing, true)).collect();
        assert!(refused(&many).contains("at most"));
    }

    #[test]
    fn an_image_in_use_is_refused_but_may_be_shared_read_only() {
        let path = temp("locked", 1 << 20);
        let held = open(&[arg(&path, false)]).unwrap();
        assert_eq!(held[0].image.sectors(), 2048);
        assert!(refused(&[arg(&path, false)]).contains("in use by another process"));
        assert!(refused(&[arg(&path, true)]).contains("in use by another process"));
        drop(held);
        let readers = open(&[arg(&path, true), arg(&path, true)]).unwrap();
        assert!(readers.iter().all(|r| r.image.readonly()));
        assert!(refused(&[arg(&path, false)]).contains("in use"));
        drop(readers);
        std::fs::remove_file(path).unwrap();
    }
}
