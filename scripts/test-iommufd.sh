#!/usr/bin/env bash
# The iommufd host backend against real kernels: boots the IOMMUFD test kernel
# (scripts/build-test-kernel.sh) under QEMU/TCG and runs guest-programs/src/bin/iommufd-guest-test/,
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
#   shared  intel-iommu + edu behind a root port; the program plays the VMM (binds edu to its
#         own iommufd, IOAS, attach) and the backend shares both open files (--iommufd-fd,
#         --vfio fd:N): waits for the bind, recovers the device ID, takes over, cleans up only
#         its own objects
#   qemu    nested: this guest (intel-iommu + edu behind a root port) runs the daemon and QEMU
#         10.2 the way the README's launcher does (one /dev/iommu and one VFIO cdev file shared:
#         `-object iommufd,fd=3`, `-device vfio-pci,iommufd=..,fd=4`, `--iommufd-fd 3 --vfio
#         8=fd:4`); the inner guest runs the `virtio`-style test with our daemon as its
#         virtio-iommu, so its MAP/UNMAP reach the emulated VT-d only through the daemon
#         (scripts/iommufd/nested-init.sh). TCG inside TCG: minutes, not seconds.
#
# Exit status 0 only if every boot printed PASS lines, no FAIL line, a
# "RESULT: ...: N passed, 0 failed" line and the guest program exited 0.
#
# Cost: the test kernel is built once (cold: about 4 min on 2 cores, up to ~13 min on a slow or
# busy machine, plus a 156 MiB source download; cached afterwards: < 1 s). The static guest
# binary is built once into $CACHE/iommufd/target (cold: a few minutes; incremental: seconds).
# Each boot takes 3-5 s under TCG; the nested qemu mode 4-5 min (+ a 50 MiB initramfs with
# QEMU, its libraries and firmware). Serial logs: $CACHE/iommufd/serial-<mode>.log.
# QEMU is the cached 10.2.2 build (scripts/qemu.sh); busybox is Debian's busybox-static
# (common.sh, fetched once).
set -euo pipefail
{

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
TIMEOUT=${IOMMUFD_TEST_TIMEOUT:-300}
W=${IOMMUFD_WORK_DIR:-$VIRTIO_IOMMU_CACHE/iommufd}

MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(all)
if [ "${MODES[*]}" = all ]; then MODES=(mock vfio virtio eperm shared qemu); fi
for m in "${MODES[@]}"; do
  case $m in mock|vfio|virtio|eperm|shared|qemu) ;; *) die "unknown mode '$m' (mock|vfio|virtio|eperm|shared|qemu|all)";; esac
done
T0=$(date +%s)

# ---------------------------------------------------------------- kernel, QEMU, busybox -----
K=$("$HERE/build-test-kernel.sh" | tail -n1)
[ -f "$K/bzImage" ] || die "build-test-kernel.sh did not produce $K/bzImage"
GEN=$K/bin/gen_init_cpio
[ -x "$GEN" ] || die "missing $GEN (rebuild the test kernel: FORCE=1 scripts/build-test-kernel.sh)"
BB=$(busybox_static)
# The cached QEMU 10.2.2 (built on first use) with Debian's firmware paths; $QEMU overrides.
if [ -z "${QEMU:-}" ]; then QEMU=$HERE/qemu.sh; fi
command -v "$QEMU" >/dev/null || die "$QEMU not found"
log "kernel $K ($(sed -n 's/^debian-source=//p' "$K/source-version")), $("$QEMU" --version | head -n1)"

# ---------------------------------------------------------------- guest program -------------
mkdir -p "$W"
log "building the static guest test program and daemon (target dir $W/target)"
(cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release \
   --target x86_64-unknown-linux-gnu --target-dir "$W/target" \
   -p virtio-iommu-guest-programs --bin iommufd-guest-test \
   -p vhost-device-iommu --bin vhost-device-iommu --bin mkviot >&2)
BIN=$W/target/x86_64-unknown-linux-gnu/release/iommufd-guest-test
DAEMON=$W/target/x86_64-unknown-linux-gnu/release/vhost-device-iommu
for b in "$BIN" "$DAEMON"; do
  [ -x "$b" ] || die "guest program not built: $b"
  if ldd "$b" 2>&1 | grep -q '=>'; then die "$b is not static"; fi
done

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
  vfio|eperm|shared)
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
      elif [ "$mode" = shared ]; then
        RUST_LOG=info /iommufd-guest-test shared "$bdf" /vhost-device-iommu; rc=$?
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
echo "file /vhost-device-iommu $DAEMON 0755 0 0" >"$W/daemon.list"
test_kernel_initramfs "$GEN" "$BB" "$W/init" "$BIN" /iommufd-guest-test "$W" "$W/daemon.list"
log "initramfs: $W/initramfs.cpio ($(stat -c %s "$W/initramfs.cpio") bytes)"

