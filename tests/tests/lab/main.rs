//! Tests in the nested lab: minivmm boots Linux inside an L1 guest that runs under QEMU TCG.
//! Each takes minutes and needs root, QEMU and `tests/lab/prepare`: run them with `tests/run`.
//! A missing prerequisite fails the test with what to run; it never passes.
//!
//! L1 runs on TCG's emulation of AMD SVM, which under QEMU 7.2 broke about every other
//! second guest in one L1; the lab needs QEMU 10 (see `tests/lab/prepare`). A scenario runs
//! again only when L1 itself died (its kernel crashed or locked up, or L1 froze: in its own
//! boot, or later with its heartbeat stopped) or the reference guest QEMU ran beside
//! minivmm's died before /init, and the benchmarks also when the only miss is a timing
//! target; a failed check of a minivmm guest fails the test at once. Every failed attempt
//! is printed in full (`harness`; docs/ARCHITECTURE.md, "The lab's QEMU").

mod benches;
mod gpu_machine;
mod guests;
mod harness;
mod host;
mod vbios;
