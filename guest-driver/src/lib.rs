//! no_std virtio-iommu guest driver.
#![no_std]
