#!/usr/bin/env bash
# Our no_std guest driver (virtio-iommu-driver) on real virtio-pci inside a Linux guest: the
# static program guest-programs/src/bin/guest-pci-driver/ takes the virtio-iommu PCI function from
# the kernel and drives it from user space (sysfs config space, mmap'd BARs, hugetlb DMA).
# Boots the Debian 6.12 guest (TCG, q35, two `edu` functions as endpoints, virtio_iommu
# module NOT loaded) twice:
#   1. against QEMU's own -device virtio-iommu-pci (the reference);
#   2. against vhost-device-iommu (--mmio --endpoints 0-0xff: QEMU's feature set and bus 0's
#      endpoint IDs) through vhost-user-test-device-pci (no VIOT), the daemon started and
#      stopped here; after the scenario the guest holds a mapping and this script reads it
#      and writes it back through the daemon's control socket (dma-read/dma-write), then
#      faults on it once unmapped (the guest expects the fault event).
# Judged from the serial logs: every `GUEST-PCI: PASS/FAIL` line, the final
# `GUEST-PCI-RESULT: N passed, 0 failed`, the end marker rc=0, and the host-side DMA check.
# Exit status 0 only if both runs pass. Logs: $VIRTIO_IOMMU_CACHE/guest-driver/.
# Env: GPD_TIMEOUT (s per VM, default 90), VERBOSE=1 (dump serial logs),
#      GPD_BIN / GPD_DAEMON (use prebuilt binaries instead of building them),
#      GPD_ONLY=qemu|daemon (one run only).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
ROOT=$(cd "$HERE/.." && pwd)
W=$VIRTIO_IOMMU_CACHE/guest-driver
TMO=${GPD_TIMEOUT:-90}
mkdir -p "$W"
with_lock guest-driver
apt_ensure socat jq

"$HERE/build-qemu.sh" >/dev/null
GUEST=$("$HERE/guest-kernel.sh")

# 1. The static guest program and the daemon.
BIN=${GPD_BIN:-}
if [ -z "$BIN" ]; then
    log "building the static guest program (target dir target/guest)"
    (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
        --target x86_64-unknown-linux-gnu -p virtio-iommu-guest-programs --bin guest-pci-driver \
        --target-dir "$ROOT/target/guest") >&2
    BIN=$ROOT/target/guest/x86_64-unknown-linux-gnu/release/guest-pci-driver
fi
DAEMON=${GPD_DAEMON:-}
if [ -z "$DAEMON" ]; then
    log "building vhost-device-iommu"
    (cd "$ROOT" && cargo build -q -p vhost-device-iommu --bin vhost-device-iommu) >&2
    DAEMON=${CARGO_TARGET_DIR:-$ROOT/target}/debug/vhost-device-iommu
fi
[ -x "$BIN" ] || die "no guest program at $BIN"
[ -x "$DAEMON" ] || die "no daemon at $DAEMON"

# 2. The initramfs: no modules at all (edu needs none, virtio-pci is built in), so the
#    kernel's virtio_iommu driver never loads.
: >"$W/modules.load"
INITRD=$("$HERE/mkinitramfs.sh" "$W/initrd.cpio.gz" \
    --add "$BIN:/bin/guest-pci-driver" \
    --add "$W/modules.load:/lib/modules/modules.load" \
    --init-script "$HERE/guest-driver/guest.sh")

DPID='' QPID=''
cleanup() {
    [ -z "$QPID" ] || kill "$QPID" 2>/dev/null || true
    [ -z "$DPID" ] || kill "$DPID" 2>/dev/null || true
    [ -z "$QPID" ] || wait "$QPID" 2>/dev/null || true
    [ -z "$DPID" ] || wait "$DPID" 2>/dev/null || true
}
trap cleanup EXIT

