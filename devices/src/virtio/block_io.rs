//! The image side of a virtio-blk transfer: `preadv`/`pwritev` straight between the image
//! and guest pages, and a second thread ([`IoHelper`]) that takes half of a large one.
//!
//! Why a second thread: a guest that reads or writes sequentially (`dd`, a file copy with
//! O_DIRECT, a database's log) has one large request out at a time and waits for it, so the
//! request's copy between the host's page cache and guest RAM is all of its throughput,
//! and one thread copies on one host CPU. Cut in two at a page boundary, the two halves are
//! copied on two CPUs at once (the vCPU that waits for them is idle meanwhile). Requests
//! below [`SPLIT_FROM`] stay whole: for them a thread hand-off costs more than it saves.

use std::io;
use std::os::fd::RawFd;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

/// Transfers at least this long are split between the calling thread and the helper.
pub const SPLIT_FROM: u64 = 128 << 10;
/// Where a split may fall: a page boundary of the image, so neither half starts mid-page.
const SPLIT_ALIGN: u64 = 4096;

/// One half of a transfer, given to the helper thread.
struct Job {
    fd: RawFd,
    offset: u64,
    write: bool,
    iovecs: Vec<libc::iovec>,
    done: mpsc::SyncSender<io::Result<()>>,
}

// SAFETY: the iovecs point into guest RAM. The thread that sends a Job blocks until the
// helper has answered (or is gone, dropping the Job unanswered), so the memory and the file
// descriptor outlive every use of them on the helper's side.
unsafe impl Send for Job {}

