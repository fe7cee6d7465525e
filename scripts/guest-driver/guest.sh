#!/bin/sh
# Guest side of scripts/test-guest-driver.sh (run by the initramfs /init as /test.sh).
# Runs the user-space virtio-iommu driver /bin/guest-pci-driver with the device kind from the
# kernel command line: gpd.device=qemu|daemon, and gpd.hold=1 for the host-side DMA check.
# Its exit status becomes the rc of the end marker.
dev=$(sed -n 's/.*gpd\.device=\([a-z]*\).*/\1/p' /proc/cmdline)
hold=
grep -q 'gpd\.hold=1' /proc/cmdline && hold=--hold
for d in /sys/bus/pci/devices/*; do
    drv=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    echo "GUEST-PCI-INFO: pci ${d##*/} $(cat "$d/vendor"):$(cat "$d/device") driver=${drv:--}"
done
RUST_LOG=${RUST_LOG:-warn} /bin/guest-pci-driver --device "$dev" $hold
