//! Putting a vCPU into the state the 64-bit Linux boot protocol expects.

pub mod cpuid;
pub mod msrs;
pub mod regs;
pub mod snapshot;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vCPU ioctl failed.
    #[error("vCPU {0}: {1} failed: {2}")]
    Ioctl(usize, &'static str, kvm_ioctls::Error),
    /// A VM ioctl failed.
    #[error("{0} failed: {1}")]
    Vm(&'static str, kvm_ioctls::Error),
    /// Writing boot structures into guest memory failed.
    #[error("cannot write the boot {0} into guest memory")]
    GuestMemory(&'static str),
}
