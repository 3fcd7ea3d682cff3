//! VFIO ioctl request numbers minivmm issues itself, beside those vfio-ioctls issues for it:
//! the device resets, and what the seccomp filters must allow by number (one list, so the
//! filters and the calls cannot disagree). From `include/uapi/linux/vfio.h`: type `;`,
//! numbers from `VFIO_BASE` (100), no payload in the encoding.

use vmm_sys_util::ioctl_io_nr;

/// `VFIO_TYPE`: the ioctl type character `;`.
const VFIO_TYPE: u32 = b';' as u32;
/// `VFIO_BASE`.
const VFIO_BASE: u32 = 100;

ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO_TYPE, VFIO_BASE + 5);
ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, VFIO_BASE + 11);
ioctl_io_nr!(
    VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
    VFIO_TYPE,
    VFIO_BASE + 12
);
ioctl_io_nr!(VFIO_DEVICE_PCI_HOT_RESET, VFIO_TYPE, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE, VFIO_BASE + 14);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernels() {
        // _IO(';', 100 + n): 0x3b00 | (100 + n).
        assert_eq!(VFIO_GROUP_UNSET_CONTAINER(), 0x3b69);
        assert_eq!(VFIO_DEVICE_GET_INFO(), 0x3b6b);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(), 0x3b70);
        assert_eq!(VFIO_DEVICE_PCI_HOT_RESET(), 0x3b71);
        assert_eq!(VFIO_IOMMU_MAP_DMA(), 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA(), 0x3b72);
    }
}
