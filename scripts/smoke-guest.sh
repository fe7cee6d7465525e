#!/usr/bin/env bash
# Smoke test of the guest infrastructure: boots the Debian 6.12 guest kernel
# under the cached QEMU 10.2.2 (TCG, q35) with QEMU's own virtio-iommu-pci,
# plus a virtio-net-pci and an e1000e NIC joined on one QEMU hub and an edu
# device, and checks from the serial log that the virtio_iommu driver bound,
# that the PCI endpoints got IOMMU groups and that the two NICs can exchange
# ARP packets (DMA through the IOMMU), and that binding the edu device to
# vfio-pci gives it a group and /dev/vfio/N. Also checks that
# vhost-user-test-device-pci is creatable.
# Exit status 0 only if all checks pass. Prints the serial log path on stdout.
# Env: VIRTIO_IOMMU_CACHE, SMOKE_TIMEOUT (s, default 180), VERBOSE=1 (dump log).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"

"$HERE/build-qemu.sh" >/dev/null
GUEST=$("$HERE/guest-kernel.sh")
WORK=$VIRTIO_IOMMU_CACHE/smoke
mkdir -p "$WORK"
with_lock smoke-guest
LOG=$WORK/serial.log
QLOG=$WORK/qemu.log

"$HERE/qemu.sh" -device vhost-user-test-device-pci,help >"$WORK/vhost-user-test-device.help" 2>&1 \
    || { cat "$WORK/vhost-user-test-device.help" >&2; die "vhost-user-test-device-pci is not creatable"; }
grep -q 'chardev' "$WORK/vhost-user-test-device.help" \
    || die "unexpected vhost-user-test-device-pci,help output"
log "vhost-user-test-device-pci is creatable"

cat >"$WORK/test.sh" <<'TEST'
#!/bin/sh
# Guest side of smoke-guest.sh
fail=0
echo "SMOKE: kernel $(uname -r)"
echo "SMOKE: --- dmesg (iommu) ---"
dmesg | grep -iE 'iommu|virtio' | sed 's/^/SMOKE-DMESG: /'
drv=/sys/bus/virtio/drivers/virtio_iommu
bound=$(ls -d "$drv"/virtio* 2>/dev/null | xargs -n1 basename 2>/dev/null | tr '\n' ' ')
if [ -n "$bound" ]; then
    echo "SMOKE: virtio_iommu driver bound to: $bound"
else
    echo "SMOKE: virtio_iommu driver NOT bound"; fail=1
fi
echo "SMOKE: --- iommu groups ---"
ngroups=0
for g in /sys/kernel/iommu_groups/*; do
    [ -d "$g/devices" ] || continue
    ngroups=$((ngroups + 1))
    echo "SMOKE-GROUP0: ${g##*/}: $(ls "$g/devices" | tr '\n' ' ')"
done
echo "SMOKE: iommu groups: $ngroups"
[ "$ngroups" -gt 0 ] || fail=1
echo "SMOKE: --- pci devices ---"
for d in /sys/bus/pci/devices/*; do
    drvname=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    grp=$(basename "$(readlink "$d/iommu_group" 2>/dev/null)" 2>/dev/null)
    echo "SMOKE-PCI: ${d##*/} $(cat "$d/vendor"):$(cat "$d/device") driver=${drvname:--} group=${grp:--}"
done
echo "SMOKE: --- nic endpoint test ---"
for i in /sys/class/net/*; do
    n=${i##*/}; [ "$n" = lo ] && continue
    echo "SMOKE-NIC: $n driver=$(basename "$(readlink "$i/device/driver")") dev=$(basename "$(readlink "$i/device")")"
