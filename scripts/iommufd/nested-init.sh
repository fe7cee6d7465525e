#!/bin/busybox sh
# /init of the outer guest in `scripts/test-iommufd.sh qemu`: this guest plays the host. It has
# QEMU's edu device behind an emulated VT-d, binds it to vfio-pci and then does what a launcher
# on a real host does (README, "`--host iommufd`"): opens /dev/iommu and the VFIO cdev once,
# starts the daemon and QEMU 10.2 with both open files, so QEMU's vfio-pci binds the device to
# the shared iommufd and the daemon programs it. The inner guest runs the `vfio` test of
# iommufd-guest-test with our daemon as its virtio-iommu: its MAP/UNMAP reach the emulated VT-d
# through the daemon, and edu's DMA proves them.
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
echo "IOMMUFD-TEST: kernel $(uname -r), mode qemu (QEMU + daemon in this guest), /init at $(cut -d' ' -f1 /proc/uptime)s"

passed=0 failed=0
check() { # check CONDITION-EXIT-STATUS TEXT
    if [ "$1" = 0 ]; then echo "PASS: $2"; passed=$((passed + 1)); else echo "FAIL: $2"; failed=$((failed + 1)); fi
}
finish() {
    echo "RESULT: nested-qemu: $passed passed, $failed failed"
    rc=1; [ "$failed" = 0 ] && [ "$passed" -gt 0 ] && rc=0
    echo "IOMMUFD-TEST-EXIT rc=$rc"
    poweroff -f
}

bdf=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && bdf=${d##*/}
done
[ -n "$bdf" ]; check $? "edu device found (${bdf:-none})"
[ -n "$bdf" ] || finish
echo vfio-pci >"/sys/bus/pci/devices/$bdf/driver_override"
echo "$bdf" >/sys/bus/pci/drivers_probe
vdev=$(ls "/sys/bus/pci/devices/$bdf/vfio-dev" 2>/dev/null)
[ -n "$vdev" ]; check $? "edu bound to vfio-pci: /dev/vfio/devices/${vdev:-none}"
[ -n "$vdev" ] || finish

# The launcher: one open file each, inherited by both processes as fds 3 and 4.
exec 3<>/dev/iommu 4<>"/dev/vfio/devices/$vdev"
RUST_LOG=info /vhost-device-iommu --socket-path /tmp/viommu.sock \
    --host iommufd --iommufd-fd 3 --vfio 8=fd:4 2>/tmp/daemon.log &
dpid=$!
i=0
while [ ! -S /tmp/viommu.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -S /tmp/viommu.sock ]; check $? "daemon listening on /tmp/viommu.sock"

# The inner guest: our IOMMU at 00:03.0, edu (vfio-pci) at 00:04.0 = endpoint 8 in the VIOT.
start=$(cut -d' ' -f1 /proc/uptime)
timeout 1200 /usr/bin/qemu-system-x86_64 -L /qemu-firmware \
    -accel tcg,tb-size=64 -M q35 -m 256 -smp 1 -nodefaults -display none -no-reboot \
    -serial file:/tmp/l2.log \
    -object memory-backend-memfd,id=mem,size=256M,share=on -machine memory-backend=mem \
    -object iommufd,id=iommufd0,fd=3 \
    -chardev socket,id=viommu,path=/tmp/viommu.sock \
    -device vhost-user-test-device-pci,chardev=viommu,virtio-id=23,num_vqs=2,config_size=40,vq_size=256,addr=03.0 \
    -device vfio-pci,id=hostdev0,iommufd=iommufd0,fd=4,addr=04.0 \
    -acpitable sig=VIOT,rev=0,oem_id=VIOMMU,oem_table_id=VIOMMUTB,data=/l2/viot.bin \
    -kernel /l2/bzImage -initrd /l2/initramfs.cpio \
    -append "console=ttyS0 panic=-1 iommufd_test=vfio iommufd_hwtype=0 iommufd.allow_unsafe_interrupts=1" \
    >/tmp/qemu.log 2>&1
qrc=$?
echo "IOMMUFD-TEST: inner QEMU exited with $qrc after $(cut -d' ' -f1 /proc/uptime)s (started at ${start}s)"
tr -d '\r' </tmp/l2.log | sed 's/^/[L2] /'
sed 's/^/[qemu] /' /tmp/qemu.log
kill "$dpid" 2>/dev/null
wait "$dpid" 2>/dev/null
sed 's/^/[daemon] /' /tmp/daemon.log

check "$qrc" "QEMU 10.2 (vfio-pci on the shared iommufd, our daemon as vhost-user IOMMU) ran the inner guest to poweroff"
l2=$(tr -d '\r' </tmp/l2.log)
npass=$(echo "$l2" | grep -c '^PASS: ')
echo "$l2" | grep -q '^FAIL: '; nofail=$((!$?))
echo "$l2" | grep -q '^RESULT: .*, 0 failed$'; check $? "inner guest: $npass checks passed, none failed (MAP -> edu DMA, UNMAP -> DMA blocked, bypass, blocked, rebind)"
check "$nofail" "inner guest printed no FAIL line"
echo "$l2" | grep -q '^IOMMUFD-TEST-EXIT rc=0$'; check $? "inner guest test program exited 0"
grep -q 'bound by the VMM' /tmp/daemon.log; check $? "the daemon saw QEMU's bind of the shared device file and took over"
grep -q 'guest memory mapped at IOVA = GPA' /tmp/daemon.log; check $? "the daemon mapped the inner guest's RAM into its master IOAS"
grep -qE '(ERROR|panicked)' /tmp/daemon.log; check $((!$?)) "no error in the daemon log"
finish