# boot NAME SERIAL_LOG KERNEL_ARGS [QEMU args...]: boots the guest in the background (QPID).
boot() {
    local name=$1 serial=$2 append=$3; shift 3
    rm -f "$serial"
    log "[$name] booting guest (TCG), serial log $serial"
    timeout --kill-after=5 "$TMO" "$HERE/qemu.sh" \
        -accel tcg -M q35 -m 512 -smp 1 -nodefaults -display none -no-reboot \
        -serial "file:$serial" -monitor none \
        -kernel "$GUEST/vmlinuz" -initrd "$INITRD" \
        -append "console=ttyS0 panic=-1 loglevel=4 $append" \
        -device edu,addr=04.0 -device edu,addr=05.0 \
        "$@" </dev/null >"$serial.qemu" 2>&1 &
    QPID=$!
}

# ctl JSON: one control-socket request to the daemon; prints the reply line.
ctl() { printf '%s\n' "$1" | socat -t 5 - "UNIX-CONNECT:$W/daemon.ctl"; }

# host_dma HOLD_LINE: reads the guest's pattern through the daemon's translation and writes
# it back at the offset the guest waits on. Prints HOST-CHECK lines; returns 1 on a mismatch.
host_dma() {
    local line=$1 ep iova back data got
    ep=$(sed -n 's/.*endpoint=\(0x[0-9a-f]*\).*/\1/p' <<<"$line")
    iova=$(sed -n 's/.*iova=\(0x[0-9a-f]*\).*/\1/p' <<<"$line")
    back=$(sed -n 's/.*back=\(0x[0-9a-f]*\).*/\1/p' <<<"$line")
    data=$(sed -n 's/.*data=\([0-9a-f]*\).*/\1/p' <<<"$line")
    if [ -z "$ep" ] || [ -z "$iova" ] || [ -z "$back" ] || [ -z "$data" ]; then
        echo "HOST-CHECK: FAIL dma-read: bad hold line: $line"; return 1
    fi
    got=$(ctl "{\"cmd\":\"dma-read\",\"endpoint\":\"$ep\",\"iova\":\"$iova\",\"len\":$(( ${#data} / 2 ))}" \
        | jq -r '.data // ("no data: " + tostring)')
    if [ "$got" = "$data" ]; then
        echo "HOST-CHECK: PASS dma-read (endpoint $ep iova $iova: the guest's ${#data} hex digits)"
    else
        echo "HOST-CHECK: FAIL dma-read: got $got, want $data"; return 1
    fi
    local wr
    wr=$(ctl "{\"cmd\":\"dma-write\",\"endpoint\":\"$ep\",\"iova\":\"$(printf '%#x' $(( iova + back )))\",\"data\":\"$data\"}")
    if jq -e '.ok == true and (has("fault") | not)' >/dev/null <<<"$wr"; then
        echo "HOST-CHECK: PASS dma-write"
    else
        echo "HOST-CHECK: FAIL dma-write: $wr"; return 1
    fi
}

# host_fault HOLD_LINE: a read of the unmapped IOVA through the daemon must fault.
host_fault() {
    local line=$1 ep iova rep
    ep=$(sed -n 's/.*endpoint=\(0x[0-9a-f]*\).*/\1/p' <<<"$line")
    iova=$(sed -n 's/.*iova=\(0x[0-9a-f]*\).*/\1/p' <<<"$line")
    rep=$(ctl "{\"cmd\":\"dma-read\",\"endpoint\":\"$ep\",\"iova\":\"$iova\",\"len\":8}")
    if jq -e '.ok == true and has("fault")' >/dev/null <<<"$rep"; then
        echo "HOST-CHECK: PASS dma-fault ($(jq -c .fault <<<"$rep"))"
    else
        echo "HOST-CHECK: FAIL dma-fault: $rep"; return 1
    fi
}

