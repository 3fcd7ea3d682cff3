//! Integration-test support for minivmm.
//!
//! [`lab`] runs the nested lab: a Linux L1 guest under QEMU TCG (which emulates AMD SVM, so
//! L1 has a working /dev/kvm) in which minivmm boots a Linux L2 guest.

pub mod lab;
