#!/usr/bin/env bash
# Boot the test kernel (scripts/build-test-kernel.sh) under QEMU/TCG with a tiny busybox initramfs
# and run scripts/test-kernel/iommufd_smoke.c inside the guest.
#
# Usage: scripts/smoke-test-kernel.sh [MODE...]      MODE: mock | intel | virtio | all (default: all)
#   mock    plain q35; iommufd selftest mock driver (IOMMU_TEST_CMD): IOAS_ALLOC, MOCK_DOMAIN,
#           GET_HW_INFO, IOAS_MAP + MD_CHECK_MAP, IOAS_UNMAP, IOMMU_DESTROY
#   intel   + -device intel-iommu,intremap=on -device edu, guest intel_iommu=on: the mock test,
#           then edu is bound to vfio-pci via driver_override and driven through the VFIO cdev +
#           iommufd (BIND, ATTACH to an IOAS, MAP, edu DMA round trip, UNMAP, DETACH)
#   virtio  same as intel but with QEMU's built-in -device virtio-iommu-pci (guest virtio-iommu
#           driver; needs iommufd.allow_unsafe_interrupts=1 because x86 has no IRQ remapping there)
#
# Exit status 0 only if every selected boot printed PASS lines, no FAIL line and a
# "RESULT: ...: N passed, 0 failed" line for each test program run. Serial logs are kept in
# $VIRTIO_IOMMU_CACHE/smoke/serial-<mode>.log.
#
# QEMU: $QEMU if set, else the cached QEMU 10.2.2 (scripts/qemu.sh, built on first use).
# ALWAYS TCG: /dev/kvm on these hosts is a software KVM (PVM) on which upstream guest kernels
# die with "emulation failure".
set -euo pipefail
# The whole script is one compound command, parsed before it runs: editing this file while
# it runs cannot change what the running instance executes.
{

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
TIMEOUT=${SMOKE_TIMEOUT:-180}

MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(all)
if [ "${MODES[*]}" = all ]; then MODES=(mock intel virtio); fi
for m in "${MODES[@]}"; do
  case $m in mock|intel|virtio) ;; *) die "unknown mode '$m' (mock|intel|virtio|all)";; esac
done

T0=$(date +%s.%N)

# ---------------------------------------------------------------- kernel --------------------
K=$("$HERE/build-test-kernel.sh" | tail -n1)
[ -f "$K/bzImage" ] || die "build-test-kernel.sh did not produce $K/bzImage"
log "kernel: $K ($(sed -n 's/^debian-source=//p' "$K/source-version"))"

# ---------------------------------------------------------------- host tools ----------------
apt_ensure gcc libc6-dev
QEMU_CMD=("${QEMU:-$HERE/qemu.sh}")
log "qemu: ${QEMU_CMD[*]} ($("${QEMU_CMD[@]}" --version | head -n1))"
BB=$(busybox_static)

# ---------------------------------------------------------------- guest programs + initramfs -
W=$VIRTIO_IOMMU_CACHE/smoke
mkdir -p "$W"
gcc -static -O2 -Wall -Wno-unused-result -I "$K/usr/include" -I "$K/selftest" \
  -o "$W/iommufd_smoke" "$HERE/test-kernel/iommufd_smoke.c"

