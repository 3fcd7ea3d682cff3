//! MSI-X for an emulated virtio function: which vectors the guest has programmed and
//! unmasked, and the pending bits of those it has not. The VMM behind [`MsiSink`] turns a
//! vector into an interrupt (a KVM route and an irqfd); this type decides when to.

use std::sync::Mutex;

use crate::pci::msi::MsiVector;

/// "No vector" in the common configuration's vector registers.
pub const NO_VECTOR: u16 = 0xffff;

/// What sends a function's MSI-X messages into the guest.
pub trait MsiSink: Send + Sync {
    /// Vector `index` now carries `message` (called when the guest reprograms it).
    fn route(&self, index: u16, message: MsiVector);
    /// Send vector `index`'s message now.
    fn trigger(&self, index: u16);
}

#[derive(Debug, Default)]
struct Vectors {
    /// The table as last seen, `None` while MSI-X is disabled.
    table: Option<Vec<MsiVector>>,
    pending: Vec<bool>,
}

/// The MSI-X state shared by the function (which the guest programs) and the I/O thread
/// (which signals).
pub struct Interrupts {
    sink: Box<dyn MsiSink>,
    vectors: Mutex<Vectors>,
}

impl std::fmt::Debug for Interrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupts").finish_non_exhaustive()
    }
}

impl Interrupts {
    /// Interrupts for `count` vectors, sent through `sink`.
    pub fn new(sink: Box<dyn MsiSink>, count: usize) -> Self {
        Interrupts {
            sink,
            vectors: Mutex::new(Vectors {
                table: None,
                pending: vec![false; count],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vectors> {
        self.vectors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guest changed the table or the capability: `table` is the new state (`None`:
    /// MSI-X disabled). Changed messages are routed again; a pending vector that is now
    /// unmasked is sent.
    pub fn update(&self, table: Option<Vec<MsiVector>>) {
        let mut vectors = self.lock();
        if let Some(new) = &table {
            for (i, vector) in new.iter().enumerate() {
                let old = vectors.table.as_ref().and_then(|t| t.get(i));
                // Routed again when it becomes usable: newly enabled, unmasked, or moved.
                let changed = old.is_none_or(|o| {
                    o.masked || (o.address, o.data) != (vector.address, vector.data)
                });
                if vector.masked || !changed {
                    continue;
                }
                self.sink.route(i as u16, *vector);
                if let Some(pending) = vectors.pending.get_mut(i).filter(|p| **p) {
                    *pending = false;
                    self.sink.trigger(i as u16);
                }
            }
        }
        vectors.table = table;
    }

    /// Signal vector `index` (a used buffer or a configuration change). Masked: it is
    /// held pending. MSI-X disabled or no such vector: dropped (the guest chose no
    /// interrupt).
    pub fn signal(&self, index: u16) {
        if index == NO_VECTOR {
            return;
        }
        let mut vectors = self.lock();
        let Some(table) = &vectors.table else {
            return;
        };
        match table.get(usize::from(index)) {
            Some(v) if !v.masked => self.sink.trigger(index),
            Some(_) => {
                if let Some(p) = vectors.pending.get_mut(usize::from(index)) {
                    *p = true;
                }
            }
            None => {}
        }
    }

    /// The pending-bit array's qword `qword`.
    pub fn pending_bits(&self, qword: usize) -> u64 {
        let vectors = self.lock();
        vectors
            .pending
            .iter()
            .enumerate()
            .skip(qword * 64)
            .take(64)
            .filter(|(_, p)| **p)
            .fold(0u64, |bits, (i, _)| bits | (1 << (i % 64)))
    }

    /// Forget pending vectors (device reset).
    pub fn clear_pending(&self) {
        self.lock().pending.iter_mut().for_each(|p| *p = false);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[derive(Default)]
    struct Record {
        events: Mutex<Vec<String>>,
    }

    impl MsiSink for Arc<Record> {
        fn route(&self, index: u16, message: MsiVector) {
            self.events
                .lock()
                .unwrap()
                .push(format!("route {index} {:#x}", message.data));
        }
        fn trigger(&self, index: u16) {
            self.events.lock().unwrap().push(format!("trigger {index}"));
        }
    }

    fn vector(data: u32, masked: bool) -> MsiVector {
        MsiVector {
            address: 0xfee0_0000,
            data,
            masked,
        }
    }

    fn taken(record: &Record) -> Vec<String> {
        std::mem::take(&mut *record.events.lock().unwrap())
    }

    #[test]
    fn a_masked_vector_is_held_pending_and_sent_when_unmasked() {
        let record = Arc::new(Record::default());
        let interrupts = Interrupts::new(Box::new(record.clone()), 2);
        // Disabled: signals are dropped.
        interrupts.signal(1);
        assert!(taken(&record).is_empty());
        interrupts.update(Some(vec![vector(0x30, false), vector(0x31, true)]));
        assert_eq!(taken(&record), ["route 0 0x30"]);
        interrupts.signal(0);
        interrupts.signal(1);
        assert_eq!(taken(&record), ["trigger 0"]);
        assert_eq!(interrupts.pending_bits(0), 0b10);
        interrupts.update(Some(vec![vector(0x30, false), vector(0x31, false)]));
        assert_eq!(taken(&record), ["route 1 0x31", "trigger 1"]);
        assert_eq!(interrupts.pending_bits(0), 0);
        // No vector chosen, or one the table does not have: nothing.
        interrupts.signal(NO_VECTOR);
        interrupts.signal(7);
        assert!(taken(&record).is_empty());
    }

    #[test]
    fn a_reprogrammed_vector_is_routed_again() {
        let record = Arc::new(Record::default());
        let interrupts = Interrupts::new(Box::new(record.clone()), 1);
        interrupts.update(Some(vec![vector(0x30, false)]));
        interrupts.update(Some(vec![vector(0x30, false)]));
        interrupts.update(Some(vec![vector(0x41, false)]));
        assert_eq!(taken(&record), ["route 0 0x30", "route 0 0x41"]);
    }
}
