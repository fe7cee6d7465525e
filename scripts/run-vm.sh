#!/usr/bin/env bash
# The README's "run" command: boots a Linux guest (Debian 6.12 kernel, busybox initramfs)
# under QEMU 10.2 (TCG, q35) with the vhost-user virtio-iommu daemon as its IOMMU, shows what
# the guest sees (IOMMU groups, the virtio_iommu kernel lines) and then the daemon's state and
# counters from its control socket. Builds and caches whatever it needs on first use (QEMU,
# guest kernel: a few minutes) and ends on its own.
#
# usage: scripts/run-vm.sh [--passthrough] [--generic] [--shell] [-- DAEMON_OPTION...]
#   (default)      DMA domains: Linux maps and unmaps the NICs' rings through the IOMMU, and
#                  the two NICs exchange ARP packets through translated DMA
#   --passthrough  iommu.passthrough=1: identity domains (ATTACH with the bypass flag)
#   --generic      stock QEMU's path: the generic vhost-user-test-device-pci and the VIOT by
#                  -acpitable; QEMU then does not translate, so in DMA domains only the
#                  control traffic is real and the NICs cannot move packets
#   --shell        end in an interactive guest shell on this terminal (exit powers it off)
#   -- ...         extra daemon options, e.g. -- --max-mappings 4
# Env: VIRTIO_IOMMU_CACHE, VM_TIMEOUT (s, default 180).
#
# The guest's devices: our IOMMU at 00:03.0 (vhost-user-iommu-pci of qemu/patches/, QEMU
# translating every device's DMA through the daemon's translation socket, VIOT built by QEMU),
# a virtio-net at 00:04.0 and an e1000e at 00:05.0 on one QEMU hub; the VIOT puts bus 0 behind
# the IOMMU with endpoint ID = BDF, and the daemon gets the same table from mkviot.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
# shellcheck source=vm/lib.sh
. "$HERE/vm/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
mode=dma shell=0 generic=0 daemon_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --passthrough) mode=passthrough; shift ;;
        --shell) shell=1; shift ;;
        --generic) generic=1; shift ;;
        --) shift; daemon_args=("$@"); break ;;
        *) usage ;;
    esac
done

apt_ensure socat jq
WORK=$VIRTIO_IOMMU_CACHE/run-vm
mkdir -p "$WORK"
with_lock run-vm
trap vm_cleanup EXIT
# Ctrl-C (or SIGTERM): QEMU first, then the daemon, and no stale report.
on_signal() {
    trap - INT TERM
    log "interrupted: stopping QEMU, then the daemon"
    vm_cleanup
    log "interrupted: QEMU and the daemon are stopped (logs in $WORK)"
    exit 130
}
trap on_signal INT TERM

"$HERE/build-qemu.sh" >/dev/null
VM_GUEST=$("$HERE/guest-kernel.sh")
vm_build
VM_INITRD=$(vm_initramfs "$WORK/initrd.cpio.gz")
vm_viot "$WORK/viot.bin"
: >"$WORK/daemon.log"
rm -f "$WORK/hold.stats" "$WORK/hold.dump" "$WORK/final.stats" "$WORK/viommu.xlate"
# The daemon takes its endpoints from the same VIOT the guest gets.
xlate=()
[ $generic = 1 ] || xlate=(--translation-socket "$WORK/viommu.xlate")
VM_RUST_LOG=${RUST_LOG:-info} vm_daemon_start "$WORK" --viot "$WORK/viot.bin" "${xlate[@]}" "${daemon_args[@]}"
CTL=$WORK/viommu.ctl
log "daemon pid $VM_DPID: vhost-user $WORK/viommu.sock, control $CTL, log $WORK/daemon.log"
if [ $generic = 1 ]; then
    kind="vhost:$WORK/viommu.sock:$WORK/viot.bin"
else
    kind="device:$WORK/viommu.sock:$WORK/viommu.xlate"
    for _ in $(seq 100); do [ -S "$WORK/viommu.xlate" ] && break; sleep 0.05; done
fi

case $mode in
    dma) append="vm.nic=1 vm.links=1 vm.up=1" ;;
    passthrough) append="iommu.passthrough=1 vm.nic=1" ;;
esac
# Without QEMU translating, NICs in DMA domains cannot move packets: no ARP test.
[ $generic = 1 ] && [ $mode = dma ] && append="vm.links=1 vm.up=1"

# A table of the request counters that are not all zero, and the domains.
show_stats() {
    jq -r '.stats | to_entries[] | select(.value | type == "object" and has("no_reply"))
        | select([.value[]] | add > 0)
        | "  \(.key): " + ([.value | to_entries[] | select(.value > 0) | "\(.key)=\(.value)"] | join(" "))' "$1"
    jq -r '.stats | "  live: \(.domains) domains, \(.attached_endpoints) endpoints, \(.mappings) mappings"' "$1"
    jq -r '.stats.translation // empty | "  translation: \(.translate_ok) OK, \(.translate_fault) faults, \(.invalidates) INVALIDATEs, \(.acks) acks"' "$1"
}
# The domains, endpoints shown as PCI addresses (endpoint ID = BDF with this VIOT).
show_dump() {
    jq -r 'def hex2: [(. / 16 | floor), (. % 16)] | map("0123456789abcdef"[.:.+1]) | join("");
        def bdf: "\(. / 256 | floor | hex2):\(. / 8 | floor | . % 32 | hex2).\(. % 8)";
        .dump.domains[] | "  domain \(.id): endpoint(s) \(.endpoints | map(bdf) | join(" "))"
        + (if .bypass then " (bypass)" else ", \(.mappings | length) mappings" end)' "$1"
}
vm_on_hold() {
    vm_stats "$CTL" | jq '{stats: .}' >"$WORK/hold.stats"
    vm_ctl "$CTL" '{"cmd":"dump"}' >"$WORK/hold.dump"
}

if [ $shell = 1 ]; then
    log "booting the guest on this terminal (exit the shell to power it off)"
    rc=0
    vm_qemu 0 - "$kind" "$append vm.shell=1" || rc=$?
else
    log "booting the guest (TCG, about 10 s), serial log $WORK/serial.log"
    rc=0
    VM_WATCH_PID=$VM_DPID vm_boot "${VM_TIMEOUT:-180}" "$WORK/serial.log" "$kind" \
        "$append vm.hold=1" || rc=$?
    echo "== guest =="
    tr -d '\r' <"$WORK/serial.log" \
        | grep -E '^VM(-GROUP|-RESULT|-ERR|-WARN|-PCI)?:|^VM-DMESG: .*(virtio_iommu|iommu group|VIOT 0x)' \
        | grep -v '^VM: boot ' || true
    if [ -f "$WORK/hold.dump" ]; then
        echo "== daemon while the guest ran =="
        show_dump "$WORK/hold.dump"
        show_stats "$WORK/hold.stats"
    fi
fi
kill -0 "$VM_DPID" 2>/dev/null \
    || die "the daemon exited while the guest ran (QEMU status $rc; log: $WORK/daemon.log)"
echo "== daemon stats after QEMU quit (counters are cumulative; the state is reset) =="
vm_ctl "$CTL" '{"cmd":"stats"}' >"$WORK/final.stats"
show_stats "$WORK/final.stats"
[ "$rc" = 0 ] || die "QEMU exited with status $rc (logs in $WORK)"
if [ $shell = 0 ]; then
    grep -q '^VM-RESULT: PASS' "$WORK/serial.log" || die "the guest reported a failure"
fi
