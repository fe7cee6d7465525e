#!/usr/bin/env bash
# The iommufd host backend against real kernels: boots the IOMMUFD test kernel
# (scripts/build-test-kernel.sh) under QEMU/TCG and runs tests/src/bin/iommufd-guest-test.rs,
# a static binary linked with the daemon's backend, inside the guest.
#
# Usage: scripts/test-iommufd.sh [MODE...]   MODE: mock | vfio | virtio | eperm | all (default: all)
#   mock  plain q35; the kernel's iommufd selftest mock IOMMU (IOMMU_TEST_CMD): flat MAP/UNMAP
#         seen in the mock page table, bypass, nested HWPT, HWPT_INVALIDATE, TRIGGER_IOPF ->
#         page request -> PAGE_RESP, stale cookies, object cleanup
#   vfio  -device intel-iommu,intremap=on + QEMU's edu bound to vfio-pci (guest intel_iommu=on):
#         real DMA through a guest MAP, failing after UNMAP (plus a DMAR fault in the kernel
#         log), bypass, blocked, NEST_PARENT refused with EOPNOTSUPP and reported, bind errors
#   virtio  the same DMA test behind QEMU's virtio-iommu (guest iommufd.allow_unsafe_interrupts=1,
#         x86 has no interrupt remapping there)
#   eperm   virtio-iommu without that parameter: the bind must fail with EPERM and the hint
#
# Exit status 0 only if every boot printed PASS lines, no FAIL line, a
# "RESULT: ...: N passed, 0 failed" line and the guest program exited 0.
#
# Cost: the test kernel is built once (cold: about 4 min on 2 cores, up to ~13 min on a slow or
# busy machine, plus a 156 MiB source download; cached afterwards: < 1 s). The static guest
# binary is built once into $CACHE/iommufd/target (cold: a few minutes; incremental: seconds).
# Each boot takes a few seconds under TCG. Serial logs: $CACHE/iommufd/serial-<mode>.log.
# QEMU and busybox come from scripts/smoke-test-kernel.sh's setup (run automatically if missing).
set -euo pipefail
{

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE_ROOT=${VIRTIO_IOMMU_CACHE:-${VIOMMU_CACHE_DIR:-$HOME/.cache/virtio-iommu}}
TIMEOUT=${IOMMUFD_TEST_TIMEOUT:-300}
W=${IOMMUFD_WORK_DIR:-$CACHE_ROOT/iommufd}
log() { printf '[test-iommufd] %s\n' "$*" >&2; }
die() { printf '[test-iommufd] ERROR: %s\n' "$*" >&2; exit 1; }

MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(all)
if [ "${MODES[*]}" = all ]; then MODES=(mock vfio virtio eperm); fi
for m in "${MODES[@]}"; do
  case $m in mock|vfio|virtio|eperm) ;; *) die "unknown mode '$m' (mock|vfio|virtio|eperm|all)";; esac
done
T0=$(date +%s)

# ---------------------------------------------------------------- kernel, QEMU, busybox -----
K=$("$HERE/build-test-kernel.sh" | tail -n1)
[ -f "$K/bzImage" ] || die "build-test-kernel.sh did not produce $K/bzImage"
GEN=$K/bin/gen_init_cpio
[ -x "$GEN" ] || die "missing $GEN (rebuild the test kernel: FORCE=1 scripts/build-test-kernel.sh)"
BB=$CACHE_ROOT/busybox-static/bin/busybox
if ! command -v qemu-system-x86_64 >/dev/null || [ ! -x "$BB" ]; then
  log "QEMU or busybox missing: running scripts/smoke-test-kernel.sh mock to set them up"
  "$HERE/smoke-test-kernel.sh" mock >&2 || die "smoke-test-kernel.sh failed"
fi
QEMU=${QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null || die "$QEMU not found"
[ -x "$BB" ] || die "busybox not found at $BB"
log "kernel $K ($(sed -n 's/^debian-source=//p' "$K/source-version")), $("$QEMU" --version | head -n1)"

# ---------------------------------------------------------------- guest program -------------
mkdir -p "$W"
log "building the static guest test program (target dir $W/target)"
(cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release \
   --target x86_64-unknown-linux-gnu --target-dir "$W/target" \
   -p virtio-iommu-e2e --bin iommufd-guest-test >&2)
BIN=$W/target/x86_64-unknown-linux-gnu/release/iommufd-guest-test
[ -x "$BIN" ] || die "guest program not built: $BIN"
if ldd "$BIN" 2>&1 | grep -q '=>'; then die "$BIN is not static"; fi

# ---------------------------------------------------------------- initramfs ------------------
cat >"$W/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mode=$(sed -n 's/.*iommufd_test=\([a-z]*\).*/\1/p' /proc/cmdline)
hwtype=$(sed -n 's/.*iommufd_hwtype=\([0-9]*\).*/\1/p' /proc/cmdline)
echo "IOMMUFD-TEST: kernel $(uname -r), mode ${mode:-none}, /init at $(cut -d' ' -f1 /proc/uptime)s"
rc=1
case $mode in
  mock)
    RUST_LOG=info /iommufd-guest-test mock; rc=$? ;;
  vfio|eperm)
    bdf=
    for d in /sys/bus/pci/devices/*; do
      [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && bdf=${d##*/}
    done
    if [ -z "$bdf" ]; then
      echo "FAIL: no edu device (1234:11e8)"
    else
      echo vfio-pci >"/sys/bus/pci/devices/$bdf/driver_override"
      echo "$bdf" >/sys/bus/pci/drivers_probe
      if [ "$mode" = vfio ]; then
        RUST_LOG=info /iommufd-guest-test vfio "$bdf" "${hwtype:-1}"; rc=$?
      else
        RUST_LOG=info /iommufd-guest-test eperm "$bdf"; rc=$?
      fi
    fi ;;
  *) echo "FAIL: no iommufd_test= mode on the kernel command line" ;;
