//! minivmm: a minimal KVM virtual machine monitor.
//!
//! This crate is the only one that holds KVM file descriptors. [`vm::Vm::build`] reads as the
//! boot recipe; [`vcpu`] is the exit loop; [`event_loop`] the main thread.

#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod cli;
pub mod coalesced;
pub mod config;
pub mod console;
pub mod console_uart;
pub mod cpu;
pub mod disks;
pub mod event_loop;
pub mod exit_stats;
pub mod gsi;
pub mod host;
pub mod hugepages;
pub mod loader;
pub mod memory;
pub mod passthrough;
pub mod reboot;
pub mod rom_tool;
pub mod sandbox;
pub mod supervisor;
pub mod terminal;
pub mod vcpu;
pub mod vcpu_threads;
pub mod vfio_requests;
pub mod vm;