/// A thread that carries half of each large transfer.
#[derive(Debug)]
pub struct IoHelper {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl IoHelper {
    /// Start the helper thread `name`; it runs `setup` first (its seccomp filter) and ends
    /// at once if that fails, after which every transfer is done whole by its caller.
    pub fn spawn<F>(name: String, setup: F) -> io::Result<IoHelper>
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            if let Err(e) = setup() {
                log::warn!("disk I/O helper: {e}; large requests stay on one thread");
                return;
            }
            for mut job in queue {
                let result = transfer_all(job.fd, &mut job.iovecs, job.offset, job.write);
                let _ = job.done.send(result);
            }
        })?;
        Ok(IoHelper {
            jobs: Mutex::new(Some(jobs)),
            thread: Some(thread),
        })
    }

    /// Hand `job` over; gives it back when the helper is gone.
    fn send(&self, job: Job) -> Result<(), Job> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        match jobs.as_ref() {
            Some(jobs) => jobs.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for IoHelper {
    fn drop(&mut self) {
        // Closing the channel ends the helper's loop.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Move `iovecs` (guest memory) to (`write`) or from the image `fd` at byte `offset`, half
/// of it on `helper` when it is long enough.
///
/// # Safety
/// Every iovec must point into memory that stays mapped and may be read or written (as
/// the direction needs) for the whole call, and `fd` must stay open for it.
pub unsafe fn transfer(
    fd: RawFd,
    mut iovecs: Vec<libc::iovec>,
    offset: u64,
    write: bool,
    helper: Option<&IoHelper>,
) -> io::Result<()> {
    let wanted: u64 = iovecs.iter().map(|v| v.iov_len as u64).sum();
    let half = (wanted / 2) / SPLIT_ALIGN * SPLIT_ALIGN;
    let Some(helper) = helper.filter(|_| wanted >= SPLIT_FROM && half > 0) else {
        return transfer_all(fd, &mut iovecs, offset, write);
    };
    let mut tail = split_off(&mut iovecs, half as usize);
    let tail_offset = offset + half;
    let (done, answer) = mpsc::sync_channel(1);
    let job = Job {
        fd,
        offset: tail_offset,
        write,
        iovecs: tail.clone(),
        done,
    };
    if helper.send(job).is_err() {
        transfer_all(fd, &mut iovecs, offset, write)?;
        return transfer_all(fd, &mut tail, tail_offset, write);
    }
    let head = transfer_all(fd, &mut iovecs, offset, write);
    // Waited for even when the head failed: the helper may still be using the memory.
    match answer.recv() {
        Ok(result) => head.and(result),
        // The helper ended with the job unanswered (it could not start, or it panicked):
        // the tail is done here, again if need be (the same bytes to the same place).
        Err(_) => head.and_then(|()| transfer_all(fd, &mut tail, tail_offset, write)),
    }
}

/// Cut `iovecs` after `at` bytes; returns the rest (an iovec that straddles `at` is split).
fn split_off(iovecs: &mut Vec<libc::iovec>, at: usize) -> Vec<libc::iovec> {
    let mut before = 0usize;
    for i in 0..iovecs.len() {
        let Some(iov) = iovecs.get_mut(i) else { break };
        if before + iov.iov_len <= at {
            before += iov.iov_len;
            continue;
        }
        let keep = at - before;
        let mut rest = iovecs.split_off(i);
        if keep > 0 {
            if let Some(first) = rest.first_mut() {
                iovecs.push(libc::iovec {
                    iov_base: first.iov_base,
                    iov_len: keep,
                });
                // SAFETY: `keep` is less than this buffer's length, so the new base stays
                // inside it.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(keep) }.cast();
                first.iov_len -= keep;
            }
        }
        return rest;
    }
    Vec::new()
}

/// The whole of `iovecs`, in as many calls as short transfers and `UIO_MAXIOV` need.
fn transfer_all(fd: RawFd, iovecs: &mut [libc::iovec], offset: u64, write: bool) -> io::Result<()> {
    let wanted: u64 = iovecs.iter().map(|v| v.iov_len as u64).sum();
    let mut done = 0u64;
    let mut iovecs = iovecs;
    while done < wanted {
        let count = iovecs.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        let at = (offset + done) as libc::off_t;
        // SAFETY: `transfer`'s caller promised that every iovec points into memory mapped
        // for this call and that `fd` is open; `count` is at most the vector's length.
        let n = unsafe {
            if write {
                libc::pwritev(fd, iovecs.as_ptr(), count, at)
            } else {
                libc::preadv(fd, iovecs.as_ptr(), count, at)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the image is shorter than its size said",
            ));
        }
        done += n as u64;
        iovecs = advance(iovecs, n as usize);
    }
    Ok(())
}

/// Drop the first `n` bytes from `iovecs` (after a short transfer).
fn advance(iovecs: &mut [libc::iovec], mut n: usize) -> &mut [libc::iovec] {
    let mut first = 0;
    while let Some(iov) = iovecs.get_mut(first) {
        if n < iov.iov_len {
            // SAFETY: `n` is less than the buffer's length, so the new base stays inside it.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
            iov.iov_len -= n;
            break;
        }
        n -= iov.iov_len;
        first += 1;
    }
    iovecs.get_mut(first..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    fn iovecs(buffers: &mut [Vec<u8>]) -> Vec<libc::iovec> {
        buffers
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect()
    }

    /// The bytes `iovecs` point at, in order.
    fn gather(iovecs: &[libc::iovec]) -> Vec<u8> {
        iovecs
            .iter()
            .flat_map(|v| {
                // SAFETY: each iovec points into a live buffer of the test, v.iov_len long.
                unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) }.to_vec()
            })
            .collect()
    }

    #[test]
    fn a_split_keeps_every_byte_in_order_on_one_side_or_the_other() {
        let mut buffers: Vec<Vec<u8>> = [3000usize, 5000, 100]
            .iter()
            .scan(0u32, |next, &len| {
                let buffer = (*next..*next + len as u32)
                    .map(|i| (i % 253) as u8)
                    .collect();
                *next += len as u32;
                Some(buffer)
            })
            .collect();
        let whole: Vec<u8> = buffers.concat();
        for at in [0usize, 1, 2999, 3000, 3001, 8000, 8099, 8100] {
            let mut head = iovecs(&mut buffers);
            let tail = split_off(&mut head, at);
            assert!(
                head.iter().chain(&tail).all(|i| i.iov_len > 0),
                "an empty iovec at {at}"
            );
            let (front, back) = (gather(&head), gather(&tail));
            assert_eq!(front.len(), at, "split at {at}");
            assert_eq!([front, back].concat(), whole, "split at {at}");
        }
    }

    /// A file of `len` zero bytes, removed when the returned `TempFile` drops.
    fn temp_file(name: &str, len: usize) -> (TempFile, std::fs::File) {
        let temp =
            TempFile::new_with_prefix(std::env::temp_dir().join(format!("minivmm-blkio-{name}-")))
                .unwrap();
        let file = temp.as_file().try_clone().unwrap();
        file.set_len(len as u64).unwrap();
        (temp, file)
    }

    #[test]
    fn a_large_transfer_shared_with_the_helper_lands_whole_and_reads_back() {
        use std::os::fd::AsRawFd;
        let (temp, file) = temp_file("helper", 1 << 20);
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let helper = {
            let ran = ran.clone();
            IoHelper::spawn("test-helper".into(), move || {
                ran.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .unwrap()
        };
        // 129 scattered buffers of 4000 bytes: the split falls inside one of them.
        let mut written: Vec<Vec<u8>> = (0..129u32).map(|i| vec![(i % 251) as u8; 4000]).collect();
        let total = 129 * 4000;
        assert!(total as u64 >= SPLIT_FROM);
        // SAFETY: the buffers live until after the call; the file is open.
        unsafe {
            transfer(
                file.as_raw_fd(),
                iovecs(&mut written),
                4096,
                true,
                Some(&helper),
            )
        }
        .unwrap();
        assert!(
            ran.load(std::sync::atomic::Ordering::SeqCst),
            "the helper never started"
        );
        let on_disk = std::fs::read(temp.as_path()).unwrap();
        let expected: Vec<u8> = written.concat();
        assert_eq!(&on_disk[4096..4096 + total], &expected[..]);
        assert!(on_disk[..4096].iter().all(|&b| b == 0));
        let mut read: Vec<Vec<u8>> = (0..129).map(|_| vec![0u8; 4000]).collect();
        // SAFETY: as above.
        unsafe {
            transfer(
                file.as_raw_fd(),
                iovecs(&mut read),
                4096,
                false,
                Some(&helper),
            )
        }
        .unwrap();
        assert_eq!(read.concat(), expected);
    }

    #[test]
    fn a_helper_that_could_not_start_leaves_the_whole_transfer_to_the_caller() {
        use std::os::fd::AsRawFd;
        let (temp, file) = temp_file("nohelper", 1 << 20);
        let helper = IoHelper::spawn("test-helper".into(), || Err("refused".into())).unwrap();
        // Let the helper end, so the job is refused or dropped unanswered.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut data = vec![vec![7u8; 256 << 10]];
        // SAFETY: the buffer lives until after the call; the file is open.
        let result =
            unsafe { transfer(file.as_raw_fd(), iovecs(&mut data), 0, true, Some(&helper)) };
        result.unwrap();
        let on_disk = std::fs::read(temp.as_path()).unwrap();
        assert!(on_disk[..256 << 10].iter().all(|&b| b == 7));
    }

    #[test]
    fn a_transfer_past_the_end_of_a_short_file_reads_as_an_error() {
        use std::os::fd::AsRawFd;
        let (_temp, file) = temp_file("short", 4096);
        let mut data = vec![vec![0u8; 8192]];
        // SAFETY: the buffer lives until after the call; the file is open.
        let result = unsafe { transfer(file.as_raw_fd(), iovecs(&mut data), 0, false, None) };
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