done
# Both NICs sit on the same QEMU hub. An ARP duplicate-address probe
# (sender IP 0.0.0.0, so Linux answers it even though the other address is
# local too) from one NIC must be answered by the other: TX and RX DMA
# through the IOMMU on both NICs.
nics=$(ls /sys/class/net | grep -v '^lo$' | tr '\n' ' ')
set -- $nics
if [ $# -ge 2 ]; then
    a=$1 b=$2
    ip link set lo up
    ip addr add 10.99.0.1/24 dev "$a"; ip link set "$a" up
    ip addr add 10.99.0.2/24 dev "$b"; ip link set "$b" up
    for t in $(seq 50); do
        [ "$(cat /sys/class/net/$a/carrier 2>/dev/null)$(cat /sys/class/net/$b/carrier 2>/dev/null)" = 11 ] && break
        sleep 0.2
    done
    echo "SMOKE: carrier $a=$(cat /sys/class/net/$a/carrier) $b=$(cat /sys/class/net/$b/carrier)"
    arp_ok() { # from-dev to-ip
        for try in 1 2 3 4 5; do
            arping -D -c 1 -w 2 -I "$1" "$2" >/tmp/arping.out 2>&1
            grep -q 'Received 1 response' /tmp/arping.out && return 0
        done
        return 1
    }
    for dir in "$a 10.99.0.2 $b" "$b 10.99.0.1 $a"; do
        set -- $dir
        if arp_ok "$1" "$2"; then
            echo "SMOKE: nic dma: ARP $1 -> $3 OK: $(grep -m1 reply /tmp/arping.out)"
        else
            echo "SMOKE: nic dma: ARP $1 -> $3 FAILED"; sed 's/^/SMOKE-ARPING: /' /tmp/arping.out; fail=1
        fi
    done
    grep -E "^ *(eth[0-9]+):" /proc/net/dev | sed 's/^/SMOKE-NETDEV: /'
else
    echo "SMOKE: fewer than two NICs found: $nics"; fail=1
fi
# A device without a driver has no IOMMU group until a driver binds; bind
# the edu device (1234:11e8) to vfio-pci and check that it gets one.
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x1234:0x11e8 ] || continue
    echo vfio-pci >"$d/driver_override"
    echo "${d##*/}" >/sys/bus/pci/drivers_probe
    grp=$(basename "$(readlink "$d/iommu_group" 2>/dev/null)" 2>/dev/null)
    drvname=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    if [ "$drvname" = vfio-pci ] && [ -n "$grp" ] && [ -e "/dev/vfio/$grp" ]; then
        echo "SMOKE: edu ${d##*/} bound to vfio-pci, iommu group $grp, /dev/vfio/$grp present"
    else
        echo "SMOKE: edu ${d##*/} vfio-pci bind FAILED (driver=${drvname:--} group=${grp:--})"; fail=1
    fi
done
echo "SMOKE: --- iommu groups after binding ---"
for g in /sys/kernel/iommu_groups/*; do
    [ -d "$g/devices" ] && echo "SMOKE-GROUP: ${g##*/}: $(ls "$g/devices" | tr '\n' ' ')"
done
if dmesg | grep -qiE 'virtio_iommu.*(fault|error)|iommu fault'; then
    echo "SMOKE: IOMMU faults reported"; dmesg | grep -iE 'fault' | sed 's/^/SMOKE-FAULT: /'; fail=1
fi
[ $fail = 0 ] && echo "SMOKE-RESULT: PASS" || echo "SMOKE-RESULT: FAIL"
exit $fail
TEST

INITRD=$("$HERE/mkinitramfs.sh" "$WORK/smoke.cpio.gz" --init-script "$WORK/test.sh")

rm -f "$LOG" "$QLOG"
log "booting guest (TCG), serial log: $LOG"
start=$SECONDS
rc=0
timeout "${SMOKE_TIMEOUT:-180}" "$HERE/qemu.sh" \
    -accel tcg -M q35 -m 512 -smp 1 -nodefaults -display none -no-reboot \
    -serial "file:$LOG" -monitor none \
    -kernel "$GUEST/vmlinuz" -initrd "$INITRD" \
    -append "console=ttyS0 panic=-1 loglevel=4" \
    -device virtio-iommu-pci \
    -netdev hubport,id=p0,hubid=0 -netdev hubport,id=p1,hubid=0 \
    -device virtio-net-pci,netdev=p0,mac=52:54:00:00:00:01 \
    -device e1000e,netdev=p1,mac=52:54:00:00:00:02 \
    -device edu \
    </dev/null >"$QLOG" 2>&1 || rc=$?
log "guest ran for $((SECONDS - start)) s (qemu rc=$rc)"
[ "${VERBOSE:-0}" = 1 ] && cat "$LOG" >&2
[ $rc -eq 0 ] || { cat "$QLOG" >&2; tail -n 30 "$LOG" >&2; die "QEMU failed or timed out (rc=$rc)"; }

# Parse the serial log.
tr -d '\r' <"$LOG" | grep -E '^SMOKE(-RESULT|-GROUP|-PCI|-NIC|-DMESG)?:|VIRTIO-IOMMU-GUEST-(START|END)' >&2 || true
grep -q '=== VIRTIO-IOMMU-GUEST-END rc=0 ===' "$LOG" || die "guest test did not finish with rc=0"
grep -q 'SMOKE-RESULT: PASS' "$LOG" || die "guest reported failure"
grep -q 'SMOKE: virtio_iommu driver bound to: virtio' "$LOG" || die "virtio_iommu not bound"
ngroups=$(grep -c '^SMOKE-GROUP: [0-9]*: .*0000:' "$LOG" || true)
[ "$ngroups" -gt 0 ] || die "no IOMMU groups with devices"
log "PASS: virtio_iommu bound, $ngroups IOMMU groups"
echo "$LOG"