esac
echo "IOMMUFD-TEST-EXIT rc=$rc"
poweroff -f
EOF
# shellcheck source=test-kernel/initramfs.sh
. "$HERE/test-kernel/initramfs.sh"
test_kernel_initramfs "$GEN" "$BB" "$W/init" "$BIN" /iommufd-guest-test "$W"
log "initramfs: $W/initramfs.cpio ($(stat -c %s "$W/initramfs.cpio") bytes)"

# ---------------------------------------------------------------- boots -----------------------
rc_all=0
for m in "${MODES[@]}"; do
  extra=() append="console=ttyS0 panic=-1"
  # shellcheck disable=SC2054  # the commas belong to QEMU's -device syntax
  case $m in
    mock)   append="$append iommufd_test=mock" ;;
    vfio)   extra=(-device intel-iommu,intremap=on -device edu)
            append="$append iommufd_test=vfio iommufd_hwtype=1 intel_iommu=on" ;;
    virtio) extra=(-device virtio-iommu-pci -device edu)
            append="$append iommufd_test=vfio iommufd_hwtype=0 iommufd.allow_unsafe_interrupts=1" ;;
    eperm)  extra=(-device virtio-iommu-pci -device edu)
            append="$append iommufd_test=eperm" ;;
  esac
  L=$W/serial-$m.log
  log "booting ($m): $QEMU -accel tcg -M q35 -m 512 ${extra[*]} -append '$append'"
  t=$(date +%s)
  set +e
  timeout "$TIMEOUT" "$QEMU" -accel tcg -M q35 -m 512 -nographic -no-reboot \
    "${extra[@]}" -kernel "$K/bzImage" -initrd "$W/initramfs.cpio" -append "$append" \
    </dev/null >"$L" 2>&1
  qrc=$?
  set -e
  tr -d '\r' <"$L" >"$L.tmp" && mv "$L.tmp" "$L"
  npass=$(grep -c '^PASS: ' "$L" || true)
  nfail=$(grep -c '^FAIL: ' "$L" || true)
  nres=$(grep -c '^RESULT: .*, 0 failed$' "$L" || true)
  exit_ok=$(grep -c '^IOMMUFD-TEST-EXIT rc=0$' "$L" || true)
  { grep -E '^(PASS|FAIL|RESULT|IOMMUFD-TEST)' "$L" || true; } | sed "s/^/  [$m] /" >&2
  # Every kernel object must have been destroyed cleanly (the backend warns otherwise).
  nleak=$(grep -acE 'WARN.*(destroying|detach on removal)' "$L" || true)
  dmar_ok=1
  if [ "$m" = vfio ]; then
    # The blocked DMAs must show up as DMA-remapping faults in the guest kernel's log.
    nfault=$(grep -cE 'DMAR: \[DMA (Read|Write)' "$L" || true)
    log "[$m] DMAR fault lines in the guest kernel log: $nfault"
    [ "$nfault" -gt 0 ] || dmar_ok=0
  fi
  if [ "$qrc" -ne 0 ] || [ "$npass" -eq 0 ] || [ "$nfail" -ne 0 ] || [ "$nres" -ne 1 ] \
     || [ "$exit_ok" -ne 1 ] || [ "$dmar_ok" -ne 1 ] || [ "$nleak" -ne 0 ]; then
    log "FAILED ($m): qemu rc=$qrc, $npass PASS, $nfail FAIL, clean RESULT=$nres, exit ok=$exit_ok, DMAR faults ok=$dmar_ok, failed destroys=$nleak; last lines of $L:"
    tail -n 30 "$L" >&2
    rc_all=1
  else
    log "OK ($m): $npass PASS, 0 FAIL in $(( $(date +%s) - t ))s (serial log: $L)"
  fi
done

log "total $(( $(date +%s) - T0 ))s"
if [ $rc_all -eq 0 ]; then echo "test-iommufd: PASS (${MODES[*]})"; else echo "test-iommufd: FAIL (${MODES[*]})"; fi
exit $rc_all
}
