//! Pure data builders for a minivmm guest: no KVM, no file descriptors.
//!
//! Everything here turns a description of the guest into bytes (or plain structs) that the
//! VMM copies into guest memory, so it is all unit-tested against byte buffers.

#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod acpi;
pub mod boot_params;
pub mod e820;
pub mod layout;
pub mod le;
pub mod option_rom;
pub mod reset_stub;
pub mod setup_data;
