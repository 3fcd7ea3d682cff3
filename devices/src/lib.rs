//! Device emulation for minivmm.
//!
//! Every device sits behind [`bus::BusDevice`]: the vCPU loop hands it port-I/O and MMIO
//! accesses and gets back an [`bus::Effect`] when the access changes something outside the
//! device (the guest asked to power off, say). Devices never call KVM themselves.

#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod bus;
pub mod exit_device;
pub mod i8042;
pub mod pci;
pub mod power;
pub mod serial;
pub mod virtio;