cat >"$W/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev   # DEVTMPFS_MOUNT does not apply to an initramfs root
echo "SMOKE: kernel $(uname -r), /init at uptime $(cut -d' ' -f1 /proc/uptime)s"
ls -l /dev/iommu
/iommufd_smoke mock
if grep -q 'smoke.vfio=1' /proc/cmdline; then
  found=0
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] || continue
    found=1
    bdf=${d##*/}
    grp=$(readlink "$d/iommu_group"); grp=${grp##*/}
    echo "EDU: $bdf iommu_group=${grp:-none}"
    echo vfio-pci >"$d/driver_override"
    echo "$bdf" >/sys/bus/pci/drivers_probe
    drv=$(readlink "$d/driver"); drv=${drv##*/}
    echo "EDU: driver=${drv:-none} vfio-dev=$(ls "$d/vfio-dev" 2>/dev/null)"
    echo "EDU: /dev/vfio: $(ls /dev/vfio | tr '\n' ' ') devices/: $(ls /dev/vfio/devices 2>/dev/null | tr '\n' ' ')"
    n=$(ls "$d/vfio-dev" 2>/dev/null | head -n1)
    if [ -n "$n" ]; then
      /iommufd_smoke vfio "/dev/vfio/devices/$n"
    else
      echo "FAIL: edu was not bound to vfio-pci (no vfio-dev)"
    fi
  done
  [ $found = 1 ] || echo "FAIL: no edu device (1234:11e8) found"
fi
echo "SMOKE: done at uptime $(cut -d' ' -f1 /proc/uptime)s"
poweroff -f
EOF

GEN=$K/bin/gen_init_cpio
[ -x "$GEN" ] || die "missing $GEN (rebuild the test kernel)"
# shellcheck source=test-kernel/initramfs.sh
. "$HERE/test-kernel/initramfs.sh"
test_kernel_initramfs "$GEN" "$BB" "$W/init" "$W/iommufd_smoke" /iommufd_smoke "$W"
log "initramfs: $W/initramfs.cpio ($(stat -c %s "$W/initramfs.cpio") bytes)"

# ---------------------------------------------------------------- boot -----------------------
rc_all=0
for m in "${MODES[@]}"; do
  extra=() append="console=ttyS0 panic=-1"
  case $m in
    mock)   ;;
    intel)  # shellcheck disable=SC2054  # the commas belong to QEMU's -device syntax
            extra=(-device intel-iommu,intremap=on -device edu)
            append="$append intel_iommu=on smoke.vfio=1" ;;
    virtio) extra=(-device virtio-iommu-pci -device edu)
            append="$append iommufd.allow_unsafe_interrupts=1 smoke.vfio=1" ;;
  esac
  L=$W/serial-$m.log
  log "booting ($m): ${QEMU_CMD[*]} -accel tcg -M q35 -m 512 ${extra[*]} -append '$append'"
  t=$(date +%s.%N)
  set +e
  timeout "$TIMEOUT" "${QEMU_CMD[@]}" -accel tcg -M q35 -m 512 -nodefaults -display none -serial stdio -no-reboot \
    "${extra[@]}" -kernel "$K/bzImage" -initrd "$W/initramfs.cpio" -append "$append" \
    </dev/null >"$L" 2>&1
  qrc=$?
  set -e
  tr -d '\r' <"$L" >"$L.tmp" && mv "$L.tmp" "$L"
  secs=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  npass=$(grep -c '^PASS: ' "$L" || true)
  nfail=$(grep -c '^FAIL: ' "$L" || true)
  nres=$(grep -c '^RESULT: ' "$L" || true)
  nbad=$(grep '^RESULT: ' "$L" | grep -vc ', 0 failed$' || true)
  want_res=1; [ "$m" = mock ] || want_res=2
  { grep -E '^(PASS|FAIL|RESULT|SMOKE|EDU): ' "$L" || true; } | sed "s/^/  [$m] /" >&2
  if [ "$qrc" -ne 0 ] || [ "$npass" -eq 0 ] || [ "$nfail" -ne 0 ] || [ "$nres" -lt "$want_res" ] \
     || [ "$nbad" -ne 0 ]; then
    log "FAILED ($m): qemu rc=$qrc, $npass PASS, $nfail FAIL, $nres RESULT lines; last lines of $L:"
    tail -n 25 "$L" >&2
    rc_all=1
  else
    log "OK ($m): $npass PASS, 0 FAIL, qemu exited 0 after ${secs}s (serial log: $L)"
  fi
done

log "total $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
if [ $rc_all -eq 0 ]; then
  echo "smoke-test-kernel: PASS (${MODES[*]})"
else
  echo "smoke-test-kernel: FAIL (${MODES[*]})"
fi
exit $rc_all
}
