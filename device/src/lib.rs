//! vhost-user virtio-iommu device: the semantics engine, host IOMMU backends and the daemon.