# judge NAME SERIAL_LOG QEMU_RC: prints the guest's lines; returns 1 unless the run passed.
judge() {
    local name=$1 serial=$2 rc=$3 ok=0
    tr -d '\r' <"$serial" | grep -aE '^GUEST-PCI' | sed "s/^/[$name] /" >&2 || true
    [ "${VERBOSE:-0}" = 1 ] && sed "s/^/[$name serial] /" "$serial" >&2
    if [ "$rc" -ne 0 ]; then
        log "[$name] QEMU exited with $rc (124: timeout)"; tail -n 20 "$serial.qemu" >&2; ok=1
    fi
    grep -aq '=== VIRTIO-IOMMU-GUEST-END rc=0 ===' "$serial" \
        || { log "[$name] guest program did not end with rc=0"; tail -n 15 "$serial" >&2; ok=1; }
    local res
    res=$(tr -d '\r' <"$serial" | grep -a '^GUEST-PCI-RESULT:' | tail -n1)
    if ! grep -qE '^GUEST-PCI-RESULT: [1-9][0-9]* passed, 0 failed$' <<<"$res"; then
        log "[$name] result: ${res:-none}"; ok=1
    fi
    [ $ok = 0 ] && log "[$name] PASS: ${res#GUEST-PCI-RESULT: }"
    return $ok
}

# wanted RUN: whether GPD_ONLY allows this run.
wanted() { [ -z "${GPD_ONLY:-}" ] || [ "$GPD_ONLY" = "$1" ]; }

fail=0
start=$SECONDS

# 3. QEMU's own virtio-iommu-pci.
if wanted qemu; then
    LOG=$W/qemu.serial.log
    boot qemu "$LOG" "gpd.device=qemu" -device virtio-iommu-pci,addr=03.0
    rc=0; wait "$QPID" || rc=$?; QPID=
    judge qemu "$LOG" "$rc" || fail=1
fi

# 4. vhost-device-iommu through vhost-user-test-device-pci.
if wanted daemon; then
    LOG=$W/daemon.serial.log
    rm -f "$W/daemon.sock" "$W/daemon.ctl" "$W/daemon.log"
    RUST_LOG=${GPD_RUST_LOG:-vhost_device_iommu=info} "$DAEMON" \
        --socket-path "$W/daemon.sock" --control-socket "$W/daemon.ctl" \
        --mmio --endpoints 0-0xff >"$W/daemon.log" 2>&1 &
    DPID=$!
    for _ in $(seq 100); do
        [ -S "$W/daemon.sock" ] && [ -S "$W/daemon.ctl" ] && break
        kill -0 "$DPID" 2>/dev/null || { cat "$W/daemon.log" >&2; die "daemon exited"; }
        sleep 0.05
    done
    [ -S "$W/daemon.sock" ] || die "daemon did not create its sockets"
    boot daemon "$LOG" "gpd.device=daemon gpd.hold=1" \
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
        -chardev "socket,id=c,path=$W/daemon.sock" \
        -device vhost-user-test-device-pci,chardev=c,virtio-id=23,num_vqs=2,config_size=40,addr=03.0
    # The guest holds twice: a mapped pattern to read and write back, then an unmapped IOVA
    # whose read must fault (and reach the guest as an event).
    host=pending
    while kill -0 "$QPID" 2>/dev/null; do
        if [ -f "$LOG" ] && { [ $host = pending ] || [ $host = mapped ]; }; then
            lines=$(tr -d '\r' <"$LOG" | grep -a '^GUEST-PCI-HOLD' || true)
            if [ $host = pending ] && hold=$(grep -m1 '^GUEST-PCI-HOLD ' <<<"$lines"); then
                if host_dma "$hold" >"$W/host-check.log"; then host=mapped; else host=fail; fi
                sed 's/^/[daemon] /' "$W/host-check.log" >&2
            elif [ $host = mapped ] && hold=$(grep -m1 '^GUEST-PCI-HOLD-FAULT ' <<<"$lines"); then
                if host_fault "$hold" >"$W/host-check.log"; then host=pass; else host=fail; fi
                sed 's/^/[daemon] /' "$W/host-check.log" >&2
            fi
        fi
        sleep 0.2
    done
    rc=0; wait "$QPID" || rc=$?; QPID=
    judge daemon "$LOG" "$rc" || fail=1
    [ $host = pass ] || { log "[daemon] host-side DMA check: $host"; fail=1; }
    kill "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; DPID=
fi

log "both runs took $((SECONDS - start)) s"
[ $fail = 0 ] || die "guest driver test failed (logs in $W)"
log "PASS: guest driver on virtio-pci against QEMU's virtio-iommu-pci and vhost-device-iommu"