# ---------------------------------------------------------------- nested run (qemu mode) ----
# The outer guest's initramfs: the daemon (static), QEMU 10.2 with its shared libraries and
# firmware, and the inner guest (this kernel, the initramfs above, a VIOT naming edu).
if [[ " ${MODES[*]} " == *" qemu "* ]]; then
  N=$W/qemu
  mkdir -p "$N"
  "$W/target/x86_64-unknown-linux-gnu/release/mkviot" --iommu 00:03.0 \
    --pci-range 00:04.0-00:04.0@8 --body --out "$N/viot.bin"
  QBIN=$("$HERE/build-qemu.sh" | tail -n1)
  [ -x "$QBIN" ] || die "build-qemu.sh did not produce QEMU"
  {
    echo "file /vhost-device-iommu $DAEMON 0755 0 0"
    echo "dir /l2 0755 0 0"
    echo "file /l2/bzImage $K/bzImage 0644 0 0"
    echo "file /l2/initramfs.cpio $W/initramfs.cpio 0644 0 0"
    echo "file /l2/viot.bin $N/viot.bin 0644 0 0"
    # Without debug info: a third of the size, so the outer guest unpacks it faster.
    strip -o "$N/qemu-system-x86_64" "$QBIN"
    echo "file /usr/bin/qemu-system-x86_64 $N/qemu-system-x86_64 0755 0 0"
    echo "dir /qemu-firmware 0755 0 0"
    for f in bios-256k.bin linuxboot_dma.bin kvmvapic.bin; do
      src=$(find /usr/share/seabios /usr/share/qemu -name "$f" 2>/dev/null | head -n1 || true)
      [ -n "$src" ] || die "QEMU firmware $f not found"
      echo "file /qemu-firmware/$f $(readlink -f "$src") 0644 0 0"
    done
    # Shared libraries at the paths the dynamic loader looks them up by.
    libs=$(ldd "$QBIN" | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p' | sort -u)
    for l in $libs; do dirname "$l"; done | sort -u | while read -r d; do
      p=
      for c in ${d//\// }; do p=$p/$c; echo "dir $p 0755 0 0"; done
    done | awk '!seen[$0]++'
    for l in $libs; do echo "file $l $(readlink -f "$l") 0755 0 0"; done
  } >"$N/extra.list"
  test_kernel_initramfs "$GEN" "$BB" "$HERE/iommufd/nested-init.sh" "$BIN" /iommufd-guest-test "$N" "$N/extra.list"
  log "nested initramfs: $N/initramfs.cpio ($(stat -c %s "$N/initramfs.cpio") bytes, QEMU $QBIN)"
fi

# ---------------------------------------------------------------- boots -----------------------
rc_all=0
for m in "${MODES[@]}"; do
  extra=() append="console=ttyS0 panic=-1" initrd=$W/initramfs.cpio mem=512 tmo=$TIMEOUT
  # shellcheck disable=SC2054  # the commas belong to QEMU's -device syntax
  case $m in
    mock)   append="$append iommufd_test=mock" ;;
    vfio)   extra=(-device intel-iommu,intremap=on -device edu)
            append="$append iommufd_test=vfio iommufd_hwtype=1 intel_iommu=on" ;;
    virtio) extra=(-device virtio-iommu-pci -device edu)
            append="$append iommufd_test=vfio iommufd_hwtype=0 iommufd.allow_unsafe_interrupts=1" ;;
    eperm)  extra=(-device virtio-iommu-pci -device edu)
            append="$append iommufd_test=eperm" ;;
    shared) extra=(-device intel-iommu,intremap=on
                   -device pcie-root-port,id=rp0,chassis=1 -device edu,bus=rp0)
            append="$append iommufd_test=shared intel_iommu=on" ;;
    qemu)   extra=(-device intel-iommu,intremap=on
                   -device pcie-root-port,id=rp0,chassis=1 -device edu,bus=rp0)
            append="$append intel_iommu=on" initrd=$W/qemu/initramfs.cpio mem=2048
            tmo=${IOMMUFD_NESTED_TIMEOUT:-1800} ;;
  esac
  L=$W/serial-$m.log
  log "booting ($m): $QEMU -accel tcg -M q35 -m $mem ${extra[*]} -append '$append'"
  t=$(date +%s)
  set +e
  timeout "$tmo" "$QEMU" -accel tcg -M q35 -m "$mem" -nodefaults -display none -serial stdio -no-reboot \
    "${extra[@]}" -kernel "$K/bzImage" -initrd "$initrd" -append "$append" \
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
  if [ "$m" = vfio ] || [ "$m" = shared ] || [ "$m" = qemu ]; then
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
